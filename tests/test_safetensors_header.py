"""ckptctl.formats.safetensors: a bounded reader of a .safetensors header, one verdict for bad input."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from ckptctl.errors import UnreadableCheckpoint
from ckptctl.formats.safetensors import (
    DTYPE_BITS,
    MAX_DEPTH,
    MAX_DIMS,
    MAX_HEADER_BYTES,
    read_safetensors_header,
)

pytestmark = pytest.mark.timeout(60)


def write_raw(path: Path, header: bytes, data: bytes = b"", length: int | None = None) -> Path:
    """A safetensors file from its parts; ``length`` overrides the 8-byte header length."""
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def write_json(path: Path, header: Any, data: bytes = b"") -> Path:
    return write_raw(path, json.dumps(header).encode(), data)


def u8(begin: int, end: int, shape: list[int] | None = None, dtype: str = "U8") -> dict[str, Any]:
    return {"dtype": dtype, "shape": [end - begin] if shape is None else shape, "data_offsets": [begin, end]}


def refused(path: Path) -> str:
    with pytest.raises(UnreadableCheckpoint) as caught:
        read_safetensors_header(path)
    assert "\n" not in caught.value.reason
    return caught.value.reason


@pytest.fixture
def saved(tmp_path) -> Path:
    """A real file from safetensors.torch.save_file, with metadata and several dtypes."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    tensors = {
        "embed.weight": torch.zeros(10, 4),
        "head.bias": torch.ones(3, dtype=torch.float16),
        "steps": torch.arange(5, dtype=torch.int64),
        "mask": torch.ones(2, 2, dtype=torch.bool),
        "scalar": torch.tensor(1.5, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3),
    }
    safetensors_torch.save_file(tensors, str(path), metadata={"format": "pt", "step": "100"})
    return path


def test_reads_a_file_written_by_safetensors(saved):
    header = read_safetensors_header(saved)
    assert dict(header.metadata) == {"format": "pt", "step": "100"}
    assert {t.name: (t.dtype, t.shape) for t in header.tensors} == {
        "embed.weight": ("F32", (10, 4)),
        "head.bias": ("F16", (3,)),
        "steps": ("I64", (5,)),
        "mask": ("BOOL", (2, 2)),
        "scalar": ("BF16", ()),
        "empty": ("F32", (0, 3)),
    }
    assert [t.begin for t in header.tensors] == sorted(t.begin for t in header.tensors)
    assert header.data_offset == 8 + header.header_length
    assert header.data_offset + header.data_length == saved.stat().st_size
    for tensor in header.tensors:
        assert tensor.end - tensor.begin == {"F32": 4, "F16": 2, "I64": 8, "BOOL": 1, "BF16": 2}[tensor.dtype] * (
            int(torch.Size(tensor.shape).numel()))


def test_result_is_frozen(saved):
    header = read_safetensors_header(saved)
    with pytest.raises(AttributeError):
        header.header_length = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        header.metadata["format"] = "x"  # type: ignore[index]


def test_reads_only_the_header_bytes(saved, monkeypatch):
    """The data region is never read: reading stops after 8 + N bytes."""
    import ckptctl.formats.safetensors as module

    reads: list[int] = []
    real_open = module.open_regular

    def counting_open(path):
        file = real_open(path)
        real_read = file.read

        class Counting:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                file.close()

            def fileno(self):
                return file.fileno()

            def read(self, n=-1):
                data = real_read(n)
                reads.append(len(data))
                return data

        return Counting()

    monkeypatch.setattr(module, "open_regular", counting_open)
    header = read_safetensors_header(saved)
    assert sum(reads) == header.data_offset < saved.stat().st_size


def test_empty_header_and_no_tensors(tmp_path):
    header = read_safetensors_header(write_raw(tmp_path / "e.safetensors", b"{}      "))
    assert header.tensors == () and dict(header.metadata) == {} and header.data_length == 0


def test_null_metadata_is_no_metadata(tmp_path):
    assert dict(read_safetensors_header(write_json(tmp_path / "m", {"__metadata__": None})).metadata) == {}


