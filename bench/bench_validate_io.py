"""Bytes ``validate DIR`` reads against the unique bytes of a directory the CheckpointManager wrote.

Run: ``python bench/bench_validate_io.py [--mib 32] [--saves 12]`` (a few seconds)

A manager directory names each rolling save three times (``rolling_step_N.pt``, ``latest.pt`` and,
with the default ``backup_mode="link"``, ``rolling_last_backup.pt``: one inode), the previous one
twice (``latest_backup.pt``) and the best model twice or three times. Reading every *path* reads
those inodes again; ``validate_targets`` reads each inode once and names every path. Counted with
``rchar`` of /proc/self/io (bytes returned by read/pread/preadv: page-cache hits count too), so
the figure is the same on a warm or a cold cache. Printed side by side: one ``validate_file`` per
path (what ``validate DIR`` did before) and ``validate_paths`` (now); the target ratio is 1.0
(plus the few KB of zip directories and pickles that the structural checks read twice).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rchar() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def build(directory: Path, mib: int, saves: int) -> None:
    import logging

    import torch

    logging.getLogger("ckptctl").setLevel(logging.ERROR)  # the emergency save's log line is not the figure
    from ckptctl.training.manager import CheckpointManager, build_state

    model = torch.nn.Linear(1024, mib * 256, bias=False)  # mib MiB of float32 weights
    mgr = CheckpointManager(directory, keep_last_n=10)
    for step in range(1, saves + 1):
        state = build_state(step=step * 100, epoch=step // 5, model=model)
        mgr.save(state, step=step * 100)
        if step % 4 == 0:
            mgr.save_best(state, step=step * 100, val_loss=1.0 / step)
    mgr.save_epoch(state, epoch=step // 5)
    mgr.save_emergency(state, step=step * 100 + 7)


def unique_bytes(directory: Path) -> tuple[int, int, int]:
    """(unique bytes, paths, inodes) over the checkpoint files validate looks at."""
    from ckptctl.ops.integrity import collect_targets

    targets, _skipped = collect_targets([directory])
    inodes = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in targets}
    return sum(inodes.values()), len(targets), len(inodes)


def measure(fn) -> int:
    fn()  # warm up: lazy imports and first-use reads are not the figure
    before = rchar()
    fn()
    return rchar() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="model size per checkpoint (MiB)")
    parser.add_argument("--saves", type=int, default=12)
    args = parser.parse_args()

    from ckptctl.ops.integrity import DEFAULT, collect_targets, validate_file, validate_paths

    with tempfile.TemporaryDirectory(prefix="bench-validate-io-") as tmp:
        directory = Path(tmp) / "checkpoints"
        build(directory, args.mib, args.saves)
        unique, paths, inodes = unique_bytes(directory)
        targets, _ = collect_targets([directory])
        per_path = measure(lambda: [validate_file(p, DEFAULT) for p in targets])
        once = measure(lambda: validate_paths([directory], DEFAULT))
        print(f"{paths} checkpoint paths, {inodes} inodes, {unique / (1 << 20):.1f} MiB unique")
        print(f"{'':28} {'MiB read':>10} {'read / unique':>14}")
        print(f"{'one validate_file per path':28} {per_path / (1 << 20):>10.1f} {per_path / unique:>14.3f}")
        print(f"{'validate_paths (each inode)':28} {once / (1 << 20):>10.1f} {once / unique:>14.3f}")
        print(f"per path / each inode: {per_path / once:.2f}x the reads")


if __name__ == "__main__":
    main()
