"""Safetensors as a first-class format: check(), inventory(), streamed values, the CheckpointFile adapter.

Cross-checked against the ``safetensors`` library (test extra only; the runtime never imports it).
"""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest

from ckptctl.errors import UnreadableCheckpoint
from ckptctl.formats import safetensors as st
from ckptctl.formats.checkpoint import CheckpointFile
from ckptctl.formats.unpickler import TensorRef
from ckptctl.layouts.metadata import summarize

numpy = pytest.importorskip("numpy")
sft_numpy = pytest.importorskip("safetensors.numpy")
safe_open = pytest.importorskip("safetensors").safe_open

FIXTURES = Path(__file__).parent / "fixtures" / "frameworks"
FRAMEWORK_FILES = sorted(FIXTURES.rglob("*.safetensors"))


def _write(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    sft_numpy.save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture
def sample(tmp_path) -> Path:
    rng = numpy.random.default_rng(0)
    return _write(tmp_path / "model.safetensors", {
        "layers.0.weight": rng.standard_normal((64, 33)).astype(numpy.float32),
        "layers.0.bias": rng.standard_normal(33).astype(numpy.float16),
        "embed": rng.integers(0, 100, (10, 7)).astype(numpy.int64),
        "flag": numpy.array([True, False, True]),
        "empty": numpy.zeros((0, 4), dtype=numpy.float32),
        "scalar": numpy.array(3.5, dtype=numpy.float64),
    }, metadata={"step": "120", "epoch": "3", "format": "pt"})  # fmt: skip


def _library_bytes(path: Path) -> dict[str, bytes]:
    return {name: numpy.ascontiguousarray(array).tobytes() for name, array in sft_numpy.load_file(str(path)).items()}


# ------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("path", FRAMEWORK_FILES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_framework_safetensors_file_checks_clean_and_matches_the_library(path):
    assert st.check(path) == []
    inv = st.inventory(path)
    with safe_open(str(path), framework="numpy") as f:
        assert sorted(t.name for t in inv.tensors) == sorted(f.keys())
        assert dict(inv.metadata) == (f.metadata() or {})
        for t in inv.tensors:
            assert list(t.shape) == f.get_slice(t.name).get_shape()
            assert t.dtype == f.get_slice(t.name).get_dtype()
    assert inv.size_bytes == path.stat().st_size


def test_inventory_lists_every_tensor_with_offsets(sample):
    inv = st.inventory(sample)
    assert dict(inv.metadata) == {"step": "120", "epoch": "3", "format": "pt"}
    by_name = {t.name: t for t in inv.tensors}
    assert by_name["layers.0.weight"].dtype == "F32" and by_name["layers.0.weight"].shape == (64, 33)
    assert by_name["layers.0.weight"].nbytes == 64 * 33 * 4
    assert by_name["empty"].nbytes == 0 and by_name["scalar"].shape == ()
    ends = sorted(t.offsets for t in inv.tensors)
    assert ends[0][0] == 8 + inv.header_length and ends[-1][1] == sample.stat().st_size
    assert all(a[1] == b[0] for a, b in zip(ends, ends[1:]))  # tiled: no gap, no overlap


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_streamed_bytes_equal_the_library_values(sample, chunk):
    expected = _library_bytes(sample)
    got: dict[str, bytes] = {}
    for entry, data in st.iter_tensor_bytes(sample, chunk_bytes=chunk):
        assert len(data) <= chunk
        got[entry.name] = got.get(entry.name, b"") + data
    assert got == expected


def test_streaming_only_the_named_tensors(sample):
    names = [entry.name for entry, _ in st.iter_tensor_bytes(sample, ["embed", "flag"])]
    assert set(names) == {"embed", "flag"}
    with pytest.raises(KeyError):
        list(st.iter_tensor_bytes(sample, ["nope"]))


def test_streaming_memory_is_one_chunk(tmp_path):
    big = _write(tmp_path / "big.safetensors", {"w": numpy.ones((4096, 1024), dtype=numpy.float32)})  # 16 MiB
    tracemalloc.start()
    try:
        total = 0
        for _entry, data in st.iter_tensor_bytes(big, chunk_bytes=256 * 1024):
            total += len(data)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 16 * 1024 * 1024
    assert peak < 2 * 1024 * 1024  # a 16 MiB tensor streamed in 256 KiB pieces


def test_read_safetensors_gives_a_checkpoint_file(sample):
    ckpt = st.read_safetensors(sample)
    assert isinstance(ckpt, CheckpointFile) and ckpt.format == "safetensors"
    assert ckpt.root["__metadata__"] == {"step": "120", "epoch": "3", "format": "pt"}
    weight = ckpt.root["layers.0.weight"]
    assert isinstance(weight, TensorRef) and weight.dtype == "float32" and weight.shape == (64, 33)
    assert weight.stride == (33, 1) and weight.nbytes == 64 * 33 * 4
    assert ckpt.root["layers.0.bias"].dtype == "float16" and ckpt.root["flag"].dtype == "bool"
    names = dict(ckpt.tensors())
    assert set(names) == {"layers.0.weight", "layers.0.bias", "embed", "flag", "empty", "scalar"}
    expected = _library_bytes(sample)
    with open(sample, "rb") as fh:
        for name, tensor in names.items():
            span = ckpt.spans[tensor.storage.key]
            fh.seek(span.offset)
            assert fh.read(span.size) == expected[name]
    meta = summarize(ckpt)
    assert (meta.step, meta.epoch) == (120, 3)
    assert meta.model is not None and meta.model.tensor_count == 2  # the dotted (FQN) names


def test_a_file_without_metadata_has_no_metadata_key(tmp_path):
    path = _write(tmp_path / "plain.safetensors", {"w": numpy.ones(3, dtype=numpy.float32)})
    assert "__metadata__" not in st.read_safetensors(path).root
    assert summarize(st.read_safetensors(path)).step is None


# ------------------------------------------------------------------------- damaged files


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def _rewrite(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _library_refuses(path: Path) -> bool:
    try:
        sft_numpy.load_file(str(path))
    except Exception:
        return True
    return False


def test_truncation_is_reported(sample, tmp_path):
    damaged = tmp_path / "cut.safetensors"
    data = sample.read_bytes()
    damaged.write_bytes(data[:-10])
    problems = st.check(damaged)
    assert len(problems) == 1 and problems[0].startswith("truncated:") and _library_refuses(damaged)
    with pytest.raises(UnreadableCheckpoint, match="truncated"):
        list(st.iter_tensor_bytes(damaged))
    damaged.write_bytes(data[:5])
    assert st.check(damaged)[0].startswith("truncated:")
    damaged.write_bytes(b"")
    assert st.check(damaged) == ["truncated: empty file"]


def test_trailing_bytes_are_reported(sample, tmp_path):
    damaged = tmp_path / "long.safetensors"
    damaged.write_bytes(sample.read_bytes() + b"\0" * 16)
    assert st.check(damaged) == ["corrupt safetensors header: 16 bytes after the last tensor"]
    assert _library_refuses(damaged)


def test_overlapping_and_out_of_file_ranges_are_reported(sample, tmp_path):
    n, header = _header(sample)
    data = sample.read_bytes()[8 + n :]
    damaged = tmp_path / "bad.safetensors"
    overlapping = json.loads(json.dumps(header))
    entries = sorted((k for k in overlapping if k != "__metadata__"), key=lambda k: overlapping[k]["data_offsets"])
    a, b = entries[-2], entries[-1]
    overlapping[b]["data_offsets"] = [overlapping[a]["data_offsets"][0], overlapping[a]["data_offsets"][0]
                                      + overlapping[b]["data_offsets"][1] - overlapping[b]["data_offsets"][0]]  # fmt: skip
    _rewrite(damaged, overlapping, data)
    assert st.check(damaged) and _library_refuses(damaged)
    beyond = json.loads(json.dumps(header))
    begin, end = beyond[entries[-1]]["data_offsets"]
    beyond[entries[-1]]["data_offsets"] = [begin + 1000, end + 1000]
    _rewrite(damaged, beyond, data)
    problems = st.check(damaged)
    assert problems and _library_refuses(damaged)


@pytest.mark.parametrize("header", [b"not json", b'{"a": {"dtype": "F32"}}', b'{"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}',
                                    b'{"__metadata__": {"k": 1}}', b"[" * 100])  # fmt: skip
def test_bad_headers_are_one_line(tmp_path, header):
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    problems = st.check(path)
    assert len(problems) == 1 and problems[0].startswith("corrupt safetensors header:") and "\n" not in problems[0]
    with pytest.raises(UnreadableCheckpoint):
        st.read_safetensors(path)


def test_a_huge_declared_header_is_refused_unread(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    assert "limit" in st.check(path)[0]


def test_check_on_a_missing_file_or_a_directory(tmp_path):
    assert st.check(tmp_path / "missing.safetensors")[0].startswith("cannot open")
    assert st.check(tmp_path)  # a directory is no safetensors file


def test_damaged_copy_of_a_framework_file(tmp_path):
    source = FIXTURES / "hf_trainer" / "checkpoint-2" / "model.safetensors"
    copy = tmp_path / "model.safetensors"
    shutil.copyfile(source, copy)
    with open(copy, "r+b") as fh:
        fh.truncate(source.stat().st_size - 1)
    assert st.check(copy)[0].startswith("truncated:")
    copy.write_bytes(source.read_bytes()[:8] + b"[" + source.read_bytes()[9:])  # flip the header's first byte
    assert st.check(copy)[0].startswith("corrupt safetensors header:")
