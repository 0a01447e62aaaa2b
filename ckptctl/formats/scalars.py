"""Numbers saved as one-element tensors (``train_loss=loss``), read from their few bytes, no torch.

The safe reader never reads tensor bytes, so a loss saved as a 0-d tensor was a placeholder
without a value, and ``list``, ``--sort val_loss``, ``prune --keep-best-k`` and ``inspect`` showed
nothing for it. A tensor of one element of at most :data:`MAX_SCALAR_BYTES` is a number: its
value is read here with ``struct`` from the storage record at the tensor's offset, in the byte
order of the archive's ``byteorder`` record (little-endian when absent, as torch assumes).

The work is bounded whatever the file says: callers ask for a few named keys only (the metadata's
loss fields, a capped number of other top-level keys), and each costs one local header and at
most :data:`CHECKED_RECORD_BYTES` bytes. A record that small is read whole and its CRC-32
checked against the central directory, so a damaged or swapped file gives no number rather than
a wrong one. The file is opened again by path (the reader has closed it): only a regular file of
the size the reader saw is read.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from typing import Any, BinaryIO, Iterator, Mapping

from .container import LOCAL_HEADER, LOCAL_HEADER_SIZE, ZIP_MAGIC, Record, pread
from ..errors import CkptctlError
from .reader import CheckpointFile
from .safe_open import open_regular
from .storage import RemotePath, open_object
from .unpickler import DTYPE_ITEMSIZE, TensorRef

MAX_SCALAR_BYTES = 16  # one element of at most this size is a number
CHECKED_RECORD_BYTES = 64  # records up to this size are read whole and CRC-checked
STRUCT_CODES = {
    "float64": "d", "float32": "f", "float16": "e", "int64": "q", "int32": "i", "int16": "h", "int8": "b",
    "uint8": "B", "uint16": "H", "uint32": "I", "uint64": "Q",
}  # fmt: skip  (bfloat16: the upper half of a float32, see _decode)


def is_scalar(value: Any) -> bool:
    """A tensor placeholder holding exactly one number this module can decode."""
    return (
        isinstance(value, TensorRef)
        and value.numel == 1
        and (value.dtype in STRUCT_CODES or value.dtype == "bfloat16")
        and DTYPE_ITEMSIZE[value.dtype] <= MAX_SCALAR_BYTES
    )


def read_scalars(ckpt: CheckpointFile, values: Mapping[str, Any]) -> dict[str, float | int]:
    """The numbers held by the one-element tensors among ``values`` (name -> value), by name.

    Values that are not such tensors, and any that cannot be read or fail their checksum, are
    left out; nothing here raises for a damaged or vanished file. Sharded (DCP) checkpoints keep
    no storage records in one file and give none.
    """
    wanted = {name: value for name, value in values.items() if is_scalar(value)}
    if wanted and ckpt.format == "dcp":
        return _read_dcp(ckpt, wanted)
    if not wanted or ckpt.format not in ("zip", "legacy"):
        return {}
    try:
        with _reopen(ckpt) as fh:
            byteorder = _byteorder(ckpt, fh) if fh is not None else None
            if fh is None or byteorder is None:
                return {}
            numbers = {name: _read_one(ckpt, fh, tensor, byteorder) for name, tensor in wanted.items()}
    except (OSError, ValueError, struct.error, CkptctlError):
        return {}
    return {name: number for name, number in numbers.items() if number is not None}


def _read_dcp(ckpt: CheckpointFile, wanted: Mapping[str, TensorRef]) -> dict[str, float | int]:
    """One-element tensors of a DCP directory: each is its own small torch.save archive in a shard."""
    from .dcp import scalar_bytes  # dcp imports nothing of this module

    by_key = {tensor.storage.key: name for name, tensor in wanted.items()}  # DCP keys storages by FQN
    numbers: dict[str, float | int] = {}
    for key, (dtype, raw, byteorder) in scalar_bytes(ckpt.path, set(by_key)).items():
        if dtype in STRUCT_CODES or dtype == "bfloat16":
            numbers[by_key[key]] = _decode(dtype, raw, byteorder)
    return numbers


@contextlib.contextmanager
def _reopen(ckpt: CheckpointFile) -> Iterator[BinaryIO | None]:
    """The checkpoint's file again, or None if it is no longer a regular file of the size read."""
    if isinstance(ckpt.path, RemotePath):
        with open_object(ckpt.path) as fh:
            yield fh
        return
    with open_regular(ckpt.path) as fh:  # a FIFO swapped in since the read must not block
        yield fh if os.fstat(fh.fileno()).st_size == ckpt.size_bytes else None


