"""Disk usage: per-kind bytes with hard links once, apparent vs allocated, statvfs, projection, summary line, thresholds."""

from __future__ import annotations

import os
import re
import shutil
from collections import namedtuple
from pathlib import Path

import humanize

import pytest

from ckptctl.ops import usage as usage_module
from ckptctl.errors import BadInputError
from ckptctl.ops.usage import FilesystemUsage, measure, parse_free_threshold, parse_size, storage_summary, summary_line
from tests.factories import touch_files

KiB = 1024
HF_FIXTURE = Path(__file__).parent / "fixtures" / "frameworks" / "hf_trainer"
StatVfs = namedtuple("StatVfs", "f_blocks f_bfree f_bavail f_frsize")


def fake_statvfs(monkeypatch, total_blocks: int, free_blocks: int, avail_blocks: int, frsize: int = 4096) -> None:
    monkeypatch.setattr(usage_module.os, "statvfs", lambda path: StatVfs(total_blocks, free_blocks, avail_blocks, frsize))


def make_layout(directory):
    """3 rolling of 10 KiB, latest linked to the newest, rolling_last_backup a separate copy, 2 epochs, strays."""
    touch_files(directory, [f"rolling_step_{s:06d}.pt" for s in (100, 200, 300)], size=10 * KiB)
    os.link(directory / "rolling_step_000300.pt", directory / "latest.pt")
    os.link(directory / "rolling_step_000200.pt", directory / "latest_backup.pt")
    touch_files(directory, ["rolling_last_backup.pt"], size=10 * KiB)
    touch_files(directory, ["epoch_00000.pt", "epoch_00001.pt"], size=20 * KiB)
    touch_files(directory, ["emergency_step_000250_20260101_120000.pt"], size=10 * KiB)
    touch_files(directory, ["rolling_step_000400.pt.1.ab.tmp"], size=3 * KiB)
    touch_files(directory, ["notes.txt"], size=5)
    return directory


def test_bytes_per_kind_count_hard_links_once_under_the_owner(tmp_path):
    usage = measure(make_layout(tmp_path))
    kinds = usage.kinds
    assert (kinds["latest"].files, kinds["latest"].apparent_bytes, kinds["latest"].linked_files) == (2, 0, 2)
    assert (kinds["rolling"].files, kinds["rolling"].apparent_bytes, kinds["rolling"].linked_files) == (4, 40 * KiB, 0)
    assert (kinds["epoch"].files, kinds["epoch"].apparent_bytes) == (2, 40 * KiB)
    assert (kinds["emergency"].files, kinds["partial"].files, kinds["other"].files) == (1, 1, 1)
    assert kinds["best"].files == 0
    assert usage.total.files == 11 and usage.total.linked_files == 2
    assert usage.total.apparent_bytes == 40 * KiB + 40 * KiB + 10 * KiB + 3 * KiB + 5
    assert usage.total.apparent_bytes == sum(k.apparent_bytes for k in kinds.values())


def test_allocated_is_from_st_blocks_and_checkpoint_bytes_exclude_partial_and_other(tmp_path):
    make_layout(tmp_path)
    usage = measure(tmp_path)
    unique = {}
    for path in tmp_path.iterdir():
        st = path.stat()
        unique[st.st_ino] = st.st_blocks * 512
    assert usage.total.allocated_bytes == sum(unique.values())
    checkpoints = {p.stat().st_ino: p.stat().st_blocks * 512 or p.stat().st_size for p in tmp_path.glob("*.pt")}
    assert usage.checkpoint_bytes == sum(checkpoints.values())


