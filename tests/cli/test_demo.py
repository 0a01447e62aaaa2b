"""ckptctl demo: a real training run with every kind of save, a real SIGINT, then the listing."""

from __future__ import annotations

import json
import signal

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from ckptctl.durable import verify_crc
from ckptctl.formats.reader import read_checkpoint

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["demo", *args])


def _pt_names(directory):
    return sorted(p.name for p in directory.glob("*.pt"))


def test_demo_builds_the_whole_layout_and_lists_it(tmp_path):
    directory = tmp_path / "demo_checkpoints"
    before = signal.getsignal(signal.SIGINT)
    result = invoke(str(directory))
    assert result.exit_code == 0, result.output
    names = _pt_names(directory)
    emergency = [n for n in names if n.startswith("emergency_step_000270_")]
    assert len(emergency) == 1 and len([n for n in names if n.startswith("emergency")]) == 1
    assert [n for n in names if n.startswith("rolling_step")] == [f"rolling_step_{s:06d}.pt" for s in range(180, 261, 20)]
    for name in ("latest.pt", "latest_backup.pt", "rolling_last_backup.pt", "best_model.pt",
                 "best_model_backup.pt", "best_model_previous.pt", "epoch_00000.pt", "epoch_00001.pt"):  # fmt: skip
        assert name in names
    for name in names:
        assert verify_crc(directory / name) > 0
    assert read_checkpoint(directory / emergency[0]).root["checkpoint_type"] == "emergency"
    assert read_checkpoint(directory / "latest.pt").root["step"] == 260
    # stdout is `ckptctl list` of the result; the story goes to stderr
    assert "latest.pt" in result.stdout and emergency[0] in result.stdout and "14 files" in result.stdout
    assert "SIGINT handled at the step boundary" in result.stderr
    assert "new best val_loss" in result.stderr and "Checkpoint storage:" in result.stderr
    assert signal.getsignal(signal.SIGINT) is before  # the guard put the old handler back


def test_demo_json_and_rerun_replaces_the_previous_demo(tmp_path):
    directory = tmp_path / "d"
    assert invoke(str(directory)).exit_code == 0
    result = invoke(str(directory), "--steps", "60", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["interrupted_at"] == 54 and document["steps_run"] == 54
    assert document["emergency_checkpoint"].startswith("emergency_step_000054_")
    assert document["latest_step"] == 52 and document["best_val_loss"] > 0
    assert {c["status"] for c in document["checkpoints"]} == {"ok"}
    # the earlier 300-step run's files are gone: a re-run starts fresh
    assert not any(name.startswith("rolling_step_0002") for name in _pt_names(directory))
    assert len([n for n in _pt_names(directory) if n.startswith("emergency")]) == 1
    assert result.stderr == ""  # --json: nothing but the document, no progress


def test_refuses_a_foreign_non_empty_directory_unless_forced(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = invoke(str(foreign), "--steps", "30")
    assert result.exit_code == 2
    assert "not empty and was not made by `ckptctl demo`" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    forced = invoke(str(foreign), "--steps", "30", "--force")
    assert forced.exit_code == 0, forced.output
    assert (foreign / "notes.txt").read_text() == "keep me" and (foreign / "latest.pt").exists()


@pytest.mark.parametrize("args, messages", [
    (["--steps", "5"], ("greater than or equal to 30", "x>=30")),  # Typer's wording differs between versions
    ([], ("not a directory",)),
])  # fmt: skip
def test_bad_input_exits_2(tmp_path, args, messages):
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = invoke(str(target), *args)
    assert result.exit_code == 2
    assert any(message in result.output for message in messages), result.output
    assert "Traceback" not in result.output


def test_demo_is_documented():
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0 and "--force" in result.stdout and "--json" in result.stdout
