"""AccelerateLayout on copies of the real accelerate 1.16 fixtures (tests/fixtures/frameworks/accelerate*)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ckptctl.layouts import registry
from ckptctl.layouts.accelerate import AccelerateLayout
from ckptctl.layouts.base import CONTENT_OPTIMIZER, CONTENT_OTHER, CONTENT_WEIGHTS
from tests.factories import write_hostile_checkpoint

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "frameworks"
AUTO = FIXTURES / "accelerate"  # project_dir/checkpoints/checkpoint_0..2 (automatic naming)
NAMED = FIXTURES / "accelerate_named"  # step_5, step_10, step_15


@pytest.fixture
def project(tmp_path: Path) -> Path:
    dst = tmp_path / "project"
    shutil.copytree(AUTO, dst, symlinks=True)
    return dst


@pytest.fixture
def named(tmp_path: Path) -> Path:
    dst = tmp_path / "named"
    shutil.copytree(NAMED, dst, symlinks=True)
    return dst


def _layout() -> AccelerateLayout:
    return AccelerateLayout()


def _units(directory: Path):
    return {u.name: u for u in _layout().units(directory)}


def _names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _save(path: Path, obj) -> None:
    import torch

    torch.save(obj, path)


# --- recognition ----------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", [AUTO, AUTO / "checkpoints", NAMED], ids=["project", "checkpoints", "named"])
def test_recognised_and_detected(directory):
    assert _layout().recognise(directory, _names(directory))
    assert registry.detect(directory).name == "accelerate"


@pytest.mark.parametrize(
    "other", ["deepspeed", "hf_trainer", "hf_trainer_bin", "hf_trainer_sharded", "lightning", "torchtitan", "loose"]
)
def test_other_framework_layouts_are_not_accelerate(other):
    directory = FIXTURES / other
    assert not _layout().recognise(directory, _names(directory))


def test_a_single_checkpoint_directory_is_not_a_run():
    directory = NAMED / "step_5"
    assert not _layout().recognise(directory, _names(directory))


def test_hf_trainer_checkpoints_are_not_claimed_even_with_accelerate_names(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "hf_trainer", run)
    shutil.copy(NAMED / "step_5" / "optimizer.bin", run / "checkpoint-2" / "optimizer.bin")
    assert not _layout().recognise(run, _names(run))


# --- units and steps ------------------------------------------------------------------------------


def test_automatic_naming_units_use_the_scheduler_proxy_and_keep_the_counter(project):
    units = _layout().units(project)
    assert [u.name for u in units] == [f"checkpoints/checkpoint_{i}" for i in range(3)]
    assert [u.step for u in units] == [5, 10, 15]  # scheduler.bin last_epoch
    assert [u.metrics["checkpoint_index"] for u in units] == [0.0, 1.0, 2.0]  # the counter, not the step
    assert all(project / u.name == u.path and u.is_directory for u in units)
    assert all(u.complete and not u.missing for u in units)
    assert any("proxy" in n for n in units[0].notes)


def test_pointing_at_the_checkpoints_folder_gives_the_same_units(project):
    units = _layout().units(project / "checkpoints")
    assert [(u.name, u.step) for u in units] == [("checkpoint_0", 5), ("checkpoint_1", 10), ("checkpoint_2", 15)]


def test_user_state_fields_are_shown(project):
    two = _units(project)["checkpoints/checkpoint_2"]
    assert two.metrics["samples_seen"] == 60.0
    assert two.metrics["best"] == pytest.approx(0.5903337)
    assert two.metrics["scheduler_last_epoch"] == 15.0
    assert two.best is False and two.monitor is None  # accelerate records no best checkpoint


def test_counter_restarted_by_a_resumed_run_does_not_decide_the_order(project):
    """accelerate #3306: a resumed run starts counting at 0 again, so checkpoint_0 can be the newest."""
    ckpts = project / "checkpoints"
    os.rename(ckpts / "checkpoint_0", ckpts / "old_0")
    os.rename(ckpts / "checkpoint_2", ckpts / "checkpoint_0")  # the newest state (step 15) under counter 0
    os.rename(ckpts / "old_0", ckpts / "checkpoint_2")  # the oldest state (step 5) under counter 2
    layout = _layout()
    units = layout.units(project)
    assert [(u.name, u.step) for u in units] == [
        ("checkpoints/checkpoint_2", 5), ("checkpoints/checkpoint_1", 10), ("checkpoints/checkpoint_0", 15),
    ]  # fmt: skip
    layout.protect(units, [])
    assert [u.name for u in units if u.protected] == ["checkpoints/checkpoint_0"]
    assert layout.resume_args(units[-1], project) == ["--resume_from_checkpoint", str(ckpts / "checkpoint_0")]


def test_named_step_directories(named):
    units = _layout().units(named)
    assert [(u.name, u.step) for u in units] == [("step_5", 5), ("step_10", 10), ("step_15", 15)]  # numeric order
    assert all("checkpoint_index" not in u.metrics for u in units)


