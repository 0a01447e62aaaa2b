"""Long run of the zip-reader fuzzer against torch's reader (CI runs a bounded one).

Run: ``CKPTCTL_FUZZ_EXAMPLES=5000 python bench/fuzz_zip.py``

Mutates small real ``torch.save`` archives (header fields, names, offsets, duplicated and reordered
records, truncation, flipped bytes; see ``tests/zip_fuzz.py``) and prints the examples run, the
verdict counts, and every disagreement with ``torch.load(weights_only=True)`` (an archive ckptctl
reads but torch does not, or reads differently) or exception other than ckptctl's verdicts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CKPTCTL_FUZZ_EXAMPLES", "2000")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests import zip_fuzz  # noqa: E402


def main() -> int:
    examples = zip_fuzz.EXAMPLES
    failures: list[str] = []

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(zip_fuzz.archives())
    def run(data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "latest.pt"
            path.write_bytes(data)
            try:
                zip_fuzz.judge(path)
            except Exception:  # a disagreement with torch or a crash: keep going, report at the end
                zip_fuzz.VERDICTS["DISAGREEMENT"] += 1
                failures.append(traceback.format_exc(limit=3))

    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    total = sum(zip_fuzz.VERDICTS.values())
    print(f"examples run: {total} in {seconds:.1f} s ({examples} requested)")
    for verdict, count in sorted(zip_fuzz.VERDICTS.items()):
        print(f"  {verdict:<13} {count:>7}")
    print(f"disagreements with torch / other exceptions: {len(failures)}")
    for failure in failures[:5]:
        print(failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
