#!/usr/bin/env python3
"""Benchmark ``ckptctl list`` against ``torch.load`` of every file, and cold ``ckptctl --help``.

    /work/venv/bin/python bench/bench_list.py [--files 20] [--mb 100] [--keep DIR]

1. A directory of N real ``torch.save`` checkpoints (the seed's dict shape: model, AdamW state,
   RNG states with numpy, args, dataloader state) of about MB megabytes each: time the core listing
   in-process (every file read, as a first listing does; and served from the listing cache, as
   every later listing of unchanged files is), a cold ``ckptctl list`` subprocess, and
   ``torch.load`` of every file (the baseline, plain and memory-mapped); print the ratios
   (target: list >= 30x faster than torch.load).
2. The same listing over 10 MB files and 200 MB files side by side: its time must not grow with size.
3. Cold ``ckptctl --help`` (fresh interpreter; target <= 0.3 s), with ``python -c pass`` for scale.

The page cache is warm for every contender (files were just written); the checkpoint files are
written under a temporary directory in /tmp and removed at the end (disk peak ~2.1 GB by default).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CKPTCTL = Path(sys.executable).with_name("ckptctl")


LAYERS = 24  # fixed: file size grows through tensor dimensions, the tensor count (pickle size) stays the same


def make_state(target_mb: float, step: int):
    """A seed-shaped checkpoint dict whose tensors total about ``target_mb`` (model + 2x AdamW moments)."""
    import math
    import random

    import numpy as np
    import torch

    layers = LAYERS
    # per layer: two (2h x h) matrices + biases (h + 2h) elements, float32, 3 copies (param, exp_avg, exp_avg_sq)
    hidden = max(8, int(math.sqrt(target_mb * 2**20 / (layers * 4 * 4 * 3))))
    model, state = {}, {}
    gen = torch.Generator().manual_seed(0)
    for i in range(layers):
        for name, shape in ((f"layers.{i}.attn.weight", (2 * hidden, hidden)), (f"layers.{i}.attn.bias", (hidden,)),
                            (f"layers.{i}.mlp.weight", (2 * hidden, hidden)), (f"layers.{i}.mlp.bias", (2 * hidden,))):  # fmt: skip
            model[name] = torch.randn(shape, generator=gen)
    for index, tensor in enumerate(model.values()):
        state[index] = {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(tensor), "exp_avg_sq": torch.zeros_like(tensor)}
    groups = [{"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False,
               "params": list(range(len(model)))}]  # fmt: skip
    return {
        "step": step, "epoch": step // 1000, "model": model,
        "optimizer": {"state": state, "param_groups": groups},
        "train_loss": 2.0 / (1 + step / 1000), "val_loss": 2.1 / (1 + step / 1000),
        "rng_state": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                      "torch_cuda": None},
        "dataloader_state": {"epoch": step // 1000, "batch_idx": step % 1000, "seed": 1234},
        "args": {"lr": 3e-4, "batch_size": 32, "model": "bench", "hidden": hidden, "layers": layers},
        "timestamp": "2026-11-01T12:00:00", "checkpoint_type": "regular",
    }  # fmt: skip


def write_dir(directory: Path, files: int, target_mb: float) -> int:
    """N rolling checkpoints of about target_mb each (one state, re-saved with a new step). Returns bytes."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    state = make_state(target_mb, 0)
    for i in range(files):
        step = (i + 1) * 1000
        state.update(step=step, epoch=i, val_loss=2.1 / (1 + i), train_loss=2.0 / (1 + i))
        torch.save(state, directory / f"rolling_step_{step:06d}.pt")
    return sum(p.stat().st_size for p in directory.iterdir())


def tensor_count(directory: Path) -> int:
    from ckptctl.formats.reader import read_checkpoint

    return sum(1 for _ in read_checkpoint(next(directory.iterdir())).tensors())


def best_of(runs: int, func) -> float:
    return measure(runs, func)[0]


def measure(runs: int, func) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) time of ``runs`` calls: the machine is shared, and CPU
    time is what other processes disturb least."""
    walls, cpus = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        func()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return min(walls), min(cpus)


def evict(directory: Path) -> None:
    """Drop *these files'* pages from the page cache (fsync, then POSIX_FADV_DONTNEED): a cold read
    without touching the rest of the shared machine's cache."""
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_cold_cache(directory: Path, func, runs: int = 3) -> float:
    """Best of ``runs`` of ``func`` right after evicting the directory's pages."""
    times = []
    for _ in range(runs):
        evict(directory)
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def time_list_in_process(directory: Path, runs: int = 5, use_cache: bool = False) -> float:
    """The core listing, exactly what ``ckptctl list --json`` computes (catalog + safe reads + rows).

    ``use_cache=False`` reads every file (a first listing); True serves settled, unchanged files
    from ckptctl.ops.listing_cache (every later listing)."""
    from ckptctl.ops.listing import list_checkpoints

    def run():
        doc = list_checkpoints(directory, use_cache=use_cache).to_json()
        assert all(row["status"] == "ok" for row in doc["checkpoints"]), doc

    return best_of(runs, run)


def time_list_subprocess(directory: Path, runs: int = 3, *extra: str) -> float:
    def run():
        subprocess.run([str(CKPTCTL), "list", str(directory), *extra], check=True, stdout=subprocess.DEVNULL)

    return best_of(runs, run)


def load_all(directory: Path, mmap: bool) -> None:
    """The baseline: what a lister built on torch.load does for every file."""
    import torch

    for path in sorted(directory.iterdir()):
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        _ = (state["step"], state["val_loss"])
        del state


def time_torch_load(directory: Path, mmap: bool, runs: int = 3) -> float:
    return best_of(runs, lambda: load_all(directory, mmap))


