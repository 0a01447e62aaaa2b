"""prune on other frameworks' layouts: keep the N newest units, never the best, the newest complete,
a pointer's target or what the layout protects; incomplete units only when asked; directories atomically."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from ckptctl import durable
from ckptctl.errors import BadInputError, LockedError
from ckptctl.locking import DirectoryLock
from ckptctl.ops.prune import execute, plan_prune
from ckptctl.ops.retention import Policy
from tests import fake_layouts
from tests.fake_layouts import make_dirs_run, make_files_run, save


@pytest.fixture
def fake(monkeypatch):
    fake_layouts.use(monkeypatch)


def names(decisions) -> list[str]:
    return [d.entry.name for d in decisions]


def reasons(plan) -> dict[str, list[str]]:
    return {d.entry.name: d.reasons for d in plan.retention.keep}


def test_keep_last_keeps_newest_and_protected_removes_the_rest(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 6, 8, 10), best=2, latest=8)
    plan = plan_prune(run, Policy(keep_last=1))
    assert plan.layout == "fake-dirs"
    assert names(plan.retention.remove) == ["ck-4", "ck-6"]
    kept = reasons(plan)
    assert "protected: best" in kept["ck-2"]
    assert "protected: latest points here" in kept["ck-8"]
    assert "protected: newest complete" in kept["ck-10"] and "last 1" in kept["ck-10"]
    result = execute(plan)
    assert [e.name for e in result.removed] == ["ck-4", "ck-6"]
    assert sorted(p.name for p in run.iterdir()) == [".ckptctl.lock", "ck-10", "ck-2", "ck-8", "latest"]


def test_keep_last_zero_still_keeps_best_newest_and_pointer_target(fake, tmp_path):
    """The HF save_total_limit trap: no count can delete the best or the newest checkpoint."""
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 6), best=4, latest=2)
    plan = plan_prune(run, Policy(keep_last=0))
    assert names(plan.retention.remove) == []
    assert {"ck-2", "ck-4", "ck-6"} == set(reasons(plan))


def test_units_are_ordered_by_step_not_name(fake, tmp_path):
    """ck-10 sorts before ck-8 by name; by step it is the newest (the accelerate checkpoint_N trap is the same)."""
    run = make_dirs_run(tmp_path / "run", steps=(8, 9, 10), best=None, latest=None)
    plan = plan_prune(run, Policy(keep_last=2))
    assert names(plan.retention.remove) == ["ck-8"]


def test_incomplete_units_kept_and_not_counted_unless_asked(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 6), best=None, latest=None)
    save(run / "ck-8" / "model.pt", 8)  # no state.json: incomplete (a save that died)
    plan = plan_prune(run, Policy(keep_last=1))
    kept = reasons(plan)
    assert kept["ck-8"] == ["incomplete (missing state.json): not counted, kept (--remove-incomplete removes it)"]
    assert "last 1" in kept["ck-6"] and "protected: newest complete" in kept["ck-6"]
    assert names(plan.retention.remove) == ["ck-2", "ck-4"]
    plan = plan_prune(run, Policy(keep_last=1, remove_incomplete=True))
    assert names(plan.retention.remove) == ["ck-2", "ck-4", "ck-8"]
    assert plan.retention.remove[-1].damage == "incomplete (missing state.json)"
    execute(plan)
    assert not (run / "ck-8").exists() and (run / "ck-6").is_dir()


def test_incomplete_pointer_target_is_never_removed(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), best=None, latest=None)
    save(run / "ck-6" / "model.pt", 6)
    (run / "latest").write_text("ck-6")
    plan = plan_prune(run, Policy(keep_last=1, remove_incomplete=True))
    assert "ck-6" in reasons(plan) and "protected: latest points here" in reasons(plan)["ck-6"]
    assert names(plan.retention.remove) == ["ck-2"]


def test_keep_every(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 6, 8, 10), best=None, latest=None)
    plan = plan_prune(run, Policy(keep_last=1, keep_every=4))
    assert names(plan.retention.remove) == ["ck-2", "ck-6"]
    assert reasons(plan)["ck-4"] == ["every 4 steps"]


def test_file_units_symlink_target_and_copy_are_kept(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8, 12, 16), last=None)
    os.symlink("s8.ckpt", run / "last.ckpt")
    plan = plan_prune(run, Policy(keep_last=1))
    assert names(plan.retention.remove) == ["s4.ckpt", "s12.ckpt"]
    assert "protected: last.ckpt points here" in reasons(plan)["s8.ckpt"]
    execute(plan)
    assert os.path.realpath(run / "last.ckpt") == str((run / "s8.ckpt").resolve())
    copy = make_files_run(tmp_path / "copy", steps=(4, 8), last="copy")
    plan = plan_prune(copy, Policy(keep_last=0))
    assert "protected: last.ckpt is a pointer" in reasons(plan)["last.ckpt"]
    assert names(plan.retention.remove) == ["s4.ckpt"]


def test_directory_removal_goes_through_a_tmp_rename(fake, tmp_path, monkeypatch):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), best=None, latest=None)
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(durable.os, "rename", lambda a, b: (renames.append((Path(a).name, Path(b).name)), real_rename(a, b))[1])
    execute(plan_prune(run, Policy(keep_last=1)))
    assert renames == [("ck-2", "ck-2.deleting.tmp")]
    assert sorted(p.name for p in run.iterdir()) == [".ckptctl.lock", "ck-4"]


def test_replan_under_lock_skips_a_unit_that_became_protected(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 6), best=None, latest=None)
    plan = plan_prune(run, Policy(keep_last=1))
    assert names(plan.retention.remove) == ["ck-2", "ck-4"]
    (run / "latest").write_text("ck-2")  # a pointer now names ck-2
    result = execute(plan)
    assert [e.name for e in result.removed] == ["ck-4"] and [e.name for e in result.skipped] == ["ck-2"]
    assert (run / "ck-2").is_dir()


def test_execute_respects_the_directory_lock(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), best=None, latest=None)
    plan = plan_prune(run, Policy(keep_last=1))
    with DirectoryLock(run):
        with pytest.raises(LockedError):
            execute(plan)
    assert (run / "ck-2").is_dir()


def test_native_only_options_are_refused_on_a_foreign_layout(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run")
    with pytest.raises(BadInputError) as info:
        plan_prune(run, Policy(), native_options=["--keep-rolling"])
    message = str(info.value)
    assert "--keep-rolling applies to ckptctl's own checkpoints only" in message
    assert "Fake Dirs run (fake-dirs)" in message and "--keep-last" in message


def test_stale_temp_leftover_of_a_killed_removal_is_cleaned(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), best=None, latest=None)
    leftover = run / "ck-0.deleting.tmp"
    save(leftover / "model.pt", 0)
    old = 1_000_000.0
    os.utime(leftover, (old, old))
    plan = plan_prune(run, Policy(keep_last=5, stale_temp_after=timedelta(hours=1)))
    assert [e.name for e in plan.retention.stale_temp] == ["ck-0.deleting.tmp"]
    execute(plan)
    assert not leftover.exists()


def test_native_directory_keeps_todays_path(fake, tmp_path):
    """A directory with ckptctl's own names never goes to a layout, even when a layout would recognise it."""
    from tests.factories import touch_checkpoints

    touch_checkpoints(tmp_path, ["rolling_step_000100.pt", "rolling_step_000200.pt"], size=200)
    make_dirs_run(tmp_path, steps=(2,), best=None, latest=None)
    plan = plan_prune(tmp_path, Policy(keep_rolling=1))
    assert plan.run is None and names(plan.retention.remove) == ["rolling_step_000100.pt"]


