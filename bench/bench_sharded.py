#!/usr/bin/env python3
"""Sharded (DCP) checkpoints, side by side with plain DCP, in one process:

    /work/venv/bin/python bench/bench_sharded.py             # 100 MB state, 5 rounds, 20-checkpoint listing
    /work/venv/bin/python bench/bench_sharded.py --mb 200 --rounds 3

- save: ``CheckpointManager(format="dcp").save`` (temp directory, DCP with ``sync_files``, fsync of every
  file and both directories, rename, ``latest`` symlink, retention; once deleting the oldest directory,
  once with nothing to delete) vs a bare
  ``dcp.save(..., FileSystemWriter(dir, sync_files=True))`` into a fresh directory. Dirty pages are
  flushed (``os.sync``, untimed) before each timed save; variants interleaved; medians.
- list: reading one directory of checkpoints as ``ckptctl list`` does (restricted unpickler on
  ``.metadata`` + the small value blobs, shard sizes checked) vs DCP's own
  ``FileSystemReader.read_metadata()`` (plain ``pickle.load``: runs whatever the file names) for every
  checkpoint, and vs ``dcp.load`` of the full state of one checkpoint (what a reader without a metadata
  path would need for ``step``).
- async: how long ``save(..., blocking=False)`` blocks the loop (DCP's ``async_save`` stages the state in CPU
  memory, the write and rank 0's commit run in the background) vs the synchronous manager save, and vs a bare
  ``dcp.async_save`` (the baseline: staging alone, no commit protocol). Between saves the "training" mutates
  every tensor and computes for as long as the last synchronous save took (bench_async_save.train_for).
  One process, no process group (DCP's single-process mode).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.distributed.checkpoint as dcp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckptctl.layouts.catalog import scan  # noqa: E402
from ckptctl.training.manager import CheckpointManager  # noqa: E402
from bench_async_save import train_for  # noqa: E402  (bench/ is on sys.path when run as a script)

warnings.filterwarnings("ignore")


def make_state(megabytes: int, step: int = 0) -> dict:
    floats = megabytes * 1_000_000 // 4 // 12
    model = {f"layer{i}.weight": torch.randn(floats) for i in range(4)}
    optim = {"state": {i: {"exp_avg": torch.randn(floats), "exp_avg_sq": torch.rand(floats)} for i in range(4)},
             "param_groups": [{"lr": 3e-4, "params": list(range(4))}]}  # fmt: skip
    return {"step": step, "epoch": 0, "model": model, "optimizer": optim, "train_loss": 0.5, "val_loss": 0.6}


def timed(fn: Callable[[], object]) -> float:
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_save(root: Path, megabytes: int, rounds: int) -> None:
    state = make_state(megabytes)
    deleting = CheckpointManager(root / "managed", keep_last_n=2, format="dcp", monitor_every=0)
    keeping = CheckpointManager(root / "kept", keep_last_n=rounds + 1, format="dcp", monitor_every=0)
    times: dict[str, list[float]] = {"bare": [], "ckptctl": [], "no deletion": []}
    for i in range(rounds):
        plain = root / f"plain_{i}"
        times["bare"].append(timed(lambda: dcp.save(state, storage_writer=dcp.FileSystemWriter(plain, sync_files=True))))
        times["ckptctl"].append(timed(lambda: deleting.save(state, step=i + 1)))
        times["no deletion"].append(timed(lambda: keeping.save(state, step=i + 1)))
        shutil.rmtree(plain)
    base = statistics.median(times["bare"])
    print(f"save {megabytes} MB, median of {rounds}: bare dcp.save {base * 1000:.0f} ms (min {min(times['bare']) * 1000:.0f})")
    for name in ("ckptctl", "no deletion"):
        median = statistics.median(times[name])
        print(f"  ckptctl ({name if name != 'ckptctl' else 'retention deletes the oldest'}) {median * 1000:.0f} ms "
              f"(min {min(times[name]) * 1000:.0f}), ratio {median / base:.2f}x")  # fmt: skip


def bench_list(root: Path, count: int, rounds: int) -> None:
    directory = root / "listing"
    mgr = CheckpointManager(directory, keep_last_n=count + 1, format="dcp", monitor_every=0)
    state = make_state(8)
    for step in range(1, count + 1):
        mgr.save(state, step=step)
    dirs = sorted(p for p in directory.iterdir() if p.name.startswith("rolling_step_"))

    def ours() -> None:
        entries = scan(directory)
        assert all(e.status()[0] == "ok" for e in entries if e.is_directory)

    def dcp_metadata() -> None:
        for path in dirs:
            dcp.FileSystemReader(path).read_metadata()

    def dcp_full_load() -> None:
        target = make_state(8)
        dcp.load(target, storage_reader=dcp.FileSystemReader(dirs[-1]))

    results = {name: statistics.median(timed(fn) for _ in range(rounds))
               for name, fn in (("ckptctl", ours), ("dcp", dcp_metadata), ("load", dcp_full_load))}  # fmt: skip
    print(f"list {count} checkpoints (+latest, latest_backup): ckptctl {results['ckptctl'] * 1000:.1f} ms, "
          f"DCP read_metadata (unsafe pickle.load) {results['dcp'] * 1000:.1f} ms, ratio "
          f"{results['ckptctl'] / results['dcp']:.2f}x; one full dcp.load (8 MB) {results['load'] * 1000:.1f} ms")


def bench_async(root: Path, megabytes: int, rounds: int) -> None:
    state = make_state(megabytes)
    sync_mgr = CheckpointManager(root / "dcp_sync", keep_last_n=2, format="dcp", monitor_every=0)
    async_mgr = CheckpointManager(root / "dcp_async", keep_last_n=2, format="dcp", monitor_every=0)
    times: dict[str, list[float]] = {"sync": [], "async": [], "bare": []}
    background: list[float] = []
    for step in range(1, rounds + 1):
        times["sync"].append(timed(lambda: sync_mgr.save(state, step=step)))
        gap = times["sync"][-1]
        train_for(state, gap)
        submitted = time.perf_counter()
        times["async"].append(timed(lambda: async_mgr.save(state, step=step, blocking=False)))
        train_for(state, gap)  # the write runs meanwhile
        async_mgr._writer.settle()
        background.append(time.perf_counter() - submitted)
        plain, futures = root / f"bare_async_{step}", []
        times["bare"].append(timed(lambda: futures.append(
            dcp.async_save(state, storage_writer=dcp.FileSystemWriter(plain, sync_files=True)))))  # fmt: skip
        train_for(state, gap)
        futures[0].result()
        shutil.rmtree(plain)
    async_mgr.close()
    assert os.readlink(root / "dcp_async" / "latest") == f"rolling_step_{rounds:06d}"
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"async save {megabytes} MB, median of {rounds} (max): loop blocked by save(blocking=False) "
          f"{med['async'] * 1000:.0f} ms ({max(times['async']) * 1000:.0f}); synchronous save {med['sync'] * 1000:.0f} ms "
          f"({max(times['sync']) * 1000:.0f}); bare dcp.async_save {med['bare'] * 1000:.0f} ms ({max(times['bare']) * 1000:.0f})")
    print(f"  ratio blocked async/sync {med['async'] / med['sync']:.3f}x; ckptctl async / bare dcp.async_save "
          f"{med['async'] / med['bare']:.2f}x; background write + commit, submit -> done {statistics.median(background) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        bench_save(Path(tmp), args.mb, args.rounds)
        bench_list(Path(tmp), args.count, args.rounds)
        bench_async(Path(tmp), args.mb, args.rounds)


if __name__ == "__main__":
    main()
