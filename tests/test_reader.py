"""read_checkpoint on real torch.save files (zip, legacy, CRC off) and on damaged files."""

from __future__ import annotations

import json
import os
import random

import pytest

from ckptctl.errors import UnreadableCheckpoint, UnsafeCheckpoint
from ckptctl.layouts.metadata import summarize
from ckptctl.formats.reader import read_checkpoint
from ckptctl.formats.values import jsonable
from tests import hostile
from tests.factories import make_state, write_checkpoint


def _torch_inventory(path):
    """(name, dtype, shape) of every tensor, as torch itself loads them, in the reader's naming."""
    import torch

    from ckptctl.formats.reader import iter_tensors

    loaded = torch.load(path, map_location="cpu", weights_only=False)
    return [(n, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in iter_tensors(loaded, torch.is_tensor)]


def _our_inventory(ckpt):
    return [(n, t.dtype, t.shape) for n, t in ckpt.tensors()]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The seed's full dict in every format worth reading, written once for the module."""
    import torch

    d = tmp_path_factory.mktemp("reader")
    state = make_state(step=1234, epoch=7, namespace_args=True)
    out = {"zip": write_checkpoint(d / "zip.pt", state)}
    torch.save(state, d / "legacy.pt", _use_new_zipfile_serialization=False)
    out["legacy"] = d / "legacy.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, d / "nocrc.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    out["nocrc"] = d / "nocrc.pt"
    return out


@pytest.mark.parametrize("fmt", ["zip", "legacy", "nocrc"])
def test_tensor_inventory_matches_torch(files, fmt):
    ckpt = read_checkpoint(files[fmt])
    assert ckpt.format == ("legacy" if fmt == "legacy" else "zip")
    assert _our_inventory(ckpt) == _torch_inventory(files[fmt])
    assert ckpt.size_bytes == os.path.getsize(files[fmt])


@pytest.mark.parametrize("fmt", ["zip", "legacy", "nocrc"])
def test_spans_locate_the_storage_bytes(files, fmt):
    """A span's bytes are exactly the storage torch loads (little-endian, as written here)."""
    import torch

    ckpt = read_checkpoint(files[fmt])
    loaded = torch.load(files[fmt], map_location="cpu", weights_only=False)
    weight = loaded["model"]["0.weight"]
    ref = ckpt.root["model"]["0.weight"]
    span = ckpt.spans[ref.storage.key]
    with open(files[fmt], "rb") as fh:
        fh.seek(span.offset)
        raw = fh.read(span.size)
    assert weight.untyped_storage().nbytes() == span.size
    assert raw == weight.detach().numpy().tobytes()
    assert (span.crc32 is None) == (fmt == "legacy")


@pytest.mark.parametrize("fmt", ["zip", "nocrc"])
def test_fast_path_reads_the_same_graph_without_spans(files, fmt):
    full = read_checkpoint(files[fmt])
    fast = read_checkpoint(files[fmt], spans=False)
    assert _our_inventory(fast) == _our_inventory(full)
    assert fast.root["step"] == full.root["step"] and fast.storages == full.storages
    assert fast.spans == {} and not fast.spans_read and full.spans_read
    assert not fast.container.local_headers
    assert fast.container.pickle_record == full.container.pickle_record
    storage = fast.container.storage_record("0")
    assert storage.data_offset == -1 and storage.size == full.container.storage_record("0").size


def test_fast_path_still_cross_checks_sizes_and_finds_truncation(tmp_path, files):
    data = files["zip"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) - 30])
    with pytest.raises(UnreadableCheckpoint):
        read_checkpoint(tmp_path / "cut.pt", spans=False)
    pkl = hostile.float_tensor_pickle(storage_numel=4, tensor_numel=4)
    with pytest.raises(UnreadableCheckpoint, match="holds 12 bytes"):
        read_checkpoint(hostile.torch_zip(tmp_path / "short.pt", pkl, {"0": b"\x00" * 12}), spans=False)


