"""resolve: which file latest / best / a directory stands for, falling back past damaged files."""

from __future__ import annotations

import pytest

from ckptctl.layouts.catalog import scan
from ckptctl.errors import BadInputError, NoCheckpointError
from ckptctl.ops.resolve import fallback_candidates, resolve, resolve_target
from tests.factories import make_state, write_checkpoint, write_hostile_checkpoint


def test_latest_is_latest_pt_when_intact(ckpt_dir):
    resolution = resolve(ckpt_dir, "latest")
    assert resolution.path.name == "latest.pt"
    assert resolution.skipped == []


def test_latest_falls_back_in_the_manager_order(ckpt_dir):
    (ckpt_dir / "latest.pt").write_bytes(b"garbage")
    (ckpt_dir / "latest_backup.pt").write_bytes(b"")
    (ckpt_dir / "rolling_last_backup.pt").unlink()
    resolution = resolve(ckpt_dir, "latest")
    # After the fixed chain: the newest rolling/emergency by step (rolling 300 beats emergency 250).
    assert resolution.path.name == "rolling_step_000300.pt"
    assert [e.name for e, _ in resolution.skipped] == ["latest.pt", "latest_backup.pt"]
    notes = resolution.fallback_notes()
    assert "latest.pt unreadable" in notes[0] and notes[0].endswith("falling back")


def test_latest_candidates_order_rolling_and_emergency_by_step_then_timestamp(tmp_path):
    for name in ("rolling_step_000100.pt", "emergency_step_000200_20261101_120000.pt",
                 "emergency_step_000200_20261101_130000.pt", "rolling_step_000150.pt", "latest.pt"):  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    names = [e.name for e in fallback_candidates(scan(tmp_path), "latest")]
    assert names == [
        "latest.pt",
        "emergency_step_000200_20261101_130000.pt",
        "emergency_step_000200_20261101_120000.pt",
        "rolling_step_000150.pt",
        "rolling_step_000100.pt",
    ]


def test_best_chain(ckpt_dir):
    (ckpt_dir / "best_model.pt").unlink()
    assert resolve(ckpt_dir, "best").path.name == "best_model_backup.pt"


def test_unsafe_candidate_is_skipped_without_running_it(ckpt_dir, tmp_path):
    marker = tmp_path / "pwned"
    write_hostile_checkpoint(ckpt_dir / "best_model.pt", marker)
    resolution = resolve(ckpt_dir, "best")
    assert resolution.path.name == "best_model_backup.pt"
    assert "unsafe" in resolution.skipped[0][1] and "posix.system" in resolution.skipped[0][1]
    assert not marker.exists()


def test_directory_means_highest_step_of_any_kind(ckpt_dir):
    write_checkpoint(ckpt_dir / "emergency_step_000400_20261102_000000.pt", make_state(step=400))
    assert resolve(ckpt_dir).path.name == "emergency_step_000400_20261102_000000.pt"


def test_directory_prefers_latest_among_equal_steps(ckpt_dir):
    # latest.pt, rolling_step_000300, rolling_last_backup and best_model all hold step 300.
    assert resolve(ckpt_dir).path.name == "latest.pt"


def test_nothing_valid_is_a_finding(tmp_path):
    (tmp_path / "latest.pt").write_bytes(b"garbage")
    with pytest.raises(NoCheckpointError, match="latest.pt unreadable") as info:
        resolve(tmp_path, "latest")
    assert info.value.exit_code == 1


def test_best_with_no_best_files(ckpt_dir):
    for name in ("best_model.pt", "best_model_backup.pt", "best_model_previous.pt"):
        (ckpt_dir / name).unlink()
    with pytest.raises(NoCheckpointError, match="no candidate files"):
        resolve(ckpt_dir, "best")


def test_unknown_target_is_bad_input(ckpt_dir):
    with pytest.raises(BadInputError, match="unknown checkpoint target"):
        resolve(ckpt_dir, "oldest")


def test_empty_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="empty directory"):
        resolve(tmp_path, "latest")


