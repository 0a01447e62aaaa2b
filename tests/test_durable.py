"""The durable write protocol: temp file, fsync, CRC verification, atomic rename; faults leave nothing behind."""

from __future__ import annotations

import errno
import os
import time
import zipfile
from pathlib import Path

import pytest

from ckptctl import durable
from ckptctl.ops import retention
from ckptctl.errors import SaveError, UnreadableCheckpoint
from ckptctl.formats.reader import read_checkpoint
from tests.factories import DiskFullFile, flip_byte_in_largest_tensor, make_state, write_checkpoint


def _torch_writer(state):
    import torch

    return lambda fh: torch.save(state, fh)


def _temp_files(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_write_atomic_creates_a_verified_readable_file(tmp_path):
    path = durable.write_atomic(tmp_path, "latest.pt", _torch_writer(make_state(step=7, hidden=64)))
    assert path == tmp_path / "latest.pt"
    assert read_checkpoint(path).root["step"] == 7
    assert durable.verify_crc(path) > 3  # data.pkl, storages, byteorder, version...
    assert _temp_files(tmp_path) == []


def test_write_atomic_replaces_an_existing_file(tmp_path):
    durable.write_atomic(tmp_path, "latest.pt", _torch_writer(make_state(step=1)))
    durable.write_atomic(tmp_path, "latest.pt", _torch_writer(make_state(step=2)))
    assert read_checkpoint(tmp_path / "latest.pt").root["step"] == 2


def test_temp_names_are_partial_and_unique(tmp_path):
    from ckptctl.layouts.naming import Kind, parse

    first, second = durable.temp_path(tmp_path, "latest.pt"), durable.temp_path(tmp_path, "latest.pt")
    assert first != second and first.parent == tmp_path
    assert parse(first.name).kind is Kind.PARTIAL


def test_verify_crc_detects_a_flipped_bit(tmp_path):
    path = write_checkpoint(tmp_path / "a.pt", step=3, hidden=256)
    flip_byte_in_largest_tensor(path)
    with pytest.raises(UnreadableCheckpoint, match="CRC-32 mismatch in record data/"):
        durable.verify_crc(path)


def test_verify_crc_on_legacy_and_garbage(tmp_path):
    import torch

    legacy = tmp_path / "legacy.pt"
    torch.save({"x": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert durable.verify_crc(legacy) == 0  # nothing to check, not an error
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(UnreadableCheckpoint, match="unknown file format"):
        durable.verify_crc(garbage)
    truncated = tmp_path / "truncated.pt"
    data = write_checkpoint(tmp_path / "full.pt", step=1).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableCheckpoint):
        durable.verify_crc(truncated)


def test_verification_failure_never_becomes_visible(tmp_path):
    durable.write_atomic(tmp_path, "latest.pt", _torch_writer(make_state(step=1)))

    def corrupting_writer(fh):
        import torch

        torch.save(make_state(step=2, hidden=256), fh)
        fh.flush()
        flip_byte_in_largest_tensor(Path(f"/proc/self/fd/{fh.fileno()}"))

    with pytest.raises(SaveError, match="verification failed: CRC-32 mismatch"):
        durable.write_atomic(tmp_path, "latest.pt", corrupting_writer)
    assert read_checkpoint(tmp_path / "latest.pt").root["step"] == 1
    assert _temp_files(tmp_path) == []


def test_disk_full_raises_a_clear_error_and_removes_the_temp(tmp_path, monkeypatch):
    durable.write_atomic(tmp_path, "latest.pt", _torch_writer(make_state(step=1)))
    real_open = durable._open_temp
    monkeypatch.setattr(durable, "_open_temp", lambda path: DiskFullFile(real_open(path), 4096))
    with pytest.raises(SaveError, match="disk full") as info:
        durable.write_atomic(tmp_path, "latest.pt", _torch_writer(make_state(step=2, hidden=512)))
    assert info.value.errno == errno.ENOSPC
    assert "previous checkpoints are untouched" in str(info.value)
    assert read_checkpoint(tmp_path / "latest.pt").root["step"] == 1
    assert _temp_files(tmp_path) == []


def test_fsync_eio_raises_and_keeps_the_old_file(tmp_path, monkeypatch):
    durable.write_atomic(tmp_path, "best_model.pt", _torch_writer(make_state(step=1)))

    def failing_fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(durable, "_fsync", failing_fsync)
    with pytest.raises(SaveError, match="I/O error") as info:
        durable.write_atomic(tmp_path, "best_model.pt", _torch_writer(make_state(step=2)))
    assert info.value.errno == errno.EIO
    assert read_checkpoint(tmp_path / "best_model.pt").root["step"] == 1
    assert _temp_files(tmp_path) == []


def test_a_non_io_error_in_the_writer_propagates_and_cleans_up(tmp_path):
    def broken(fh):
        fh.write(b"partial")
        raise ValueError("cannot pickle this")

    with pytest.raises(ValueError, match="cannot pickle"):
        durable.write_atomic(tmp_path, "latest.pt", broken)
    assert list(tmp_path.iterdir()) == []


def test_interrupt_mid_write_cleans_up(tmp_path):
    def interrupted(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        durable.write_atomic(tmp_path, "latest.pt", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_staged_file_is_invisible_until_commit_and_discarded_without_it(tmp_path):
    with durable.stage(tmp_path, "best_model.pt", _torch_writer(make_state(step=5))) as staged:
        assert not (tmp_path / "best_model.pt").exists()
        assert staged.tmp.exists() and staged.size > 0
    assert list(tmp_path.iterdir()) == []
    with durable.stage(tmp_path, "best_model.pt", _torch_writer(make_state(step=5))) as staged:
        staged.commit()
    assert read_checkpoint(tmp_path / "best_model.pt").root["step"] == 5
    assert _temp_files(tmp_path) == []


@pytest.mark.parametrize("mode", ["link", "copy", "reflink"])
def test_link_or_copy_modes(tmp_path, mode):
    src = write_checkpoint(tmp_path / "rolling_step_000001.pt", step=1)
    dst = tmp_path / "rolling_last_backup.pt"
    dst.write_bytes(b"old content")
    used = durable.link_or_copy(src, dst, mode, fsync_dir=True)
    assert dst.read_bytes() == src.read_bytes()
    same_inode = os.stat(src).st_ino == os.stat(dst).st_ino
    assert used == mode or (mode == "reflink" and used == "copy")
    assert same_inode == (used == "link")
    assert _temp_files(tmp_path) == []


def test_a_copy_protects_against_bit_rot_a_link_does_not(tmp_path):
    src = write_checkpoint(tmp_path / "best_model.pt", step=1, hidden=256)
    durable.link_or_copy(src, tmp_path / "linked.pt", "link")
    durable.link_or_copy(src, tmp_path / "copied.pt", "copy")
    flip_byte_in_largest_tensor(src)
    with pytest.raises(UnreadableCheckpoint):
        durable.verify_crc(tmp_path / "linked.pt")
    assert durable.verify_crc(tmp_path / "copied.pt") > 0


@pytest.mark.parametrize("mode, refused", [("link", "link"), ("copy", "sendfile"), ("reflink", "ioctl")])
def test_falls_back_to_a_plain_copy_when_the_file_system_refuses(tmp_path, monkeypatch, mode, refused):
    """No hard links (FAT, some network mounts), no sendfile, no FICLONE (ext4): still a correct copy."""
    src = write_checkpoint(tmp_path / "a.pt", step=1)

    def not_supported(*args):
        raise OSError(errno.EPERM if refused == "link" else errno.EOPNOTSUPP, f"{refused} not supported here")

    monkeypatch.setattr(durable.fcntl if refused == "ioctl" else durable.os, refused, not_supported)
    assert durable.link_or_copy(src, tmp_path / "b.pt", mode) == "copy"
    assert (tmp_path / "b.pt").read_bytes() == src.read_bytes()
    assert os.stat(src).st_ino != os.stat(tmp_path / "b.pt").st_ino


def test_link_or_copy_failure_keeps_destination(tmp_path, monkeypatch):
    src = write_checkpoint(tmp_path / "a.pt", step=1)
    dst = tmp_path / "b.pt"
    dst.write_bytes(b"previous")

    def eio(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(durable, "_fsync", eio)
    with pytest.raises(SaveError, match="I/O error"):
        durable.link_or_copy(src, dst, "copy")
    assert dst.read_bytes() == b"previous"
    assert _temp_files(tmp_path) == []


def test_link_or_copy_rejects_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        durable.link_or_copy(tmp_path / "a", tmp_path / "b", "symlink")


def test_replace_atomic_moves_and_reports_errors(tmp_path):
    src = tmp_path / "x.tmp"
    src.write_bytes(b"new")
    durable.replace_atomic(src, tmp_path / "latest.pt")
    assert (tmp_path / "latest.pt").read_bytes() == b"new" and not src.exists()
    with pytest.raises(SaveError, match="could not write"):
        durable.replace_atomic(tmp_path / "missing.tmp", tmp_path / "latest.pt")


def test_clean_stale_temp_removes_only_old_partial_writes(tmp_path):
    old = tmp_path / "latest.pt.123.abcd.tmp"
    fresh = tmp_path / "best_model.pt.456.ef01.tmp"
    keep = write_checkpoint(tmp_path / "latest.pt", step=1)
    other = tmp_path / "notes.txt"
    for path in (old, fresh, other):
        path.write_bytes(b"x")
    an_hour_ago = time.time() - 7200
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert retention.clean_stale_temp(tmp_path, older_than=3600) == [old]
    assert fresh.exists() and keep.exists() and other.exists()
    assert retention.clean_stale_temp(tmp_path, older_than=0) == [fresh]


def test_fsync_directory_tolerates_file_systems_without_directory_fsync(tmp_path, monkeypatch):
    def einval(fd):
        raise OSError(errno.EINVAL, "not supported")

    monkeypatch.setattr(durable, "_fsync", einval)
    durable.fsync_directory(tmp_path)  # no error: some file systems cannot fsync a directory


def test_durable_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, ckptctl.durable, ckptctl.training.signals, ckptctl.training.rng; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_zip_reader_agrees_with_our_records(tmp_path):
    path = durable.write_atomic(tmp_path, "latest.pt", _torch_writer(make_state(step=1)))
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # Python's own CRC check agrees the file is intact