def _byteorder(ckpt: CheckpointFile, fh: BinaryIO) -> str | None:
    """'little' or 'big' from the archive's ``byteorder`` record; legacy files are little-endian."""
    record = ckpt.container.records.get("byteorder") if ckpt.container is not None else None
    if record is None:
        return "little"
    raw = _record_bytes(ckpt, fh, record)
    text = raw.decode("ascii", "replace").strip() if raw is not None else None
    return text if text in ("little", "big") else None


def _read_one(ckpt: CheckpointFile, fh: BinaryIO, tensor: TensorRef, byteorder: str) -> float | int | None:
    """One tensor's element: from its whole record when small (CRC-checked), else from its position."""
    itemsize = DTYPE_ITEMSIZE[tensor.dtype]
    start = tensor.offset * itemsize
    record = ckpt.container.storage_record(tensor.storage.key) if ckpt.container is not None else None
    if record is not None and record.size <= CHECKED_RECORD_BYTES:
        data = _record_bytes(ckpt, fh, record)
        raw = data[start : start + itemsize] if data is not None else b""
    else:  # a view into a large storage (zip), or the legacy format (no CRC-32s at all)
        span = ckpt.spans.get(tensor.storage.key)
        base = span.offset if span is not None else _data_offset(fh, record, ckpt.size_bytes) if record else None
        raw = pread(fh, base + start, itemsize) if base is not None else b""
    return _decode(tensor.dtype, raw, byteorder) if len(raw) == itemsize else None


def _record_bytes(ckpt: CheckpointFile, fh: BinaryIO, record: Record) -> bytes | None:
    """A small record's bytes if its CRC-32 matches the central directory's (None otherwise)."""
    if record.size > CHECKED_RECORD_BYTES:
        return None
    offset = record.data_offset if record.data_offset >= 0 else _data_offset(fh, record, ckpt.size_bytes)
    if offset is None:
        return None
    data = pread(fh, offset, record.size)
    if len(data) != record.size:
        return None
    if ckpt.container is not None and ckpt.container.has_checksums and zlib.crc32(data) != record.crc32:
        return None
    return data


def _data_offset(fh: BinaryIO, record: Record, file_size: int) -> int | None:
    """Where a record's bytes start, from its local header (the listing's fast path skipped it)."""
    if record.data_offset >= 0:
        return record.data_offset
    raw = pread(fh, record.header_offset, LOCAL_HEADER_SIZE)
    if len(raw) != LOCAL_HEADER_SIZE:
        return None
    fields = LOCAL_HEADER.unpack(raw)
    signature, name_len, extra_len = fields[0], fields[9], fields[10]
    if signature != ZIP_MAGIC or pread(fh, record.header_offset + LOCAL_HEADER_SIZE, name_len) != record.name.encode():
        return None
    offset = record.header_offset + LOCAL_HEADER_SIZE + name_len + extra_len
    return offset if offset + record.size <= file_size else None


def _decode(dtype: str, raw: bytes, byteorder: str) -> float | int:
    order = "<" if byteorder == "little" else ">"
    if dtype == "bfloat16":  # the high 16 bits of a float32
        return struct.unpack(order + "f", b"\0\0" + raw if order == "<" else raw + b"\0\0")[0]
    return struct.unpack(order + STRUCT_CODES[dtype], raw)[0]
