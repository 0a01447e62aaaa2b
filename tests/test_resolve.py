"""resolve: which file latest / best / a directory stands for, falling back past damaged files."""

from __future__ import annotations

import pytest

from ckptctl.catalog import scan
from ckptctl.errors import BadInputError, NoCheckpointError
from ckptctl.resolve import fallback_candidates, resolve, resolve_target
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
