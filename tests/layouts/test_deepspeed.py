"""DeepSpeedLayout on copies of the real DeepSpeed 0.19.8 fixture (tests/fixtures/frameworks/deepspeed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ckptctl.layouts import deepspeed as ds
from ckptctl.layouts import registry
from ckptctl.layouts.base import (
    CONTENT_OPTIMIZER,
    CONTENT_WEIGHTS,
    POINTER_DAMAGED,
    POINTER_DANGLING,
    POINTER_OK,
    POINTER_STALE,
)
from ckptctl.layouts.deepspeed import DeepSpeedLayout
from tests.factories import write_hostile_checkpoint

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "frameworks"
SOURCE = FIXTURES / "deepspeed"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
MODEL = "mp_rank_00_model_states.pt"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(SOURCE, dst, symlinks=True)
    return dst


def _layout() -> DeepSpeedLayout:
    return DeepSpeedLayout()


def _units(directory: Path):
    return {u.name: u for u in _layout().units(directory)}


def _pointer(directory: Path):
    layout = _layout()
    (pointer,) = layout.pointers(directory, layout.units(directory))
    return pointer


def _names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _rewrite_model_states(path: Path, **changes) -> None:
    """Re-save a tag's model states with some fields changed (torch, as DeepSpeed itself saves them)."""
    import torch

    state = torch.load(path, weights_only=True)
    state.update(changes)
    torch.save(state, path)


# --- recognition ----------------------------------------------------------------------------------


def test_recognises_the_fixture_and_the_registry_finds_it():
    assert _layout().recognise(SOURCE, _names(SOURCE))
    assert registry.detect(SOURCE).name == "deepspeed"


@pytest.mark.parametrize("other", ["accelerate", "accelerate_named", "hf_trainer", "lightning", "torchtitan", "loose"])
def test_other_framework_layouts_are_not_deepspeed(other):
    directory = FIXTURES / other
    assert not _layout().recognise(directory, _names(directory))


def test_tag_directories_without_latest_are_recognised(run):
    (run / "latest").unlink()
    assert _layout().recognise(run, _names(run))


def test_a_latest_file_alone_is_not_a_run(tmp_path):
    (tmp_path / "latest").write_text("global_step1")
    assert not _layout().recognise(tmp_path, _names(tmp_path))


# --- units ----------------------------------------------------------------------------------------


def test_units_steps_metrics_and_hparams(run):
    units = _layout().units(run)
    assert [u.name for u in units] == ["global_step5", "global_step10"]  # oldest first, by step
    five, ten = units
    assert (five.step, ten.step) == (5, 10)
    assert ten.epoch == 0.0
    assert ten.metrics["my_step"] == 10.0  # client state merged into the model states by DeepSpeed
    assert ten.metrics["global_samples"] == 40.0
    assert ten.hparams["ds_config"]["zero_optimization"] == {"stage": 2}
    assert ten.hparams["ds_version"] == "0.19.8"
    assert ten.hparams["dp_world_size"] == 1
    assert all(u.complete and not u.missing for u in units)
    assert all(u.is_directory and u.path == run / u.name for u in units)


def test_unit_files_and_their_content(run):
    ten = _units(run)["global_step10"]
    contents = {f.path.name: f.content for f in ten.files}
    assert contents == {MODEL: CONTENT_WEIGHTS, OPTIM: CONTENT_OPTIMIZER}
    assert ten.size_bytes == (run / "global_step10" / MODEL).stat().st_size + (run / "global_step10" / OPTIM).stat().st_size


def test_helper_scripts_are_not_units(run):
    names = {u.name for u in _layout().units(run)}
    assert "zero_to_fp32.py" not in names and "zero_to_torch.py" not in names and "latest" not in names


def test_step_falls_back_to_the_tag_name_when_the_model_states_are_unreadable(run):
    path = run / "global_step10" / MODEL
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    ten = _units(run)["global_step10"]
    assert ten.step == 10
    assert not ten.complete
    assert ten.missing and ten.missing[0].startswith(f"{MODEL} (unreadable")
    assert any("from the tag name" in n for n in ten.notes)


def test_a_custom_tag_uses_global_steps_from_the_file(run):
    os.rename(run / "global_step5", run / "before-eval")
    units = _units(run)
    assert units["before-eval"].step == 5


# --- completeness ---------------------------------------------------------------------------------


def test_removed_optimizer_file_makes_the_unit_incomplete(run):
    (run / "global_step10" / OPTIM).unlink()
    ten = _units(run)["global_step10"]
    assert not ten.complete
    assert ten.missing == [OPTIM]


def test_empty_optimizer_file_is_incomplete(run):
    (run / "global_step10" / OPTIM).write_bytes(b"")
    ten = _units(run)["global_step10"]
    assert not ten.complete and ten.missing == [f"{OPTIM} (empty)"]


