"""The torch zip container, read the way torch's own reader reads it, without torch.

``torch.save`` writes an uncompressed zip whose entries share one top-level prefix:
``<prefix>/data.pkl`` (the pickled object graph), ``<prefix>/data/<key>`` (raw storage bytes,
64-byte aligned), ``<prefix>/byteorder``, ``<prefix>/version`` and a few more. This module finds
every record's data offset, size and CRC-32 so other modules can read only what they need
(``data.pkl`` for metadata, record bytes for checksums).

torch reads the archive with miniz (``caffe2/serialize/inline_container.cc``), not with Python's
``zipfile``, and the two disagree on hostile input. So the directory is parsed here the way miniz
parses it: the *last* end record with room for its fixed part; the zip64 end record at the offset
its locator gives; exactly as many central headers as the end record counts; names compared as
bytes, ASCII case ignored (``mz_zip_reader_locate_file`` without ``MZ_ZIP_FLAG_CASE_SENSITIVE``,
a binary search over a case-folded sort); the archive's prefix from the *first* record; a
record's data at its local header offset + 30 + the *local* name and extra lengths. Anything
another reader (``zipfile``, a scanner, an unzip tool) could take differently raises
:class:`UnsafeCheckpoint` as ``ambiguous archive (<reason>)``: duplicate names or names equal up
to case, control characters (NUL included, which ``zipfile`` truncates at) in a name, more than
one top-level folder, local and central names or sizes that disagree, compressed records,
overlapping records or records reaching into the directory, a directory that is not where the
end record says (``zipfile`` shifts every offset then, miniz does not), more directory than the
end record counts (``zipfile`` reads by size, miniz by count), bytes after the end record.
Damage that makes torch fail too (a truncated file, a bad signature) is UnreadableCheckpoint.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import UnreadableCheckpoint, UnsafeCheckpoint

ZIP_MAGIC = b"PK\x03\x04"
CENTRAL_MAGIC = b"PK\x01\x02"
EOCD_MAGIC = b"PK\x05\x06"
ZIP64_EOCD_MAGIC = b"PK\x06\x06"
ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
LOCAL_HEADER_SIZE = LOCAL_HEADER.size  # 30
CENTRAL_HEADER = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
MAX_PICKLE_BYTES = 512 * 1024 * 1024
MAX_RECORDS = 1_000_000
MAX_COMMENT = 0xFFFF
HEADER_NAME_ROOM = 256  # bytes prefetched after a local header for its name (a longer one is read when needed)
U16, U32 = 0xFFFF, 0xFFFFFFFF
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
FLAG_ENCRYPTED, FLAG_DESCRIPTOR, FLAG_UTF8, FLAG_MASKED = 0x1, 0x8, 0x800, 0x2000
FLAGS_UNSUPPORTED = 0x1 | 0x20 | 0x40  # encrypted, patch data, strong encryption: miniz refuses to extract
DOS_DIRECTORY = 0x10  # external attribute: miniz "extracts" such a record as nothing at all
# Records torch.load reads besides the storages: their local headers are always read (see TORCH_READS use).
TORCH_READS = ("data.pkl", "version", ".data/version", "byteorder", ".storage_alignment")


@dataclass(frozen=True)
class Record:
    """One zip entry: where its bytes are and what checksum the writer stored for them."""

    name: str  # full name inside the zip
    key: str  # name below the prefix, e.g. "data.pkl", "data/17"
    header_offset: int
    data_offset: int
    size: int
    crc32: int
    flags: int = 0  # general-purpose bits; bit 3: CRC and sizes follow the data (a data descriptor)
    header_mismatches: tuple[str, ...] = ()  # local-header fields that disagree with the central directory


@dataclass
class Container:
    """The parsed central directory of one torch zip checkpoint.

    ``records`` is keyed by the key with ASCII case folded, as torch looks records up.
    """

    path: Path
    file_size: int
    prefix: str
    records: dict[str, Record]
    local_headers: bool = True  # False: only data.pkl's local header was read (other data_offset are -1)
    directory_offset: int = 0  # where the central directory starts (every record's bytes lie before it)

    @property
    def pickle_record(self) -> Record:
        return self.records["data.pkl"]

    def storage_record(self, storage_key: str) -> Record | None:
        return self.records.get(fold(f"data/{storage_key}"))

    @property
    def has_checksums(self) -> bool:
        """False when the writer switched CRC-32 off (torch writes 0 for every record then)."""
        nonempty = [r for r in self.records.values() if r.size > 0]
        return not nonempty or any(r.crc32 != 0 for r in nonempty)


@dataclass(slots=True)
class _Central:
    """One central directory header, as miniz reads it."""

    index: int
    raw_name: bytes
    flags: int
    method: int
    version: int
    date_time: tuple[int, int]  # (time, date) as stored
    crc32: int
    size: int  # compressed size (the bytes a stored record occupies)
    file_size: int  # uncompressed size
    header_offset: int
    external_attr: int = 0


@dataclass
class _Findings:
    """What makes the archive ambiguous (refused as unsafe); collected so all are reported at once."""

    reasons: list[str] = field(default_factory=list)

    def add(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)


def _read_always(raw_name: bytes) -> bool:
    """A record whose local header is read even on the listing's fast path (torch.load reads it)."""
    key = raw_name.split(b"/", 1)[-1].lower().decode("utf-8", "replace")
    return key in TORCH_READS


