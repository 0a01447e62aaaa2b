"""The torch zip container read through its central directory, cross-checked against zipfile and torch."""

from __future__ import annotations

import pickle
import struct
import zipfile
import zlib

import pytest

from ckptctl.formats.container import Container, open_container, read_record, sniff_format
from ckptctl.errors import UnreadableCheckpoint, UnsafeCheckpoint
from tests import hostile
from tests.factories import write_checkpoint


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("container") / "latest.pt")


def _open(path) -> Container:
    with open(path, "rb") as fh:
        return open_container(path, fh)


def test_records_match_zipfile_and_their_crc(real):
    container = _open(real)
    with zipfile.ZipFile(real) as zf, open(real, "rb") as fh:
        names = {i.filename for i in zf.infolist()}
        assert {r.name for r in container.records.values()} == names
        for record in container.records.values():
            data = read_record(fh, record)
            assert data == zf.read(record.name)
            assert zlib.crc32(data) == record.crc32
    assert container.prefix == "latest"
    assert "data.pkl" in container.records and container.pickle_record.key == "data.pkl"
    assert container.storage_record("0") is not None
    assert container.has_checksums


def test_storage_records_are_64_byte_aligned_as_torch_writes_them(real):
    container = _open(real)
    storages = [r for k, r in container.records.items() if k.startswith("data/")]
    assert storages and all(r.data_offset % 64 == 0 for r in storages)


def test_sniff_format(tmp_path, real):
    legacy = tmp_path / "legacy.pt"
    import torch

    torch.save({"x": 1}, legacy, _use_new_zipfile_serialization=False)
    (tmp_path / "text").write_text("hello")
    with open(real, "rb") as a, open(legacy, "rb") as b, open(tmp_path / "text", "rb") as c:
        assert (sniff_format(a), sniff_format(b), sniff_format(c)) == ("zip", "legacy", "unknown")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_container_is_unreadable(tmp_path, real, fraction):
    data = real.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(UnreadableCheckpoint, match="truncated|not a zip"):
        _open(cut)


def test_missing_data_pkl(tmp_path, real):
    with pytest.raises(UnreadableCheckpoint, match="missing .*data.pkl"):
        _open(hostile.drop_data_pkl(real, tmp_path / "nopkl.pt"))


def test_records_of_two_top_level_folders(tmp_path, real):
    with pytest.raises(UnsafeCheckpoint, match=r"ambiguous archive \(.*one top-level folder"):
        _open(hostile.two_prefixes(real, tmp_path / "two.pt"))


def test_empty_zip(tmp_path):
    path = tmp_path / "empty.pt"
    zipfile.ZipFile(path, "w").close()
    with pytest.raises(UnreadableCheckpoint, match="no records"):
        _open(path)


def test_compressed_record_is_ambiguous(tmp_path):
    path = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(UnsafeCheckpoint, match=r"ambiguous archive \(.*compressed"):
        _open(path)


def test_duplicate_entry_names_are_ambiguous(tmp_path):
    path = tmp_path / "dup.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with pytest.warns(UserWarning):
            zf.writestr("archive/data.pkl", b"\x80\x02]q\x00.")
    with pytest.raises(UnsafeCheckpoint, match=r"ambiguous archive \(duplicate entry name"):
        _open(path)


def test_local_and_central_names_differ_is_ambiguous(tmp_path, real):
    raw = bytearray(real.read_bytes())
    first_name_at = 30  # the first local header's name starts right after its fixed 30 bytes
    raw[first_name_at] = ord("X")
    path = tmp_path / "renamed.pt"
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsafeCheckpoint, match="local and central names differ"):
        _open(path)


def test_crc_switched_off_is_detected(tmp_path):
    import torch

    path = tmp_path / "nocrc.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": torch.ones(10)}, path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert not _open(path).has_checksums


def test_read_record_refuses_oversized_records(real):
    container = _open(real)
    with open(real, "rb") as fh, pytest.raises(UnreadableCheckpoint, match="too large"):
        read_record(fh, container.pickle_record, limit=1)


# --- the differential: archives torch's reader (miniz) and zipfile take differently -------------


def _step_pickle(step: int) -> bytes:
    return hostile.plain_pickle({"step": step})


def _torch_sees(path):
    import torch

    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("order", ["lower first", "upper first"])
def test_names_equal_up_to_case_are_refused(tmp_path, order):
    """torch finds data.pkl case-insensitively (a binary search over a case-folded sort), so with
    ``DATA.PKL`` beside ``data.pkl`` it may load either; ckptctl used to judge ``data.pkl`` only."""
    seen = hostile.RawEntry(b"archive/data.pkl", _step_pickle(1))
    other = hostile.RawEntry(b"archive/DATA.PKL", _step_pickle(2))
    pair = [seen, other] if order == "lower first" else [other, seen]
    path = hostile.raw_zip(tmp_path / "case.pt", pair + hostile.torch_records(b"")[1:])
    with pytest.raises(UnsafeCheckpoint, match=r"ambiguous archive \(names equal up to case"):
        _open(path)
    if order == "upper first":  # the differential itself: zipfile's data.pkl is step 1, torch loads step 2
        with zipfile.ZipFile(path) as zf:
            assert pickle.loads(zf.read("archive/data.pkl")) == {"step": 1}
        assert _torch_sees(path) == {"step": 2}


