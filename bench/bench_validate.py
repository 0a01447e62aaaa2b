"""Default-level ``validate`` of a >= 2 GB checkpoint directory against ``cat`` and ``torch.load``.

Run: ``python bench/bench_validate.py [--gib 2.0] [--rounds 7] [--keep DIR]`` (about a minute)

Side by side, page cache warm (every file is read once before timing), rounds interleaved:

- ``cat FILES > /dev/null``: the speed of just reading the bytes (the target: >= 0.8x of it);
- ``validate_paths(level="default")`` in this process, with 1 and with the default number of CRC
  threads (structure + safe unpickle + CRC-32 of every record + layout checks);
- ``torch.load(weights_only=True)`` of each file: what the original system did to "validate";
- peak RSS of a fresh process validating one 10 MB and one 500 MB file (and torch.load's, for contrast).

Each round times ``cat`` and then ``validate`` back to back and reports their ratio; the CPU time
that *other* processes used during the round (from /proc/stat) is printed beside it, because two
CRC threads need both cores of a 2-core machine: a round where another job held a core says little.
The pieces (``preadv`` into the aligned buffer, CRC-32 of a cached buffer, both in one thread, per
CPU-second) show the ceiling: ``validate`` does cat's copy *and* a CRC of every byte.
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
    from ckptctl.ops.integrity import validate_paths

    report = validate_paths(files, "default", jobs=jobs)
    assert report.invalid == 0 and report.bytes_checked > 0, report.to_json()


def torch_load_all(files: list[Path]) -> None:
    import torch

    for path in files:
        torch.load(path, map_location="cpu", weights_only=True)


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so a child of this (large) process
# would report this process's size.
PEAK_SCRIPT = """
from ckptctl.ops.integrity import validate_file
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


CLI = ["-c", "import sys; from ckptctl.cli.app import main; sys.argv[0] = 'ckptctl'; main()"]


def cli(files: list[Path], rate) -> None:
    """The whole ``ckptctl validate FILES`` process, and its fixed cost: the same process for
    ``--quick`` of one file (interpreter, Typer parsing its options, imports, one small read)."""
    run = lambda *args: subprocess.run([sys.executable, *CLI, "validate", *args], stdout=subprocess.DEVNULL,  # noqa: E731
                                       cwd=ROOT, check=True)  # fmt: skip
    whole, fixed = best(lambda: run(*map(str, files)), 3), best(lambda: run("--quick", str(files[-1])), 3)
    print(f"ckptctl validate (whole process, best of 3) {whole:.3f} s = {rate(whole)}; its fixed cost "
          f"(`validate --quick` of one file) {fixed:.3f} s; {rate(whole - fixed)} beyond it")  # fmt: skip


def cold(files: list[Path], rounds: int, jobs: int) -> None:
    """cat and validate from a cold page cache (``POSIX_FADV_DONTNEED`` on these files only), with
    small and large CRC segments: finer interleaving of the threads' reads costs readahead."""
    from ckptctl.formats import crc

    def evict() -> None:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)

    def with_segments(size: int) -> None:
        saved, crc.SEGMENT_BYTES = crc.SEGMENT_BYTES, size
        try:
            validate(files, jobs)
        finally:
            crc.SEGMENT_BYTES = saved

    total = sum(p.stat().st_size for p in files)
    runs = {"cat": lambda: cat(files), "8 MiB segments": lambda: with_segments(8 * MIB),
            "32 MiB segments": lambda: with_segments(32 * MIB)}  # fmt: skip
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            evict()
            speeds[name].append(total / best(fn, 1) / 1e9)
    print(f"cold cache, {len(files)} files, {total / (1 << 30):.2f} GiB, median of {rounds} (GB/s): " + ", ".join(
        f"{name} {sorted(v)[len(v) // 2]:.2f}" for name, v in speeds.items()))  # fmt: skip


def busy_seconds() -> float:
    """CPU time all processes spent since boot (user+nice+system+irq+softirq+steal), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds other processes used meanwhile) of one call."""
    busy, own, started = busy_seconds(), own_seconds(), time.perf_counter()
    fn()
    wall = time.perf_counter() - started
    return wall, max(0.0, (busy_seconds() - busy) - (own_seconds() - own))


