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
from ckptctl.training import dcp_save
from ckptctl.errors import BadInputError, LockedError, SaveError
from ckptctl.ops.integrity import validate_file
from ckptctl.locking import DirectoryLock
from ckptctl.layouts.naming import Kind, parse
from ckptctl.ops.restore import execute, plan_from, plan_heal, plan_rollback_best
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
    assert plan.notes == ["no best model saved yet (no best_model file and no backup of one)"]
    assert [c.name for c in plan.checked] == ["latest.pt"]  # nothing claims best is valid


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
    assert parse(name).kind is Kind.REPLACED and not parse(name).is_checkpoint
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
        # latest.pt is healed from the newest valid checkpoint of any kind (best and epochs included)
        could = any(validate_file(p).valid for p in directory.glob("*.pt"))
        plan = execute(plan_heal(directory, now=NOW))
        after = digests(directory)
        assert set(before.values()) <= set(after.values()), f"round {round_}: a file's content was lost"
        assert set(before) <= set(after), f"round {round_}: a name disappeared"
        latest_ok = (directory / "latest.pt").exists() and validate_file(directory / "latest.pt").valid
        assert latest_ok == could, (round_, plan.to_json())


# ------------------------------------------------------------------------- sharded (DCP) layout


@pytest.fixture
def dcp_dir(tmp_path) -> Path:
    """rolling 100/200/300, latest -> 300, latest_backup -> 200, best_model (300), best_model_previous (200), epoch_00001."""
    pytest.importorskip("torch")
    from tests.factories import cached_dcp_layout

    return cached_dcp_layout(tmp_path / "sharded")


def _step(path: Path) -> int:
    from ckptctl.formats.reader import read_checkpoint

    return read_checkpoint(path).root["step"]


