"""Read a ``.safetensors`` file's header safely: bounded work, one verdict, no third-party code.

A safetensors file is 8 bytes of little-endian header length N, N bytes of UTF-8 JSON naming
each tensor's dtype, shape and ``data_offsets`` (relative to the data region), then the data.
The header is untrusted, so it gets the same budgets as every other reader (docs/architecture.md, "Every
reader has a budget"): N is at most 100 MB (the ``safetensors`` library's own ``MAX_HEADER_SIZE``)
and at most what the file holds; nesting is bounded *before* ``json`` recurses; numbers are
bounded before ``int()`` works on them; only the 8 + N header bytes are read.

The rules are the library's (checked against safetensors 0.8 by tests/test_fuzz_safetensors.py):
known dtypes, ``end - begin`` equal to the tensor's byte size, tensors that tile the data region
exactly (sorted by offsets, each begins where the previous ends: no overlap, no gap, nothing
after the last one), string-only ``__metadata__``. Where two readers could disagree we are
deliberately stricter than the library and refuse:

- duplicate keys anywhere (the library keeps the last tensor or metadata value of a name);
- a header that does not start with ``{`` (the library skips leading whitespace);
- JSON nested deeper than :data:`MAX_DEPTH` (the library allows ~128 levels in ignored fields);
- a tensor entry written as a JSON array instead of an object (serde accepts that form);
- more than :data:`MAX_DIMS` dimensions, or a dimension / partial product of the shape over int64
  (the library checks only for u64 overflow; torch sizes are int64).

A file that is simply shorter than its header promises is ``truncated: ...``; everything else
is ``corrupt safetensors header: ...``. Errors of ``open`` itself (missing file, permission)
stay ``OSError``, as for :func:`ckptctl.formats.safe_open.open_regular`.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import UnreadableCheckpoint
from .safe_open import open_regular
from .values import short_repr

MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's MAX_HEADER_SIZE: a longer header is refused before it is read."""
MAX_DEPTH = 8
"""Bracket nesting allowed in the header; a valid one needs 3 (root, tensor entry, shape)."""
MAX_DIMS = 64
"""Dimensions of one tensor's shape."""
INT64_MAX = 2**63 - 1
_MAX_INT_DIGITS = 20
"""Longer JSON integers are not ints for us (u64 has 20 digits); serde reads them as floats too."""

# Bits per element, as the safetensors library (0.8) lists them; F4 and F6 pack below a byte.
DTYPE_BITS: Mapping[str, int] = MappingProxyType({
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
})

_LENGTH = struct.Struct("<Q")
_STRING = re.compile(rb'"[^"]*"')
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b'"[]{}'))


@dataclass(frozen=True)
class SafetensorsTensor:
    """One tensor as the header describes it; ``begin``/``end`` are relative to the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """What the header says, checked: tensors in offset order, tiling the data region exactly."""

    header_length: int
    data_offset: int
    metadata: Mapping[str, str]
    tensors: tuple[SafetensorsTensor, ...]

    @property
    def data_length(self) -> int:
        return self.tensors[-1].end if self.tensors else 0


def corrupt(reason: str) -> UnreadableCheckpoint:
    return UnreadableCheckpoint(f"corrupt safetensors header: {reason}")


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The checked header of ``path``; :class:`UnreadableCheckpoint` with one line if it is not valid."""
    with open_regular(path) as file:
        return _header_of_open(file)


@dataclass(frozen=True)
class ParsedHeader:
    """The header's JSON, checked entry by entry but not yet against the data region."""

    metadata: Mapping[str, str]
    tensors: tuple[SafetensorsTensor, ...]


