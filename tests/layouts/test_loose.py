"""Loose checkpoint files (ckptctl.layouts.loose) on copies of tests/fixtures/frameworks/loose/.

loose/: model.pt (state dict), tutorial.tar and checkpoint.pth (tutorial dict: epoch 3, a 0-d tensor
``loss``), legacy.pt (pre-1.6 format), model.safetensors (__metadata__ step 120 / epoch 3),
pytorch_model.bin (state dict).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from ckptctl.layouts import catalog, registry
from ckptctl.layouts.loose import LooseFilesLayout
from tests.factories import write_checkpoint, write_hostile_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
LAYOUT = LooseFilesLayout()


def loose_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "loose", tmp_path / "loose", symlinks=True))


def units_of(directory: Path):
    assert LAYOUT.recognise(directory, sorted(os.listdir(directory)))
    units = LAYOUT.units(directory)
    LAYOUT.protect(units, LAYOUT.pointers(directory, units))
    return units


def by_name(units):
    return {u.name: u for u in units}


def write_safetensors(path: Path, metadata: dict[str, str] | None) -> Path:
    header: dict = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    return path


def test_fixture_units_with_their_metadata(tmp_path):
    import torch

    run = loose_copy(tmp_path)
    units = units_of(run)
    # files without a step first (by name), then by step
    assert [u.name for u in units] == [
        "checkpoint.pth", "legacy.pt", "model.pt", "pytorch_model.bin", "tutorial.tar", "model.safetensors",
    ]  # fmt: skip
    assert all(u.complete and not u.is_directory and u.layout == "loose" for u in units)
    named = by_name(units)
    true_loss = torch.load(run / "tutorial.tar", weights_only=True)["loss"].detach().item()
    for name in ("tutorial.tar", "checkpoint.pth"):
        assert named[name].epoch == 3.0 and named[name].step is None
        assert named[name].metrics == {"loss": pytest.approx(true_loss)}
    assert (named["model.safetensors"].step, named["model.safetensors"].epoch) == (120, 3.0)
    assert named["model.safetensors"].metrics == {}
    assert "legacy format (torch.save before 1.6)" in named["legacy.pt"].notes
    for name in ("legacy.pt", "model.pt", "pytorch_model.bin"):
        assert "state dict: 4 tensor(s)" in named[name].notes
        assert named[name].step is None and named[name].metrics == {}
    # protected: the newest complete (the only file that records a step); no best anywhere
    assert [u.name for u in units if u.protected] == ["model.safetensors"]
    assert not any(u.best for u in units)
    assert LAYOUT.resume_args(named["model.pt"], run) == [str(run / "model.pt")]
    assert named["model.pt"].size_bytes == (run / "model.pt").stat().st_size
    assert named["model.pt"].files[0].content == "weights"


def test_registry_detects_loose_last(tmp_path):
    run = loose_copy(tmp_path)
    assert registry.detect(run).name == "loose"
    assert registry.LAYOUT_TABLE[-1] == ("loose", "LooseFilesLayout")


def test_hostile_file_is_unsafe_never_executed_and_never_protected(tmp_path):
    run = loose_copy(tmp_path)
    marker = tmp_path / "pwned"
    write_hostile_checkpoint(run / "zzz_resume.pt", marker)
    units = by_name(units_of(run))
    hostile = units["zzz_resume.pt"]
    assert not hostile.complete
    assert hostile.notes[0].startswith("unsafe: references") and "system" in hostile.notes[0]
    assert hostile.protected is None and hostile.step is None
    assert not marker.exists()
    assert all(u.complete for name, u in units.items() if name != "zzz_resume.pt")


def test_truncated_and_bad_header_safetensors(tmp_path):
    run = loose_copy(tmp_path)
    data = (run / "model.safetensors").read_bytes()
    (run / "cut.safetensors").write_bytes(data[:-10])
    (run / "bad.safetensors").write_bytes(struct.pack("<Q", 5) + b"[1,2]" + b"\0" * 8)
    (run / "empty.safetensors").write_bytes(b"")
    units = by_name(units_of(run))
    assert not units["cut.safetensors"].complete
    assert units["cut.safetensors"].notes[0].startswith("unreadable:")
    assert not units["bad.safetensors"].complete
    assert "corrupt safetensors header" in units["bad.safetensors"].notes[0]
    assert units["empty.safetensors"].notes == ["unreadable: truncated: empty file"]
    assert units["model.safetensors"].complete


def test_truncated_and_flipped_pickle_files(tmp_path):
    run = loose_copy(tmp_path)
    data = (run / "tutorial.tar").read_bytes()
    (run / "cut.tar").write_bytes(data[: len(data) // 2])
    legacy = (run / "legacy.pt").read_bytes()
    (run / "cut_legacy.pt").write_bytes(legacy[:100])
    units = by_name(units_of(run))
    assert not units["cut.tar"].complete and units["cut.tar"].notes[0].startswith("unreadable:")
    assert not units["cut_legacy.pt"].complete


def test_safetensors_metadata_numbers_and_strings(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_safetensors(run / "a.safetensors", {"step": "7", "epoch": "2.5", "loss": "0.25", "format": "pt",
                                              "huge": "9" * 5000, "nan": "nan"})  # fmt: skip
    write_safetensors(run / "b.safetensors", None)
    units = by_name(units_of(run))
    a = units["a.safetensors"]
    assert (a.step, a.epoch, a.metrics) == (7, 2.5, {"loss": 0.25})
    assert units["b.safetensors"].step is None and units["b.safetensors"].complete
    assert a.protected == "protected: newest complete"


def test_step_global_step_metrics_best_and_hparams_from_keys(tmp_path):
    import torch

    run = tmp_path / "run"
    write_checkpoint(run / "a.pt", {"global_step": 10, "epoch": 1, "val_loss": torch.tensor(0.5), "acc": 0.9,
                                    "args": {"lr": 0.1}, "model_state_dict": {"w": torch.zeros(2)}})  # fmt: skip
    write_checkpoint(run / "b.pt", {"step": 20, "epoch": 2, "loss": 1.5, "is_best": True})
    write_checkpoint(run / "c.pth", {"step": 30, "epoch": torch.tensor(3)})
    units = units_of(run)
    assert [(u.name, u.step) for u in units] == [("a.pt", 10), ("b.pt", 20), ("c.pth", 30)]
    a, b, c = units
    assert a.epoch == 1.0 and a.metrics == {"val_loss": 0.5, "acc": 0.9} and a.hparams == {"lr": 0.1}
    assert b.metrics == {"loss": 1.5} and b.best and b.protected == "protected: best"
    assert c.protected == "protected: newest complete"


def test_without_any_step_the_last_by_name_is_kept(tmp_path):
    import torch

    run = tmp_path / "run"
    for name in ("b.pt", "a.pt", "c.bin"):
        write_checkpoint(run / name, {"w": torch.zeros(2)})
    units = units_of(run)
    assert [u.name for u in units] == ["a.pt", "b.pt", "c.bin"]
    assert [u.protected for u in units] == [None, None, "protected: newest complete"]


def test_symlinks_dangling_and_looping(tmp_path):
    run = loose_copy(tmp_path)
    (run / "best.pt").symlink_to("model.pt")
    (run / "gone.pt").symlink_to("nowhere.pt")
    (run / "loop.pt").symlink_to("loop.pt")
    units = by_name(units_of(run))
    assert units["best.pt"].complete and units["best.pt"].notes[0] == "symlink to model.pt"
    assert units["best.pt"].files[0].inode == units["model.pt"].files[0].inode  # du counts it once
    assert not units["gone.pt"].complete and units["gone.pt"].notes == ["dangling symlink to nowhere.pt"]
    assert not units["loop.pt"].complete and units["loop.pt"].notes == ["looping symlink to loop.pt"]


def test_fifo_and_directories_with_checkpoint_suffixes_are_skipped(tmp_path):
    run = loose_copy(tmp_path)
    os.mkfifo(run / "pipe.pt")  # reading would block: never a unit, never opened
    (run / "dir.pt").mkdir()
    (run / ".hidden.pt").write_bytes(b"x")
    assert "pipe.pt" not in by_name(units_of(run))
    assert {"dir.pt", ".hidden.pt"}.isdisjoint(by_name(units_of(run)))


def test_bin_and_tar_files_that_are_not_checkpoints_are_not_units(tmp_path):
    """A token file (nanoGPT's train.bin) or a dataset tar is never a unit, so never pruned;
    a .pt that is not a checkpoint is a unit that is incomplete (the suffix says it should be one)."""
    import io
    import tarfile

    run = loose_copy(tmp_path)
    (run / "train.bin").write_bytes(bytes(range(256)) * 4)
    with tarfile.open(run / "shard-000001.tar", "w") as tar:
        info = tarfile.TarInfo("sample.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    (run / "garbage.pt").write_bytes(b"not a checkpoint")
    units = by_name(units_of(run))
    assert {"train.bin", "shard-000001.tar"}.isdisjoint(units)
    assert {"legacy.pt", "pytorch_model.bin", "tutorial.tar"} <= set(units)  # legacy magic / zip: kept
    assert not units["garbage.pt"].complete and units["garbage.pt"].notes[0].startswith("unreadable:")
    for name in ("legacy.pt", "model.pt", "model.safetensors", "checkpoint.pth", "pytorch_model.bin",
                 "tutorial.tar", "garbage.pt"):  # fmt: skip
        (run / name).unlink()
    assert not LAYOUT.recognise(run, sorted(os.listdir(run)))


def test_native_names_win_over_loose_files(tmp_path):
    """ckptctl's own names go through layouts/catalog.py (the registry is asked only when none is
    present); the loose layout also declines such a directory itself, so whatever order the hook
    takes, latest.pt is never a 'loose' unit."""
    run = loose_copy(tmp_path)
    write_checkpoint(run / "latest.pt", step=300)
    write_checkpoint(run / "rolling_step_000300.pt", step=300)
    assert not LAYOUT.recognise(run, sorted(os.listdir(run)))
    assert registry.detect(run) is None
    entries = catalog.scan(run, require_checkpoints=True)
    assert {e.name for e in entries if e.parsed.is_checkpoint} == {"latest.pt", "rolling_step_000300.pt"}


def test_native_dcp_directory_name_also_declines(tmp_path):
    run = loose_copy(tmp_path)
    (run / "rolling_step_000100").mkdir()
    assert not LAYOUT.recognise(run, sorted(os.listdir(run)))


@pytest.mark.parametrize("path", [
    "hf_trainer/checkpoint-2", "hf_trainer_bin/checkpoint-2", "hf_trainer_sharded/checkpoint-2",
    "accelerate/checkpoints/checkpoint_0", "deepspeed/global_step5", "deepspeed",
    "torchtitan/checkpoint/step-10", "torchtitan/checkpoint",
])  # fmt: skip
def test_inside_of_one_framework_checkpoint_is_not_loose(path):
    """Listing one checkpoint's own files as separate units would let prune delete its optimizer or a shard."""
    directory = FIXTURES / path
    assert not LAYOUT.recognise(directory, sorted(os.listdir(directory)))


def test_sharded_model_files_decline(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_safetensors(run / "model-00001-of-00002.safetensors", None)
    write_safetensors(run / "model-00002-of-00002.safetensors", None)
    assert not LAYOUT.recognise(run, sorted(os.listdir(run)))


@pytest.mark.parametrize("names", [[], ["notes.txt"], ["model.onnx"], ["model.pt.tmp"]])
def test_no_checkpoint_files_is_not_loose(tmp_path, names):
    run = tmp_path / "run"
    run.mkdir()
    for name in names:
        (run / name).write_bytes(b"x")
    assert not LAYOUT.recognise(run, sorted(os.listdir(run)))
    assert LAYOUT.units(run) == []


def test_units_import_no_torch(tmp_path):
    import subprocess
    import sys

    run = loose_copy(tmp_path)
    code = (
        "import sys\nfrom pathlib import Path\nfrom ckptctl.layouts.loose import LooseFilesLayout\n"
        f"us = LooseFilesLayout().units(Path({str(run)!r}))\n"
        "assert len(us) == 6 and all(u.complete for u in us), us\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