# ---------------------------------------------------------------------------- real fixtures

_fixture = fake_layouts.copy_fixture


def _plan_names(plan) -> tuple[list[str], list[str]]:
    """Kept and removed unit names, as base names (a layout may name units below the run: checkpoint/step-10)."""
    return ([Path(n).name for n in names(plan.retention.keep)], [Path(n).name for n in names(plan.retention.remove)])


def test_hf_trainer_best_oldest_and_newest_survive_keep_last_zero(tmp_path):
    """transformers #15089 / #35070: save_total_limit deletes the best; here keep-last 0 keeps best and newest."""
    run = _fixture("hf_trainer", tmp_path)
    plan = plan_prune(run, Policy(keep_last=0))
    kept, removed = _plan_names(plan)
    assert removed == ["checkpoint-4"]
    assert "checkpoint-2" in kept and "checkpoint-6" in kept  # best (oldest) and newest complete
    execute(plan)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-6"]


def test_hf_trainer_incomplete_newest_is_kept_and_not_counted(tmp_path):
    run = _fixture("hf_trainer", tmp_path)
    (run / "checkpoint-6" / "model.safetensors").unlink()
    plan = plan_prune(run, Policy(keep_last=1))
    kept, removed = _plan_names(plan)
    assert "checkpoint-6" in kept and "checkpoint-4" in kept and "checkpoint-2" in kept  # incomplete, newest complete, best
    assert removed == []
    plan = plan_prune(run, Policy(keep_last=1, remove_incomplete=True))
    assert _plan_names(plan)[1] == ["checkpoint-6"]