def test_sparse_file_apparent_larger_than_allocated(tmp_path):
    path = tmp_path / "epoch_00000.pt"
    with open(path, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # a hole: 64 MiB apparent, (almost) nothing allocated
    usage = measure(tmp_path)
    assert usage.kinds["epoch"].apparent_bytes == 64 * 1024 * 1024
    assert usage.kinds["epoch"].allocated_bytes < 1024 * 1024


def test_filesystem_from_statvfs(tmp_path, monkeypatch):
    fake_statvfs(monkeypatch, total_blocks=1000, free_blocks=300, avail_blocks=250)
    usage = measure(make_layout(tmp_path))
    fs = usage.filesystem
    assert (fs.total_bytes, fs.used_bytes, fs.free_bytes) == (1000 * 4096, 700 * 4096, 250 * 4096)
    assert fs.free_percent == pytest.approx(25.0)


def test_real_statvfs_matches_shutil(tmp_path):
    import shutil

    fs = measure(tmp_path).filesystem
    assert fs.total_bytes == shutil.disk_usage(tmp_path).total
    assert fs.free_bytes > 0


def test_projection_counts_copies_of_backups(tmp_path, monkeypatch):
    fake_statvfs(monkeypatch, total_blocks=10_000, free_blocks=100, avail_blocks=100, frsize=1024)  # 100 KiB free
    make_layout(tmp_path)  # rolling_last_backup is a separate copy: a rolling save writes 2 x 10 KiB
    projection = measure(tmp_path).projection
    assert projection.checkpoint_bytes == 10 * KiB
    assert (projection.rolling_save_bytes, projection.rolling_saves_fit) == (20 * KiB, 5)
    assert (projection.epoch_bytes, projection.epochs_fit) == (20 * KiB, 5)


def test_projection_with_linked_backup_and_no_epoch(tmp_path, monkeypatch):
    fake_statvfs(monkeypatch, total_blocks=10_000, free_blocks=100, avail_blocks=100, frsize=1024)
    touch_files(tmp_path, ["rolling_step_000100.pt", "rolling_step_000200.pt"], size=30 * KiB)
    os.link(tmp_path / "rolling_step_000200.pt", tmp_path / "rolling_last_backup.pt")
    projection = measure(tmp_path).projection
    assert (projection.rolling_save_bytes, projection.rolling_saves_fit) == (30 * KiB, 3)
    assert (projection.epoch_bytes, projection.epochs_fit) == (30 * KiB, 3)  # no epoch yet: same size


def test_projection_passes_over_empty_files_named_above_every_step(tmp_path, monkeypatch):
    fake_statvfs(monkeypatch, total_blocks=10_000, free_blocks=100, avail_blocks=100, frsize=1024)
    touch_files(tmp_path, ["rolling_step_000100.pt"], size=30 * KiB)
    touch_files(tmp_path, ["rolling_step_999999.pt", "epoch_99999.pt"])  # empty: they say nothing about sizes
    projection = measure(tmp_path).projection
    assert (projection.rolling_save_bytes, projection.rolling_saves_fit) == (30 * KiB, 3)
    assert (projection.epoch_bytes, projection.epochs_fit) == (30 * KiB, 3)


def test_projection_empty_directory(tmp_path):
    usage = measure(tmp_path)
    assert usage.projection.rolling_saves_fit is None and usage.projection.epochs_fit is None
    assert usage.total.files == 0


def test_summary_line_format(tmp_path, monkeypatch):
    fake_statvfs(monkeypatch, total_blocks=10**6, free_blocks=5 * 2**18, avail_blocks=5 * 2**18, frsize=4096)
    make_layout(tmp_path)
    usage = measure(tmp_path)
    line = summary_line(usage)
    size = humanize.naturalsize(usage.total.allocated_bytes, binary=True)
    assert line == (f"Checkpoint storage: {size} on disk (allocated, hard links once), "
                    "11 files (2 latest, 4 rolling, 1 emergency, 2 epoch, 1 partial, 1 other) — 5.0 GiB free")  # fmt: skip
    assert storage_summary(tmp_path) == line


def test_summary_line_counts_are_the_per_kind_file_counts(tmp_path):
    """The line says what du's table says: one count per kind with files, adding up to the file total."""
    make_layout(tmp_path)
    usage = measure(tmp_path)
    line = summary_line(usage)
    counts = re.search(r", ([\d,]+) files \((.*)\) — ", line)
    parts = dict(reversed(part.split(" ")) for part in counts.group(2).split(", "))
    assert parts == {k.kind: str(k.files) for k in usage.kinds.values() if k.files}
    assert sum(map(int, parts.values())) == int(counts.group(1)) == usage.total.files
    assert humanize.naturalsize(usage.total.allocated_bytes, binary=True) + " on disk" in line


def test_summary_line_of_a_layout_says_checkpoints_and_files(tmp_path, monkeypatch):
    fake_statvfs(monkeypatch, total_blocks=10**6, free_blocks=2**18, avail_blocks=2**18, frsize=4096)
    shutil.copytree(HF_FIXTURE, tmp_path / "run")
    (tmp_path / "run" / "README.md").write_text("notes")
    usage = measure(tmp_path / "run")
    line = summary_line(usage)
    files = usage.kinds["checkpoint"].files
    assert line.endswith(f", 3 hf-trainer checkpoints ({files} files), 1 other file — 1.0 GiB free")


def test_counts_use_thousands_separators():
    assert usage_module.count(3067300, "more rolling save") == "3,067,300 more rolling saves"
    assert usage_module.count(1, "file") == "1 file" and usage_module.count(0, "file") == "0 files"


def test_measure_bad_directory(tmp_path):
    with pytest.raises(BadInputError, match="no such directory"):
        measure(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="not a directory"):
        measure(tmp_path / "file")


@pytest.mark.parametrize(
    "text, expected",
    [("512", 512), ("10K", 10 * 1024), ("1.5G", int(1.5 * 2**30)), ("2GiB", 2 * 2**30), ("2GB", 2 * 10**9),
     ("50g", 50 * 2**30), ("1T", 2**40), ("3 MB", 3 * 10**6), ("7b", 7)],
)  # fmt: skip
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "1X", "-5G", "ten", "5iB", "1.2.3G"])
def test_parse_size_rejects(text):
    with pytest.raises(BadInputError):
        parse_size(text)


def test_free_threshold_percent_and_size():
    fs = FilesystemUsage(total_bytes=1000, free_bytes=90, used_bytes=910)
    assert parse_free_threshold("10%").crossed(fs)
    assert not parse_free_threshold("9%").crossed(fs)
    assert parse_free_threshold("91").crossed(fs)
    assert not parse_free_threshold("90").crossed(fs)


@pytest.mark.parametrize("text", ["101%", "-1%", "abc%", "%"])
def test_free_threshold_rejects_bad_percent(text):
    with pytest.raises(BadInputError, match="percentage"):
        parse_free_threshold(text)
