"""resume-cmd on other frameworks' layouts: the newest complete, valid unit, the framework's own flags,
why newer units were passed over, --set compared with the unit's recorded hyperparameters."""

from __future__ import annotations

import os

import pytest

from ckptctl.errors import BadInputError, NoCheckpointError, UnreadableCheckpoint
from ckptctl.ops.foreign import choose_resume, open_run
from ckptctl.ops.resume import build_resume_command
from tests import fake_layouts
from tests.fake_layouts import copy_fixture, make_dirs_run, make_files_run, save, truncate


@pytest.fixture
def fake(monkeypatch):
    fake_layouts.use(monkeypatch)


def test_newest_complete_unit_and_the_layouts_flags(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 10))
    result = build_resume_command(str(run))
    assert result.layout == "fake-dirs"
    assert result.resume_args == ["--load_dir", str(run), "--tag", "ck-10"]
    assert result.command == f"--load_dir {run} --tag ck-10"
    assert result.step == 10 and result.checkpoint == run / "ck-10"
    assert "ck-10 (step 10) is the newest complete, valid checkpoint" in result.resolution.reason
    doc = result.to_json()
    assert doc["layout"] == "fake-dirs" and doc["resume_args"] == result.resume_args and doc["argv"] == result.argv
    assert doc["checkpoint"] == str(run / "ck-10")


def test_an_incomplete_newest_unit_is_never_chosen(fake, tmp_path):
    """transformers #35525 / torchtitan #315: a save that died leaves the newest directory half-written."""
    run = make_dirs_run(tmp_path / "run", steps=(2, 4))
    save(run / "ck-6" / "model.pt", 6)  # no state.json
    result = build_resume_command(str(run))
    assert result.resume_args[-1] == "ck-4"
    assert result.resolution.skipped[0][0].name == "ck-6"
    assert "ck-6 (step 6) is newer but incomplete (missing state.json)" in result.resolution.reason
    assert result.to_json()["skipped"] == [{"path": str(run / "ck-6"), "reason": "incomplete (missing state.json)"}]


def test_a_damaged_newest_unit_is_skipped_with_its_verdict(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4))
    truncate(run / "ck-4" / "model.pt")
    result = build_resume_command(str(run))
    assert result.resume_args[-1] == "ck-2"
    (skipped, reason), = result.resolution.skipped
    assert skipped.name == "ck-4" and reason  # the integrity verdict, in one line
    assert "ck-4 (step 4) is newer but" in result.resolution.reason


def test_accelerate_style_counter_order_by_step(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(9, 10), best=None, latest=None)
    assert build_resume_command(str(run)).resume_args[-1] == "ck-10"


def test_nothing_valid_is_exit_1_with_what_was_tried(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2,), latest=None)
    (run / "ck-2" / "state.json").unlink()
    with pytest.raises(NoCheckpointError) as info:
        build_resume_command(str(run))
    assert "no complete, valid checkpoint" in str(info.value) and "ck-2 incomplete" in str(info.value)


def test_script_and_set_are_compared_with_hparams(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2,), hparams={"lr": 0.1, "batch_size": 8})
    result = build_resume_command(str(run), script="train.py", overrides=["lr=0.05"])
    assert result.argv == ["python", "train.py", "--lr=0.05", "--load_dir", str(run), "--tag", "ck-2"]
    (change,) = result.changes
    assert change.checkpoint_value == 0.1 and change.new_value == 0.05 and change.risk == "learning rate"
    with pytest.raises(BadInputError):
        build_resume_command(str(run), overrides=["nope=1"])


def test_file_layout_uses_ckpt_path_and_a_named_unit(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last="link")
    assert build_resume_command(str(run)).resume_args == ["--ckpt_path", str(run / "s8.ckpt")]
    named = build_resume_command(str(run / "s4.ckpt"))
    assert named.resume_args == ["--ckpt_path", str(run / "s4.ckpt")] and named.layout == "fake-files"
    truncate(run / "s4.ckpt")
    with pytest.raises(UnreadableCheckpoint):
        build_resume_command(str(run / "s4.ckpt"))


def test_latest_and_best_in_a_foreign_directory(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 6), best=4)
    assert build_resume_command("best", directory=str(run)).resume_args[-1] == "ck-4"
    assert build_resume_command("latest", directory=str(run)).resume_args[-1] == "ck-6"