def test_every_data_parallel_rank_recorded_needs_its_optimizer_file(run):
    _rewrite_model_states(run / "global_step10" / MODEL, dp_world_size=3)
    ten = _units(run)["global_step10"]
    assert not ten.complete
    assert ten.missing == ["zero_pp_rank_1_mp_rank_00_optim_states.pt", "zero_pp_rank_2_mp_rank_00_optim_states.pt"]
    for rank in (1, 2):
        shutil.copy(run / "global_step10" / OPTIM, run / "global_step10" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    assert _units(run)["global_step10"].complete


def test_every_model_parallel_rank_needs_its_model_states(run):
    _rewrite_model_states(run / "global_step10" / MODEL, mp_world_size=2)
    ten = _units(run)["global_step10"]
    assert not ten.complete
    assert set(ten.missing) == {"mp_rank_01_model_states.pt", "zero_pp_rank_0_mp_rank_01_optim_states.pt"}


def test_stage_0_keeps_the_optimizer_in_the_model_states(run):
    _rewrite_model_states(run / "global_step10" / MODEL, optimizer={"state": {}, "param_groups": []}, param_shapes=None)
    (run / "global_step10" / OPTIM).unlink()
    assert _units(run)["global_step10"].complete


def test_the_optimizer_file_is_never_read(run, monkeypatch):
    """units() works whether or not the reader knows DeepSpeed's ZeRO classes: only stat touches it."""
    from ckptctl.layouts import deepspeed as module

    opened = []
    real = module.read_checkpoint
    monkeypatch.setattr(module, "read_checkpoint", lambda p, **k: opened.append(Path(p).name) or real(p, **k))
    assert all(u.complete for u in _layout().units(run))
    assert opened and OPTIM not in opened


def test_a_tag_directory_without_model_states_is_not_a_unit(run):
    (run / "global_step10" / MODEL).unlink()
    assert list(_units(run)) == ["global_step5"]


# --- the latest pointer ---------------------------------------------------------------------------


def test_latest_ok(run):
    pointer = _pointer(run)
    assert (pointer.name, pointer.target, pointer.status) == ("latest", "global_step10", POINTER_OK)


def test_latest_naming_a_missing_tag_is_dangling(run):
    shutil.rmtree(run / "global_step10")
    pointer = _pointer(run)
    assert (pointer.target, pointer.status) == ("global_step10", POINTER_DANGLING)


def test_latest_naming_an_incomplete_tag_is_damaged(run):
    (run / "global_step10" / OPTIM).unlink()
    pointer = _pointer(run)
    assert (pointer.target, pointer.status) == ("global_step10", POINTER_DAMAGED)
    assert OPTIM in pointer.detail


def test_latest_naming_a_directory_without_model_states_is_damaged(run):
    (run / "global_step10" / MODEL).unlink()
    pointer = _pointer(run)
    assert (pointer.target, pointer.status) == ("global_step10", POINTER_DAMAGED)


def test_latest_behind_a_newer_complete_tag_is_stale(run):
    (run / "latest").write_text("global_step5")
    pointer = _pointer(run)
    assert (pointer.target, pointer.status) == ("global_step5", POINTER_STALE)
    assert "global_step10" in pointer.detail


def test_latest_with_a_trailing_newline_is_ok(run):
    (run / "latest").write_text("global_step10\n")
    assert _pointer(run).status == POINTER_OK


def test_missing_latest_is_reported_when_there_are_tags(run):
    (run / "latest").unlink()
    pointer = _pointer(run)
    assert (pointer.target, pointer.status) == (None, POINTER_DAMAGED)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   \n",
        b"\x00\xff\xfe binary \x80",
        b"x" * (ds.MAX_LATEST_BYTES + 1),
        b"../../etc",
        b"global_step10/../..",
        b"global\x07step",
    ],
    ids=["empty", "blank", "binary", "huge", "dotdot", "slash", "control"],
)
def test_garbage_latest_is_damaged_and_names_nothing(run, content):
    (run / "latest").write_bytes(content)
    pointer = _pointer(run)
    assert (pointer.target, pointer.status) == (None, POINTER_DAMAGED)
    assert pointer.detail


def test_huge_latest_is_read_bounded(run, monkeypatch):
    (run / "latest").write_bytes(b"g" * (8 * 1024 * 1024))  # reading it whole would be 8 MiB
    reads = []
    real = ds.open_regular

    def spy(path, **kwargs):
        fh = real(path, **kwargs)
        original = fh.read
        fh.read = lambda n=-1: reads.append(n) or original(n)  # type: ignore[method-assign]
        return fh

    monkeypatch.setattr(ds, "open_regular", spy)
    assert _pointer(run).status == POINTER_DAMAGED
    assert reads and all(0 < n <= ds.MAX_LATEST_BYTES + 1 for n in reads)


