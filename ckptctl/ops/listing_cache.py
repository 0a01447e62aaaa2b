"""A deletable cache of what ``ckptctl list`` read from each file: an accelerator, never the truth.

Listing a directory of big checkpoints costs a safe unpickle of every file's ``data.pkl`` (a few
ms per file for a few hundred tensors), while what the listing shows of a file is a handful of
values (status, step, epoch, losses, saved time). A file whose identity is unchanged — same
device, inode, size, mtime and ctime to the nanosecond — has the same bytes, so those values can
be reused. ctime cannot be set by a user (``utime`` moves it to *now*), so a rewritten file
always misses.

Rules that keep it an accelerator (docs/architecture.md: a cache "can be deleted without losing anything"):

- It lives outside the checkpoint directory, in ``$CKPTCTL_CACHE_DIR`` or
  ``$XDG_CACHE_HOME/ckptctl`` (``~/.cache/ckptctl``): ``list`` never writes into the directory
  it lists. The cache directory and its ``listing`` subdirectory are created private (0700) and
  used only while each is a real directory (not a symlink) owned by this user and not writable
  by group or others; files are opened relative to them with ``O_NOFOLLOW``, written as an
  ``O_EXCL`` temp file renamed into place. Anything else (a ``listing`` symlink planted in a
  shared cache directory, a root owned by someone else) is ignored: no caching, no error, never
  followed. A cache file not owned by this user, or writable by others, is ignored too — a
  planted file must not make a hostile checkpoint "ok".
- Only plain files whose ctime is older than ``SETTLE_SECONDS`` are stored: a file being written
  right now can change again within one timestamp tick without its ctime moving (git's "racy"
  index problem).
- The key includes a fingerprint of the reader's own code, so a changed reader re-reads
  everything. Any damaged, foreign or unreadable cache file reads as empty. Writes are atomic
  (temp file + rename) and errors writing it are ignored: a read-only home still lists.
- Sharded (DCP) directories and partial writes are never cached (a directory's own stat does not
  change when a shard inside it is rewritten).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat as stat_module
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..layouts.catalog import Entry

SETTLE_SECONDS = 1.0
FORMAT = 1
MAX_CACHE_BYTES = 64 * 1024 * 1024  # a larger cache file is not ours to parse: ignored
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# The modules whose code decides what a listing reads from a file.
READER_MODULES = ("formats/container.py", "formats/unpickler.py", "formats/reader.py", "formats/scalars.py",
                  "formats/pickle_scan.py", "formats/safe_open.py", "formats/dcp.py", "formats/safetensors.py",
                  "layouts/metadata.py", "layouts/catalog.py", "ops/listing.py", "ops/listing_cache.py")


@dataclass(frozen=True)
class Facts:
    """What reading one file tells the listing; small and JSON-able so the cache can keep it."""

    status: str
    error: str | None = None
    step: int | None = None  # from the metadata
    epoch: int | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    timestamp: str | None = None  # ISO 8601, from the metadata


def cache_directory() -> Path:
    """Where the cache lives: ``$CKPTCTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/ckptctl``, else ~/.cache."""
    explicit = os.environ.get("CKPTCTL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ckptctl"


def reader_fingerprint() -> str:
    """Package version plus size and mtime of the reader's modules: a changed reader misses."""
    here = Path(__file__).resolve().parent.parent  # the package: paths are relative to it
    parts = [str(FORMAT)]
    for name in READER_MODULES:
        try:
            info = (here / name).stat()
            parts.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:?")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class ListingCache:
    """The cached facts of one checkpoint directory, loaded once per listing and saved once."""

    def __init__(self, directory: Path | None, *, enabled: bool = True):
        """``directory`` None (an object-store URL) or ``enabled`` False: a cache that keeps nothing."""
        enabled = enabled and directory is not None
        self.enabled = enabled
        self.started_ns = time.time_ns()
        self.fingerprint = reader_fingerprint() if enabled else ""
        self.path = self._file_for(directory) if directory is not None and enabled else None
        self.old: dict[str, Any] = self._load() if enabled else {}
        self.new: dict[str, Any] = {}

    @staticmethod
    def _file_for(directory: Path) -> Path | None:
        try:
            real = os.path.realpath(directory)
        except OSError:
            return None
        digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:32]
        return cache_directory() / "listing" / f"{digest}.json"

    def _load(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        listing_fd = _private_directories(self.path.parent, create=False)
        if listing_fd is None:
            return {}
        try:
            fd = os.open(self.path.name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=listing_fd)
            with os.fdopen(fd, "rb") as fh:
                info = os.fstat(fh.fileno())
                if not _trusted(info) or not stat_module.S_ISREG(info.st_mode) or info.st_size > MAX_CACHE_BYTES:
                    return {}
                doc = json.loads(fh.read(MAX_CACHE_BYTES + 1))
        except (OSError, ValueError):
            return {}
        finally:
            os.close(listing_fd)
        if not isinstance(doc, dict) or doc.get("fingerprint") != self.fingerprint:
            return {}
        entries = doc.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, entry: Entry) -> Facts | None:
        """The cached facts of ``entry`` if its identity is exactly the one they were read from."""
        key = _identity(entry)
        cached = self.old.get(entry.name)
        if key is None or not isinstance(cached, dict) or cached.get("identity") != key:
            return None
        try:
            facts = Facts(**cached["facts"])
        except (KeyError, TypeError):
            return None
        self.new[entry.name] = cached
        return facts

    def put(self, entry: Entry, facts: Facts) -> None:
        """Remember ``facts`` for the next listing, if the file has settled (see SETTLE_SECONDS)."""
        key = _identity(entry)
        if not self.enabled or key is None or key[4] > self.started_ns - SETTLE_SECONDS * 1e9:
            return
        self.new[entry.name] = {"identity": key, "facts": asdict(facts)}

    def save(self) -> None:
        """Write the cache if it changed; files no longer listed are dropped. Never raises."""
        if not self.enabled or self.path is None or self.new == self.old:
            return
        data = json.dumps({"fingerprint": self.fingerprint, "entries": self.new}, separators=(",", ":")).encode()
        listing_fd = _private_directories(self.path.parent, create=True)
        if listing_fd is None:
            return  # not a directory we may trust: no caching
        import secrets  # only when the cache changed: a cached listing writes nothing

        tmp = f".listing-{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=listing_fd)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, self.path.name, src_dir_fd=listing_fd, dst_dir_fd=listing_fd)
            except BaseException:
                os.unlink(tmp, dir_fd=listing_fd)
                raise
        except OSError:
            pass  # an accelerator: a read-only or full cache directory must not fail a listing
        finally:
            os.close(listing_fd)


