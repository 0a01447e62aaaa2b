"""Read a checkpoint's object graph safely: container + restricted unpickler, no torch.

``read_checkpoint(path)`` is the one entry point every read path uses (list, inspect, validate,
compare, resume-cmd, prune's best-k, the manager's start-up). It reads only the container's
directory and its pickle, never tensor bytes, and cross-checks the storages the pickle names
against the records that hold them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from . import storage
from .checkpoint import CheckpointFile, Span, iter_tensors
from .container import Container, open_container, pread, read_record, sniff_format
from ..errors import BadInputError, UnreadableCheckpoint, UnsafeCheckpoint
from .safe_open import open_regular
from .storage import RemotePath, is_url
from .unpickler import (
    DTYPE_ITEMSIZE,
    SafeUnpickler,
    StorageRef,
    run_unpickler,
    safe_loads,
)

__all__ = ["CheckpointFile", "Span", "iter_tensors", "read_checkpoint"]  # the first three live in .checkpoint

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def read_checkpoint(path: str | os.PathLike[str] | RemotePath, *, spans: bool = True) -> CheckpointFile:
    """Parse ``path`` safely. Raises UnreadableCheckpoint or UnsafeCheckpoint (never executes).

    ``spans=False`` is the listing's fast path: storage sizes are still cross-checked against the
    central directory, but no storage record's local header is read, so ``spans`` stays empty and
    the container's storage records have no data offset. Anything that reads tensor bytes needs
    the default.
    """
    if is_url(path):
        return _read_remote(path, spans)  # type: ignore[arg-type]
    path = Path(path)
    if path.is_dir():  # a sharded (DCP) checkpoint: .metadata through the same restricted unpickler
        from .dcp import looks_like_dcp, read_directory

        if looks_like_dcp(path):
            return read_directory(path)
    try:
        fh = open_regular(path)  # a FIFO or device is a verdict, never a read that blocks or never ends
    except IsADirectoryError:
        raise UnreadableCheckpoint("is a directory") from None
    except OSError as exc:
        raise UnreadableCheckpoint(f"cannot open: {exc.strerror or exc}") from None
    with fh:
        return _read_open(path, fh, os.fstat(fh.fileno()).st_size, spans)


def _read_remote(path: str | RemotePath, spans: bool) -> CheckpointFile:
    """An object in an object store, through ranged reads (see :func:`ckptctl.formats.storage.open_object`)."""
    remote_path = storage.location(path)
    size = remote_path.size if remote_path.size is not None else storage.stat(remote_path).size
    remote_path = storage.RemotePath(remote_path.url, remote_path.fs, size)
    try:
        fh = storage.open_object(remote_path)
    except BadInputError as exc:
        raise UnreadableCheckpoint(f"cannot open: {exc}") from None
    with fh:
        try:
            return _read_open(remote_path, fh, size, spans)  # type: ignore[arg-type]
        except OSError as exc:  # the object vanished or the store failed mid-read
            raise UnreadableCheckpoint(f"read error: {exc}") from None


def _read_open(path: Path, fh: BinaryIO, size: int, spans: bool) -> CheckpointFile:
    """Parse an open file (local or remote) by its first bytes.

    A file that is not a readable torch checkpoint (any other pickle, an ``.npy`` with objects, a
    zip that is not a torch archive, a damaged legacy stream) is still scanned for the globals its
    pickles name, as picklescan does: naming one outside the allowlist makes it unsafe.
    """
    if size == 0:
        raise UnreadableCheckpoint("empty file")
    kind = sniff_format(fh)
    try:
        if kind == "zip":
            return _read_zip(path, fh, size, spans)
        if kind == "legacy":
            return _read_legacy(path, fh, size)
        raise UnreadableCheckpoint("not a checkpoint: unknown file format")
    except UnsafeCheckpoint as exc:
        if exc.globals:  # the unpickler named them already
            raise
        _refuse_named_globals(fh, size, kind)
        raise
    except UnreadableCheckpoint:
        _refuse_named_globals(fh, size, kind)
        raise


def _refuse_named_globals(fh: BinaryIO, size: int, kind: str) -> None:
    """Raise UnsafeCheckpoint naming the globals outside the allowlist that the file's pickles name."""
    from .pickle_scan import unsafe_globals  # only for files that failed to read: keeps start-up light

    names = unsafe_globals(fh, size, kind)
    if names:
        raise UnsafeCheckpoint(names)


