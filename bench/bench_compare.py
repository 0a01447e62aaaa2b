"""Benchmark ``ckptctl compare`` on two large checkpoints, ours and a plain torch.load baseline side by side.

    /work/venv/bin/python bench/bench_compare.py [--mb 208] [--repeat 5]

1. Metadata level: ``ckptctl.ops.compare.compare`` (safe reader: pickles + zip directories + CRC-32s)
   against the obvious baseline, ``torch.load(weights_only=True)`` of both files and a key/shape
   diff. Also the whole CLI (``ckptctl compare A B``) as a fresh process, startup included.
2. Value level, A against B (3 of 26 layers changed) and against C (every tensor changed), each
   run in a fresh process: ``compare --values`` (mmap, chunked, compared pages released) against
   ``torch.load`` of both files and a per-tensor max |Δ| / relative L2. Peak = ``VmHWM`` of the child (``ru_maxrss`` would include the parent's
   memory at fork time); "working" = peak minus RSS after importing torch.

The files are written to a temporary directory and read back warm from the page cache, so the
figures measure CPU and memory, not the disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_checkpoints(directory: Path, megabytes: int) -> tuple[Path, Path, Path]:
    """A, and two later versions of ~``megabytes`` each: B with 3 layers changed, C with every tensor changed."""
    import torch

    torch.manual_seed(0)
    layers = max(1, megabytes // 8)
    model = {f"layers.{i}.weight": torch.randn(2048, 1024) for i in range(layers)}
    model.update({f"layers.{i}.bias": torch.zeros(2048) for i in range(layers)})
    state = {"step": 1000, "epoch": 3, "model": model, "val_loss": 0.5, "train_loss": 0.6,
             "args": {"lr": 3e-4, "batch_size": 32}, "timestamp": "2026-11-01T12:00:00",
             "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.95), "params": list(range(layers))}]}}  # fmt: skip
    paths = [directory / name for name in ("a.pt", "b.pt", "c.pt")]
    torch.save(state, paths[0])
    state["step"] = 1001
    state["model"] = dict(model)
    for i in (0, layers // 2, layers - 1):
        state["model"][f"layers.{i}.weight"] = model[f"layers.{i}.weight"] + 1e-3
    torch.save(state, paths[1])
    state["model"] = {k: v + 1e-3 for k, v in model.items()}
    torch.save(state, paths[2])
    del state, model
    return paths[0], paths[1], paths[2]


def best_of(repeat: int, func) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def ours_metadata(a: Path, b: Path) -> bool:
    from ckptctl.ops.compare import compare

    return compare(a, b).equal


def baseline_metadata(a: Path, b: Path) -> bool:
    import torch

    from ckptctl.formats.torch_load import safe_globals

    with safe_globals():
        sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    shapes_a = {k: (v.dtype, v.shape) for k, v in sa["model"].items()}
    shapes_b = {k: (v.dtype, v.shape) for k, v in sb["model"].items()}
    return shapes_a == shapes_b and sa["args"] == sb["args"] and sa["step"] == sb["step"]


def cli_seconds(a: Path, b: Path, repeat: int) -> float:
    exe = Path(sys.executable).with_name("ckptctl")
    command = [str(exe), "compare", str(a), str(b)] if exe.exists() else [sys.executable, "-m", "ckptctl", "compare", str(a), str(b)]
    return best_of(repeat, lambda: subprocess.run(command, capture_output=True, check=False))


def typer_floor_seconds(repeat: int) -> float:
    """A fresh interpreter importing only Typer and the pydantic adapters Typer 0.29 builds for
    every non-flag parameter value: the part of any ``ckptctl`` process that is not ours."""
    command = [sys.executable, "-c", "import typer, typer._adapters"]
    return best_of(repeat, lambda: subprocess.run(command, capture_output=True, check=True))


def child(method: str, a: str, b: str) -> None:
    """Run one value comparison in this fresh process and print its time and memory as JSON."""
    import torch  # noqa: F401  (imported first so the base RSS includes it for both methods)

    base_kib = _rss_kib()
    sampler = _Sampler()
    start = time.perf_counter()
    if method == "ours":
        from ckptctl.ops.compare import compare, compare_values

        comparison = compare(a, b)
        differing = len(compare_values(comparison).differing)
    else:
        differing = _baseline_values(Path(a), Path(b))
    seconds = time.perf_counter() - start
    peak_kib = _status_kib("VmHWM")  # not ru_maxrss: Linux carries that over from the forking parent
    sampler.stop()
    print(json.dumps({"seconds": seconds, "peak_kib": peak_kib, "base_kib": base_kib, "differing": differing,
                      "peak_anon_kib": sampler.peak["RssAnon"], "peak_file_kib": sampler.peak["RssFile"]}))  # fmt: skip


class _Sampler:
    """Samples anonymous and file-backed RSS every 20 ms: which kind of memory makes the peak."""

    def __init__(self):
        import threading

        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with open("/proc/self/status") as status:
                for line in status:
                    key = line.split(":", 1)[0]
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(line.split()[1]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _baseline_values(a: Path, b: Path) -> int:
    import torch

    from ckptctl.formats.torch_load import safe_globals

    with safe_globals():
        sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    differing = 0
    for name, ta in sa["model"].items():
        tb = sb["model"][name]
        diff = (ta.double() - tb.double()).abs()
        _max, _rel = float(diff.max()), float(diff.norm() / ta.double().norm())
        differing += not torch.equal(ta, tb)
    return differing


def _rss_kib() -> int:
    return _status_kib("VmRSS")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_child(method: str, a: Path, b: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", method, str(a), str(b)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=208, help="approximate size of each checkpoint (MB)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "A", "B"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(*options.child)
        return
    directory = Path(tempfile.mkdtemp(prefix="bench_compare_"))
    try:
        a, b, c = make_checkpoints(directory, options.mb)
        size_mb = a.stat().st_size / 1e6
        print(f"checkpoints of {size_mb:.0f} MB each (warm page cache)")
        ours = best_of(options.repeat, lambda: ours_metadata(a, b))
        base = best_of(max(1, options.repeat // 2), lambda: baseline_metadata(a, b))
        cli = cli_seconds(a, b, 5)
        floor = typer_floor_seconds(5)
        print("metadata level (no tensor values)")
        print(f"  ours   compare()               {ours * 1000:8.1f} ms")
        print(f"  ours   ckptctl compare (CLI)   {cli * 1000:8.1f} ms  (fresh process, startup included)")
        print(f"         of which Typer+pydantic {floor * 1000:8.1f} ms  (python -c 'import typer, typer._adapters')")
        print(f"  base   torch.load x2 + diff    {base * 1000:8.1f} ms")
        print(f"  ratio  base / ours             {base / ours:8.1f} x   (target: ours <= 300 ms)")
        for label, other in (("3 of 26 layers changed", b), ("every tensor changed", c)):
            print(f"value level (--values), {label}; each run in a fresh process")
            o, t = run_child("ours", a, other), run_child("baseline", a, other)
            for name, r in (("ours   compare --values ", o), ("base   torch.load + diff", t)):
                work = (r["peak_kib"] - r["base_kib"]) / 1024
                print(f"  {name}  {r['seconds']:6.2f} s  peak RSS {r['peak_kib'] / 1024:5.0f} MiB"
                      f"  working {work:5.0f} MiB ({work / (size_mb / 1.048576) * 100:5.1f}% of one file)"
                      f"  differing tensors {r['differing']}")  # fmt: skip
                print(f"{'':29}peak anonymous {r['peak_anon_kib'] / 1024:5.0f} MiB, file-backed {r['peak_file_kib'] / 1024:5.0f} MiB"
                      " (mapped checkpoint pages + library code)")  # fmt: skip
            ratio = (t["peak_kib"] - t["base_kib"]) / max(1, o["peak_kib"] - o["base_kib"])
            print(f"  ratio  working memory base / ours {ratio:5.1f} x;  time base / ours {t['seconds'] / o['seconds']:5.2f} x")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