def fold(name: str) -> str:
    """ASCII-only lower case, as miniz compares names (``MZ_TOLOWER``); other characters unchanged."""
    return name.encode("utf-8", "surrogateescape").lower().decode("utf-8", "surrogateescape")


def ambiguous(reasons: list[str]) -> UnsafeCheckpoint:
    """The verdict for an archive two readers could take differently."""
    return UnsafeCheckpoint([], reason=f"ambiguous archive ({'; '.join(reasons)})")


def sniff_format(fh: BinaryIO) -> str:
    """'zip', 'legacy' (pre-1.6 pickle stream) or 'unknown', from the first bytes."""
    fh.seek(0)
    head = fh.read(4)
    if head == ZIP_MAGIC:
        return "zip"
    if head[:1] == b"\x80":  # a pickle PROTO opcode: torch's legacy format starts with one
        return "legacy"
    return "unknown"


def open_container(path: Path, fh: BinaryIO, *, local_headers: bool = True) -> Container:
    """Parse the archive as torch would. Raises UnreadableCheckpoint (damage, or not a torch
    archive) or UnsafeCheckpoint (``ambiguous archive (...)``).

    ``local_headers=False`` reads only data.pkl's local header: enough to read the pickle the
    way torch would, without one scattered read per storage record (on a cold page cache those
    reads cost more than everything else a listing does). Other records then have
    ``data_offset == -1`` and their local headers are not compared; ``validate`` and every byte
    reader use the default.
    """
    size = size_of(fh)
    findings = _Findings()
    entries, directory_offset = read_central_directory(fh, size, findings)
    prefix = _prefix(entries, findings)
    if hasattr(fh, "prefetch"):  # an object store's file: the local headers to read (and the small records) at once
        wanted = entries if local_headers else [e for e in entries if _read_always(e.raw_name)]
        fh.prefetch([(e.header_offset, e.header_offset + LOCAL_HEADER_SIZE + HEADER_NAME_ROOM
                      + (e.size if _read_always(e.raw_name) and e.size <= 64 else 0)) for e in wanted])  # fmt: skip
    records: dict[str, Record] = {}  # by key with ASCII case folded (torch's lookup)
    spans: list[tuple[int, int, str]] = []  # (first byte, end, key) of every record
    seen: dict[bytes, bytes] = {}  # folded raw name -> first raw name
    prefix_raw = prefix.encode("utf-8", "surrogateescape").lower() + b"/"
    for entry in entries:
        name = _check_name(entry, findings)
        folded = entry.raw_name.lower()
        if folded in seen:
            other = seen[folded]
            findings.add(f"duplicate entry name {name!r}" if other == entry.raw_name
                         else f"names equal up to case: {_text(other)!r} and {name!r}")  # fmt: skip
            continue
        seen[folded] = entry.raw_name
        if entry.method != 0:
            findings.add(f"record {name!r} is compressed (torch writes stored records)")
        if entry.flags & FLAGS_UNSUPPORTED:
            findings.add(f"record {name!r} is encrypted")
        if entry.external_attr & DOS_DIRECTORY or entry.raw_name.endswith(b"/"):
            findings.add(f"record {name!r} is marked as a directory")
        key = name[len(prefix) + 1 :] if name.startswith(prefix + "/") else name
        folded_key = _text(folded[len(prefix_raw) :]) if folded.startswith(prefix_raw) else _text(folded)
        if local_headers or folded_key in TORCH_READS:
            record = _read_local_header(fh, entry, name, key, size, findings)
        else:
            record = Record(name, key, entry.header_offset, -1, entry.size, entry.crc32, entry.flags)
        records[folded_key] = record
        spans.append((entry.header_offset, _end(record, entry), _shown(key)))
    if "constants.pkl" in {record.key for record in records.values()}:
        findings.add("a TorchScript archive (constants.pkl): torch.load hands it to torch.jit.load, not data.pkl")
    _check_layout(spans, directory_offset, findings)
    if findings.reasons:
        raise ambiguous(findings.reasons)
    if "data.pkl" not in records:
        raise UnreadableCheckpoint(f"missing {prefix}/data.pkl")
    if records["data.pkl"].size > MAX_PICKLE_BYTES:
        raise UnreadableCheckpoint(f"data.pkl too large ({records['data.pkl'].size} bytes)")
    return Container(path, size, prefix, records, local_headers, directory_offset)


