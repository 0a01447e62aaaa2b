"""Other frameworks' keys in layouts/metadata.py, and ``validate --deep`` on their files (issue 11).

Every file here was written by the real framework (tests/fixtures/frameworks/README.md); the
metadata is read through the safe reader, never with the framework installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from ckptctl.formats.reader import read_checkpoint
from ckptctl.layouts.metadata import optimizer_summary, summarize
from tests.factories import write_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "frameworks"
LIGHTNING = sorted(p for p in FIXTURES.glob("lightning*/*.ckpt") if p.is_file())  # lightning_fsdp: directories
runner = CliRunner()


def _meta(rel: str):
    return summarize(read_checkpoint(FIXTURES / rel))


def test_native_files_keep_their_fields(tmp_path):
    path = write_checkpoint(tmp_path / "ckpt_step_000100.pt", step=100)
    meta = summarize(read_checkpoint(path))
    assert meta.step == 100 and meta.step_key is None and meta.model_key is None and meta.optimizer_key is None
    assert meta.model is not None and meta.hparams_key is None


@pytest.mark.parametrize("path", LIGHTNING, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lightning_keys(path):
    ckpt = read_checkpoint(path)
    meta = summarize(ckpt)
    assert meta.step == ckpt.root["global_step"] > 0 and meta.step_key == "global_step"
    assert meta.epoch == ckpt.root["epoch"]
    assert meta.model_key == "state_dict" and meta.model.tensor_count == 4 and meta.model.parameter_count == 90
    assert meta.optimizer_key == "optimizer_states"
    assert meta.optimizer is not None and meta.optimizer.param_groups and "lr" in meta.optimizer.param_groups[0]
    assert meta.hparams_key == "hyper_parameters" and meta.args == {"lr": 0.05}
    assert not {"state_dict", "optimizer_states", "hyper_parameters", "global_step"} & set(meta.extra_keys)
    assert "callbacks" in meta.extra_keys  # unmapped keys are still shown


@pytest.mark.parametrize("step", [5, 10])
def test_deepspeed_keys(step):
    meta = _meta(f"deepspeed/global_step{step}/mp_rank_00_model_states.pt")
    assert (meta.step, meta.step_key, meta.epoch) == (step, "global_steps", 0)
    assert meta.model_key == "module" and meta.model.parameter_count == 90
    assert meta.hparams_key == "ds_config" and meta.args["zero_optimization"]["stage"] == 2
    assert meta.optimizer is None  # ``optimizer: None``: ZeRO keeps it in the other file
    optim = _meta(f"deepspeed/global_step{step}/zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert optim.optimizer_key == "optimizer_state_dict"
    assert optim.optimizer.type == "AdamW" and optim.optimizer.state_entries == 1
    assert optim.optimizer.tensors.tensor_count >= 3  # exp_avg, exp_avg_sq, step + the fp32 partition


@pytest.mark.parametrize("step", [10, 20, 30])
def test_torchtitan_flat_layout(step):
    meta = _meta(f"torchtitan/checkpoint/step-{step}")
    assert (meta.step, meta.step_key) == (step, "train_state.step")
    assert meta.model_key == "" and meta.model.tensor_count == 5  # model FQNs at the top level
    opt = meta.optimizer  # ``optimizer`` without param_groups: the flat FQN layout, no longer dropped
    assert opt is not None and opt.type == "AdamW" and opt.state_entries == 5
    assert opt.param_groups == [{"lr": opt.param_groups[0]["lr"], "betas": [0.9, 0.999], "weight_decay": 0.1, "eps": 1e-08,
                                 "amsgrad": False, "params": 5}]  # fmt: skip
    assert opt.tensors.tensor_count == 15
    assert not any("." in key for key in meta.extra_keys)  # the FQNs are the model, not extras
    assert set(meta.extra_keys) == {"lr_scheduler", "train_state"}


def test_torchtitan_bytesio_layout():
    meta = _meta("torchtitan_bytesio/checkpoint/step-10")
    assert meta.model_key is None and meta.model.tensor_count == 5  # nested under ``model``
    assert meta.optimizer is not None and meta.optimizer.state_entries == 5


def test_train_state_step_as_a_zero_d_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "titan.pt"
    torch.save({"train_state": {"step": torch.tensor(42, dtype=torch.int32)}, "w.x": torch.ones(2)}, path)
    meta = summarize(read_checkpoint(path))
    assert (meta.step, meta.step_key) == (42, "train_state.step")


@pytest.mark.parametrize("name", ["tutorial.tar", "checkpoint.pth"])
def test_tutorial_dict(name):
    meta = _meta(f"loose/{name}")
    assert meta.epoch == 3 and meta.train_loss is not None and 0 < meta.train_loss < 10  # ``loss``: a 0-d tensor
    assert meta.model_key == "model_state_dict" and meta.model.parameter_count == 90
    assert meta.optimizer_key == "optimizer_state_dict" and meta.optimizer.type == "SGD"
    assert meta.extra_keys == []


def test_hf_optimizer_file_is_an_optimizer():
    meta = _meta("hf_trainer/checkpoint-2/optimizer.pt")
    assert meta.optimizer_key == "" and meta.optimizer is not None and meta.optimizer.state_entries > 0
    assert "state" not in meta.extra_keys


def test_plain_state_dict_is_the_model():
    meta = _meta("loose/model.pt")
    assert meta.model_key == "" and meta.model.parameter_count == 90


def test_flat_optimizer_groups_split_by_hyperparameters():
    summary = optimizer_summary({
        "param_groups.a.w.lr": 0.1, "param_groups.b.w.lr": 0.1, "param_groups.c.w.lr": 0.5,
        "state.a.w.momentum_buffer": None,
    })  # fmt: skip
    assert summary.param_groups == [{"lr": 0.1, "params": 2}, {"lr": 0.5, "params": 1}]
    assert summary.type == "SGD" and summary.state_entries == 1
    assert optimizer_summary({"something": 1}) is None


def test_lightning_list_of_two_optimizers():
    one = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    two = {"state": {}, "param_groups": [{"lr": 0.2, "params": [2]}]}
    summary = optimizer_summary([one, two])
    assert [g["lr"] for g in summary.param_groups] == [0.1, 0.2] and [g["params"] for g in summary.param_groups] == [2, 1]


def test_inspect_json_shows_framework_fields(tmp_path):
    result = runner.invoke(app, ["inspect", str(FIXTURES / "lightning" / "last.ckpt"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "ok" and report["step"] == 8 and report["epoch"] == 1
    assert report["args"] == {"lr": 0.05} and report["model"]["tensor_count"] == 4 and report["optimizer"] is not None
    result = runner.invoke(app, ["inspect", str(FIXTURES / "hf_trainer" / "checkpoint-2" / "training_args.bin"), "--json"])
    report = json.loads(result.stdout)
    assert report["status"] == "ok" and report["args"]["learning_rate"] == 0.01
    assert report["args"]["distributed_state"]["device"] == "cpu"


# ------------------------------------------------------------------ validate --deep: model and optimizer only


def _deep(path: Path) -> tuple[int, dict]:
    result = runner.invoke(app, ["validate", "--deep", str(path), "--json"])
    return result.exit_code, json.loads(result.stdout)["results"][0]


def test_a_default_lightning_checkpoint_passes_deep_validation(tmp_path):
    torch = pytest.importorskip("torch")
    first = FIXTURES / "lightning" / "epoch=0-step=4-val_loss=0.56.ckpt"
    root = torch.load(first, weights_only=True)
    kth = [v["kth_value"] for v in root["callbacks"].values()]
    assert kth and torch.isinf(kth[0])  # the fixture holds Lightning's deliberate inf
    code, result = _deep(first)
    assert code == 0 and result["status"] == "valid" and result["finite"] is True and result["findings"] == []


def test_a_nan_in_a_lightning_state_dict_still_fails(tmp_path):
    torch = pytest.importorskip("torch")
    source = FIXTURES / "lightning" / "epoch=0-step=4-val_loss=0.56.ckpt"
    root = torch.load(source, weights_only=True)
    root["state_dict"]["net.0.weight"][0, 0] = float("nan")
    damaged = tmp_path / "epoch=0-step=4-val_loss=0.56.ckpt"
    torch.save(root, damaged)
    code, result = _deep(damaged)
    assert code == 1 and result["finite"] is False
    assert any("state_dict.net.0.weight" in f and "1 NaN" in f for f in result["findings"])
    assert not any("callbacks" in f for f in result["findings"])


def test_an_inf_in_an_optimizer_state_fails(tmp_path):
    torch = pytest.importorskip("torch")
    root = torch.load(FIXTURES / "loose" / "tutorial.tar", weights_only=True)
    first = next(iter(root["optimizer_state_dict"]["state"].values()))
    first["momentum_buffer"].view(-1)[0] = float("inf")
    path = tmp_path / "tutorial.tar"
    torch.save(root, path)
    code, result = _deep(path)
    assert code == 1 and any("optimizer_state_dict" in f and "1 Inf" in f for f in result["findings"])


@pytest.mark.parametrize("rel", ["hf_trainer/checkpoint-2/training_args.bin",
                                 "deepspeed/global_step5/zero_pp_rank_0_mp_rank_00_optim_states.pt"])  # fmt: skip
def test_files_with_framework_records_pass_deep_validation(tmp_path, rel):
    """torch.load(weights_only=True) loads them with the inert records in place of the real classes."""
    path = tmp_path / Path(rel).name
    shutil.copyfile(FIXTURES / rel, path)
    code, result = _deep(path)
    assert code == 0 and result["status"] == "valid" and result["finite"] is True, result


@pytest.mark.parametrize("step", [10, 20])
def test_torchtitan_older_step_is_a_zero_d_tensor_in_dcp(step):
    ckpt = read_checkpoint(FIXTURES / f"torchtitan_bytesio/checkpoint/step-{step}")
    assert ckpt.root["train_state"]["step"].dtype == "int32"
    meta = summarize(ckpt)
    assert (meta.step, meta.step_key) == (step, "train_state.step")


def test_a_damaged_dcp_step_tensor_gives_no_step(tmp_path):
    from ckptctl.formats import dcp

    source = FIXTURES / "torchtitan_bytesio/checkpoint/step-10"
    copy = tmp_path / "step-10"
    shutil.copytree(source, copy)
    metadata = dcp._load_metadata(copy)
    _fqn, _offset, rel, start, length = next(i for i in dcp._storage_items(metadata) if i[0] == "train_state.step")
    shard = copy / rel
    data = bytearray(shard.read_bytes())
    record = data.index(b"archive/data/0", start)  # the tensor's one storage record inside the item
    end = data.index(b"PK", record + 14)
    data[end - 1] ^= 0xFF  # flip the element's last byte: its CRC-32 no longer matches
    shard.write_bytes(bytes(data))
    assert dcp.scalar_bytes(copy, {"train_state.step"}) == {}
    meta = summarize(read_checkpoint(copy))
    assert meta.step is None
