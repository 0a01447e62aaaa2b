"""A tiny training job for ``torchrun --nproc_per_node 2`` (gloo, CPU), driven by tests/test_distributed.py.

    train_worker.py train DIR LOGDIR   rolling saves (blocking=False) every 5 steps, save_best every 10
                                       with val_losses that differ per rank, EmergencyStop.check() every
                                       step (agreeing every 4th); rank 1 writes LOGDIR/ready_rank1 (its pid)
                                       after step 22 and the test sends SIGTERM to that pid only. The loop
                                       runs until that stop: it cannot end before the signal lands.
    train_worker.py resume DIR LOGDIR  each rank starts from a different random model, resumes "latest".
    train_worker.py rank0_best DIR LOGDIR
                                       the `if rank == 0: mgr.save_best(...)` mistake, twice: rank 1 goes on
                                       to the next steps' check() (both ranks must raise CollectiveError
                                       without waiting for the timeout), then rank 1 stays out of ckptctl (rank 0 must raise after the
                                       timeout, and rank 1's next check() at once).

Each rank writes LOGDIR/rank<N>.json: what every call returned, how many files it staged (rank 1
must stage none), where it stopped, what it restored. Every file the test waits for is written
atomically (tests/procs.py write_ready). A watchdog (faulthandler) prints every thread's stack and
ends the worker if it is still running after WATCHDOG seconds, so a hang shows where it hung.
"""

from __future__ import annotations

import faulthandler
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ckptctl import durable
from ckptctl.errors import CollectiveError
from ckptctl.training.manager import CheckpointManager, build_state
from ckptctl.training.signals import EmergencyStop
from tests.procs import write_ready

WATCHDOG = 100.0  # seconds; below the test's own bound, so the stacks are printed before the test kills us
READY_AFTER = 22
CHECK_EVERY = 4
TIMEOUT = 5.0  # seconds a rank waits at an agreement in rank0_best
# rank 0 improves at steps 10 and 30; rank 1 (ignored: rank 0 decides) would improve at 10, 20, 40
VAL_LOSS = {0: {10: 0.9, 20: 1.5, 30: 0.6, 40: 0.8}, 1: {10: 0.5, 20: 0.4, 30: 2.0, 40: 0.1}}


def _count_stages(log: dict) -> None:
    """Wrap durable.stage, through which every checkpoint file of the manager is written."""
    real = durable.stage
    log["staged"] = []

    def counting(directory, final_name, *args, **kwargs):
        log["staged"].append(final_name)
        return real(directory, final_name, *args, **kwargs)

    durable.stage = counting


def _model(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(16, 4)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def train(directory: Path, logdir: Path, rank: int, log: dict) -> None:
    model, optimizer = _model(seed=0)
    manager = CheckpointManager(directory, keep_last_n=3, monitor_every=0)
    log.update(master=manager.master_process, saves=[], best=[], emergency=None)
    with EmergencyStop(check_every=CHECK_EVERY) as stop:
        for step in itertools.count(1):  # until the stop: the signal decides when the run ends
            loss = model(torch.randn(8, 16)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            time.sleep(0.01)  # pacing only (fewer saves while the test sends its signal), not a synchronisation
            state = build_state(step=step, epoch=0, model=model, optimizer=optimizer, train_loss=float(loss.detach()))
            if stop.check():
                path = manager.save_emergency(state, step=step)
                log.update(stop_step=step, signal=stop.signal_name, emergency=str(path) if path else None)
                stop.exit()
            if step % 5 == 0:
                path = manager.save(state, step=step, blocking=False)
                log["saves"].append(str(path) if path else None)
            if step in VAL_LOSS[rank]:
                path = manager.save_best(state, step=step, val_loss=VAL_LOSS[rank][step])
                log["best"].append([step, str(path) if path else None, manager.best_val_loss])
            if rank == 1 and step == READY_AFTER:
                write_ready(logdir / "ready_rank1", str(os.getpid()))


def resume(directory: Path, rank: int, log: dict) -> None:
    model, optimizer = _model(seed=100 + rank)  # different on each rank until the checkpoint is loaded
    manager = CheckpointManager(directory, monitor_every=0)
    resumed = manager.resume(model, optimizer, "latest")
    log.update(
        step=resumed.step,
        path=str(resumed.path),
        weight=model.weight.detach().flatten().tolist(),
        lr=optimizer.param_groups[0]["lr"],
        next_random=torch.rand(4).tolist(),  # RNG restored: the same stream on both ranks
        best_val_loss=manager.best_val_loss,
    )


def rank0_best(directory: Path, logdir: Path, rank: int, log: dict) -> None:
    manager = CheckpointManager(directory, monitor_every=0, collective_timeout=TIMEOUT)
    stop = EmergencyStop(check_every=1, timeout=TIMEOUT)
    state = build_state(step=1, epoch=0, model=_model(seed=0)[0])
    for scenario in ("other_call", "elsewhere"):
        try:
            if rank == 0:
                manager.save_best(state, step=1, val_loss=0.5)  # the mistake: `if rank == 0: mgr.save_best(...)`
            else:  # the next steps' check(): the 1st starts an agreement, the 2nd collects it
                if scenario == "elsewhere":  # not in any ckptctl call until rank 0 gave up
                    _wait_for(logdir / "rank0_gave_up")
                stop.check()
                stop.check()
            log[scenario] = "no error"
        except CollectiveError as exc:
            log[scenario] = str(exc)
        if rank == 0 and scenario == "elsewhere":
            write_ready(logdir / "rank0_gave_up")


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path.name} within {timeout} s")
        time.sleep(0.02)


def main() -> None:
    mode, directory, logdir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    write_ready(logdir / f"pid_rank{rank}", str(os.getpid()))  # so the test can kill stragglers
    log: dict = {"rank": rank, "pid": os.getpid()}
    _count_stages(log)
    try:
        {"train": train, "resume": lambda d, _, r, g: resume(d, r, g), "rank0_best": rank0_best}[mode](
            directory, logdir, rank, log
        )
    finally:
        write_ready(logdir / f"rank{rank}.json", json.dumps(log))
        if mode != "rank0_best":  # there the group is broken on purpose; the process just ends
            dist.barrier()  # torch can abort a rank that destroys its group right after a collective
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
