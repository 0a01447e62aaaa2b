"""Is a file plausibly a whole checkpoint? A bounded look, for retention's "keep the N newest valid".

Retention plans from names and ``stat``; an empty or truncated ``rolling_step_999999.pt`` must not
count as the newest checkpoint, yet reading every pickle would make each prune (and each save of
the manager) cost a read of the whole directory. So retention asks this module only about the
files it is about to keep, newest first, and this module reads at most three small ranges of
each: the first 4 bytes, the zip end record (the last 22 bytes; up to 64 KiB more only when a
writer added a zip comment) and the 4 bytes where the central directory starts.

It finds what breaks a file as a whole — empty, truncated (the end record is lost first),
zero-filled, not a zip or pickle, a sharded checkpoint without ``.metadata``, a broken symlink —
not a flipped bit inside a record: that is ``validate``'s job (CRC-32 of every record).
"""

from __future__ import annotations

import os
import stat as stat_module
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from ..formats.storage import is_url

if TYPE_CHECKING:
    from ..layouts.catalog import Entry

ZIP_LOCAL = b"PK\x03\x04"
ZIP_CENTRAL = b"PK\x01\x02"
ZIP_END = b"PK\x05\x06"
ZIP64_LOCATOR = b"PK\x06\x07"
END = struct.Struct("<4sHHHHIIH")  # end of central directory record, 22 bytes
ZIP64_LOCATOR_SIZE = 20
MAX_COMMENT = 65_535
PICKLE_PROTO = b"\x80"  # torch's legacy (pre-1.6) format is a pickle stream starting with PROTO
DCP_METADATA = ".metadata"  # ckptctl.formats.dcp.METADATA_FILE (not imported: that module is heavier)


def problem(entry: Entry) -> str | None:
    """What is wrong with ``entry`` as a whole, in a few words, or None when it looks complete.

    Objects in a store are judged by size only (a ranged read per object would cost a round trip each).
    """
    if entry.broken is not None:
        return f"{entry.broken} symlink"
    if is_url(entry.path):
        return "empty" if entry.size_bytes == 0 and not entry.is_directory else None
    if entry.is_directory:
        return directory_problem(entry.path)
    if entry.size_bytes == 0:
        return "empty"
    return file_problem(entry.path)


def directory_problem(path: Path) -> str | None:
    """A sharded (DCP) checkpoint is complete only once its ``.metadata`` is written (DCP writes it last)."""
    try:
        info = os.stat(Path(path) / DCP_METADATA)
    except OSError:
        return "incomplete: no .metadata"
    if not stat_module.S_ISREG(info.st_mode) or info.st_size == 0:
        return "incomplete: empty .metadata"
    return None


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Open ``path`` (regular files only, never blocking on a FIFO) and look at its two ends."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return f"cannot open: {exc.strerror or exc}"
    try:
        info = os.fstat(fd)
        if not stat_module.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size == 0:
            return "empty"
        head = os.pread(fd, 4, 0)
        if head == ZIP_LOCAL:
            return _zip_problem(fd, info.st_size)
        if head[:1] == PICKLE_PROTO:
            return None  # legacy format: a pickle stream has no end record to look at cheaply
        return "all zero bytes at the start" if head == b"\0" * len(head) else "not a zip or pickle"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    finally:
        os.close(fd)


def _zip_problem(fd: int, size: int) -> str | None:
    """The end record is where it belongs and points at a central directory inside the file."""
    found = _end_record(fd, size)
    if found is None:
        return "truncated: zip end record missing"
    end_offset, record = found
    _sig, _disk, _cd_disk, _here, total, cd_size, cd_offset, _comment = END.unpack(record)
    if total == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):  # zip64: the locator sits just before
        locator = os.pread(fd, 4, end_offset - ZIP64_LOCATOR_SIZE) if end_offset >= ZIP64_LOCATOR_SIZE else b""
        return None if locator == ZIP64_LOCATOR else "truncated: zip64 end records missing"
    if cd_offset + cd_size > end_offset:
        return "truncated: central directory outside the file"
    if total and os.pread(fd, 4, cd_offset) != ZIP_CENTRAL:
        return "damaged: no central directory where the end record says"
    return None


def _end_record(fd: int, size: int) -> tuple[int, bytes] | None:
    """(offset, bytes) of the end of central directory record: the last 22 bytes, or before a comment."""
    if size < END.size:
        return None
    tail = os.pread(fd, END.size, size - END.size)
    if tail[:4] == ZIP_END:
        return size - END.size, tail
    start = max(0, size - END.size - MAX_COMMENT)
    window = os.pread(fd, size - start, start)
    at = window.rfind(ZIP_END)
    while at >= 0:
        record = window[at : at + END.size]
        if len(record) == END.size and at + END.size + END.unpack(record)[7] == len(window):  # comment fits exactly
            return start + at, record
        at = window.rfind(ZIP_END, 0, at)
    return None
