"""Distributed awareness: helpers are no-ops alone, non-master ranks follow rank 0, and real 2-rank torchrun jobs.

Three layers of evidence:

- without a process group (and in a world of one) every helper returns the local value;
- a non-master rank simulated in-process (the collectives replaced by rank 0's answers) follows rank
  0's decisions, writes nothing, and waits at the emergency barrier;
- two ``torchrun --nproc_per_node 2`` jobs (gloo, CPU; tests/dist_workers/train_worker.py): a training
  run ended by SIGTERM to rank 1 only, then a resume of its directory.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from ckptctl.training import distributed  # noqa: E402
from ckptctl.errors import NoCheckpointError  # noqa: E402
from ckptctl.training.manager import CheckpointManager, load_file  # noqa: E402
from ckptctl.formats.reader import read_checkpoint  # noqa: E402
from ckptctl.training.signals import EmergencyStop  # noqa: E402
from tests.factories import make_state  # noqa: E402
from tests.procs import Job, torchrun_command  # noqa: E402

WORKER = Path(__file__).parent / "dist_workers" / "train_worker.py"


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != ".ckptctl.lock")


# ----------------------------------------------------------------------------- no process group


def test_helpers_without_a_process_group_return_the_local_value():
    assert not distributed.is_active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.broadcast_from_main(("path", "x")) == ("path", "x")
    assert distributed.max_over_ranks(15) == 15
    assert distributed.any_rank(True) is True and distributed.any_rank(False) is False
    distributed.barrier()  # returns at once instead of waiting for ranks that do not exist


def test_check_without_a_process_group_is_the_local_flag():
    stop = EmergencyStop()
    assert stop.check() is False
    stop.request(signal.SIGTERM)
    assert stop.check() is True
    with pytest.raises(SystemExit) as info:
        stop.exit()
    assert info.value.code == 143  # not distributed: the shell convention


def test_world_of_one_process_group(tmp_path):
    """An initialised group of one rank: rank 0, the master, and nothing to agree on."""
    if dist.is_initialized():
        pytest.skip("another test left a process group initialised in this process")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert distributed.rank() == 0 and distributed.world_size() == 1 and not distributed.is_active()
        manager = CheckpointManager(tmp_path / "ck")
        assert manager.master_process is True
        assert manager.save(make_state(step=1), step=1) == tmp_path / "ck" / "rolling_step_000001.pt"
        assert manager.load("latest")["step"] == 1
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ a simulated non-master rank


class FakeGroup:
    """The collectives as rank ``rank`` of a two-rank job sees them, with rank 0's answers scripted."""

    def __init__(self, monkeypatch, rank: int):
        self.rank = rank
        self.from_rank0: list = []  # what broadcast_from_main returns, in call order (rank 1 only)
        self.barriers = 0
        self.max_of_others = 0
        self.agreements: list[str] = []  # the calls of distributed.agree, in order
        for name, fn in {
            "is_active": lambda: True,
            "rank": lambda: self.rank,
            "world_size": lambda: 2,
            "is_main_process": lambda: self.rank == 0,
            "broadcast_from_main": self._broadcast,
            "max_over_ranks": lambda value: max(value, self.max_of_others),
            "any_rank": lambda flag: bool(flag),
            "barrier": self._barrier,
            "agree": self._agree,
            "start_agreement": self._start_agreement,
            "control_group": lambda: None,
        }.items():
            monkeypatch.setattr(distributed, name, fn)

    def _broadcast(self, value):
        return value if self.rank == 0 else self.from_rank0.pop(0)

    def _barrier(self):
        self.barriers += 1

    def _agree(self, call, value=0, *, timeout=None):
        self.agreements.append(call)
        return max(value, self.max_of_others)

    def _start_agreement(self, call, value=0, *, timeout=None):
        agreed = self._agree(call, value)  # the other ranks' values as they were when it started
        return type("Agreement", (), {"result": lambda _: agreed})()


def test_rank1_is_not_master_and_takes_the_best_val_loss_from_rank0(tmp_path, monkeypatch):
    CheckpointManager(tmp_path).save_best(make_state(step=1), step=1, val_loss=0.5)  # on disk: 0.5
    group = FakeGroup(monkeypatch, rank=1)
    group.from_rank0 = [0.25]
    manager = CheckpointManager(tmp_path)
    assert manager.master_process is False
    assert manager.best_val_loss == 0.25  # rank 0's answer, not this rank's reading of the file


