"""Lightning checkpoints that are directories: FSDPStrategy(state_dict_type="sharded") on the
lightning_fsdp fixture (ModelCheckpoint + Lightning's own sharded save code, see its README), and
DeepSpeedStrategy directories built here from DeepSpeed's real tag files (the deepspeed fixture)
with Lightning's keys merged into the model states, as ``save_checkpoint(path,
client_state=checkpoint, tag="checkpoint")`` writes them (Lightning's DeepSpeed strategy needs CUDA)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ckptctl.layouts import registry
from ckptctl.layouts.base import CONTENT_OTHER, CONTENT_WEIGHTS, POINTER_DAMAGED, POINTER_DANGLING, POINTER_OK
from ckptctl.layouts.lightning import NOTE_LAST_COPY, PROTECTED_LAST, LightningLayout, directory_kind
from ckptctl.ops.integrity import unit_verdict, validate_unit
from tests.factories import write_hostile_checkpoint
from tests.layouts.test_lightning import _read as read_layout

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "frameworks"
E0 = "epoch=0-step=4-val_loss=0.56.ckpt"
E1 = "epoch=1-step=8-val_loss=0.57.ckpt"
VAL0, VAL1 = 0.5636191964149475, 0.5653688907623291  # the exact scores inside meta.pt
TAG = "checkpoint"
MODEL = "mp_rank_00_model_states.pt"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def _fsdp(tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(FIXTURES / "lightning_fsdp", dst, symlinks=True)
    return dst


def _read(directory: Path):
    """Units and pointers by name, as the layout reads and protects them (test_lightning's reader)."""
    _layout, units, pointers, _list = read_layout(directory)
    return units, pointers


def _deepspeed_dir(path: Path, *, epoch: int, step: int, score: float, best: str) -> Path:
    """One DeepSpeedStrategy checkpoint directory: real DeepSpeed tag files under ``checkpoint/``,
    Lightning's keys (less state_dict and optimizer_states) merged into the model states, ``latest``."""
    import torch

    tag = path / TAG
    shutil.copytree(FIXTURES / "deepspeed" / "global_step5", tag)
    shutil.copy(FIXTURES / "deepspeed" / "zero_to_fp32.py", path / "zero_to_fp32.py")
    (path / "latest").write_text(TAG)
    state = torch.load(tag / MODEL, weights_only=True)
    best_path = f"/elsewhere/run/{best}"
    state.update({
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": "2.6.6",
        "loops": {},
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.05},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "monitor": "val_loss", "best_model_path": best_path, "best_model_score": torch.tensor(0.25),
            "current_score": torch.tensor(score), "dirpath": "/elsewhere/run",
            "best_k_models": {best_path: torch.tensor(0.25), f"/elsewhere/run/{path.name}": torch.tensor(score)},
            "kth_best_model_path": "", "kth_value": torch.tensor(float("inf")), "last_model_path": "",
        }},
    })  # fmt: skip
    torch.save(state, tag / MODEL)
    return path


@pytest.fixture
def ds_run(tmp_path: Path) -> Path:
    run = tmp_path / "ds"
    run.mkdir()
    _deepspeed_dir(run / "epoch=0-step=5.ckpt", epoch=0, step=5, score=0.25, best="epoch=0-step=5.ckpt")
    _deepspeed_dir(run / "epoch=1-step=10.ckpt", epoch=1, step=10, score=0.5, best="epoch=0-step=5.ckpt")
    os.symlink("epoch=1-step=10.ckpt", run / "last.ckpt")
    return run


# ---------------------------------------------------------------------- FSDP sharded (fixture)


def test_fsdp_fixture_is_lightning_with_directory_units(tmp_path):
    run = _fsdp(tmp_path)
    assert registry.detect(run).name == "lightning"
    assert directory_kind(run / E0) == "fsdp-sharded" and directory_kind(run / "last.ckpt") is None  # a link
    units, pointers = _read(run)
    assert sorted(units) == [E0, E1]
    first, second = units[E0], units[E1]
    assert first.is_directory and first.complete and first.missing == []
    assert (first.step, first.epoch, second.step, second.epoch) == (4, 0, 8, 1)
    assert first.monitor == "val_loss" and first.metrics["val_loss"] == VAL0 and second.metrics["val_loss"] == VAL1
    assert first.best and not second.best
    assert first.hparams == {"lr": 0.05}
    files = {f.path.name: f for f in second.files}
    assert sorted(files) == [".metadata", "__0_0.distcp", "meta.pt"]
    assert files["__0_0.distcp"].content == CONTENT_WEIGHTS and files["meta.pt"].content == CONTENT_OTHER
    assert second.size_bytes == sum(os.path.getsize(run / E1 / n) for n in files)
    assert pointers["last.ckpt"].target == E1 and pointers["last.ckpt"].status == POINTER_OK
    assert (first.protected, second.protected) == ("protected: best", "protected: newest complete")


def test_fsdp_units_validate_as_dcp_plus_meta(tmp_path):
    units, _ = _read(_fsdp(tmp_path))
    results = validate_unit(units[E1])
    assert [r.path.name for r in results] == [E1, "meta.pt"]  # the DCP part as one, meta.pt by its format
    assert all(r.valid for r in results) and unit_verdict(units[E1]) is None


def test_missing_meta_pt_is_incomplete_and_damages_the_link(tmp_path):
    run = _fsdp(tmp_path)
    (run / E1 / "meta.pt").unlink()
    units, pointers = _read(run)
    unit = units[E1]
    assert not unit.complete and unit.missing == ["meta.pt"]
    assert (unit.step, unit.metrics["val_loss"]) == (8, 0.57)  # from the name only
    assert pointers["last.ckpt"].status == POINTER_DAMAGED and "meta.pt" in pointers["last.ckpt"].detail
    assert units[E0].protected == "protected: best"  # now also the newest complete
    assert unit_verdict(unit).startswith("incomplete: missing meta.pt")


