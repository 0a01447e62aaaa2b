"""Writing safetensors files as a stream: the header first (every tensor's size is known up front),
then each tensor's bytes in order, so no file is ever held in memory whole.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a
JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``
padded with spaces to a multiple of 8 bytes, then the data region, tensors back to back in header
order, little-endian, C-contiguous. This module knows bytes only (no torch); the caller hands each
tensor's bytes over in chunks, in the planned order.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import BinaryIO, Mapping

from .safetensors import DTYPE_BITS

# torch dtype name (ckptctl.formats.unpickler.DTYPE_ITEMSIZE keys) -> safetensors dtype
SAFETENSORS_DTYPE: Mapping[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e8m0fnu": "F8_E8M0",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
}  # fmt: skip
ALIGNMENT = 8


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of a file to write: its name, safetensors dtype, shape and byte length."""

    name: str
    dtype: str  # a safetensors dtype ("F32")
    shape: tuple[int, ...]
    nbytes: int


def check_dtype(dtype: str) -> str:
    """The safetensors name of a torch dtype name; ValueError for one safetensors cannot hold."""
    try:
        name = SAFETENSORS_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors") from None
    assert name in DTYPE_BITS
    return name


def header_bytes(tensors: list[PlannedTensor], metadata: Mapping[str, str]) -> bytes:
    """The length prefix and the padded JSON header for ``tensors`` laid out in order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                               "data_offsets": [offset, offset + tensor.nbytes]}  # fmt: skip
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % ALIGNMENT)  # the data region starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


class StreamWriter:
    """Writes one planned file: the header at once, then tensors' bytes in order, checking sizes."""

    def __init__(self, fh: BinaryIO, tensors: list[PlannedTensor], metadata: Mapping[str, str]):
        self._fh = fh
        self._tensors = list(tensors)
        self._index = 0
        self._written = 0  # of the current tensor
        head = header_bytes(self._tensors, metadata)
        fh.write(head)
        self.data_offset = len(head)

    def write(self, chunk: bytes | memoryview) -> None:
        """The next bytes of the current tensor (in order); a tensor may come in any number of chunks."""
        if not len(chunk):
            return
        tensor = self._current()
        if self._written + len(chunk) > tensor.nbytes:
            raise ValueError(f"{tensor.name}: more bytes than its {tensor.nbytes}")
        self._fh.write(chunk)
        self._written += len(chunk)
        if self._written == tensor.nbytes:
            self._index += 1
            self._written = 0
            self._skip_empty()

    def _current(self) -> PlannedTensor:
        self._skip_empty()
        if self._index >= len(self._tensors):
            raise ValueError("every planned tensor is already written")
        return self._tensors[self._index]

    def _skip_empty(self) -> None:
        while self._index < len(self._tensors) and self._tensors[self._index].nbytes == 0 and self._written == 0:
            self._index += 1

    def close(self) -> None:
        """Check that every planned byte was written (a short file must never be renamed into place)."""
        self._skip_empty()
        if self._index != len(self._tensors):
            missing = self._tensors[self._index].name
            raise ValueError(f"export incomplete: {missing} not fully written")
