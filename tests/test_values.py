"""Bounded text for untrusted values: repr/str that stop at a limit, whatever the graph holds."""

from __future__ import annotations

import json
import math
import pickle
import tracemalloc

import pytest

from ckptctl.formats.bounded import bounded_repr, bounded_str, short_number
from ckptctl.formats.unpickler import Namespace, safe_loads
from ckptctl.formats.values import jsonable, key_text, short_repr
from tests import hostile


def _shared_tuple(levels: int = 60) -> tuple:
    """(t, t) nested ``levels`` deep: 2**levels leaves to repr/str/hash, built without hashing it."""
    t: tuple = (0,)
    for _ in range(levels):
        t = (t, t)
    return t


def _peak(func):
    tracemalloc.start()
    try:
        result = func()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "value",
    [[1, 2.5, "x", None, True, b"raw"], (1,), (), {"a": (1, 2), 3: [4]}, {1, 2}, frozenset(), set(),
     -7, 1.5e300, complex(1, 2), "quote's"],
)  # fmt: skip
def test_short_values_are_shown_exactly_as_repr(value):
    assert bounded_repr(value, 1000) == repr(value)


def test_dict_subclasses_are_shown_by_their_items():
    import collections

    assert bounded_repr(collections.OrderedDict(k=1)) == "OrderedDict({'k': 1})"


def test_a_shared_nested_tuple_is_shown_in_bounded_work():
    text = bounded_repr(_shared_tuple(), 80)
    assert len(text) == 80 and text.endswith("…") and text.startswith("((((")


def test_one_string_named_a_thousand_times_is_not_copied():
    big = "x" * 1_000_000
    value = [big] * 1000  # repr() would build a 1 GB string
    text, peak = _peak(lambda: bounded_repr(value, 200))
    assert len(text) == 200
    assert peak < 100_000


def test_deep_nesting_does_not_recurse():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        repr(deep)
    assert bounded_repr(deep, 50).startswith("[[[[")


def test_huge_ints_are_never_converted_to_decimal():
    assert bounded_repr(10**5000) == "<int of 16610 bits>"
    assert short_number(10**5000) == "<int of 16610 bits>"
    assert short_number(12) == "12" and short_number(float("nan")) == "nan"


def test_bounded_str_cuts_strings_and_reprs_the_rest():
    assert bounded_str("abc") == "abc"
    assert bounded_str("a" * 500, 10) == "a" * 9 + "…"
    assert bounded_str((1, "a")) == "(1, 'a')"


def test_unknown_objects_are_named_not_repr_d():
    class Loud:
        def __repr__(self):  # pragma: no cover - must not be called
            raise AssertionError("repr called")

    assert bounded_repr([Loud()]) == "[<Loud>]"


def test_placeholders_show_like_before():
    import io
    import zipfile

    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2, 3)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zf:
        obj, _ = safe_loads(zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl"))))
    assert bounded_repr(obj) == "{'w': tensor(float32, shape=[2, 3])}"
    ns = Namespace({"lr": 0.1, "tags": ["a"]})
    assert bounded_repr(ns) == repr(ns) == "Namespace({'lr': 0.1, 'tags': ['a']})"


@pytest.mark.parametrize(
    "value",
    [{"a": [1, 2.5, float("inf"), (1, 2)], 3: {"x"}, (1, 2): None}, Namespace({"lr": 0.1}), [b"abc", None],
     {"nested": {"deep": [[1], [2]]}}],
)  # fmt: skip
def test_short_repr_is_repr_of_jsonable_cut(value):
    full = repr(jsonable(value))
    assert short_repr(value, 1000) == full
    assert short_repr(value, 12) == (full if len(full) <= 12 else full[:11] + "…")


def test_keys_from_a_file_become_bounded_text():
    data = pickle.dumps({"ok": 1}, 2)  # a tuple key that would hang repr(): through jsonable and key_text
    key = _shared_tuple()
    assert len(key_text(key)) == 200
    value = {"k": [key]}
    assert json.dumps(jsonable({"ok": 1})) and safe_loads(data)[0] == {"ok": 1}
    assert len(short_repr(value, 100)) == 100


def test_jsonable_unknown_objects_and_bytes():
    text = jsonable(hostile)  # a module: shown by type name
    assert text == "<module>"
    assert jsonable(b"x" * 10) == "<10 bytes>"
    assert jsonable(float("nan")) == "nan" and math.isnan(float(jsonable(float("nan"))))


def test_tensor_names_from_tuple_keys_are_bounded():
    """reader.iter_tensors names tensors by their keys: a key tuple of 10 000 long strings stays 200 chars."""
    import torch

    from ckptctl.formats.reader import iter_tensors

    buffer = __import__("io").BytesIO()
    key = ("k" * 1000,) * 10_000
    torch.save({key: torch.zeros(1)}, buffer)
    import zipfile

    with zipfile.ZipFile(__import__("io").BytesIO(buffer.getvalue())) as zf:
        root, _ = safe_loads(zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl"))))
    (name, _tensor), = list(iter_tensors(root))
    assert len(name) == 200
