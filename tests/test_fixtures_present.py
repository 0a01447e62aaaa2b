"""The framework fixtures (tests/fixtures/frameworks, written by make_fixtures.py with the real
libraries) are present, complete, and load as README.md says: every torch file with
torch.load(weights_only=True), except the files listed in UNSAFE, which name exactly those
globals that the weights_only unpickler does not allow.

Only torch, the standard library and safetensors are used here: CI never installs
transformers, Lightning, Accelerate or DeepSpeed.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent / "fixtures" / "frameworks"

LAYOUTS = [
    "hf_trainer",
    "hf_trainer_sharded",
    "hf_trainer_bin",
    "lightning",
    "lightning_link",
    "lightning_fsdp",
    "accelerate",
    "accelerate_named",
    "torchtitan",
    "torchtitan_bytesio",
    "deepspeed",
    "loose",
]

_NUMPY = {"numpy._core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray"}
_TRAINING_ARGS = {
    "accelerate.state.PartialState",
    "accelerate.utils.dataclasses.DistributedType",
    "transformers.trainer_pt_utils.AcceleratorConfig",
    "transformers.trainer_utils.HubStrategy",
    "transformers.trainer_utils.IntervalStrategy",
    "transformers.trainer_utils.SaveStrategy",
    "transformers.trainer_utils.SchedulerType",
    "transformers.training_args.OptimizerNames",
    "transformers.training_args.TrainingArguments",
}
# path pattern (relative to ROOT) -> the globals torch.load(weights_only=True) refuses
UNSAFE = {
    "*/training_args.bin": _TRAINING_ARGS,
    "*/rng_state.pth": _NUMPY,
    "*/random_states_*.pkl": _NUMPY,
    "deepspeed/*/zero_pp_rank_*_optim_states.pt": {
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.utils.tensor_fragment.fragment_address",
    },
}
# DCP bytes items (layout, fqn pattern) -> refused globals
UNSAFE_DCP = {
    ("torchtitan_bytesio", "train_state.*"): {"_io.BytesIO"},
}

_NOT_TORCH = (".json", ".safetensors", ".py", ".distcp", ".metadata")


def _torch_files() -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(ROOT).as_posix()
            if "/" not in rel or name.endswith(_NOT_TORCH) or name == "latest":
                continue
            out.append(rel)
    return out


def _expected_unsafe(rel: str) -> set[str]:
    for pattern, names in UNSAFE.items():
        if fnmatch.fnmatch(rel, pattern):
            return names
    return set()


def _unsafe_globals(f) -> set[str]:
    get = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if get is None:
        pytest.skip("torch too old for get_unsafe_globals_in_checkpoint")
    return set(get(f))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_present(layout):
    assert (ROOT / layout).is_dir(), f"missing fixture {layout}: run make_fixtures.py"
    assert any(p.is_file() for p in (ROOT / layout).rglob("*"))


def test_fixture_size_budget():
    total = sum(p.lstat().st_size for p in ROOT.rglob("*") if p.is_file() and not p.is_symlink())
    assert total < 2 * 1024 * 1024, total


@pytest.mark.parametrize("rel", _torch_files())
def test_torch_file_weights_only(rel):
    path = ROOT / rel
    expected = _expected_unsafe(rel)
    with open(path, "rb") as fh:
        zipped = fh.read(2) == b"PK"
    if zipped:
        assert _unsafe_globals(str(path)) == expected
    if expected:
        with pytest.raises(pickle.UnpicklingError, match="weights_only"):
            torch.load(path, weights_only=True, map_location="cpu")
    else:
        torch.load(path, weights_only=True, map_location="cpu")


def _dcp_bytes_items(step_dir: Path):
    """(fqn, bytes) of every non-tensor item of a single-file DCP checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    md = FileSystemReader(str(step_dir)).read_metadata()
    blobs = {}
    for index, info in md.storage_data.items():
        if isinstance(md.state_dict_metadata[index.fqn], BytesStorageMetadata):
            with open(step_dir / info.relative_path, "rb") as fh:
                fh.seek(info.offset)
                blobs[index.fqn] = fh.read(info.length)
    return md, blobs


