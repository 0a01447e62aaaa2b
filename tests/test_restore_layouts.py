"""restore on other frameworks' layouts: re-point a dangling, looping or stale last.ckpt symlink, replace a
damaged last.ckpt copy, rewrite a DeepSpeed-style latest tag naming a missing or damaged tag; plans first."""

from __future__ import annotations

import errno
import os
from datetime import datetime
from pathlib import Path

import pytest

from ckptctl import durable
from ckptctl.errors import BadInputError, LockedError, SaveError
from ckptctl.layouts.base import POINTER_OK
from ckptctl.locking import DirectoryLock
from ckptctl.ops.restore import execute, plan_from, plan_heal, plan_rollback_best
from tests import fake_layouts
from tests.fake_layouts import copy_fixture, make_dirs_run, make_files_run, truncate

NOW = datetime(2026, 12, 6, 12, 0, 0)
STAMP = "20261206_120000"


@pytest.fixture
def fake(monkeypatch):
    fake_layouts.use(monkeypatch)


def test_dangling_last_link_is_repointed_at_the_newest_valid(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last=None)
    os.symlink("s99.ckpt", run / "last.ckpt")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    assert action.target == "last.ckpt" and action.source == run / "s8.ckpt" and action.how == "pointer"
    assert "dangling" in action.reason
    assert plan.layout == "fake-files" and plan.to_json()["pointers"][0]["status"] == "dangling"
    assert os.readlink(run / "last.ckpt") == "s99.ckpt"  # planning changes nothing
    execute(plan)
    assert action.status == "done" and os.readlink(run / "last.ckpt") == "s8.ckpt"
    assert os.readlink(run / f"last.ckpt.replaced-{STAMP}") == "s99.ckpt"  # a record of what it named
    assert plan_heal(run, now=NOW).actions == []


def test_self_looping_last_link_is_repointed_and_not_kept(fake, tmp_path):
    """Lightning #19294: last.ckpt -> last.ckpt."""
    run = make_files_run(tmp_path / "run", steps=(4, 8), last=None)
    os.symlink("last.ckpt", run / "last.ckpt")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    assert "loop" in action.reason and action.keep_as is None
    execute(plan)
    assert os.readlink(run / "last.ckpt") == "s8.ckpt"
    assert not any(p.name.startswith("last.ckpt.replaced") for p in run.iterdir())


def test_stale_last_link_follows_the_newest_valid(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8, 12), last=None)
    os.symlink("s4.ckpt", run / "last.ckpt")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    assert "stale" in action.reason and action.source.name == "s12.ckpt"
    execute(plan)
    assert os.readlink(run / "last.ckpt") == "s12.ckpt"


def test_link_to_a_damaged_newest_is_repointed_at_the_previous(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last="link")
    truncate(run / "s8.ckpt")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    assert action.source.name == "s4.ckpt" and "s8.ckpt" in action.reason
    assert plan.resume_from.name == "s4.ckpt"
    assert {c.name: c.valid for c in plan.checked} == {"s8.ckpt": False, "s4.ckpt": True}
    execute(plan)
    assert os.readlink(run / "last.ckpt") == "s4.ckpt"


def test_intact_link_is_left_alone(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last="link")
    plan = plan_heal(run, now=NOW)
    assert plan.actions == [] and plan.exit_code == 0 and plan.resume_from.name == "s8.ckpt"


def test_damaged_last_copy_is_replaced_by_a_copy_and_kept(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last="copy")
    truncate(run / "last.ckpt")
    damaged = (run / "last.ckpt").read_bytes()
    plan = plan_heal(run, now=NOW, mode=durable.COPY)
    (action,) = plan.actions
    assert action.how == "file" and action.source.name == "s8.ckpt" and action.keep_as == f"last.ckpt.replaced-{STAMP}"
    execute(plan)
    assert (run / "last.ckpt").read_bytes() == (run / "s8.ckpt").read_bytes()
    assert not (run / "last.ckpt").is_symlink()
    assert (run / f"last.ckpt.replaced-{STAMP}").read_bytes() == damaged


