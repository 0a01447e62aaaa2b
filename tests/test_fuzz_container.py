"""Fuzz the zip reader against torch's: only verdicts, and every archive ckptctl reads, torch reads alike.

``CKPTCTL_FUZZ_EXAMPLES`` sets the number of examples (120 by default, ~5-10 s); the long run
is ``bench/fuzz_zip.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests import zip_fuzz

pytest.importorskip("torch")


@settings(max_examples=zip_fuzz.EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(zip_fuzz.archives())
def test_mutated_archives_get_a_verdict_and_ok_means_torch_agrees(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "latest.pt"
        path.write_bytes(data)
        assert zip_fuzz.judge(path) in {"ok", "unreadable", "unsafe"}
