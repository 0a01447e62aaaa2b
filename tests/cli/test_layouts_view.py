"""inspect and compare on a checkpoint of every layout (issue 11): the framework fixtures, a fake
layout, and damaged or hostile copies. Values are checked against torch / safetensors / DCP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests import hostile
from tests.fake_layouts import FakeRun, make_fake_run, register

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [*args])


def copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst, symlinks=True)
    return dst


def inspect_json(path: Path) -> tuple[int, dict]:
    result = invoke("inspect", str(path), "--json")
    return result.exit_code, json.loads(result.stdout)


def has_layout(name: str) -> bool:
    from ckptctl.layouts import registry

    return any(layout.name == name for layout in registry.layouts())


def needs(layout: str):
    return pytest.mark.skipif(not has_layout(layout), reason=f"layout {layout} not registered on this branch")


# ------------------------------------------------------------------------------------ inspect


@needs("hf-trainer")
def test_inspect_hf_checkpoint(tmp_path):
    from safetensors import safe_open

    run = copy(tmp_path, "hf_trainer")
    code, doc = inspect_json(run / "checkpoint-2")
    assert code == 0, doc
    unit = doc["unit"]
    assert (doc["layout"], doc["kind"], unit["step"], unit["best"], unit["complete"]) == ("hf-trainer", "checkpoint", 2, True, True)
    assert abs(unit["epoch"] - 1 / 3) < 1e-6 and unit["monitor"] == "eval_loss" and "eval_loss" in unit["metrics"]
    contents = {f["name"]: (f["content"], f["format"], f["status"]) for f in unit["files"]}
    assert contents["model.safetensors"] == ("weights", "safetensors", "ok")
    assert contents["optimizer.pt"] == ("optimizer", "zip", "ok")
    assert contents["training_args.bin"][2] == "ok"  # an inert record, not "unsafe"
    assert unit["hparams"]["learning_rate"] == doc["args"]["learning_rate"]
    with safe_open(str(run / "checkpoint-2" / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_slice(k) for k in f.keys()}
        params = sum(_numel(t.get_shape()) for t in tensors.values())
    assert (unit["weights"]["tensor_count"], unit["weights"]["parameter_count"]) == (len(tensors), params)
    assert doc["model"] == unit["weights"] and doc["optimizer"]["type"] == "AdamW"
    text = invoke("inspect", str(run / "checkpoint-2")).stdout
    assert "Hugging Face Trainer" in text and "eval_loss *" in text and "model.safetensors" in text


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@needs("deepspeed")
def test_inspect_deepspeed_tag(tmp_path):
    import torch

    run = copy(tmp_path, "deepspeed")
    code, doc = inspect_json(run / "global_step10")
    assert code == 0, doc
    assert (doc["layout"], doc["unit"]["step"]) == ("deepspeed", 10)
    assert "ds_config" in doc["unit"]["hparams"]
    module = torch.load(run / "global_step10" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert doc["unit"]["weights"]["tensor_count"] == len(module)
    assert doc["unit"]["weights"]["parameter_count"] == sum(t.numel() for t in module.values())


@needs("torchtitan")
def test_inspect_torchtitan_step_keeps_the_flat_optimizer(tmp_path):
    run = copy(tmp_path, "torchtitan")
    code, doc = inspect_json(run / "checkpoint" / "step-20")
    assert code == 0, doc
    assert (doc["layout"], doc["unit"]["step"], doc["format"]) == ("torchtitan", 20, "dcp")
    assert doc["unit"]["weights"]["tensor_count"] == 5  # model FQNs at the top level, optimizer excluded
    optimizer = doc["optimizer"]  # torchtitan's flat FQN keys: no param_groups list, not dropped
    assert optimizer is not None and optimizer["state_entries"] == 5 and optimizer["type"] in ("Adam", "AdamW", "Adam/AdamW")
    assert "optimizer (" in invoke("inspect", str(run / "checkpoint" / "step-20")).stdout


def test_inspect_plain_dcp_directory_keeps_the_flat_optimizer(tmp_path):
    """No layout involved (a lone DCP directory): the optimizer key without param_groups is shown."""
    step = tmp_path / "step-20"
    shutil.copytree(FIXTURES / "torchtitan" / "checkpoint" / "step-20", step)
    from ckptctl.ops.inspection import inspect_file

    doc = inspect_file(step)
    assert doc["optimizer"] is not None and doc["optimizer"]["state_entries"] == 5


@needs("accelerate")
def test_inspect_accelerate_checkpoint(tmp_path):
    run = copy(tmp_path, "accelerate")
    code, doc = inspect_json(run / "checkpoints" / "checkpoint_1")
    assert code == 0, doc
    assert doc["layout"] == "accelerate" and doc["unit"]["weights"]["tensor_count"] == 4
    assert doc["optimizer"]["type"] == "AdamW"
    kinds = {f["name"]: f["content"] for f in doc["unit"]["files"]}
    assert kinds["model.safetensors"] == "weights" and kinds["optimizer.bin"] == "optimizer"


@needs("lightning")
def test_inspect_lightning_file(tmp_path):
    import torch

    run = copy(tmp_path, "lightning_link")
    path = run / "epoch=1-step=8-val_loss=0.57.ckpt"
    code, doc = inspect_json(path)
    assert code == 0, doc
    assert (doc["layout"], doc["unit"]["step"]) == ("lightning", 8)
    state_dict = torch.load(path, weights_only=True)["state_dict"]
    assert doc["unit"]["weights"]["tensor_count"] == len(state_dict)


def test_inspect_safetensors_file_alone(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "model.safetensors"
    shutil.copy(FIXTURES / "loose" / "model.safetensors", path)
    code, doc = inspect_json(path)
    assert code == 0, doc
    assert (doc["unit"]["step"], doc["unit"]["epoch"], doc["format"]) == (120, 3, "safetensors")
    with safe_open(str(path), "pt") as f:
        names = sorted(f.keys())
    listed = json.loads(invoke("inspect", str(path), "--json", "--tensors").stdout)["tensors"]
    assert sorted(t["name"] for t in listed) == names


def test_inspect_fake_layout_unit(tmp_path, monkeypatch):
    register(monkeypatch, FakeRun())
    run = make_fake_run(tmp_path / "run")
    code, doc = inspect_json(run / "ckpt-20")
    assert code == 0, doc
    unit = doc["unit"]
    assert (doc["layout"], unit["step"], unit["best"], unit["protected"]) == ("fake-run", 20, True, "protected: best")
    assert unit["metrics"]["eval_loss"] == 0.5 and unit["hparams"] == {"lr": 0.01}
    assert unit["weights"] == {"tensor_count": 1, "parameter_count": 16, "bytes_by_dtype": {"float32": 64}, "total_bytes": 64}
    assert doc["optimizer"]["param_groups"][0]["lr"] == 0.01
    text = invoke("inspect", str(run / "ckpt-20")).stdout
    assert "eval_loss *" in text and "(* monitored: eval_loss)" in text


def test_long_keys_never_run_into_their_values(tmp_path):
    import torch

    key = "a_rather_long_hyperparameter_name_for_the_scheduler"
    torch.save({"step": 3, "model": {"w": torch.ones(2)}, key: 12345, "args": {key: "VALUE"}}, tmp_path / "latest.pt")
    result = invoke("inspect", str(tmp_path / "latest.pt"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for value in ("12345", "VALUE"):
        index = next(i for i, line in enumerate(lines) if value in line)
        assert key not in lines[index]  # the value is on a line of its own, not glued to the key
        assert lines[index - 1].strip() == key


# ---------------------------------------------------------------------- damaged and hostile units


def fake_run(tmp_path, monkeypatch) -> Path:
    register(monkeypatch, FakeRun())
    return make_fake_run(tmp_path / "run")


def test_truncated_safetensors_in_a_unit(tmp_path, monkeypatch):
    run = fake_run(tmp_path, monkeypatch)
    weights = run / "ckpt-20" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    result = invoke("inspect", str(run / "ckpt-20"))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    error = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "weights.safetensors: unreadable: truncated" in error[0]
    code, doc = inspect_json(run / "ckpt-20")
    assert code == 1 and doc["status"] == "unreadable"
    compared = invoke("compare", str(run / "ckpt-10"), str(run / "ckpt-20"))
    assert compared.exit_code == 1 and "truncated" in compared.stderr and "Traceback" not in compared.output


def test_hostile_file_in_a_unit_is_unsafe_and_never_runs(tmp_path, monkeypatch):
    run = fake_run(tmp_path, monkeypatch)
    marker = tmp_path / "pwned"
    hostile.torch_zip(run / "ckpt-20" / "optim.pt", hostile.system_global(marker))
    code, doc = inspect_json(run / "ckpt-20")
    assert code == 1 and doc["status"] == "unsafe" and "os.system" in doc["unsafe_globals"]
    optim = next(f for f in doc["unit"]["files"] if f["name"] == "optim.pt")
    assert optim["status"] == "unsafe"
    for extra in ([], ["--values"]):
        result = invoke("compare", str(run / "ckpt-10"), str(run / "ckpt-20"), *extra)
        assert result.exit_code == 1 and "unsafe" in result.stderr
    assert not marker.exists()


def test_missing_weights_file(tmp_path, monkeypatch):
    run = fake_run(tmp_path, monkeypatch)
    (run / "ckpt-20" / "weights.safetensors").unlink()
    code, doc = inspect_json(run / "ckpt-20")
    assert code == 1 and doc["status"] == "incomplete"
    assert doc["unit"]["complete"] is False and doc["unit"]["missing"] == ["weights.safetensors"]
    assert doc["unit"]["weights"] is None
    result = invoke("compare", str(run / "ckpt-10"), str(run / "ckpt-20"))
    assert result.exit_code == 1 and "missing weights.safetensors" in result.stderr


# ------------------------------------------------------------------------------------ compare


@needs("hf-trainer")
def test_compare_hf_checkpoints_shows_step_epoch_metrics_and_tensors(tmp_path):
    from safetensors.torch import load_file

    run = copy(tmp_path, "hf_trainer")
    a, b = run / "checkpoint-2", run / "checkpoint-4"
    result = invoke("compare", str(a), str(b), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    fields = {f["field"]: f for f in doc["fields"]}
    assert (fields["step"]["a"], fields["step"]["b"], fields["step"]["delta"]) == (2, 4, 2)
    assert not fields["epoch"]["equal"] and not fields["metrics.eval_loss"]["equal"]
    assert doc["a"]["layout"] == doc["b"]["layout"] == "hf-trainer"
    assert doc["tensors"]["count_a"] == doc["tensors"]["count_b"] == len(load_file(a / "model.safetensors"))
    assert doc["tensors"]["bytes_compared"] is False  # safetensors stores no CRC-32s

    values = json.loads(invoke("compare", str(a), str(b), "--values", "--json").stdout)
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    got = {t["name"]: t for t in values["values"]["tensors"]}
    assert set(got) == set(ta)
    for name, t in got.items():
        expected = float((ta[name].double() - tb[name].double()).abs().max())
        assert abs(t["max_abs"] - expected) <= 1e-12 and t["equal"] == (expected == 0)
    text = invoke("compare", str(a), str(b)).stdout
    assert "metrics.eval_loss" in text and "hf-trainer" in text


@needs("torchtitan")
def test_compare_dcp_values(tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp

    run = copy(tmp_path, "torchtitan")
    a, b = run / "checkpoint" / "step-10", run / "checkpoint" / "step-20"
    plain = invoke("compare", str(a), str(b))
    assert plain.exit_code == 1 and "use --values" in plain.stdout
    result = invoke("compare", str(a), str(b), "--values", "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert not doc["values"]["not_compared"] and doc["values"]["compared"] == 5
    shapes = {"tok_embeddings.weight": (16, 8), "norm.weight": (8,), "output.weight": (16, 8)}
    for name, shape in shapes.items():
        sa, sb = {name: torch.empty(shape)}, {name: torch.empty(shape)}
        dcp.load(sa, checkpoint_id=str(a))
        dcp.load(sb, checkpoint_id=str(b))
        expected = float((sa[name].double() - sb[name].double()).abs().max())
        got = next(t for t in doc["values"]["tensors"] if t["name"] == name)
        assert abs(got["max_abs"] - expected) <= 1e-12
    same = invoke("compare", str(b), str(b), "--values")
    assert same.exit_code == 0, same.output


def test_compare_across_layouts_matches_names(tmp_path):
    """A safetensors file and a torch.save state dict of the same model: weights equal name by name."""
    loose = copy(tmp_path, "loose")
    result = invoke("compare", str(loose / "model.safetensors"), str(loose / "tutorial.tar"), "--values", "--json")
    doc = json.loads(result.stdout)
    assert doc["tensors"]["only_a"] == doc["tensors"]["only_b"] == [] and doc["tensors"]["count_a"] == 4
    assert doc["values"]["compared"] == 4 and doc["values"]["differing"] == 0
    assert result.exit_code == 1  # step 120 vs none: the metadata differs


def test_compare_fake_units(tmp_path, monkeypatch):
    run = fake_run(tmp_path, monkeypatch)
    result = invoke("compare", str(run / "ckpt-10"), str(run / "ckpt-30"), "--values", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    fields = {f["field"]: f for f in doc["fields"]}
    assert (fields["step"]["delta"], fields["metrics.eval_loss"]["a"], fields["metrics.eval_loss"]["b"]) == (20, 0.9, 0.7)
    assert doc["values"]["differing"] == 0 and doc["optimizer"]["groups_a"] == 1
    same = invoke("compare", str(run / "ckpt-10"), str(run / "ckpt-10"), "--values")
    assert same.exit_code == 0, same.output


def test_safetensors_values_are_read_in_bounded_chunks(tmp_path, monkeypatch):
    """Values come through the header offsets, at most chunk_elements x itemsize bytes per read."""
    import os

    import torch

    from ckptctl.ops import compare as compare_module
    from tests.fake_layouts import write_safetensors

    a = write_safetensors(tmp_path / "a.safetensors", {"w": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, dtype=torch.float64)})
    changed = torch.arange(1000, dtype=torch.float32)
    changed[777] = -1.0
    b = write_safetensors(tmp_path / "b.safetensors", {"w": changed, "b": torch.ones(3, dtype=torch.float64)})
    reads = []
    real_pread = os.pread

    def counting_pread(fd, n, offset):
        reads.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(compare_module.os, "pread", counting_pread)
    comparison = compare_module.compare(a, b)
    values = compare_module.compare_values(comparison, chunk_elements=64)
    assert max(reads) <= 64 * 8 and len(reads) >= 1000 // 64
    w = next(t for t in values.tensors if t.name == "w")
    assert (w.equal, w.max_abs) == (False, 777.0 + 1.0)
    assert next(t for t in values.tensors if t.name == "b").equal


def test_dcp_metadata_swapped_after_the_safe_read_is_refused(tmp_path, capfd):
    """DCP's own reader unpickles .metadata again: under an allowlist, so a swapped hostile one never runs."""
    from ckptctl.ops import compare as compare_module

    a, b = tmp_path / "step-10", tmp_path / "step-20"
    shutil.copytree(FIXTURES / "torchtitan" / "checkpoint" / "step-10", a)
    shutil.copytree(FIXTURES / "torchtitan" / "checkpoint" / "step-20", b)
    comparison = compare_module.compare(a, b)
    marker = tmp_path / "pwned"
    (b / ".metadata").write_bytes(hostile.system_global(marker))
    values = compare_module.compare_values(comparison)
    assert not marker.exists()
    assert len(values.not_compared) == 5
    assert all("load failed: " in why and "refused os.system" in why for why in values.not_compared.values())
    assert "Traceback" not in capfd.readouterr().err  # DCP's logged traceback is kept off the terminal


def test_compare_run_directories_means_their_newest_complete_units(tmp_path, monkeypatch):
    register(monkeypatch, FakeRun())
    a = make_fake_run(tmp_path / "a", steps=(10, 20))
    b = make_fake_run(tmp_path / "b", steps=(10, 20, 30))
    (b / "ckpt-30" / "optim.pt").unlink()  # incomplete: not chosen
    doc = json.loads(invoke("compare", str(a), str(b), "--json").stdout)
    assert (doc["a"]["path"], doc["b"]["path"]) == (str(a / "ckpt-20"), str(b / "ckpt-20"))
    empty = tmp_path / "c"
    make_fake_run(empty, steps=(5,))
    (empty / "ckpt-5" / "state.json").unlink()
    result = invoke("compare", str(a), str(empty))
    assert result.exit_code == 2 and "no complete Fake Trainer checkpoint" in result.stderr
