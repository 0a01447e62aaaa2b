"""The torch zip container, read through its central directory without torch.

``torch.save`` writes an uncompressed zip whose entries share one top-level prefix:
``<prefix>/data.pkl`` (the pickled object graph), ``<prefix>/data/<key>`` (raw storage bytes,
64-byte aligned), ``<prefix>/byteorder``, ``<prefix>/version`` and a few more. This module finds
every record's data offset, size and CRC-32 so other modules can read only what they need
(``data.pkl`` for metadata, record bytes for checksums) and flags containers that torch's reader
and Python's ``zipfile`` could interpret differently (*suspicious*).
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import UnreadableCheckpoint

ZIP_MAGIC = b"PK\x03\x04"
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
LOCAL_HEADER_SIZE = LOCAL_HEADER.size  # 30
MAX_PICKLE_BYTES = 512 * 1024 * 1024
MAX_RECORDS = 1_000_000
HEADER_NAME_ROOM = 256  # bytes prefetched after a local header for its name (a longer one is read when needed)


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
    """The parsed central directory of one torch zip checkpoint."""

    path: Path
    file_size: int
    prefix: str
    records: dict[str, Record]  # by key
    suspicious: list[str] = field(default_factory=list)
    local_headers: bool = True  # False: only data.pkl's local header was read (other data_offset are -1)

    @property
    def pickle_record(self) -> Record:
        return self.records["data.pkl"]

    def storage_record(self, storage_key: str) -> Record | None:
        return self.records.get(f"data/{storage_key}")

    @property
    def has_checksums(self) -> bool:
        """False when the writer switched CRC-32 off (torch writes 0 for every record then)."""
        nonempty = [r for r in self.records.values() if r.size > 0]
        return not nonempty or any(r.crc32 != 0 for r in nonempty)


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
    """Parse the central directory and every local header. Raises UnreadableCheckpoint.

    ``local_headers=False`` reads only data.pkl's local header: enough to read the pickle the
    way torch would, without one scattered read per storage record (on a cold page cache those
    reads cost more than everything else a listing does). Other records then have
    ``data_offset == -1`` and no header checks; ``validate`` and every byte reader use the default.
    """
    size = size_of(fh)
    fh.seek(0)
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            start_dir = zf.start_dir
    except zipfile.BadZipFile as exc:
        raise UnreadableCheckpoint(f"truncated or not a zip: {_zip_reason(exc)}") from None
    except (OSError, ValueError, EOFError, struct.error) as exc:
        raise UnreadableCheckpoint(f"truncated or not a zip: {exc}") from None
    except Exception as exc:  # zipfile raises NotImplementedError etc. for damaged version fields
        raise UnreadableCheckpoint(f"corrupt zip directory: {type(exc).__name__}: {exc}") from None
    if not infos:
        raise UnreadableCheckpoint("empty zip: no records")
    if len(infos) > MAX_RECORDS:
        raise UnreadableCheckpoint(f"too many records ({len(infos)})")
    prefix = _common_prefix(infos)
    if local_headers and hasattr(fh, "prefetch"):  # an object store's file: every local header in a few requests
        fh.prefetch([(i.header_offset, i.header_offset + LOCAL_HEADER_SIZE + HEADER_NAME_ROOM) for i in infos])
    suspicious: list[str] = []
    records: dict[str, Record] = {}
    for info in infos:
        key = info.filename[len(prefix) + 1 :]
        if key in records:
            suspicious.append(f"duplicate entry name {info.filename!r}")
            continue
        if info.compress_type != zipfile.ZIP_STORED:
            suspicious.append(f"record {key} is compressed (torch writes stored records)")
        if info.flag_bits & 0x1:
            suspicious.append(f"record {key} is encrypted")
        if local_headers or key == "data.pkl":
            records[key] = _read_local_header(fh, info, key, start_dir, size, suspicious)
        else:
            records[key] = _central_record(info, key, start_dir)
    if local_headers:
        _check_overlaps(records, suspicious)
    if "data.pkl" not in records:
        raise UnreadableCheckpoint(f"missing {prefix}/data.pkl")
    if records["data.pkl"].size > MAX_PICKLE_BYTES:
        raise UnreadableCheckpoint(f"data.pkl too large ({records['data.pkl'].size} bytes)")
    return Container(path, size, prefix, records, suspicious, local_headers)


def _central_record(info: zipfile.ZipInfo, key: str, start_dir: int) -> Record:
    """A record from the central directory alone (no local header read): its data offset is unknown."""
    if info.header_offset + LOCAL_HEADER_SIZE + len(info.orig_filename.encode()) + info.compress_size > start_dir:
        raise UnreadableCheckpoint(f"truncated: record {key} extends past the end of its data")
    return Record(info.filename, key, info.header_offset, -1, info.compress_size, info.CRC, info.flag_bits)


def _zip_reason(exc: Exception) -> str:
    text = str(exc)
    if "not a zip file" in text.lower():
        return "central directory missing"
    return text


def _common_prefix(infos: list[zipfile.ZipInfo]) -> str:
    prefixes = {info.filename.split("/", 1)[0] for info in infos}
    if len(prefixes) != 1 or any("/" not in info.filename for info in infos):
        raise UnreadableCheckpoint("not a torch checkpoint: records do not share one top-level folder")
    return prefixes.pop()


def _read_local_header(
    fh: BinaryIO, info: zipfile.ZipInfo, key: str, start_dir: int, file_size: int, suspicious: list[str]
) -> Record:
    """Find where a record's bytes start; the central directory alone does not say."""
    if not 0 <= info.header_offset < start_dir:  # zipfile shifts offsets by a damaged end record
        raise UnreadableCheckpoint(f"record {key}: local header offset {info.header_offset} outside the file's data")
    raw = pread(fh, info.header_offset, LOCAL_HEADER_SIZE)
    if len(raw) < LOCAL_HEADER_SIZE:
        raise UnreadableCheckpoint(f"truncated: local header of {key} missing")
    sig, ver, flags, method, time, date, crc, csize, usize, name_len, extra_len = LOCAL_HEADER.unpack(raw)
    if sig != ZIP_MAGIC:
        raise UnreadableCheckpoint(f"record {key}: bad local header signature")
    local_name = pread(fh, info.header_offset + LOCAL_HEADER_SIZE, name_len)
    if local_name.decode("utf-8", "replace") != info.filename:
        suspicious.append(f"record {key}: local and central names differ ({local_name!r})")
    data_offset = info.header_offset + LOCAL_HEADER_SIZE + name_len + extra_len
    end = data_offset + info.compress_size
    if end > start_dir or end > file_size:
        raise UnreadableCheckpoint(f"truncated: record {key} extends past the end of its data")
    mismatches = _header_mismatches(info, (ver, flags, method, time, date, crc, csize, usize))
    return Record(info.filename, key, info.header_offset, data_offset, info.compress_size, info.CRC, flags, mismatches)