def test_fast_path_checks_the_pickle_header_but_not_storage_headers(tmp_path, files):
    """A renamed storage local header is validate's business; a renamed data.pkl header is not listed as ok."""
    import zipfile

    raw = bytearray(files["zip"].read_bytes())
    with zipfile.ZipFile(files["zip"]) as zf:
        infos = {i.filename.split("/", 1)[1]: i for i in zf.infolist()}
    for key, name in (("data/0", "storage.pt"), ("data.pkl", "pickle.pt")):
        copy = bytearray(raw)
        copy[infos[key].header_offset + 30] ^= 0x01  # first byte of the local file name
        (tmp_path / name).write_bytes(bytes(copy))
    assert read_checkpoint(tmp_path / "storage.pt", spans=False).root["step"] == 1234
    with pytest.raises(UnsafeCheckpoint, match="names differ"):
        read_checkpoint(tmp_path / "storage.pt")
    with pytest.raises(UnsafeCheckpoint, match="names differ"):
        read_checkpoint(tmp_path / "pickle.pt", spans=False)


def test_crc_off_and_legacy_are_noted(files):
    assert read_checkpoint(files["zip"]).container.has_checksums
    assert not read_checkpoint(files["nocrc"]).container.has_checksums
    assert read_checkpoint(files["legacy"]).container is None
    assert any("no checksums" in n for n in read_checkpoint(files["legacy"]).notes)


def test_plain_data_matches_torch(files):
    import torch

    ckpt = read_checkpoint(files["zip"])
    loaded = torch.load(files["zip"], weights_only=False)
    for key in ("step", "epoch", "train_loss", "val_loss", "timestamp", "checkpoint_type", "dataloader_state"):
        assert ckpt.root[key] == loaded[key]
    assert ckpt.root["args"].attrs == vars(loaded["args"])
    assert ckpt.root["rng_state"]["python"] == loaded["rng_state"]["python"]
    assert ckpt.root["optimizer"]["param_groups"] == loaded["optimizer"]["param_groups"]


def test_many_dtypes_tied_weights_and_views(tmp_path):
    import torch

    shared = torch.randn(6, 4)
    state = {
        "a": shared, "b": shared, "view": shared[2:4], "t": shared.t(),
        "f16": torch.ones(3, dtype=torch.float16), "bf16": torch.ones(5, dtype=torch.bfloat16),
        "i8": torch.ones(7, dtype=torch.int8), "bool": torch.ones(2, dtype=torch.bool),
        "f64": torch.ones(2, dtype=torch.float64), "c64": torch.ones(2, dtype=torch.complex64),
        "param": torch.nn.Parameter(torch.randn(3)), "empty": torch.empty(0, 3), "scalar": torch.tensor(2.0),
    }  # fmt: skip
    for name, kwargs in (("new.pt", {}), ("old.pt", {"_use_new_zipfile_serialization": False})):
        torch.save(state, tmp_path / name, **kwargs)
        ckpt = read_checkpoint(tmp_path / name)
        assert _our_inventory(ckpt) == _torch_inventory(tmp_path / name)
        root = ckpt.root
        assert root["a"].storage is root["b"].storage is root["view"].storage is root["t"].storage
        assert root["view"].offset == 8 and root["t"].stride == (1, 4)
        assert root["param"].is_parameter and not root["a"].is_parameter
        assert root["scalar"].shape == () and root["scalar"].numel == 1
        distinct = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.values()}
        assert sum(s.nbytes for s in ckpt.storages.values()) == sum(distinct.values())  # each storage once


def test_non_dict_roots_are_read(tmp_path):
    import torch

    torch.save([torch.ones(2), {"x": 1}], tmp_path / "list.pt")
    ckpt = read_checkpoint(tmp_path / "list.pt")
    assert [n for n, _ in ckpt.tensors()] == ["0"]


# --- damaged files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("damaged") / "good.pt", make_state(hidden=64))


@pytest.mark.parametrize("cut", [1, 4, 30, 100, 1000, -2000, -100, -22, -1])
def test_truncated_at_several_offsets(tmp_path, good, cut):
    data = good.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:cut] if cut > 0 else data[: len(data) + cut])
    with pytest.raises(UnreadableCheckpoint):
        read_checkpoint(path)


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.95])
def test_truncated_legacy(tmp_path, cut):
    import torch

    path = tmp_path / "old.pt"
    torch.save(make_state(hidden=64), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(UnreadableCheckpoint):
        read_checkpoint(path)


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(UnreadableCheckpoint, match="empty file"):
        read_checkpoint(tmp_path / "e.pt")


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "r.pt"
    path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000))))
    with pytest.raises(UnreadableCheckpoint):
        read_checkpoint(path)


def test_random_bytes_after_zip_magic(tmp_path):
    path = tmp_path / "r.pt"
    path.write_bytes(b"PK\x03\x04" + random.Random(1).randbytes(4000))
    with pytest.raises(UnreadableCheckpoint, match="not a zip|truncated"):
        read_checkpoint(path)


