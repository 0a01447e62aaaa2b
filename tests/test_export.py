"""ckptctl.ops.export: weights as safetensors from every source, equal to a trusted torch.load, safely."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ckptctl.errors import BadInputError, CheckpointError
from ckptctl.ops import export as export_module
from ckptctl.ops.export import export, plan_export
from tests.factories import write_hostile_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "frameworks"
REPO = Path(__file__).resolve().parent.parent


def _load_dir(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an exported directory, through its index when sharded."""
    index = out / "model.safetensors.index.json"
    if not index.exists():
        return load_file(out / "model.safetensors")
    merged: dict[str, torch.Tensor] = {}
    for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        merged.update(load_file(out / name))
    return merged


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor.contiguous()), name


def _flat(tree, prefix=""):
    """Dotted names of a nested dict of tensors, as the safe reader walks it."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flat(value, name))
        elif torch.is_tensor(value):
            out[name] = value
    return out


@pytest.fixture
def awkward_state():
    """A model with a view, a transpose, a slice with a storage offset, tied weights and an int buffer."""
    torch.manual_seed(0)
    emb = torch.randn(10, 4)
    model = {
        "lin.weight": torch.randn(8, 4), "lin.bias": torch.randn(8),
        "embed.weight": emb, "head.weight": emb,  # tied: one storage, two names
        "slice": emb[2:5, 1:3], "transposed": emb.t(), "steps": torch.arange(6, dtype=torch.int64),
        "half": torch.randn(3, 3).half(), "empty": torch.zeros(0, 5),
    }  # fmt: skip
    return {"step": 7, "epoch": 2, "model": model, "optimizer": {"state": {}, "param_groups": []}}


def test_a_torch_file_exports_its_model_equal_to_torch_load(tmp_path, awkward_state):
    torch.save(awkward_state, tmp_path / "a.pt")
    plan = export(tmp_path / "a.pt", tmp_path / "out.safetensors")
    trusted = torch.load(tmp_path / "a.pt", weights_only=True)["model"]
    _assert_same(load_file(tmp_path / "out.safetensors"), trusted)
    assert plan.selected == "model" and len(plan.checksums) == len(trusted)
    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["step"] == "7" and meta["epoch"] == "2" and meta["ckptctl_version"]


def test_tied_weights_keep_both_names_with_their_own_bytes(tmp_path, awkward_state):
    torch.save(awkward_state, tmp_path / "a.pt")
    export(tmp_path / "a.pt", tmp_path / "out.safetensors")
    got = load_file(tmp_path / "out.safetensors")
    assert torch.equal(got["embed.weight"], got["head.weight"])
    assert got["embed.weight"].data_ptr() != got["head.weight"].data_ptr()


def test_a_legacy_file_exports_too(tmp_path, awkward_state):
    torch.save(awkward_state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    export(tmp_path / "old.pt", tmp_path / "out.safetensors")
    _assert_same(load_file(tmp_path / "out.safetensors"), torch.load(tmp_path / "old.pt", weights_only=True)["model"])


def test_shards_and_index_like_save_pretrained(tmp_path, awkward_state):
    torch.save(awkward_state, tmp_path / "a.pt")
    plan = export(tmp_path / "a.pt", tmp_path / "out", max_shard_size=200)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)] and len(files) > 2
    assert index["metadata"]["total_size"] == plan.nbytes and set(index["weight_map"]) == set(awkward_state["model"])
    assert all(shard.nbytes <= 200 or len(shard.tensors) == 1 for shard in plan.shards)
    _assert_same(_load_dir(tmp_path / "out"), awkward_state["model"])


def test_one_shard_in_a_directory_is_model_safetensors_without_index(tmp_path, awkward_state):
    torch.save(awkward_state, tmp_path / "a.pt")
    export(tmp_path / "a.pt", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors"]


def test_a_single_file_that_needs_shards_is_refused(tmp_path, awkward_state):
    torch.save(awkward_state, tmp_path / "a.pt")
    with pytest.raises(BadInputError, match="give a directory"):
        plan_export(tmp_path / "a.pt", tmp_path / "out.safetensors", max_shard_size=100)


def test_dtype_converts_floating_tensors_only(tmp_path, awkward_state):
    torch.save(awkward_state, tmp_path / "a.pt")
    export(tmp_path / "a.pt", tmp_path / "out.safetensors", dtype="bf16")
    got = load_file(tmp_path / "out.safetensors")
    assert got["steps"].dtype == torch.int64 and torch.equal(got["steps"], awkward_state["model"]["steps"])
    for name, tensor in awkward_state["model"].items():
        if tensor.is_floating_point():
            assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], tensor.to(torch.bfloat16)), name
    with pytest.raises(BadInputError, match="choose bf16, fp16 or fp32"):
        plan_export(tmp_path / "a.pt", tmp_path / "x.safetensors", dtype="int8")


def test_prefixes_and_name_collisions(tmp_path):
    torch.save({"state_dict": {"model.a": torch.ones(2), "model.b": torch.zeros(2)}}, tmp_path / "l.ckpt")
    export(tmp_path / "l.ckpt", tmp_path / "out.safetensors", strip_prefix="model.", add_prefix="net.")
    assert sorted(load_file(tmp_path / "out.safetensors")) == ["net.a", "net.b"]
    torch.save({"model": {"module.a": torch.ones(2), "a": torch.zeros(2)}}, tmp_path / "c.pt")
    with pytest.raises(BadInputError, match="two tensors would be named a"):
        plan_export(tmp_path / "c.pt", tmp_path / "x.safetensors", strip_prefix="module.")


def test_key_picks_any_sub_tree(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "ema": {"model": {"w": torch.full((2,), 3.0)}}}
    torch.save(state, tmp_path / "a.pt")
    plan = export(tmp_path / "a.pt", tmp_path / "out.safetensors", key="ema.model")
    assert plan.selected == "ema.model" and torch.equal(load_file(tmp_path / "out.safetensors")["w"], state["ema"]["model"]["w"])
    with pytest.raises(BadInputError, match="--key nope: no such key"):
        plan_export(tmp_path / "a.pt", tmp_path / "x.safetensors", key="nope")


def test_a_flat_state_dict_is_exported_whole(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "a.bias": torch.randn(3)}
    torch.save(state, tmp_path / "model.pt")
    export(tmp_path / "model.pt", tmp_path / "out.safetensors")
    _assert_same(load_file(tmp_path / "out.safetensors"), state)


# ------------------------------------------------------------------------------- framework fixtures


def _trusted(kind: str, src: Path) -> dict[str, torch.Tensor]:
    """What the framework's own loader gives (torch.load(weights_only=True), safetensors, dcp.load)."""
    if kind == "safetensors-dir":
        index = next(src.glob("*.safetensors.index.json"), None)
        if index is None:
            return load_file(src / "model.safetensors")
        merged = {}
        for name in set(json.loads(index.read_text())["weight_map"].values()):
            merged.update(load_file(src / name))
        return merged
    if kind == "bin-dir":
        return torch.load(src / "pytorch_model.bin", weights_only=True)
    if kind == "deepspeed":
        return torch.load(src / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    if kind == "lightning":
        return torch.load(src, weights_only=True)["state_dict"]
    if kind == "tutorial":
        return torch.load(src, weights_only=True)["model_state_dict"]
    if kind == "file":
        return torch.load(src, weights_only=True)
    if kind == "safetensors":
        return load_file(src)
    raise AssertionError(kind)


@pytest.mark.parametrize("rel, kind", [
    ("hf_trainer/checkpoint-4", "safetensors-dir"),
    ("hf_trainer_sharded/checkpoint-2", "safetensors-dir"),
    ("hf_trainer_bin/checkpoint-4", "bin-dir"),
    ("accelerate/checkpoints/checkpoint_1", "safetensors-dir"),
    ("deepspeed/global_step10", "deepspeed"),
    ("lightning/epoch=1-step=8-val_loss=0.57.ckpt", "lightning"),
    ("lightning_link/last.ckpt", "lightning"),
    ("loose/tutorial.tar", "tutorial"),
    ("loose/model.pt", "file"),
    ("loose/legacy.pt", "file"),
    ("loose/pytorch_model.bin", "file"),
    ("loose/model.safetensors", "safetensors"),
])  # fmt: skip
def test_every_layout_exports_equal_to_its_trusted_load(tmp_path, rel, kind):
    src = FIXTURES / rel
    export(src, tmp_path / "out.safetensors")
    _assert_same(load_file(tmp_path / "out.safetensors"), _trusted(kind, src))


def test_a_checkpoint_directory_records_what_its_layout_says(tmp_path):
    """An HF checkpoint-N has no step in its weights: it comes from trainer_state.json through the layout."""
    plan = export(FIXTURES / "hf_trainer" / "checkpoint-4", tmp_path / "out.safetensors")
    state = json.loads((FIXTURES / "hf_trainer" / "checkpoint-4" / "trainer_state.json").read_text())
    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["layout"] == "hf-trainer" and meta["step"] == str(state["global_step"]) == "4"
    assert float(meta["epoch"]) == state["epoch"] and "eval_loss" in meta and plan.metadata == meta


@pytest.mark.parametrize("rel", ["torchtitan/checkpoint/step-20", "torchtitan_bytesio/checkpoint/step-20"])
def test_a_dcp_checkpoint_exports_its_model_weights(tmp_path, rel):
    import torch.distributed.checkpoint as dcp

    src = tmp_path / "src"
    shutil.copytree(FIXTURES / rel, src)
    try:
        plan = export(src, tmp_path / "out.safetensors")
    except CheckpointError as exc:  # the 2024 form's BytesIO values until they are read as inert records
        pytest.skip(f"safe reader refuses this DCP checkpoint: {exc.reason}")
    got = load_file(tmp_path / "out.safetensors")
    fqn_of = {t.name: t.source_name for t in plan.tensors}  # exported name -> DCP's flattened key
    state = {fqn_of[name]: torch.empty_like(t) for name, t in got.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=src)  # DCP's own loader, keys as DCP flattens them
    _assert_same(got, {name: state[fqn_of[name]] for name in got})
    assert not any(n.startswith(("optimizer", "lr_scheduler", "train_state")) for n in got), sorted(got)
    assert plan.selected in ("model", "<root>")


TWO_RANK_WORKER = '''
import sys, warnings
warnings.filterwarnings("ignore")
import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (2,))
full = torch.arange(6 * 5, dtype=torch.float32).reshape(6, 5)
bias = torch.arange(4, dtype=torch.float32) * 0.5
state = {"model": {"w": distribute_tensor(full, mesh, [Shard(0)]), "b": distribute_tensor(bias, mesh, [Shard(0)])},
         "step": 12}
dcp.save(state, checkpoint_id=sys.argv[1])
dist.barrier()  # torch can abort a rank that destroys its group right after a collective
dist.destroy_process_group()
'''


def test_a_two_rank_dcp_save_is_consolidated_into_full_tensors(tmp_path):
    import socket

    worker = tmp_path / "worker.py"
    worker.write_text(TWO_RANK_WORKER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(port), "--max-restarts", "0",
               str(worker), str(tmp_path / "ckpt")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout}\n{done.stderr}"
    assert len(list((tmp_path / "ckpt").glob("*.distcp"))) == 2  # each rank wrote its shard
    plan = export(tmp_path / "ckpt", tmp_path / "out.safetensors")
    got = load_file(tmp_path / "out.safetensors")
    assert plan.selected == "model" and plan.metadata["step"] == "12"
    assert torch.equal(got["w"], torch.arange(30, dtype=torch.float32).reshape(6, 5))
    assert torch.equal(got["b"], torch.arange(4, dtype=torch.float32) * 0.5)


# ---------------------------------------------------------------------------------- safety, failure


def test_a_hostile_source_is_refused_and_nothing_is_written(tmp_path):
    marker = tmp_path / "pwned"
    write_hostile_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="evil.pt: unsafe: references"):
        export(tmp_path / "evil.pt", tmp_path / "out.safetensors")
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_a_truncated_source_is_refused_and_nothing_is_left(tmp_path, awkward_state):
    torch.save(awkward_state, tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "a.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        export(tmp_path / "a.pt", tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_a_truncated_safetensors_source_is_refused(tmp_path):
    save_file({"w": torch.randn(64, 64)}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated|data"):
        export(tmp_path / "m.safetensors", tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("directory", [False, True])
def test_an_interrupted_export_leaves_nothing(tmp_path, monkeypatch, awkward_state, directory):
    torch.save(awkward_state, tmp_path / "a.pt")
    calls = []
    real = export_module._output_bytes

    def interrupted(t):
        calls.append(t.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        yield from real(t)

    monkeypatch.setattr(export_module, "_output_bytes", interrupted)
    out = tmp_path / ("out" if directory else "out.safetensors")
    with pytest.raises(KeyboardInterrupt):
        export(tmp_path / "a.pt", out, max_shard_size=100 if directory else export_module.DEFAULT_MAX_SHARD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_an_existing_output_needs_force_and_survives_a_failed_replacement(tmp_path, monkeypatch, awkward_state):
    torch.save(awkward_state, tmp_path / "a.pt")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(BadInputError, match="exists .*--force"):
        export(tmp_path / "a.pt", out)

    def failing(path, planned, crcs):
        raise export_module.SaveError("export verification failed: injected")

    monkeypatch.setattr(export_module, "_verify", failing)
    with pytest.raises(export_module.SaveError):
        export(tmp_path / "a.pt", out, force=True)
    assert out.read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "out.safetensors"]
    monkeypatch.undo()
    export(tmp_path / "a.pt", out, force=True)
    _assert_same(load_file(out), awkward_state["model"])


def test_verification_catches_bytes_changed_after_writing(tmp_path, monkeypatch, awkward_state):
    """The CRC-32 computed while writing is checked against a re-read of the file: a flipped byte fails."""
    torch.save(awkward_state, tmp_path / "a.pt")
    real_verify = export_module._verify

    def corrupt_then_verify(path, planned, crcs):
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        real_verify(path, planned, crcs)

    monkeypatch.setattr(export_module, "_verify", corrupt_then_verify)
    with pytest.raises(export_module.SaveError, match="CRC mismatch"):
        export(tmp_path / "a.pt", tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_dry_run_writes_nothing(tmp_path, awkward_state):
    torch.save(awkward_state, tmp_path / "a.pt")
    plan = export(tmp_path / "a.pt", tmp_path / "out", dry_run=True, max_shard_size=200)
    assert len(plan.shards) > 1 and not (tmp_path / "out").exists() and plan.checksums == {}


def test_memory_is_bounded_by_a_chunk_for_contiguous_tensors(tmp_path, monkeypatch):
    """A 48 MiB tensor is copied in CHUNK_BYTES pieces: no piece handed to the writer is larger."""
    monkeypatch.setattr(export_module, "CHUNK_BYTES", 1 << 20)
    big = torch.randn(12 * 1024 * 1024)
    torch.save({"model": {"big": big}}, tmp_path / "a.pt")
    sizes = []
    real = export_module.StreamWriter.write

    def spy(self, chunk):
        sizes.append(len(chunk))
        real(self, chunk)

    monkeypatch.setattr(export_module.StreamWriter, "write", spy)
    export(tmp_path / "a.pt", tmp_path / "out.safetensors")
    assert max(sizes) == 1 << 20 and sum(sizes) == big.numel() * 4
    assert torch.equal(load_file(tmp_path / "out.safetensors")["big"], big)


def test_transformers_loads_an_exported_tied_embedding_model(tmp_path):
    """Tied input/output embeddings exported under both names load in transformers without warnings of missing keys."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    torch.save({"model": state, "step": 3}, tmp_path / "a.pt")
    out = tmp_path / "hf"
    export(tmp_path / "a.pt", out)
    config.save_pretrained(out)
    loaded = transformers.LlamaForCausalLM.from_pretrained(out)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_the_python_api_is_ckptctl_export(tmp_path):
    import ckptctl

    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "a.pt")
    plan = ckptctl.export(tmp_path / "a.pt", tmp_path / "out.safetensors")
    assert plan.to_json()["tensors"] == 1 and ckptctl.export is export