def test_tag_naming_a_missing_unit_is_rewritten_atomically(fake, tmp_path, monkeypatch):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), latest=None)
    (run / "latest").write_text("ck-6")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    assert action.how == "tag" and action.source.name == "ck-4" and "ck-6, which does not exist" in action.reason
    writes = []
    real = durable.write_text_atomic
    monkeypatch.setattr(durable, "write_text_atomic", lambda path, text: (writes.append(text), real(path, text)))
    execute(plan)
    assert writes == ["ck-4"] and (run / "latest").read_text() == "ck-4"
    assert (run / f"latest.replaced-{STAMP}").read_text() == "ck-6"


def test_tag_naming_a_damaged_or_incomplete_unit(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 6), latest=6)
    (run / "ck-6" / "state.json").unlink()
    truncate(run / "ck-4" / "model.pt")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    assert action.source.name == "ck-2" and "incomplete" in action.reason
    execute(plan)
    assert (run / "latest").read_text() == "ck-2"


def test_stale_tag_is_reported_not_changed(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), latest=2)
    plan = plan_heal(run, now=NOW)
    assert plan.actions == [] and any("ck-4 (step 4) is newer and valid" in n for n in plan.notes)


def test_nothing_valid_is_unrestorable(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2,), latest=None)
    (run / "latest").write_text("ck-9")
    truncate(run / "ck-2" / "model.pt")
    plan = plan_heal(run, now=NOW)
    assert plan.actions == [] and plan.exit_code == 1
    assert "no complete, valid checkpoint is left" in plan.unrestorable[0]


def test_changed_since_the_plan_is_skipped(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), latest=None)
    (run / "latest").write_text("ck-6")
    plan = plan_heal(run, now=NOW)
    (run / "latest").write_text("ck-2 ")  # a training wrote it meanwhile
    execute(plan)
    assert plan.actions[0].status == "skipped" and (run / "latest").read_text() == "ck-2 "


def test_execute_takes_the_directory_lock(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), latest=None)
    (run / "latest").write_text("ck-6")
    plan = plan_heal(run, now=NOW)
    with DirectoryLock(run), pytest.raises(LockedError):
        execute(plan)
    assert (run / "latest").read_text() == "ck-6"


def test_explicit_forms_are_refused_on_a_foreign_layout(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2,))
    with pytest.raises(BadInputError, match="fake-dirs"):
        plan_from(run, run / "ck-2", "latest")
    with pytest.raises(BadInputError, match="--rollback-best"):
        plan_rollback_best(run)