def test_zero_size_tensors_may_share_an_offset(tmp_path):
    path = write_json(tmp_path / "z", {"a": u8(0, 0), "b": u8(0, 0), "c": u8(0, 2)}, b"xy")
    assert [t.name for t in read_safetensors_header(path).tensors] == ["a", "b", "c"]


@pytest.mark.parametrize("dtype", sorted(DTYPE_BITS))
def test_every_known_dtype_with_its_size(tmp_path, dtype):
    count = 8  # a whole number of bytes for every dtype, F4 and F6 too
    nbytes = count * DTYPE_BITS[dtype] // 8
    path = write_json(tmp_path / "d", {"t": u8(0, nbytes, [count], dtype)}, b"\0" * nbytes)
    assert read_safetensors_header(path).tensors[0].dtype == dtype
    wrong = write_json(tmp_path / "w", {"t": u8(0, nbytes + 1, [count], dtype)}, b"\0" * (nbytes + 1))
    assert "needs" in refused(wrong)


def test_sub_byte_dtype_must_end_on_a_byte(tmp_path):
    assert "byte boundary" in refused(write_json(tmp_path / "f4", {"t": u8(0, 0, [1], "F4")}))


# --- truncation ---------------------------------------------------------------------------


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    assert refused(path) == "truncated: empty file"


def test_truncated_at_every_cut(saved, tmp_path):
    """Every prefix of a real file is refused; cuts inside the length or header say truncated."""
    whole = saved.read_bytes()
    data_offset = read_safetensors_header(saved).data_offset
    for cut in range(len(whole)):
        path = tmp_path / "cut.safetensors"
        path.write_bytes(whole[:cut])
        reason = refused(path)
        assert reason.startswith("truncated: "), (cut, reason)
        if cut >= data_offset:
            assert "tensors need" in reason


def test_header_length_larger_than_the_file(tmp_path):
    reason = refused(write_raw(tmp_path / "long", b"{}", length=1000))
    assert reason == "truncated: header length 1000, only 2 bytes follow"


def test_huge_header_length_is_refused_before_reading(tmp_path):
    reason = refused(write_raw(tmp_path / "huge", b"{}", length=MAX_HEADER_BYTES + 1))
    assert reason.startswith("corrupt safetensors header: header length") and "limit" in reason
    assert "limit" in refused(write_raw(tmp_path / "max", b"{}", length=2**64 - 1))


def test_bytes_after_the_last_tensor(tmp_path):
    reason = refused(write_json(tmp_path / "t", {"a": u8(0, 2)}, b"xyz"))
    assert reason == "corrupt safetensors header: 1 bytes after the last tensor"


# --- corrupt headers ------------------------------------------------------------------------