def pieces(files: list[Path], total: int) -> None:
    """One thread, per CPU-second: the copy out of the page cache, the CRC, and both together."""
    import mmap

    from ckptctl.formats import crc

    buffer = mmap.mmap(-1, crc.CHUNK_BYTES)
    view = memoryview(buffer)

    def read(crc: bool) -> None:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            offset, value = 0, 0
            while (got := os.preadv(fd, [view], offset)) > 0:
                value = crc._crc32(view[:got], value) if crc else value
                offset += got
            os.close(fd)

    def crc_cached(crc) -> None:
        for _ in range(total // len(view)):
            crc(view)

    speed = lambda fn: total / min(cpu_seconds(fn) for _ in range(3)) / 1e9  # noqa: E731
    crcs = ", ".join(f"{name} {speed(lambda: crc_cached(fn)):.2f}" for name, fn in crc_functions().items())
    read_alone, both = speed(lambda: read(False)), speed(lambda: read(True))
    view.release()
    buffer.close()
    print(f"pieces, one thread, GB per CPU-second ({crc.CHUNK_BYTES >> 10} KiB buffer): preadv {read_alone:.2f}; "
          f"CRC-32 of a cached buffer: {crcs}; preadv + CRC-32 ({crc._crc32.__module__}) {both:.2f}")  # fmt: skip
    return both


def crc_functions() -> dict:
    """Every CRC-32 installed here (all give zlib's values)."""
    import zlib

    found = {"zlib": zlib.crc32}
    try:
        from isal.isal_zlib import crc32 as isal_crc32

        found["isal"] = isal_crc32
    except ImportError:
        pass
    try:
        from deflate import crc32 as deflate_crc32

        found["libdeflate"] = deflate_crc32
    except ImportError:
        pass
    return found


QUIET_CORES = 0.15  # other processes' load under which a round counts as quiet


def wait_for_quiet(budget: list[float], cores: float = QUIET_CORES, window: float = 0.5) -> float:
    """Wait (within what is left of ``budget[0]`` seconds) for a ``window`` in which other processes
    use less than ``cores``; return what they used in the last window, in cores."""
    while True:
        busy, own = busy_seconds(), own_seconds()
        time.sleep(window)
        others = max(0.0, (busy_seconds() - busy) - (own_seconds() - own)) / window
        if others < cores or budget[0] <= 0:
            return others
        budget[0] -= window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the directory to validate")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (best and median are reported)")
    parser.add_argument("--keep", type=Path, help="build into (or reuse) this directory and keep it")
    parser.add_argument("--cold", type=int, default=0, metavar="ROUNDS",
                        help="also time cold-cache reads (these files evicted) with 8 and 32 MiB CRC segments")  # fmt: skip
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds in all to wait for moments when other processes leave the cores idle")  # fmt: skip
    args = parser.parse_args()

    from ckptctl.cli.validate_cmd import default_jobs
    from ckptctl.formats import crc

    directory = args.keep or Path(tempfile.mkdtemp(prefix="ckptctl-bench-validate-"))
    try:
        files = sorted(directory.glob("rolling_step_*.pt")) or build(directory, args.gib)
        total = sum(p.stat().st_size for p in files)
        jobs = default_jobs()
        print(f"{len(files)} files, {total / (1 << 30):.2f} GiB in {directory}; CRC from "
              f"{crc._crc32.__module__}; {os.cpu_count()} CPUs; {jobs} CRC threads; {args.rounds} rounds")  # fmt: skip
        cat(files)  # warm the page cache
        rate = lambda t: f"{total / t / 1e9:5.2f} GB/s"  # noqa: E731
        rows, budget = [], [args.wait]
        print(f"round  {'cat':>10}  {'validate 1 thread':>17}  {f'validate {jobs} threads':>18}  ratio to cat  "
              "others' cores (before, during)")  # fmt: skip
        for index in range(args.rounds):  # interleaved: the machine is shared, compare like with like
            before = wait_for_quiet(budget)
            cat(files)  # re-warm: while it waited, proactive reclaim (kdamond) may have dropped pages
            (t_cat, o_cat), (t_ours, o_ours), (t_one, _) = (
                timed(lambda: cat(files)), timed(lambda: validate(files, jobs)), timed(lambda: validate(files, 1)))
            rows.append((t_cat, t_one, t_ours, (o_cat + o_ours) / (t_cat + t_ours)))
            print(f"{index + 1:5d}  {rate(t_cat)}  {rate(t_one):>17}  {rate(t_ours):>18}  {t_cat / t_ours:11.2f}x  "
                  f"{before:6.2f} {rows[-1][3]:6.2f}")  # fmt: skip
        ratios = sorted(r[0] / r[2] for r in rows)
        mid = len(rows) // 2
        col = lambda i: sorted(r[i] for r in rows)  # noqa: E731
        print(f"best:   cat {rate(col(0)[0])}, validate 1 thread {rate(col(1)[0])}, {jobs} threads {rate(col(2)[0])}; "
              f"best against best {col(0)[0] / col(2)[0]:.2f}x cat (target >= 0.8x)")  # fmt: skip
        print(f"median: cat {rate(col(0)[mid])}, validate 1 thread {rate(col(1)[mid])}, {jobs} threads {rate(col(2)[mid])}; "
              f"median ratio {ratios[mid]:.2f}x cat")  # fmt: skip
        quiet = sorted(r[0] / r[2] for r in rows if r[3] < QUIET_CORES)
        if quiet:
            print(f"rounds where other processes used < {QUIET_CORES} cores: {len(quiet)}, paired ratio best "
                  f"{quiet[-1]:.2f}x, median {quiet[len(quiet) // 2]:.2f}x cat")  # fmt: skip
        else:
            print(f"no round had the cores to itself (other processes used >= {QUIET_CORES} cores in each): "
                  "these figures are from a loaded machine")  # fmt: skip
        cpu = {name: min(cpu_seconds(fn) for _ in range(2)) for name, fn in
               (("cat", lambda: cat(files)), ("ours", lambda: validate(files, jobs)))}  # fmt: skip
        both = pieces(files, total)
        print(f"CPU seconds (user+sys, best of 2): cat {cpu['cat']:.3f}, validate {cpu['ours']:.3f} "
              f"= {cpu['ours'] / cpu['cat']:.2f}x cat's; so {jobs} fully busy cores reach at most "
              f"{jobs * cpu['cat'] / cpu['ours']:.2f}x cat (pieces alone: {jobs} x {both:.2f} GB/s)")  # fmt: skip
        cli(files, rate)
        if args.cold:
            cold(files[:2], args.cold, jobs)
        t_torch = best(lambda: torch_load_all(files), 1)
        print(f"torch.load each file       {t_torch:7.3f} s  {rate(t_torch)}  -> validate is "
              f"{t_torch / col(2)[0]:.1f}x faster (best), {t_torch / col(2)[mid]:.1f}x (median) (target >= 3x)")  # fmt: skip
        memory(directory)
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
