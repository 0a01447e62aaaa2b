"""ckptctl export: the command's exit codes, JSON summary, dry run and symbolic sources."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests.factories import write_hostile_checkpoint


def _run(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def _state(step: int = 5) -> dict:
    return {"step": step, "epoch": 1, "model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}}


def test_export_writes_and_summarises_as_json(tmp_path):
    torch.save(_state(), tmp_path / "a.pt")
    result = _run(str(tmp_path / "a.pt"), "--to", str(tmp_path / "out.safetensors"), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tensors"] == 2 and doc["bytes"] == 32 and doc["dtypes"] == {"float32": 2} and not doc["dry_run"]
    assert doc["shards"] == [{"file": "model.safetensors", "tensors": 2, "bytes": 32}]
    assert doc["checksums"]["algorithm"] == "crc32" and set(doc["checksums"]["tensors"]) == {"w", "b"}
    assert torch.equal(load_file(tmp_path / "out.safetensors")["w"], _state()["model"]["w"])


def test_dry_run_lists_and_writes_nothing(tmp_path):
    torch.save(_state(), tmp_path / "a.pt")
    result = _run(str(tmp_path / "a.pt"), "--to", str(tmp_path / "out"), "--dry-run", "--max-shard-size", "20")
    assert result.exit_code == 0, result.output
    assert "would export 2 tensors" in result.stdout and "model-00001-of-00002.safetensors" in result.stdout
    assert not (tmp_path / "out").exists()


def test_latest_in_dir_is_resolved_like_resume(tmp_path):
    from ckptctl import CheckpointManager

    mgr = CheckpointManager(tmp_path / "run", keep_last_n=3)
    mgr.save(_state(10), step=10)
    mgr.save(_state(20), step=20)
    mgr.close() if hasattr(mgr, "close") else None
    result = _run("latest", "--dir", str(tmp_path / "run"), "--to", str(tmp_path / "out.safetensors"), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["source"].endswith("latest.pt") and doc["metadata"]["step"] == "20"


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    torch.save(_state(), tmp_path / "a.pt")
    (tmp_path / "taken.safetensors").write_bytes(b"x")
    cases = [
        ([str(tmp_path / "missing.pt"), "--to", str(tmp_path / "o.safetensors")], "no such file"),
        ([str(tmp_path / "a.pt"), "--to", str(tmp_path / "taken.safetensors")], "--force"),
        ([str(tmp_path / "a.pt"), "--to", str(tmp_path / "o.safetensors"), "--dtype", "int4"], "choose bf16"),
        ([str(tmp_path / "a.pt"), "--to", str(tmp_path / "o.safetensors"), "--key", "nope"], "no such key"),
        ([str(tmp_path / "a.pt"), "--to", str(tmp_path / "o.safetensors"), "--max-shard-size", "lots"], "bad size"),
    ]
    for args, text in cases:
        result = _run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert text in result.stderr and "Traceback" not in result.output, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_hostile_source_exits_1_and_writes_nothing(tmp_path):
    write_hostile_checkpoint(tmp_path / "evil.pt", tmp_path / "pwned")
    result = _run(str(tmp_path / "evil.pt"), "--to", str(tmp_path / "o.safetensors"))
    assert result.exit_code == 1, result.output
    assert "unsafe" in result.stderr and not (tmp_path / "pwned").exists() and not (tmp_path / "o.safetensors").exists()


def test_one_tensor_reads_in_the_singular(tmp_path):
    torch.save({"step": 1, "model": {"w": torch.ones(2)}}, tmp_path / "a.pt")
    result = _run(str(tmp_path / "a.pt"), "--to", str(tmp_path / "o.safetensors"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would export 1 tensor (" in result.stdout