@pytest.mark.parametrize("layout,steps", [("torchtitan", (10, 20, 30)), ("torchtitan_bytesio", (10, 20))])
def test_torchtitan_dcp(layout, steps):
    base = ROOT / layout / "checkpoint"
    assert sorted(p.name for p in base.iterdir()) == sorted(f"step-{s}" for s in steps)
    for step in steps:
        md, blobs = _dcp_bytes_items(base / f"step-{step}")
        keys = set(md.state_dict_metadata)
        assert any(k.startswith("optimizer.state.") for k in keys)
        assert any(k.startswith("optimizer.param_groups.") for k in keys)
        assert "lr_scheduler.last_epoch" in keys
        assert "train_state.step" in keys
        if layout == "torchtitan":
            assert "tok_embeddings.weight" in keys  # model FQNs at the top level
            assert torch.load(io.BytesIO(blobs["train_state.step"]), weights_only=True) == step
        else:
            assert "model.tok_embeddings.weight" in keys
        for fqn, blob in blobs.items():
            expected = set()
            for (lay, pattern), names in UNSAFE_DCP.items():
                if lay == layout and fnmatch.fnmatch(fqn, pattern):
                    expected = names
            assert _unsafe_globals(io.BytesIO(blob)) == expected, fqn
            if not expected:
                torch.load(io.BytesIO(blob), weights_only=True)


def test_hf_trainer_layout():
    ckpts = sorted((ROOT / "hf_trainer").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in ckpts] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    for ckpt in ckpts:
        names = {p.name for p in ckpt.iterdir()}
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin",
                "trainer_state.json", "config.json"} <= names
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert state["best_model_checkpoint"] == "hf_trainer/checkpoint-2"
    assert any("eval_loss" in row for row in state["log_history"])
    assert any("loss" in row for row in state["log_history"])
    assert isinstance(state["best_metric"], float) and isinstance(state["epoch"], float)


def test_hf_trainer_sharded_and_bin():
    from safetensors import safe_open

    ckpt = ROOT / "hf_trainer_sharded" / "checkpoint-2"
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for shard in shards:
        with safe_open(str(ckpt / shard), "pt") as f:
            assert set(f.keys()) == {k for k, v in index["weight_map"].items() if v == shard}
    assert not (ckpt / "model.safetensors").exists()
    for ckpt in (ROOT / "hf_trainer_bin").glob("checkpoint-*"):
        assert (ckpt / "pytorch_model.bin").is_file()
        assert not (ckpt / "model.safetensors").exists()


def test_lightning_layouts():
    plain = ROOT / "lightning"
    assert (plain / "last.ckpt").is_file() and not (plain / "last.ckpt").is_symlink()
    assert any(p.name.endswith("-v1.ckpt") for p in plain.iterdir())
    link = ROOT / "lightning_link" / "last.ckpt"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link)) and link.resolve().is_file()
    first = torch.load(ROOT / "lightning_link" / "epoch=0-step=4-val_loss=0.56.ckpt", weights_only=True)
    (cb,) = first["callbacks"].values()
    assert cb["kth_value"].item() == float("inf")  # top-k not yet full at the first save


def test_accelerate_layouts():
    files = {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"}
    auto = ROOT / "accelerate" / "checkpoints"
    assert sorted(p.name for p in auto.iterdir()) == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    named = ROOT / "accelerate_named"
    assert sorted(p.name for p in named.iterdir()) == ["step_10", "step_15", "step_5"]
    for ckpt in [*auto.iterdir(), *named.iterdir()]:
        assert {p.name for p in ckpt.iterdir()} == files


def test_deepspeed_layout():
    ds = ROOT / "deepspeed"
    assert (ds / "latest").read_text() == "global_step10"
    for tag in ("global_step5", "global_step10"):
        assert {p.name for p in (ds / tag).iterdir()} == {
            "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    states = torch.load(ds / "global_step10" / "mp_rank_00_model_states.pt", weights_only=True)
    assert states["global_steps"] == 10 and states["global_samples"] == 40
    assert states["ds_config"]["zero_optimization"]["stage"] == 2
    assert states["my_step"] == 10  # client_state is merged into the top level


def test_loose_files():
    from safetensors import safe_open

    loose = ROOT / "loose"
    with safe_open(str(loose / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"step": "120", "epoch": "3"}
    tutorial = torch.load(loose / "tutorial.tar", weights_only=True)
    assert set(tutorial) == {"epoch", "model_state_dict", "optimizer_state_dict", "loss"}
    with open(loose / "legacy.pt", "rb") as fh:
        assert fh.read(2) != b"PK"  # the pre-1.6 format: pickles back to back, no zip
