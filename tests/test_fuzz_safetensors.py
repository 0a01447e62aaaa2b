"""Fuzz ckptctl.formats.safetensors with structure-aware mutations of real safetensors files.

Whatever the mutation (tests/safetensors_mutations.py: dtypes, shapes, offsets, field types,
names, metadata, duplicate keys, nesting, the length prefix, truncation, flipped bytes), the
reader raises only UnreadableCheckpoint; a file it accepts is read identically (names, dtypes,
shapes, metadata) by ``safetensors.safe_open``; a file the library reads, ckptctl reads too,
except for the deliberately stricter cases listed in ``DELIBERATELY_STRICTER``.

A bounded run in CI; ``CKPTCTL_FUZZ_EXAMPLES=5000`` for a long one (or bench/fuzz_safetensors.py).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import safetensors_mutations
from tests.safetensors_mutations import MUTATIONS, check, load_case, mutate

EXAMPLES = int(os.environ.get("CKPTCTL_FUZZ_EXAMPLES", "500"))


def templates() -> list[bytes]:
    """Real files: one from safetensors.torch.save_file (if installed), one hand-written with rare dtypes."""
    raws = []
    header = {
        "__metadata__": {"format": "pt"},
        "packed": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]},
        "six": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [3, 6]},
        "empty": {"dtype": "C64", "shape": [0, 5], "data_offsets": [6, 6]},
        "c": {"dtype": "C64", "shape": [1], "data_offsets": [6, 14]},
    }
    text = json.dumps(header).encode()
    raws.append(struct.pack("<Q", len(text)) + text + bytes(range(14)))
    try:
        from safetensors.torch import save
    except ImportError:
        return raws
    tensors = {"w": torch.zeros(3, 2), "b": torch.ones(2, dtype=torch.float16), "n": torch.arange(3),
               "z": torch.zeros(0, dtype=torch.bfloat16), "m": torch.ones(1, dtype=torch.bool)}
    raws.append(save(tensors, metadata={"format": "pt", "step": "7"}))
    return raws


TEMPLATES = templates()


class HypothesisChooser:
    """safetensors_mutations.Chooser over hypothesis' ``data`` (so failures shrink)."""

    def __init__(self, data: Any):
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def pick(self, options: Sequence[Any]) -> Any:
        return self.data.draw(st.sampled_from(options))


@pytest.fixture(scope="module")
def scratch() -> Path:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "model.safetensors"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), template=st.sampled_from(TEMPLATES), count=st.integers(1, 3))
def test_mutated_files_get_a_verdict_and_agree_with_the_library(scratch, data, template, count):
    case = mutate(load_case(template), HypothesisChooser(data), count)
    scratch.write_bytes(case.to_bytes())
    check(scratch)  # AssertionError (or any exception but UnreadableCheckpoint) is a finding


@pytest.mark.parametrize("raw", TEMPLATES, ids=["hand-written", "save_file"][: len(TEMPLATES)])
def test_templates_are_read_by_both(scratch, raw):
    scratch.write_bytes(raw)
    assert check(scratch) in ("both accept", "accepted")


class _Fixed:
    """A Chooser that always takes the given option (to exercise one mutation deterministically)."""

    def __init__(self, index: int):
        self.index = index

    def integer(self, low: int, high: int) -> int:
        return min(max(low, self.index), high)

    def pick(self, options: Sequence[Any]) -> Any:
        return options[min(self.index, len(options) - 1)]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__)
def test_every_mutation_changes_the_file(scratch, mutation):
    """Each mutation does something (a fuzzer whose mutations are no-ops would assert nothing)."""
    raw = TEMPLATES[-1]
    changed = False
    for index in range(4):
        case = load_case(raw)
        mutation(case, _Fixed(index))
        changed |= case.to_bytes() != raw
        scratch.write_bytes(case.to_bytes())
        check(scratch)
    assert changed


@pytest.mark.skipif(safetensors_mutations.safe_open is None, reason="safetensors not installed")
def test_the_differential_catches_a_disagreement(scratch, monkeypatch):
    """The check fails when ckptctl accepts what the library refuses (here: bytes after the last tensor)."""
    import ckptctl.formats.safetensors as module

    monkeypatch.setattr(module, "_check_size", lambda tensors, available: None)
    scratch.write_bytes(TEMPLATES[-1] + b"\0")
    with pytest.raises(AssertionError):
        check(scratch)
