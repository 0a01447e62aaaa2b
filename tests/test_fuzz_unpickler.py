"""Structure-aware fuzzing of the restricted unpickler (hypothesis).

Two sources of pickles: opcode streams drawn from a grammar (pushes, containers, memo, globals from
the allowlist and outside it, persistent ids, REDUCE/BUILD), and mutations (flips, inserts, cuts,
splices) of a real ``torch.save`` data.pkl. For each: the load ends in data or in one of our
verdicts (a ``CheckpointError``), never another exception; the read path's consumers (summaries,
JSON, short display) accept whatever it returned; and peak memory (tracemalloc) stays under the
load's ``Budget.max_memory``. The budget is scaled down so that its limits are actually reached.

CI runs a small number of examples; ``CKPTCTL_FUZZ_EXAMPLES=5000`` (or bench/fuzz_unpickler.py)
runs a long one.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import tracemalloc
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptctl.errors import CheckpointError
from ckptctl.layouts.metadata import summarize, tensor_summary
from ckptctl.formats.reader import CheckpointFile, iter_tensors
from ckptctl.formats.unpickler import Budget, safe_loads
from ckptctl.formats.values import jsonable, short_repr

EXAMPLES = int(os.environ.get("CKPTCTL_FUZZ_EXAMPLES", "40"))
SCALE = 0.002  # objects ~4k, memo ~1k: reachable by a few KB of opcodes
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


GLOBALS = [
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch", "FloatStorage"), ("torch", "float32"), ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"), ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "complex"), ("_codecs", "encode"), ("argparse", "Namespace"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("pathlib", "PosixPath"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("datetime", "datetime"), ("copyreg", "_reconstructor"),
    ("torch.distributed.checkpoint.metadata", "Metadata"), ("os", "system"), ("builtins", "eval"),
]  # fmt: skip

# Opcodes with no argument, weighted towards the ones that build and nest.
BARE = [b"N", b"\x88", b"\x89", b")", b"]", b"}", b"\x8f", b"(", b"(", b"t", b"\x85", b"\x86", b"\x87", b"l", b"d",
        b"a", b"e", b"s", b"u", b"\x90", b"\x91", b"R", b"b", b"0", b"1", b"2", b"\x94", b"Q", b"\x81", b"\x93"]  # fmt: skip


def _persistent_id(key: int, numel: int) -> bytes:
    return b"(" + _str("storage") + _global("torch", "FloatStorage") + _str(str(key)) + _str("cpu") + b"J" + struct.pack("<i", numel) + b"tQ"


opcode = st.one_of(
    st.sampled_from(BARE),
    st.integers(0, 255).map(lambda n: b"K" + bytes([n])),
    st.integers(-(2**31), 2**31 - 1).map(lambda n: b"J" + struct.pack("<i", n)),
    st.integers(-(2**70), 2**70).map(lambda n: b"\x8a" + bytes([9]) + n.to_bytes(9, "little", signed=True)),
    st.integers(0, 2**14).map(lambda bits: b"\x8b" + struct.pack("<I", bits // 8) + b"\x01" * (bits // 8)),
    st.floats(allow_nan=True).map(lambda f: b"G" + struct.pack(">d", f)),
    st.text(max_size=8).map(_str),
    st.binary(max_size=8).map(lambda b: b"C" + bytes([len(b)]) + b),
    st.integers(0, 7).map(lambda i: b"q" + bytes([i])),
    st.integers(0, 7).map(lambda i: b"h" + bytes([i])),
    st.sampled_from(GLOBALS).map(lambda g: _global(*g)),
    st.tuples(st.integers(0, 3), st.integers(0, 64)).map(lambda a: _persistent_id(*a)),
)


@st.composite
def grammar_pickles(draw) -> bytes:
    proto = draw(st.sampled_from([b"\x80\x02", b"\x80\x04", b""]))
    ops = draw(st.lists(opcode, max_size=60))
    repeat = draw(st.integers(1, 3000))  # floods: the last few opcodes many times over
    tail = ops[-3:] * repeat if ops and draw(st.booleans()) else []
    return proto + b"".join(ops + tail) + b"."


@functools.lru_cache(maxsize=1)
def torch_data_pkl() -> bytes:
    """A real torch.save pickle: tensors, a parameter, a view, an OrderedDict with _metadata, args, numpy."""
    import argparse

    import numpy as np
    import torch

    base = torch.arange(12.0).reshape(3, 4)
    state = {
        "step": 7, "model": torch.nn.Linear(3, 2).state_dict(), "view": base[1:, 2:], "p": torch.nn.Parameter(torch.ones(2)),
        "rng": np.random.RandomState(0).get_state(), "loss": np.float64(0.5), "args": argparse.Namespace(lr=0.1),
        "half": torch.zeros(2, dtype=torch.float16), "flags": {1, 2}, "t": (1, "a"),
    }  # fmt: skip
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))


@st.composite
def mutated_pickles(draw) -> bytes:
    data = bytearray(torch_data_pkl())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "splice", "repeat"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(opcode)
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "splice":
            source = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[source : source + draw(st.integers(1, 64))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 8))] * draw(st.integers(2, 300))
        if not data:
            break
    return bytes(data)


def check_one(data: bytes) -> str:
    """Load ``data`` as every read path does; return the outcome ("data" or the verdict's status and
    first words). Raises AssertionError when a property is broken."""
    budget = Budget.for_input(len(data), scale=SCALE)
    tracemalloc.start()
    try:
        try:
            root, storages = safe_loads(data, budget)
        except CheckpointError as exc:
            outcome = f"{exc.status}: {' '.join(exc.reason.split()[:4])}"
        else:
            outcome = "data"
            tensor_summary(root)
            list(iter_tensors(root))
            jsonable(root)
            short_repr(root, 80)
            summary = summarize(CheckpointFile(Path("fuzz.pt"), "zip", len(data), root, storages, {}))
            summary.all_tensors, summary.model, summary.optimizer  # noqa: B018 - computed on first use
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= budget.max_memory, f"peak {peak} > budget {budget.max_memory}"
    return outcome


def test_the_real_pickle_reads():
    assert check_one(torch_data_pkl()) == "data"


@FUZZ
@given(grammar_pickles())
def test_grammar_pickles_end_in_data_or_a_verdict(data):
    check_one(data)


@FUZZ
@given(mutated_pickles())
def test_mutated_torch_pickles_end_in_data_or_a_verdict(data):
    check_one(data)
