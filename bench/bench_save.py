#!/usr/bin/env python3
"""Cost of one rolling save, side by side: plain torch.save vs CheckpointManager vs the original manager.

    /work/venv/bin/python bench/bench_save.py            # 200 MB state, 7 rounds (about a minute)
    /work/venv/bin/python bench/bench_save.py --mb 400 --rounds 5

Measured per save, median over rounds, variants interleaved so disk-speed drift hits all alike:

- baseline: ``torch.save`` of the state to one file + ``fsync`` of that file;
- ckptctl, links: ``CheckpointManager.save`` with ``backup_mode="link"`` — every file the save updates
  (rolling_step_N.pt, latest.pt, latest_backup.pt, rolling_last_backup.pt), temp + fsync + CRC-32
  verification + renames + directory fsyncs + retention;
- ckptctl, links, no deletion: the same with retention keeping everything, which separates the
  protocol's own cost from the cost of deleting the oldest 200 MB rolling file (on this machine's
  ext4 mounted with ``discard``, freeing blocks is expensive and noisy);
- ckptctl, copies: the same with ``backup_mode="copy"`` (rolling_last_backup.pt is independent bytes);
- original: a manager as the original document describes it: ``torch.save`` the rolling file, a full
  ``torch.load`` to validate it, ``shutil.copy`` for latest, latest_backup and rolling_last_backup,
  then delete old rolling files (no fsync, as written there).

Dirty pages from the previous save are flushed (``os.sync``, untimed) before each timed save, so no
variant pays for another's writeback. Targets: links <= 1.3x the baseline; original / links >= 1.6.
Medians are the figures; minimums (the cost without interference from a shared disk) are printed too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckptctl.training.manager import CheckpointManager  # noqa: E402


def make_state(megabytes: int) -> dict:
    """A checkpoint-shaped dict whose tensors total ``megabytes`` MB (model + optimizer moments)."""
    floats = megabytes * 1_000_000 // 4
    per_tensor = floats // 12
    model = {f"layer{i}.weight": torch.randn(per_tensor) for i in range(4)}
    optimizer = {"state": {i: {"exp_avg": torch.randn(per_tensor), "exp_avg_sq": torch.rand(per_tensor)} for i in range(4)},
                 "param_groups": [{"lr": 3e-4, "params": list(range(4))}]}  # fmt: skip
    return {"step": 0, "epoch": 0, "model": model, "optimizer": optimizer, "train_loss": 0.5, "val_loss": 0.6}


def state_bytes(state: dict) -> int:
    total = 0
    stack = [state]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def plain_save(directory: Path) -> Callable[[dict, int], None]:
    def save(state: dict, step: int) -> None:
        path = directory / "plain.pt"
        torch.save(state, path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return save


def ckptctl_save(directory: Path, backup_mode: str, keep: int = 2) -> Callable[[dict, int], None]:
    manager = CheckpointManager(directory, keep_last_n=keep, keep_emergency_n=2, backup_mode=backup_mode, monitor_every=0)
    return lambda state, step: manager.save(state, step=step)


def original_save(directory: Path, keep: int = 2) -> Callable[[dict, int], None]:
    """The original document's flow: save, validate by loading everything, copy for every backup."""

    def save(state: dict, step: int) -> None:
        rolling = directory / f"rolling_step_{step:06d}.pt"
        torch.save(state, rolling)
        torch.load(rolling, weights_only=False)  # "validate the checkpoint" by loading it in full
        latest = directory / "latest.pt"
        if latest.exists():
            shutil.copy(latest, directory / "latest_backup.pt")
        shutil.copy(rolling, latest)
        shutil.copy(rolling, directory / "rolling_last_backup.pt")
        for old in sorted(directory.glob("rolling_step_*.pt"))[:-keep]:
            old.unlink()

    return save


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="state size in MB (default 200)")
    parser.add_argument("--rounds", type=int, default=7, help="timed saves per variant (default 7)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir next to the repo)")
    args = parser.parse_args()

    state = make_state(args.mb)
    scratch = Path(tempfile.mkdtemp(prefix="bench_save_", dir=args.dir))
    variants: dict[str, Callable[[dict, int], None]] = {}
    for name, factory in (
        ("plain torch.save + fsync (1 file)", lambda d: plain_save(d)),
        ("ckptctl save, backups as hard links", lambda d: ckptctl_save(d, "link")),
        ("  same, retention deletes nothing this round", lambda d: ckptctl_save(d, "link", keep=1000)),
        ("ckptctl save, backups as real copies", lambda d: ckptctl_save(d, "copy")),
        ("original manager (save + torch.load + 3x shutil.copy)", lambda d: original_save(d)),
    ):
        directory = scratch / str(len(variants))
        directory.mkdir()
        variants[name] = factory(directory)
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for name, save in variants.items():  # warm-up: first files, latest.pt exists before timing
            save(state, 1)
        for round_ in range(args.rounds):
            for name, save in variants.items():
                os.sync()
                started = time.perf_counter()
                save(state, round_ + 2)
                times[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"state: {state_bytes(state) / 1e6:.1f} MB in 12 tensors; {args.rounds} rounds; seconds per save")
    for label, stat in (("median", statistics.median), ("min", min)):
        report(label, {name: stat(values) for name, values in times.items()}, times if label == "median" else None)
    return 0


def report(label: str, figures: dict[str, float], spread: dict[str, list[float]] | None) -> None:
    base, links, no_delete, copies, original = figures.values()
    print(f"-- {label} --")
    for name, value in figures.items():
        detail = "   [" + ", ".join(f"{t:.3f}" for t in spread[name]) + "]" if spread else ""
        print(f"  {name:<56} {value:7.3f} s  {value / base:5.2f}x baseline{detail}")
    print(f"  ckptctl (links) / plain torch.save+fsync:  {links / base:.2f}x   (target <= 1.3x)")
    print(f"  ckptctl (links, no deletion) / plain:      {no_delete / base:.2f}x")
    print(f"  ckptctl (copies) / plain torch.save+fsync: {copies / base:.2f}x")
    print(f"  original manager / ckptctl (links):        {original / links:.2f}x faster   (target >= 1.6x)")
    print(f"  original manager / ckptctl (copies):       {original / copies:.2f}x faster")


if __name__ == "__main__":
    sys.exit(main())
