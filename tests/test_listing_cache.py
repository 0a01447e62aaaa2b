"""ckptctl.ops.listing_cache: a listing served from the cache equals a fresh read, and any change misses."""

from __future__ import annotations

import json
import os

import pytest

from ckptctl.layouts import catalog
from ckptctl.ops import listing_cache
from ckptctl.ops.listing import list_checkpoints
from tests import hostile
from tests.factories import cached_layout, make_state, write_checkpoint


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private cache, and files count as settled at once (they were written a moment ago)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CKPTCTL_CACHE_DIR", str(path))
    monkeypatch.setattr(listing_cache, "SETTLE_SECONDS", -60.0)
    return path


@pytest.fixture
def reads(monkeypatch):
    """Names of the checkpoint files the safe reader opened."""
    opened: list[str] = []
    real = catalog.read_checkpoint

    def counting(path, **kwargs):
        opened.append(os.path.basename(path))
        return real(path, **kwargs)

    monkeypatch.setattr(catalog, "read_checkpoint", counting)
    return opened


@pytest.fixture
def directory(tmp_path):
    """The layout plus a truncated file, a hostile one and a partial write."""
    d = cached_layout(tmp_path / "ckpts")
    good = (d / "rolling_step_000300.pt").read_bytes()
    (d / "rolling_step_000400.pt").write_bytes(good[: len(good) // 2])
    hostile.torch_zip(d / "epoch_00009.pt", hostile.system_global(tmp_path / "pwned"))
    (d / "latest.pt.tmp").write_bytes(good[:100])
    return d


def test_second_listing_opens_no_file_and_equals_a_fresh_read(directory, cache_dir, reads):
    first = list_checkpoints(directory).to_json()
    assert "rolling_step_000300.pt" in reads and "epoch_00009.pt" in reads
    reads.clear()
    second = list_checkpoints(directory).to_json()
    assert reads == []
    assert second == first == list_checkpoints(directory, use_cache=False).to_json()
    statuses = {row["name"]: row["status"] for row in second["checkpoints"]}
    assert statuses["epoch_00009.pt"] == "unsafe" and statuses["rolling_step_000400.pt"] == "unreadable"
    assert not (tmp := directory.parent / "pwned").exists(), tmp


def test_the_cache_lives_outside_the_listed_directory(directory, cache_dir):
    before = sorted(os.listdir(directory))
    list_checkpoints(directory)
    assert sorted(os.listdir(directory)) == before
    files = list((cache_dir / "listing").iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    assert cache_dir.stat().st_mode & 0o777 == (cache_dir / "listing").stat().st_mode & 0o777 == 0o700


def test_a_file_rewritten_in_place_with_the_same_size_is_read_again(directory, cache_dir, reads):
    path = directory / "rolling_step_000300.pt"
    list_checkpoints(directory)
    size = path.stat().st_size
    hostile.flip_byte_in_pickle(path, 0)
    assert path.stat().st_size == size
    reads.clear()
    rows = {r["name"]: r for r in list_checkpoints(directory).to_json()["checkpoints"]}
    assert reads == ["rolling_step_000300.pt"]
    assert rows["rolling_step_000300.pt"]["status"] == "unreadable"


def test_a_file_replaced_by_rename_is_read_again(directory, cache_dir, reads):
    list_checkpoints(directory)
    replacement = write_checkpoint(directory / "new.tmp", make_state(step=300, val_loss=0.123))
    os.replace(replacement, directory / "rolling_step_000300.pt")
    reads.clear()
    rows = {r["name"]: r for r in list_checkpoints(directory).to_json()["checkpoints"]}
    assert reads == ["rolling_step_000300.pt"] and rows["rolling_step_000300.pt"]["val_loss"] == 0.123


def test_utime_back_to_the_old_mtime_still_misses(directory, cache_dir, reads):
    """ctime moves on any change and cannot be set back, unlike mtime."""
    path = directory / "latest.pt"
    list_checkpoints(directory)
    info = path.stat()
    replacement = write_checkpoint(directory / "x.tmp", make_state(step=999))
    os.replace(replacement, path)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    reads.clear()
    rows = {r["name"]: r for r in list_checkpoints(directory).to_json()["checkpoints"]}
    assert reads == ["latest.pt"] and rows["latest.pt"]["step"] == 999


def test_files_written_just_now_are_not_cached(directory, tmp_path, monkeypatch, reads):
    monkeypatch.setenv("CKPTCTL_CACHE_DIR", str(tmp_path / "cache"))
    assert listing_cache.SETTLE_SECONDS > 0
    list_checkpoints(directory)
    reads.clear()
    list_checkpoints(directory)
    assert "latest.pt" in reads  # ctime within SETTLE_SECONDS of the listing: a rewrite could hide


@pytest.mark.parametrize("damage", ["garbage", "group_writable", "other_fingerprint"])
def test_a_damaged_or_untrusted_cache_is_ignored(directory, cache_dir, reads, monkeypatch, damage):
    expected = list_checkpoints(directory, use_cache=False).to_json()
    list_checkpoints(directory)
    (cache_file,) = (cache_dir / "listing").iterdir()
    doc = json.loads(cache_file.read_text())
    for entry in doc["entries"].values():  # a lie that would be served if the file were trusted
        entry["facts"].update(status="ok", error=None)
    cache_file.write_text(json.dumps(doc))
    if damage == "garbage":
        cache_file.write_bytes(b"\x00{not json")
    elif damage == "group_writable":
        cache_file.chmod(0o620)
    else:
        monkeypatch.setattr(listing_cache, "reader_fingerprint", lambda: "changed-reader")
    reads.clear()
    assert list_checkpoints(directory).to_json() == expected and "epoch_00009.pt" in reads


def test_a_malformed_cache_entry_is_read_again(directory, cache_dir, reads):
    expected = list_checkpoints(directory, use_cache=False).to_json()
    list_checkpoints(directory)
    (cache_file,) = (cache_dir / "listing").iterdir()
    doc = json.loads(cache_file.read_text())
    doc["entries"]["epoch_00009.pt"]["facts"] = {"status": "ok", "bogus": 1}
    cache_file.write_text(json.dumps(doc))
    reads.clear()
    assert list_checkpoints(directory).to_json() == expected and reads == ["epoch_00009.pt"]


def test_an_unwritable_cache_location_never_fails_a_listing(directory, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CKPTCTL_CACHE_DIR", str(blocker / "cache"))  # parent is a file: mkdir fails
    monkeypatch.setattr(listing_cache, "SETTLE_SECONDS", -60.0)
    assert list_checkpoints(directory).to_json() == list_checkpoints(directory, use_cache=False).to_json()


def test_a_filtered_listing_keeps_the_other_files_cached(directory, cache_dir, reads):
    list_checkpoints(directory)
    list_checkpoints(directory, ["best"])
    reads.clear()
    list_checkpoints(directory)
    assert reads == []


def test_use_cache_false_neither_reads_nor_writes_the_cache(directory, cache_dir, reads):
    list_checkpoints(directory, use_cache=False)
    assert not cache_dir.exists()
    list_checkpoints(directory)
    reads.clear()
    list_checkpoints(directory, use_cache=False)
    assert "latest.pt" in reads


def test_sharded_directories_are_never_cached(tmp_path, cache_dir):
    from tests.factories import write_dcp

    d = tmp_path / "ckpts"
    write_dcp(d / "rolling_step_000100", make_state(step=100))
    (entry,) = catalog.scan(d)
    assert entry.is_directory and listing_cache._identity(entry) is None


# ------------------------------------------------- a shared cache directory cannot redirect or feed us


def _listing_file(cache_dir) -> list[str]:
    return sorted(os.listdir(cache_dir / "listing")) if (cache_dir / "listing").is_dir() else []


def test_a_planted_listing_symlink_is_never_followed(directory, cache_dir, tmp_path, reads):
    """In a shared cache root, someone else's ``listing -> /elsewhere`` must not receive our writes."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    cache_dir.mkdir(mode=0o700)
    (cache_dir / "listing").symlink_to(outside)
    expected = list_checkpoints(directory, use_cache=False).to_json()
    assert list_checkpoints(directory).to_json() == expected
    assert os.listdir(outside) == []  # nothing written through the link
    assert (cache_dir / "listing").is_symlink()
    reads.clear()
    list_checkpoints(directory)
    assert "latest.pt" in reads  # no caching at all


def test_a_planted_cache_file_symlink_is_replaced_not_followed(directory, cache_dir, tmp_path):
    list_checkpoints(directory)
    (name,) = _listing_file(cache_dir)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (cache_dir / "listing" / name).unlink()
    (cache_dir / "listing" / name).symlink_to(victim)
    list_checkpoints(directory)  # reads nothing through the link, writes a fresh file over it
    assert victim.read_text() == "untouched"
    assert not (cache_dir / "listing" / name).is_symlink()


def test_a_cache_root_owned_by_another_user_is_not_used(directory, cache_dir, reads):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    list_checkpoints(directory)  # a cache that would be served if the root were trusted
    os.chown(cache_dir, 65534, 65534)
    before = {name: (cache_dir / "listing" / name).read_bytes() for name in _listing_file(cache_dir)}
    reads.clear()
    list_checkpoints(directory)
    assert "latest.pt" in reads  # not served from the foreign root
    assert {name: (cache_dir / "listing" / name).read_bytes() for name in _listing_file(cache_dir)} == before


@pytest.mark.parametrize("where", ["root", "listing"])
def test_a_group_writable_cache_directory_is_not_used(directory, cache_dir, reads, where):
    list_checkpoints(directory)
    (cache_dir if where == "root" else cache_dir / "listing").chmod(0o770)
    reads.clear()
    list_checkpoints(directory)
    assert "latest.pt" in reads
    assert (cache_dir.stat().st_mode & 0o777, (cache_dir / "listing").stat().st_mode & 0o777) != (0o700, 0o700)


def test_a_cache_root_that_is_a_symlink_is_not_used(directory, tmp_path, monkeypatch, reads):
    real = tmp_path / "real-cache"
    real.mkdir(mode=0o700)
    link = tmp_path / "cache-link"
    link.symlink_to(real)
    monkeypatch.setenv("CKPTCTL_CACHE_DIR", str(link))
    monkeypatch.setattr(listing_cache, "SETTLE_SECONDS", -60.0)
    list_checkpoints(directory)
    assert os.listdir(real) == []


def test_a_fresh_cache_is_created_private_even_under_a_permissive_umask(directory, cache_dir, reads):
    old = os.umask(0)
    try:
        list_checkpoints(directory)
    finally:
        os.umask(old)
    assert cache_dir.stat().st_mode & 0o777 == (cache_dir / "listing").stat().st_mode & 0o777 == 0o700
    (name,) = _listing_file(cache_dir)
    assert (cache_dir / "listing" / name).stat().st_mode & 0o777 == 0o600
    reads.clear()
    list_checkpoints(directory)
    assert reads == []
