"""Validation levels, the corruption corpus, a bounded bit-flip fuzz, and the CRC streaming itself."""

from __future__ import annotations

import os
import random
import tracemalloc
import zlib
from pathlib import Path

import pytest

from ckptctl.formats import crc as crc_module
from ckptctl.ops import integrity
from ckptctl.formats.container import Record, open_container
from ckptctl.errors import BadInputError
from ckptctl.formats.crc import crc_range, crc_records
from ckptctl.ops.integrity import DEEP, DEFAULT, LEVELS, QUICK, count_non_finite, validate_file, validate_paths
from tests.corruption import Layout, build_corpus, flip, many_truncations, write_cases
from tests.factories import cached_layout, make_state, write_checkpoint, write_hostile_checkpoint


@pytest.fixture
def ckpt_dir(tmp_path) -> Path:
    """The layout of tests/conftest.py, copied from one template written once per process."""
    return cached_layout(tmp_path / "checkpoints")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """One real checkpoint written with CRC-32 on, damaged in many ways below (read-only here)."""
    return write_checkpoint(tmp_path_factory.mktemp("src") / "latest.pt", step=300, epoch=2)


@pytest.fixture
def no_crc_file(tmp_path) -> Path:
    import torch

    torch.serialization.set_crc32_options(False)
    try:
        return write_checkpoint(tmp_path / "latest.pt")
    finally:
        torch.serialization.set_crc32_options(True)


@pytest.mark.parametrize("level", LEVELS)
def test_intact_layout_is_valid_at_every_level(ckpt_dir, level):
    report = validate_paths([ckpt_dir], level)
    assert len(report.results) == 12 and report.invalid == 0
    assert all(r.problems == [] and r.status == "valid" for r in report.results)
    if level != QUICK:
        assert all(r.checksums and r.records_checked > 5 for r in report.results)
        assert report.bytes_checked == sum(r.bytes_checked for r in report.results) > 0


def test_quick_level_reads_no_record_bytes(ckpt_dir):
    result = validate_file(ckpt_dir / "latest.pt", QUICK)
    assert result.valid and result.bytes_checked == 0 and result.checksums is None


def test_every_corpus_case_is_invalid_with_a_specific_reason(source, tmp_path):
    cases = build_corpus(source)
    assert len(cases) >= 35
    wrong = []
    for case, path in write_cases(cases, tmp_path):
        result = validate_file(path)
        if result.valid or not case.matches(result.problems):
            wrong.append((case.name, result.problems))
    assert wrong == []


def test_flip_in_tensor_data_names_the_record(source, tmp_path):
    layout = Layout.of(source.read_bytes())
    key = layout.tensor_keys()[1]
    _h, offset, size = layout.records[key]
    path = tmp_path / "latest.pt"
    path.write_bytes(flip(layout.data, offset + size - 1))
    result = validate_file(path)
    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"record {key}: CRC mismatch (stored ")
    assert validate_file(path, QUICK).valid  # the quick level does not read tensor bytes: by design