def _read_zip(path: Path, fh: BinaryIO, size: int, with_spans: bool = True) -> CheckpointFile:
    container = open_container(path, fh, local_headers=with_spans)  # refuses ambiguous archives
    _check_small_records(fh, container)
    root, storages = safe_loads(read_record(fh, container.pickle_record))
    spans: dict[str, Span] = {}
    for key, ref in storages.items():
        record = container.storage_record(key)
        if record is None:
            raise UnreadableCheckpoint(f"missing record data/{key}")
        if record.size != ref.nbytes:
            raise UnreadableCheckpoint(
                f"record data/{key} holds {record.size} bytes, the pickle expects {ref.nbytes}"
            )
        if with_spans:
            spans[key] = Span(key, record.data_offset, record.size, record.crc32)
    return CheckpointFile(path, "zip", size, root, storages, spans, container, spans_read=with_spans)


MAX_SMALL_RECORD = 64


def _check_small_records(fh: BinaryIO, container: Container) -> None:
    """The records torch.load reads besides the pickle and the storages, checked as torch checks
    them, so a file listed as ok is one torch opens: the format version (an integer of at least
    1; ``.data/version`` first), the byte order (``little`` or ``big``), the storage alignment."""
    records = container.records
    version = records.get(".data/version") or records.get("version")
    if version is None:
        raise UnreadableCheckpoint(f"missing {container.prefix}/version")
    text = read_record(fh, version, MAX_SMALL_RECORD).strip(b" \t\r\n")
    if not text.isdigit() or int(text) < 1:
        raise UnreadableCheckpoint(f"record {version.key}: not a format version ({text[:16]!r})")
    if "byteorder" in records and read_record(fh, records["byteorder"], MAX_SMALL_RECORD) not in (b"little", b"big"):
        raise UnreadableCheckpoint("record byteorder: neither 'little' nor 'big'")
    if ".storage_alignment" in records:
        text = read_record(fh, records[".storage_alignment"], MAX_SMALL_RECORD).strip(b" \t\r\n")
        if not text.lstrip(b"+-").isdigit():
            raise UnreadableCheckpoint("record .storage_alignment: not an integer")


def _read_legacy(path: Path, fh: BinaryIO, size: int) -> CheckpointFile:
    """The pre-1.6 format: magic, protocol, sys_info, the object pickle, storage keys, raw storages."""
    fh.seek(0)
    stream = _Bounded(fh, size)
    magic = run_unpickler(SafeUnpickler(stream))
    if magic != LEGACY_MAGIC:
        raise UnreadableCheckpoint("not a checkpoint: a pickle without torch's magic number")
    protocol = run_unpickler(SafeUnpickler(stream))
    if protocol != LEGACY_PROTOCOL:
        raise UnreadableCheckpoint(f"unsupported legacy protocol {protocol!r}")
    run_unpickler(SafeUnpickler(stream))  # sys_info: endianness and type sizes
    unpickler = SafeUnpickler(stream)
    root = run_unpickler(unpickler)
    keys = run_unpickler(SafeUnpickler(stream))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise UnreadableCheckpoint("corrupt legacy storage key list")
    spans = _legacy_spans(fh, keys, unpickler.storages, size)
    return CheckpointFile(path, "legacy", size, root, unpickler.storages, spans, None, ["legacy format: no checksums"])


class _Bounded:
    """The legacy stream as the unpickler sees it: no read asks for more than the file still holds.

    Reading a pickle from a file, the C unpickler asks for a length taken from the (possibly
    damaged or hostile) data and the file object allocates it up front; a flipped length byte
    could ask for terabytes. Here such a read returns what is left and the load reports a
    truncated pickle. (No ``peek``/``readinto``: the unpickler then reads exactly what it needs,
    so the position after one pickle is the start of the next.)
    """

    def __init__(self, fh: BinaryIO, size: int):
        self._fh = fh
        self._size = size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._fh.tell())
        return self._fh.read(left if n is None or n < 0 or n > left else n)

    def readline(self, limit: int = -1) -> bytes:
        return self._fh.readline(limit)

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)


def _legacy_spans(fh: BinaryIO, keys: list[str], storages: dict[str, StorageRef], size: int) -> dict[str, Span]:
    spans: dict[str, Span] = {}
    pos = fh.tell()
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise UnreadableCheckpoint(f"legacy storage {key} is not referenced by the pickle")
        header = pread(fh, pos, 8)
        if len(header) < 8:
            raise UnreadableCheckpoint(f"truncated: legacy storage {key} missing")
        numel = int.from_bytes(header, "little", signed=True)
        if numel != ref.numel:
            raise UnreadableCheckpoint(f"legacy storage {key}: {numel} elements in file, {ref.numel} expected")
        nbytes = numel * DTYPE_ITEMSIZE[ref.dtype]
        spans[key] = Span(key, pos + 8, nbytes, None)
        pos += 8 + nbytes
    if pos > size:
        raise UnreadableCheckpoint("truncated: legacy storage data is short")
    missing = set(storages) - set(spans)
    if missing:
        raise UnreadableCheckpoint(f"legacy storages missing: {', '.join(sorted(missing)[:5])}")
    return spans