def _header_mismatches(info: zipfile.ZipInfo, local: tuple[int, ...]) -> tuple[str, ...]:
    """Local-header fields that contradict the central directory: damage ``zipfile`` never notices.

    Only ``validate`` reports these (torch reads names and lengths from the local header, nothing
    else); they make flipped bytes in headers visible. With bit 3 set the local CRC and sizes are
    0 by convention (the data descriptor holds them), so only a non-zero, different value counts.
    """
    ver, flags, method, time, date, crc, csize, usize = local
    date_time = ((date >> 9) + 1980, (date >> 5) & 0xF, date & 0x1F, time >> 11, (time >> 5) & 0x3F, (time & 0x1F) * 2)
    deferred = bool(flags & 0x8)
    checks = {
        "version": ver != info.extract_version,
        "flags": flags != info.flag_bits,
        "method": method != info.compress_type,
        "time": date_time != info.date_time,
        "crc": crc != info.CRC and not (deferred and crc == 0),
        "sizes": any(
            value != expected and value != 0xFFFFFFFF and not (deferred and value == 0)
            for value, expected in ((csize, info.compress_size), (usize, info.file_size))
        ),
    }
    return tuple(name for name, differs in checks.items() if differs)


DESCRIPTOR_MAGIC = b"PK\x07\x08"


EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory record (22 bytes)
ZIP64_LOCATOR = struct.Struct("<4sIQI")  # zip64 end of central directory locator (20 bytes)
ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory record (56 bytes)


def end_record_problems(fh: BinaryIO, file_size: int) -> list[str]:
    """Fields of the end record that contradict the zip64 end record torch also writes.

    ``zipfile`` and torch's reader both use the zip64 values and ignore the classic ones, so a
    flipped byte there changes nothing a reader sees; ``validate`` still reports it as damage.
    """
    tail = pread(fh, max(0, file_size - 65_536 - EOCD.size), 65_536 + EOCD.size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < EOCD.size:
        return ["end of central directory record missing"]
    _sig, disk, cd_disk, here, total, cd_size, cd_offset, _comment = EOCD.unpack_from(tail, at)
    if at < ZIP64_LOCATOR.size or tail[at - ZIP64_LOCATOR.size : at - ZIP64_LOCATOR.size + 4] != b"PK\x06\x07":
        return []  # no zip64 records: zipfile already used (and checked) the classic values
    _sig, _disk, z64_offset, _disks = ZIP64_LOCATOR.unpack_from(tail, at - ZIP64_LOCATOR.size)
    raw = pread(fh, z64_offset, ZIP64_EOCD.size)
    if len(raw) < ZIP64_EOCD.size or raw[:4] != b"PK\x06\x06":
        return ["zip64 end of central directory record missing"]
    fields = ZIP64_EOCD.unpack(raw)
    z64_disk, z64_cd_disk, z64_here, z64_total, z64_cd_size, z64_cd_offset = fields[4:10]
    pairs = {
        "disk numbers": ((disk, z64_disk, 0xFFFF), (cd_disk, z64_cd_disk, 0xFFFF)),
        "entry counts": ((here, z64_here, 0xFFFF), (total, z64_total, 0xFFFF)),
        "directory size": ((cd_size, z64_cd_size, 0xFFFFFFFF),),
        "directory offset": ((cd_offset, z64_cd_offset, 0xFFFFFFFF),),
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
    if not record.flags & 0x8:
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


def _check_overlaps(records: dict[str, Record], suspicious: list[str]) -> None:
    ordered = sorted(records.values(), key=lambda r: r.header_offset)
    for before, after in zip(ordered, ordered[1:]):
        if before.data_offset + before.size > after.header_offset:
            suspicious.append(f"records {before.key} and {after.key} overlap")


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
