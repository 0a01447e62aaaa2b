"""summarize(): the layout's fields and model/optimizer summaries agree with what torch itself reports."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ckptctl.layouts.metadata import as_datetime, as_float, as_int, summarize
from ckptctl.formats.reader import read_checkpoint
from tests.factories import make_state, write_checkpoint


def _unique_numel(tensors) -> int:
    """Parameters as torch counts them: each distinct tensor once (tied weights share one)."""
    seen = {}
    for t in tensors:
        seen[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())] = t.numel()
    return sum(seen.values())


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("metadata")
    state = make_state(step=4321, epoch=3, val_loss=0.125, train_loss=0.25, hidden=32)
    write_checkpoint(d / "zip.pt", state)
    torch.save(make_state(step=4321, epoch=3, val_loss=0.125, train_loss=0.25, hidden=32, namespace_args=True),
               d / "legacy.pt", _use_new_zipfile_serialization=False)  # fmt: skip
    return d


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt"])
def test_seed_dict_fields_match_torch(seed_files, name):
    import torch

    path = seed_files / name
    meta = summarize(read_checkpoint(path))
    loaded = torch.load(path, weights_only=False)
    assert (meta.step, meta.epoch, meta.val_loss, meta.train_loss) == (
        loaded["step"], loaded["epoch"], loaded["val_loss"], loaded["train_loss"])  # fmt: skip
    assert meta.checkpoint_type == loaded["checkpoint_type"]
    assert meta.timestamp == datetime.fromisoformat(loaded["timestamp"]).astimezone()
    args = loaded["args"] if isinstance(loaded["args"], dict) else vars(loaded["args"])
    assert meta.args == args
    assert meta.dataloader_state == loaded["dataloader_state"]
    assert meta.rng_states == sorted(k for k, v in loaded["rng_state"].items() if v is not None)
    assert meta.extra_keys == []


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt"])
def test_model_and_optimizer_counts_match_torch(seed_files, name):
    import torch

    path = seed_files / name
    meta = summarize(read_checkpoint(path))
    loaded = torch.load(path, weights_only=False)
    model = loaded["model"]
    assert meta.model.tensor_count == len(model)
    assert meta.model.parameter_count == sum(t.numel() for t in model.values())
    by_dtype = {}
    for t in model.values():
        key = str(t.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + t.untyped_storage().nbytes()
    assert meta.model.bytes_by_dtype == by_dtype
    opt = meta.optimizer
    assert opt.type == "AdamW"
    assert opt.state_entries == len(loaded["optimizer"]["state"])
    group = loaded["optimizer"]["param_groups"][0]
    assert opt.param_groups[0]["lr"] == group["lr"]
    assert opt.param_groups[0]["betas"] == list(group["betas"])
    assert opt.param_groups[0]["weight_decay"] == group["weight_decay"]
    assert opt.param_groups[0]["params"] == len(group["params"])
    state_tensors = [t for entry in loaded["optimizer"]["state"].values() for t in entry.values() if torch.is_tensor(t)]
    assert opt.tensors.tensor_count == len(state_tensors)
    assert opt.tensors.total_bytes == sum(t.untyped_storage().nbytes() for t in state_tensors)


def test_real_model_parameters_match_model_parameters(tmp_path):
    """parameter_count of a saved state_dict equals sum(p.numel() for p in model.parameters())."""
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 50))
    model[2].weight = model[0].weight  # tied input/output embedding
    torch.save({"model": model.state_dict()}, tmp_path / "tied.pt")
    meta = summarize(read_checkpoint(tmp_path / "tied.pt"))
    assert meta.model.parameter_count == sum(p.numel() for p in model.parameters())
    assert meta.model.tensor_count == len(model.state_dict())
    assert meta.model.total_bytes == sum(p.numel() * 4 for p in model.parameters())  # tied storage once


def test_views_count_storage_bytes_once(tmp_path):
    import torch

    base = torch.randn(10, 10)
    state = {"model": {"base": base, "row": base[3], "t": base.t(), "h": torch.ones(4, dtype=torch.float16),
                       "b": torch.ones(4, dtype=torch.bfloat16), "q": torch.ones(9, dtype=torch.int8),
                       "p": torch.nn.Parameter(torch.ones(6))}}  # fmt: skip
    torch.save(state, tmp_path / "views.pt")
    meta = summarize(read_checkpoint(tmp_path / "views.pt"))
    assert meta.model.bytes_by_dtype == {"bfloat16": 8, "float16": 8, "float32": 400 + 24, "int8": 9}
    assert meta.model.parameter_count == _unique_numel(state["model"].values())
    assert meta.model.tensor_count == 7


def test_numpy_scalar_losses_and_namespace_args(tmp_path):
    import argparse

    import numpy as np
    import torch

    state = {"step": np.int64(12), "epoch": np.int32(2), "val_loss": np.float64(0.375), "train_loss": np.float32(0.5),
             "args": argparse.Namespace(lr=0.01, layers=[1, 2]), "model": {}, "extra_key": "kept"}  # fmt: skip
    torch.save(state, tmp_path / "np.pt")
    meta = summarize(read_checkpoint(tmp_path / "np.pt"))
    assert (meta.step, meta.epoch, meta.val_loss, meta.train_loss) == (12, 2, 0.375, 0.5)
    assert meta.args == {"lr": 0.01, "layers": [1, 2]}
    assert meta.extra_keys == ["extra_key"]


def test_sgd_optimizer_is_recognised(tmp_path):
    import torch

    model = torch.nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.save({"optimizer": opt.state_dict()}, tmp_path / "sgd.pt")
    meta = summarize(read_checkpoint(tmp_path / "sgd.pt"))
    assert meta.optimizer.type == "SGD"
    assert meta.optimizer.param_groups[0]["momentum"] == 0.9


def test_odd_roots_give_empty_metadata(tmp_path):
    import torch

    torch.save([1, 2, 3], tmp_path / "list.pt")
    meta = summarize(read_checkpoint(tmp_path / "list.pt"))
    assert meta.step is None and meta.model is None and meta.optimizer is None and meta.extra_keys == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2026-01-02T03:04:05+00:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
     (0, datetime(1970, 1, 1, tzinfo=timezone.utc)), ("not a date", None), (float("nan"), None), (True, None),
     (None, None)],
)  # fmt: skip
def test_as_datetime(value, expected):
    assert as_datetime(value) == expected


def test_naive_timestamps_are_made_aware():
    assert as_datetime("2026-01-02T03:04:05").tzinfo is not None


@pytest.mark.parametrize(("value", "i", "f"), [(3, 3, 3.0), (2.5, None, 2.5), (True, None, None), ("3", None, None)])
def test_as_int_and_float_reject_bools_and_strings(value, i, f):
    assert as_int(value) == i
    assert as_float(value) == f


# --- numbers from a hostile file: converted safely, never a crash (exit 70) ---


@pytest.mark.parametrize("value", [10**5000 // 10**3900, 2**63, -(2**63) - 1, 10**400])
def test_steps_beyond_int64_are_not_steps(value):
    assert as_int(value) is None


def test_int64_steps_are_kept():
    assert as_int(2**63 - 1) == 2**63 - 1 and as_int(-5) == -5


def test_losses_beyond_float_range_are_not_numbers():
    assert as_float(10**400) is None  # float(10**400) raises OverflowError
    assert as_float(10**300) == 1e300


def test_a_file_with_huge_numbers_and_odd_keys_summarizes(tmp_path):
    """step 10**1000, a loss of 10**400, tuple and int keys in rng_state and at the top: all shown bounded."""
    import pickle

    from tests import hostile

    root = {"step": 10**1000, "epoch": 1, "train_loss": 10**400, "val_loss": 0.5,
            "rng_state": {"python": 1, 2: 3}, ("x", 1): 2, ("y" * 100_000,): 3}  # fmt: skip
    path = hostile.torch_zip(tmp_path / "numbers.pt", pickle.dumps(root, 2))
    meta = summarize(read_checkpoint(path))
    assert meta.step is None and meta.epoch == 1
    assert meta.train_loss is None and meta.val_loss == 0.5
    assert meta.rng_states == ["2", "python"]
    assert "('x', 1)" in meta.extra_keys
    assert all(len(k) <= 200 for k in meta.extra_keys)