def test_lightning_link_target_is_never_removed(tmp_path):
    run = _fixture("lightning_link", tmp_path)
    target = os.readlink(run / "last.ckpt")
    plan = plan_prune(run, Policy(keep_last=0))
    assert target in _plan_names(plan)[0] and target not in _plan_names(plan)[1]
    execute(plan)
    assert (run / "last.ckpt").resolve().exists()


def test_deepspeed_latest_target_and_newest_kept(tmp_path):
    run = _fixture("deepspeed", tmp_path)
    plan = plan_prune(run, Policy(keep_last=0))
    kept, removed = _plan_names(plan)
    assert "global_step10" in kept and removed == ["global_step5"]


def test_accelerate_counter_is_not_the_step(tmp_path):
    """accelerate #3306: checkpoint_N counts saves; prune keeps the newest by step and removes whole directories."""
    base = _fixture("accelerate", tmp_path, "checkpoints")
    plan = plan_prune(base, Policy(keep_last=1))
    kept, removed = _plan_names(plan)
    assert "checkpoint_2" in kept and removed == ["checkpoint_0", "checkpoint_1"]
    assert [d.entry.unit.step for d in plan.retention.remove] == [5, 10]  # the scheduler's step, not the counter
    execute(plan)
    leftovers = {p.name for p in base.rglob("checkpoint_*")}
    assert leftovers == {"checkpoint_2"}


def test_torchtitan_keep_last(tmp_path):
    base = _fixture("torchtitan", tmp_path, "checkpoint")
    plan = plan_prune(base, Policy(keep_last=2))
    assert _plan_names(plan)[1] == ["step-10"]


def test_accelerate_restarted_counter_is_not_mistaken_for_newer(tmp_path):
    """accelerate #3306: after a resume the counter can name an older state with a higher number."""
    base = _fixture("accelerate", tmp_path, "checkpoints")
    unit_dir = next(base.rglob("checkpoint_0"))
    os.rename(unit_dir, unit_dir.with_name("checkpoint_7"))  # step 5 under the highest counter
    plan = plan_prune(base, Policy(keep_last=1))
    kept, removed = _plan_names(plan)
    assert "checkpoint_2" in kept and sorted(removed) == ["checkpoint_1", "checkpoint_7"]


def test_loose_files_without_steps_are_never_removed(tmp_path):
    """A directory of loose state dicts (no step in most): nothing can be ordered, so nothing is removed."""
    run = _fixture("loose", tmp_path)
    plan = plan_prune(run, Policy(keep_last=0))
    kept, removed = _plan_names(plan)
    no_step = [d.entry.name for d in plan.retention.keep if d.entry.unit is not None and d.entry.unit.step is None]
    assert removed == [] and no_step and set(no_step) <= set(kept)
