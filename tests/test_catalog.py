"""scan(): every entry in a stable order (kind, step, timestamp; never mtime), lazy reads, clear errors."""

from __future__ import annotations

import os

import pytest

from ckptctl.layouts import catalog
from ckptctl.layouts.catalog import by_kind, check_directory, entry_for_file, scan
from ckptctl.errors import BadInputError
from ckptctl.layouts.naming import Kind
from tests import hostile


def test_scan_orders_by_kind_step_timestamp(ckpt_dir):
    names = [e.name for e in scan(ckpt_dir)]
    assert names == [
        "latest.pt", "latest_backup.pt", "best_model.pt", "best_model_backup.pt", "best_model_previous.pt",
        "rolling_step_000100.pt", "rolling_step_000200.pt", "rolling_step_000300.pt", "rolling_last_backup.pt",
        "emergency_step_000250_20261101_120000.pt", "epoch_00000.pt", "epoch_00001.pt",
    ]  # fmt: skip


def test_order_ignores_mtime(ckpt_dir):
    before = [e.name for e in scan(ckpt_dir)]
    for i, path in enumerate(sorted(ckpt_dir.iterdir(), reverse=True)):
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert [e.name for e in scan(ckpt_dir)] == before


def test_entries_carry_name_and_stat_facts(ckpt_dir):
    entries = {e.name: e for e in scan(ckpt_dir)}
    rolling = entries["rolling_step_000200.pt"]
    st = os.stat(rolling.path)
    assert (rolling.kind, rolling.step, rolling.size_bytes, rolling.inode) == (Kind.ROLLING, 200, st.st_size, st.st_ino)
    emergency = entries["emergency_step_000250_20261101_120000.pt"]
    assert emergency.parsed.timestamp.year == 2026 and emergency.step == 250
    assert entries["epoch_00001.pt"].parsed.epoch == 1


def test_metadata_is_read_lazily_and_once(ckpt_dir, monkeypatch):
    calls = []
    real = catalog.read_checkpoint
    monkeypatch.setattr(catalog, "read_checkpoint", lambda p, **k: calls.append((p, k)) or real(p, **k))
    entries = scan(ckpt_dir)
    assert calls == []  # names and sizes need no file opened
    latest = entries[0]
    assert latest.effective_step == 300  # from the metadata: latest.pt's name carries no step
    assert latest.status() == ("ok", None)
    assert latest.metadata.val_loss == pytest.approx(0.8)
    assert calls == [(latest.path, {"spans": False})]  # the listing's fast path
    ckpt, meta, error = latest.read()  # a caller that needs spans gets a full read
    assert error is None and ckpt.spans_read and ckpt.spans and meta.step == 300
    assert calls[-1] == (latest.path, {"spans": True})
    latest.read(spans=False)
    assert len(calls) == 2  # the full read serves the fast path too


def test_read_of_a_damaged_entry_is_not_repeated(tmp_path, monkeypatch):
    (tmp_path / "latest.pt").write_bytes(b"junk")
    calls = []
    real = catalog.read_checkpoint
    monkeypatch.setattr(catalog, "read_checkpoint", lambda p, **k: calls.append(k) or real(p, **k))
    [entry] = scan(tmp_path)
    assert entry.status()[0] == "unreadable" and entry.read()[2] is not None
    assert calls == [{"spans": False}]


def test_partial_and_other_files_and_what_is_skipped(tmp_path):
    (tmp_path / "latest.pt.tmp").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "subdir").mkdir()
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "absent")
    entries = scan(tmp_path)
    assert [(e.name, e.kind) for e in entries] == [("latest.pt.tmp", Kind.PARTIAL), ("notes.txt", Kind.OTHER)]
    assert entries[0].status() == ("partial", None)


def test_symlinked_checkpoint_is_followed(ckpt_dir, tmp_path):
    link_dir = tmp_path / "links"
    link_dir.mkdir()
    (link_dir / "best_model.pt").symlink_to(ckpt_dir / "best_model.pt")
    [entry] = scan(link_dir)
    assert entry.status() == ("ok", None) and entry.size_bytes == (ckpt_dir / "best_model.pt").stat().st_size


def test_damaged_and_hostile_entries_get_a_status(tmp_path, ckpt_dir):
    marker = tmp_path / "pwned"
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "latest.pt").write_bytes((ckpt_dir / "latest.pt").read_bytes()[:500])
    hostile.torch_zip(d / "best_model.pt", hostile.system_global(marker))
    (d / "epoch_00001.pt").write_bytes((ckpt_dir / "epoch_00001.pt").read_bytes())
    status = {e.name: e.status() for e in scan(d)}
    assert status["latest.pt"][0] == "unreadable"
    assert status["best_model.pt"] == ("unsafe", "references os.system")
    assert status["epoch_00001.pt"] == ("ok", None)
    assert not marker.exists()


