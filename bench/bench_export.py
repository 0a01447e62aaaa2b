"""Export a >= 1 GB checkpoint to safetensors: ckptctl export against torch.load + safetensors.torch.save_file.

Both run as fresh subprocesses, side by side in one run, alternating, on the same source file; each reports
its wall time and peak resident memory (``ru_maxrss`` of the child, which includes the interpreter and
torch: the import baseline is measured too and printed). Targets (issue #15): time no worse than 1.2x,
peak memory at most 15% of theirs.

    python bench/bench_export.py --gb 1.2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MAKE = """
import sys, torch
gb, path = float(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
n = int(gb * 1e9 / 4 / 24)  # 24 tensors of equal size, float32
model = {f"layers.{i}.weight": torch.randn(n // 1024, 1024) for i in range(24)}
torch.save({"step": 1000, "epoch": 3, "model": model, "optimizer": {"state": {}, "param_groups": []}}, path)
"""
THEIRS = """
import sys, torch
from safetensors.torch import save_file
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
save_file({k: v.contiguous() for k, v in state["model"].items()}, sys.argv[2], metadata={"format": "pt"})
"""
OURS = """
import sys
from ckptctl import export
export(sys.argv[1], sys.argv[2])
"""
BASELINE = "import torch, safetensors.torch, ckptctl.ops.export"


def measure(code: str, *args: str) -> tuple[float, int]:
    """Each measurement in its own grandchild so ru_maxrss is this run's alone."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]], check=True)\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, code, *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    wall, peak = done.stdout.split()
    return float(wall), int(peak)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.2, help="checkpoint size in GB (default 1.2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_export_", dir=args.dir))
    try:
        src = work / "ckpt.pt"
        subprocess.run([sys.executable, "-c", MAKE, str(args.gb), str(src)], check=True)
        size = src.stat().st_size
        _, base_peak = measure(BASELINE)
        ours, theirs = [], []
        for _ in range(args.rounds):
            for label, code, results in (("theirs", THEIRS, theirs), ("ours", OURS, ours)):
                out = work / f"{label}.safetensors"
                out.unlink(missing_ok=True)
                drop_cache(src)
                results.append(measure(code, str(src), str(out)))
        ow, op = statistics.median(w for w, _ in ours), max(p for _, p in ours)
        tw, tp = statistics.median(w for w, _ in theirs), max(p for _, p in theirs)
        print(f"source {size / 1e9:.2f} GB, {args.rounds} rounds each, page cache dropped before every run")
        print(f"import baseline (python + torch + safetensors + ckptctl): peak {base_peak / 2**20:.0f} MiB "
              "(an export of contiguous tensors never imports torch, so it can stay below this)")
        print(f"torch.load + save_file : {tw:6.2f} s   peak {tp / 2**20:7.0f} MiB")
        print(f"ckptctl export         : {ow:6.2f} s   peak {op / 2**20:7.0f} MiB")
        print(f"time ratio ours/theirs : {ow / tw:.2f}   (target <= 1.2)")
        print(f"peak memory ours/theirs: {op / tp:.1%}  (target <= 15%); "
              f"above the import baseline: {(op - base_peak) / 2**20:.0f} MiB against {(tp - base_peak) / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
