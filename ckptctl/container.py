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


@dataclass(frozen=True)
class Record:
    """One zip entry: where its bytes are and what checksum the writer stored for them."""

    name: str  # full name inside the zip
    key: str  # name below the prefix, e.g. "data.pkl", "data/17"
    header_offset: int
    data_offset: int
    size: int
    crc32: int


@dataclass
class Container:
    """The parsed central directory of one torch zip checkpoint."""

    path: Path
    file_size: int
    prefix: str
    records: dict[str, Record]  # by key
    suspicious: list[str] = field(default_factory=list)

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


def open_container(path: Path, fh: BinaryIO) -> Container:
    """Parse the central directory and every local header. Raises UnreadableCheckpoint."""
    file_size = os.fstat(fh.fileno()).st_size
    fh.seek(0)
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            start_dir = zf.start_dir
    except zipfile.BadZipFile as exc:
        raise UnreadableCheckpoint(f"truncated or not a zip: {_zip_reason(exc)}") from None
    except (OSError, ValueError, EOFError, struct.error) as exc:
        raise UnreadableCheckpoint(f"truncated or not a zip: {exc}") from None
    if not infos:
        raise UnreadableCheckpoint("empty zip: no records")
    if len(infos) > MAX_RECORDS:
        raise UnreadableCheckpoint(f"too many records ({len(infos)})")
    prefix = _common_prefix(infos)
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
        records[key] = _read_local_header(fh, info, key, start_dir, file_size, suspicious)
    _check_overlaps(records, suspicious)
    if "data.pkl" not in records:
        raise UnreadableCheckpoint(f"missing {prefix}/data.pkl")
    if records["data.pkl"].size > MAX_PICKLE_BYTES:
        raise UnreadableCheckpoint(f"data.pkl too large ({records['data.pkl'].size} bytes)")
    return Container(path, file_size, prefix, records, suspicious)


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
    raw = _pread(fh, info.header_offset, LOCAL_HEADER_SIZE)
    if len(raw) < LOCAL_HEADER_SIZE:
        raise UnreadableCheckpoint(f"truncated: local header of {key} missing")
    sig, _ver, _flags, _method, _t, _d, _crc, _csize, _usize, name_len, extra_len = LOCAL_HEADER.unpack(raw)
    if sig != ZIP_MAGIC:
        raise UnreadableCheckpoint(f"record {key}: bad local header signature")
    local_name = _pread(fh, info.header_offset + LOCAL_HEADER_SIZE, name_len)
    if local_name.decode("utf-8", "replace") != info.filename:
        suspicious.append(f"record {key}: local and central names differ ({local_name!r})")
    data_offset = info.header_offset + LOCAL_HEADER_SIZE + name_len + extra_len
    end = data_offset + info.compress_size
    if end > start_dir or end > file_size:
        raise UnreadableCheckpoint(f"truncated: record {key} extends past the end of its data")
    return Record(info.filename, key, info.header_offset, data_offset, info.compress_size, info.CRC)


def _check_overlaps(records: dict[str, Record], suspicious: list[str]) -> None:
    ordered = sorted(records.values(), key=lambda r: r.header_offset)
    for before, after in zip(ordered, ordered[1:]):
        if before.data_offset + before.size > after.header_offset:
            suspicious.append(f"records {before.key} and {after.key} overlap")


def _pread(fh: BinaryIO, offset: int, size: int) -> bytes:
    return os.pread(fh.fileno(), size, offset)


def read_record(fh: BinaryIO, record: Record, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """The bytes of one record (refusing records larger than ``limit``)."""
    if record.size > limit:
        raise UnreadableCheckpoint(f"record {record.key} too large to read ({record.size} bytes)")
    data = _pread(fh, record.data_offset, record.size)
    if len(data) != record.size:
        raise UnreadableCheckpoint(f"truncated: record {record.key} is short")
    return data
