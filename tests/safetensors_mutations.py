"""Structure-aware mutations of safetensors files, and the differential check against the library.

Shared by tests/test_fuzz_safetensors.py (hypothesis, bounded) and bench/fuzz_safetensors.py (long).
A mutation edits a file's parsed header (a dtype, a shape, offsets, a field's type, a name, the
metadata), its JSON text (duplicate keys, nesting, leading space, raw bytes), the 8-byte length
prefix, or the file's tail (truncate, append). ``check`` then reads the result with ckptctl and,
when the ``safetensors`` package is installed, with ``safetensors.safe_open`` and compares.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ckptctl.errors import UnreadableCheckpoint
from ckptctl.formats.safetensors import DTYPE_BITS, read_safetensors_header

try:
    from safetensors import safe_open
except ImportError:  # the differential half is skipped without the package
    safe_open = None

# ckptctl refuses these although safetensors (0.8) reads them: each is a place where two readers
# could disagree, or a bound (see the docstring of ckptctl/safetensors_header.py).
DELIBERATELY_STRICTER = (
    "duplicate key",  # the library keeps the last value of a repeated tensor or metadata key
    "does not start with '{'",  # the library skips leading whitespace
    "nested deeper than",  # the library allows ~128 levels inside ignored fields
    "is not an object",  # serde also reads a tensor entry written as a JSON array
    "dimensions, over",  # a shape longer than MAX_DIMS
    "overflows int64",  # a zero-element shape whose partial products pass int64 but not u64
)


class Chooser(Protocol):
    def integer(self, low: int, high: int) -> int: ...

    def pick(self, options: Sequence[Any]) -> Any: ...


@dataclass
class Case:
    """A file being mutated: its header as data (until a text mutation), header text, data bytes."""

    header: dict[str, Any]
    data: bytes
    text: bytes | None = None  # set once the header was edited as text
    length: int | None = None  # an overridden length prefix
    cut: int | None = None  # truncate the file to this many bytes
    tail: bytes = b""
    applied: list[str] = field(default_factory=list)

    def header_bytes(self) -> bytes:
        return self.text if self.text is not None else json.dumps(self.header).encode()

    def to_bytes(self) -> bytes:
        header = self.header_bytes()
        whole = struct.pack("<Q", len(header) if self.length is None else self.length) + header + self.data + self.tail
        return whole if self.cut is None else whole[: self.cut]


def load_case(raw: bytes) -> Case:
    (length,) = struct.unpack("<Q", raw[:8])
    return Case(json.loads(raw[8 : 8 + length]), raw[8 + length :])


INTERESTING_INTS = (0, 1, 2, 3, 4, 7, 8, -1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30)
ODD_VALUES: tuple[Any, ...] = (None, True, 1.0, -0.0, "1", [], {}, [1, 2], "U8", 0)
DTYPES = tuple(sorted(DTYPE_BITS)) + ("F128", "u8", "", "I4", "C32")


def _tensor_names(case: Case) -> list[str]:
    return [name for name, entry in case.header.items() if name != "__metadata__" and isinstance(entry, dict)]


def _pick_tensor(case: Case, chooser: Chooser) -> dict[str, Any]:
    return case.header[chooser.pick(_tensor_names(case))]


def _near(value: Any, chooser: Chooser) -> Any:
    if isinstance(value, int) and chooser.integer(0, 1):
        return value + chooser.integer(-3, 3)
    return chooser.pick(INTERESTING_INTS)


def set_dtype(case: Case, chooser: Chooser) -> None:
    _pick_tensor(case, chooser)["dtype"] = chooser.pick(DTYPES)


def edit_shape(case: Case, chooser: Chooser) -> None:
    entry = _pick_tensor(case, chooser)
    shape = list(entry["shape"]) if isinstance(entry.get("shape"), list) else []
    action = chooser.integer(0, 3)
    if action == 0 and shape:
        index = chooser.integer(0, len(shape) - 1)
        shape[index] = _near(shape[index], chooser)
    elif action == 1:
        shape.insert(chooser.integer(0, len(shape)), chooser.pick((0, 1, 2, 2**32, 2**63 - 1, 2**63)))
    elif action == 2 and shape:
        shape.pop(chooser.integer(0, len(shape) - 1))
    else:
        shape = [1] * chooser.integer(60, 70)
    entry["shape"] = shape


def edit_offsets(case: Case, chooser: Chooser) -> None:
    entry = _pick_tensor(case, chooser)
    offsets = entry.get("data_offsets")
    offsets = list(offsets) if isinstance(offsets, list) and len(offsets) == 2 else [0, 0]
    action = chooser.integer(0, 2)
    if action == 0:
        index = chooser.integer(0, 1)
        offsets[index] = _near(offsets[index], chooser)
    elif action == 1:
        offsets.reverse()
    else:
        shift = chooser.integer(-8, 8)
        offsets = [v + shift if isinstance(v, int) else v for v in offsets]
    entry["data_offsets"] = offsets


def odd_field_type(case: Case, chooser: Chooser) -> None:
    entry = _pick_tensor(case, chooser)
    entry[chooser.pick(("dtype", "shape", "data_offsets"))] = chooser.pick(ODD_VALUES)


def drop_or_add_field(case: Case, chooser: Chooser) -> None:
    entry = _pick_tensor(case, chooser)
    if chooser.integer(0, 1):
        entry.pop(chooser.pick(("dtype", "shape", "data_offsets")), None)
    else:
        entry[chooser.pick(("z", "offsets", "__metadata__"))] = chooser.pick(ODD_VALUES + ([[[1]]],))


def entry_as_array(case: Case, chooser: Chooser) -> None:
    name = chooser.pick(_tensor_names(case))
    entry = case.header[name]
    case.header[name] = [entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")]


def rename_or_drop_tensor(case: Case, chooser: Chooser) -> None:
    name = chooser.pick(_tensor_names(case))
    entry = case.header.pop(name)
    if chooser.integer(0, 1):
        case.header[chooser.pick(("", "\x00", "é", "__metadata__", name + "x", "[[[[[[[[[[", '\\"{{{{{{{{{', "\\"))] = entry


def edit_metadata(case: Case, chooser: Chooser) -> None:
    action = chooser.integer(0, 2)
    if action == 0:
        case.header.pop("__metadata__", None)
    elif action == 1:
        case.header["__metadata__"] = chooser.pick(ODD_VALUES)
    else:
        metadata = case.header.get("__metadata__")
        metadata = dict(metadata) if isinstance(metadata, dict) else {}
        metadata[chooser.pick(("format", "k", "", "]]]]]]]]]]"))] = chooser.pick(ODD_VALUES + ("text", '\\"[[[[[[[[['))
        case.header["__metadata__"] = metadata


def _to_text(case: Case) -> bytes:
    if case.text is None:
        case.text = json.dumps(case.header).encode()
    return case.text


def duplicate_key(case: Case, chooser: Chooser) -> None:
    names = _tensor_names(case)
    text = _to_text(case)
    if names and text.endswith(b"}"):
        name = chooser.pick(names)
        entry = case.header[name]
        case.text = text[:-1] + b", " + json.dumps(name).encode() + b": " + json.dumps(entry).encode() + b"}"


def nest_deeper(case: Case, chooser: Chooser) -> None:
    """Nest lists in an ignored field of a tensor entry (depth 2 + n): within our bound, or past it."""
    text = _to_text(case)
    depth = chooser.pick((1, 4, 6, 7, 200, 5000))
    case.text = text.replace(b'"dtype": ', b'"z": ' + b"[" * depth + b"]" * depth + b', "dtype": ', 1)


def leading_whitespace(case: Case, chooser: Chooser) -> None:
    case.text = chooser.pick((b" ", b"\n", b"\t", b"\xef\xbb\xbf")) + _to_text(case)


def pad_header(case: Case, chooser: Chooser) -> None:
    case.text = _to_text(case) + chooser.pick((b" ", b"    ", b"\n", b"\x00", b"x", b"}"))


def flip_header_byte(case: Case, chooser: Chooser) -> None:
    text = bytearray(_to_text(case))
    if text:
        index = chooser.integer(0, len(text) - 1)
        text[index] = chooser.pick((0x00, 0x22, 0x5C, 0x5B, 0x7B, 0x7D, 0x5D, 0x2C, 0x30, 0x39, 0xFF, 0x80, text[index] ^ 1))
        case.text = bytes(text)


def set_length(case: Case, chooser: Chooser) -> None:
    actual = len(case.header_bytes())
    case.length = chooser.pick((actual + chooser.integer(-9, 9), 0, 2**64 - 1, 100_000_001, actual * 2))
    case.length = max(0, min(case.length, 2**64 - 1))


def truncate(case: Case, chooser: Chooser) -> None:
    size = 8 + len(case.header_bytes()) + len(case.data)
    case.cut = chooser.integer(0, size - 1)


def append(case: Case, chooser: Chooser) -> None:
    case.tail = chooser.pick((b"\0", b"\0" * 8, b"x" * 100))


MUTATIONS: tuple[Callable[[Case, Chooser], None], ...] = (
    set_dtype, edit_shape, edit_offsets, odd_field_type, drop_or_add_field, entry_as_array, rename_or_drop_tensor,
    edit_metadata, duplicate_key, nest_deeper, leading_whitespace, pad_header, flip_header_byte, set_length,
    truncate, append,
)
_TEXT = {duplicate_key, nest_deeper, leading_whitespace, pad_header, flip_header_byte}


def mutate(case: Case, chooser: Chooser, count: int) -> Case:
    """Apply ``count`` mutations (structural ones only while the header is still data)."""
    for _ in range(count):
        options = [m for m in MUTATIONS if case.text is None or m not in _STRUCTURAL_ONLY]
        if not _tensor_names(case):
            options = [m for m in options if m not in _NEEDS_TENSOR]
        mutation = chooser.pick(options)
        mutation(case, chooser)
        case.applied.append(mutation.__name__)
    return case


_STRUCTURAL_ONLY = set(MUTATIONS) - _TEXT - {set_length, truncate, append}
_NEEDS_TENSOR = {set_dtype, edit_shape, edit_offsets, odd_field_type, drop_or_add_field, entry_as_array,
                 rename_or_drop_tensor, duplicate_key}


def library_view(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]] | str:
    """(name -> (dtype, shape), metadata) as safetensors reads the file, or its error's text."""
    try:
        with safe_open(str(path), "pt") as opened:  # type: ignore[misc]
            tensors = {}
            for name in opened.keys():
                piece = opened.get_slice(name)
                tensors[name] = (piece.get_dtype(), tuple(piece.get_shape()))
            return tensors, dict(opened.metadata() or {})
    except Exception as error:  # noqa: BLE001 - any refusal of the library is its verdict
        return f"{type(error).__name__}: {error}"


def check(path: Path) -> str:
    """Read ``path`` with ckptctl (and the library); the outcome's kind. AssertionError on a finding.

    Findings: ckptctl raising anything but UnreadableCheckpoint; a file ckptctl accepts that the
    library refuses or reads differently; a file the library reads that ckptctl refuses for a
    reason outside DELIBERATELY_STRICTER.
    """
    try:
        header = read_safetensors_header(path)
        ours: Any = (
            {t.name: (t.dtype, t.shape) for t in header.tensors},
            dict(header.metadata),
        )
    except UnreadableCheckpoint as verdict:
        ours = verdict.reason
    if safe_open is None:
        return "accepted" if not isinstance(ours, str) else "refused"
    theirs = library_view(path)
    if not isinstance(ours, str):
        assert ours == theirs, f"ckptctl read {ours!r}, safetensors {theirs!r}"
        return "both accept"
    if isinstance(theirs, str):
        return "both refuse"
    assert any(marker in ours for marker in DELIBERATELY_STRICTER), f"ckptctl refused ({ours}), safetensors read it"
    return "stricter: " + next(marker for marker in DELIBERATELY_STRICTER if marker in ours)