# ------------------------------------------------------------------------------ central directory


def read_central_directory(fh: BinaryIO, size: int, findings: _Findings) -> tuple[list[_Central], int]:
    """Every central header, found as miniz finds them; returns them and the directory's offset."""
    eocd, record = _end_record(fh, size)
    _sig, disk, cd_disk, here, total, cd_size, cd_offset, comment_len = EOCD.unpack(record)
    if eocd + EOCD.size + comment_len != size:
        findings.add("bytes after the end of central directory record")
    directory_end = eocd
    zip64 = _zip64_end_record(fh, eocd, size, findings)
    if zip64 is not None:
        z64_offset, (disk, cd_disk, here, total, cd_size, cd_offset) = zip64
        directory_end = z64_offset
    if here != total or (disk, cd_disk) not in ((0, 0), (1, 1)):
        raise UnreadableCheckpoint("corrupt zip directory: a multi-disk archive")
    if total == 0:
        raise UnreadableCheckpoint("empty zip: no records")
    if total > MAX_RECORDS:
        raise UnreadableCheckpoint(f"too many records ({total})")
    if cd_size < total * CENTRAL_HEADER.size or cd_offset + cd_size > size:
        raise UnreadableCheckpoint("truncated or not a zip: central directory outside the file")
    if cd_offset + cd_size != directory_end:  # zipfile then shifts every offset by the difference; miniz does not
        findings.add("central directory is not where the end of central directory record says")
        raise ambiguous(findings.reasons)
    raw = pread(fh, cd_offset, cd_size)
    if len(raw) != cd_size:
        raise UnreadableCheckpoint("truncated: central directory is short")
    entries: list[_Central] = []
    pos = 0
    for index in range(total):
        entry, pos = _central_header(raw, pos, index, size)
        entries.append(entry)
    if pos != cd_size:  # zipfile reads headers until the size is used up, miniz reads ``total`` of them
        findings.add(f"central directory holds more than its {total} records")
    return entries, cd_offset


EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory record (22 bytes)
ZIP64_LOCATOR = struct.Struct("<4sIQI")  # zip64 end of central directory locator (20 bytes)
ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory record (56 bytes)


def _end_record(fh: BinaryIO, size: int) -> tuple[int, bytes]:
    """The last end record signature with room for the record's fixed part after it (miniz's rule)."""
    if size >= EOCD.size:
        last = pread(fh, size - EOCD.size, EOCD.size)
        if last[:4] == EOCD_MAGIC and last[-2:] == b"\0\0":  # torch's own files: no comment
            return size - EOCD.size, last
        start = max(0, size - MAX_COMMENT - EOCD.size)
        tail = pread(fh, start, size - start)
        at = tail.rfind(EOCD_MAGIC, 0, len(tail) - EOCD.size + 4)
        if at >= 0:
            return start + at, tail[at : at + EOCD.size]
    raise UnreadableCheckpoint("truncated or not a zip: central directory missing")


