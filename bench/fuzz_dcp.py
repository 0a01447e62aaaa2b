"""Long structure-aware fuzz of the DCP reader (CI runs a bounded one: tests/test_fuzz_dcp.py).

Run: ``/work/venv/bin/python bench/fuzz_dcp.py [--cases 500] [--seed 1] [--mutations 4]``

Each case applies 1..``--mutations`` mutations from tests/dcp_mutations.py to a real checkpoint
written by ``torch.distributed.checkpoint`` (sizes, offsets, lengths, paths, shapes, chunk lists,
key paths, dtypes, field types, entries naming one blob — here also counts beyond the value
budget — plus raw damage to the pickle and the shard file), then runs every read path: the
safe reader, the listing's fast path, ``chunk_problems`` and ``validate_file``.

Must hold: 0 exceptions other than ckptctl's verdicts, peak traced memory within
256 MiB + 8 x the checkpoint's size. Printed: cases, verdict counts by kind, the largest peak
memory and the slowest case, per mutation.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
import traceback
import warnings
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import dcp_mutations  # noqa: E402
from tests.factories import make_state, write_dcp  # noqa: E402

MEMORY_BASE = 256 * 1024 * 1024
MEMORY_FACTOR = 8


class RandomChooser:
    """dcp_mutations.Chooser over ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        if high < low:
            raise IndexError("nothing to choose from")
        return self.rng.randint(low, high)

    def pick(self, options: Sequence[Any]) -> Any:
        return self.rng.choice(options)


def verdict_kind(reason: str) -> str:
    """A reason without its particulars ("truncated: shard file X holds N bytes" -> "truncated")."""
    for marker in ("exceeds the DCP reading budget", "malformed .metadata", "not a regular file", "compressed record",
                   "truncated", "missing shard", "leaves the checkpoint directory", "damaged", "not a torch.save"):  # fmt: skip
        if marker in reason:
            return marker
    return reason.split(":")[0][:40]


def run_case(path: Path) -> tuple[list[str], int, float, str | None]:
    """(verdict kinds, peak traced bytes, seconds, traceback of an unexpected exception or None)."""
    kinds: list[str] = []
    started = time.perf_counter()
    tracemalloc.start()
    try:
        for verdict in dcp_mutations.read_everything(path):  # "ok", "valid", or "<status>: <reason>"
            status, _, reason = verdict.partition(": ")
            kinds.append(f"{status}: {verdict_kind(reason)}" if reason else status)
        crash = None
    except Exception:  # noqa: BLE001 - any other exception is this fuzz's finding
        crash = traceback.format_exc(limit=4)
    finally:
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return kinds, peak, time.perf_counter() - started, crash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mutations", type=int, default=4)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    dcp_mutations.MANY_REFS = (1, 10, 300, 3000, 12_000)  # 12,000 > the 10,000-value budget
    rng = random.Random(args.seed)
    chooser = RandomChooser(rng)
    verdicts: collections.Counter = collections.Counter()
    per_mutation: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])  # cases, max MiB, max s
    failures: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ckptctl-fuzz-dcp-") as tmp:
        template = write_dcp(Path(tmp) / "template" / "rolling_step_000100", make_state(step=100))
        for n in range(args.cases):
            case = dcp_mutations.mutate(dcp_mutations.load_case(template), chooser, rng.randint(1, args.mutations))
            scratch = Path(tmp) / f"case{n}"
            path = case.write(scratch / "rolling_step_000100")
            size = sum(f.stat().st_size for f in path.iterdir())
            kinds, peak, seconds, crash = run_case(path)
            shutil.rmtree(scratch)
            verdicts.update(kinds)
            for name in set(case.applied):
                stats = per_mutation[name]
                stats[0] += 1
                stats[1] = max(stats[1], peak / 2**20)
                stats[2] = max(stats[2], seconds)
            if crash is not None:
                failures.append(f"case {n} {case.applied}: {crash}")
            if peak > MEMORY_BASE + MEMORY_FACTOR * size:
                failures.append(f"case {n} {case.applied}: peak {peak / 2**20:.0f} MiB for {size} bytes")
    print(f"{args.cases} mutated DCP checkpoints (seed {args.seed}, 1..{args.mutations} mutations each), "
          f"4 read paths each, {time.perf_counter() - started:.0f} s:")  # fmt: skip
    print(f"  unexpected exceptions: {sum(1 for f in failures if 'Traceback' in f)}   "
          f"over the memory bound: {sum(1 for f in failures if 'peak' in f)}")  # fmt: skip
    print(f"  {'mutation':<16}{'cases':>7}{'max MiB':>9}{'max s':>8}")
    for name, (cases, mib, seconds) in sorted(per_mutation.items()):
        print(f"  {name:<16}{cases:>7}{mib:>9.1f}{seconds:>8.2f}")
    print("  verdicts:")
    for kind, count in verdicts.most_common(16):
        print(f"    {count:>6}  {kind}")
    for failure in failures[:10]:
        print("FAIL", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