def parse_header(raw: bytes) -> ParsedHeader:
    """Decode and check the N header bytes (everything that does not need the file size)."""
    if not raw.startswith(b"{"):
        raise corrupt("does not start with '{'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise corrupt(f"not UTF-8 (byte {error.start})") from None
    _check_depth(raw)
    try:
        document = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except UnreadableCheckpoint:
        raise
    except json.JSONDecodeError as error:
        raise corrupt(f"invalid JSON ({error.msg} at char {error.pos})") from None
    except (ValueError, RecursionError):  # belt and braces: _check_depth already bounds nesting
        raise corrupt("invalid JSON") from None
    if not isinstance(document, dict):
        raise corrupt("not a JSON object")
    if _SURROGATE_ESCAPE.search(raw):
        _check_strings(document)
    metadata: Mapping[str, str] = MappingProxyType({})
    tensors = []
    for name, entry in document.items():
        if name == "__metadata__":
            metadata = _metadata(entry)
        else:
            tensors.append(_tensor(name, entry))
    return ParsedHeader(metadata, tuple(tensors))


def _check_depth(raw: bytes) -> None:
    """Refuse nesting deeper than MAX_DEPTH before ``json`` recurses into it, in C-speed passes.

    Escape pairs (``\\\\`` then ``\\"``) are dropped, so every remaining quote delimits a string;
    only quotes and brackets are kept (``{}`` mapped to ``[]``); strings are dropped; then each
    pass of ``replace("[]", "")`` removes the innermost pairs, lowering every pair's height by
    exactly one: after MAX_DEPTH passes a document nested no deeper is gone. Exact for valid
    JSON; invalid JSON that slips through is refused by the parser.
    """
    brackets = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_BRACKETS_ONLY, _NOT_BRACKETS)
    brackets = _STRING.sub(b"", brackets)
    for _ in range(MAX_DEPTH):
        if not brackets:
            return
        brackets = brackets.replace(b"[]", b"")
    if brackets:
        raise corrupt(f"JSON nested deeper than {MAX_DEPTH} levels or unbalanced")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two readers could keep different values of a repeated key: refuse it."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise corrupt(f"duplicate key {short_repr(key)}")
            seen.add(key)
    return result


def _bounded_int(digits: str) -> int | float:
    """``int()`` of a huge digit string is slow; past u64's length it is a float, as serde reads it."""
    if len(digits.lstrip("-")) > _MAX_INT_DIGITS:
        return _finite_float(digits)
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise corrupt("number out of range")
    return value


def _no_constant(name: str) -> None:
    raise corrupt(f"{name} is not JSON")


