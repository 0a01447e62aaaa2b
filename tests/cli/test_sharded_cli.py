"""The CLI commands on a directory of sharded (DCP) checkpoints: list, inspect, validate, du, prune,
compare (without values) and restore, each through typer's CliRunner against the real app."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ckptctl.cli.app import app
from ckptctl.training.manager import CheckpointManager, build_state
from tests.factories import SystemCall, write_dcp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """rolling 100..300 (latest -> 300, latest_backup -> 200), best_model(+previous), epoch_00001."""
    directory = tmp_path_factory.mktemp("dcp") / "checkpoints"
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    mgr = CheckpointManager(directory, keep_last_n=10, format="dcp")
    for step in (100, 200, 300):
        mgr.save(build_state(step=step, epoch=0, model=model, val_loss=1.0 / step), step=step)
    mgr.save_best(build_state(step=200, epoch=0, model=model), step=200, val_loss=0.5)
    mgr.save_best(build_state(step=300, epoch=0, model=model), step=300, val_loss=0.4)
    mgr.save_epoch(build_state(step=300, epoch=1, model=model), epoch=1)
    return directory


@pytest.fixture
def layout(saved, tmp_path) -> Path:
    """A private copy (symlinks kept) that a test may damage."""
    copy = tmp_path / "checkpoints"
    shutil.copytree(saved, copy, symlinks=True)
    return copy


def invoke(*args: str):
    return runner.invoke(app, [*args])


def _json(result) -> dict:
    assert result.stdout, result.output
    return json.loads(result.stdout)


def test_list_shows_directories_with_steps_and_partials(layout):
    (layout / "rolling_step_000400.tmp").mkdir()
    write_dcp(layout / "rolling_step_000500", {"w": torch.zeros(2), "step": 500})
    (layout / "rolling_step_000500" / ".metadata").unlink()
    result = invoke("list", str(layout), "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in _json(result)["checkpoints"]}
    assert rows["latest"]["step"] == 300 and rows["latest"]["status"] == "ok"
    assert rows["latest_backup"]["step"] == 200
    assert rows["best_model"]["val_loss"] == 0.4 and rows["best_model_previous"]["val_loss"] == 0.5
    assert rows["epoch_00001"]["epoch"] == 1
    assert rows["rolling_step_000400.tmp"]["status"] == "partial"
    assert rows["rolling_step_000500"]["status"] == "partial"  # named, but no .metadata: never ok
    assert rows["rolling_step_000100"]["size_bytes"] == sum(p.stat().st_size for p in (layout / "rolling_step_000100").iterdir())
    plain = invoke("list", str(layout))
    assert "rolling_step_000300" in plain.stdout and "partial" in plain.stdout


def test_inspect_shows_the_tensor_inventory(saved):
    result = invoke("inspect", str(saved / "latest"), "--tensors", "--json")
    assert result.exit_code == 0, result.output
    report = _json(result)
    assert (report["format"], report["step"], report["status"]) == ("dcp", 300, "ok")
    tensors = {t["name"]: t for t in report["tensors"]}
    assert tensors["model.weight"]["shape"] == [3, 4] and tensors["model.weight"]["nbytes"] == 48
    assert tensors["model.bias"]["dtype"] == "float32"


def test_validate_good_and_damaged(layout):
    good = invoke("validate", str(layout))
    assert good.exit_code == 0, good.output
    assert invoke("validate", str(layout / "epoch_00001")).exit_code == 0
    (shard,) = (layout / "rolling_step_000100").glob("*.distcp")
    shard.unlink()
    bad = invoke("validate", str(layout), "--json")
    assert bad.exit_code == 1
    verdicts = {f["name"]: f for f in _json(bad)["results"]}
    assert not verdicts["rolling_step_000100"]["valid"]
    assert "missing shard file" in " ".join(verdicts["rolling_step_000100"]["problems"])
    assert verdicts["rolling_step_000200"]["valid"]


def test_du_counts_a_pointed_to_directory_once(saved):
    report = _json(invoke("du", str(saved), "--json"))
    sizes = [sum(p.stat().st_size for p in d.iterdir()) for d in saved.iterdir() if d.is_dir() and not d.is_symlink()]
    assert report["total"]["apparent_bytes"] == sum(sizes)
    assert report["counts"]["rolling"] == 3


def test_prune_removes_directories_but_never_what_latest_names(layout):
    result = invoke("prune", str(layout), "--keep-rolling", "1", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert _json(result)["removed"] == ["rolling_step_000100"]
    assert not (layout / "rolling_step_000100").exists()
    assert (layout / "rolling_step_000200").is_dir()  # latest_backup points here
    assert not any(p.name.endswith(".tmp") for p in layout.iterdir())


def test_compare_without_values(saved):
    result = invoke("compare", str(saved / "latest_backup"), str(saved / "latest"), "--json")
    assert result.exit_code == 1  # different steps
    report = _json(result)
    assert report["a"]["format"] == "dcp" and (report["a"]["step"], report["b"]["step"]) == (200, 300)
    values = invoke("compare", str(saved / "latest_backup"), str(saved / "latest"), "--values", "--json")
    assert values.exit_code == 1, values.output  # issue 11: --values works on DCP directories
    doc = _json(values)
    assert doc["level"] == "values" and doc["values"]["compared"] > 0 and not doc["values"]["not_compared"]
    same = invoke("compare", str(saved / "latest"), str(saved / "latest"), "--values")
    assert same.exit_code == 0, same.output


def test_restore_repoints_a_dangling_latest(layout):
    os.unlink(layout / "latest")
    os.symlink("rolling_step_000999", layout / "latest")
    result = invoke("restore", str(layout), "--yes", "--json")
    assert result.exit_code == 0, result.output
    # the newest valid checkpoint: rolling 300, or epoch_00001 (also step 300) when its save fell in a
    # later second (equal save times prefer the rolling kind)
    from ckptctl.layouts.catalog import scan
    from ckptctl.ops.resolve import saved_at

    when = {e.name: saved_at(e) for e in scan(layout) if e.name in ("rolling_step_000300", "epoch_00001")}
    expected = "epoch_00001" if when["epoch_00001"] > when["rolling_step_000300"] else "rolling_step_000300"
    assert os.readlink(layout / "latest") == expected
    assert _json(result)["actions"][0]["mode"] == "symlink"


def test_hostile_metadata_is_unsafe_everywhere_and_never_runs(layout, tmp_path):
    marker = tmp_path / "pwned"
    (layout / "rolling_step_000100" / ".metadata").write_bytes(pickle.dumps(SystemCall(marker)))
    rows = {r["name"]: r for r in _json(invoke("list", str(layout), "--json"))["checkpoints"]}
    assert rows["rolling_step_000100"]["status"] == "unsafe"
    inspected = invoke("inspect", str(layout / "rolling_step_000100"), "--json")
    assert inspected.exit_code == 1 and "system" in " ".join(_json(inspected)["unsafe_globals"])
    assert invoke("validate", str(layout / "rolling_step_000100")).exit_code == 1
    assert invoke("compare", str(layout / "rolling_step_000100"), str(layout / "latest")).exit_code == 1
    assert invoke("prune", str(layout), "--keep-rolling", "1", "--keep-best-k", "1", "--dry-run").exit_code == 0
    assert not marker.exists()
