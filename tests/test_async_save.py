"""Non-blocking saves: a snapshot isolates the checkpoint from the loop, one write in flight, errors surface later.

A gate in ``durable.stage`` holds the background write until the test opens it, so "while the write
is in flight" is a state the test controls, not a race it hopes to win.
"""

from __future__ import annotations

import collections
import copy
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import Future

import pytest

torch = pytest.importorskip("torch")

from ckptctl import durable  # noqa: E402
from ckptctl.training.async_save import AsyncWriter, snapshot  # noqa: E402
from ckptctl.errors import SaveError  # noqa: E402
from ckptctl.training.manager import CheckpointManager, load_file  # noqa: E402
from tests.factories import DiskFullFile, make_state  # noqa: E402


class Gate:
    """Replaces durable.stage: records start/end of every staged write and holds each until ``release``."""

    def __init__(self, monkeypatch):
        self.opened = threading.Event()
        self.events: list[tuple[str, str]] = []
        self.waiting = threading.Event()
        real = durable.stage

        def gated(directory, final_name, *args, **kwargs):
            self.events.append(("start", final_name))
            self.waiting.set()
            if not self.opened.wait(timeout=60):
                raise RuntimeError("test gate never opened")
            try:
                return real(directory, final_name, *args, **kwargs)
            finally:
                self.events.append(("end", final_name))

        monkeypatch.setattr(durable, "stage", gated)

    def release(self):
        self.opened.set()


def _call_while_a_save_is_held(tmp_path, monkeypatch, call):
    """Hold a non-blocking save of step 1 at the gate, run ``call(manager)`` on another thread, open the gate.

    Returns (gate, the held save's path, what ``call`` returned once it finished).
    """
    gate = Gate(monkeypatch)
    manager = CheckpointManager(tmp_path)
    held = manager.save(make_state(step=1), step=1, blocking=False)
    assert gate.waiting.wait(timeout=60)
    returned = []
    caller = threading.Thread(target=lambda: returned.append(call(manager)))
    caller.start()
    gate.release()
    caller.join(timeout=60)
    assert returned, "the second call never returned"
    assert held.exists()  # it returned only once the held write was in place
    manager.close()
    return gate, held, returned[0]


def _disk_full(monkeypatch):
    """Every staged write fails like a full disk after 1 KiB (a real SaveError from the durable writer)."""
    real_open = durable._open_temp
    monkeypatch.setattr(durable, "_open_temp", lambda path: DiskFullFile(real_open(path), limit=1024))


def _tensors_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ snapshot