def _zip64_end_record(fh: BinaryIO, eocd: int, size: int, findings: _Findings) -> tuple[int, tuple[int, ...]] | None:
    """The zip64 end record's offset and (disk, directory disk, entries here, entries, size, offset)."""
    if eocd < ZIP64_LOCATOR.size + ZIP64_EOCD.size:
        return None
    locator = pread(fh, eocd - ZIP64_LOCATOR.size, ZIP64_LOCATOR.size)
    if locator[:4] != ZIP64_LOCATOR_MAGIC:
        return None
    _sig, _disk, offset, disks = ZIP64_LOCATOR.unpack(locator)
    if offset > size - ZIP64_EOCD.size:
        raise UnreadableCheckpoint("truncated or not a zip: zip64 end of central directory record missing")
    if disks != 1:
        raise UnreadableCheckpoint("corrupt zip directory: a multi-disk archive")
    raw = pread(fh, offset, ZIP64_EOCD.size)
    if raw[:4] != ZIP64_EOCD_MAGIC:
        raise UnreadableCheckpoint("zip64 end of central directory record missing")
    if offset != eocd - ZIP64_LOCATOR.size - ZIP64_EOCD.size:  # zipfile reads it right before the locator
        findings.add("zip64 end record is not where its locator says")
    fields = ZIP64_EOCD.unpack(raw)
    if fields[1] < ZIP64_EOCD.size - 12:
        raise UnreadableCheckpoint("corrupt zip directory: zip64 end record too short")
    return offset, fields[4:10]


def _central_header(raw: bytes, pos: int, index: int, file_size: int) -> tuple[_Central, int]:
    if len(raw) - pos < CENTRAL_HEADER.size or raw[pos : pos + 4] != CENTRAL_MAGIC:
        if index == 0:
            raise UnreadableCheckpoint("corrupt zip directory: no central header where the end of central directory record points")
        raise UnreadableCheckpoint("corrupt zip directory: bad central header")
    (_sig, _made_by, version, flags, method, time, date, crc, csize, usize, name_len, extra_len, comment_len,
     disk_start, _internal, external, offset) = CENTRAL_HEADER.unpack_from(raw, pos)  # fmt: skip
    end = pos + CENTRAL_HEADER.size + name_len + extra_len + comment_len
    if end > len(raw):
        raise UnreadableCheckpoint("corrupt zip directory: a central header runs past the directory")
    name = raw[pos + CENTRAL_HEADER.size : pos + CENTRAL_HEADER.size + name_len]
    extra = raw[pos + CENTRAL_HEADER.size + name_len : pos + CENTRAL_HEADER.size + name_len + extra_len]
    if U32 in (csize, usize, offset):
        usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
    if (method == 0 and usize != csize) or (usize and not csize):
        raise UnreadableCheckpoint(f"corrupt zip directory: the central header of {_text(name)!r} holds contradictory sizes")
    if disk_start == U16 or flags & FLAG_MASKED:
        raise UnreadableCheckpoint("corrupt zip directory: unsupported central header")
    if offset + LOCAL_HEADER_SIZE + csize > file_size:
        raise UnreadableCheckpoint(f"truncated: record {_text(name)!r} extends past the end of the file")
    entry = _Central(index, name, flags, method, version, (time, date), crc, csize, usize, offset, external)
    return entry, end


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Sizes and offset from the zip64 extended information field (only those stored as 0xFFFFFFFF)."""
    pos = 0
    while pos + 4 <= len(extra):
        field_id, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if len(body) != length:
            break
        if field_id == 1:
            values = [usize, csize, offset]
            at = 0
            for i, value in enumerate(values):
                if value == U32:
                    if at + 8 > len(body):
                        raise UnreadableCheckpoint("corrupt zip directory: zip64 extra field too short")
                    values[i] = int.from_bytes(body[at : at + 8], "little")
                    at += 8
            return values[0], values[1], values[2]
        pos += 4 + length
    raise UnreadableCheckpoint("corrupt zip directory: zip64 extra field missing")


def _shown(key: str) -> str:
    """A key as messages show it: itself when printable, else escaped (a name must not drive a terminal)."""
    return key if key.isprintable() else ascii(key)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _check_name(entry: _Central, findings: _Findings) -> str:
    """The name as text; control characters (NUL included) and undeclared encodings are ambiguous."""
    raw = entry.raw_name
    name = _text(raw)
    if _CONTROL.search(raw):
        findings.add(f"control character in record name {name!r}")
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            findings.add(f"record name {name!r} is not UTF-8")
        if not entry.flags & FLAG_UTF8:  # zipfile would decode it as cp437
            findings.add(f"record name {name!r} is not ASCII and not marked UTF-8")
    return name


def _prefix(entries: list[_Central], findings: _Findings) -> str:
    """torch's archive name: the first record's name up to its first '/'; every record must share it."""
    first = entries[0].raw_name
    if b"/" not in first:
        raise UnreadableCheckpoint("not a torch checkpoint: records do not share one top-level folder")
    prefix = first.split(b"/", 1)[0] + b"/"
    if any(not e.raw_name.startswith(prefix) for e in entries):
        findings.add("records do not share one top-level folder")
    return _text(prefix[:-1])


def _read_local_header(fh: BinaryIO, entry: _Central, name: str, key: str, file_size: int,
                       findings: _Findings) -> Record:  # fmt: skip
    """Find where a record's bytes start the way torch does: from the *local* name and extra lengths."""
    shown = _shown(key)
    raw = pread(fh, entry.header_offset, LOCAL_HEADER_SIZE)
    if len(raw) < LOCAL_HEADER_SIZE:
        raise UnreadableCheckpoint(f"truncated: local header of {shown} missing")
    sig, ver, flags, method, time, date, crc, csize, usize, name_len, extra_len = LOCAL_HEADER.unpack(raw)
    if sig != ZIP_MAGIC:
        raise UnreadableCheckpoint(f"record {shown}: bad local header signature")
    local_name = pread(fh, entry.header_offset + LOCAL_HEADER_SIZE, name_len)
    if local_name != entry.raw_name:
        findings.add(f"record {shown}: local and central names differ ({_text(local_name)!r})")
    data_offset = entry.header_offset + LOCAL_HEADER_SIZE + name_len + extra_len
    if data_offset + entry.size > file_size:
        raise UnreadableCheckpoint(f"truncated: record {shown} extends past the end of its data")
    mismatches = _header_mismatches(entry, (ver, flags, method, time, date, crc, csize, usize))
    for what in ("sizes", "method"):
        if what in mismatches:
            findings.add(f"record {shown}: local header {what} disagree with the central directory")
    return Record(name, key, entry.header_offset, data_offset, entry.size, entry.crc32, entry.flags, mismatches)


