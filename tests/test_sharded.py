"""ckptctl.sharded: DCP directories read safely, committed atomically, loaded with resharding."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from ckptctl import sharded
from ckptctl.catalog import STATUS_OK, STATUS_PARTIAL, scan
from ckptctl.errors import PartialCheckpoint, SaveError, UnreadableCheckpoint, UnsafeCheckpoint
from ckptctl.integrity import validate_file
from ckptctl.naming import Kind, format_name, parse
from ckptctl.reader import read_checkpoint
from ckptctl.retention import Policy, plan_retention
from tests.factories import make_state, write_dcp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_directory_names_share_the_grammar():
    assert parse("rolling_step_000500", directory=True).step == 500
    assert parse("epoch_00001", directory=True).epoch == 1
    assert parse("latest", directory=True).kind is Kind.LATEST
    assert parse("best_model_previous", directory=True).kind is Kind.BEST_PREVIOUS
    assert parse("rolling_step_000500.tmp", directory=True).kind is Kind.PARTIAL
    assert parse("rolling_step_000500.pt", directory=True).kind is Kind.OTHER
    assert parse("latest").kind is Kind.OTHER  # a *file* named latest is not a checkpoint
    assert format_name(Kind.ROLLING, step=5, directory=True) == "rolling_step_000005"


def test_inventory_and_values_from_metadata(tmp_path):
    state = make_state(step=500, epoch=3, val_loss=0.25)
    ckpt = read_checkpoint(write_dcp(tmp_path / "rolling_step_000500", state))
    assert ckpt.format == "dcp"
    tensors = dict(ckpt.tensors())
    for name, tensor in state["model"].items():
        ref = tensors[f"model.{name}"]
        assert (ref.shape, ref.dtype, ref.nbytes) == (tuple(tensor.shape), "float32", tensor.nbytes)
    exp_avg = state["optimizer"]["state"][0]["exp_avg"]
    assert tensors["optimizer.state.0.exp_avg"].shape == tuple(exp_avg.shape)
    root = ckpt.root
    assert (root["step"], root["epoch"], root["val_loss"]) == (500, 3, 0.25)
    assert root["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)  # int-keyed levels are lists again
    assert root["args"]["data_path"] == "/data/train"
    assert ckpt.size_bytes == sum(p.stat().st_size for p in (tmp_path / "rolling_step_000500").iterdir())


def test_directory_without_metadata_is_partial(tmp_path):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    (path / ".metadata").unlink()
    with pytest.raises(PartialCheckpoint):
        read_checkpoint(path)
    (entry,) = scan(tmp_path)
    assert entry.status()[0] == STATUS_PARTIAL
    assert not validate_file(path).valid


def test_missing_or_short_shard_file_is_unreadable(tmp_path):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    (shard,) = path.glob("*.distcp")
    os.truncate(shard, shard.stat().st_size - 10)
    with pytest.raises(UnreadableCheckpoint, match="truncated: shard file"):
        read_checkpoint(path)
    shard.unlink()
    with pytest.raises(UnreadableCheckpoint, match="missing shard file"):
        read_checkpoint(path)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_metadata_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    (path / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": _Exploit(marker)}))
    with pytest.raises(UnsafeCheckpoint, match="os.system|posix.system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_storage_path_outside_the_directory_is_unsafe(tmp_path):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    data = (path / ".metadata").read_bytes()
    (path / ".metadata").write_bytes(data.replace(b"\x8c\x0c__0_0.distcp", b"\x8c\x0c../0_0.distc"))
    with pytest.raises(UnsafeCheckpoint, match="leaves the checkpoint directory"):
        read_checkpoint(path)


def test_chunk_problems_found_by_validate(tmp_path):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    assert sharded.chunk_problems(path) == []
    assert validate_file(path).valid
    # a chunk list that covers only part of a tensor: rewrite one size in the pickle
    data = (path / ".metadata").read_bytes()
    root = sharded._load_metadata(path)
    weight = root.fields["state_dict_metadata"]["model.0.weight"]
    assert weight.fields["size"] == (16, 8)
    patched = data.replace(b"K\x10K\x08\x86", b"K\x0fK\x08\x86", 1)  # the first (16, 8): the tensor's size
    (path / ".metadata").write_bytes(patched)
    assert any("chunks hold" in p for p in sharded.chunk_problems(path))


def test_failed_save_leaves_only_a_partial_temp_directory(tmp_path):
    with pytest.raises(SaveError):
        sharded.save_directory({"bad": lambda: None}, tmp_path, "rolling_step_000001")
    names = {p.name for p in tmp_path.iterdir()}
    assert "rolling_step_000001" not in names
    assert all(e.status()[0] == STATUS_PARTIAL for e in scan(tmp_path))


def test_commit_replaces_an_existing_directory_whole(tmp_path):
    sharded.save_directory({"w": torch.zeros(3), "step": 1}, tmp_path, "best_model")
    sharded.save_directory({"w": torch.ones(3), "step": 2}, tmp_path, "best_model", previous="best_model_previous")
    assert read_checkpoint(tmp_path / "best_model").root["step"] == 2
    assert read_checkpoint(tmp_path / "best_model_previous").root["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model", "best_model_previous"]


def test_remove_directory_never_leaves_a_listed_half(tmp_path, monkeypatch):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    calls = []
    real_rmtree = sharded.shutil.rmtree

    def interrupted(target, *a, **k):
        calls.append(Path(target).name)
        raise OSError("interrupted")

    monkeypatch.setattr(sharded.shutil, "rmtree", interrupted)
    with pytest.raises(OSError):
        sharded.remove_directory(path)
    assert calls == ["rolling_step_000001.deleting.tmp"]
    assert [e.kind for e in scan(tmp_path)] == [Kind.PARTIAL]  # the name is gone before any file is
    monkeypatch.setattr(sharded.shutil, "rmtree", real_rmtree)
    sharded.remove_directory(tmp_path / "rolling_step_000001.deleting.tmp")
    assert list(tmp_path.iterdir()) == []


def test_retention_keeps_what_a_pointer_names(tmp_path):
    for step in (1, 2, 3):
        write_dcp(tmp_path / f"rolling_step_00000{step}", {"w": torch.zeros(2), "step": step})
    sharded.set_pointer(tmp_path, Kind.LATEST, "rolling_step_000003")
    sharded.set_pointer(tmp_path, Kind.LATEST, "rolling_step_000001", backup=Kind.LATEST_BACKUP)
    assert os.readlink(tmp_path / "latest_backup") == "rolling_step_000003"
    plan = plan_retention(scan(tmp_path), Policy(keep_rolling=1))
    assert [d.entry.name for d in plan.remove] == ["rolling_step_000002"]
    kept = {d.entry.name: d.reasons for d in plan.keep}
    assert "latest points here" in kept["rolling_step_000001"]
