"""The restricted unpickler: hostile pickles are refused by name and never run; allowed data is inert."""

from __future__ import annotations

import io
import pickle
import time

import pytest

from ckptctl.errors import UnreadableCheckpoint, UnsafeCheckpoint
from ckptctl.formats.unpickler import ALLOWED, MAX_DEPTH, Namespace, NumpyArray, StorageRef, TensorRef, safe_loads
from tests import hostile


class _PlainUnpickler(pickle.Unpickler):
    """The standard unpickler (what torch.load(weights_only=False) amounts to), storages as None."""

    def persistent_load(self, pid):
        return None


def _wait_for(path, seconds: float = 5.0) -> bool:
    """Popen-based payloads create the marker asynchronously: poll briefly (bounded)."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


@pytest.mark.parametrize("payload", hostile.PAYLOADS, ids=lambda p: p.name)
def test_payload_is_a_real_exploit(tmp_path, payload):
    """Each payload does run code under the standard unpickler: the marker appears."""
    marker = tmp_path / "pwned"
    try:
        _PlainUnpickler(io.BytesIO(payload.build(marker))).load()
    except Exception:
        pass  # most payloads fail *after* their side effect
    assert _wait_for(marker)


@pytest.mark.parametrize("payload", hostile.PAYLOADS, ids=lambda p: p.name)
def test_safe_loads_refuses_payload_by_name_without_running_it(tmp_path, payload):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeCheckpoint) as info:
        safe_loads(payload.build(marker))
    assert payload.reported in info.value.globals
    assert payload.reported in info.value.reason
    assert info.value.status == "unsafe"
    time.sleep(0.05)  # a Popen'd child would have had time to run
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(hostile.MISUSES))
def test_misuse_of_an_allowed_global_is_unsafe_and_named(name):
    data, reported = hostile.MISUSES[name]
    with pytest.raises(UnsafeCheckpoint) as info:
        safe_loads(data)
    assert info.value.globals == [reported]
    assert f"misuses {reported}" in info.value.reason


def test_ext_opcode_is_refused_even_when_the_global_is_cached(tmp_path):
    """The C unpickler answers EXT codes from a process-wide cache without calling find_class."""
    marker = tmp_path / "pwned"
    data = hostile.ext_opcode(marker)
    with hostile.registered_extension():
        try:
            _PlainUnpickler(io.BytesIO(data)).load()  # runs it, and caches os.system for the code
        except Exception:
            pass
        assert marker.exists()
        marker.unlink()
        for _ in range(2):
            with pytest.raises(UnsafeCheckpoint) as info:
                safe_loads(data)
            assert info.value.globals == ["os.system"]
        assert not marker.exists()


def test_unregistered_ext_opcode_is_unreadable(tmp_path):
    with pytest.raises(UnreadableCheckpoint, match="extension"):
        safe_loads(hostile.ext_opcode(tmp_path / "pwned"))


def test_every_refused_global_is_reported_in_one_pass(tmp_path):
    data = hostile._wrap(
        b"(" + hostile._call(hostile._global("os", "system"), hostile._str("x"))
        + hostile._call(hostile._global("shutil", "rmtree"), hostile._str("/")) + b"l"
    )  # fmt: skip
    with pytest.raises(UnsafeCheckpoint) as info:
        safe_loads(data)
    assert info.value.globals == ["os.system", "shutil.rmtree"]


def _build_on(global_pickle: bytes, state: bytes) -> bytes:
    return hostile._wrap(global_pickle + state + b"b")


@pytest.mark.parametrize(
    "poison",
    [
        _build_on(hostile._global("torch", "FloatStorage"), b"}" + hostile._str("dtype") + hostile._str("float64") + b"s"),
        _build_on(hostile._global("torch", "float32"), b"}" + hostile._str("name") + hostile._str("int8") + b"s"),
        _build_on(hostile._global("torch", "Tensor"), b"}" + hostile._str("parameter") + b"\x88s"),
        _build_on(hostile._global("argparse", "Namespace"), b"N}" + hostile._str("attrs") + b"Ns\x86"),
        _build_on(hostile._global("numpy", "ndarray"), b"N}" + hostile._str("shape") + b"Ns\x86"),
        _build_on(hostile._global("_codecs", "encode"), b"N}" + hostile._str("__defaults__") + b"Ns\x86"),
        _build_on(hostile._global("torch._utils", "_rebuild_tensor_v2"), b"}" + hostile._str("x") + b"K\x01s"),
    ],
    ids=["storage-type", "dtype", "tensor-type", "namespace-class", "ndarray-class", "function-defaults",
         "function-dict"],
)  # fmt: skip
def test_a_pickle_cannot_alter_the_allowlist_for_later_files(tmp_path, poison):
    """BUILD on an allowlisted object must fail: one hostile file must not change how the next is read."""
    import torch

    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(4), "p": torch.nn.Parameter(torch.ones(2))}, good)
    from ckptctl.formats.reader import read_checkpoint

    before = {n: (t.dtype, t.shape, t.nbytes, t.is_parameter) for n, t in read_checkpoint(good).tensors()}
    with pytest.raises((UnreadableCheckpoint, UnsafeCheckpoint)):
        safe_loads(poison)
    after = {n: (t.dtype, t.shape, t.nbytes, t.is_parameter) for n, t in read_checkpoint(good).tensors()}
    assert after == before
    assert ALLOWED["torch.float32"].name == "float32" and ALLOWED["torch.FloatStorage"].dtype == "float32"


def test_allowed_plain_data_round_trips():
    import collections
    import datetime

    value = {
        "a": [1, 2.5, "x", None, True, b"raw"], "t": (1, 2), "s": {1, 2}, "f": frozenset({3}),
        "o": collections.OrderedDict(k=1), "d": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "td": datetime.timedelta(seconds=3), "c": complex(1, 2),
    }  # fmt: skip
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        obj, storages = safe_loads(pickle.dumps(value, protocol))
        assert obj == value and storages == {}


def test_framed_pickles_read_like_pickle_loads():
    """Protocols 4 and 5 cut the stream into frames (~64 KiB); the reader reads them inline."""
    value = {"ints": list(range(30_000)), "text": ["x" * 70_000, "y"], "raw": b"z" * 100_000,
             "nested": [{"k": i, "f": i / 7} for i in range(2_000)]}  # fmt: skip
    for protocol in (4, 5):
        data = pickle.dumps(value, protocol)
        assert data.count(pickle.FRAME) > 3  # really framed
        obj, _ = safe_loads(data)
        assert obj == pickle.loads(data) == value


@pytest.mark.parametrize("cut", [3, 11, 70_000, -2])
def test_truncated_framed_pickles_are_unreadable(cut):
    data = pickle.dumps({"ints": list(range(30_000)), "text": "x" * 70_000}, 4)[:cut]
    with pytest.raises(UnreadableCheckpoint, match="corrupt pickle"):
        safe_loads(data)


def test_namespace_is_inert_data_at_every_protocol():
    import argparse

    ns = argparse.Namespace(lr=0.1, name="run", tags=["a"])
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        obj, _ = safe_loads(pickle.dumps({"args": ns}, protocol))
        assert isinstance(obj["args"], Namespace)
        assert obj["args"].attrs == {"lr": 0.1, "name": "run", "tags": ["a"]}


def test_numpy_values_are_inert_placeholders():
    np = pytest.importorskip("numpy")
    state = np.random.RandomState(3).get_state()
    obj, _ = safe_loads(pickle.dumps({"rng": state, "loss": np.float64(0.25)}, 2))
    assert obj["rng"][0] == "MT19937"
    keys = obj["rng"][1]
    assert isinstance(keys, NumpyArray) and keys.shape == (624,) and len(keys.raw) == 624 * 4
    assert isinstance(obj["loss"], NumpyArray) and obj["loss"].shape == ()


def test_tensor_placeholders_from_torch_pickle():
    import torch

    buffer = io.BytesIO()
    base = torch.arange(12, dtype=torch.float16).reshape(3, 4)
    torch.save({"base": base, "view": base[1:, 2:], "p": torch.nn.Parameter(torch.ones(5))}, buffer)
    import zipfile

    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        obj, storages = safe_loads(zf.read(pkl))
    assert isinstance(obj["base"], TensorRef) and obj["base"].dtype == "float16" and obj["base"].shape == (3, 4)
    view = obj["view"]
    assert view.shape == (2, 2) and view.stride == (4, 1) and view.offset == 6
    assert view.storage is obj["base"].storage
    assert obj["p"].is_parameter and obj["p"].requires_grad
    assert {k: s.nbytes for k, s in storages.items()} == {obj["base"].storage.key: 24, obj["p"].storage.key: 20}
    assert all(isinstance(s, StorageRef) for s in storages.values())


def test_tensor_reading_past_its_storage_is_unreadable():
    data = hostile.float_tensor_pickle(storage_numel=2, tensor_numel=16)
    with pytest.raises(UnreadableCheckpoint, match="past its storage"):
        safe_loads(data)


@pytest.mark.parametrize(
    "pid",
    [b"X\x03\x00\x00\x00abcQ", b"(" + hostile._str("storage") + b"K\x01K\x02tQ",
     b"(" + hostile._str("other") + b"K\x01K\x02K\x03K\x04tQ"],
)  # fmt: skip
def test_malformed_persistent_ids_are_unreadable(pid):
    with pytest.raises(UnreadableCheckpoint, match="persistent id|storage reference"):
        safe_loads(hostile._wrap(pid))


def test_nesting_and_cycles_are_bounded():
    deep = b"\x80\x02" + b"]" * (MAX_DEPTH + 5) + b"a" * (MAX_DEPTH + 4) + b"."
    with pytest.raises(UnreadableCheckpoint, match="nests"):
        safe_loads(deep)
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(UnreadableCheckpoint, match="cycle"):
        safe_loads(pickle.dumps(cyclic, 2))


@pytest.mark.parametrize("data", [b"", b"\x80\x02", b"garbage", b"\x80\x02}q\x00(X\x01\x00\x00\x00a"])
def test_corrupt_pickles_are_unreadable(data):
    with pytest.raises(UnreadableCheckpoint, match="corrupt pickle"):
        safe_loads(data)


def test_bytes_constructor_cannot_allocate():
    data = hostile._wrap(hostile._call(hostile._global("__builtin__", "bytes"), b"J\x00\xca\x9a\x3b"))  # bytes(10**9)
    with pytest.raises(UnsafeCheckpoint, match="misuses __builtin__.bytes"):
        safe_loads(data)


def test_shared_references_cannot_expand_into_a_billion_objects():
    """Pickle memoises: [[[x]*1000]*1000]*1000 is small on disk but a billion items to any walk."""
    inner = [0] * 1000
    middle = [inner] * 1000
    bomb = {"step": 1, "dataloader_state": [middle] * 1000}
    data = pickle.dumps(bomb, 2)
    assert len(data) < 20_000
    with pytest.raises(UnreadableCheckpoint, match="expands to too many objects"):
        safe_loads(data)


def test_shared_references_within_bounds_are_fine():
    shared = {"lr": 0.1}
    obj, _ = safe_loads(pickle.dumps({"groups": [shared] * 100, "x": [shared, shared]}, 2))
    assert obj["groups"][0] is obj["groups"][99] and obj["x"][0] == {"lr": 0.1}


def test_a_huge_memo_index_does_not_allocate_memory():
    """LONG_BINPUT 2**31-1: the C unpickler would grow its memo array to ~32 GiB; ours keeps a dict."""
    import resource

    bomb = b"\x80\x02K\x01r\xff\xff\xff\x7f."
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UnreadableCheckpoint, match="exceeds memo budget"):  # indices stay below the budget
        safe_loads(bomb)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 64 * 1024  # KiB: far below the GiBs the C unpickler would take
    obj, storages = safe_loads(b"\x80\x02K\x01r\x05\x00\x00\x00.")  # sparse indices below it are fine
    assert obj == 1 and storages == {}


# --- budgets: every crafted file below is a verdict, never a crash, a hang or a memory blow-up ---

import tracemalloc  # noqa: E402

from ckptctl.formats.reader import read_checkpoint  # noqa: E402
from ckptctl.formats.unpickler import Budget, SafeUnpickler  # noqa: E402

P2 = b"\x80\x02"


def _memo_get(i: int) -> bytes:
    return b"h" + bytes([i])


def _memo_put(i: int) -> bytes:
    return b"q" + bytes([i])


def _long1(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _long4(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8b" + len(raw).to_bytes(4, "little") + raw


def deep_tuple_key(depth: int = 100_000) -> bytes:
    """{(((...((),),...),): None}: C's recursive tuple hash overflows the stack during SETITEM."""
    return P2 + b"}" + b")" + b"\x85" * depth + b"Ns."


def shared_tuple_key(levels: int = 60) -> bytes:
    """t0 = (0,), t(i+1) = (ti, ti) as a dict key: 300 bytes, 2**61 items for hash() to visit."""
    body = b"K\x00\x85"
    for _ in range(levels):
        body += _memo_put(1) + _memo_get(1) + b"\x86"
    return P2 + b"}" + body + b"Ns."


def _verdict(data: bytes, tmp_path, match: str, budget: Budget | None = None) -> None:
    """The same verdict from safe_loads and from read_checkpoint on a torch zip wrapping ``data``."""
    with pytest.raises(UnreadableCheckpoint, match=match):
        safe_loads(data, budget)
    if budget is None:
        with pytest.raises(UnreadableCheckpoint, match=match):
            read_checkpoint(hostile.torch_zip(tmp_path / "crafted.pt", data))


def test_deeply_nested_tuple_as_dict_key_is_a_verdict_not_a_segfault(tmp_path):
    _verdict(deep_tuple_key(), tmp_path, r"exceeds nesting depth budget \(200\)")


def test_shared_nested_tuple_key_is_measured_before_it_is_hashed(tmp_path):
    data = shared_tuple_key()
    assert len(data) < 400
    _verdict(data, tmp_path, r"exceeds work budget")


def test_shared_nested_frozenset_elements_are_measured_too(tmp_path):
    body = b"K\x00\x85"
    for _ in range(60):
        body += _memo_put(1) + _memo_get(1) + b"\x86"
    data = b"\x80\x04" + b"(" + body + b"\x91."  # frozenset({t60})
    _verdict(data, tmp_path, r"exceeds work budget")


@pytest.mark.parametrize(
    "data",
    [
        P2 + b"}" + hostile._str("step") + _long4(10**5000) + b"s.",  # LONG4
        P2 + b"}" + _long4(10**5000) + b"K\x01s.",  # as a dict key
        b"(dS'step'\nL" + b"1" * 5001 + b"L\ns.",  # protocol 0 LONG text
        b"(dS'step'\nI" + b"1" * 5001 + b"\ns.",  # protocol 0 INT text
    ],
    ids=["long4-value", "long4-key", "long-text", "int-text"],
)
def test_huge_integers_are_a_verdict(tmp_path, data):
    _verdict(data, tmp_path, r"exceeds integer bits budget \(4096\)")


def test_integers_up_to_the_budget_read():
    value = 10**1200  # ~3987 bits
    obj, _ = safe_loads(pickle.dumps({"step": value, "neg": -value}, 2))
    assert obj == {"step": value, "neg": -value}


def test_hash_flooding_keys_are_a_verdict(tmp_path):
    """Ints equal modulo 2**61-1 share one hash: every insert would probe all the others."""
    modulus = 2**61 - 1
    items = b"".join(_long1(k * modulus + 5) + b"N" for k in range(1, 200))
    _verdict(P2 + b"}(" + items + b"u.", tmp_path, r"exceeds hash collisions budget \(64\)")


def test_a_few_colliding_keys_are_fine():
    modulus = 2**61 - 1
    value = {k * modulus + 5: k for k in range(1, 40)} | {(1, 2): 3, 1.5: 2, -1: 0, -2: 1}
    obj, _ = safe_loads(pickle.dumps(value, 2))
    assert obj == value


def test_mark_flood_is_bounded_while_loading(tmp_path):
    _verdict(P2 + b"(" * 100_000, tmp_path, r"exceeds nesting depth budget \(200\)")


def _peak(data: bytes, budget: Budget) -> tuple[int, str]:
    tracemalloc.start()
    try:
        try:
            safe_loads(data, budget)
            message = ""
        except UnreadableCheckpoint as exc:
            message = exc.reason
        return tracemalloc.get_traced_memory()[1], message
    finally:
        tracemalloc.stop()


BIG = 1_000_000  # a 1 MB string, named many times through the memo


FLOODS = {
    # name: (pickle, budget name it must hit)
    "empty-sets": (b"\x80\x04" + b"\x8f" * 400_000 + b".", "objects"),
    "empty-dicts-kept": (P2 + b"]" + b"}a" * 200_000 + b".", "objects"),
    "lists-kept": (P2 + b"]" + b"]a" * 200_000 + b".", "objects"),
    "memoize": (b"\x80\x04N" + b"\x94" * 400_000 + b".", "memo"),
    "long-binput": (P2 + b"N" + b"".join(b"r" + i.to_bytes(4, "little") for i in range(100_000)) + b".", "memo"),
    "tuples": (P2 + b"]" + b"N\x85a" * 150_000 + b".", "objects"),
    "shared-string-list": (
        P2 + b"]" + hostile._str("x" * BIG) + _memo_put(1) + b"a" + (_memo_get(1) + b"a") * 200 + b".",
        "text bytes",
    ),
}


@pytest.mark.parametrize("name", sorted(FLOODS))
def test_floods_stay_within_the_memory_budget(name, monkeypatch, tmp_path):
    """Peak memory (tracemalloc) stays under ``Budget.max_memory``: the budget is what bounds it."""
    data, limit = FLOODS[name]
    budget = Budget.for_input(len(data), scale=0.02)
    peak, message = _peak(data, budget)
    assert f"exceeds {limit} budget" in message
    assert peak <= budget.max_memory
    monkeypatch.setenv("CKPTCTL_READ_LIMIT_SCALE", "0.02")  # the documented knob, through a real file
    with pytest.raises(UnreadableCheckpoint, match=f"exceeds {limit} budget"):
        read_checkpoint(hostile.torch_zip(tmp_path / f"{name}.pt", data))


def test_raising_the_scale_lets_a_big_legitimate_pickle_through(monkeypatch):
    data = pickle.dumps({"ids": [[i] for i in range(30_000)]}, 2)
    monkeypatch.setenv("CKPTCTL_READ_LIMIT_SCALE", "0.005")
    with pytest.raises(UnreadableCheckpoint, match="exceeds (objects|memo) budget"):
        safe_loads(data)
    monkeypatch.setenv("CKPTCTL_READ_LIMIT_SCALE", "1")
    assert len(safe_loads(data)[0]["ids"]) == 30_000


def _storage_pid(key: str, numel: int, location: bytes) -> bytes:
    return b"(" + hostile._str("storage") + hostile._global("torch", "FloatStorage") + hostile._str(key) + location + _long1(numel) + b"tQ"


def test_storage_location_must_be_a_short_string(tmp_path):
    """Old: ``str(location)`` of a list naming one 1 MB string 200 times built 200 MB per storage."""
    location = b"]" + hostile._str("x" * BIG) + _memo_put(1) + b"a" + (_memo_get(1) + b"a") * 200
    data = P2 + b"}" + hostile._str("model") + _storage_pid("0", 1, location) + b"s."
    with pytest.raises(UnreadableCheckpoint, match="malformed storage reference"):
        read_checkpoint(hostile.torch_zip(tmp_path / "location.pt", data, records={"0": b"\x00" * 4}))
    tracemalloc.start()
    try:
        with pytest.raises(UnreadableCheckpoint, match="malformed storage reference"):
            safe_loads(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(data)


def test_error_messages_never_stringify_a_whole_object():
    """get_layout's error message used repr() of its argument: here 200 references to 1 MB."""
    arg = b"]" + hostile._str("x" * BIG) + _memo_put(1) + b"a" + (_memo_get(1) + b"a") * 200
    data = hostile._wrap(hostile._call(hostile._global("torch.serialization", "_get_layout"), arg))
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeCheckpoint) as info:
            safe_loads(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(info.value.reason) < 300 and "unknown layout" in info.value.reason
    assert peak < 20 * len(data)


def test_paths_joined_from_one_string_are_charged_as_text():
    arg = hostile._str("x" * 100_000) + _memo_put(1) + _memo_get(1) * 400
    data = hostile._wrap(hostile._global("pathlib", "PosixPath") + b"(" + arg + b"tR")
    budget = Budget.for_input(len(data), scale=0.2)
    with pytest.raises(UnreadableCheckpoint, match="exceeds text bytes budget"):
        safe_loads(data, budget)


def test_a_state_dict_uses_a_small_part_of_the_size_proportional_budget():
    """Legitimate sizing: a torch state dict needs under half of what S alone allows (no floor)."""
    import torch

    buffer = io.BytesIO()
    torch.save({f"layers.{i}.weight": torch.zeros(2, 2) for i in range(3000)}, buffer)
    import zipfile

    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    unpickler = SafeUnpickler(io.BytesIO(data))
    unpickler.load()
    size = len(data)
    budget = unpickler.budget
    assert budget.objects - unpickler._objects_left <= (size // 4) // 2
    assert len(unpickler.memo) <= (size // 4) // 2
    assert budget.work - unpickler._work_left == 0


# --- placeholders cannot change after they are checked ---

def _tensor(numel_storage: int, shape: bytes, key: str = "0") -> bytes:
    """torch._utils._rebuild_tensor_v2(<storage key>, 0, <shape>, (1,)*, False, None); storage memoised as 2."""
    storage = _storage_pid(key, numel_storage, hostile._str("cpu")) + _memo_put(2)
    stride = b"K\x01" * (shape.count(b"\x85") or 1)
    args = storage + b"K\x00" + shape + b"(" + stride + b"t\x89N"
    return hostile._global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


HUGE = 10**12  # elements: 4 TB of float32 that the file's 4-byte record does not hold


MUTATIONS = {
    # the storage claims 10**12 elements while the tensor is checked, then BUILD shrinks it to the record's 1
    "storage-shrunk": P2 + b"}" + hostile._str("model") + _tensor(HUGE, _long1(HUGE) + b"\x85") + b"s"
    + hostile._str("x") + _memo_get(2) + b"(" + hostile._str("0") + hostile._str("float32") + b"K\x01"
    + hostile._str("cpu") + b"tbs.",
    # a 1-element tensor grown to 10**12 elements by BUILD's dict state (old: written into __dict__)
    "tensor-dict-state": P2 + b"}" + hostile._str("model") + _tensor(1, b"K\x01\x85")
    + b"}" + hostile._str("shape") + _long1(HUGE) + b"\x85sbs.",
    # the same through BUILD's (None, slot state) form (old: setattr)
    "tensor-slot-state": P2 + b"}" + hostile._str("model") + _tensor(1, b"K\x01\x85")
    + b"N}" + hostile._str("shape") + _long1(HUGE) + b"\x85s\x86bs.",
    # a tensor's class swapped through the slot-state form
    "tensor-class": P2 + b"}" + hostile._str("model") + _tensor(1, b"K\x01\x85")
    + b"N}" + hostile._str("__class__") + hostile._global("numpy", "ndarray") + b"s\x86bs.",
    # a dtype placeholder renamed
    "dtype": P2 + b"}" + hostile._str("d") + hostile._global("torch", "float32")
    + b"}" + hostile._str("name") + hostile._str("int8") + b"sbs.",
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_build_cannot_mutate_a_placeholder(name, tmp_path):
    data = MUTATIONS[name]
    with pytest.raises(UnreadableCheckpoint, match="read-only|cannot be built"):
        safe_loads(data)
    path = hostile.torch_zip(tmp_path / f"{name}.pt", data, records={"0": b"\x00" * 4})
    with pytest.raises(UnreadableCheckpoint, match="read-only|cannot be built"):
        read_checkpoint(path)


def test_a_numpy_array_is_built_once():
    np = pytest.importorskip("numpy")
    data = pickle.dumps({"a": np.arange(3, dtype=np.uint8)}, 2)
    assert safe_loads(data)[0]["a"].shape == (3,)
    state = b"(K\x01K\x09\x85" + hostile._str("u1") + b"\x89" + b"C\x09" + b"\x00" * 9 + b"tb"
    rebuilt = data[:-2] + state + data[-2:]  # a second BUILD on the array, just before SETITEM/STOP
    with pytest.raises(UnreadableCheckpoint, match="read-only"):
        safe_loads(rebuilt)


def test_rebuild_parameter_builds_a_new_placeholder():
    """Old: _rebuild_parameter set is_parameter on the tensor itself, changing every other use of it."""
    tensor = _tensor(4, b"K\x04\x85") + _memo_put(3)
    param = hostile._global("torch._utils", "_rebuild_parameter") + b"(" + _memo_get(3) + b"\x88N" + b"tR"
    data = P2 + b"}(" + hostile._str("plain") + tensor + hostile._str("param") + param + b"u."
    obj, _ = safe_loads(data)
    assert obj["param"].is_parameter and obj["param"].requires_grad
    assert not obj["plain"].is_parameter and not obj["plain"].requires_grad
    assert obj["param"].storage is obj["plain"].storage


def test_placeholders_refuse_attribute_writes():
    import dataclasses

    obj, storages = safe_loads(hostile.float_tensor_pickle(storage_numel=4, tensor_numel=4))
    tensor = obj["model"]
    for target, field in ((tensor, "shape"), (tensor.storage, "numel")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(target, field, 1)
        assert not hasattr(target, "__dict__")


def test_bounds_are_checked_on_the_final_tensors():
    """A tensor past its storage is refused when the load ends, whatever the pickle did after."""
    data = P2 + b"}" + hostile._str("model") + _tensor(2, b"K\x10\x85") + b"s."
    with pytest.raises(UnreadableCheckpoint, match="past its storage"):
        safe_loads(data)


def test_element_counts_beyond_int64_are_refused():
    shape = b"(" + _long1(2**40) * 3 + b"t"  # stride 0 would fit one element: 2**120 elements
    args = _storage_pid("0", 1, hostile._str("cpu")) + b"K\x00" + shape + b"(K\x00K\x00K\x00t\x89N"
    data = hostile._wrap(hostile._global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR")
    with pytest.raises(UnreadableCheckpoint, match="more than 2\\*\\*63 elements"):
        safe_loads(data)
    big_dim = hostile._wrap(hostile._global("torch._utils", "_rebuild_tensor_v2") + b"(" + _storage_pid("0", 1, hostile._str("cpu"))
                            + b"K\x00(" + _long1(10**30) + b"t(K\x00t\x89NtR")  # fmt: skip
    with pytest.raises(UnreadableCheckpoint, match="malformed tensor shape"):
        safe_loads(big_dim)


@pytest.mark.parametrize(
    "data",
    [P2 + b"](" + b"N" * 5000 + b"e.", P2 + b"}(" + b"".join(b"J" + i.to_bytes(4, "little") + b"N" for i in range(3000)) + b"u.",
     b"\x80\x04\x8f(" + b"".join(b"J" + i.to_bytes(4, "little") for i in range(3000)) + b"\x90.",
     P2 + b"(" + b"N" * 5000 + b"t."],
    ids=["list", "dict", "set", "tuple"],
)  # fmt: skip
def test_one_container_is_bounded_while_loading(data):
    budget = Budget.for_input(len(data), scale=0.0001)  # 1677 items
    with pytest.raises(UnreadableCheckpoint, match=r"exceeds container items budget \(1677\)"):
        safe_loads(data, budget)
    assert len(safe_loads(data)[0]) >= 3000  # and within the default budget they read


def _reduce(module: str, name: str, arg: bytes) -> bytes:
    return hostile._global(module, name) + b"(" + arg + b"tR"


@pytest.mark.parametrize(
    "data, match",
    [
        (P2 + _reduce("builtins", "set", b"]" + deep_tuple_key()[3:-3] + b"a") + b".", r"nesting depth budget \(200\)"),
        (P2 + _reduce("builtins", "frozenset", b"]" + shared_tuple_key()[3:-3] + b"a") + b".", r"work budget"),
        (P2 + _reduce("collections", "OrderedDict", b"](" + shared_tuple_key()[3:-3] + b"K\x01ta") + b".", r"work budget"),
    ],
    ids=["set-deep", "frozenset-shared", "ordereddict-pairs-shared"],
)
def test_allowlisted_constructors_measure_their_items_before_hashing(data, match, tmp_path):
    _verdict(data, tmp_path, match)


def test_python2_ordered_dict_pairs_still_read():
    data = P2 + _reduce("collections", "OrderedDict", b"]((" + hostile._str("a") + b"K\x01t(" + hostile._str("b") + b"K\x02te") + b"."
    import collections

    assert safe_loads(data)[0] == collections.OrderedDict(a=1, b=2)


def test_ordered_dict_items_through_protocol_1_obj_are_measured(tmp_path):
    pairs = b"(" + shared_tuple_key()[3:-3] + b"K\x01t"  # a (shared-tuple, 1) pair
    data = P2 + b"(" + hostile._global("collections", "OrderedDict") + b"]" + pairs + b"a" + b"o."
    _verdict(data, tmp_path, r"work budget")


def test_text_of_the_expanded_tree_counts_big_integers():
    """One 4000-bit int named 60 000 times is 72 MB of decimal text to JSON output or a tensor name."""
    data = P2 + b"]" + _long4(2**4000) + _memo_put(1) + b"a" + (_memo_get(1) + b"a") * 60_000 + b"."
    with pytest.raises(UnreadableCheckpoint, match="exceeds text bytes budget"):
        safe_loads(data)
    assert len(safe_loads(data[: -(60_000 - 1000) * 3 - 1] + b".")[0]) == 1001