def test_central_name_with_nul_is_refused(tmp_path):
    """zipfile cuts a central name at NUL, so ``data.pkl\\0`` is its data.pkl; torch compares all the
    bytes and loads ``Data.pkl`` instead."""
    nul = hostile.RawEntry(b"archive/data.pkl\0", _step_pickle(1), local_name=b"archive/data.pkl")
    other = hostile.RawEntry(b"archive/Data.pkl", _step_pickle(2))
    path = hostile.raw_zip(tmp_path / "nul.pt", [nul, other, *hostile.torch_records(b"")[1:]])
    with zipfile.ZipFile(path) as zf:
        assert zf.infolist()[0].filename == "archive/data.pkl"  # what ckptctl used to read
    assert _torch_sees(path) == {"step": 2}
    with pytest.raises(UnsafeCheckpoint, match=r"ambiguous archive \(control character in record name 'archive/data.pkl\\x00'"):
        _open(path)


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) >= 1
    return data.replace(old, new, 1)


def _benign(tmp_path, name="ok.pt", entries=None):
    return hostile.raw_zip(tmp_path / name, entries or hostile.torch_records(_step_pickle(1)))


def test_the_hand_built_archive_is_read_by_both(tmp_path):
    path = _benign(tmp_path)
    assert _open(path).pickle_record.size == len(_step_pickle(1))
    assert _torch_sees(path) == {"step": 1}


@pytest.mark.parametrize(
    "entries, reason",
    [
        ([hostile.RawEntry(b"archive/data.pkl", b"x", local_name=b"archive/data.pk\0")], "local and central names differ"),
        ([hostile.RawEntry(b"archive/data.pkl", b"x"), hostile.RawEntry(b"archive/da\x1b[32mta", b"y")], "control character"),
        ([hostile.RawEntry(b"archive/data.pkl", b"x"), hostile.RawEntry(b"archive/d\xe9", b"y", flags=0)], "not UTF-8"),
        ([hostile.RawEntry(b"archive/data.pkl", b"x"), hostile.RawEntry("archive/dé".encode(), b"y", flags=0)],
         "not marked UTF-8"),
        ([hostile.RawEntry(b"archive/data.pkl", b"x"), hostile.RawEntry(b"Archive/data/0", b"y")], "one top-level folder"),
    ],
    ids=["local-nul", "escape", "not-utf8", "utf8-unmarked", "prefix-case"],
)
def test_names_another_reader_could_take_differently(tmp_path, entries, reason):
    with pytest.raises(UnsafeCheckpoint, match=rf"ambiguous archive \(.*{reason}"):
        _open(hostile.raw_zip(tmp_path / "n.pt", entries))


def test_data_before_the_archive_is_refused(tmp_path):
    """zipfile shifts every offset by the bytes in front; miniz takes the offsets as written."""
    path = _benign(tmp_path)
    path.write_bytes(b"\0" * 64 + path.read_bytes())
    with pytest.raises(UnsafeCheckpoint, match="central directory is not where the end of central directory record says"):
        _open(path)


def test_bytes_after_the_end_record_are_refused(tmp_path):
    path = _benign(tmp_path)
    path.write_bytes(path.read_bytes() + b"trailing")
    with pytest.raises(UnsafeCheckpoint, match="bytes after the end of central directory record"):
        _open(path)


def test_more_central_headers_than_the_end_record_counts_are_refused(tmp_path):
    """zipfile reads central headers until the directory's size is used up; miniz reads ``count``."""
    entries = [*hostile.torch_records(_step_pickle(1)), hostile.RawEntry(b"archive/extra", b"y")]
    data = bytearray(_benign(tmp_path, entries=entries).read_bytes())
    data[-14:-10] = struct.pack("<HH", 3, 3)  # the end record's two entry counts: 4 -> 3
    path = tmp_path / "count.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeCheckpoint, match="holds more than its 3 records"):
        _open(path)


def test_overlapping_records_are_refused(tmp_path):
    """Two central headers pointing at one local header: the second is read from the first's bytes."""
    data = _benign(tmp_path).read_bytes()
    central = data.index(b"PK\x01\x02")
    second = data.index(b"PK\x01\x02", central + 1)
    version = data.index(b"PK\x01\x02", second + 1)
    patched = bytearray(data)
    patched[version + 42 : version + 46] = data[second + 42 : second + 46]  # version's offset := byteorder's
    path = tmp_path / "overlap.pt"
    path.write_bytes(bytes(patched))
    with pytest.raises(UnsafeCheckpoint, match="overlap|names differ"):
        _open(path)


