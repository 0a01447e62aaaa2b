"""Default-level ``validate`` of a >= 2 GB checkpoint directory against ``cat`` and ``torch.load``.

Run: ``/work/venv/bin/python bench/bench_validate.py [--gib 2.0] [--rounds 3] [--keep DIR]``

Side by side, page cache warm (every file is read once before timing):

- ``cat FILES > /dev/null``: the speed of just reading the bytes (the target: >= 0.8x of it);
- ``validate_paths(level="default")`` in this process, with 1 and with the default number of CRC
  threads (structure + safe unpickle + CRC-32 of every record + layout checks);
- ``torch.load(weights_only=True)`` of each file: what the original system did to "validate";
- peak RSS of a fresh process validating one 10 MB and one 500 MB file (and torch.load's, for contrast).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1 << 20


def write_checkpoint(path: Path, nbytes: int, step: int) -> Path:
    """A layout checkpoint whose model is ``nbytes`` of float32 tensors of 4-64 MiB each."""
    import torch

    model, left, index = {}, nbytes, 0
    gen = torch.Generator().manual_seed(step)
    while left > 0:
        size = min(left, (4 << 20) * (1 + index % 16))
        model[f"layer{index}.weight"] = torch.randn(size // 4, generator=gen)
        left -= size
        index += 1
    state = {"step": step, "epoch": 0, "model": model, "optimizer": None, "train_loss": 0.5, "val_loss": 0.4,
             "rng_state": {"torch": torch.get_rng_state()}, "args": {"lr": 0.1}, "timestamp": "2026-11-29T05:00:00"}  # fmt: skip
    torch.save(state, path)
    return path


def build(directory: Path, gib: float) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    total, files, step = int(gib * (1 << 30)), [], 1000
    sizes = [512 * MIB, 512 * MIB, 256 * MIB, 256 * MIB] + [128 * MIB] * 64
    for size in sizes:
        if sum(p.stat().st_size for p in files) >= total:
            break
        files.append(write_checkpoint(directory / f"rolling_step_{step:06d}.pt", size, step))
        step += 1000
    return files


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def cpu_seconds(fn) -> float:
    """CPU time (user + system, this process's threads and its children) of one call: unlike wall
    time it barely moves when other jobs share the machine."""
    import resource

    def total() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    before = total()
    fn()
    return total() - before


def cat(files: list[Path]) -> None:
    with open(os.devnull, "wb") as sink:
        subprocess.run(["cat", *map(str, files)], stdout=sink, check=True)


def validate(files: list[Path], jobs: int) -> None:
    from ckptctl.integrity import validate_paths

    report = validate_paths(files, "default", jobs=jobs)
    assert report.invalid == 0 and report.bytes_checked > 0, report.to_json()


def torch_load_all(files: list[Path]) -> None:
    import torch

    for path in files:
        torch.load(path, map_location="cpu", weights_only=True)


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so a child of this (large) process
# would report this process's size.
PEAK_SCRIPT = """
from ckptctl.integrity import validate_file
{body}
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def peak_rss_kib(body: str) -> int:
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT.format(body=body)], capture_output=True, text=True,
                         check=True, cwd=ROOT)  # fmt: skip
    return int(out.stdout.split()[-1])


def memory(directory: Path) -> None:
    (directory / "mem").mkdir(exist_ok=True)
    small = write_checkpoint(directory / "mem" / "mem_10mb.pt", 10 * MIB, 1)
    large = write_checkpoint(directory / "mem" / "mem_500mb.pt", 500 * MIB, 2)
    baseline = peak_rss_kib("pass")
    print(f"peak RSS of a fresh process (interpreter + ckptctl imports alone: {baseline / 1024:.1f} MiB)")
    print(f"  {'file':<14}{'validate (default)':>20}{'torch.load':>14}")
    for path in (small, large):
        ours = peak_rss_kib(f"r = validate_file({str(path)!r}, 'default', jobs=2); assert r.valid, r.problems")
        theirs = peak_rss_kib(f"import torch; torch.load({str(path)!r}, weights_only=True)")
        print(f"  {path.name:<14}{ours / 1024:>17.1f} MiB{theirs / 1024:>10.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the directory to validate")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (the best is reported)")
    parser.add_argument("--keep", type=Path, help="build into (or reuse) this directory and keep it")
    args = parser.parse_args()

    from ckptctl.cli.validate_cmd import default_jobs
    from ckptctl import integrity

    directory = args.keep or Path(tempfile.mkdtemp(prefix="ckptctl-bench-validate-"))
    try:
        files = sorted(directory.glob("rolling_step_*.pt")) or build(directory, args.gib)
        total = sum(p.stat().st_size for p in files)
        print(f"{len(files)} files, {total / (1 << 30):.2f} GiB in {directory}; CRC from "
              f"{integrity._crc32.__module__}; {os.cpu_count()} CPUs; best of {args.rounds}")  # fmt: skip
        cat(files)  # warm the page cache
        jobs = default_jobs()
        runs = {"cat": lambda: cat(files), "one": lambda: validate(files, 1), "ours": lambda: validate(files, jobs)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved: the machine is shared, compare like with like
            for name, fn in runs.items():
                times[name].append(best(fn, 1))
        t_cat, t_one, t_ours = (min(times[name]) for name in runs)
        cpu = {name: min(cpu_seconds(fn) for _ in range(2)) for name, fn in runs.items()}
        print(f"CPU seconds (user+sys, best of 2): cat {cpu['cat']:.3f}, validate 1 thread {cpu['one']:.3f}, "
              f"{jobs} threads {cpu['ours']:.3f}")  # fmt: skip
        t_torch = best(lambda: torch_load_all(files), 1)
        rate = lambda t: f"{total / t / 1e9:6.2f} GB/s"  # noqa: E731
        print(f"cat > /dev/null            {t_cat:7.3f} s  {rate(t_cat)}")
        print(f"validate, 1 CRC thread     {t_one:7.3f} s  {rate(t_one)}  = {t_cat / t_one:.2f}x cat")
        print(f"validate, {jobs} CRC threads    {t_ours:7.3f} s  {rate(t_ours)}  = {t_cat / t_ours:.2f}x cat (target >= 0.8x)")
        median = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
        print(f"medians: cat {rate(median['cat'])}, validate 1 thread {rate(median['one'])}, "
              f"{jobs} threads {rate(median['ours'])} = {median['cat'] / median['ours']:.2f}x cat")  # fmt: skip
        print(f"torch.load each file       {t_torch:7.3f} s  {rate(t_torch)}  -> validate is {t_torch / t_ours:.1f}x faster (target >= 3x)")
        memory(directory)
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
