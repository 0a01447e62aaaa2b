"""The opcode-level scanner: names every global a pickle refers to, without running or importing it."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys

import pytest

from ckptctl.formats.pickle_scan import Budget, scan_file_bytes, scan_pickle, scan_stream
from tests import hostile


class _Call:
    """Pickles as ``os.system('true')`` without defining anything hostile at module level."""

    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("payload", hostile.PAYLOADS, ids=lambda p: p.name)
def test_every_hostile_payload_is_named(tmp_path, payload):
    assert payload.reported in scan_stream(payload.build(tmp_path / "marker"))


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol(proto):
    data = pickle.dumps({"a": [_Call(), {"b": (1, "x", 2.5)}]}, protocol=proto)
    assert scan_stream(data) == [f"{os.system.__module__}.system"]


def test_stack_global_resolved_through_the_memo_and_dup():
    """Module and name pushed once, memoised, then fetched with BINGET / duplicated with DUP."""
    push = hostile._str("os") + b"\x94" + hostile._str("system") + b"\x94"  # MEMOIZE after each
    via_memo = b"\x80\x04" + push + b"0" + b"0" + b"h\x00h\x01\x93N."  # POP both, BINGET 0, 1, STACK_GLOBAL
    assert scan_pickle(via_memo).globals == ["os.system"]
    dup = b"\x80\x04" + hostile._str("builtins") + hostile._str("eval") + b"2" + b"0\x93."  # DUP then POP
    assert scan_pickle(dup).globals == ["builtins.eval"]
    not_a_string = b"\x80\x04" + hostile._str("os") + b"N\x93."  # pickle refuses it: nothing can be imported
    assert scan_pickle(not_a_string).globals == []


def test_protocol_0_string_and_long_binput_memo():
    data = b"S'posix'\np0\nS'system'\np1\n0g0\ng1\n\x93."
    assert scan_pickle(data).globals == ["posix.system"]


def test_a_benign_pickle_names_only_what_it_uses():
    import collections

    data = pickle.dumps(collections.OrderedDict(a=1), protocol=2)
    assert scan_stream(data) == ["collections.OrderedDict"]
    assert scan_stream(pickle.dumps({"x": [1, 2, b"y"]}, protocol=5)) == []


def test_consecutive_pickles_are_all_scanned():
    data = pickle.dumps(1, 2) + pickle.dumps("a", 2) + pickle.dumps(_Call(), 2)
    assert scan_stream(data) == [f"{os.system.__module__}.system"]


def test_npy_payload_after_its_header(tmp_path):
    data = hostile.npy_with_objects(tmp_path / "a.npy", tmp_path / "marker").read_bytes()
    assert scan_file_bytes(data) == ["os.system"]


def test_the_opcode_budget_stops_the_walk():
    flood = b"\x80\x02" + b"N0" * 1000 + hostile._global("os", "system") + b"."
    assert scan_pickle(flood).globals == ["os.system"]
    stopped = scan_pickle(flood, budget=Budget(opcodes=100))
    assert stopped.globals == [] and not stopped.complete and "budget" in stopped.error


def test_huge_declared_lengths_are_skipped_not_read():
    data = b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"abc"  # BINBYTES8 of 4 EiB
    scan = scan_pickle(data)
    assert scan.error == "truncated" and scan.globals == []


def test_random_bytes_name_nothing_and_never_raise():
    rng = random.Random(7)
    for _ in range(1000):
        assert scan_stream(rng.randbytes(rng.randrange(1, 2000))) == []


def test_scanning_imports_neither_torch_nor_numpy_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    code = (
        "import sys; from ckptctl.formats.pickle_scan import scan_stream; from tests import hostile; from pathlib import Path\n"
        f"m = Path({str(marker)!r})\n"
        "for p in hostile.PAYLOADS: assert p.reported in scan_stream(p.build(m))\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert not marker.exists()