def test_write_text_atomic_leaves_no_temp_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "latest"
    target.write_text("old")

    def boom(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(durable, "_fsync", boom)
    with pytest.raises(OSError):
        durable.write_text_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["latest"]
    monkeypatch.undo()
    durable.write_text_atomic(target, "global_step10")
    assert target.read_text() == "global_step10" and [p.name for p in tmp_path.iterdir()] == ["latest"]


# ---------------------------------------------------------------------------- real fixtures
# The one path that heals a layout's pointers (the layouts only say what a pointer is).


def _layout_pointer(run, name):
    """The pointer ``name`` as the run's layout reads it after the heal."""
    from ckptctl.layouts import registry

    layout = registry.detect(run)
    units = layout.units(run)
    return next(p for p in layout.pointers(run, units) if p.name == name)


def test_lightning_dangling_last_ckpt(tmp_path):
    run = copy_fixture("lightning_link", tmp_path)
    os.unlink(run / "last.ckpt")
    os.symlink("epoch=7-step=32.ckpt", run / "last.ckpt")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    execute(plan)
    assert action.status == "done" and os.readlink(run / "last.ckpt") == "epoch=1-step=8-val_loss=0.57.ckpt"  # relative
    assert _layout_pointer(run, "last.ckpt").status == POINTER_OK
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []  # no temp link left behind


def test_lightning_self_loop_last_ckpt(tmp_path):
    run = copy_fixture("lightning_link", tmp_path)
    os.unlink(run / "last.ckpt")
    os.symlink("last.ckpt", run / "last.ckpt")
    execute(plan_heal(run, now=NOW))
    assert os.readlink(run / "last.ckpt") == "epoch=1-step=8-val_loss=0.57.ckpt"


def test_lightning_intact_link_is_left_alone(tmp_path):
    run = copy_fixture("lightning_link", tmp_path)
    assert plan_heal(run, now=NOW).actions == []


def test_lightning_link_to_a_damaged_checkpoint(tmp_path):
    run = copy_fixture("lightning_link", tmp_path)
    truncate(run / "epoch=1-step=8-val_loss=0.57.ckpt")
    plan = plan_heal(run, now=NOW)
    execute(plan)
    assert os.readlink(run / "last.ckpt") == "epoch=0-step=4-val_loss=0.56.ckpt"


def test_deepspeed_latest_naming_a_missing_tag(tmp_path):
    run = copy_fixture("deepspeed", tmp_path)
    (run / "latest").write_text("global_step15")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    execute(plan)
    assert action.status == "done" and (run / "latest").read_bytes() == b"global_step10"  # as DeepSpeed writes it
    assert (run / f"latest.replaced-{STAMP}").read_text() == "global_step15"
    assert _layout_pointer(run, "latest").status == POINTER_OK
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_deepspeed_missing_latest_is_written(tmp_path):
    run = copy_fixture("deepspeed", tmp_path)
    (run / "latest").unlink()
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    assert action.how == "tag" and action.keep_as is None
    execute(plan)
    assert (run / "latest").read_text() == "global_step10"


def test_deepspeed_dangling_latest_symlink_becomes_a_tag_file(tmp_path):
    """DeepSpeed reads ``latest`` as a file: a symlink to the tag directory would not load."""
    run = copy_fixture("deepspeed", tmp_path)
    (run / "latest").unlink()
    os.symlink("nowhere", run / "latest")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    assert action.how == "tag" and "dangling symlink" in action.reason
    execute(plan)
    assert not (run / "latest").is_symlink() and (run / "latest").read_text() == "global_step10"
    assert os.readlink(run / f"latest.replaced-{STAMP}") == "nowhere"  # the link kept as it was
    assert _layout_pointer(run, "latest").status == POINTER_OK


def test_deepspeed_a_failed_rewrite_leaves_the_old_latest_whole(tmp_path, monkeypatch):
    run = copy_fixture("deepspeed", tmp_path)
    (run / "latest").write_text("global_step15")
    plan = plan_heal(run, now=NOW, discard=True)

    def disk_error(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(durable, "_fsync", disk_error)
    with pytest.raises(SaveError, match="cannot write"):
        execute(plan)
    assert (run / "latest").read_bytes() == b"global_step15"
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_deepspeed_latest_rewrite_fsyncs_the_file_then_the_directory(tmp_path, monkeypatch):
    run = copy_fixture("deepspeed", tmp_path)
    (run / "latest").write_text("global_step15")
    plan = plan_heal(run, now=NOW, discard=True)
    synced = []
    real = durable._fsync
    monkeypatch.setattr(durable, "_fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    execute(plan)
    assert (run / "latest").read_text() == "global_step10"
    assert [Path(p).name.endswith(".tmp") for p in synced] == [True, False] and Path(synced[1]) == run.resolve()


def test_deepspeed_latest_naming_a_damaged_tag(tmp_path):
    run = copy_fixture("deepspeed", tmp_path)
    truncate(run / "global_step10" / "mp_rank_00_model_states.pt")
    execute(plan_heal(run, now=NOW))
    assert (run / "latest").read_text() == "global_step5"


def test_deepspeed_intact_latest_is_left_alone(tmp_path):
    run = copy_fixture("deepspeed", tmp_path)
    plan = plan_heal(run, now=NOW)
    assert plan.actions == [] and plan.exit_code == 0 and plan.resume_from.name == "global_step10"


def test_lightning_stale_last_ckpt_follows_the_newest(tmp_path):
    run = copy_fixture("lightning_link", tmp_path)
    os.unlink(run / "last.ckpt")
    os.symlink("epoch=0-step=4-val_loss=0.56.ckpt", run / "last.ckpt")
    plan = plan_heal(run, now=NOW)
    (action,) = plan.actions
    assert "stale" in action.reason
    execute(plan)
    assert os.readlink(run / "last.ckpt") == "epoch=1-step=8-val_loss=0.57.ckpt"


def test_lightning_damaged_last_ckpt_copy_is_replaced_and_kept(tmp_path):
    run = copy_fixture("lightning", tmp_path)
    truncate(run / "last.ckpt")
    plan = plan_heal(run, now=NOW, mode=durable.COPY)
    (action,) = plan.actions
    assert action.target == "last.ckpt" and action.keep_as == f"last.ckpt.replaced-{STAMP}"
    assert not action.source.name.startswith("last")
    execute(plan)
    assert (run / "last.ckpt").read_bytes() == action.source.read_bytes()
    assert (run / f"last.ckpt.replaced-{STAMP}").exists()
