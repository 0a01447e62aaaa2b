"""Long structure-aware fuzz of the restricted unpickler (CI runs a bounded one: tests/test_fuzz_unpickler.py).

Run: ``python bench/fuzz_unpickler.py [--examples 5000]``

Draws grammar-built opcode streams and mutations of a real torch.save data.pkl (the strategies of
the test module), loads each under a scaled-down budget with tracemalloc, and prints how the loads
ended: read as data, or which verdict. Must hold: 0 other exceptions, 0 loads over the memory
budget (an AssertionError from the test module's ``check_one``).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.test_fuzz_unpickler import check_one, grammar_pickles, mutated_pickles  # noqa: E402


def run(strategy, examples: int) -> tuple[collections.Counter, list[str]]:
    outcomes: collections.Counter = collections.Counter()
    failures: list[str] = []

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(strategy)
    def one(data: bytes) -> None:
        try:
            outcomes[check_one(data)] += 1
        except Exception:  # any exception but a verdict, or a budget overrun: recorded, the run goes on
            outcomes["FAILURE"] += 1
            failures.append(f"{data[:80]!r}...\n{traceback.format_exc(limit=3)}")

    one()
    return outcomes, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="examples per strategy")
    args = parser.parse_args()
    total_failures = 0
    for name, strategy in (("grammar", grammar_pickles()), ("mutated torch.save", mutated_pickles())):
        start = time.perf_counter()
        outcomes, failures = run(strategy, args.examples)
        seconds = time.perf_counter() - start
        print(f"\n[{name}] {sum(outcomes.values())} loads in {seconds:.1f} s")
        for outcome, count in outcomes.most_common(25):
            print(f"  {count:7d}  {outcome}")
        for failure in failures[:5]:
            print("  FAILURE:", failure)
        total_failures += len(failures)
    print(f"\nfailures (exceptions other than verdicts, or memory over budget): {total_failures}")
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
