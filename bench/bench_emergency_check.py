#!/usr/bin/env python3
"""What ``EmergencyStop.check()`` costs per step, next to a training step, on 2 ranks (gloo, CPU).

    python bench/bench_emergency_check.py                 # 2 ranks, 2000 steps each measurement
    python bench/bench_emergency_check.py --steps 5000 --check-every 10

Three loops on each rank (rank 0 prints), interleaved in 5 rounds, medians of the per-round means:

- step: a tiny model's training step (Linear 64->64->1 in DistributedDataParallel: forward,
  backward with its gradient all_reduce, SGD step) — the smallest real step there is, so the
  ratios below are the worst case; a real model's step is orders of magnitude longer;
- step + before: plus what ``check()`` did until now, one ``all_reduce(MAX)`` of the local signal
  on the default group at every step (``ckptctl.training.distributed.max_over_ranks``; with NCCL also a
  host-device sync);
- step + now: plus ``EmergencyStop(check_every=N).check()``: every N-th call collects the agreement
  started N calls earlier and starts the next (CPU only, never a device sync), a counter otherwise.

Printed: each check's cost per step (the loop's time minus the step-only loop's) and its ratio to
the step. With NCCL the "before" cost also stalled the CPU until the GPU queue drained, which this
CPU-only bench cannot show. On a loaded machine the differences are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckptctl.training import distributed  # noqa: E402
from ckptctl.training.signals import EmergencyStop  # noqa: E402


def _timed(fn, steps: int) -> float:
    """Mean seconds per call of ``fn`` over ``steps`` calls, after a barrier so both ranks start together."""
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _rank(rank: int, store_path: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 64), torch.randn(32, 1)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    stop = EmergencyStop(check_every=args.check_every)
    stop.check()  # the control group is made at the first agreement: not timed
    for _ in range(args.check_every):
        stop.check()
    rounds: dict[str, list[float]] = {"step": [], "before": [], "after": []}
    for _ in range(args.rounds):
        rounds["step"].append(_timed(step, args.steps))
        rounds["before"].append(_timed(lambda: (step(), distributed.max_over_ranks(0)), args.steps))
        rounds["after"].append(_timed(lambda: (step(), stop.check()), args.steps))
    if rank == 0:
        med = {name: statistics.median(values) * 1e6 for name, values in rounds.items()}
        before, after = med["before"] - med["step"], med["after"] - med["step"]
        print(f"2 ranks, gloo, {args.steps} steps x {args.rounds} rounds (median of round means), us per step:")
        print(f"  training step (tiny DDP model)           {med['step']:9.1f}")
        print(f"  + check() before (all_reduce each step)  {before:9.1f}   = {before / med['step']:.3f} x step")
        print(f"  + check() now (check_every={args.check_every:<3})         {after:9.1f}   = {after / med['step']:.3f} x step")
    dist.barrier()  # torch can abort a rank that destroys its group right after a collective
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check-every", type=int, default=EmergencyStop().check_every)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(os.path.join(tmp, "store"), args), nprocs=2)


if __name__ == "__main__":
    main()