def _tree(directory: Path) -> dict[str, object]:
    """Every name: a symlink's target, a directory's file digests, a file's digest."""
    tree: dict[str, object] = {}
    for p in sorted(directory.iterdir()):
        if p.is_symlink():
            tree[p.name] = "-> " + os.readlink(p)
        elif p.is_dir():
            tree[p.name] = digests(p)
        elif p.name != ".ckptctl.lock":
            tree[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return tree


def test_sharded_healthy_directory_needs_nothing(dcp_dir):
    plan = plan_heal(dcp_dir, now=NOW)
    assert plan.actions == [] and plan.ok
    assert [c.name for c in plan.checked] == ["latest", "best_model"]


@pytest.mark.parametrize("damage", ["dangling", "missing", "partial", "a real directory"])
def test_sharded_latest_is_pointed_at_the_newest_valid_and_the_old_link_kept(dcp_dir, damage):
    latest = dcp_dir / "latest"
    if damage == "dangling":
        durable.remove_directory(dcp_dir / "rolling_step_000300")
    elif damage == "missing":
        latest.unlink()
    elif damage == "partial":
        (dcp_dir / "rolling_step_000300" / ".metadata").unlink()
    else:
        latest.unlink()
        shutil.copytree(dcp_dir / "rolling_step_000300", latest)
        (latest / ".metadata").write_bytes(b"garbage")
    # Where to resume is the newest valid of any kind: epoch_00001 also holds step 300, saved after
    # rolling 300 (in the same second or a later one: equal save times prefer the rolling kind).
    from ckptctl.layouts.catalog import scan
    from ckptctl.ops.resolve import saved_at

    expected = "epoch_00001"
    if damage in ("missing", "a real directory"):
        when = {e.name: saved_at(e) for e in scan(dcp_dir) if e.name in ("rolling_step_000300", "epoch_00001")}
        expected = expected if when["epoch_00001"] > when["rolling_step_000300"] else "rolling_step_000300"
    plan = plan_heal(dcp_dir, now=NOW)
    (action,) = plan.actions
    assert (action.target, action.source.name, action.how) == ("latest", expected, "pointer")
    assert action.keep_as == (None if damage == "missing" else f"latest.replaced-{KEPT}")
    before = _tree(dcp_dir)
    execute(plan)
    assert action.status == "done" and action.mode_used == "symlink"
    assert os.readlink(latest) == expected and validate_file(latest).valid
    kept = dcp_dir / f"latest.replaced-{KEPT}"
    if damage in ("dangling", "partial"):
        assert os.readlink(kept) == "rolling_step_000300"  # a record of what latest named
    if damage == "a real directory":
        assert kept.is_dir() and not kept.is_symlink() and digests(kept) == before["latest"]  # renamed, untouched
    after = _tree(dcp_dir)
    assert {k: v for k, v in before.items() if k != "latest"} == {k: v for k, v in after.items() if k not in ("latest", kept.name)}
    assert plan_heal(dcp_dir, now=NOW).actions == []


def test_sharded_discard_keeps_no_old_link(dcp_dir):
    (dcp_dir / "rolling_step_000300" / ".metadata").unlink()
    plan = plan_heal(dcp_dir, discard=True, now=NOW)
    assert plan.actions[0].keep_as is None
    execute(plan)
    assert os.readlink(dcp_dir / "latest") == "epoch_00001"  # step 300, the newest valid
    assert not [p for p in dcp_dir.iterdir() if ".replaced-" in p.name]
    assert (dcp_dir / "rolling_step_000300").is_dir()  # the directory the link named is not deleted


def test_sharded_damaged_best_is_reported_with_the_rollback_hint_and_nothing_changes(dcp_dir):
    (dcp_dir / "best_model" / ".metadata").write_bytes(b"garbage")
    before = _tree(dcp_dir)
    plan = plan_heal(dcp_dir, now=NOW)
    assert plan.actions == [] and not plan.ok
    (problem,) = plan.unrestorable
    assert problem.startswith("best_model is invalid (") and "the sharded layout keeps no best_model_backup" in problem
    assert "best_model_previous is valid but holds the model before the best: promote it with --rollback-best" in problem
    execute(plan)
    assert _tree(dcp_dir) == before


def test_sharded_nothing_valid_left_for_latest(dcp_dir):
    for name in ("rolling_step_000100", "rolling_step_000200", "rolling_step_000300", "epoch_00001"):
        (dcp_dir / name / ".metadata").unlink()
    plan = plan_heal(dcp_dir, now=NOW)
    assert plan.actions == []
    assert plan.unrestorable == ["latest is invalid (no .metadata: a sharded save that did not finish) and nothing "
                                 "valid is left to point it at (tried: rolling_step_000300, rolling_step_000200, "
                                 "rolling_step_000100, epoch_00001)"]  # fmt: skip


@pytest.mark.parametrize("source", ["rolling_step_000100", "latest_backup", "epoch_00001"])
def test_sharded_from_to_latest_repoints(dcp_dir, source):
    plan = plan_from(dcp_dir, source, "latest", now=NOW)
    (action,) = plan.actions
    named = {"latest_backup": "rolling_step_000200"}.get(source, source)
    assert (action.source.name, action.how, action.keep_as) == (named, "pointer", f"latest.replaced-{KEPT}")
    execute(plan)
    assert os.readlink(dcp_dir / "latest") == named
    assert os.readlink(dcp_dir / f"latest.replaced-{KEPT}") == "rolling_step_000300"


def test_sharded_from_refusals(dcp_dir, tmp_path):
    with pytest.raises(BadInputError, match="latest can only point at a rolling, emergency or epoch directory"):
        plan_from(dcp_dir, "best_model", "latest")
    elsewhere = shutil.copytree(dcp_dir / "rolling_step_000100", tmp_path / "rolling_step_000100")
    with pytest.raises(BadInputError, match="inside"):
        plan_from(dcp_dir, elsewhere, "latest")
    with pytest.raises(BadInputError, match="is latest itself"):
        plan_from(dcp_dir, "rolling_step_000300", "latest")
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(BadInputError, match="holds sharded .DCP. checkpoint directories"):
        plan_from(dcp_dir, tmp_path / "x.pt", "latest")
    (dcp_dir / "rolling_step_000100" / ".metadata").unlink()
    plan = plan_from(dcp_dir, "rolling_step_000100", "latest")
    assert plan.actions == [] and plan.unrestorable[0].startswith("rolling_step_000100 is invalid (no .metadata")


@pytest.mark.parametrize("mode", [durable.LINK, durable.COPY])
def test_sharded_from_to_best_copies_the_directory_and_keeps_the_old_best(dcp_dir, tmp_path, mode):
    elsewhere = shutil.copytree(dcp_dir / "rolling_step_000100", tmp_path / "other_run" / "rolling_step_000100")
    plan = plan_from(dcp_dir, elsewhere, "best", mode=mode, now=NOW)  # any sharded checkpoint, from anywhere
    (action,) = plan.actions
    assert (action.target, action.how, action.keep_as, action.step) == ("best_model", "directory", f"best_model.replaced-{KEPT}", 100)
    old_best = _tree(dcp_dir)["best_model"]
    execute(plan)
    assert action.status == "done" and action.mode_used == mode
    assert _step(dcp_dir / "best_model") == 100 and validate_file(dcp_dir / "best_model").valid
    assert _tree(dcp_dir)[f"best_model.replaced-{KEPT}"] == old_best
    shard = next((dcp_dir / "best_model").glob("*.distcp"))
    assert (shard.stat().st_ino == (elsewhere / shard.name).stat().st_ino) == (mode == durable.LINK)
    assert not [p for p in dcp_dir.iterdir() if p.name.endswith(".tmp")]


def test_sharded_rollback_best_copies_previous_and_the_manager_reads_it(dcp_dir):
    from ckptctl.training.manager import CheckpointManager

    plan = plan_rollback_best(dcp_dir, now=NOW)
    (action,) = plan.actions
    assert (action.target, action.source.name, action.how) == ("best_model", "best_model_previous", "directory")
    execute(plan)
    assert _step(dcp_dir / "best_model") == 200 and _step(dcp_dir / "best_model_previous") == 200
    assert _step(dcp_dir / f"best_model.replaced-{KEPT}") == 300
    assert CheckpointManager(dcp_dir, format="dcp").best_val_loss == 0.5  # the rolled-back best's loss


def test_sharded_a_save_between_plan_and_execute_is_not_overwritten(dcp_dir):
    (dcp_dir / "rolling_step_000300" / ".metadata").unlink()
    plan = plan_heal(dcp_dir, now=NOW)
    dcp_save.set_pointer(dcp_dir, Kind.LATEST, "rolling_step_000100")  # a save re-pointed latest meanwhile
    execute(plan)
    assert plan.actions[0].status == "skipped" and not plan.ok
    assert os.readlink(dcp_dir / "latest") == "rolling_step_000100"
    with DirectoryLock(dcp_dir):
        with pytest.raises(LockedError):
            execute(plan_rollback_best(dcp_dir, now=NOW))


def test_sharded_failed_copy_verification_leaves_best_untouched(dcp_dir, monkeypatch):
    from ckptctl.errors import UnreadableCheckpoint

    before = _tree(dcp_dir)
    plan = plan_rollback_best(dcp_dir, mode=durable.COPY, now=NOW)

    def unreadable(path):
        raise UnreadableCheckpoint("truncated: shard file __0_0.distcp")

    monkeypatch.setattr(durable, "read_directory", unreadable)
    with pytest.raises(SaveError, match="verification failed: truncated"):
        execute(plan)
    assert _tree(dcp_dir) == before


# ------------------------------------------ heal damage only, one rule, broken links, access (#13, #12)


def test_checkpoints_without_epoch_are_intact_and_nothing_is_rolled_back(tmp_path):
    from tests.test_integrity import _manager_run_without_epoch

    directory = _manager_run_without_epoch(tmp_path / "run")
    before = digests(directory)
    plan = plan_heal(directory, now=NOW)
    assert plan.actions == [] and plan.ok and plan.exit_code == 0
    (latest,) = [c for c in plan.checked if c.name == "latest.pt"]
    assert latest.valid and latest.findings == ["missing key 'epoch'"]
    assert plan.resume_from.name == "latest.pt" and plan.resume_from.step == 2
    execute(plan)
    assert digests(directory) == before


def test_a_truly_damaged_newer_latest_is_still_healed(tmp_path):
    from tests.test_integrity import _manager_run_without_epoch

    directory = _manager_run_without_epoch(tmp_path / "run")
    truncate(directory / "latest.pt", 900)  # rolling_step_000002 and rolling_last_backup share its inode
    (action,) = plan_heal(directory, now=NOW).actions
    assert (action.target, action.source.name, action.step) == ("latest.pt", "latest_backup.pt", 1)
    assert action.reason.startswith("latest.pt is invalid (truncated")


def test_missing_best_with_backups_is_healed(ckpt_dir):
    (ckpt_dir / "best_model.pt").unlink()
    (action,) = plan_heal(ckpt_dir, now=NOW).actions
    assert (action.target, action.source.name, action.keep_as) == ("best_model.pt", "best_model_backup.pt", None)
    assert action.reason == "best_model.pt is missing; best_model_backup.pt is valid"


def test_dangling_best_is_damage_healed_from_its_backup_or_reported(ckpt_dir):
    (ckpt_dir / "best_model.pt").unlink()
    (ckpt_dir / "best_model.pt").symlink_to("rolling_step_000900.pt")  # its target was deleted
    plan = plan_heal(ckpt_dir, now=NOW)
    (action,) = plan.actions
    assert action.reason.startswith("best_model.pt is a dangling symlink (to rolling_step_000900.pt")
    assert action.keep_as is None and action.broken_link  # a broken link holds no data
    execute(plan)
    assert not (ckpt_dir / "best_model.pt").is_symlink() and validate_file(ckpt_dir / "best_model.pt").valid
    for name in ("best_model.pt", "best_model_backup.pt", "best_model_previous.pt"):
        (ckpt_dir / name).unlink()
    (ckpt_dir / "best_model.pt").symlink_to("nowhere.pt")
    plan = plan_heal(ckpt_dir, now=NOW)
    assert plan.actions == [] and plan.exit_code == 1
    assert plan.unrestorable == ["best_model.pt is a dangling symlink (to nowhere.pt, which does not exist) "
                                 "and best_model_backup.pt is missing"]  # fmt: skip


def test_a_symlink_loop_as_latest_is_planned_for_healing(ckpt_dir):
    (ckpt_dir / "latest.pt").unlink()
    (ckpt_dir / "latest.pt").symlink_to("latest.pt")
    plan = plan_heal(ckpt_dir, now=NOW)
    (action,) = plan.actions
    assert action.reason.startswith("latest.pt is a symlink loop")
    assert (action.source.name, action.step) == ("rolling_last_backup.pt", 300)
    assert "latest.pt is a symlink loop" in plan.resume_reason
    execute(plan)
    assert action.status == "done" and not (ckpt_dir / "latest.pt").is_symlink()
    assert validate_file(ckpt_dir / "latest.pt").valid


def test_an_unreadable_latest_is_reported_not_replaced(ckpt_dir, monkeypatch):
    from ckptctl.ops import integrity

    target = os.fspath(ckpt_dir / "latest.pt")
    real_open = os.open

    def refusing_open(name, flags, *args, **kwargs):
        if os.fspath(name) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(integrity.os, "open", refusing_open)
    plan = plan_heal(ckpt_dir, now=NOW)
    assert plan.actions == [] and plan.unrestorable == [] and plan.exit_code == 2
    (message,) = plan.inaccessible
    assert message.startswith("latest.pt: permission denied") and "fix its permissions" in message
    assert plan.to_json()["inaccessible"] == [message]
