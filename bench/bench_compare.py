"""Benchmark ``ckptctl compare`` on two large checkpoints, ours and a plain torch.load baseline side by side.

    /work/venv/bin/python bench/bench_compare.py [--mb 208] [--repeat 5]

1. Metadata level: ``ckptctl.compare.compare`` (safe reader: pickles + zip directories + CRC-32s)
   against the obvious baseline, ``torch.load(weights_only=True)`` of both files and a key/shape
   diff. Also the whole CLI (``ckptctl compare A B``) as a fresh process, startup included.
2. Value level, each in a fresh process so peak memory is its own: ``compare --values`` (mmap,
   chunked, compared pages released) against ``torch.load`` of both files and a per-tensor
   max |Δ| / relative L2. Peak = ``ru_maxrss``; "working" = peak minus RSS after importing torch.

The files are written to a temporary directory and read back warm from the page cache, so the
figures measure CPU and memory, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_pair(directory: Path, megabytes: int) -> tuple[Path, Path]:
    """Two checkpoints of ~``megabytes`` each: B is A one step later with three layers changed."""
    import torch

    torch.manual_seed(0)
    layers = max(1, megabytes // 8)
    model = {f"layers.{i}.weight": torch.randn(2048, 1024) for i in range(layers)}
    model.update({f"layers.{i}.bias": torch.zeros(2048) for i in range(layers)})
    state = {"step": 1000, "epoch": 3, "model": model, "val_loss": 0.5, "train_loss": 0.6,
             "args": {"lr": 3e-4, "batch_size": 32}, "timestamp": "2026-11-01T12:00:00",
             "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.95), "params": list(range(layers))}]}}  # fmt: skip
    a = directory / "a.pt"
    torch.save(state, a)
    for i in (0, layers // 2, layers - 1):
        model[f"layers.{i}.weight"] = model[f"layers.{i}.weight"] + 1e-3
    state["step"] = 1001
    b = directory / "b.pt"
    torch.save(state, b)
    return a, b


def best_of(repeat: int, func) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def ours_metadata(a: Path, b: Path) -> bool:
    from ckptctl.compare import compare

    return compare(a, b).equal


def baseline_metadata(a: Path, b: Path) -> bool:
    import torch

    from ckptctl.rng import safe_globals

    with safe_globals():
        sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    shapes_a = {k: (v.dtype, v.shape) for k, v in sa["model"].items()}
    shapes_b = {k: (v.dtype, v.shape) for k, v in sb["model"].items()}
    return shapes_a == shapes_b and sa["args"] == sb["args"] and sa["step"] == sb["step"]


def cli_seconds(a: Path, b: Path, repeat: int) -> float:
    exe = Path(sys.executable).with_name("ckptctl")
    command = [str(exe), "compare", str(a), str(b)] if exe.exists() else [sys.executable, "-m", "ckptctl", "compare", str(a), str(b)]
    return best_of(repeat, lambda: subprocess.run(command, capture_output=True, check=False))


def child(method: str, a: str, b: str) -> None:
    """Run one value comparison in this fresh process and print its time and memory as JSON."""
    import torch  # noqa: F401  (imported first so the base RSS includes it for both methods)

    base_kib = _rss_kib()
    start = time.perf_counter()
    if method == "ours":
        from ckptctl.compare import compare, compare_values

        comparison = compare(a, b)
        differing = len(compare_values(comparison).differing)
    else:
        differing = _baseline_values(Path(a), Path(b))
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_kib": peak_kib, "base_kib": base_kib, "differing": differing}))


def _baseline_values(a: Path, b: Path) -> int:
    import torch

    from ckptctl.rng import safe_globals

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
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
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
        a, b = make_pair(directory, options.mb)
        size_mb = a.stat().st_size / 1e6
        print(f"two checkpoints of {size_mb:.0f} MB and {b.stat().st_size / 1e6:.0f} MB (warm page cache)")
        ours = best_of(options.repeat, lambda: ours_metadata(a, b))
        base = best_of(max(1, options.repeat // 2), lambda: baseline_metadata(a, b))
        cli = cli_seconds(a, b, 3)
        print("metadata level (no tensor values)")
        print(f"  ours   compare()               {ours * 1000:8.1f} ms")
        print(f"  ours   ckptctl compare (CLI)   {cli * 1000:8.1f} ms  (fresh process, startup included)")
        print(f"  base   torch.load x2 + diff    {base * 1000:8.1f} ms")
        print(f"  ratio  base / ours             {base / ours:8.1f} x   (target: ours <= 300 ms)")
        o, t = run_child("ours", a, b), run_child("baseline", a, b)
        print("value level (--values), each in a fresh process")
        for label, r in (("ours   compare --values ", o), ("base   torch.load + diff", t)):
            work = (r["peak_kib"] - r["base_kib"]) / 1024
            print(f"  {label}  {r['seconds']:6.2f} s  peak RSS {r['peak_kib'] / 1024:7.0f} MiB"
                  f"  working {work:6.0f} MiB ({work / (size_mb / 1.048576) * 100:5.1f}% of one file)"
                  f"  differing tensors {r['differing']}")  # fmt: skip
        ratio = (t["peak_kib"] - t["base_kib"]) / max(1, o["peak_kib"] - o["base_kib"])
        print(f"  ratio  working memory base / ours {ratio:6.1f} x;  time base / ours {t['seconds'] / o['seconds']:5.2f} x")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