def test_rank1_save_best_follows_rank0_decision_and_writes_nothing(tmp_path, monkeypatch):
    group = FakeGroup(monkeypatch, rank=1)
    group.from_rank0 = [None]
    manager = CheckpointManager(tmp_path)
    group.from_rank0 = [(False, None)]
    assert manager.save_best(make_state(step=1), step=1, val_loss=0.1) is None
    assert manager.best_val_loss is None  # its own 0.1 would have been "better": rank 0 said no
    group.from_rank0 = [(True, 0.7)]
    assert manager.save_best(make_state(step=2), step=2, val_loss=9.0) is None
    assert manager.best_val_loss == 0.7  # rank 0 saved: the next comparison starts from the same value
    assert list(tmp_path.iterdir()) == []
    assert group.from_rank0 == []


def test_rank1_loads_the_file_rank0_resolved(tmp_path, monkeypatch):
    writer = CheckpointManager(tmp_path)
    for step in (100, 200):
        writer.save(make_state(step=step), step=step)
    group = FakeGroup(monkeypatch, rank=1)
    group.from_rank0 = [None]
    manager = CheckpointManager(tmp_path)
    # this rank's own chain would pick latest.pt (step 200); rank 0 fell back to step 100
    group.from_rank0 = [("path", str(tmp_path / "rolling_step_000100.pt"))]
    assert manager.load("latest")["step"] == 100
    assert manager.loaded_path == tmp_path / "rolling_step_000100.pt"


def test_rank0_failure_to_resolve_is_raised_on_every_rank(tmp_path, monkeypatch):
    group = FakeGroup(monkeypatch, rank=1)
    group.from_rank0 = [None]
    manager = CheckpointManager(tmp_path)
    group.from_rank0 = [("error", "no loadable latest checkpoint in /x (no candidates)")]
    with pytest.raises(NoCheckpointError, match="no loadable latest"):
        manager.load("latest")


def test_rank1_that_cannot_load_rank0s_file_fails_every_rank(tmp_path, monkeypatch):
    group = FakeGroup(monkeypatch, rank=1)
    group.from_rank0 = [None]
    manager = CheckpointManager(tmp_path)
    group.from_rank0 = [("path", str(tmp_path / "gone.pt"))]  # e.g. not on this node's storage
    with pytest.raises(NoCheckpointError, match="rank 1 could not load .*gone.pt: missing"):
        manager.load("best")


def test_rank0_load_failure_is_broadcast_then_raised(tmp_path, monkeypatch):
    group = FakeGroup(monkeypatch, rank=0)
    manager = CheckpointManager(tmp_path)
    sent = []
    monkeypatch.setattr(distributed, "broadcast_from_main", lambda value: (sent.append(value), value)[1])
    with pytest.raises(NoCheckpointError):
        manager.load("latest")
    assert sent and sent[0][0] == "error"  # the other ranks learn of it instead of waiting forever
    assert group.rank == 0


def test_emergency_save_barrier_after_rank0s_file_is_durable(tmp_path, monkeypatch):
    group = FakeGroup(monkeypatch, rank=0)
    manager = CheckpointManager(tmp_path)
    seen_at_barrier = []
    monkeypatch.setattr(distributed, "barrier", lambda: seen_at_barrier.append(_names(tmp_path)))
    path = manager.save_emergency(make_state(step=7), step=7)
    assert seen_at_barrier == [[path.name]]  # the file was in place when the ranks were released


def test_rank1_emergency_save_only_waits_at_the_barrier(tmp_path, monkeypatch):
    group = FakeGroup(monkeypatch, rank=1)
    group.from_rank0 = [None]
    manager = CheckpointManager(tmp_path)
    assert manager.save(make_state(step=1), step=1, blocking=False) is None
    assert manager.save_emergency(make_state(step=7), step=7) is None
    assert group.barriers == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("other_rank_failed", [False, True])
def test_rank1_nonblocking_sharded_save_agrees_with_rank0_and_never_commits(tmp_path, monkeypatch, other_rank_failed):
    """Rank 1's own write succeeds; whether its next call raises is what every rank agreed on.
    Only rank 0 commits, so rank 1 leaves the directory under its temp name."""

    from ckptctl.errors import SaveError
    from ckptctl.training import dcp_save as sharded

    group = FakeGroup(monkeypatch, rank=1)
    group.from_rank0 = [None]
    monkeypatch.setattr(sharded, "rank", lambda: 1)
    monkeypatch.setattr(sharded, "barrier", group._barrier)
    agreed = []
    monkeypatch.setattr(distributed, "any_rank", lambda flag: agreed.append(flag) or flag or other_rank_failed)
    manager = CheckpointManager(tmp_path, format="dcp")
    assert manager.save({"w": torch.zeros(4)}, step=1, blocking=False) == tmp_path / "rolling_step_000001"
    assert agreed == []  # no collective while the write may still be running
    if other_rank_failed:
        with pytest.raises(SaveError, match="failed on another rank"):
            manager.close()
    else:
        manager.close()
    assert agreed == [False]  # this rank's write succeeded; one agreement, at close()
    manager.close()
    assert agreed == [False]  # nothing in flight: no further collective
    assert [p.name for p in tmp_path.iterdir() if p.name != ".ckptctl.lock"] == ["rolling_step_000001.tmp"]


