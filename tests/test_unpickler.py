"""The restricted unpickler: hostile pickles are refused by name and never run; allowed data is inert."""

from __future__ import annotations

import io
import pickle
import time

import pytest

from ckptctl.errors import UnreadableCheckpoint, UnsafeCheckpoint
from ckptctl.unpickler import ALLOWED, MAX_DEPTH, Namespace, NumpyArray, StorageRef, TensorRef, safe_loads
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
    from ckptctl.reader import read_checkpoint

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
    obj, storages = safe_loads(bomb)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert obj == 1 and storages == {}
    assert after - before < 64 * 1024  # KiB: far below the GiBs the C unpickler would take