def test_a_step_name_wins_over_the_scheduler_proxy_and_says_so(named):
    os.rename(named / "step_15", named / "step_60")  # e.g. 4 processes: the scheduler ran at 15 per 60 batches
    unit = _units(named)["step_60"]
    assert unit.step == 60
    assert any("last_epoch 15 differs" in n for n in unit.notes)


def test_epoch_directories(named):
    os.rename(named / "step_5", named / "epoch_0")
    unit = _units(named)["epoch_0"]
    assert unit.epoch == 0.0 and unit.step == 5


def test_user_state_step_wins(named):
    _save(named / "step_10" / "custom_checkpoint_0.pkl", {"step": 42, "epoch": 3, "run": "baseline", "lr": 0.5})
    unit = _units(named)["step_10"]
    assert (unit.step, unit.epoch) == (42, 3.0)
    assert unit.metrics["lr"] == 0.5
    assert unit.hparams == {"custom_checkpoint_0.pkl": {"run": "baseline"}}


def test_second_custom_object_is_prefixed(named):
    _save(named / "step_10" / "custom_checkpoint_1.pkl", {"seen": 7})
    assert _units(named)["step_10"].metrics["custom_1.seen"] == 7.0


def test_no_scheduler_and_automatic_names_have_no_step_but_still_an_order(project):
    for ckpt in (project / "checkpoints").iterdir():
        (ckpt / "scheduler.bin").unlink()
    layout = _layout()
    units = layout.units(project)
    assert [u.step for u in units] == [None, None, None]
    assert [u.name for u in units] == [f"checkpoints/checkpoint_{i}" for i in range(3)]
    layout.protect(units, [])
    assert [u.name for u in units if u.protected] == ["checkpoints/checkpoint_2"]


def test_unit_files_and_content(project):
    unit = _units(project)["checkpoints/checkpoint_0"]
    contents = {f.path.name: f.content for f in unit.files}
    assert contents == {
        "model.safetensors": CONTENT_WEIGHTS,
        "optimizer.bin": CONTENT_OPTIMIZER,
        "scheduler.bin": CONTENT_OTHER,
        "random_states_0.pkl": CONTENT_OTHER,
        "custom_checkpoint_0.pkl": CONTENT_OTHER,
    }
    assert unit.size_bytes == sum(p.stat().st_size for p in unit.path.iterdir())


# --- completeness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl", "model.safetensors"])
def test_a_removed_required_file_makes_the_unit_incomplete(named, name):
    (named / "step_10" / name).unlink()
    unit = _units(named)["step_10"]
    assert not unit.complete and unit.missing == [name]
    assert _units(named)["step_5"].complete


def test_every_rank_up_to_the_highest_needs_its_random_states(named):
    shutil.copy(named / "step_10" / "random_states_0.pkl", named / "step_10" / "random_states_2.pkl")
    unit = _units(named)["step_10"]
    assert not unit.complete and unit.missing == ["random_states_1.pkl"]


def test_numbered_files_need_every_lower_number(named):
    shutil.copy(named / "step_10" / "custom_checkpoint_0.pkl", named / "step_10" / "custom_checkpoint_2.pkl")
    os.rename(named / "step_10" / "optimizer.bin", named / "step_10" / "optimizer_1.bin")
    unit = _units(named)["step_10"]
    assert not unit.complete
    assert unit.missing == ["optimizer.bin", "custom_checkpoint_1.pkl"]


def test_truncated_weights_are_found_by_the_header_read(named):
    path = named / "step_10" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    unit = _units(named)["step_10"]
    assert not unit.complete
    assert unit.missing[0].startswith("model.safetensors (unreadable:")


def test_empty_state_files_are_incomplete(named):
    (named / "step_10" / "random_states_0.pkl").write_bytes(b"")
    unit = _units(named)["step_10"]
    assert not unit.complete and unit.missing == ["random_states_0.pkl (empty)"]


def test_pytorch_model_bin_is_accepted_as_weights(named):
    os.rename(named / "step_10" / "model.safetensors", named / "step_10" / "pytorch_model.bin")
    assert _units(named)["step_10"].complete