def test_truncated_shard_is_incomplete_and_invalid(tmp_path):
    run = _fsdp(tmp_path)
    shard = run / E0 / "__0_0.distcp"
    os.truncate(shard, shard.stat().st_size // 2)
    units, _ = _read(run)
    unit = units[E0]
    assert not unit.complete and any(n.startswith("truncated: shard file __0_0.distcp") for n in unit.notes)
    assert any(r.failed for r in validate_unit(unit))
    assert units[E1].complete


def test_missing_shard_file_is_listed_as_missing(tmp_path):
    run = _fsdp(tmp_path)
    (run / E0 / "__0_0.distcp").unlink()
    unit = _read(run)[0][E0]
    assert not unit.complete and unit.missing == ["__0_0.distcp"]


def test_missing_dcp_metadata_is_missing(tmp_path):
    run = _fsdp(tmp_path)
    (run / E0 / ".metadata").unlink()
    unit = _read(run)[0][E0]
    assert not unit.complete and unit.missing == [".metadata"] and unit.step == 4  # meta.pt still read


def test_dangling_last_link_to_a_directory(tmp_path):
    run = _fsdp(tmp_path)
    shutil.rmtree(run / E1)
    units, pointers = _read(run)
    assert sorted(units) == [E0]
    assert pointers["last.ckpt"].status == POINTER_DANGLING and pointers["last.ckpt"].target == E1
    assert registry.detect(run).name == "lightning"


def test_last_ckpt_directory_copy_is_a_unit_and_its_own_pointer(tmp_path):
    run = _fsdp(tmp_path)
    (run / "last.ckpt").unlink()
    shutil.copytree(run / E1, run / "last.ckpt")  # save_last=True with a sharded strategy
    units, pointers = _read(run)
    last = units["last.ckpt"]
    assert last.is_directory and last.complete and last.step == 8 and NOTE_LAST_COPY in last.notes
    assert last.protected == PROTECTED_LAST and units[E1].protected == "protected: newest complete"
    assert pointers["last.ckpt"].target == "last.ckpt" and pointers["last.ckpt"].status == POINTER_OK


def test_link_to_a_directory_outside_the_run(tmp_path):
    run = _fsdp(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(run / E1), elsewhere / E1)
    (run / "last.ckpt").unlink()
    os.symlink(elsewhere / E1, run / "last.ckpt")
    pointer = _read(run)[1]["last.ckpt"]
    assert pointer.status == POINTER_OK  # read as a unit would be: complete, step 8, not stale
    (elsewhere / E1 / "meta.pt").unlink()
    pointer = _read(run)[1]["last.ckpt"]
    assert pointer.status == POINTER_DAMAGED and "meta.pt" in pointer.detail


def test_hostile_meta_pt_is_unsafe_and_never_executed(tmp_path):
    run = _fsdp(tmp_path)
    marker = tmp_path / "pwned"
    write_hostile_checkpoint(run / E0 / "meta.pt", marker)
    unit = _read(run)[0][E0]
    assert not unit.complete and unit.missing[0].startswith("meta.pt (unsafe:")
    assert any(n.startswith("meta.pt: unsafe:") and "(not executed)" in n for n in unit.notes)
    assert not marker.exists()


def test_directory_without_a_template_name_is_recognised_by_its_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(FIXTURES / "lightning_fsdp" / E0, run / "model.ckpt")
    assert LightningLayout().recognise(run, sorted(os.listdir(run)))
    (unit,) = LightningLayout().units(run)
    assert unit.complete and unit.step == 4


# ---------------------------------------------------------------------- DeepSpeed (built)


def test_deepspeed_directories_are_units(ds_run):
    assert registry.detect(ds_run).name == "lightning"  # DeepSpeed's own layout does not take it
    units, pointers = _read(ds_run)
    first, second = units["epoch=0-step=5.ckpt"], units["epoch=1-step=10.ckpt"]
    assert directory_kind(first.path) == "deepspeed"
    assert first.complete and second.complete and first.is_directory
    assert (first.step, second.step, second.epoch) == (5, 10, 1)  # Lightning's global_step
    assert second.metrics["val_loss"] == 0.5 and first.best and not second.best
    names = sorted(str(f.path.relative_to(second.path)) for f in second.files)
    assert names == [f"{TAG}/{MODEL}", f"{TAG}/{OPTIM}", "latest", "zero_to_fp32.py"]
    assert pointers["last.ckpt"].status == POINTER_OK and second.protected == "protected: newest complete"
    assert unit_verdict(second) is None


def test_deepspeed_missing_optimizer_file_or_latest_is_incomplete(ds_run):
    (ds_run / "epoch=0-step=5.ckpt" / TAG / OPTIM).unlink()
    (ds_run / "epoch=1-step=10.ckpt" / "latest").unlink()
    units, pointers = _read(ds_run)
    assert units["epoch=0-step=5.ckpt"].missing == [f"{TAG}/{OPTIM}"]
    assert units["epoch=1-step=10.ckpt"].missing == ["latest"]
    assert pointers["last.ckpt"].status == POINTER_DAMAGED


def test_deepspeed_missing_model_states(ds_run):
    (ds_run / "epoch=0-step=5.ckpt" / TAG / MODEL).unlink()
    unit = _read(ds_run)[0]["epoch=0-step=5.ckpt"]
    assert not unit.complete and unit.missing == [f"{TAG}/{MODEL}"] and unit.step == 5  # from the name