def test_latest_as_a_fifo_does_not_hang(run):
    (run / "latest").unlink()
    os.mkfifo(run / "latest")
    pointer = _pointer(run)
    assert (pointer.target, pointer.status) == (None, POINTER_DAMAGED)


def test_latest_as_a_dangling_symlink(run):
    (run / "latest").unlink()
    os.symlink("nowhere", run / "latest")
    pointer = _pointer(run)
    assert (pointer.target, pointer.status) == (None, POINTER_DAMAGED)


def test_latest_as_a_looping_symlink(run):
    (run / "latest").unlink()
    os.symlink("latest", run / "latest")
    pointer = _pointer(run)
    assert (pointer.target, pointer.status) == (None, POINTER_DAMAGED)


# --- protect, resume ------------------------------------------------------------------------------


def test_protect_keeps_newest_complete_and_the_latest_target(run):
    (run / "latest").write_text("global_step5")
    layout = _layout()
    units = layout.units(run)
    layout.protect(units, layout.pointers(run, units))
    by_name = {u.name: u.protected for u in units}
    assert by_name == {"global_step10": "protected: newest complete", "global_step5": "protected: pointer target"}


def test_newest_complete_skips_an_incomplete_newer_tag(run):
    (run / "global_step10" / OPTIM).unlink()
    layout = _layout()
    units = layout.units(run)
    (run / "latest").write_text("global_step5")
    layout.protect(units, layout.pointers(run, units))
    assert {u.name: u.protected for u in units}["global_step5"] == "protected: newest complete"


def test_resume_args(run):
    ten = _units(run)["global_step10"]
    assert _layout().resume_args(ten, run) == ["--load_checkpoint", str(run), "--ckpt_id", "global_step10"]


# --- hostile files --------------------------------------------------------------------------------


def test_hostile_model_states_are_never_executed(run, tmp_path):
    marker = tmp_path / "MARKER"
    write_hostile_checkpoint(run / "global_step10" / MODEL, marker)
    layout = _layout()
    assert layout.recognise(run, _names(run))
    units = layout.units(run)
    pointers = layout.pointers(run, units)
    layout.protect(units, pointers)
    ten = {u.name: u for u in units}["global_step10"]
    assert not marker.exists()
    assert not ten.complete
    assert ten.missing == [f"{MODEL} (unsafe: references posix.system)"]
    assert ten.step == 10  # from the tag name
    assert pointers[0].status == POINTER_DAMAGED  # latest names a checkpoint that cannot be trusted


def test_hostile_optimizer_file_is_not_even_read(run, tmp_path):
    marker = tmp_path / "MARKER"
    write_hostile_checkpoint(run / "global_step10" / OPTIM, marker)
    units = _units(run)
    assert not marker.exists()
    assert units["global_step10"].complete  # presence only: validate is what reads it


def test_zero3_per_rank_model_states_and_bf16_optimizer_files(run):
    """ZeRO-3 writes ``zero_pp_rank_<dp>_mp_rank_XX_model_states.pt`` per data-parallel rank; the bf16
    optimizer prefixes its files with ``bf16_``."""
    tag = run / "global_step10"
    _rewrite_model_states(tag / MODEL, dp_world_size=2)
    os.rename(tag / MODEL, tag / "zero_pp_rank_0_mp_rank_00_model_states.pt")
    os.rename(tag / OPTIM, tag / f"bf16_{OPTIM}")
    ten = _units(run)["global_step10"]
    assert ten.step == 10
    assert sorted(ten.missing) == ["bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
                                   "zero_pp_rank_1_mp_rank_00_model_states.pt"]  # fmt: skip
    shutil.copy(tag / "zero_pp_rank_0_mp_rank_00_model_states.pt", tag / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    shutil.copy(tag / f"bf16_{OPTIM}", tag / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt")
    assert _units(run)["global_step10"].complete


def test_the_old_optimizer_file_name_still_counts(run):
    tag = run / "global_step10"
    os.rename(tag / OPTIM, tag / OPTIM.replace("_optim_states.pt", "optim_states.pt"))
    assert _units(run)["global_step10"].complete


def test_a_looping_symlink_in_place_of_a_tag_is_skipped(run):
    os.symlink("loop", run / "loop")
    assert list(_units(run)) == ["global_step5", "global_step10"]


def test_a_huge_recorded_world_size_gives_a_short_missing_list(run):
    _rewrite_model_states(run / "global_step10" / MODEL, dp_world_size=60000)
    ten = _units(run)["global_step10"]
    assert not ten.complete
    assert len(ten.missing) == ds.MAX_MISSING_SHOWN + 1 and ten.missing[-1] == f"... and {59999 - ds.MAX_MISSING_SHOWN} more"


def test_a_world_size_beyond_the_budget_is_a_note_not_a_loop(run):
    _rewrite_model_states(run / "global_step10" / MODEL, dp_world_size=10**12)
    ten = _units(run)["global_step10"]
    assert any("too many ranks" in n for n in ten.notes)
