"""ckptctl validate: exit 0 all valid, 1 any invalid, 2 bad input; one JSON document with --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests.corruption import Layout, flip
from tests.factories import cached_layout, write_checkpoint, write_hostile_checkpoint


@pytest.fixture
def ckpt_dir(tmp_path) -> Path:
    """The layout of tests/conftest.py, copied from one template written once per process."""
    return cached_layout(tmp_path / "checkpoints")


runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["validate", *args])


def damage_tensor(path):
    layout = Layout.of(path.read_bytes())
    key = layout.tensor_keys()[0]
    _h, offset, size = layout.records[key]
    path.write_bytes(flip(layout.data, offset + size // 2))
    return key


def test_valid_directory_exits_0_with_a_summary(ckpt_dir):
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["verdict", "file", "details"]
    assert sum(line.startswith("valid ") for line in lines) == 12
    assert lines[-1].startswith("12 checked: 12 valid, 0 invalid (default level, ")
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_damaged_file_exits_1_and_names_record_and_file(ckpt_dir):
    key = damage_tensor(ckpt_dir / "rolling_step_000200.pt")
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 1
    bad = [line for line in result.stdout.splitlines() if line.startswith("invalid")]
    assert len(bad) == 1 and "rolling_step_000200.pt" in bad[0] and f"record {key}: CRC mismatch" in bad[0]
    assert "12 checked: 11 valid, 1 invalid" in result.stdout


def test_json_document(ckpt_dir):
    damage_tensor(ckpt_dir / "latest.pt")
    result = invoke(str(ckpt_dir / "latest.pt"), str(ckpt_dir / "best_model.pt"), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert (doc["valid"], doc["invalid"], doc["level"]) == (1, 1, "default")
    first, second = doc["results"]
    assert set(first) >= {"path", "name", "valid", "problems", "notes", "status", "checksums"}
    assert first["name"] == "latest.pt" and first["valid"] is False and "CRC mismatch" in first["problems"][0]
    assert second == {**second, "name": "best_model.pt", "valid": True, "problems": [], "status": "valid"}


def test_hostile_file_is_unsafe_at_deep_level_and_never_runs(tmp_path):
    marker = tmp_path / "executed"
    path = write_hostile_checkpoint(tmp_path / "best_model.pt", marker)
    for level in ("--quick", "--deep"):
        result = invoke(str(path), level, "--json")
        assert result.exit_code == 1
        (entry,) = json.loads(result.stdout)["results"]
        assert entry["status"] == "unsafe" and entry["problems"] == ["unsafe: references posix.system"]
    assert not marker.exists()


def test_no_checksums_is_valid_with_a_note(tmp_path):
    import torch

    torch.serialization.set_crc32_options(False)
    try:
        path = write_checkpoint(tmp_path / "latest.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    result = invoke(str(path))
    assert result.exit_code == 0
    assert "note: no checksums: written with torch's CRC-32 switched off" in result.stdout


def test_levels_and_jobs_give_the_same_verdicts(ckpt_dir):
    damage_tensor(ckpt_dir / "epoch_00001.pt")
    verdicts = {}
    for extra in ([], ["--jobs", "1"], ["--jobs", "3"], ["--deep"]):
        doc = json.loads(invoke(str(ckpt_dir), "--json", *extra).stdout)
        verdicts[tuple(extra)] = [(r["name"], r["valid"]) for r in doc["results"]]
    assert len(set(map(tuple, verdicts.values()))) == 1
    quick = json.loads(invoke(str(ckpt_dir), "--json", "--quick").stdout)
    assert quick["invalid"] == 0 and quick["level"] == "quick"  # tensor bytes are not read at --quick


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, message in (
        ([str(tmp_path / "missing.pt")], "no such file"),
        ([str(tmp_path)], "no checkpoints in"),
        ([str(tmp_path), "--quick", "--deep"], "--quick and --deep exclude each other"),
    ):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert invoke().exit_code == 2  # PATH is required


def test_flipped_files_never_produce_a_traceback(tmp_path):
    path = write_checkpoint(tmp_path / "latest.pt")
    data = path.read_bytes()
    for at in range(0, len(data), max(1, len(data) // 40)):
        path.write_bytes(flip(data, at, 0x10))
        result = invoke(str(path))
        assert result.exit_code in (0, 1) and "Traceback" not in result.stderr + result.stdout, at


def test_progress_bar_counts_every_checked_byte_on_a_terminal(ckpt_dir, monkeypatch):
    from ckptctl.cli import validate_cmd

    advanced: list[int] = []
    original = validate_cmd._ProgressBar.advance

    def spy(self, nbytes):
        advanced.append(nbytes)
        original(self, nbytes)

    monkeypatch.setattr(validate_cmd, "stderr_is_terminal", lambda: True)
    monkeypatch.setattr(validate_cmd, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(validate_cmd._ProgressBar, "advance", spy)
    result = invoke(str(ckpt_dir), "--json")
    assert result.exit_code == 0
    assert sum(advanced) == json.loads(result.stdout)["bytes_checked"] > 0