def _trusted(info: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else."""
    return info.st_uid == os.geteuid() and not info.st_mode & (stat_module.S_IWGRP | stat_module.S_IWOTH)


def _private_directory(name: str | Path, *, dir_fd: int | None, create: bool) -> int | None:
    """A descriptor of directory ``name`` if it is a real directory we may trust (see :func:`_trusted`);
    created 0700 first when ``create``. None otherwise: a symlink is never followed (``O_NOFOLLOW``)."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if _trusted(os.fstat(fd)):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _private_directories(listing: Path, *, create: bool) -> int | None:
    """A descriptor of the cache's ``listing`` directory, checked together with the cache root above it."""
    root = listing.parent
    if create:
        try:
            root.parent.mkdir(parents=True, exist_ok=True)  # e.g. ~/.cache: shared with other programs
        except OSError:
            return None
    root_fd = _private_directory(root, dir_fd=None, create=create)
    if root_fd is None:
        return None
    try:
        return _private_directory(listing.name, dir_fd=root_fd, create=create)
    finally:
        os.close(root_fd)


def _identity(entry: Entry) -> list[int] | None:
    """(dev, inode, size, mtime_ns, ctime_ns) of a plain file, as a JSON-comparable list."""
    if entry.identity is None or entry.is_directory:
        return None
    return list(entry.identity)