def _header_mismatches(entry: _Central, local: tuple[int, ...]) -> tuple[str, ...]:
    """Local-header fields that contradict the central directory.

    Sizes and method make the archive ambiguous (a reader that walks local headers would read
    other bytes); the others are damage only ``validate`` reports (torch reads names and lengths
    from the local header, nothing else). With bit 3 set the local CRC and sizes are 0 by
    convention (the data descriptor holds them), so only a non-zero, different value counts.
    """
    ver, flags, method, time, date, crc, csize, usize = local
    deferred = bool(flags & FLAG_DESCRIPTOR)
    checks = {
        "version": ver != entry.version,
        "flags": flags != entry.flags,
        "method": method != entry.method,
        "time": (time, date) != entry.date_time,
        "crc": crc != entry.crc32 and not (deferred and crc == 0),
        "sizes": any(
            value != expected and value != U32 and not (deferred and value == 0)
            for value, expected in ((csize, entry.size), (usize, entry.file_size))
        ),
    }
    return tuple(name for name, differs in checks.items() if differs)


def _end(record: Record, entry: _Central) -> int:
    """Where a record's bytes end; without its local header read (the listing's fast path) the
    least it can take: 30 bytes + its central name + its data."""
    if record.data_offset >= 0:
        return record.data_offset + record.size
    return record.header_offset + LOCAL_HEADER_SIZE + len(entry.raw_name) + record.size


def _check_layout(spans: list[tuple[int, int, str]], directory_offset: int, findings: _Findings) -> None:
    """Records must not overlap each other or reach into the central directory."""
    spans.sort()
    for (_start, end, key), (next_start, _e, next_key) in zip(spans, spans[1:]):
        if end > next_start:
            findings.add(f"records {key} and {next_key} overlap")
    for _start, end, key in spans:
        if end > directory_offset:
            findings.add(f"record {key} extends past the end of its data into the central directory")


# ------------------------------------------------------------------------------------ damage checks