def cold(argv: list[str], runs: int, env: dict[str, str] | None = None) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def section_main(base: Path, files: int, mb: float) -> None:
    d = base / "main"
    total = write_dir(d, files, mb)
    print(f"\n[1] {files} checkpoints, {total / files / 2**20:.0f} MiB each ({total / 2**30:.2f} GiB total), "
          f"{tensor_count(d)} tensors each")
    from ckptctl.ops import listing_cache
    from ckptctl.ops.listing import list_checkpoints

    os.environ["CKPTCTL_CACHE_DIR"] = str(base / "cache")  # a private listing cache, removed with base
    time.sleep(listing_cache.SETTLE_SECONDS + 0.1)  # the cache only keeps files that have settled
    time_list_in_process(d, runs=1)  # warm-up: imports
    ours, ours_cpu = measure(5, lambda: list_checkpoints(d, use_cache=False).to_json())
    time_list_in_process(d, runs=1, use_cache=True)  # the first listing fills the cache
    cached = time_list_in_process(d, use_cache=True)
    ours_cold = time_list_subprocess(d, 3, "--no-cache")
    cached_cold = time_list_subprocess(d, 3)
    load, load_cpu = measure(3, lambda: load_all(d, mmap=False))
    load_mmap = time_torch_load(d, mmap=True)
    cold_ours = time_cold_cache(d, lambda: list_checkpoints(d, use_cache=False).to_json())
    cold_load = time_cold_cache(d, lambda: load_all(d, mmap=False), runs=1)
    print("  warm page cache (files just written):")
    print(f"  ckptctl list, in-process, every file read   {ours * 1000:9.1f} ms")
    print(f"  ckptctl list, in-process, listing cache     {cached * 1000:9.1f} ms")
    print(f"  ckptctl list --no-cache, cold subprocess    {ours_cold * 1000:9.1f} ms")
    print(f"  ckptctl list, cold subprocess, cache        {cached_cold * 1000:9.1f} ms")
    print(f"  torch.load of every file                    {load * 1000:9.1f} ms")
    print(f"  torch.load(mmap=True) of each file          {load_mmap * 1000:9.1f} ms")
    print(f"  ratio torch.load / list (in-process, cache)          {load / cached:7.1f}x   (target >= 30x)")
    print(f"  ratio torch.load / list (in-process, every file)     {load / ours:7.1f}x")
    print(f"  ratio torch.load / list (cold subprocess, cache)     {load / cached_cold:7.1f}x")
    print(f"  ratio torch.load / list (cold subprocess, --no-cache){load / ours_cold:7.1f}x")
    print(f"  ratio torch.load(mmap) / list (in-process, every file) {load_mmap / ours:5.1f}x")
    print(f"  CPU time: list (every file) {ours_cpu * 1000:.1f} ms, torch.load {load_cpu * 1000:.1f} ms, "
          f"ratio {load_cpu / ours_cpu:.1f}x")
    print("  cold page cache (these files evicted before each run):")
    print(f"  ckptctl list, in-process, every file read   {cold_ours * 1000:9.1f} ms")
    print(f"  torch.load of every file                    {cold_load * 1000:9.1f} ms")
    print(f"  ratio torch.load / list (in-process, every file)     {cold_load / cold_ours:7.1f}x")
    shutil.rmtree(d)


def section_sizes(base: Path, files: int) -> None:
    print(f"\n[2] listing time versus checkpoint size ({files} files each)")
    rows = []
    for mb in (10, 200):
        d = base / f"size_{mb}"
        total = write_dir(d, files, mb)
        rows.append((mb, total / files / 2**20, time_list_in_process(d), time_torch_load(d, mmap=False)))
        print(f"  ({files} x {rows[-1][1]:.0f} MiB written, {tensor_count(d)} tensors each)")
        shutil.rmtree(d)
    print(f"  {'file size':>10}  {'list (in-process)':>18}  {'torch.load all':>15}")
    for _mb, size, ours, load in rows:
        print(f"  {size:7.0f} MiB  {ours * 1000:15.1f} ms  {load * 1000:12.1f} ms")
    (_, s1, o1, l1), (_, s2, o2, l2) = rows
    print(f"  size grew {s2 / s1:.1f}x: list time x{o2 / o1:.2f}, torch.load time x{l2 / l1:.2f}")


def section_help(runs: int) -> None:
    print(f"\n[3] cold start (fresh interpreter, best / median of {runs})")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([str(CKPTCTL), "--help"], check=True, stdout=subprocess.DEVNULL, env=env)  # write bytecode once
    for label, argv, run_env in (
        ("python -c pass", [sys.executable, "-c", "pass"], env),
        ("ckptctl --help", [str(CKPTCTL), "--help"], env),
        ("ckptctl --help, no bytecode cache", [str(CKPTCTL), "--help"], {**env, "PYTHONDONTWRITEBYTECODE": "1"}),
    ):
        best, median = cold(argv, runs, run_env)
        target = "   (target <= 0.3 s)" if label == "ckptctl --help" else ""
        print(f"  {label:<36} {best:6.3f} s / {median:6.3f} s{target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--size-files", type=int, default=10, help="files per directory in the size comparison")
    parser.add_argument("--help-runs", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir in /tmp)")
    parser.add_argument("--only", default="main,sizes,help", help="comma-separated sections to run")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    base = Path(tempfile.mkdtemp(prefix="ckptctl-bench-", dir=args.dir))
    try:
        if "main" in sections:
            section_main(base, args.files, args.mb)
        if "sizes" in sections:
            section_sizes(base, args.size_files)
        if "help" in sections:
            section_help(args.help_runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
