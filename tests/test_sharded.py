"""ckptctl.formats.dcp: DCP directories read safely, committed atomically, loaded with resharding."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ckptctl.formats import dcp as sharded
from ckptctl.training import dcp_save
from ckptctl import durable
from ckptctl.cli.app import app
from ckptctl.layouts.catalog import STATUS_OK, STATUS_PARTIAL, scan
from ckptctl.errors import PartialCheckpoint, SaveError, UnreadableCheckpoint, UnsafeCheckpoint
from ckptctl.ops.integrity import validate_file
from ckptctl.training.manager import CheckpointManager, build_state
from ckptctl.layouts.naming import Kind, format_name, parse
from ckptctl.formats.reader import read_checkpoint
from ckptctl.ops.retention import Policy, plan_retention
from tests.factories import SystemCall, make_state, write_dcp
from tests.procs import Job

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
REPO = Path(__file__).resolve().parent.parent


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


def test_listing_decodes_only_top_level_values(tmp_path):
    write_dcp(tmp_path / "rolling_step_000500", make_state(step=500, epoch=3, val_loss=0.25))
    (entry,) = scan(tmp_path)
    assert (entry.metadata.step, entry.metadata.val_loss) == (500, 0.25)
    assert entry.metadata.root["optimizer"]["param_groups"][0]["lr"] is None  # nested: not read for a listing
    assert entry.read()[0].root["optimizer"]["param_groups"][0]["lr"] == 3e-4  # a full read has it


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


def test_hostile_metadata_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    (path / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": SystemCall(marker)}))
    with pytest.raises(UnsafeCheckpoint, match="os.system|posix.system"):
        read_checkpoint(path)
    with pytest.raises(Exception):
        CheckpointManager(tmp_path, format="dcp").load_into({"step": 0}, "rolling_step_000001")
    assert not marker.exists()


def test_hostile_value_in_a_shard_file_is_refused_and_never_run(tmp_path):
    """DCP stores non-tensor values as torch.save blobs in the shard files: the same allowlist reads them."""
    marker = tmp_path / "pwned"
    path = write_dcp(tmp_path / "rolling_step_000001", {"w": torch.zeros(2), "step": SystemCall(marker)})
    with pytest.raises(UnsafeCheckpoint, match="system"):
        read_checkpoint(path)
    with pytest.raises(Exception, match="unsafe|no loadable"):
        dcp_save.load_directory({"w": torch.zeros(2), "step": 0}, tmp_path, "rolling_step_000001")
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
        dcp_save.save_directory({"bad": lambda: None}, tmp_path, "rolling_step_000001")
    names = {p.name for p in tmp_path.iterdir()}
    assert "rolling_step_000001" not in names
    assert all(e.status()[0] == STATUS_PARTIAL for e in scan(tmp_path))


def test_commit_replaces_an_existing_directory_whole(tmp_path):
    dcp_save.save_directory({"w": torch.zeros(3), "step": 1}, tmp_path, "best_model")
    dcp_save.save_directory({"w": torch.ones(3), "step": 2}, tmp_path, "best_model", previous="best_model_previous")
    assert read_checkpoint(tmp_path / "best_model").root["step"] == 2
    assert read_checkpoint(tmp_path / "best_model_previous").root["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model", "best_model_previous"]


@pytest.mark.parametrize("exchange", ["renameat2", "unsupported"])
def test_commit_over_an_existing_directory_never_leaves_the_name_absent_where_it_can(tmp_path, monkeypatch, exchange):
    dcp_save.save_directory({"w": torch.zeros(3), "step": 1}, tmp_path, "best_model")
    if exchange == "unsupported":
        monkeypatch.setattr(durable, "_exchange", lambda a, b: False)
    present_at_rename = []
    real_rename = durable.os.rename

    def rename(src, dst):
        present_at_rename.append((tmp_path / "best_model").exists())
        real_rename(src, dst)

    monkeypatch.setattr(durable.os, "rename", rename)
    dcp_save.save_directory({"w": torch.ones(3), "step": 2}, tmp_path, "best_model", previous="best_model_previous")
    assert read_checkpoint(tmp_path / "best_model").root["step"] == 2
    assert read_checkpoint(tmp_path / "best_model_previous").root["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model", "best_model_previous"]
    assert all(present_at_rename) == (exchange == "renameat2")  # the fallback has one moment without it


def test_remove_directory_never_leaves_a_listed_half(tmp_path, monkeypatch):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    calls = []
    real_rmtree = durable.shutil.rmtree

    def interrupted(target, *a, **k):
        calls.append(Path(target).name)
        raise OSError("interrupted")

    monkeypatch.setattr(durable.shutil, "rmtree", interrupted)
    with pytest.raises(OSError):
        durable.remove_directory(path)
    assert calls == ["rolling_step_000001.deleting.tmp"]
    assert [e.kind for e in scan(tmp_path)] == [Kind.PARTIAL]  # the name is gone before any file is
    monkeypatch.setattr(durable.shutil, "rmtree", real_rmtree)
    durable.remove_directory(tmp_path / "rolling_step_000001.deleting.tmp")
    assert list(tmp_path.iterdir()) == []


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def test_manager_dcp_layout_retention_and_load(tmp_path):
    model = _model()
    mgr = CheckpointManager(tmp_path, keep_last_n=2, format="dcp")
    for step in (100, 200, 300):
        assert mgr.save(build_state(step=step, epoch=0, model=model), step=step) == tmp_path / format_name(
            Kind.ROLLING, step=step, directory=True
        )
    assert os.readlink(tmp_path / "latest") == "rolling_step_000300"
    assert os.readlink(tmp_path / "latest_backup") == "rolling_step_000200"
    assert not (tmp_path / "rolling_step_000100").exists()  # retention removed the directory
    assert mgr.save_epoch(build_state(step=300, epoch=1, model=model), epoch=1).name == "epoch_00001"
    assert mgr.save_best(build_state(step=300, epoch=1, model=model), step=300, val_loss=0.5).name == "best_model"
    assert mgr.save_best(build_state(step=300, epoch=1, model=model), step=300, val_loss=0.9) is None
    mgr.save_best(build_state(step=310, epoch=1, model=model), step=310, val_loss=0.4)
    emergency = mgr.save_emergency(build_state(step=311, epoch=1, model=model), step=311)
    assert parse(emergency.name, directory=True).kind is Kind.EMERGENCY
    assert {e.name: e.status()[0] for e in scan(tmp_path) if e.parsed.is_checkpoint} == {
        name: STATUS_OK
        for name in ("latest", "latest_backup", "best_model", "best_model_previous", "rolling_step_000200",
                     "rolling_step_000300", emergency.name, "epoch_00001")  # fmt: skip
    }
    assert CheckpointManager(tmp_path, format="dcp").best_val_loss == 0.4  # read back from best_model/

    fresh = torch.nn.Linear(4, 3)
    state = {"model": fresh.state_dict(), "step": 0}
    assert mgr.load_into(state) == tmp_path / "latest"
    assert state["step"] == 300 and torch.equal(fresh.weight, model.weight)


def test_load_falls_back_past_a_partial_latest(tmp_path):
    model = _model()
    mgr = CheckpointManager(tmp_path, format="dcp")
    mgr.save(build_state(step=1, epoch=0, model=model), step=1)
    mgr.save(build_state(step=2, epoch=0, model=model), step=2)
    (tmp_path / "rolling_step_000002" / ".metadata").unlink()
    state = {"step": 0}
    assert mgr.load_into(state) == tmp_path / "latest_backup"
    assert state["step"] == 1


def test_retention_keeps_what_a_pointer_names(tmp_path):
    for step in (1, 2, 3):
        write_dcp(tmp_path / f"rolling_step_00000{step}", {"w": torch.zeros(2), "step": step})
    dcp_save.set_pointer(tmp_path, Kind.LATEST, "rolling_step_000003")
    dcp_save.set_pointer(tmp_path, Kind.LATEST, "rolling_step_000001", backup=Kind.LATEST_BACKUP)
    assert os.readlink(tmp_path / "latest_backup") == "rolling_step_000003"
    plan = plan_retention(scan(tmp_path), Policy(keep_rolling=1))
    assert [d.entry.name for d in plan.remove] == ["rolling_step_000002"]
    kept = {d.entry.name: d.reasons for d in plan.keep}
    assert "latest points here" in kept["rolling_step_000001"]


# ----------------------------------------------------- non-blocking sharded saves (one process)


class DcpGate:
    """Holds every DCP background write (``write_data`` on DCP's thread) until ``release``; records
    when each write starts and when rank 0 commits it. ``fail`` makes the held write raise."""

    def __init__(self, monkeypatch):
        import torch.distributed.checkpoint as dcp

        self.opened, self.waiting = threading.Event(), threading.Event()
        self.events: list[tuple[str, str]] = []
        self.fail: str | None = None
        gate = self

        class GatedWriter(dcp.FileSystemWriter):
            def write_data(self, plan, planner):
                name = Path(str(self.path)).name.removesuffix(".tmp")
                gate.events.append(("start", name))
                gate.waiting.set()
                if not gate.opened.wait(timeout=60):
                    raise RuntimeError("test gate never opened")
                if gate.fail:
                    raise OSError(28, gate.fail)
                return super().write_data(plan, planner)

        real_commit = durable.commit_directory

        def commit(tmp, final, previous=None):
            real_commit(tmp, final, previous)
            self.events.append(("commit", final.name))

        monkeypatch.setattr(dcp_save, "_writer", lambda tmp: GatedWriter(tmp, sync_files=True))
        monkeypatch.setattr(dcp_save, "commit_directory", commit)

    def release(self):
        self.opened.set()


@pytest.fixture(params=["no process group", "world of one"])
def group(request, tmp_path):
    """Non-blocking DCP saves without torch.distributed, and in an initialised gloo group of one rank."""
    import torch.distributed as dist

    if request.param == "no process group":
        yield None
        return
    if dist.is_initialized():
        pytest.skip("another test left a process group initialised in this process")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def _call_when_waiting(manager: CheckpointManager, call) -> tuple[threading.Thread, list]:
    """Run ``call()`` on a thread; return once it waits for the in-flight save (or finished)."""
    entered, returned = threading.Event(), []
    real_wait = manager._writer.wait

    def wait():
        entered.set()
        return real_wait()

    manager._writer.wait = wait

    def run():
        try:
            returned.append(call())
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            returned.append(exc)
        entered.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(timeout=60)
    return thread, returned


def test_nonblocking_dcp_save_returns_before_writing_and_later_changes_do_not_leak(tmp_path, monkeypatch, group):
    gate = DcpGate(monkeypatch)
    mgr = CheckpointManager(tmp_path / "ck", format="dcp")
    state = {"model": {"w": torch.zeros(64, 8)}, "dataloader_state": {"seen": [1, 2]}, "epoch": 0}
    path = mgr.save(state, step=1, blocking=False)
    assert gate.waiting.wait(timeout=60)  # DCP's thread is writing (held); save() has returned
    assert path == tmp_path / "ck" / "rolling_step_000001" and not path.exists() and mgr._writer.in_flight
    state["model"]["w"].add_(5)  # the training loop goes on: in place, nested, rebinding
    state["dataloader_state"]["seen"].append(3)
    state["epoch"] = 9
    gate.release()
    mgr.close()
    assert gate.events == [("start", "rolling_step_000001"), ("commit", "rolling_step_000001")]
    assert os.readlink(tmp_path / "ck" / "latest") == "rolling_step_000001"
    loaded = {"model": {"w": torch.ones(64, 8)}, "dataloader_state": {"seen": [0, 0]}, "epoch": -1, "step": -1}
    assert mgr.load_into(loaded) == tmp_path / "ck" / "latest"
    assert torch.equal(loaded["model"]["w"], torch.zeros(64, 8))
    assert (loaded["dataloader_state"], loaded["epoch"], loaded["step"]) == ({"seen": [1, 2]}, 0, 1)


def test_nonblocking_dcp_failure_is_raised_by_the_next_call_and_by_close(tmp_path, monkeypatch, group):
    gate = DcpGate(monkeypatch)
    gate.fail = "No space left on device"
    gate.release()
    mgr = CheckpointManager(tmp_path, format="dcp")
    mgr.save({"w": torch.zeros(4)}, step=1, blocking=False)  # fails in the background
    with pytest.raises(SaveError, match="rolling_step_000001 failed.*No space left"):
        mgr.save({"w": torch.zeros(4)}, step=2, blocking=False)  # not written: the error came first
    gate.fail = None
    mgr.save({"w": torch.ones(4)}, step=3, blocking=False)
    mgr.close()  # raised once only: this save went through
    gate.fail = "disk on fire"
    mgr.save({"w": torch.ones(4)}, step=4, blocking=False)
    with pytest.raises(SaveError, match="rolling_step_000004 failed.*disk on fire"):
        mgr.close()
    mgr.close()  # nothing left to raise
    assert [e.name for e in scan(tmp_path) if e.status()[0] == STATUS_OK] == ["latest", "rolling_step_000003"]
    assert {e.name for e in scan(tmp_path) if e.kind is Kind.PARTIAL} == {"rolling_step_000001.tmp", "rolling_step_000004.tmp"}


def test_nonblocking_dcp_at_most_one_in_flight_a_new_save_waits(tmp_path, monkeypatch, group):
    gate = DcpGate(monkeypatch)
    mgr = CheckpointManager(tmp_path, format="dcp")
    mgr.save({"w": torch.zeros(4)}, step=1, blocking=False)
    assert gate.waiting.wait(timeout=60)
    thread, returned = _call_when_waiting(mgr, lambda: mgr.save({"w": torch.ones(4)}, step=2, blocking=False))
    assert gate.events == [("start", "rolling_step_000001")]  # the second save waits at the first's write
    gate.release()
    thread.join(timeout=60)
    assert returned == [tmp_path / "rolling_step_000002"]
    mgr.close()
    assert gate.events == [("start", "rolling_step_000001"), ("commit", "rolling_step_000001"),
                           ("start", "rolling_step_000002"), ("commit", "rolling_step_000002")]  # fmt: skip


def test_emergency_dcp_save_waits_for_the_in_flight_one_then_raises_its_failure(tmp_path, monkeypatch, group):
    gate = DcpGate(monkeypatch)
    mgr = CheckpointManager(tmp_path, format="dcp")
    mgr.save({"w": torch.zeros(4)}, step=1, blocking=False)
    assert gate.waiting.wait(timeout=60)
    thread, returned = _call_when_waiting(mgr, lambda: mgr.save_emergency({"w": torch.ones(4)}, step=2))
    gate.release()
    thread.join(timeout=60)
    (emergency,) = returned
    assert [event for event, _name in gate.events] == ["start", "commit", "start", "commit"]
    assert gate.events[1] == ("commit", "rolling_step_000001") and gate.events[2][1] == emergency.name
    gate.fail = "disk full"
    mgr.save({"w": torch.zeros(4)}, step=3, blocking=False)
    assert mgr._writer.settle(timeout=60)  # failed (its error kept for the next call)
    gate.fail = None
    with pytest.raises(SaveError, match="rolling_step_000003 failed.*disk full"):
        mgr.save_emergency({"w": torch.ones(4)}, step=4)  # written first, then the earlier failure raised
    assert sum(1 for e in scan(tmp_path) if e.kind is Kind.EMERGENCY and e.status()[0] == STATUS_OK) == 2


# ------------------------------------------------------------------- two ranks (torchrun, gloo, CPU)

WORKER = '''
import os, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from ckptctl.training.manager import CheckpointManager

directory, logdir = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()
mesh = init_device_mesh("cpu", (2,))
(logdir / f"pid{rank}").write_text(str(os.getpid()))
mgr = CheckpointManager(directory, keep_last_n=100, format="dcp")
for step in range(1, 41):
    rows = 8 if step <= 2 else 131072  # steps 1-2 small and complete; later ones 32 MB, killed mid-way
    full = torch.arange(rows * 64, dtype=torch.float32).reshape(rows, 64) + step
    mgr.save({"model": {"w": distribute_tensor(full, mesh, [Shard(0)])}, "step": step, "epoch": 0}, step=step)
dist.barrier()  # torch can abort a rank that destroys its group right after a collective
dist.destroy_process_group()
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_command(worker: Path, directory: Path, logdir: Path) -> tuple[list[str], dict[str, str]]:
    """``torchrun`` of ``worker DIR LOGDIR`` on 2 local ranks (no restarts), and its environment."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--max-restarts", "0",
        "--monitor-interval", "0.1", str(worker), str(directory), str(logdir),
    ]  # fmt: skip
    return command, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _torchrun_killing(rank: int, root: Path) -> tuple[Path, bool]:
    """2 ranks save DTensor-sharded checkpoints; SIGKILL ``rank`` once a later save's temp directory
    exists. Every wait is bounded; the whole process group is killed in ``finally``."""
    directory, logdir = root / "checkpoints", root / "logs"
    logdir.mkdir(parents=True)
    worker = root / "dcp_worker.py"
    worker.write_text(WORKER)
    command, env = _torchrun_command(worker, directory, logdir)
    killed_mid_save = False
    with Job(command, logdir, name="torchrun", env=env) as job:
        deadline = time.monotonic() + 120
        while job.proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.endswith(".tmp") and p.name >= "rolling_step_000003" for p in _listdir(directory)):
                os.kill(int((logdir / f"pid{rank}").read_text()), signal.SIGKILL)
                killed_mid_save = True
                break
            time.sleep(0.002)  # polling for the temp directory, not a synchronisation
        job.wait(timeout=60)
    assert killed_mid_save, job.output()
    return directory, killed_mid_save