def test_a_pickle_failing_its_crc_is_never_unpickled(tmp_path):
    """A flipped memo index (LONG_BINPUT) makes the C unpickler allocate 16 bytes per index value:
    here 1 GiB. The CRC-32 of data.pkl is checked first, so those bytes are never unpickled."""
    import pickletools
    import struct

    path = write_checkpoint(tmp_path / "latest.pt", make_state(many=[f"item{i}" for i in range(300)]))
    layout = Layout.of(path.read_bytes())
    _h, offset, size = layout.records["data.pkl"]
    puts = [pos for op, _arg, pos in pickletools.genops(layout.data[offset : offset + size]) if op.name == "LONG_BINPUT"]
    damaged = bytearray(layout.data)
    damaged[offset + puts[-1] + 1 : offset + puts[-1] + 5] = struct.pack("<I", 1 << 26)
    path.write_bytes(bytes(damaged))
    tracemalloc.start()
    result = validate_file(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.problems[0].startswith("record data.pkl: CRC mismatch") and len(result.problems) == 1
    assert "data.pkl fails its CRC-32: not unpickled" in result.notes
    assert peak < 64 * 1024 * 1024


def test_truncation_at_many_offsets_is_always_invalid(source, tmp_path):
    cases = many_truncations(source, 120, seed=3)
    for case, path in write_cases(cases, tmp_path):
        result = validate_file(path)
        assert not result.valid and case.matches(result.problems), (case.name, result.problems)


def test_bounded_bit_flip_fuzz(source, tmp_path):
    """0 false "valid" on flips inside CRC-covered bytes, no exception anywhere (bench/ runs longer)."""
    data = source.read_bytes()
    layout = Layout.of(data)
    covered = [(o, o + s) for _h, o, s in layout.records.values()]
    rng = random.Random(7)
    path = tmp_path / "latest.pt"
    flips_in_covered = 0
    for _ in range(250):
        at = rng.randrange(len(data))
        path.write_bytes(flip(data, at, 1 << rng.randrange(8)))
        result = validate_file(path)  # must not raise
        if any(lo <= at < hi for lo, hi in covered):
            flips_in_covered += 1
            assert not result.valid, f"flip at {at} reported valid"
    assert flips_in_covered > 150


def test_hostile_file_is_unsafe_and_never_loaded_at_any_level(tmp_path, monkeypatch):
    import torch

    marker = tmp_path / "executed"
    path = write_hostile_checkpoint(tmp_path / "latest.pt", marker)

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must not see a file the safe reader refused")

    monkeypatch.setattr(torch, "load", forbidden)
    for level in LEVELS:
        result = validate_file(path, level)
        assert result.status == "unsafe" and not result.valid
        assert result.problems == ["unsafe: references posix.system"]
    assert not marker.exists()


def test_torch_crc_switched_off_is_reported_as_no_checksums(no_crc_file):
    with open(no_crc_file, "rb") as fh:
        container = open_container(no_crc_file, fh)
    # what torch 2.x writes with set_crc32_options(False): 0 in the central directory for every record
    assert all(r.crc32 == 0 for r in container.records.values()) and not container.has_checksums
    result = validate_file(no_crc_file)
    assert result.valid and result.checksums is False and result.bytes_checked == 0
    assert any(note.startswith("no checksums") for note in result.notes)
    assert validate_file(no_crc_file, DEEP).valid


def test_legacy_format_is_valid_with_a_note(tmp_path):
    import torch

    path = tmp_path / "latest.pt"
    torch.save(make_state(), path, _use_new_zipfile_serialization=False)
    for level in LEVELS:
        result = validate_file(path, level)
        assert result.valid and result.format == "legacy", result.problems
    assert any("legacy format" in note for note in validate_file(path).notes)


def test_step_and_epoch_disagreeing_with_the_name_are_findings_not_damage(tmp_path):
    rolling = write_checkpoint(tmp_path / "rolling_step_015500.pt", step=15000)
    result = validate_file(rolling)
    assert result.valid and result.status == "valid" and not result.failed
    assert result.findings == ["step 15000 in file, 15500 in name"]
    assert validate_file(rolling, QUICK).findings == []  # name checks belong to the default level
    epoch = write_checkpoint(tmp_path / "epoch_00007.pt", epoch=6)
    assert validate_file(epoch).findings == ["epoch 6 in file, 7 in name"]
    emergency = write_checkpoint(tmp_path / "emergency_step_000100_20261101_120000.pt", step=100)
    assert validate_file(emergency).findings == []


def test_missing_usual_keys_and_a_non_dict_root_are_findings(tmp_path):
    import torch

    state = make_state()
    del state["model"], state["epoch"]
    result = validate_file(write_checkpoint(tmp_path / "latest.pt", state))
    assert result.valid and result.problems == [] and result.to_json()["status"] == "valid"
    assert result.findings == ["missing key 'epoch'", "missing key 'model'"]
    torch.save([1, 2, 3], tmp_path / "best_model.pt")
    listed = validate_file(tmp_path / "best_model.pt")
    assert listed.valid and listed.findings == ["not a checkpoint dict: the file holds a list"]
    torch.save({"weight": torch.zeros(3)}, tmp_path / "weights.pt")  # not a layout name: no layout checks
    other = validate_file(tmp_path / "weights.pt")
    assert other.valid and any("not a layout name" in note for note in other.notes)


def test_deep_reports_nan_and_inf_per_tensor_as_failing_findings(tmp_path):
    import torch

    state = make_state()
    state["model"]["0.weight"][0, :3] = float("nan")
    state["model"]["2.bias"][1] = float("-inf")
    path = write_checkpoint(tmp_path / "latest.pt", state)
    assert validate_file(path).valid and validate_file(path).finite is None  # values are not read below --deep
    result = validate_file(path, DEEP)
    assert result.findings == ["tensor model.0.weight: 3 NaN, 0 Inf", "tensor model.2.bias: 0 NaN, 1 Inf"]
    assert result.valid and result.finite is False and result.failed  # intact, but validate exits 1
    assert torch.isnan(state["model"]["0.weight"]).sum() == 3
    assert validate_file(write_checkpoint(tmp_path / "rolling_step_000100.pt", step=100), DEEP).finite is True


def test_count_non_finite_in_chunks(monkeypatch):
    import torch

    monkeypatch.setattr(integrity, "NAN_SCAN_ELEMENTS", 7)
    values = torch.arange(100, dtype=torch.float32)
    values[[3, 50, 99]] = float("nan")
    values[[10, 11]] = float("inf")
    assert count_non_finite(values) == (3, 2)
    assert count_non_finite(values.to(torch.bfloat16)) == (3, 2)
    assert count_non_finite(values.reshape(10, 10).t()) == (3, 2)  # non-contiguous
    assert count_non_finite(torch.tensor([float("nan")]).to(torch.float8_e4m3fn)) == (1, 0)
    assert count_non_finite(torch.arange(10)) == (0, 0)  # integers are never scanned
    assert count_non_finite(torch.tensor([complex(float("nan"), 0)])) == (1, 0)


def test_deep_reports_a_failing_torch_load(ckpt_dir, monkeypatch):
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("PytorchStreamReader failed reading zip archive\nmore detail")

    monkeypatch.setattr(torch, "load", broken)
    result = validate_file(ckpt_dir / "latest.pt", DEEP)
    assert result.problems == ["torch.load failed: PytorchStreamReader failed reading zip archive"]


@pytest.mark.parametrize("jobs", [1, 3])
def test_crc_segments_and_chunks_combine_to_zlib_values(tmp_path, monkeypatch, jobs):
    import torch

    monkeypatch.setattr(crc_module, "CHUNK_BYTES", 7)
    monkeypatch.setattr(crc_module, "SEGMENT_BYTES", 64)
    path = write_checkpoint(tmp_path / "latest.pt", {"w": torch.randn(301), "empty": torch.zeros(0), "step": 1})
    data = path.read_bytes()
    with open(path, "rb") as fh:
        records = list(open_container(path, fh).records.values())
        seen = []
        computed = crc_records(fh.fileno(), records, jobs=jobs, progress=seen.append)
    for record in records:
        expected = zlib.crc32(data[record.data_offset : record.data_offset + record.size])
        assert computed[record.key] == expected == record.crc32
    assert sum(seen) == sum(r.size for r in records) and max(seen) <= 7


def test_crc_range_reports_a_short_file(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 100)
    with open(path, "rb") as fh:
        view = memoryview(bytearray(16))
        assert crc_range(fh.fileno(), 0, 100, view) == zlib.crc32(b"x" * 100)
        assert crc_range(fh.fileno(), 50, 100, view) is None


def _blob_records(tmp_path: Path, sizes: list[int], seed: int) -> tuple[bytes, list[Record]]:
    """Random bytes in a file and one record per size, back to back after a 3-byte lead-in."""
    data = random.Random(seed).randbytes(3 + sum(sizes))
    (tmp_path / "blob").write_bytes(data)
    records, offset = [], 3
    for index, size in enumerate(sizes):
        records.append(Record(f"r/{index}", f"r/{index}", 0, offset, size, 0))
        offset += size
    return data, records


def _zlib_values(data: bytes, records: list[Record]) -> dict[str, int]:
    return {r.key: zlib.crc32(data[r.data_offset : r.data_offset + r.size]) for r in records}


def test_the_fastest_installed_crc_is_used():
    """libdeflate's CRC-32 (2x ISA-L's where 256-bit VPCLMULQDQ exists) when installed, else ISA-L's."""
    try:
        from deflate import crc32
    except ImportError:
        crc32 = pytest.importorskip("isal.isal_zlib").crc32
    assert crc_module._crc32 is crc32


@pytest.mark.parametrize("jobs", [1, 2, 5])
@pytest.mark.parametrize("crc", ["installed", "isal", "zlib-fallback"])
def test_crc_records_equal_zlib_around_chunk_and_segment_boundaries(tmp_path, monkeypatch, jobs, crc):
    """Chunks of 16 and segments of 64 bytes: every size next to a boundary, empty records, odd
    offsets; without crc32_combine (plain zlib) a record is one segment."""
    monkeypatch.setattr(crc_module, "CHUNK_BYTES", 16)
    monkeypatch.setattr(crc_module, "SEGMENT_BYTES", 64)
    if crc == "isal":
        monkeypatch.setattr(crc_module, "_crc32", pytest.importorskip("isal.isal_zlib").crc32)
    elif crc == "zlib-fallback":
        monkeypatch.setattr(crc_module, "_crc32", zlib.crc32)
        monkeypatch.setattr(crc_module, "_crc32_combine", None)
    sizes = [0, 1, 15, 16, 17, 63, 64, 65, 0, 127, 128, 129, 1000]
    data, records = _blob_records(tmp_path, sizes, seed=jobs)
    with open(tmp_path / "blob", "rb") as fh:
        assert crc_records(fh.fileno(), records, jobs=jobs) == _zlib_values(data, records)


def test_crc_records_equal_zlib_at_the_real_chunk_and_segment_sizes(tmp_path):
    chunk, segment = crc_module.CHUNK_BYTES, crc_module.SEGMENT_BYTES
    sizes = [chunk - 1, chunk + 1, 0, segment + chunk // 2 + 1]
    data, records = _blob_records(tmp_path, sizes, seed=7)
    with open(tmp_path / "blob", "rb") as fh:
        assert crc_records(fh.fileno(), records, jobs=2) == _zlib_values(data, records)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_file_truncated_while_it_is_checked_is_reported_short(tmp_path, monkeypatch, jobs):
    """The file loses its second half after the first chunk is read (another process rewrote it):
    a truncation problem for the record that was cut, no exception, no SIGBUS (no mmap of the file)."""
    import torch

    monkeypatch.setattr(crc_module, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(crc_module, "SEGMENT_BYTES", 16384)
    path = write_checkpoint(tmp_path / "latest.pt", {"step": 1, "epoch": 0, "model": {"w": torch.randn(1 << 16)}})
    cut = []

    def truncate_once(nbytes: int) -> None:
        if not cut:
            cut.append(nbytes)
            os.truncate(path, path.stat().st_size // 2)

    result = validate_file(path, DEFAULT, jobs=jobs, progress=truncate_once)
    assert cut and not result.valid
    # With two threads the other one may have read every record before the cut: the truncation is
    # then found by the next read of the file (its directory is gone), still a truncation verdict.
    assert "truncated: record data/0 is short" in result.problems or (
        jobs == 2 and result.problems == ["truncated or not a zip: central directory missing"]), result.problems


def test_crc_memory_does_not_grow_with_file_size(tmp_path):
    """Python allocations during a default-level run: the buffers, not the file (4 MB vs 64 MB)."""
    import torch

    peaks = []
    for numel in (1 << 20, 16 << 20):
        path = write_checkpoint(tmp_path / f"{numel}" / "latest.pt", {"step": 1, "epoch": 0, "model": {"w": torch.ones(numel)}})
        tracemalloc.start()
        result = validate_file(path, DEFAULT, jobs=2)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert result.valid and result.bytes_checked >= numel * 4
    bound = 2 * crc_module.CHUNK_BYTES + 256 * 1024  # two workers' buffers plus bookkeeping
    assert peaks[0] < bound and peaks[1] < bound


def test_directory_targets_skip_partial_and_foreign_files(ckpt_dir):
    (ckpt_dir / "latest.pt.123.abcd.tmp").write_bytes(b"partial")
    (ckpt_dir / "latest.pt.replaced-20261101_120000").write_bytes(b"old")
    (ckpt_dir / "notes.txt").write_text("hi")
    write_checkpoint(ckpt_dir / "exported_weights.pt", {"w": 1})
    report = validate_paths([ckpt_dir])
    names = {r.name for r in report.results}
    assert "exported_weights.pt" in names and len(names) == 13
    assert {p.name for p in report.skipped} == {"latest.pt.123.abcd.tmp", "latest.pt.replaced-20261101_120000", "notes.txt"}


def test_bad_inputs(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        validate_paths([tmp_path / "missing.pt"])
    with pytest.raises(BadInputError, match="no checkpoints in"):
        validate_paths([tmp_path])
    with pytest.raises(BadInputError, match="unknown validation level"):
        validate_paths([tmp_path], "paranoid")


def test_vanished_file_is_a_problem_not_an_exception(tmp_path):
    """A file deleted between the directory scan and its check (retention ran meanwhile)."""
    result = validate_file(tmp_path / "rolling_step_000100.pt")
    assert not result.valid and result.problems == ["cannot open: No such file or directory"]


# ------------------------------------------------- integrity vs content, access, hard links (#13)


def _manager_run_without_epoch(directory: Path) -> Path:
    """The issue's scenario: CheckpointManager saves steps 1 and 2 of a state that has no ``epoch``."""
    import torch

    from ckptctl.training.manager import CheckpointManager

    mgr = CheckpointManager(directory)
    model = torch.nn.Linear(2, 2)
    for step in (1, 2):
        mgr.save({"step": step, "model": model.state_dict()}, step=step)
    return directory


def test_what_the_manager_writes_without_epoch_is_intact_with_a_finding(tmp_path):
    report = validate_paths([_manager_run_without_epoch(tmp_path / "run")])
    assert [r.status for r in report.results] == ["valid"] * 5 and report.exit_code == 0
    assert all(r.findings == ["missing key 'epoch'"] and not r.failed for r in report.results)
    assert report.to_json()["with_findings"] == 5


def test_each_inode_is_read_once_and_every_path_is_named(tmp_path, monkeypatch):
    directory = _manager_run_without_epoch(tmp_path / "run")
    crc_bytes: dict[int, int] = {}
    reads: list[int] = []
    original_crc, original_read = crc_module.crc_range, integrity.read_checkpoint

    def counting_crc(fd, offset, size, view, progress=None):
        inode = os.fstat(fd).st_ino
        crc_bytes[inode] = crc_bytes.get(inode, 0) + size
        return original_crc(fd, offset, size, view, progress)

    def counting_read(path, *args, **kwargs):
        reads.append(os.stat(path).st_ino)
        return original_read(path, *args, **kwargs)

    monkeypatch.setattr(crc_module, "crc_range", counting_crc)
    monkeypatch.setattr(integrity, "read_checkpoint", counting_read)
    report = validate_paths([directory])
    inodes = {p.stat().st_ino: p.stat().st_size for p in directory.glob("*.pt")}
    assert len(inodes) == 2 and len(report.results) == 5  # latest, rolling 2, rolling backup share one inode
    assert sorted(reads) == sorted(inodes)  # one safe unpickle per inode
    assert set(crc_bytes) == set(inodes) and all(crc_bytes[i] < inodes[i] for i in inodes)  # one CRC pass each
    assert report.bytes_checked == sum(crc_bytes.values())
    by_name = {r.name: r for r in report.results}
    assert by_name["rolling_step_000002.pt"].same_file_as == "latest.pt"
    assert by_name["rolling_last_backup.pt"].to_json()["same_file_as"] == "latest.pt"
    assert "same file as latest.pt (one inode, checked once)" in by_name["rolling_last_backup.pt"].notes
    assert by_name["latest.pt"].same_file_as is None and by_name["latest.pt"].bytes_checked > 0


def test_hard_links_share_the_verdict_but_name_checks_follow_each_name(tmp_path):
    path = write_checkpoint(tmp_path / "latest.pt", step=300)
    os.link(path, tmp_path / "rolling_step_000400.pt")
    layout = Layout.of(path.read_bytes())
    _header, offset, size = layout.records[layout.tensor_keys()[0]]
    with open(path, "r+b") as fh:  # damage in place: both names keep sharing the inode
        fh.seek(offset + size // 2)
        byte = fh.read(1)
        fh.seek(offset + size // 2)
        fh.write(bytes([byte[0] ^ 1]))
    first, second = integrity.validate_targets([path, tmp_path / "rolling_step_000400.pt"])
    assert not first.valid and second.problems == first.problems and second.status == "invalid"
    assert second.findings == ["step 300 in file, 400 in name"] and first.findings == []


def test_permission_denied_is_inaccessible_reported_once_not_damage(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "latest.pt")
    real_open = os.open

    def refusing_open(name, flags, *args, **kwargs):
        if os.fspath(name) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(integrity.os, "open", refusing_open)
    for level in LEVELS:
        result = validate_file(path, level)
        assert (result.status, result.inaccessible, result.failed) == ("inaccessible", True, False)
        assert result.problems == ["permission denied: the file cannot be opened for reading (not damage)"]
    report = integrity.Report(DEFAULT, [result, validate_file(write_checkpoint(tmp_path / "epoch_00001.pt"))])
    assert report.exit_code == 2 and report.to_json()["inaccessible"] == 1


def test_a_symlink_loop_is_damage(tmp_path):
    (tmp_path / "latest.pt").symlink_to("latest.pt")
    result = validate_file(tmp_path / "latest.pt")
    assert result.status == "invalid" and result.problems == ["a symlink loop: the name points at itself through links"]


# ------------------------------------------------------------------ progress: a fixed total, bytes as read (#14)


def _mb_checkpoint(path: Path, legacy: bool = False) -> Path:
    """A few MB of float tensors (one of 3 MiB), an integer tensor and the usual keys."""
    import torch

    gen = torch.Generator().manual_seed(3)
    model = {"big": torch.randn(3 << 18, generator=gen), "mid": torch.randn(1 << 18, generator=gen),
             "ints": torch.arange(4000)}  # fmt: skip
    torch.save({"step": 1, "epoch": 0, "model": model}, path, _use_new_zipfile_serialization=not legacy)
    return path


def _recorded(monkeypatch) -> list:
    """Progress calls and the boundaries of the deep level's torch.load, in the order they happen."""
    import torch

    events: list = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (events.append("load"), load(*a, **k), events.append("loaded"))[1])
    original_values = integrity._check_values
    monkeypatch.setattr(integrity, "_check_values", lambda *a: (events.append("deep"), original_values(*a), events.append("scanned")))
    return events


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_deep_progress_reports_the_planned_total_and_moves_during_the_values_pass(tmp_path, monkeypatch, legacy):
    path = _mb_checkpoint(tmp_path / "latest.pt", legacy)
    total = integrity.planned_bytes([path], DEEP)
    assert total == 2 * path.stat().st_size  # the CRC pass, then the values: fixed before the first read
    events = _recorded(monkeypatch)
    result = validate_file(path, DEEP, progress=events.append)
    assert result.valid and result.finite is True
    sizes = [e for e in events if isinstance(e, int)]
    assert all(n > 0 for n in sizes) and sum(sizes) == total
    deep = events[events.index("deep") + 1 : events.index("scanned")]
    during = deep[deep.index("load") + 1 : deep.index("loaded")] if legacy else deep[deep.index("loaded") + 1 :]
    # legacy: torch.load reads the whole file through the counting reader; zip: mapped, read as scanned
    assert len(during) > 1
    tensors = (4 << 20) if not legacy else path.stat().st_size - 1024
    assert sum(during) >= tensors


def test_deep_progress_moves_within_one_large_tensor(tmp_path, monkeypatch):
    path = _mb_checkpoint(tmp_path / "latest.pt")
    monkeypatch.setattr(integrity, "NAN_SCAN_ELEMENTS", 1 << 16)  # 256 KiB of float32 per chunk
    events = _recorded(monkeypatch)
    validate_file(path, DEEP, progress=events.append)
    scan = events[events.index("loaded") + 1 : events.index("scanned")]
    assert len(scan) == 16 and set(scan) == {1 << 18}  # 3 MiB + 1 MiB of floats; the ints are not scanned


def test_progress_ends_at_the_total_when_the_deep_pass_is_skipped(tmp_path):
    path = _mb_checkpoint(tmp_path / "latest.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a CRC mismatch: no torch.load
    path.write_bytes(bytes(data))
    sizes: list[int] = []
    result = validate_file(path, DEEP, progress=sizes.append)
    assert not result.valid
    assert sum(sizes) == integrity.planned_bytes([path], DEEP) and all(n > 0 for n in sizes)


def test_every_level_reports_exactly_its_planned_bytes(ckpt_dir):
    targets, _skipped = integrity.collect_targets([ckpt_dir])
    for level in LEVELS:
        sizes: list[int] = []
        integrity.validate_targets(targets, level, progress=sizes.append)
        assert sum(sizes) == integrity.planned_bytes(targets, level), level
    assert integrity.planned_bytes(targets, QUICK) == 0
    assert integrity.planned_bytes(targets, DEEP) == 2 * integrity.planned_bytes(targets, DEFAULT) > 0