def test_check_adopts_another_ranks_signal_and_exits_zero_under_a_process_group(monkeypatch):
    group = FakeGroup(monkeypatch, rank=0)
    stop = EmergencyStop(check_every=1)
    assert stop.check() is False
    group.max_of_others = signal.SIGTERM  # seen by the agreement started at the next call, collected at the one after
    assert stop.check() is False
    assert stop.check() is True and stop.signal_name == "SIGTERM"
    with pytest.raises(SystemExit) as info:
        stop.exit()
    assert info.value.code == 0  # torchrun must not treat the planned stop as a worker failure
    keep_code = EmergencyStop(distributed_exit_code=None)
    keep_code.request(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        keep_code.exit()
    assert info.value.code == 143


def test_check_communicates_only_every_check_every_calls(monkeypatch):
    """The per-step cost: 100 steps of check() start 20 agreements (one collective each), not 100."""
    group = FakeGroup(monkeypatch, rank=1)
    stop = EmergencyStop()
    assert stop.check_every == 5
    assert [stop.check() for _ in range(100)] == [False] * 100
    assert group.agreements == ["EmergencyStop.check"] * 20


def test_a_local_signal_waits_for_the_next_agreement_so_every_rank_stops_at_the_same_call(monkeypatch):
    group = FakeGroup(monkeypatch, rank=1)
    stop = EmergencyStop(check_every=4)
    assert [stop.check() for _ in range(5)] == [False] * 5  # an agreement started at call 4
    stop.request(signal.SIGTERM)  # this rank only: sent with the agreement started at call 8, collected at 12
    assert [stop.check() for _ in range(7)] == [False] * 6 + [True]
    assert stop.check() is True and group.agreements == ["EmergencyStop.check"] * 2  # stopped: no more collectives


def test_save_best_and_save_emergency_meet_the_other_ranks_first(tmp_path, monkeypatch):
    group = FakeGroup(monkeypatch, rank=0)
    manager = CheckpointManager(tmp_path, collective_timeout=5)
    manager.save_best(make_state(step=1), step=1, val_loss=0.5)
    manager.save_emergency(make_state(step=2), step=2)
    assert group.agreements == ["save_best", "save_emergency"]


def test_agree_names_the_skipped_call_when_ranks_meet_in_different_calls(monkeypatch):
    """The real agree() on a real (one-rank) gloo group, its all_reduce answered as rank 1 in another call."""
    from ckptctl.errors import CollectiveError

    class Answer:
        def __init__(self, other_code):
            self.other_code = other_code

        def allreduce(self, tensors, options):
            mine = tensors[0]
            theirs = torch.tensor([self.other_code, -self.other_code, 0])
            mine.copy_(torch.maximum(mine, theirs))
            return self

        def wait(self):
            return True

    monkeypatch.setattr(distributed, "is_active", lambda: True)
    monkeypatch.setattr(distributed, "_dist", lambda: dist)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "control_group", lambda: Answer(1))  # the other rank: EmergencyStop.check
    with pytest.raises(CollectiveError, match=r"rank 0 is in save_best\(\) while another rank is in EmergencyStop.check\(\): "
                                              r"save_best must be called on every rank"):  # fmt: skip
        distributed.agree("save_best")
    monkeypatch.setattr(distributed, "control_group", lambda: Answer(2))  # the other rank: save_best
    assert distributed.agree("save_best", 3) == 3


# ------------------------------------------------------------------------ real torchrun jobs


def _torchrun(mode: str, directory: Path, logdir: Path, *, kill_rank1_when_ready: bool = False) -> tuple[int, str]:
    """Run the worker on 2 ranks; optionally SIGTERM rank 1's worker process (not the agent) once it said it is ready.

    Every wait is bounded (tests/procs.py); whatever is left is killed, and a failure shows every output.
    """
    with Job(torchrun_command(WORKER, mode, str(directory), str(logdir)), logdir, name=f"torchrun-{mode}") as job:
        if kill_rank1_when_ready:
            os.kill(int(job.wait_for_file(logdir / "ready_rank1")), signal.SIGTERM)
        code = job.wait(timeout=120)
    return code, job.output()


