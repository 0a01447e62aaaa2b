"""A deletable cache of what ``ckptctl list`` read from each file: an accelerator, never the truth.

Listing a directory of big checkpoints costs a safe unpickle of every file's ``data.pkl`` (a few
ms per file for a few hundred tensors), while what the listing shows of a file is a handful of
values (status, step, epoch, losses, saved time). A file whose identity is unchanged — same
device, inode, size, mtime and ctime to the nanosecond — has the same bytes, so those values can
be reused. ctime cannot be set by a user (``utime`` moves it to *now*), so a rewritten file
always misses.

Rules that keep it an accelerator (DESIGN.md: "can be deleted without losing anything"):

- It lives outside the checkpoint directory, in ``$CKPTCTL_CACHE_DIR`` or
  ``$XDG_CACHE_HOME/ckptctl`` (``~/.cache/ckptctl``): ``list`` never writes into the directory
  it lists. The cache directory is created private (0700); a cache file not owned by this user,
  or writable by others, is ignored — a planted file must not make a hostile checkpoint "ok".
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
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .catalog import Entry

SETTLE_SECONDS = 1.0
FORMAT = 1
# The modules whose code decides what a listing reads from a file.
READER_MODULES = ("container.py", "unpickler.py", "reader.py", "metadata.py", "scalars.py", "listing.py",
                  "listing_cache.py", "pickle_scan.py")


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
    here = Path(__file__).resolve().parent
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
        try:
            with open(self.path, "rb") as fh:
                info = os.fstat(fh.fileno())
                if info.st_uid != os.geteuid() or info.st_mode & (stat_module.S_IWGRP | stat_module.S_IWOTH):
                    return {}
                doc = json.loads(fh.read())
        except (OSError, ValueError):
            return {}
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
        doc = {"fingerprint": self.fingerprint, "entries": self.new}
        try:
            root = self.path.parent.parent
            root.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: mode applies to the last part
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".listing-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(doc, fh, separators=(",", ":"))
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            pass  # an accelerator: a read-only or full cache directory must not fail a listing


def _identity(entry: Entry) -> list[int] | None:
    """(dev, inode, size, mtime_ns, ctime_ns) of a plain file, as a JSON-comparable list."""
    if entry.identity is None or entry.is_directory:
        return None
    return list(entry.identity)