def test_native_directories_keep_todays_command(fake, tmp_path):
    from tests.factories import write_checkpoint

    write_checkpoint(tmp_path / "rolling_step_000100.pt", step=100)
    result = build_resume_command(str(tmp_path))
    assert result.layout == "ckptctl" and result.argv[-1] == f"--resume={tmp_path / 'rolling_step_000100.pt'}"
    assert result.resume_args == [result.argv[-1]]


def test_choose_resume_checks_only_until_one_is_valid(fake, tmp_path):
    run = open_run(make_dirs_run(tmp_path / "run", steps=(2, 4, 6, 8)))
    seen = []
    choice = choose_resume(run, lambda unit: seen.append(unit.name))
    assert choice.unit.name == "ck-8" and seen == ["ck-8"]


# ---------------------------------------------------------------------------- real fixtures

def test_hf_trainer_resume_from_checkpoint(tmp_path):
    run = copy_fixture("hf_trainer", tmp_path)
    result = build_resume_command(str(run))
    assert result.resume_args == ["--resume_from_checkpoint", str(run / "checkpoint-6")]
    assert result.layout == "hf-trainer"


def test_hf_trainer_incomplete_newest_is_never_chosen(tmp_path):
    run = copy_fixture("hf_trainer", tmp_path)
    (run / "checkpoint-6" / "trainer_state.json").unlink()
    result = build_resume_command(str(run))
    assert result.resume_args == ["--resume_from_checkpoint", str(run / "checkpoint-4")]
    assert "checkpoint-6 (step" in result.resolution.reason and "newer but" in result.resolution.reason


def test_hf_trainer_truncated_weights_skip_to_the_previous(tmp_path):
    run = copy_fixture("hf_trainer", tmp_path)
    truncate(run / "checkpoint-6" / "model.safetensors")
    result = build_resume_command(str(run))
    assert result.resume_args[-1] == str(run / "checkpoint-4")


def test_lightning_ckpt_path(tmp_path):
    run = copy_fixture("lightning_link", tmp_path)
    result = build_resume_command(str(run))
    assert result.resume_args[0] == "--ckpt_path"
    assert os.path.realpath(result.resume_args[1]) == os.path.realpath(run / "epoch=1-step=8-val_loss=0.57.ckpt")


def test_torchtitan_load_step(tmp_path):
    run = copy_fixture("torchtitan", tmp_path, "checkpoint")
    result = build_resume_command(str(run))
    assert result.resume_args == ["--checkpoint.load_step", "30"]


def test_torchtitan_damaged_newest_step(tmp_path):
    run = copy_fixture("torchtitan", tmp_path, "checkpoint")
    (next(run.rglob("step-30")) / ".metadata").unlink()
    assert build_resume_command(str(run)).resume_args == ["--checkpoint.load_step", "20"]


def test_deepspeed_load_checkpoint_and_tag(tmp_path):
    run = copy_fixture("deepspeed", tmp_path)
    result = build_resume_command(str(run))
    assert "--load_checkpoint" in result.resume_args and "global_step10" in result.resume_args
    assert "--ckpt_id" in result.resume_args


def test_accelerate_newest_by_step(tmp_path):
    run = copy_fixture("accelerate", tmp_path, "checkpoints")
    result = build_resume_command(str(run))
    assert result.checkpoint.name == "checkpoint_2" and result.step == 15


def test_accelerate_restarted_counter_resumes_from_the_newest_step(tmp_path):
    run = copy_fixture("accelerate", tmp_path, "checkpoints")
    unit_dir = next(run.rglob("checkpoint_0"))
    os.rename(unit_dir, unit_dir.with_name("checkpoint_7"))  # step 5 under the highest counter
    result = build_resume_command(str(run))
    assert result.checkpoint.name == "checkpoint_2" and result.step == 15


def test_a_named_file_of_a_layout_without_a_resume_flag_keeps_todays_command(fake, tmp_path, monkeypatch):
    """Loose files have no framework flag: a file named directly gets today's command from its saved args."""
    monkeypatch.setattr(fake_layouts.FileLayout, "resume_flag", None)
    run = make_files_run(tmp_path / "run", steps=(4, 8), last=None)
    result = build_resume_command(str(run / "s4.ckpt"))
    assert result.layout == "ckptctl" and result.argv[-1] == f"--resume={run / 's4.ckpt'}"