def test_sharded_weights_need_every_shard_of_the_index(named):
    ckpt = named / "step_10"
    os.rename(ckpt / "model.safetensors", ckpt / "model-00001-of-00002.safetensors")
    shutil.copy(ckpt / "model-00001-of-00002.safetensors", ckpt / "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    assert _units(named)["step_10"].complete
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    unit = _units(named)["step_10"]
    assert not unit.complete and unit.missing == ["model-00002-of-00002.safetensors"]


@pytest.mark.parametrize("text", ["not json", '{"weight_map": 3}', '{"weight_map": {"a": "../../etc/passwd"}}'])
def test_a_bad_index_is_incomplete_not_a_crash(named, text):
    ckpt = named / "step_10"
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(text)
    unit = _units(named)["step_10"]
    assert not unit.complete and unit.missing[0].startswith("model.safetensors.index.json (")


def test_accelerate_with_deepspeed_engine_state(named, tmp_path):
    """accelerate + DeepSpeed saves the engine's tag ``pytorch_model/`` instead of model.safetensors/optimizer.bin."""
    ckpt = named / "step_10"
    (ckpt / "model.safetensors").unlink()
    (ckpt / "optimizer.bin").unlink()
    shutil.copytree(FIXTURES / "deepspeed" / "global_step10", ckpt / "pytorch_model")
    (ckpt / "latest").write_text("pytorch_model")  # the engine writes its own latest inside the checkpoint
    assert _units(named)["step_10"].complete
    assert registry.detect(named).name == "accelerate"  # the run is accelerate's, not a DeepSpeed save_dir
    (ckpt / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    unit = _units(named)["step_10"]
    assert not unit.complete and unit.missing == ["pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt"]


def test_random_states_and_optimizer_are_not_read(named, monkeypatch):
    from ckptctl.layouts import accelerate as module

    opened = []
    real = module.read_checkpoint
    monkeypatch.setattr(module, "read_checkpoint", lambda p, **k: opened.append(Path(p).name) or real(p, **k))
    _layout().units(named)
    assert set(opened) == {"scheduler.bin", "custom_checkpoint_0.pkl"}


# --- hostile files --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scheduler.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_hostile_files_are_never_executed(named, tmp_path, name):
    marker = tmp_path / "MARKER"
    write_hostile_checkpoint(named / "step_10" / name, marker)
    layout = _layout()
    assert layout.recognise(named, _names(named))
    units = layout.units(named)
    layout.protect(units, layout.pointers(named, units))
    assert not marker.exists()
    unit = {u.name: u for u in units}["step_10"]
    assert unit.step == 10  # from the name
    if name in ("scheduler.bin", "custom_checkpoint_0.pkl"):  # the ones read for metadata say why
        assert any(n.startswith(f"{name}: references") for n in unit.notes)


def test_resume_args(named):
    unit = _units(named)["step_15"]
    assert _layout().resume_args(unit, named) == ["--resume_from_checkpoint", str(named / "step_15")]


def test_fsdp_state_directories_count_as_weights_and_optimizer(named):
    ckpt = named / "step_10"
    (ckpt / "model.safetensors").unlink()
    (ckpt / "optimizer.bin").unlink()
    (ckpt / "pytorch_model_fsdp_0").mkdir()
    (ckpt / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"x" * 10)
    unit = _units(named)["step_10"]
    assert not unit.complete and unit.missing == ["optimizer.bin"]
    (ckpt / "optimizer_0").mkdir()
    (ckpt / "optimizer_0" / "__0_0.distcp").write_bytes(b"x" * 10)
    unit = _units(named)["step_10"]
    assert unit.complete
    contents = sorted((f.path.parent.name, f.content) for f in unit.files if f.path.suffix == ".distcp")
    assert contents == [("optimizer_0", CONTENT_OPTIMIZER), ("pytorch_model_fsdp_0", CONTENT_WEIGHTS)]


def test_step_directories_next_to_checkpoints_win(project):
    shutil.copytree(NAMED / "step_5", project / "step_5")
    assert list(_units(project)) == ["step_5"]


def test_a_huge_rank_number_gives_a_short_missing_list(named):
    shutil.copy(named / "step_10" / "random_states_0.pkl", named / "step_10" / "random_states_999999.pkl")
    unit = _units(named)["step_10"]
    assert not unit.complete
    assert unit.missing[0] == "random_states_1.pkl"
    assert len(unit.missing) <= 33 and unit.missing[-1] == f"... and {999998 - 32} more"


def test_diffusers_style_checkpoint_dash_step_with_hook_saved_weights(named, tmp_path):
    """diffusers' scripts: ``save_state(f"{output_dir}/checkpoint-{global_step}")`` and a save hook that
    writes ``unet/diffusion_pytorch_model.safetensors`` in place of ``model.safetensors``."""
    run = tmp_path / "diffusers"
    run.mkdir()
    for step in (500, 1000):
        ckpt = run / f"checkpoint-{step}"
        shutil.copytree(named / "step_10", ckpt)
        (ckpt / "unet").mkdir()
        os.rename(ckpt / "model.safetensors", ckpt / "unet" / "diffusion_pytorch_model.safetensors")
    layout = _layout()
    assert layout.recognise(run, _names(run))
    units = layout.units(run)
    assert [(u.name, u.step, u.complete) for u in units] == [("checkpoint-500", 500, True), ("checkpoint-1000", 1000, True)]
    assert any("unet/diffusion_pytorch_model.safetensors" in n for n in units[0].notes)
    (run / "checkpoint-1000" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert _units(run)["checkpoint-1000"].missing == ["model.safetensors"]