def test_local_size_disagreeing_with_the_central_one_is_refused(tmp_path):
    data = bytearray(_benign(tmp_path).read_bytes())
    data[22:26] = struct.pack("<I", 1)  # data.pkl's local uncompressed size
    path = tmp_path / "size.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeCheckpoint, match="record data.pkl: local header sizes disagree"):
        _open(path)


def test_record_reaching_into_the_central_directory_is_refused(tmp_path):
    path = _benign(tmp_path)
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    last = data.rindex(b"PK\x01\x02")
    size = struct.unpack_from("<I", data, last + 20)[0] + 40
    struct.pack_into("<II", data, last + 20, size, size)  # version claims 40 more bytes (into the directory)
    local = struct.unpack_from("<I", data, last + 42)[0]
    struct.pack_into("<II", data, local + 18, size, size)
    path.write_bytes(bytes(data))
    assert central < local + 30 + len(b"archive/version") + size
    with pytest.raises(UnsafeCheckpoint, match="extends past the end of its data into the central directory"):
        _open(path)


def test_zip64_end_record_away_from_its_locator_is_refused(tmp_path, real):
    """zipfile reads the zip64 end record right before the locator; miniz where the locator says."""
    data = bytearray(real.read_bytes())
    locator = data.rindex(b"PK\x06\x07")
    record = data.rindex(b"PK\x06\x06")
    moved = data[:record] + data[record : record + 56] + data[record:]  # a copy of the record first
    struct.pack_into("<Q", moved, locator + 56 + 8, record)  # the locator points at the copy
    path = tmp_path / "z64.pt"
    path.write_bytes(bytes(moved))
    with pytest.raises(UnsafeCheckpoint, match="zip64 end record is not where its locator says"):
        _open(path)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_real_torch_archives_read_as_before(tmp_path, mmap):
    """Every torch.save variant: zip64 records, data descriptors, CRC-32 off, new zip serialization."""
    import torch

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.int64), "step": 3}
    paths = []
    for proto in (2, 3, 4, 5):
        paths.append(tmp_path / f"p{proto}.pt")
        torch.save(state, paths[-1], pickle_protocol=proto)
    paths.append(tmp_path / "Mixed_Case.PT")
    torch.save(state, paths[-1], _use_new_zipfile_serialization=True)
    if hasattr(torch.serialization, "set_crc32_options"):
        torch.serialization.set_crc32_options(False)
        try:
            paths.append(tmp_path / "nocrc.pt")
            torch.save(state, paths[-1])
        finally:
            torch.serialization.set_crc32_options(True)
    for path in paths:
        container = _open(path)
        assert {"data.pkl", "data/0", "data/1", "byteorder", "version"} <= set(container.records)
        assert torch.load(path, weights_only=False, mmap=mmap)["step"] == 3  # our own file (protocol 5 is not weights_only)


@pytest.mark.parametrize("where, value, reason", [("flags", 0x41, "encrypted"), ("external", 0x10, "marked as a directory")])
def test_records_miniz_would_not_extract_are_refused(tmp_path, where, value, reason):
    """Strong encryption makes miniz fail; a DOS directory attribute makes it 'extract' nothing."""
    data = bytearray(_benign(tmp_path).read_bytes())
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<H" if where == "flags" else "<I", data, central + (8 if where == "flags" else 38), value)
    path = tmp_path / "x.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeCheckpoint, match=reason):
        _open(path)


@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file that looks like a TorchScript archive")
def test_a_torchscript_archive_is_refused(tmp_path):
    """torch.load dispatches an archive holding ``constants.pkl`` to torch.jit.load: data.pkl is not what it reads."""
    entries = [*hostile.torch_records(_step_pickle(1)), hostile.RawEntry(b"archive/constants.pkl", hostile.plain_pickle(()))]
    path = hostile.raw_zip(tmp_path / "ts.pt", entries)
    with pytest.raises(RuntimeError, match="TorchScript"):
        _torch_sees(path)
    with pytest.raises(UnsafeCheckpoint, match=r"ambiguous archive \(a TorchScript archive"):
        _open(path)


def test_zip64_extra_fields_read_as_torch_reads_them(tmp_path):
    """Sizes and offsets of 0xFFFFFFFF with the values in zip64 extra fields (files past 4 GiB)."""
    path = hostile.raw_zip(tmp_path / "z64.pt", hostile.torch_records(_step_pickle(5)), zip64=True)
    container = _open(path)
    with open(path, "rb") as fh:
        assert read_record(fh, container.pickle_record) == _step_pickle(5)
    assert container.records["version"].size == 2
    assert _torch_sees(path) == {"step": 5}