def _check_strings(value: Any) -> None:
    """Every string must be valid Unicode: ``json`` lets a lone ``\\ud800`` escape through."""
    if isinstance(value, str):
        _utf8(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _utf8(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def _utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise corrupt("lone surrogate escape in a string") from None


def _metadata(entry: Any) -> Mapping[str, str]:
    if entry is None:  # the library reads null as "no metadata"
        return MappingProxyType({})
    if not isinstance(entry, dict):
        raise corrupt("__metadata__ is not an object")
    for key, value in entry.items():
        if not isinstance(value, str):
            raise corrupt(f"__metadata__ value of {short_repr(key)} is not a string")
    return MappingProxyType(dict(entry))


def _tensor(name: str, entry: Any) -> SafetensorsTensor:
    if not isinstance(entry, dict):
        raise _bad(name, "is not an object")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise _bad(name, f"has no {field}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _bad(name, f"has unknown dtype {short_repr(dtype)}")
    shape = _shape(name, entry["shape"])
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(v) for v in offsets)):
        raise _bad(name, "data_offsets is not [begin, end]")
    begin, end = offsets
    if end < begin:
        raise _bad(name, "ends before it begins")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        raise _bad(name, f"of {dtype} does not end on a byte boundary")
    if end - begin != bits // 8:
        raise _bad(name, f"spans {end - begin} bytes, its {dtype} shape needs {bits // 8}")
    return SafetensorsTensor(name, dtype, shape, begin, end)


def _bad(name: str, problem: str) -> UnreadableCheckpoint:
    return corrupt(f"tensor {short_repr(name)} {problem}")


def _is_size(value: Any) -> bool:
    return type(value) is int and 0 <= value <= INT64_MAX


def _shape(name: str, shape: Any) -> tuple[int, ...]:
    if not (isinstance(shape, list) and all(type(v) is int and v >= 0 for v in shape)):
        raise _bad(name, "shape is not a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise _bad(name, f"has {len(shape)} dimensions, over {MAX_DIMS}")
    product = 1
    for dim in shape:  # every dimension and partial product (the library folds in u64; torch sizes are int64)
        product *= dim
        if dim > INT64_MAX or product > INT64_MAX:
            raise _bad(name, "shape overflows int64")
    return tuple(shape)


def _tile(header: ParsedHeader) -> tuple[SafetensorsTensor, ...]:
    """Tensors in offset order, each beginning where the previous ended (the library's validate)."""
    tensors = tuple(sorted(header.tensors, key=lambda t: (t.begin, t.end, t.name)))
    position = 0
    for tensor in tensors:
        if tensor.begin < position:
            raise corrupt(f"tensor {short_repr(tensor.name)} overlaps the one before it")
        if tensor.begin > position:
            raise corrupt(f"gap of {tensor.begin - position} bytes before tensor {short_repr(tensor.name)}")
        position = tensor.end
    return tensors


def _check_size(tensors: tuple[SafetensorsTensor, ...], available: int) -> None:
    needed = tensors[-1].end if tensors else 0
    if needed > available:
        raise UnreadableCheckpoint(f"truncated: tensors need {needed} data bytes, file has {available}")
    if needed < available:
        raise corrupt(f"{available - needed} bytes after the last tensor")


# ------------------------------------------------------------------ checks, inventory, values

MAX_CHUNK_BYTES = 64 * 1024 * 1024
"""The largest piece :func:`iter_tensor_bytes` hands over at once (its memory bound)."""

# safetensors dtype -> torch's name (the unpickler's dtype names); F4/F6 pack below a byte and
# have no such torch dtype: their tensors are shown as their bytes (uint8, shape [nbytes]).
TORCH_DTYPES: Mapping[str, str] = MappingProxyType({
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "C64": "complex64",
    "F64": "float64", "I64": "int64", "U64": "uint64", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
})  # fmt: skip


def check(path: str | os.PathLike[str]) -> list[str]:
    """Problems of the safetensors file ``path``, one line each; ``[]`` when it is valid.

    Bad header (JSON, dtypes, shapes, offsets that overlap, leave gaps or do not match a tensor's
    size), truncation (the data region shorter than the header's offsets), trailing bytes after
    the last tensor. Reads only the 8 + N header bytes and ``stat``s the file; never the data.
    """
    try:
        read_safetensors_header(path)
    except UnreadableCheckpoint as exc:
        return [exc.reason]
    except OSError as exc:
        return [f"cannot open: {exc.strerror or exc}"]
    return []


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of an inventory; ``offset`` is absolute in the file, ``nbytes`` its byte size."""

    name: str
    dtype: str  # the safetensors name (F32, BF16, ...)
    shape: tuple[int, ...]
    nbytes: int
    offset: int

    @property
    def offsets(self) -> tuple[int, int]:
        return self.offset, self.offset + self.nbytes


@dataclass(frozen=True)
class Inventory:
    """Every tensor of a safetensors file (in file order) and its ``__metadata__``."""

    path: str
    size_bytes: int
    header_length: int
    metadata: Mapping[str, str]
    tensors: tuple[TensorEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def inventory(path: str | os.PathLike[str]) -> Inventory:
    """The checked header of ``path`` as an inventory; :class:`UnreadableCheckpoint` if invalid."""
    header = read_safetensors_header(path)
    tensors = tuple(
        TensorEntry(t.name, t.dtype, t.shape, t.end - t.begin, header.data_offset + t.begin) for t in header.tensors
    )
    return Inventory(os.fspath(path), header.data_offset + header.data_length, header.header_length,
                     header.metadata, tensors)  # fmt: skip


def iter_tensor_bytes(path: str | os.PathLike[str], names: Any = None,
                      chunk_bytes: int = 16 * 1024 * 1024) -> Any:  # fmt: skip
    """Yield ``(entry, chunk)`` for the tensors ``names`` (all when None), in file order, each
    tensor as consecutive chunks of at most ``chunk_bytes`` (at least one chunk, ``b""`` for an
    empty tensor). Memory stays at about two chunks (the one handed over, the next being read)
    whatever the file's size (measured: 32 MiB peak streaming 256 MiB in 16 MiB chunks); the header is checked
    first and the file must still have the size it promises (a file cut short while being read
    raises ``truncated``). No pickle, no third-party code.
    """
    chunk_bytes = max(1, min(int(chunk_bytes), MAX_CHUNK_BYTES))
    wanted = None if names is None else set(names)
    with open_regular(path) as file:
        header = _header_of_open(file)
        fd = file.fileno()
        end_of_data = header.data_offset + header.data_length
        if wanted is not None:
            unknown = wanted - {t.name for t in header.tensors}
            if unknown:
                raise KeyError(f"no tensor {short_repr(sorted(unknown)[0])} in {os.fspath(path)}")
        for t in header.tensors:
            if wanted is not None and t.name not in wanted:
                continue
            entry = TensorEntry(t.name, t.dtype, t.shape, t.end - t.begin, header.data_offset + t.begin)
            position, end = entry.offset, entry.offset + entry.nbytes
            if position == end:
                yield entry, b""
                continue
            while position < end:
                data = os.pread(fd, min(chunk_bytes, end - position), position)
                if not data:
                    raise UnreadableCheckpoint(f"truncated: file ends at {position}, tensors need {end_of_data} bytes")
                position += len(data)
                yield entry, data


def _header_of_open(file: Any) -> SafetensorsHeader:
    """:func:`read_safetensors_header` on an already open file (the one the values are read from)."""
    size = os.fstat(file.fileno()).st_size
    prefix = file.read(_LENGTH.size)  # a file just opened: from its first byte
    if len(prefix) < _LENGTH.size:
        if not prefix:
            raise UnreadableCheckpoint("truncated: empty file")
        raise UnreadableCheckpoint(f"truncated: {len(prefix)} bytes, a safetensors file starts with 8")
    (length,) = _LENGTH.unpack(prefix)
    if length > MAX_HEADER_BYTES:
        raise corrupt(f"header length {length} over the {MAX_HEADER_BYTES}-byte limit")
    if length > size - _LENGTH.size:
        raise UnreadableCheckpoint(
            f"truncated: header length {length}, only {max(size - _LENGTH.size, 0)} bytes follow")
    raw = file.read(length)
    if len(raw) < length:
        raise UnreadableCheckpoint(f"truncated: header length {length}, only {len(raw)} bytes follow")
    header = parse_header(raw)
    data_offset = _LENGTH.size + length
    tensors = _tile(header)
    _check_size(tensors, size - data_offset)
    return SafetensorsHeader(length, data_offset, header.metadata, tensors)


def read_safetensors(path: str | os.PathLike[str]) -> Any:
    """A safetensors file as a :class:`ckptctl.formats.checkpoint.CheckpointFile` (format
    ``"safetensors"``), so ``inspect``/``compare``/summaries treat it like a checkpoint: ``root`` is
    ``{name: TensorRef}`` (dtype and shape from the header; one storage per tensor, keyed by its
    name, ``location`` "safetensors") plus ``"__metadata__": {...}`` when the header has one;
    ``spans`` give each tensor's bytes in the file. Raises UnreadableCheckpoint if invalid.
    """
    from pathlib import Path

    from .checkpoint import CheckpointFile, Span
    from .unpickler import StorageRef, TensorRef

    header = read_safetensors_header(path)
    root: dict[str, Any] = {}
    storages: dict[str, StorageRef] = {}
    spans: dict[str, Span] = {}
    notes: list[str] = ["safetensors: no checksums (the header's offsets are checked)"]
    packed = False
    for t in header.tensors:
        nbytes = t.end - t.begin
        dtype = TORCH_DTYPES.get(t.dtype)
        shape = t.shape
        if dtype is None:  # F4 / F6: their bytes
            dtype, shape, packed = "uint8", (nbytes,), True
        numel = 0 if 0 in shape else math.prod(shape)
        storage = StorageRef(t.name, dtype, numel, "safetensors")
        stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        root[t.name] = TensorRef(storage, 0, shape, stride, dtype)
        storages[t.name] = storage
        spans[t.name] = Span(t.name, header.data_offset + t.begin, nbytes, None)
    if packed:
        notes.append("F4/F6 tensors are shown as their bytes (uint8)")
    if header.metadata or "__metadata__" in root:
        root["__metadata__"] = dict(header.metadata)
    return CheckpointFile(Path(path), "safetensors", header.data_offset + header.data_length, root, storages, spans,
                          None, notes)  # fmt: skip