def test_resolve_target_forms(ckpt_dir, monkeypatch):
    assert resolve_target(str(ckpt_dir / "epoch_00001.pt")).path.name == "epoch_00001.pt"
    assert resolve_target(str(ckpt_dir)).requested == "newest"
    assert resolve_target("best", ckpt_dir).path.name == "best_model.pt"
    assert resolve_target(str(ckpt_dir / "latest")).path.name == "latest.pt"
    monkeypatch.chdir(ckpt_dir)
    assert resolve_target("latest").path.name == "latest.pt"


def test_resolve_target_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        resolve_target(str(tmp_path / "nope.pt"))


# ------------------------------------------------------------- one rule of where to resume (#13.2)


def _interrupted_run(directory):
    """What a run leaves after Ctrl+C at step 33 with saves every 10 steps: latest.pt at 30, an emergency at 33."""
    import torch

    from ckptctl.training.manager import CheckpointManager

    mgr = CheckpointManager(directory)
    model = torch.nn.Linear(2, 2)
    for step in (10, 20, 30, 33):
        state = {"step": step, "epoch": 0, "model": model.state_dict(), "args": {"lr": 0.1}}
        (mgr.save_emergency if step == 33 else mgr.save)(state, step=step)
    (emergency,) = directory.glob("emergency_step_000033_*.pt")
    return emergency


def test_every_consumer_resumes_from_the_emergency_save_newer_than_latest(tmp_path):
    import json

    from typer.testing import CliRunner

    from ckptctl.cli.app import app
    from ckptctl.training.manager import CheckpointManager
    from ckptctl.ops.restore import plan_heal

    directory = tmp_path / "run"
    emergency = _interrupted_run(directory)
    why = f"{emergency.name} (step 33) is newer than latest.pt (step 30)"

    point = resolve_target(str(directory))
    assert point.path == emergency and point.reason == why

    mgr = CheckpointManager(directory)
    import torch

    resumed = mgr.resume(torch.nn.Linear(2, 2))
    assert (resumed.path, resumed.step, resumed.reason) == (emergency, 33, why)
    assert mgr.load("newest")["step"] == 33 and mgr.loaded_reason == why
    assert mgr.load("latest")["step"] == 30  # "latest" keeps meaning latest.pt

    result = CliRunner().invoke(app, ["resume-cmd", str(directory), "--script", "train.py"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip().endswith(f"--resume={emergency}")
    assert f"where to resume: {why}" in result.stderr
    doc = json.loads(CliRunner().invoke(app, ["resume-cmd", str(directory), "--json"]).stdout)
    assert doc["checkpoint"] == str(emergency) and doc["reason"] == why

    plan = plan_heal(directory)
    assert plan.actions == [] and plan.resume_from.name == emergency.name and plan.resume_reason == why
    assert any(why in note and "latest.pt is intact and is not replaced" in note for note in plan.notes)
    (directory / "latest.pt").unlink()
    (directory / "latest.pt").write_bytes(b"PK\x03\x04 damaged")
    (action,) = plan_heal(directory).actions
    assert (action.target, action.source, action.step) == ("latest.pt", emergency, 33)


def test_equal_steps_are_ordered_by_save_time_from_names_and_metadata_never_mtime(tmp_path):
    import os

    older = write_checkpoint(tmp_path / "rolling_step_000050.pt", make_state(step=50, timestamp="2026-11-01T12:00:00"))
    newer = write_checkpoint(tmp_path / "emergency_step_000050_20261101_130000.pt", make_state(step=50))
    os.utime(older, (2e9, 2e9))  # a newer mtime must not matter
    assert [e.name for e in fallback_candidates(scan(tmp_path), "newest")] == [newer.name, older.name]
    assert resolve(tmp_path).reason == f"{newer.name} (step 50) is the newest valid checkpoint (there is no latest.pt)"
    write_checkpoint(tmp_path / "latest.pt", make_state(step=50, timestamp="2026-11-01T14:00:00"))
    assert resolve(tmp_path).path.name == "latest.pt"  # saved last of the three


def test_newest_skips_a_damaged_newer_file_and_says_why(tmp_path):
    directory = tmp_path / "run"
    emergency = _interrupted_run(directory)
    data = bytearray(emergency.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor records: the safe reader alone would not notice
    emergency.write_bytes(bytes(data))
    point = resolve_target(str(directory))
    assert point.path.name == "latest.pt" and point.skipped[0][0].path == emergency
    assert point.reason == "latest.pt (step 30) is the newest valid checkpoint"
