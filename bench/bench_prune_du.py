"""Benchmark: ``ckptctl prune --dry-run`` and ``ckptctl du`` on directories of 1,000 and 10,000 checkpoint files.

Target (issue 5): <= 1 s on 10,000 files, names and stat only. Measured side by side with baselines:

- in-process core (``plan_prune``, ``usage.measure``) vs a bare ``os.scandir`` + ``stat`` loop (the floor
  for any Python tool that looks at every file) - also counts checkpoint files opened (must be 0);
- the real command in a fresh process (``ckptctl prune DIR --dry-run``, ``ckptctl du DIR``, plain text
  and ``--json``; includes interpreter start-up) vs coreutils ``du -s`` and the classic cron one-liner
  ``ls | grep rolling_step_ | sort | head -n -10``.

Run: ``python bench/bench_prune_du.py [--repeat N] [--sizes 1000 10000] [--damaged K]``. Prints the median and best wall time,
the CPU time of child processes, ratios, and the growth from 1,000 to 10,000 files.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from ckptctl.ops.prune import plan_prune
from ckptctl.ops.retention import Policy
from ckptctl.ops.usage import measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.factories import plausible_bytes  # noqa: E402  (the repo root is on sys.path above)

SIZES = (1_000, 10_000)
CKPTCTL = str(Path(sys.executable).with_name("ckptctl"))


def build(directory: Path, count: int, damaged: int = 0) -> None:
    """``count`` files in the layout: 90% rolling, 9% emergency, epochs, the fixed names, a few strays.

    ``damaged``: that many empty rolling files named above every real step (issue 12's trap), which
    prune must check and skip while looking for the newest valid ones.
    """
    directory.mkdir(parents=True)
    payload = plausible_bytes(4096)
    names = ["latest.pt", "latest_backup.pt", "rolling_last_backup.pt", "best_model.pt", "best_model_backup.pt",
             "best_model_previous.pt", "notes.txt", "rolling_step_999999.pt.1.ab.tmp"]  # fmt: skip
    rest = count - len(names)
    emergency = rest // 11
    epochs = max(1, rest // 100)
    rolling = rest - emergency - epochs
    names += [f"rolling_step_{100 * i:06d}.pt" for i in range(rolling)]
    start = datetime(2026, 1, 1)
    names += [f"emergency_step_{50 * i:06d}_{start + timedelta(minutes=i):%Y%m%d_%H%M%S}.pt" for i in range(emergency)]
    names += [f"epoch_{i:05d}.pt" for i in range(epochs)]
    for name in names:
        (directory / name).write_bytes(payload)
    for i in range(damaged):
        (directory / f"rolling_step_{999_990 + i:06d}.pt").write_bytes(b"")
    os.unlink(directory / "latest.pt")
    os.link(directory / f"rolling_step_{100 * (rolling - 1):06d}.pt", directory / "latest.pt")


class Timing:
    """Wall time (median and best of N) and, for child processes, their CPU time (user + sys, median).

    The machine is shared: the best wall time and the CPU time are what the command itself costs;
    the median shows what a contended machine made of it.
    """

    def __init__(self, walls: list[float], cpus: list[float]):
        self.median = statistics.median(walls)
        self.best = min(walls)
        self.cpu = statistics.median(cpus) if any(cpus) else None

    def __str__(self) -> str:
        cpu = f"  cpu {self.cpu * 1000:8.1f} ms" if self.cpu is not None else ""
        return f"median {self.median * 1000:8.1f} ms  best {self.best * 1000:8.1f} ms{cpu}"


def measure_time(fn, repeat: int) -> Timing:
    fn()  # warm the page cache and imports
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return Timing(walls, cpus)


def run(cmd: list[str] | str, shell: bool = False) -> None:
    subprocess.run(cmd, shell=shell, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def in_process(args: list[str]) -> None:
    """The command's own work, without interpreter start-up: the Typer app called in this process."""
    from ckptctl.cli.app import app

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        try:
            app(args, prog_name="ckptctl")
        except SystemExit:
            pass


def count_checkpoint_opens(fn) -> int:
    """Run ``fn`` with open()/os.open() spied on; return how many *.pt/*.tmp files it opened."""
    opened = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_os_open(path, *args, **kwargs)

    builtins.open, os.open = spy_open, spy_os_open
    try:
        fn()
    finally:
        builtins.open, os.open = real_open, real_os_open
    return sum(1 for p in opened if p.endswith((".pt", ".tmp")))


def bare_scan(directory: Path) -> None:
    for entry in os.scandir(directory):
        entry.stat()


def bench_size(root: Path, count: int, repeat: int, damaged: int = 0) -> dict[str, Timing]:
    directory = root / f"d{count}"
    build(directory, count, damaged)
    policy = Policy(stale_temp_after=timedelta(hours=1))
    d = str(directory)
    results = {
        "core plan_prune": measure_time(lambda: plan_prune(directory, policy), repeat),
        "core usage.measure": measure_time(lambda: measure(directory), repeat),
        "baseline scandir+stat": measure_time(lambda: bare_scan(directory), repeat),
        "in-process prune --dry-run": measure_time(lambda: in_process(["prune", d, "--dry-run"]), repeat),
        "in-process du": measure_time(lambda: in_process(["du", d]), repeat),
        "cli prune --dry-run": measure_time(lambda: run([CKPTCTL, "prune", d, "--dry-run"]), repeat),
        "cli prune --dry-run --json": measure_time(lambda: run([CKPTCTL, "prune", d, "--dry-run", "--json"]), repeat),
        "cli du": measure_time(lambda: run([CKPTCTL, "du", d]), repeat),
        "cli du --json": measure_time(lambda: run([CKPTCTL, "du", d, "--json"]), repeat),
        "baseline ckptctl --help": measure_time(lambda: run([CKPTCTL, "--help"]), repeat),
        "baseline coreutils du -s": measure_time(lambda: run(["du", "-s", d]), repeat),
        "baseline ls|grep|sort|head": measure_time(
            lambda: run(f"ls {d} | grep '^rolling_step_' | sort | head -n -10", shell=True), repeat),
    }  # fmt: skip
    opens = count_checkpoint_opens(lambda: (plan_prune(directory, policy), measure(directory)))
    print(f"\n{count:,} files ({damaged} damaged): checkpoint files opened by plan_prune + measure: {opens}")
    for name, timing in results.items():
        print(f"  {name:<30} {timing}")
    pairs = [("core plan_prune", "baseline scandir+stat"), ("core usage.measure", "baseline scandir+stat"),
             ("cli prune --dry-run", "baseline ls|grep|sort|head"), ("cli du", "baseline coreutils du -s"),
             ("cli du", "baseline ckptctl --help")]  # fmt: skip
    for ours, base in pairs:
        print(f"  ratio {ours} / {base} (best wall): {results[ours].best / results[base].best:.1f}x")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="directory sizes (files)")
    parser.add_argument("--damaged", type=int, default=0, help="empty rolling files above the newest real step")
    args = parser.parse_args()
    sizes = tuple(args.sizes)
    if not shutil.which("du"):
        sys.exit("coreutils du not found")
    with tempfile.TemporaryDirectory() as tmp:
        by_size = {count: bench_size(Path(tmp), count, args.repeat, args.damaged) for count in sizes}
    small, large = by_size[sizes[0]], by_size[sizes[-1]]
    print(f"\ngrowth {sizes[0]:,} -> {sizes[-1]:,} files (10x the files), best wall time:")
    for name in small:
        a, b = small[name].best, large[name].best
        print(f"  {name:<30} {a * 1000:8.1f} ms -> {b * 1000:8.1f} ms  ({b / a:.1f}x)")
    commands = ("cli prune --dry-run", "cli prune --dry-run --json", "cli du", "cli du --json")
    best = max(large[k].best for k in commands)
    median = max(large[k].median for k in commands)
    verdict = "OK" if best <= 1 else "MISSED"
    print(f"\nslowest command on {sizes[-1]:,} files, whole process: best {best:.3f} s, median {median:.3f} s "
          f"(target <= 1 s): {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