def test_mutating_the_state_after_save_returns_does_not_leak_into_the_checkpoint(tmp_path, monkeypatch):
    gate = Gate(monkeypatch)
    manager = CheckpointManager(tmp_path)
    model = torch.nn.Linear(32, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 32)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "dataloader_state": {"batch_idx": 3},
             "history": [1.0, 2.0], "step": 10}  # fmt: skip
    expected = copy.deepcopy(state)
    path = manager.save(state, step=10, blocking=False)
    assert gate.waiting.wait(timeout=60) and not path.exists()  # the write is in flight, held at the gate
    # what a training loop does next: optimizer step in place, bookkeeping mutated in place
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    model(torch.randn(4, 32)).sum().backward()
    optimizer.step()
    state["dataloader_state"]["batch_idx"] = 999
    state["history"].append(3.0)
    state["model"]["extra"] = torch.zeros(1)
    gate.release()
    manager.close()
    saved = load_file(path)
    assert _tensors_equal(saved["model"], expected["model"])
    momentum = expected["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(saved["optimizer"]["state"][0]["momentum_buffer"], momentum)
    assert saved["dataloader_state"] == {"batch_idx": 3} and saved["history"] == [1.0, 2.0]
    assert load_file(tmp_path / "latest.pt")["step"] == 10


def test_snapshot_keeps_shared_storages_shared_and_copies_everything_else():
    base = torch.arange(12.0, requires_grad=True)
    view = base.detach()[2:6]
    Point = collections.namedtuple("Point", "x y")
    numpy = pytest.importorskip("numpy")
    original = collections.OrderedDict(a=base, v=view, p=Point(torch.ones(2), [1]), n=numpy.zeros(3), s="text")
    copied = snapshot(original)
    assert type(copied) is collections.OrderedDict and type(copied["p"]) is Point
    assert not copied["a"].requires_grad
    assert copied["a"].untyped_storage().data_ptr() == copied["v"].untyped_storage().data_ptr()  # still one storage
    assert copied["a"].untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    with torch.no_grad():
        base.mul_(0)
    original["p"].y.append(2)
    original["n"][0] = 5
    assert torch.equal(copied["a"], torch.arange(12.0)) and torch.equal(copied["v"], torch.arange(2.0, 6.0))
    assert copied["p"].y == [1] and copied["n"][0] == 0 and copied["s"] == "text"


def test_snapshot_copies_tensor_subclasses_and_sparse_tensors():
    class Tagged(torch.Tensor):
        pass

    tagged = torch.ones(3).as_subclass(Tagged)
    sparse = torch.eye(3).to_sparse()
    copied = snapshot({"tagged": tagged, "sparse": sparse})
    tagged.mul_(0)
    sparse.values().mul_(0)
    assert type(copied["tagged"]) is Tagged and torch.equal(copied["tagged"].as_subclass(torch.Tensor), torch.ones(3))
    assert torch.equal(copied["sparse"].to_dense(), torch.eye(3))


def test_snapshot_file_is_no_larger_than_the_original(tmp_path):
    """Tied weights: two state_dict entries share one storage, and the snapshot saves it once too."""
    weight = torch.randn(256, 256)
    state = {"embed": weight, "head": weight.t()}
    torch.save(state, tmp_path / "original.pt")
    torch.save(snapshot(state), tmp_path / "snapshot.pt")
    assert (tmp_path / "snapshot.pt").stat().st_size == (tmp_path / "original.pt").stat().st_size


def test_writer_snapshots_reuse_the_previous_snapshots_memory_only_when_sizes_match():
    writer = AsyncWriter()
    state = {"w": torch.ones(1000), "b": torch.zeros(10)}
    first = writer.snapshot(state)
    first_ptr = first["w"].untyped_storage().data_ptr()
    state["w"].fill_(2.0)
    second = writer.snapshot(state)
    assert second["w"].untyped_storage().data_ptr() == first_ptr  # copied into the same pages
    assert torch.equal(second["w"], torch.full((1000,), 2.0)) and torch.equal(second["b"], torch.zeros(10))
    grown = writer.snapshot({"w": torch.ones(2000), "b": torch.zeros(10)})
    assert grown["w"].untyped_storage().data_ptr() != first_ptr and torch.equal(grown["w"], torch.ones(2000))
    writer.close()


def test_successive_nonblocking_saves_each_hold_their_own_values(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last_n=5)
    weights = {"w": torch.zeros(64, 64)}
    for step in (1, 2, 3):
        weights["w"].fill_(float(step))
        manager.save({"model": weights}, step=step, blocking=False)  # reuses step-1's snapshot memory
    manager.close()
    for step in (1, 2, 3):
        saved = load_file(tmp_path / f"rolling_step_{step:06d}.pt")["model"]["w"]
        assert torch.equal(saved, torch.full((64, 64), float(step)))


# ------------------------------------------------------------------------- one write in flight


def test_a_second_nonblocking_save_waits_for_the_first(tmp_path, monkeypatch):
    gate, first, second = _call_while_a_save_is_held(
        tmp_path, monkeypatch, lambda manager: manager.save(make_state(step=2), step=2, blocking=False)
    )
    assert gate.events == [("start", first.name), ("end", first.name), ("start", second.name), ("end", second.name)]
    assert load_file(tmp_path / "latest.pt")["step"] == 2
    assert load_file(tmp_path / "latest_backup.pt")["step"] == 1


def test_a_blocking_save_and_a_load_wait_for_the_inflight_one(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(make_state(step=1), step=1, blocking=False)
    assert manager.load("latest")["step"] == 1  # a load sees every earlier save
    manager.save(make_state(step=2), step=2, blocking=False)
    manager.save(make_state(step=3), step=3)
    assert load_file(tmp_path / "latest.pt")["step"] == 3
    assert load_file(tmp_path / "latest_backup.pt")["step"] == 2


def test_off_the_master_a_nonblocking_save_does_nothing(tmp_path):
    manager = CheckpointManager(tmp_path / "ck", master_process=False)
    assert manager.save(make_state(step=1), step=1, blocking=False) is None
    assert not manager._writer.in_flight and not (tmp_path / "ck").exists()
    manager.close()


# ------------------------------------------------------------------------------------- errors


def test_a_failed_background_write_is_raised_by_the_next_save_once(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    _disk_full(monkeypatch)
    path = manager.save(make_state(step=1), step=1, blocking=False)
    assert manager._writer.settle(timeout=60)  # it failed before the disk "recovers"
    monkeypatch.undo()
    with pytest.raises(SaveError, match="disk full") as info:
        manager.save(make_state(step=2), step=2)
    assert info.value.errno is not None
    assert not path.exists() and list(tmp_path.glob("*.tmp")) == []  # nothing visible changed
    assert manager.save(make_state(step=3), step=3).exists()  # raised once; saving works again
    manager.close()


def test_a_failed_background_write_is_raised_by_close_and_by_the_context_manager(tmp_path, monkeypatch):
    _disk_full(monkeypatch)
    manager = CheckpointManager(tmp_path)
    manager.save(make_state(step=1), step=1, blocking=False)
    with pytest.raises(SaveError):
        manager.close()
    with pytest.raises(SaveError):
        with CheckpointManager(tmp_path / "b") as other:
            other.save(make_state(step=1), step=1, blocking=False)


def test_a_failed_background_write_does_not_replace_an_exception_leaving_the_with_block(tmp_path, monkeypatch, caplog):
    _disk_full(monkeypatch)
    with pytest.raises(KeyError):
        with CheckpointManager(tmp_path) as manager:
            manager.save(make_state(step=1), step=1, blocking=False)
            raise KeyError("the training loop's own error")
    assert "background save before this one failed" in caplog.text


def test_an_interrupted_wait_keeps_the_write_pending(monkeypatch):
    writer = AsyncWriter()
    release = threading.Event()
    writer.submit(lambda: (release.wait(60), 1 / 0))

    def interrupted(self, timeout=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Future, "result", interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl+C while waiting for the write
        writer.wait()
    monkeypatch.undo()
    assert writer.in_flight
    release.set()
    with pytest.raises(ZeroDivisionError):  # its failure is still reported afterwards
        writer.wait()
    writer.close()


def test_writer_reraises_any_exception_of_the_job_once():
    writer = AsyncWriter()
    writer.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.wait()
    writer.wait()
    writer.close()


# ---------------------------------------------------------------------------------- emergency


def test_emergency_save_waits_for_the_inflight_save(tmp_path, monkeypatch):
    gate, rolling, emergency = _call_while_a_save_is_held(
        tmp_path, monkeypatch, lambda manager: manager.save_emergency(make_state(step=6), step=6)
    )
    assert emergency.exists() and load_file(emergency)["step"] == 6
    assert gate.events == [("start", rolling.name), ("end", rolling.name), ("start", emergency.name), ("end", emergency.name)]


def test_emergency_save_is_written_even_if_the_inflight_save_failed(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    _disk_full(monkeypatch)
    manager.save(make_state(step=5), step=5, blocking=False)
    assert manager._writer.settle(timeout=60)  # it failed before the disk "recovers"
    monkeypatch.undo()
    with pytest.raises(SaveError, match="disk full"):
        manager.save_emergency(make_state(step=6), step=6)
    assert [load_file(p)["step"] for p in tmp_path.glob("emergency_step_*.pt")] == [6]


# --------------------------------------------------------------------------- interpreter exit


def test_at_exit_an_inflight_save_completes_and_a_failure_is_logged(tmp_path):
    """A script that returns right after save(blocking=False): the file is complete; a failure is reported."""
    script = textwrap.dedent(
        f"""
        import logging, torch
        from ckptctl import durable
        from ckptctl.training.manager import CheckpointManager
        from tests.factories import DiskFullFile
        logging.basicConfig(level=logging.WARNING)
        ok = CheckpointManager({str(tmp_path / "ok")!r})
        ok.save({{"step": 7, "model": {{"w": torch.randn(512, 512)}}}}, step=7, blocking=False)
        failing = CheckpointManager({str(tmp_path / "full")!r})
        real_open = durable._open_temp
        def open_temp(path):  # only the second directory's disk is full
            return DiskFullFile(real_open(path), limit=1024) if "/full/" in str(path) else real_open(path)
        durable._open_temp = open_temp
        failing.save({{"step": 8, "model": {{"w": torch.randn(512, 512)}}}}, step=8, blocking=False)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(_repo()))
    assert result.returncode == 0, result.stderr
    assert load_file(tmp_path / "ok" / "rolling_step_000007.pt")["step"] == 7
    assert "background checkpoint save failed" in result.stderr and "disk full" in result.stderr
    assert not (tmp_path / "full" / "rolling_step_000008.pt").exists()


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent
