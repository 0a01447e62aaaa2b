#!/usr/bin/env python3
"""How long a save blocks the training loop: save(blocking=False) vs a synchronous save of the same state.

    /work/venv/bin/python bench/bench_async_save.py              # 200 MB state, 5 rounds (about a minute)
    /work/venv/bin/python bench/bench_async_save.py --mb 400 --rounds 3

Each round, interleaved so disk-speed drift hits both alike:

- sync: ``CheckpointManager.save(state, step)`` — the loop waits for torch.save, fsync, CRC-32
  verification, renames, directory fsync and retention;
- async: ``CheckpointManager.save(state, step, blocking=False)`` — the loop waits for the CPU snapshot
  (a copy of every tensor) and the hand-off; the same write then runs on the worker thread.

Between saves the "training" mutates every tensor in place and computes (matrix products) for as long
as the last synchronous save took, so a background write normally finishes before the next save
(the regime async saves are for; when it does not, the next save waits and that wait is counted as
blocked time too). Dirty pages are flushed (``os.sync``, untimed) before each timed save. Reported:
median and max of the blocked time per save, the ratio async/sync (target <= 0.3), and how long the
background write itself took (submit -> done), which shows the write was not made cheaper, only moved.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckptctl.training.manager import CheckpointManager  # noqa: E402


def make_state(megabytes: int) -> dict:
    """A checkpoint-shaped dict whose tensors total ``megabytes`` MB (model + optimizer moments)."""
    per_tensor = megabytes * 1_000_000 // 4 // 12
    model = {f"layer{i}.weight": torch.randn(per_tensor) for i in range(4)}
    optimizer = {"state": {i: {"exp_avg": torch.randn(per_tensor), "exp_avg_sq": torch.rand(per_tensor)} for i in range(4)},
                 "param_groups": [{"lr": 3e-4, "params": list(range(4))}]}  # fmt: skip
    return {"step": 0, "epoch": 0, "model": model, "optimizer": optimizer, "train_loss": 0.5, "val_loss": 0.6}


def train_for(state: dict, seconds: float) -> None:
    """Stand-in for training steps: update every tensor in place, then compute until ``seconds`` passed."""
    with torch.no_grad():
        for tensor in _tensors(state):
            tensor.add_(1e-3)
    a = torch.randn(256, 256)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        a = torch.tanh(a @ a)


def _tensors(state: dict):
    stack = [state]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="state size in MB (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="saves per variant (default 5)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir on /tmp)")
    args = parser.parse_args()

    state = make_state(args.mb)
    size = sum(t.numel() * t.element_size() for t in _tensors(state))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-async-") as root:
        sync_mgr = CheckpointManager(Path(root) / "sync", keep_last_n=2, monitor_every=0)
        async_mgr = CheckpointManager(Path(root) / "async", keep_last_n=2, monitor_every=0)
        sync_times, async_times, background = [], [], []
        gap = 1.0
        for step in range(1, args.rounds + 1):
            os.sync()
            state["step"] = step
            sync_times.append(timed(lambda: sync_mgr.save(state, step=step)))
            gap = sync_times[-1]
            train_for(state, gap)
            os.sync()
            submitted = time.perf_counter()
            async_times.append(timed(lambda: async_mgr.save(state, step=step, blocking=False)))
            train_for(state, gap)  # the write runs meanwhile
            async_mgr._writer.settle()
            background.append(time.perf_counter() - submitted)
        async_mgr.close()
        saved = torch.load(Path(root) / "async" / "latest.pt", weights_only=True)
        assert saved["step"] == args.rounds, "the last background save is not latest.pt"

    sync_med, async_med = statistics.median(sync_times), statistics.median(async_times)
    print(f"state: {size / 1e6:.0f} MB of tensors, {args.rounds} saves per variant, torch {torch.__version__}")
    print(f"{'':34}{'median':>10}{'max':>10}")
    print(f"{'sync save: loop blocked':34}{sync_med:>9.3f}s{max(sync_times):>9.3f}s")
    print(f"{'save(blocking=False): loop blocked':34}{async_med:>9.3f}s{max(async_times):>9.3f}s")
    print(f"{'  background write, submit -> done':34}{statistics.median(background):>9.3f}s{max(background):>9.3f}s")
    print(f"ratio blocked async/sync: {async_med / sync_med:.3f}x median, "
          f"{max(async_times) / max(sync_times):.3f}x max (target <= 0.3x)")  # fmt: skip


if __name__ == "__main__":
    main()
