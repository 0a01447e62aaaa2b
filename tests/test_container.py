"""The torch zip container read through its central directory, cross-checked against zipfile and torch."""

from __future__ import annotations

import zipfile
import zlib

import pytest

from ckptctl.container import Container, open_container, read_record, sniff_format
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