def _rank_logs(logdir: Path) -> tuple[dict, dict]:
    return tuple(json.loads((logdir / f"rank{r}.json").read_text()) for r in (0, 1))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-rank training job, stopped by SIGTERM to rank 1 only; shared by the torchrun tests."""
    root = tmp_path_factory.mktemp("torchrun")
    directory, logdir = root / "checkpoints", root / "train-logs"
    code, output = _torchrun("train", directory, logdir, kill_rank1_when_ready=True)
    return directory, logdir, code, output


def test_torchrun_sigterm_to_one_rank_stops_both_at_one_step_with_one_emergency_checkpoint(trained):
    directory, logdir, code, output = trained
    assert code == 0, output  # both workers exited 0: torchrun saw no failure
    rank0, rank1 = _rank_logs(logdir)
    assert rank0["stop_step"] == rank1["stop_step"] and rank0["signal"] == rank1["signal"] == "SIGTERM"
    emergencies = sorted(directory.glob("emergency_step_*.pt"))
    assert [p.name for p in emergencies] == [Path(rank0["emergency"]).name]
    assert read_checkpoint(emergencies[0]).root["step"] == rank0["stop_step"]
    assert rank1["emergency"] is None
    assert rank0["stop_step"] % 4 == 0  # an agreement step (check_every=4): no rank ran ahead of the others
    assert "received by another rank" in output and "Traceback" not in output


def test_torchrun_only_rank0_writes_rolling_and_best(trained):
    directory, logdir, _, _ = trained
    rank0, rank1 = _rank_logs(logdir)
    assert rank0["master"] is True and rank1["master"] is False
    assert rank1["staged"] == [] and all(path is None for path in rank1["saves"])  # rank 1 wrote nothing
    rolling = [name for name in rank0["staged"] if name.startswith("rolling_step_")]
    assert len(rolling) == len(rank0["saves"]) == len(set(rolling))  # each rolling save written once
    assert rank0["staged"].count("best_model.pt") == sum(1 for _, path, _ in rank0["best"] if path)
    last = int(Path(rank0["saves"][-1]).name[len("rolling_step_") : -3])
    assert load_file(directory / "latest.pt")["step"] == last
    assert len(list(directory.glob("rolling_step_*.pt"))) == min(3, len(rank0["saves"]))


def test_torchrun_ranks_agree_on_save_best_decisions(trained):
    directory, logdir, _, _ = trained
    rank0, rank1 = _rank_logs(logdir)
    # rank 1's own losses would have saved at steps 10 and 20; rank 0's decide: 10 and 30 (0.9, 0.6)
    rank0_losses = {10: 0.9, 20: 1.5, 30: 0.6, 40: 0.8}
    called = [step for step in sorted(rank0_losses) if step < rank0["stop_step"]]
    assert called[:2] == [10, 20]  # rank 1 alone would have saved at 20 (0.4 < 0.5)
    assert [step for step, _, _ in rank0["best"]] == [step for step, _, _ in rank1["best"]] == called
    assert [step for step, path, _ in rank0["best"] if path] == [s for s in (10, 30) if s in called]
    assert [best for _, _, best in rank0["best"]] == [best for _, _, best in rank1["best"]]
    assert read_checkpoint(directory / "best_model.pt").root["val_loss"] == rank0["best"][-1][2]


def test_torchrun_resume_on_two_ranks_restores_identical_state(trained):
    directory, logdir, _, _ = trained
    code, output = _torchrun("resume", directory, logdir.parent / "resume-logs")
    assert code == 0, output
    rank0, rank1 = _rank_logs(logdir.parent / "resume-logs")
    expected = load_file(directory / "latest.pt")
    for log in (rank0, rank1):
        assert log["path"] == str(directory / "latest.pt") and log["step"] == expected["step"]
        assert log["weight"] == expected["model"]["weight"].flatten().tolist()  # not the rank's own random init
        assert log["staged"] == []
    assert rank0["next_random"] == rank1["next_random"]  # RNG streams restored from the same file
    assert rank0["best_val_loss"] == rank1["best_val_loss"]


def test_torchrun_rank0_only_save_best_is_an_error_on_both_ranks_not_a_hang(tmp_path):
    """`if rank == 0: mgr.save_best(...)`: both ranks raise CollectiveError at once when rank 1 reaches
    another ckptctl call; when rank 1 stays out of ckptctl, rank 0 raises after its timeout."""
    logdir = tmp_path / "logs"
    code, output = _torchrun("rank0_best", tmp_path / "checkpoints", logdir)
    assert code == 0, output
    rank0, rank1 = _rank_logs(logdir)
    must = "save_best must be called on every rank"
    assert rank0["other_call"].startswith("rank 0 is in save_best() while another rank is in EmergencyStop.check()")
    assert rank1["other_call"].startswith("rank 1 is in EmergencyStop.check() while another rank is in save_best()")
    assert must in rank0["other_call"] and must in rank1["other_call"], output
    assert "did not join save_best() (waited up to 5 s" in rank0["elsewhere"] and must in rank0["elsewhere"], output
    assert rank1["elsewhere"].startswith("rank 1: the other ranks did not join EmergencyStop.check()"), output
    assert not list((tmp_path / "checkpoints").glob("best_model*.pt"))  # nothing was saved by one rank alone
