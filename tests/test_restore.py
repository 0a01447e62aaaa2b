"""restore plans and their execution: newest valid source, never from best_previous silently,
kept replaced files, identity checks under the lock, and "never loses a file" over random damage."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from ckptctl import durable
from ckptctl.errors import BadInputError, LockedError, SaveError
from ckptctl.integrity import validate_file
from ckptctl.locking import DirectoryLock
from ckptctl.naming import Kind, parse
from ckptctl.restore import execute, plan_from, plan_heal, plan_rollback_best
from tests.factories import cached_layout, write_checkpoint


@pytest.fixture
def ckpt_dir(tmp_path) -> Path:
    """The layout of tests/conftest.py, copied from one template written once per process."""
    return cached_layout(tmp_path / "checkpoints")

NOW = datetime(2026, 11, 29, 5, 0, 0)
KEPT = "20261129_050000"


def truncate(path: Path, keep: int = 3000) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return data[:keep]


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir() if p.is_file() and p.name != ".ckptctl.lock"}


def test_healthy_directory_needs_nothing(ckpt_dir):
    plan = plan_heal(ckpt_dir, now=NOW)
    assert plan.actions == [] and plan.unrestorable == [] and plan.ok
    assert [c.name for c in plan.checked] == ["latest.pt", "best_model.pt"]


def test_damaged_latest_is_replaced_by_the_newest_valid_and_kept(ckpt_dir):
    damaged = truncate(ckpt_dir / "latest.pt")
    source_bytes = (ckpt_dir / "rolling_last_backup.pt").read_bytes()
    plan = plan_heal(ckpt_dir, now=NOW)
    (action,) = plan.actions
    assert (action.target, action.source.name, action.step) == ("latest.pt", "rolling_last_backup.pt", 300)
    assert action.keep_as == f"latest.pt.replaced-{KEPT}"
    assert "latest.pt is invalid (truncated" in action.reason
    execute(plan)
    assert action.status == "done" and plan.executed
    assert (ckpt_dir / "latest.pt").read_bytes() == source_bytes
    assert (ckpt_dir / f"latest.pt.replaced-{KEPT}").read_bytes() == damaged
    assert (ckpt_dir / "rolling_last_backup.pt").read_bytes() == source_bytes
    assert validate_file(ckpt_dir / "latest.pt").valid
    assert plan_heal(ckpt_dir, now=NOW).actions == []


def test_newest_valid_wins_over_fallback_order(ckpt_dir):
    (ckpt_dir / "latest.pt").unlink()
    truncate(ckpt_dir / "rolling_last_backup.pt")
    plan = plan_heal(ckpt_dir, now=NOW)
    assert plan.actions[0].source.name == "rolling_step_000300.pt"  # step 300 beats latest_backup's 200
    assert plan.actions[0].keep_as is None  # nothing to keep: latest.pt was missing
    write_checkpoint(ckpt_dir / "emergency_step_000350_20261101_130000.pt", step=350)
    assert plan_heal(ckpt_dir, now=NOW).actions[0].source.name == "emergency_step_000350_20261101_130000.pt"


def test_nothing_valid_left_is_unrestorable_and_changes_nothing(tmp_path):
    directory = tmp_path / "ckpts"
    write_checkpoint(directory / "latest.pt")
    write_checkpoint(directory / "rolling_step_000100.pt", step=100)
    truncate(directory / "latest.pt")
    truncate(directory / "rolling_step_000100.pt")
    before = digests(directory)
    plan = plan_heal(directory, now=NOW)
    assert plan.actions == [] and not plan.ok
    assert plan.unrestorable[0].startswith("latest.pt is invalid (truncated")
    assert "nothing valid is left to restore it from (tried: rolling_step_000100.pt)" in plan.unrestorable[0]
    execute(plan)
    assert digests(directory) == before


def test_best_comes_from_best_backup_never_silently_from_previous(ckpt_dir):
    truncate(ckpt_dir / "best_model.pt")
    plan = plan_heal(ckpt_dir, now=NOW)
    assert [(a.target, a.source.name) for a in plan.actions] == [("best_model.pt", "best_model_backup.pt")]
    truncate(ckpt_dir / "best_model_backup.pt")
    plan = plan_heal(ckpt_dir, now=NOW)
    assert plan.actions == []
    (problem,) = plan.unrestorable
    assert problem.startswith("best_model.pt is invalid (") and "best_model_backup.pt is invalid" in problem
    assert "best_model_previous.pt is valid" in problem and "--rollback-best" in problem


def test_missing_best_files_are_not_a_problem(tmp_path):
    directory = tmp_path / "ckpts"
    write_checkpoint(directory / "latest.pt")
    plan = plan_heal(directory, now=NOW)
    assert plan.ok and plan.actions == []


def test_rollback_best_promotes_previous_and_keeps_the_replaced_best(ckpt_dir):
    old_best = (ckpt_dir / "best_model.pt").read_bytes()
    old_backup = (ckpt_dir / "best_model_backup.pt").read_bytes()
    previous = (ckpt_dir / "best_model_previous.pt").read_bytes()
    plan = execute(plan_rollback_best(ckpt_dir, now=NOW))
    assert [a.status for a in plan.actions] == ["done", "done"]
    assert (ckpt_dir / "best_model.pt").read_bytes() == previous
    assert (ckpt_dir / "best_model_backup.pt").read_bytes() == previous  # a later heal cannot bring the spike back
    assert (ckpt_dir / "best_model_previous.pt").read_bytes() == previous
    assert (ckpt_dir / f"best_model.pt.replaced-{KEPT}").read_bytes() == old_best
    assert (ckpt_dir / f"best_model_backup.pt.replaced-{KEPT}").read_bytes() == old_backup


def test_rollback_without_a_valid_previous_is_unrestorable(ckpt_dir):
    truncate(ckpt_dir / "best_model_previous.pt")
    plan = plan_rollback_best(ckpt_dir, now=NOW)
    assert plan.actions == [] and plan.unrestorable[0].startswith("best_model_previous.pt is invalid (")


def test_from_file_to_latest_and_best(ckpt_dir, tmp_path):
    outside = write_checkpoint(tmp_path / "elsewhere" / "good.pt", step=999)
    plan = execute(plan_from(ckpt_dir, outside, "latest", now=NOW))
    assert [(a.target, a.step, a.status) for a in plan.actions] == [("latest.pt", 999, "done")]
    assert (ckpt_dir / "latest.pt").read_bytes() == outside.read_bytes()
    plan = execute(plan_from(ckpt_dir, "epoch_00001.pt", "best", now=NOW))  # a name inside the directory
    assert [a.target for a in plan.actions] == ["best_model.pt", "best_model_backup.pt"]
    assert (ckpt_dir / "best_model.pt").read_bytes() == (ckpt_dir / "epoch_00001.pt").read_bytes()


def test_from_bad_inputs_and_invalid_sources(ckpt_dir):
    with pytest.raises(BadInputError, match="no such file"):
        plan_from(ckpt_dir, "nope.pt", "latest")
    with pytest.raises(BadInputError, match="latest.pt itself"):
        plan_from(ckpt_dir, "latest.pt", "latest")
    with pytest.raises(BadInputError, match="--to must be one of"):
        plan_from(ckpt_dir, "epoch_00000.pt", "newest")
    with pytest.raises(BadInputError, match="unknown copy mode"):
        plan_heal(ckpt_dir, mode="teleport")
    truncate(ckpt_dir / "epoch_00000.pt")
    plan = plan_from(ckpt_dir, "epoch_00000.pt", "latest")
    assert plan.actions == [] and "epoch_00000.pt is invalid (truncated" in plan.unrestorable[0]


def test_from_best_backup_to_best_skips_copying_onto_itself(ckpt_dir):
    plan = plan_from(ckpt_dir, "best_model_backup.pt", "best", now=NOW)
    assert [a.target for a in plan.actions] == ["best_model.pt"]


def test_discard_keeps_nothing(ckpt_dir):
    truncate(ckpt_dir / "latest.pt")
    execute(plan_heal(ckpt_dir, discard=True, now=NOW))
    assert not [p for p in ckpt_dir.iterdir() if ".replaced-" in p.name]
    assert validate_file(ckpt_dir / "latest.pt").valid


@pytest.mark.parametrize("mode", [durable.LINK, durable.COPY, durable.REFLINK])
def test_modes(ckpt_dir, mode):
    truncate(ckpt_dir / "latest.pt")
    (action,) = execute(plan_heal(ckpt_dir, mode=mode, now=NOW)).actions
    same_inode = os.stat(ckpt_dir / "latest.pt").st_ino == os.stat(action.source).st_ino
    assert same_inode == (mode == durable.LINK)
    assert action.mode_used in (mode, durable.COPY)


def test_replaced_names_are_foreign_files_and_never_overwritten(ckpt_dir):
    name = f"latest.pt.replaced-{KEPT}"
    assert parse(name).kind is Kind.OTHER and not parse(name).is_checkpoint
    (ckpt_dir / name).write_bytes(b"an earlier restore's file")
    truncate(ckpt_dir / "latest.pt")
    (action,) = plan_heal(ckpt_dir, now=NOW).actions
    assert action.keep_as == f"{name}-1"
    execute(plan_heal(ckpt_dir, now=NOW))
    assert (ckpt_dir / name).read_bytes() == b"an earlier restore's file"


def test_execution_takes_the_lock(ckpt_dir):
    truncate(ckpt_dir / "latest.pt")
    plan = plan_heal(ckpt_dir, now=NOW)
    before = digests(ckpt_dir)
    with DirectoryLock(ckpt_dir):
        with pytest.raises(LockedError):
            execute(plan)
    assert digests(ckpt_dir) == before and plan.actions[0].status == "planned"


def test_a_save_between_plan_and_execute_is_not_overwritten(ckpt_dir):
    truncate(ckpt_dir / "latest.pt")
    plan = plan_heal(ckpt_dir, now=NOW)
    fresh = write_checkpoint(ckpt_dir / "latest.pt", step=400).read_bytes()  # the training saved meanwhile
    execute(plan)
    (action,) = plan.actions
    assert action.status == "skipped" and "changed since the plan" in action.note and not plan.ok
    assert (ckpt_dir / "latest.pt").read_bytes() == fresh


def test_failed_verification_leaves_the_target_untouched(ckpt_dir, monkeypatch):
    damaged = truncate(ckpt_dir / "latest.pt")
    plan = plan_heal(ckpt_dir, mode=durable.COPY, now=NOW)

    def bad_verify(path):
        from ckptctl.errors import UnreadableCheckpoint

        raise UnreadableCheckpoint("CRC-32 mismatch in record data/0")

    monkeypatch.setattr(durable, "verify_crc", bad_verify)
    with pytest.raises(SaveError, match="verification failed"):
        execute(plan)
    assert (ckpt_dir / "latest.pt").read_bytes() == damaged
    assert not [p for p in ckpt_dir.iterdir() if p.name.endswith(".tmp") or ".replaced-" in p.name]


def test_no_checkpoints_is_bad_input(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BadInputError, match="no checkpoints"):
        plan_heal(tmp_path)
    with pytest.raises(BadInputError, match="no such directory"):
        plan_heal(tmp_path / "missing")


DAMAGEABLE = ("latest.pt", "latest_backup.pt", "rolling_last_backup.pt", "rolling_step_000100.pt",
              "rolling_step_000200.pt", "rolling_step_000300.pt", "emergency_step_000250_20261101_120000.pt",
              "best_model.pt", "best_model_backup.pt")  # fmt: skip


def test_heal_never_loses_a_file_and_leaves_a_valid_latest_when_possible(ckpt_dir, tmp_path):
    """Random damage (truncate, delete, flip) over the layout, then heal: every byte sequence that
    existed still exists under some name, and latest.pt is valid whenever any candidate was."""
    rng = random.Random(11)
    for round_ in range(12):
        directory = tmp_path / f"round{round_}"
        shutil.copytree(ckpt_dir, directory)
        for name in rng.sample(DAMAGEABLE, rng.randrange(1, len(DAMAGEABLE) + 1)):
            path = directory / name
            action = rng.choice(("truncate", "delete", "flip"))
            if action == "delete":
                path.unlink()
            elif action == "truncate":
                truncate(path, rng.randrange(0, path.stat().st_size))
            else:
                data = bytearray(path.read_bytes())
                data[rng.randrange(len(data))] ^= 0x04
                path.write_bytes(bytes(data))
        before = digests(directory)
        could = any(validate_file(directory / n).valid for n in DAMAGEABLE[:7] if (directory / n).exists())
        plan = execute(plan_heal(directory, now=NOW))
        after = digests(directory)
        assert set(before.values()) <= set(after.values()), f"round {round_}: a file's content was lost"
        assert set(before) <= set(after), f"round {round_}: a name disappeared"
        latest_ok = (directory / "latest.pt").exists() and validate_file(directory / "latest.pt").valid
        assert latest_ok == could, (round_, plan.to_json())