def test_by_kind(ckpt_dir):
    assert [e.name for e in by_kind(scan(ckpt_dir), Kind.EPOCH)] == ["epoch_00000.pt", "epoch_00001.pt"]


# --- bad input: one clear BadInputError each ----------------------------------------------------


def test_nonexistent_directory(tmp_path):
    with pytest.raises(BadInputError, match="no such directory"):
        scan(tmp_path / "absent")


def test_file_where_a_directory_is_expected(ckpt_dir):
    with pytest.raises(BadInputError, match="not a directory"):
        scan(ckpt_dir / "latest.pt")


def test_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(BadInputError, match="symbolic links|cannot open"):
        scan(tmp_path / "a")


def test_empty_directory_and_no_checkpoints(tmp_path):
    assert scan(tmp_path) == []
    with pytest.raises(BadInputError, match="empty directory"):
        scan(tmp_path, require_checkpoints=True)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BadInputError, match="no checkpoints"):
        scan(tmp_path, require_checkpoints=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory: chmod cannot deny it")
def test_permission_denied_by_mode(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(BadInputError, match="permission denied"):
            scan(locked)
    finally:
        locked.chmod(0o700)


def test_permission_denied_when_the_os_refuses(tmp_path, monkeypatch):
    """As root chmod cannot deny access, so make the OS calls refuse the way they do for other users."""
    monkeypatch.setattr(catalog.os, "access", lambda *a, **k: False)
    with pytest.raises(BadInputError, match="permission denied"):
        scan(tmp_path)
    monkeypatch.undo()

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(catalog.os, "scandir", refuse)
    with pytest.raises(BadInputError, match="permission denied"):
        scan(tmp_path)


def test_stat_permission_error(tmp_path, monkeypatch):
    from pathlib import Path

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "stat", refuse)
    with pytest.raises(BadInputError, match="permission denied"):
        check_directory(tmp_path / "x")
    with pytest.raises(BadInputError, match="permission denied"):
        entry_for_file(tmp_path / "x.pt")


def test_entry_for_file_errors(tmp_path, ckpt_dir):
    with pytest.raises(BadInputError, match="no such file"):
        entry_for_file(tmp_path / "absent.pt")
    with pytest.raises(BadInputError, match="is a directory"):
        entry_for_file(tmp_path)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(BadInputError, match="cannot open"):
        entry_for_file(tmp_path / "a")
    entry = entry_for_file(ckpt_dir / "rolling_step_000100.pt")
    assert entry.kind is Kind.ROLLING and entry.status() == ("ok", None)


def test_broken_links_are_entries_only_when_asked(tmp_path):
    (tmp_path / "rolling_step_000001.pt").write_bytes(b"x")
    (tmp_path / "best_model.pt").symlink_to("rolling_step_000009.pt")  # dangling
    (tmp_path / "latest.pt").symlink_to("latest.pt")  # a loop
    os.symlink("rolling_step_000100", tmp_path / "latest")  # a DCP pointer, dangling
    assert [e.name for e in scan(tmp_path)] == ["rolling_step_000001.pt"]
    entries = {e.name: e for e in scan(tmp_path, broken_links=True)}
    assert entries["best_model.pt"].status() == ("dangling", "symlink to rolling_step_000009.pt")
    assert entries["best_model.pt"].kind is Kind.BEST and entries["best_model.pt"].size_bytes == 0
    assert entries["latest.pt"].status() == ("loop", "symlink to latest.pt")
    assert entries["latest"].kind is Kind.LATEST and entries["latest"].broken == "dangling"
    assert entries["rolling_step_000001.pt"].link is None and entries["best_model.pt"].read()[2] is not None


def test_a_live_symlink_records_where_it_points(tmp_path):
    (tmp_path / "rolling_step_000001.pt").write_bytes(b"x")
    (tmp_path / "latest.pt").symlink_to("rolling_step_000001.pt")
    entries = {e.name: e for e in scan(tmp_path)}
    assert entries["latest.pt"].link == "rolling_step_000001.pt" and entries["latest.pt"].is_symlink
    assert entries["latest.pt"].inode == entries["rolling_step_000001.pt"].inode


def test_replaced_records_are_their_own_kind(tmp_path):
    (tmp_path / "latest.pt.replaced-20261101_120000").write_bytes(b"old")
    (tmp_path / "best_model.replaced-20261101_120000-2").mkdir()  # a DCP directory kept by restore
    (tmp_path / "latest.pt.replaced-2026").write_bytes(b"not a stamp")
    kinds = {e.name: e.kind for e in scan(tmp_path)}
    assert kinds == {"latest.pt.replaced-20261101_120000": Kind.REPLACED,
                     "best_model.replaced-20261101_120000-2": Kind.REPLACED, "latest.pt.replaced-2026": Kind.OTHER}  # fmt: skip