def _listdir(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


@pytest.mark.parametrize("victim", [0, pytest.param(1, marks=pytest.mark.slow)])  # ~25 s a torchrun run
def test_sigkill_of_a_rank_mid_save_never_leaves_an_ok_partial_and_2_rank_saves_load_on_1(tmp_path, victim):
    directory, _ = _torchrun_killing(victim, tmp_path)
    entries = scan(directory)
    assert any(e.kind is Kind.PARTIAL for e in entries)  # the save in progress stayed a temp directory
    ok = [e for e in entries if e.is_directory and e.status()[0] == STATUS_OK]
    assert {"rolling_step_000001", "rolling_step_000002"} <= {e.name for e in ok}
    for entry in ok:  # everything `list` calls ok is complete: validates, and loads on 1 process
        assert validate_file(entry.path).valid, entry.name
        step = read_checkpoint(entry.path).root["step"]
        rows = read_checkpoint(entry.path).root["model"]["w"].shape[0]
        state = {"model": {"w": torch.zeros(rows, 64)}, "step": -1}
        dcp_save.load_directory(state, directory, entry.name)
        expected = torch.arange(rows * 64, dtype=torch.float32).reshape(rows, 64) + step
        assert state["step"] == step and torch.equal(state["model"]["w"], expected)
    listed = CliRunner().invoke(app, ["list", str(directory), "--json"])
    statuses = {c["name"]: c["status"] for c in json.loads(listed.stdout)["checkpoints"]}
    assert all(statuses[name] == "partial" for name in statuses if name.endswith(".tmp"))
    assert {name for name, status in statuses.items() if status == "ok"} == {e.name for e in ok}


ASYNC_WORKER = REPO / "tests" / "dist_workers" / "dcp_async_worker.py"


@pytest.mark.slow  # ~35 s on the shared 2-core VM (3 torch imports); the agreement itself: tests/test_distributed.py
def test_torchrun_nonblocking_saves_isolated_agreed_and_committed_after_every_rank(tmp_path):
    """2 ranks, DTensor state changed right after each save(blocking=False) returns, a training
    all_reduce while the write is in flight; rank 0's commit of step 4 fails: both ranks raise at the next call."""
    directory, logdir = tmp_path / "checkpoints", tmp_path / "logs"
    logdir.mkdir()
    command, env = _torchrun_command(ASYNC_WORKER, directory, logdir)
    with Job(command, logdir, name="torchrun", env=env) as job:
        code = job.wait(timeout=120)
    assert code == 0, job.output()
    logs = [json.loads((logdir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [step for log in logs for step, _ in log["raised"]] == [5, 5]  # every rank raised, once
    assert "injected: rank 0 cannot commit rolling_step_000004" in logs[0]["raised"][0][1]
    assert "failed on another rank" in logs[1]["raised"][0][1]
    for log in logs:
        assert log["all_reduce"] == [2.0] * 6
        assert (log["loaded_step"], log["loaded_seen"], log["loaded_ok"]) == (6, [1, 2, 3, 4, 5, 6], True)
    assert os.readlink(directory / "latest") == "rolling_step_000006"
    assert not (directory / "rolling_step_000004").exists()  # never committed: left as a partial temp
    assert (directory / "rolling_step_000004.tmp").is_dir()
    for step in (1, 2, 3, 5, 6):
        path = directory / f"rolling_step_{step:06d}"
        assert validate_file(path).valid, path.name
        state = {"model": {"w": torch.zeros(256, 64)}, "dataloader_state": {"seen": [0] * step}, "step": -1}
        dcp_save.load_directory(state, directory, path.name)
        expected = torch.arange(256 * 64, dtype=torch.float32).reshape(256, 64) + step
        assert torch.equal(state["model"]["w"], expected), path.name  # not the -1 written right after save()
        assert (state["step"], state["dataloader_state"]["seen"]) == (step, list(range(1, step + 1)))


@pytest.mark.slow  # 20 s on the loaded VM, nearly all of it importing torch's DCP in a fresh interpreter
def test_at_exit_a_nonblocking_dcp_save_is_committed_and_a_failure_is_logged(tmp_path):
    """A script that ends right after save(blocking=False), without close(): the write and rank 0's commit
    finish before the interpreter exits; a failed one is logged (no process group: DCP's single-process mode)."""
    script = f"""
import logging, warnings, torch
from pathlib import Path
import torch.distributed.checkpoint as dcp
from ckptctl.formats import dcp as sharded
from ckptctl.training import dcp_save
from ckptctl import durable
from ckptctl.training.manager import CheckpointManager
warnings.filterwarnings("ignore")
logging.basicConfig(level=logging.WARNING)
logging.getLogger("c10d").setLevel(logging.CRITICAL)
class Full(dcp.FileSystemWriter):
    def write_data(self, plan, planner):
        if "/full/" in str(self.path):
            raise OSError(28, "No space left on device")
        return super().write_data(plan, planner)
dcp_save._writer = lambda tmp: Full(tmp, sync_files=True)
CheckpointManager({str(tmp_path / "ok")!r}, format="dcp").save({{"w": torch.ones(256, 256)}}, step=7, blocking=False)
CheckpointManager({str(tmp_path / "full")!r}, format="dcp").save({{"w": torch.ones(4)}}, step=8, blocking=False)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.readlink(tmp_path / "ok" / "latest") == "rolling_step_000007"
    assert read_checkpoint(tmp_path / "ok" / "rolling_step_000007").root["step"] == 7
    assert "background checkpoint save failed" in result.stderr
    assert "rolling_step_000008 failed: rank 0: OSError: [Errno 28] No space left on device" in result.stderr
    assert not (tmp_path / "full" / "rolling_step_000008").exists()


# ------------------------------------------------- a DCP directory is recognised by its own structure


@pytest.mark.parametrize("planted", [".metadata", "x.distcp"])
def test_stray_dcp_files_do_not_hide_a_hostile_checkpoint(tmp_path, planted):
    """A ``.metadata`` or an empty ``*.distcp`` beside native checkpoints used to make ``validate DIR``
    read the directory as one DCP checkpoint and never look at the hostile ``latest.pt``."""
    from tests.factories import write_hostile_checkpoint

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    marker = tmp_path / "pwned"
    write_hostile_checkpoint(directory / "latest.pt", marker)
    stray = directory / planted
    if planted == ".metadata":
        stray.write_bytes((write_dcp(tmp_path / "real", step=1) / ".metadata").read_bytes())  # even a genuine one
    else:
        stray.touch()
    assert not sharded.looks_like_dcp(directory)
    result = CliRunner().invoke(app, ["validate", str(directory), "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    (verdict,) = doc["results"]
    assert verdict["path"] == str(directory / "latest.pt") and verdict["status"] == "unsafe"
    assert doc["skipped"] == [str(stray)]  # reported, not trusted
    assert not marker.exists()


def test_every_command_treats_a_directory_with_stray_dcp_files_as_native(tmp_path):
    """list/du/prune/restore already looked only at checkpoint names; kept that way (a regression guard)."""
    from tests.factories import cached_layout, write_hostile_checkpoint

    directory = cached_layout(tmp_path / "checkpoints")
    write_hostile_checkpoint(directory / "latest.pt", tmp_path / "pwned")
    (directory / ".metadata").write_bytes(b"not dcp")
    (directory / "x.distcp").touch()
    runner = CliRunner()
    listing = json.loads(runner.invoke(app, ["list", str(directory), "--json"]).stdout)
    assert {row["name"]: row["status"] for row in listing["checkpoints"]}["latest.pt"] == "unsafe"
    assert runner.invoke(app, ["du", str(directory)]).exit_code == 0
    assert runner.invoke(app, ["prune", str(directory), "--keep-rolling", "1", "--dry-run"]).exit_code == 0
    restore = runner.invoke(app, ["restore", str(directory), "--dry-run"])
    assert restore.exit_code == 0 and "references posix.system" in restore.stdout  # latest.pt judged, not hidden
    resume = runner.invoke(app, ["resume-cmd", str(directory), "--json"])
    assert resume.exit_code == 0 and not json.loads(resume.stdout)["checkpoint"].endswith("latest.pt")
    assert not (tmp_path / "pwned").exists()


def test_a_dcp_directory_is_one_by_its_own_files(tmp_path):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    assert sharded.looks_like_dcp(path)
    (path / "notes.txt").write_text("a foreign file does not make it a directory of checkpoints")
    assert sharded.looks_like_dcp(path)
    (path / "rolling_step_000002").mkdir()  # a checkpoint-named subdirectory: a directory of checkpoints
    assert not sharded.looks_like_dcp(path)
    (path / "rolling_step_000002").rmdir()
    (path / "model.bin").touch()
    assert not sharded.looks_like_dcp(path)
    assert not sharded.looks_like_dcp(tmp_path)  # its parent holds no DCP files of its own


# ------------------------------------------------------------------------------------ DCP budgets


def _rewrite_metadata(path: Path, mutate) -> None:
    """Change the ``.metadata`` DCP wrote just above (a trusted file: plain pickle is fine here)."""
    metadata = pickle.loads((path / ".metadata").read_bytes())
    mutate(metadata)
    (path / ".metadata").write_bytes(pickle.dumps(metadata))


def _append_values(path: Path, blob: bytes, fqns: list[str]) -> None:
    """``blob`` appended to the shard file once, and a value entry naming it for each of ``fqns``."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    shard = path / "__0_0.distcp"
    offset = shard.stat().st_size
    with open(shard, "ab") as fh:
        fh.write(blob)

    def mutate(metadata) -> None:
        for fqn in fqns:
            metadata.state_dict_metadata[fqn] = BytesStorageMetadata()
            metadata.storage_data[MetadataIndex(fqn)] = _StorageInfo(shard.name, offset, len(blob))
            metadata.planner_data[fqn] = (fqn,)

    _rewrite_metadata(path, mutate)


def _torch_save_bytes(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_many_values_naming_one_blob_stop_at_the_decoded_bytes_budget(tmp_path):
    """100 entries naming one 900 KB blob: 90 MB of reading and unpickling from a 1 MB shard file."""
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    blob = _torch_save_bytes(b"\0" * 900_000)
    _append_values(path, blob, [f"v{i}" for i in range(100)])
    with pytest.raises(UnreadableCheckpoint, match="value bytes to read .* exceeds the DCP reading budget"):
        read_checkpoint(path)
    result = validate_file(path)
    assert not result.valid and any("budget" in p for p in result.problems)


def test_one_value_naming_a_blob_is_read(tmp_path):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    _append_values(path, _torch_save_bytes({"note": "kept"}), ["extra"])
    assert read_checkpoint(path).root["extra"] == {"note": "kept"}


def test_a_compressed_value_is_refused_unread(tmp_path):
    """zipfile inflates bzip2 without a bound: a few hundred bytes can declare a GiB. torch.save never
    compresses, so a compressed record is not a torch.save blob."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_BZIP2) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(b"\0" * (64 << 20), protocol=2))
    assert len(buffer.getvalue()) < 4096
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    _append_values(path, buffer.getvalue(), ["bomb"])
    with pytest.raises(UnreadableCheckpoint, match=r"value bomb: compressed record \(method 12\)"):
        read_checkpoint(path)


def test_a_flood_of_chunks_exceeds_the_item_budget(tmp_path):
    """One chunk object referenced 400,000 times costs 2-5 bytes of pickle per reference."""
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)

    def mutate(metadata) -> None:
        item = metadata.state_dict_metadata["model.0.weight"]
        item.chunks = [item.chunks[0]] * 400_000

    _rewrite_metadata(path, mutate)
    assert (path / ".metadata").stat().st_size < 3_000_000
    with pytest.raises(UnreadableCheckpoint, match="item count .* exceeds the DCP reading budget"):
        read_checkpoint(path)
    assert "budget" in " ".join(validate_file(path).problems)


def test_a_deep_key_path_is_a_verdict_not_a_recursion_error(tmp_path):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)
    _rewrite_metadata(path, lambda metadata: metadata.planner_data.update(step=("k",) * 5000))
    with pytest.raises(UnreadableCheckpoint, match="depth .* exceeds the DCP reading budget"):
        read_checkpoint(path)


def test_huge_offsets_and_shapes_are_malformed(tmp_path):
    path = write_dcp(tmp_path / "rolling_step_000001", step=1)

    def mutate(metadata) -> None:
        metadata.state_dict_metadata["model.0.weight"].size = torch.Size([2] * 65)

    _rewrite_metadata(path, mutate)
    with pytest.raises(UnreadableCheckpoint, match="model.0.weight has no shape"):
        read_checkpoint(path)
