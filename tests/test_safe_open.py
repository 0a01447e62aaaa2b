"""ckptctl.formats.safe_open: only regular files are opened; a FIFO or device is a verdict, never a hang.

Every test that could block on today's code carries a per-test timeout (pytest-timeout): a plain
``open()`` of a FIFO with no writer waits forever, so on a regression the test fails, not hangs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

import pytest

from ckptctl.formats import safe_open
from ckptctl.errors import UnreadableCheckpoint
from ckptctl.formats.reader import read_checkpoint
from ckptctl.formats.safe_open import open_regular
from tests.factories import write_checkpoint

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "latest.pt"
    os.mkfifo(path)
    return path


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_regular_file_reads_and_blocks_normally(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    with open_regular(path) as fh:
        assert fcntl.fcntl(fh.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK == 0  # cleared after the check
        assert fcntl.fcntl(fh.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fh.read() == b"abc" * 1000


def test_a_fifo_is_refused_without_waiting_for_a_writer(fifo):
    with pytest.raises(UnreadableCheckpoint, match=r"not a regular file \(fifo\)"):
        open_regular(fifo)


def test_a_symlink_to_a_fifo_is_refused(fifo, tmp_path):
    link = tmp_path / "link.pt"
    link.symlink_to(fifo)
    with pytest.raises(UnreadableCheckpoint, match="fifo"):
        open_regular(link)


def test_a_character_device_is_refused():
    with pytest.raises(UnreadableCheckpoint, match=r"not a regular file \(character device\)"):
        open_regular("/dev/zero")


def test_a_directory_keeps_its_wording(tmp_path):
    with pytest.raises(UnreadableCheckpoint, match="^is a directory$"):
        open_regular(tmp_path)


def test_no_follow_refuses_a_symlink(tmp_path):
    target = tmp_path / "real.pt"
    target.write_bytes(b"x")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    with pytest.raises(OSError) as info:
        open_regular(link, follow_symlinks=False)
    assert info.value.errno == errno.ELOOP
    with open_regular(target, follow_symlinks=False) as fh:
        assert fh.read() == b"x"


def test_missing_file_stays_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "nope.pt")


def test_a_fifo_swapped_in_after_the_stat_is_caught_by_fstat(fifo, tmp_path, monkeypatch):
    """The race: ``stat`` saw a regular file, the name is a FIFO by the time it is opened."""
    regular = tmp_path / "regular"
    regular.write_bytes(b"x")
    real_stat = os.stat
    monkeypatch.setattr(safe_open.os, "stat", lambda p, **kw: real_stat(regular) if Path(p) == fifo else real_stat(p, **kw))
    before = _open_fds()
    with pytest.raises(UnreadableCheckpoint, match="fifo"):
        open_regular(fifo)
    assert _open_fds() == before  # the descriptor opened on the FIFO is closed again


def test_file_kind_names():
    assert safe_open.file_kind(stat.S_IFIFO) == "fifo"
    assert safe_open.file_kind(stat.S_IFSOCK) == "socket"
    assert safe_open.file_kind(stat.S_IFBLK) == "block device"


def test_read_checkpoint_refuses_a_fifo_and_a_device(fifo):
    with pytest.raises(UnreadableCheckpoint, match="fifo"):
        read_checkpoint(fifo)
    with pytest.raises(UnreadableCheckpoint, match="character device"):
        read_checkpoint("/dev/zero")


def test_read_checkpoint_still_reads_regular_files_and_symlinks(tmp_path):
    path = write_checkpoint(tmp_path / "rolling_step_000100.pt")
    link = tmp_path / "latest.pt"
    link.symlink_to(path.name)
    assert read_checkpoint(link).root["step"] == read_checkpoint(path).root["step"] == 100
