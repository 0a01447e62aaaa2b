"""A tiny training job for ``torchrun --nproc_per_node 2`` (gloo, CPU), driven by tests/test_distributed.py.

    train_worker.py train DIR LOGDIR   rolling saves (blocking=False) every 5 steps, save_best every 10
                                       with val_losses that differ per rank, EmergencyStop.check() every
                                       step; rank 1 writes LOGDIR/ready_rank1 (its pid) after step 22 and
                                       the test sends SIGTERM to that pid only.
    train_worker.py resume DIR LOGDIR  each rank starts from a different random model, resumes "latest".

Each rank writes LOGDIR/rank<N>.json: what every call returned, how many files it staged (rank 1
must stage none), where it stopped, what it restored.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ckptctl import durable
from ckptctl.manager import CheckpointManager, build_state
from ckptctl.signals import EmergencyStop

MAX_STEPS = 1500  # ~30 s at 20 ms a step: the test's SIGTERM ends the run long before
READY_AFTER = 22
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
    with EmergencyStop() as stop:
        for step in range(1, MAX_STEPS + 1):
            loss = model(torch.randn(8, 16)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            time.sleep(0.02)
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
                (logdir / "ready_rank1").write_text(str(os.getpid()))
    manager.close()


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


def main() -> None:
    mode, directory, logdir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    (logdir / f"pid_rank{rank}").write_text(str(os.getpid()))  # so the test can kill stragglers
    log: dict = {"rank": rank, "pid": os.getpid()}
    _count_stages(log)
    try:
        if mode == "train":
            train(directory, logdir, rank, log)
        else:
            resume(directory, rank, log)
    finally:
        (logdir / f"rank{rank}.json").write_text(json.dumps(log))
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