@pytest.mark.parametrize("offset", [2, 10, 40, 120, 400])
def test_flipped_byte_in_data_pkl(tmp_path, good, offset):
    """A flipped byte is either caught (unreadable/unsafe) or reads without executing anything."""
    path = tmp_path / "flip.pt"
    path.write_bytes(good.read_bytes())
    hostile.flip_byte_in_pickle(path, offset)
    try:
        ckpt = read_checkpoint(path)
    except (UnreadableCheckpoint, UnsafeCheckpoint) as exc:
        assert exc.reason
    else:  # a flip inside a string value can leave a valid pickle: still inert data
        assert isinstance(ckpt.root, dict)


def test_flipped_opcode_is_caught(tmp_path, good):
    path = tmp_path / "flip.pt"
    path.write_bytes(good.read_bytes())
    hostile.flip_byte_in_pickle(path, 0)  # the PROTO opcode
    with pytest.raises(UnreadableCheckpoint, match="corrupt pickle"):
        read_checkpoint(path)


def test_missing_data_pkl_and_two_prefixes(tmp_path, good):
    with pytest.raises(UnreadableCheckpoint, match="data.pkl"):
        read_checkpoint(hostile.drop_data_pkl(good, tmp_path / "a.pt"))
    with pytest.raises(UnsafeCheckpoint, match=r"ambiguous archive \(records do not share one top-level folder"):
        read_checkpoint(hostile.two_prefixes(good, tmp_path / "b.pt"))


def test_storage_size_cross_checked_against_records(tmp_path):
    """The pickle's storage of 4 floats (16 bytes) against a record of 12 bytes, then none at all."""
    pkl = hostile.float_tensor_pickle(storage_numel=4, tensor_numel=4)
    with pytest.raises(UnreadableCheckpoint, match="holds 12 bytes, the pickle expects 16"):
        read_checkpoint(hostile.torch_zip(tmp_path / "short.pt", pkl, {"0": b"\x00" * 12}))
    with pytest.raises(UnreadableCheckpoint, match="missing record data/0"):
        read_checkpoint(hostile.torch_zip(tmp_path / "none.pt", pkl))


def test_directory_and_missing_paths(tmp_path):
    with pytest.raises(UnreadableCheckpoint, match="is a directory"):
        read_checkpoint(tmp_path)
    with pytest.raises(UnreadableCheckpoint, match="cannot open"):
        read_checkpoint(tmp_path / "absent.pt")


def test_text_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(UnreadableCheckpoint, match="unknown file format"):
        read_checkpoint(tmp_path / "notes.pt")


def test_plain_pickle_is_not_a_legacy_checkpoint(tmp_path):
    import pickle

    (tmp_path / "p.pt").write_bytes(pickle.dumps({"step": 1}, 2))
    with pytest.raises(UnreadableCheckpoint, match="magic"):
        read_checkpoint(tmp_path / "p.pt")


# --- hostile files -------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", hostile.PAYLOADS, ids=lambda p: p.name)
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_hostile_file_refused_without_running(tmp_path, payload, container):
    marker = tmp_path / "pwned"
    data = payload.build(marker)
    path = hostile.write_hostile(tmp_path / "h.pt", data, container)
    with pytest.raises(UnsafeCheckpoint) as info:
        read_checkpoint(path)
    assert payload.reported in info.value.globals
    assert not marker.exists()


def test_hostile_legacy_magic_position(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeCheckpoint, match="os.system"):
        read_checkpoint(hostile.legacy_hostile_magic(tmp_path / "h.pt", marker))
    assert not marker.exists()


def test_ambiguous_container_is_unsafe(tmp_path):
    import zipfile

    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(UnsafeCheckpoint, match=r"ambiguous archive \(record 'archive/data.pkl' is compressed"):
        read_checkpoint(path)


# --- bounded fuzz: any damage is a verdict, never a crash ----------------------------------------


def _mutations(data: bytes, rng: random.Random, count: int):
    """Flipped bytes, truncations and spliced garbage, biased to the pickle and the zip directory."""
    import zipfile
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        pkl = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
        hot = [(pkl.header_offset, pkl.header_offset + 100 + pkl.compress_size), (zf.start_dir, len(data))]
    for _ in range(count):
        raw = bytearray(data)
        start, end = rng.choice(hot)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(start, min(end, len(raw)))
            raw[at] = rng.randrange(256)
        if rng.random() < 0.2:
            raw = raw[: rng.randrange(1, len(raw))]
        yield bytes(raw)


