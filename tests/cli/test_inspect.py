"""ckptctl inspect: the report and --json agree with torch; unsafe files exit 1 naming the global."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests import hostile
from tests.factories import make_state, write_checkpoint

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["inspect", *args])


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("inspect") / "rolling_step_000777.pt",
                            make_state(step=777, epoch=4, val_loss=0.3, train_loss=0.4, hidden=24, note="extra"))  # fmt: skip


def test_json_report_matches_torch(seed):
    import torch

    result = invoke(str(seed), "--json", "--tensors")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    loaded = torch.load(seed, weights_only=False)
    assert (doc["status"], doc["kind"], doc["format"]) == ("ok", "rolling", "zip")
    assert (doc["step"], doc["epoch"], doc["val_loss"], doc["train_loss"]) == (777, 4, 0.3, 0.4)
    assert doc["args"] == loaded["args"]
    assert doc["dataloader_state"] == loaded["dataloader_state"]
    assert doc["rng_states"] == ["numpy", "python", "torch"]
    assert doc["model"]["parameter_count"] == sum(t.numel() for t in loaded["model"].values())
    assert doc["model"]["tensor_count"] == len(loaded["model"])
    assert doc["optimizer"]["type"] == "AdamW"
    assert doc["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.95]
    assert doc["optimizer"]["state_entries"] == len(loaded["optimizer"]["state"])
    assert doc["extra"] == {"note": "extra"}
    names = {t["name"]: t for t in doc["tensors"]}
    weight = loaded["model"]["0.weight"]
    assert names["model.0.weight"]["shape"] == list(weight.shape) and names["model.0.weight"]["dtype"] == "float32"
    assert len(doc["tensors"]) == sum(1 for _ in _torch_tensors(loaded))


def _torch_tensors(loaded):
    import torch

    from ckptctl.formats.reader import iter_tensors

    return iter_tensors(loaded, torch.is_tensor)


def test_text_report(seed):
    result = invoke(str(seed))
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith("rolling_step_000777.pt  (rolling,")
    for fragment in ("step            777", "val_loss        0.3", "rng_states      numpy, python, torch",
                     "batch_size", "dataloader_state", "optimizer (AdamW)", "betas=[0.9, 0.95]", "other keys",
                     "note"):  # fmt: skip
        assert fragment in out, fragment
    assert "tensors (" not in out
    with_tensors = invoke(str(seed), "-t").stdout
    assert "model.0.weight" in with_tensors and "float32" in with_tensors


def test_legacy_and_numpy_and_namespace(tmp_path):
    import argparse

    import numpy as np
    import torch

    state = {"step": 5, "val_loss": np.float64(0.125), "args": argparse.Namespace(lr=0.5), "model": {"w": torch.ones(3, dtype=torch.bfloat16)}}
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    doc = json.loads(invoke(str(tmp_path / "old.pt"), "--json").stdout)
    assert doc["format"] == "legacy" and doc["val_loss"] == 0.125 and doc["args"] == {"lr": 0.5}
    assert doc["model"]["bytes_by_dtype"] == {"bfloat16": 6}
    assert any("no checksums" in n for n in doc["notes"])


@pytest.mark.parametrize("payload", hostile.PAYLOADS, ids=lambda p: p.name)
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_hostile_file_exit_1_names_the_global_and_runs_nothing(tmp_path, payload, container):
    marker = tmp_path / "pwned"
    data = payload.build(marker)
    path = hostile.write_hostile(tmp_path / "h.pt", data, container)
    result = invoke(str(path))
    assert result.exit_code == 1
    assert "unsafe: references" in result.stderr and payload.reported in result.stderr
    assert "Traceback" not in result.output
    doc = json.loads(invoke(str(path), "--json").stdout)
    assert doc["status"] == "unsafe" and payload.reported in doc["unsafe_globals"]
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(hostile.MISUSES))
def test_misuse_exit_1(tmp_path, name):
    data, reported = hostile.MISUSES[name]
    result = invoke(str(hostile.torch_zip(tmp_path / "m.pt", data)), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["unsafe_globals"] == [reported]


def test_damaged_file_exit_1(tmp_path, seed):
    (tmp_path / "cut.pt").write_bytes(seed.read_bytes()[:200])
    result = invoke(str(tmp_path / "cut.pt"))
    assert result.exit_code == 1 and "unreadable" in result.stderr and result.stderr.count("\n") == 1
    doc = json.loads(invoke(str(tmp_path / "cut.pt"), "--json").stdout)
    assert doc["status"] == "unreadable" and doc["error"]


@pytest.mark.parametrize(
    ("make", "message"),
    [(lambda p: p / "absent.pt", "no such file"), (lambda p: p, "is a directory"),
     (lambda p: ((p / "a").symlink_to(p / "b"), (p / "b").symlink_to(p / "a")) and p / "a", "symbolic links")],
    ids=["nonexistent", "directory", "symlink-loop"],
)  # fmt: skip
def test_bad_paths_exit_2(tmp_path, make, message):
    result = invoke(str(make(tmp_path)))
    assert result.exit_code == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_permission_denied_exit_2(seed, monkeypatch):
    from ckptctl.layouts import catalog

    monkeypatch.setattr(catalog.os, "access", lambda *a, **k: False)
    result = invoke(str(seed))
    assert result.exit_code == 2 and "permission denied" in result.stderr


def test_an_unreadable_file_is_named_by_the_path_given(tmp_path):
    bad = tmp_path / "sub" / "bad.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    result = invoke(str(bad))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"ckptctl: error: {bad}: unreadable: truncated"), result.stderr


def test_a_damaged_file_of_a_checkpoint_directory_says_unreadable_once(tmp_path):
    """An HF Trainer checkpoint whose optimizer.pt is cut: the directory, the file, the verdict, once each."""
    import shutil
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks" / "hf_trainer" / "checkpoint-2"
    run = tmp_path / "run"
    shutil.copytree(fixture, run / "checkpoint-2")
    optimizer = run / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    result = invoke(str(run / "checkpoint-2"))
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith(f"ckptctl: error: {run / 'checkpoint-2'}: optimizer.pt: unreadable: "), line
    assert line.count("unreadable") == 1
