"""What progress reporting costs: ``validate --deep`` and ``compare --values`` with and without it,
and ``torch.load`` through the counting reader against a plain file, side by side in one run.

Run: ``python bench/bench_progress.py [--mb 192] [--rounds 5]`` (a minute or two)

Rounds are interleaved (without, with a no-op callback, with the real Rich bar drawn into an
in-memory terminal, then again) after one untimed warm-up round, the page cache is warm (every
file is read once first), and the best of ``--rounds`` is compared (wall and CPU time), so a busy neighbour on a shared machine shows up as noise in
single rounds rather than in the ratio. Printed: seconds, the ratio to "without", and how many
times the callback fired. Then the peak RSS of a fresh process loading a legacy checkpoint with
and without the counting reader (the reader fills torch's own buffers: no second copy).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1 << 20


def write(path: Path, nbytes: int, seed: int, legacy: bool = False) -> Path:
    """A checkpoint of ``nbytes`` of float32 tensors of 4-32 MiB each, with the usual keys."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    model, left, index = {}, nbytes, 0
    while left > 0:
        size = min(left, (4 << 20) * (1 + index % 8))
        model[f"layer{index}.weight"] = torch.randn(size // 4, generator=gen)
        left -= size
        index += 1
    torch.save({"step": seed, "epoch": 0, "model": model}, path, _use_new_zipfile_serialization=not legacy)
    return path


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *_args) -> None:
        self.calls += 1


def rich_bar(total: int):
    """The command line's bar, forced onto a terminal that writes into memory."""
    from rich.console import Console

    from ckptctl.cli.progress import ByteProgress

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    return ByteProgress("bench", total, console=console, min_bytes=0)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): CPU time barely moves when a
    neighbour holds a core, so its ratio is the steadier one on a shared machine."""
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - started, time.process_time() - cpu


def run_rounds(name: str, variants: dict, rounds: int) -> None:
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in variants}
    calls: dict[str, int] = {}
    for make in variants.values():  # a warm-up round, not timed: imports (rich.progress, torch's modules)
        make()[0]()
    for _ in range(rounds):
        for key, make in variants.items():
            fn, counter = make()
            times[key].append(timed(fn))
            calls[key] = counter.calls if counter is not None else 0
    wall0 = min(w for w, _c in times["without"])
    cpu0 = min(c for _w, c in times["without"])
    print(f"{name}")
    for key in variants:
        wall = min(w for w, _c in times[key])
        cpu = min(c for _w, c in times[key])
        median = sorted(w for w, _c in times[key])[len(times[key]) // 2]
        print(f"  {key:<17}wall {wall:7.3f} s best ({median:6.3f} median) {wall / wall0:6.3f}x"
              f"   CPU {cpu:7.3f} s {cpu / cpu0:6.3f}x   callbacks: {calls[key]}")  # fmt: skip


def deep_variants(path: Path) -> dict:
    from ckptctl.ops.integrity import DEEP, planned_bytes, validate_file

    def without():
        return (lambda: _check(validate_file(path, DEEP, jobs=2))), None

    def counted():
        counter = Counter()
        return (lambda: _check(validate_file(path, DEEP, jobs=2, progress=counter))), counter

    def bar():
        counter = Counter()

        def run() -> None:
            with rich_bar(planned_bytes([path], DEEP)) as shown:
                _check(validate_file(path, DEEP, jobs=2, progress=lambda n: (counter(), shown.advance(n))))

        return run, counter

    return {"without": without, "no-op callback": counted, "Rich bar": bar}


def _check(result) -> None:
    assert result.valid and result.finite is True, result.problems


def compare_variants(a: Path, b: Path) -> dict:
    from ckptctl.ops.compare import compare, compare_values, value_bytes

    def without():
        return (lambda: compare_values(compare(a, b))), None

    def counted():
        counter = Counter()
        return (lambda: compare_values(compare(a, b), progress=counter)), counter

    def bar():
        counter = Counter()

        def run() -> None:
            comparison = compare(a, b)
            with rich_bar(value_bytes(comparison)) as shown:
                compare_values(comparison, progress=lambda *args: (counter(), shown.update(*args)))

        return run, counter

    return {"without": without, "no-op callback": counted, "Rich bar": bar}


def load_variants(path: Path) -> dict:
    import torch

    from ckptctl.formats.progress_io import ProgressReader

    def without():
        def run() -> None:
            with open(path, "rb") as fh:
                torch.load(fh, weights_only=True)

        return run, None

    def counted():
        counter = Counter()

        def run() -> None:
            with open(path, "rb") as fh:
                torch.load(ProgressReader(fh, counter), weights_only=True)

        return run, counter

    return {"without": without, "counting reader": counted}


def deep_callbacks(*paths: Path) -> None:
    """How often the callback fires in one deep validate, and how many of those in the values pass
    (the deep level's callbacks beyond the default level's CRC pass)."""
    from ckptctl.ops.integrity import DEEP, DEFAULT, validate_file

    for path in paths:
        counts = {}
        for level in (DEFAULT, DEEP):
            counter = Counter()
            validate_file(path, level, jobs=2, progress=counter)
            counts[level] = counter.calls
        kind = "legacy, read by torch.load" if "legacy" in path.name else "zip, mapped, read by the scan"
        print(f"callbacks in one validate --deep of the 48 MiB {kind}: {counts[DEEP]} "
              f"({counts[DEEP] - counts[DEFAULT]} in the values pass)")  # fmt: skip


PEAK = """
import torch
from ckptctl.formats.progress_io import ProgressReader
with open({path!r}, "rb") as fh:
    torch.load({wrap}, weights_only=True)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def peak_kib(path: Path, wrapped: bool) -> int:
    code = PEAK.format(path=str(path), wrap="ProgressReader(fh, lambda n: None)" if wrapped else "fh")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=192, help="size of each checkpoint")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    directory = args.keep or Path(tempfile.mkdtemp(prefix="bench_progress_"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        a = write(directory / "a.pt", args.mb * MIB, 1)
        b = write(directory / "b.pt", args.mb * MIB, 2)
        legacy = write(directory / "legacy.pt", 48 * MIB, 3, legacy=True)
        zip50 = write(directory / "zip50.pt", 48 * MIB, 3)
        for path in (a, b, legacy, zip50):
            path.read_bytes()  # warm the page cache
        print(f"files: {args.mb} MiB each (a, b), 48 MiB legacy and zip; best of {args.rounds} interleaved rounds\n")
        run_rounds(f"validate --deep, one {args.mb} MiB file (CRC pass + mapped load + NaN scan)", deep_variants(a), args.rounds)
        run_rounds(f"compare --values, two {args.mb} MiB files (every tensor differs)", compare_variants(a, b), args.rounds)
        run_rounds("torch.load(weights_only=True) of a 48 MiB legacy file, plain file vs counting reader",
                   load_variants(legacy), args.rounds)  # fmt: skip
        run_rounds("torch.load(weights_only=True) of a 48 MiB zip file (not mapped), plain file vs counting reader",
                   load_variants(zip50), args.rounds)  # fmt: skip
        deep_callbacks(zip50, legacy)
        plain, wrapped = peak_kib(legacy, False), peak_kib(legacy, True)
        print(f"peak RSS loading the 48 MiB legacy file: plain {plain / 1024:.1f} MiB, "
              f"counting reader {wrapped / 1024:.1f} MiB ({wrapped / plain:.3f}x)")  # fmt: skip
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
