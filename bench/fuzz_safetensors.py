"""Long structure-aware fuzz of the safetensors header reader (CI runs a bounded one: tests/test_fuzz_safetensors.py).

Run: ``python bench/fuzz_safetensors.py [--cases 5000] [--seed 1] [--mutations 3]``

Each case applies 1..``--mutations`` mutations from tests/safetensors_mutations.py to a real file
(safetensors.torch.save or the hand-written one with F4/F6/C64), then reads it with
``ckptctl.formats.safetensors`` and with ``safetensors.safe_open``.

Must hold: 0 exceptions other than UnreadableCheckpoint, 0 files ckptctl accepts that the library
refuses or reads differently, 0 files the library reads that ckptctl refuses for a reason outside
DELIBERATELY_STRICTER. Printed: cases, outcomes, ckptctl's verdicts by kind, findings.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ckptctl.errors import UnreadableCheckpoint  # noqa: E402
from ckptctl.formats.safetensors import read_safetensors_header  # noqa: E402
from tests.safetensors_mutations import check, load_case, mutate, safe_open  # noqa: E402
from tests.test_fuzz_safetensors import TEMPLATES  # noqa: E402


class RandomChooser:
    """safetensors_mutations.Chooser over ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def pick(self, options: Sequence[Any]) -> Any:
        return self.rng.choice(options)


def verdict_kind(path: Path) -> str:
    """ckptctl's verdict without its particulars ("corrupt safetensors header: tensor 'a' spans..." -> "spans")."""
    try:
        read_safetensors_header(path)
        return "read"
    except UnreadableCheckpoint as verdict:
        reason = verdict.reason
    if reason.startswith("truncated"):
        return "truncated"
    detail = reason.removeprefix("corrupt safetensors header: ")
    for marker in ("unknown dtype", "spans", "overlaps", "gap of", "bytes after the last tensor", "duplicate key",
                   "nested deeper", "invalid JSON", "not UTF-8", "shape", "data_offsets", "has no", "__metadata__",
                   "not an object", "header length", "ends before", "byte boundary", "dimensions", "start with"):  # fmt: skip
        if marker in detail:
            return marker
    return detail[:40]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mutations", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    chooser = RandomChooser(rng)
    outcomes: collections.Counter[str] = collections.Counter()
    verdicts: collections.Counter[str] = collections.Counter()
    findings: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.safetensors"
        for _ in range(args.cases):
            case = mutate(load_case(rng.choice(TEMPLATES)), chooser, rng.randint(1, args.mutations))
            path.write_bytes(case.to_bytes())
            try:
                outcomes[check(path)] += 1
            except Exception:  # noqa: BLE001 - a disagreement or a crash is this fuzz's finding
                outcomes["FINDING"] += 1
                findings.append(f"{case.applied}: {traceback.format_exc(limit=2)}")
            verdicts[verdict_kind(path)] += 1
    elapsed = time.perf_counter() - started
    print(f"cases: {args.cases} (seed {args.seed}, 1..{args.mutations} mutations each) in {elapsed:.1f} s;"
          f" differential vs safetensors: {'on' if safe_open is not None else 'OFF (package not installed)'}")
    print("outcomes:", ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    print("ckptctl verdicts:", ", ".join(f"{k} {v}" for k, v in verdicts.most_common()))
    print(f"findings: {len(findings)}")
    for finding in findings[:10]:
        print(finding)
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
