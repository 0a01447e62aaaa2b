"""Fuzz the DCP reader (ckptctl.formats.dcp) with structure-aware mutations of a real checkpoint.

Whatever the mutation (tests/dcp_mutations.py: sizes, offsets, counts, paths, chunk lists, key
paths, dtypes, field types, many entries naming one blob, raw pickle and shard damage), every read
path must end in a verdict — ``read_checkpoint``/``chunk_problems`` raise only our
CheckpointError, ``validate_file`` never raises — within bounded memory (tracemalloc peak).

A bounded run in CI; ``CKPTCTL_FUZZ_EXAMPLES=5000`` for a long one (or bench/fuzz_dcp.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import dcp_mutations
from tests.dcp_mutations import read_everything
from tests.factories import make_state, write_dcp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
EXAMPLES = int(os.environ.get("CKPTCTL_FUZZ_EXAMPLES", "40"))
# docs/architecture.md ("Every reader has a budget"): any read needs at most ~256 MiB + a small multiple of the input's size.
MEMORY_BASE = 256 * 1024 * 1024
MEMORY_FACTOR = 8


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return write_dcp(tmp_path_factory.mktemp("dcp-template") / "rolling_step_000100", make_state(step=100))


class HypothesisChooser:
    """dcp_mutations.Chooser over hypothesis' ``data`` (so failures shrink)."""

    def __init__(self, data: Any):
        self.data = data

    def integer(self, low: int, high: int) -> int:
        if high < low:
            raise IndexError("nothing to choose from")
        return self.data.draw(st.integers(low, high))

    def pick(self, options: Sequence[Any]) -> Any:
        return self.data.draw(st.sampled_from(options))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), count=st.integers(1, 4))
def test_mutated_dcp_checkpoints_get_a_verdict_in_bounded_memory(template, data, count):
    case = dcp_mutations.mutate(dcp_mutations.load_case(template), HypothesisChooser(data), count)
    scratch = Path(tempfile.mkdtemp(dir=template.parent))
    try:
        path = case.write(scratch / "rolling_step_000100")
        size = sum(f.stat().st_size for f in path.iterdir())
        tracemalloc.start()
        try:
            read_everything(path)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak <= MEMORY_BASE + MEMORY_FACTOR * size, (case.applied, peak)
    finally:
        shutil.rmtree(scratch)


def test_the_unmutated_template_reads_ok(template):
    assert read_everything(template) == ["ok", "ok", "ok", "valid"]


class _Fixed:
    """A Chooser that always takes the given option (to exercise one mutation deterministically)."""

    def __init__(self, index: int = 0):
        self.index = index

    def integer(self, low: int, high: int) -> int:
        return min(max(low, self.index), high)

    def pick(self, options: Sequence[Any]) -> Any:
        return options[min(self.index, len(options) - 1)]


@pytest.mark.parametrize("mutation", dcp_mutations.STRUCTURAL, ids=lambda m: m.__name__)
def test_every_mutation_changes_the_checkpoint(template, tmp_path, mutation):
    """Each mutation does something (a fuzzer whose mutations are no-ops would assert nothing)."""
    case = dcp_mutations.load_case(template)
    before = (dcp_mutations.pickle.dumps(case.metadata), bytes(case.shard))
    mutation(case, _Fixed(3))
    assert (dcp_mutations.pickle.dumps(case.metadata), bytes(case.shard)) != before
    read_everything(case.write(tmp_path / "rolling_step_000100"))
