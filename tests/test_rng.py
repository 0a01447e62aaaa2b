"""RNG state: stored as plain values (a plain ``torch.load`` opens the manager's files), restored bit-exactly."""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")

from ckptctl.training.manager import CheckpointManager, build_state  # noqa: E402
from ckptctl.training.rng import capture_rng_state, from_plain, restore_rng_state, to_plain  # noqa: E402

PLAIN_LOAD = """
import sys, torch
for path in sys.argv[1:]:
    state = torch.load(path)  # torch's default: weights_only=True since 2.6
    assert isinstance(state["step"], int), path
print("loaded", len(sys.argv) - 1)
"""


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def _draws() -> tuple:
    """The next numbers of every global generator (gauss exercises numpy's cached second normal)."""
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(3).tolist(),
            np.random.randint(0, 2**31, 4).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist())  # fmt: skip


def _plain_torch_load(*paths: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "WEIGHTS_ONLY" not in k}  # torch's own default, not a forced one
    return subprocess.run([sys.executable, "-c", PLAIN_LOAD, *map(str, paths)], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


@pytest.fixture
def numpy_global_generator():
    """Tests that swap numpy's global bit generator put the original back."""
    original = np.random.get_bit_generator()
    yield
    np.random.set_bit_generator(original)


def test_every_file_the_manager_writes_opens_with_plain_torch_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # a cached gaussian in numpy's state (has_gauss = 1)
    model, mgr = _model(), CheckpointManager(tmp_path, monitor_every=0)
    args = argparse.Namespace(lr=np.float64(1e-3), output_dir=Path("/runs/a"), layers=[np.int64(2), Path("x")])

    def state(step: int) -> dict:
        return build_state(step=np.int64(step), epoch=0, model=model, train_loss=np.float32(0.5),
                           val_loss=torch.tensor(0.25), args=args)  # fmt: skip

    paths = [mgr.save(state(1), step=1), mgr.save(state(2), step=2), mgr.save_best(state(2), step=2, val_loss=0.25),
             mgr.save_epoch(state(2), epoch=0), mgr.save_emergency(state(3), step=np.int64(3))]  # fmt: skip
    paths += [tmp_path / name for name in ("latest.pt", "latest_backup.pt", "best_model_backup.pt")]
    own = {"step": 9, "model": model.state_dict(), "rng_state": {"python": random.getstate(), "numpy": np.random.get_state(),
                                                                 "torch": torch.get_rng_state(), "torch_cuda": None}}  # fmt: skip
    paths.append(mgr.save(own, step=9))  # a state dict of the caller's own, numpy state as numpy returns it
    result = _plain_torch_load(*paths)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"loaded {len(paths)}" in result.stdout
    loaded = torch.load(paths[0])
    assert loaded["args"] == {"lr": 1e-3, "output_dir": "/runs/a", "layers": [2, "x"]}
    assert type(loaded["train_loss"]) is float and loaded["step"] == 1 and type(loaded["step"]) is int


def test_resume_continues_every_stream_bit_exactly(tmp_path):
    model, mgr = _model(), CheckpointManager(tmp_path, monitor_every=0)
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    _draws()  # somewhere mid-stream, with a cached numpy gaussian
    np.random.randn()
    mgr.save(build_state(step=5, epoch=0, model=model), step=5)
    uninterrupted = [_draws() for _ in range(3)]

    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a restarted process starts elsewhere
    mgr.resume(_model())
    assert [_draws() for _ in range(3)] == uninterrupted


def test_global_numpy_bit_generator_other_than_mt19937(tmp_path, numpy_global_generator):
    np.random.set_bit_generator(np.random.PCG64(5))
    np.random.rand(7)
    state = capture_rng_state()
    assert state["numpy"]["bit_generator"] == "PCG64"
    path = tmp_path / "s.pt"
    torch.save({"step": 1, "rng_state": state}, path)
    expected = _draws()
    np.random.rand(100)
    restore_rng_state(torch.load(path)["rng_state"])
    assert _draws() == expected


@pytest.mark.parametrize("bit_generator", ["MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64"])
def test_generator_state_round_trips_through_plain_torch_load(tmp_path, bit_generator):
    gen = np.random.Generator(getattr(np.random, bit_generator)(21))
    gen.random(5), gen.standard_normal(3), gen.integers(0, 10, 3, dtype=np.uint32)  # buffered half-words too
    torch.save({"gen": to_plain(gen.bit_generator.state)}, tmp_path / "g.pt")
    expected = (gen.random(4).tolist(), gen.integers(0, 2**32, 3, dtype=np.uint32).tolist())
    gen.random(50)
    gen.bit_generator.state = from_plain(torch.load(tmp_path / "g.pt")["gen"])
    assert (gen.random(4).tolist(), gen.integers(0, 2**32, 3, dtype=np.uint32).tolist()) == expected


def test_old_checkpoint_with_numpy_arrays_still_resumes(tmp_path):
    """Files written before RNG states were plain hold np.random.get_state() (an ndarray)."""
    model = _model()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()
    old = {"step": 7, "epoch": 0, "model": model.state_dict(), "optimizer": None, "train_loss": 0.5, "val_loss": None,
           "rng_state": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                         "torch_cuda": None},
           "dataloader_state": {}, "args": None, "timestamp": "2026-11-01T12:00:00", "checkpoint_type": "regular"}  # fmt: skip
    torch.save(old, tmp_path / "latest.pt")
    expected = _draws()
    _draws()
    resumed = CheckpointManager(tmp_path, monitor_every=0).resume(_model())
    assert resumed.step == 7
    assert _draws() == expected


def test_plain_state_restores_from_lists_as_well(tmp_path):
    """A state that went through JSON or a list-only round trip (tuples as lists) still restores."""
    np.random.seed(4)
    state = capture_rng_state()
    expected = np.random.rand(5).tolist()
    numpy_state = list(state["numpy"])
    numpy_state[1] = from_plain(numpy_state[1]).tolist()
    restore_rng_state({"numpy": numpy_state})
    assert np.random.rand(5).tolist() == expected


def test_to_plain_leaves_no_numpy_objects():
    np.random.seed(4)
    np.random.randn()
    plain = to_plain(np.random.get_state())

    def walk(value):
        assert type(value).__module__ == "builtins", type(value)
        for item in value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ():
            walk(item)

    walk(plain)
    restored = from_plain(plain)
    assert restored[0] == "MT19937" and restored[1].dtype == np.uint32 and restored[1].shape == (624,)
    assert restored[2:] == np.random.get_state()[2:]


def test_a_callers_own_numpy_state_is_stored_plain_and_restores(tmp_path):
    """``"numpy": np.random.get_state()`` in the caller's dict (the original layout's habit) is made plain."""
    model, mgr = _model(), CheckpointManager(tmp_path, monitor_every=0)
    np.random.seed(8)
    np.random.randn()
    own = {"step": 3, "model": model.state_dict(), "rng_state": {"python": None, "numpy": np.random.get_state(),
                                                                 "torch": None, "torch_cuda": None}}  # fmt: skip
    mgr.save(own, step=3)
    assert isinstance(own["rng_state"]["numpy"][1], np.ndarray)  # the caller's dict is not changed
    expected = np.random.randn(4).tolist()
    np.random.seed(0)
    assert mgr.resume(_model()).step == 3
    assert np.random.randn(4).tolist() == expected
    stored = torch.load(tmp_path / "latest.pt")["rng_state"]["numpy"]
    assert stored[0] == "MT19937" and isinstance(stored[1], dict)