DESCRIPTOR_MAGIC = b"PK\x07\x08"


def end_record_problems(fh: BinaryIO, file_size: int) -> list[str]:
    """Fields of the end record that contradict the zip64 end record torch also writes.

    ``zipfile`` and torch's reader both use the zip64 values and ignore the classic ones, so a
    flipped byte there changes nothing a reader sees; ``validate`` still reports it as damage.
    """
    try:
        at, record = _end_record(fh, file_size)
    except UnreadableCheckpoint:
        return ["end of central directory record missing"]
    _sig, disk, cd_disk, here, total, cd_size, cd_offset, _comment = EOCD.unpack(record)
    locator = pread(fh, at - ZIP64_LOCATOR.size, ZIP64_LOCATOR.size) if at >= ZIP64_LOCATOR.size else b""
    if locator[:4] != ZIP64_LOCATOR_MAGIC:
        return []  # no zip64 records: the classic values are the only ones
    _sig, _disk, z64_offset, _disks = ZIP64_LOCATOR.unpack(locator)
    raw = pread(fh, z64_offset, ZIP64_EOCD.size)
    if len(raw) < ZIP64_EOCD.size or raw[:4] != ZIP64_EOCD_MAGIC:
        return ["zip64 end of central directory record missing"]
    fields = ZIP64_EOCD.unpack(raw)
    z64_disk, z64_cd_disk, z64_here, z64_total, z64_cd_size, z64_cd_offset = fields[4:10]
    pairs = {
        "disk numbers": ((disk, z64_disk, U16), (cd_disk, z64_cd_disk, U16)),
        "entry counts": ((here, z64_here, U16), (total, z64_total, U16)),
        "directory size": ((cd_size, z64_cd_size, U32),),
        "directory offset": ((cd_offset, z64_cd_offset, U32),),
    }
    return [
        f"end of central directory record disagrees with the zip64 record ({name})"
        for name, checks in pairs.items()
        if any(value != expected and value != sentinel for value, expected, sentinel in checks)
    ]


def data_descriptor_problem(fh: BinaryIO, record: Record) -> str | None:
    """Check the data descriptor after a record (bit 3) against the central directory's CRC and size.

    torch writes ``PK\\x07\\x08, crc32, size, size`` (64-bit sizes for zip64). The signature is
    optional in the zip spec; without it the CRC comes first.
    """
    if not record.flags & FLAG_DESCRIPTOR:
        return None
    raw = pread(fh, record.data_offset + record.size, 24)
    body = raw[4:] if raw[:4] == DESCRIPTOR_MAGIC else raw
    if len(body) < 12:
        return f"record {record.key}: data descriptor missing"
    crc = int.from_bytes(body[:4], "little")
    small = int.from_bytes(body[4:8], "little"), int.from_bytes(body[8:12], "little")
    large = (int.from_bytes(body[4:12], "little"), int.from_bytes(body[12:20], "little")) if len(body) >= 20 else None
    if crc != record.crc32:
        return f"record {record.key}: CRC in data descriptor ({crc:08x}) differs from central directory ({record.crc32:08x})"
    if small != (record.size, record.size) and large != (record.size, record.size):
        return f"record {record.key}: sizes in data descriptor differ from central directory"
    return None


# ------------------------------------------------------------------------------------------ bytes


def pread(fh: BinaryIO, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``: ``os.pread`` on a local file; seek and read on an object
    store's file (no descriptor), whose reads are ranged requests."""
    try:
        fd = fh.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both an OSError and a ValueError
        fh.seek(offset)
        return fh.read(size)
    return os.pread(fd, size, offset)


def size_of(fh: BinaryIO) -> int:
    """The size of an open file: ``fstat`` locally, the end position for an object store's file."""
    try:
        fd = fh.fileno()
    except (OSError, ValueError, AttributeError):
        return fh.seek(0, os.SEEK_END)
    return os.fstat(fd).st_size


def read_record(fh: BinaryIO, record: Record, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """The bytes of one record (refusing records larger than ``limit``)."""
    if record.size > limit:
        raise UnreadableCheckpoint(f"record {record.key} too large to read ({record.size} bytes)")
    data = pread(fh, record.data_offset, record.size)
    if len(data) != record.size:
        raise UnreadableCheckpoint(f"truncated: record {record.key} is short")
    return data