@pytest.mark.parametrize("spans", [True, False])
def test_random_damage_gives_a_verdict_never_another_exception(tmp_path, good, spans):
    rng = random.Random(1234 + spans)
    path = tmp_path / "fuzz.pt"
    verdicts = set()
    for data in _mutations(good.read_bytes(), rng, 100):
        path.write_bytes(data)
        try:
            ckpt = read_checkpoint(path, spans=spans)
            verdicts.add("ok")
            meta = summarize(ckpt)  # and what list/inspect make of a damaged-but-readable graph
            json.dumps(jsonable([meta.args, meta.dataloader_state, meta.step, meta.val_loss, meta.timestamp]))
            assert meta.all_tensors.tensor_count >= 0 and (meta.optimizer is None or meta.optimizer.state_entries >= 0)
        except (UnreadableCheckpoint, UnsafeCheckpoint) as exc:
            assert exc.reason
            verdicts.add(exc.status)
    assert "unreadable" in verdicts  # the fuzz does reach the error paths


def test_legacy_length_fields_cannot_demand_huge_reads(tmp_path):
    """A damaged length in a legacy stream is read as 'truncated', never allocated (an exabyte here)."""
    import struct

    pickle_with_huge_bytes = b"\x80\x04\x8d" + struct.pack("<Q", 2**60) + b"abc"  # BINUNICODE8
    path = hostile.legacy_file(tmp_path / "old.pt", pickle_with_huge_bytes)
    with pytest.raises(UnreadableCheckpoint, match="corrupt pickle"):
        read_checkpoint(path)


# --- scanner parity: pickles that are not torch checkpoints still get their globals named ----------


@pytest.mark.parametrize("case", hostile.NOT_CHECKPOINTS, ids=lambda c: c.name)
@pytest.mark.parametrize("spans", [True, False])
def test_a_hostile_file_that_is_no_checkpoint_is_named_unsafe(tmp_path, case, spans):
    marker = tmp_path / "pwned"
    path = case.build(tmp_path / "f.pt", marker)
    with pytest.raises(UnsafeCheckpoint) as info:
        read_checkpoint(path, spans=spans)
    assert info.value.globals == [case.reported] and info.value.reason == f"references {case.reported}"
    assert not marker.exists()


@pytest.mark.parametrize("proto", range(6))
def test_a_benign_pickle_that_is_no_checkpoint_keeps_its_verdict(tmp_path, proto):
    import collections
    import pickle

    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": collections.OrderedDict(b=[1, 2.5, "c"])}, protocol=proto))
    with pytest.raises(UnreadableCheckpoint, match="not a checkpoint"):
        read_checkpoint(path)


def test_a_benign_object_npy_keeps_its_verdict(tmp_path):
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.array([1, "two", None], dtype=object), allow_pickle=True)
    (tmp_path / "a.npy").write_bytes(buffer.getvalue())
    with pytest.raises(UnreadableCheckpoint, match="unknown file format"):
        read_checkpoint(tmp_path / "a.npy")


# --- the small records torch.load reads: a file listed as ok is one torch opens --------------------


@pytest.mark.parametrize(
    "records, reason",
    [
        ({"byteorder": b"FB\x02\x00"}, "byteorder: neither"),
        ({"version": b"FB"}, "not a format version"),
        ({"version": b"0\n"}, "not a format version"),
        ({".storage_alignment": b"sixty"}, "storage_alignment: not an integer"),
    ],
    ids=["byteorder", "version", "version-0", "alignment"],
)
@pytest.mark.parametrize("spans", [True, False])
def test_small_records_torch_refuses_are_unreadable(tmp_path, records, reason, spans):
    import torch

    entries = {e.name.split(b"/", 1)[1].decode(): e.data for e in hostile.torch_records(hostile.plain_pickle({"step": 1}))}
    entries.update(records)
    path = hostile.raw_zip(tmp_path / "r.pt", [hostile.RawEntry(b"archive/" + k.encode(), v) for k, v in entries.items()])
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    with pytest.raises(UnreadableCheckpoint, match=reason):
        read_checkpoint(path, spans=spans)


def test_missing_version_record_is_unreadable(tmp_path):
    path = hostile.raw_zip(tmp_path / "v.pt", hostile.torch_records(hostile.plain_pickle({"step": 1}))[:2])
    with pytest.raises(UnreadableCheckpoint, match="missing archive/version"):
        read_checkpoint(path)
