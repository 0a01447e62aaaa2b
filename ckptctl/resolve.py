"""Which file ``latest``, ``best`` or a bare directory stands for: the one fallback order.

Resuming must not depend on one file being intact. ``latest`` falls back latest → latest_backup →
rolling_last_backup → the newest rolling or emergency checkpoint (by step, then the name's
timestamp); ``best`` falls back best → best_backup → best_previous; a directory means the valid
checkpoint with the highest step of any kind. The order is data (``fallback_candidates``) so the
CheckpointManager can walk the same list with its own loader and log each fallback, while
``resume-cmd`` and ``compare`` use ``resolve`` (first candidate the safe reader accepts).
Plain Python: the safe reader decides validity, nothing here imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from .catalog import STATUS_OK, Entry, entry_for_file, scan
from .errors import BadInputError, NoCheckpointError
from .naming import Kind
from .sharded import looks_like_dcp

LATEST = "latest"
BEST = "best"
NEWEST = "newest"
TARGETS = (LATEST, BEST, NEWEST)

LATEST_CHAIN = (Kind.LATEST, Kind.LATEST_BACKUP, Kind.ROLLING_BACKUP)
BEST_CHAIN = (Kind.BEST, Kind.BEST_BACKUP, Kind.BEST_PREVIOUS)
# Among checkpoints of equal step, prefer the file a resume would normally use.
TIE_ORDER = (*LATEST_CHAIN, Kind.ROLLING, Kind.EMERGENCY, Kind.EPOCH, *BEST_CHAIN)


@dataclass
class Resolution:
    """The chosen checkpoint and the candidates passed over on the way, each with its reason."""

    entry: Entry
    requested: str
    skipped: list[tuple[Entry, str]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.entry.path

    def fallback_notes(self) -> list[str]:
        """One line per skipped candidate, e.g. ``latest.pt unreadable: truncated ...``."""
        return [f"{entry.name} {reason}; falling back" for entry, reason in self.skipped]


def fallback_candidates(entries: list[Entry], which: str) -> list[Entry]:
    """Candidates for ``which`` (latest / best / newest) in the order they should be tried."""
    if which == LATEST:
        fixed = [e for kind in LATEST_CHAIN for e in entries if e.kind is kind]
        rolling = [e for e in entries if e.kind in (Kind.ROLLING, Kind.EMERGENCY)]
        return fixed + sorted(rolling, key=_newest_first)
    if which == BEST:
        return [e for kind in BEST_CHAIN for e in entries if e.kind is kind]
    if which == NEWEST:
        found = [e for e in entries if e.kind in TIE_ORDER]
        return sorted(found, key=lambda e: (_step_or_none_last(e), TIE_ORDER.index(e.kind), _newest_first(e)))
    raise BadInputError(f"unknown checkpoint target {which!r} (choose from {', '.join(TARGETS)})")


def _newest_first(entry: Entry) -> tuple:
    """Sort key: higher step first, then later timestamp from the name; never mtime."""
    step = entry.parsed.step if entry.parsed.step is not None else -1
    stamp = entry.parsed.timestamp or datetime.min
    return (-step, -stamp.timestamp() if stamp != datetime.min else 0.0, entry.name)


def _step_or_none_last(entry: Entry) -> tuple[bool, int]:
    """Newest by the step in the name or, for fixed names, the metadata; unknown steps last."""
    step = entry.effective_step if entry.kind is not Kind.PARTIAL else None
    return (step is None, -(step or 0))


def _safe_reader_verdict(entry: Entry) -> str | None:
    """None when the safe reader accepts the file, else why not (``unreadable: truncated ...``)."""
    status, error = entry.status()
    return None if status == STATUS_OK else f"{status}: {error}"


def resolve(
    directory: str | os.PathLike[str],
    which: str = NEWEST,
    verdict: Callable[[Entry], str | None] = _safe_reader_verdict,
) -> Resolution:
    """The first usable candidate for ``which`` in ``directory``; NoCheckpointError if none is."""
    entries = scan(directory, require_checkpoints=True)
    skipped: list[tuple[Entry, str]] = []
    for entry in fallback_candidates(entries, which):
        reason = verdict(entry)
        if reason is None:
            return Resolution(entry, which, skipped)
        skipped.append((entry, reason))
    tried = "; ".join(f"{e.name} {r}" for e, r in skipped) or "no candidate files"
    raise NoCheckpointError(f"no valid {which} checkpoint in {directory} ({tried})")


def resolve_target(target: str, directory: str | os.PathLike[str] | None = None) -> Resolution:
    """What a user typed: ``latest`` / ``best`` (in ``directory``), ``DIR/latest``, a directory, a file.

    A file is returned as named (the caller reads it and reports what is wrong with it); only the
    symbolic targets and directories fall back.
    """
    if target in (LATEST, BEST):
        return resolve(directory if directory is not None else ".", target)
    path = Path(target)
    if path.is_dir() and looks_like_dcp(path):  # one sharded checkpoint (``DIR/latest`` is a symlink to one)
        return Resolution(entry_for_file(path), target)
    if path.is_dir():
        return resolve(path, NEWEST)
    if not path.exists() and path.name in (LATEST, BEST) and path.parent.is_dir():
        return resolve(path.parent, path.name)
    return Resolution(entry_for_file(path), "file")