CORRUPT: dict[str, tuple[bytes, bytes, str]] = {
    "not an object": (b'"x"', b"", "does not start with '{'"),
    "leading space": (b" {}", b"", "does not start with '{'"),
    "invalid utf-8": (b'{"\xff": 1}', b"", "not UTF-8"),
    "invalid json": (b'{"a": }', b"", "invalid JSON"),
    "NaN": (b'{"__metadata__": {"a": NaN}}', b"", "NaN is not JSON"),
    "lone surrogate": (b'{"\\ud800": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}', b"", "surrogate"),
    "huge number": (b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0], "z": 1e999}}', b"", "out of range"),
    "duplicate tensor": (b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},'
                         b' "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"x", "duplicate key 'a'"),
    "duplicate field": (b'{"a": {"dtype": "U8", "dtype": "I8", "shape": [1], "data_offsets": [0, 1]}}', b"x",
                        "duplicate key 'dtype'"),
    "duplicate metadata key": (b'{"__metadata__": {"k": "1", "k": "2"}}', b"", "duplicate key 'k'"),
    "deep nesting": (b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", "nested deeper"),
    "unbalanced deep": (b"{" + b"[" * 1_000_000, b"", "nested deeper"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_header_bytes(tmp_path, case):
    header, data, expected = CORRUPT[case]
    reason = refused(write_raw(tmp_path / "c", header, data))
    assert reason.startswith("corrupt safetensors header: ") and expected in reason, reason


def nested_field(depth: int) -> bytes:
    """A header whose ignored field ``z`` brings the nesting to ``depth`` (root and entry are 2)."""
    inner = b"[" * (depth - 2) + b"]" * (depth - 2)
    return b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0], "z": ' + inner + b"}}"


def test_nesting_up_to_the_limit_is_fine(tmp_path):
    assert read_safetensors_header(write_raw(tmp_path / "ok", nested_field(MAX_DEPTH))).tensors[0].name == "a"
    assert "nested deeper" in refused(write_raw(tmp_path / "deep", nested_field(MAX_DEPTH + 1)))


def test_brackets_inside_strings_do_not_count(tmp_path):
    header = {"__metadata__": {"k": "[[[[[[[[[[{{{{{{{{{{\\\"]]]"}}
    assert dict(read_safetensors_header(write_json(tmp_path / "s", header)).metadata) == header["__metadata__"]


CORRUPT_JSON: dict[str, tuple[Any, int, str]] = {
    "overlap": ({"a": u8(0, 2), "b": u8(1, 3)}, 3, "overlaps"),
    "gap": ({"a": u8(1, 2)}, 2, "gap of 1 bytes before tensor 'a'"),
    "out of range": ({"a": u8(0, 2), "b": u8(2**40, 2**40 + 1)}, 2, "gap of"),
    "end before begin": ({"a": {"dtype": "U8", "shape": [0], "data_offsets": [2, 1]}}, 2, "ends before it begins"),
    "wrong size": ({"a": u8(0, 4, [2], "F32")}, 4, "spans 4 bytes, its F32 shape needs 8"),
    "unknown dtype": ({"a": u8(0, 1, [1], "F128")}, 1, "unknown dtype 'F128'"),
    "lowercase dtype": ({"a": u8(0, 1, [1], "u8")}, 1, "unknown dtype"),
    "negative dim": ({"a": u8(0, 0, [-1])}, 0, "shape is not a list"),
    "float dim": ({"a": u8(0, 1, [1.0])}, 1, "shape is not a list"),
    "bool dim": ({"a": u8(0, 1, [True])}, 1, "shape is not a list"),
    "too many dims": ({"a": u8(0, 1, [1] * (MAX_DIMS + 1))}, 1, "dimensions"),
    "shape overflow": ({"a": u8(0, 0, [2**32, 2**32, 0])}, 0, "overflows int64"),
    "three offsets": ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 1]}}, 1, "[begin, end]"),
    "negative offset": ({"a": {"dtype": "U8", "shape": [0], "data_offsets": [-1, -1]}}, 0, "[begin, end]"),
    "missing shape": ({"a": {"dtype": "U8", "data_offsets": [0, 0]}}, 0, "has no shape"),
    "entry not an object": ({"a": ["U8", [0], [0, 0]]}, 0, "not an object"),
    "metadata not an object": ({"__metadata__": ["x"]}, 0, "__metadata__ is not an object"),
    "metadata int value": ({"__metadata__": {"step": 1}}, 0, "value of 'step' is not a string"),
    "metadata nested value": ({"__metadata__": {"k": {}}}, 0, "not a string"),
    "truncated data": ({"a": u8(0, 10)}, 4, "truncated: tensors need 10 data bytes, file has 4"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_JSON))
def test_corrupt_header_fields(tmp_path, case):
    header, data_length, expected = CORRUPT_JSON[case]
    reason = refused(write_json(tmp_path / "c", header, b"\0" * data_length))
    assert expected in reason, reason
    if not expected.startswith("truncated"):
        assert reason.startswith("corrupt safetensors header: "), reason


def test_long_names_are_shortened_in_messages(tmp_path):
    reason = refused(write_json(tmp_path / "n", {"x" * 10_000: u8(0, 1, [1], "Q")}, b"\0"))
    assert len(reason) < 200


def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "model.safetensors"
    os.mkfifo(path)
    assert refused(path) == "not a regular file (fifo)"


def test_missing_file_stays_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_safetensors_header(tmp_path / "missing.safetensors")
