"""Which file ``latest``, ``best`` or a bare directory stands for, and the one rule of where to resume.

**Where to resume** (``newest``; :func:`resume_candidates`, :func:`resume_point`): the newest
*valid* checkpoint of any kind — latest, its backups, rolling, emergency, epoch, and best too (a
best save is a full training state of its step; at equal steps the others come first) — ordered
by step (from the name, else the file's metadata), then by save time (the name's timestamp, else
the metadata's ``timestamp``), never by mtime. ``CheckpointManager.resume()`` and
``load("newest")``, ``resume-cmd DIR`` and ``restore`` (the source a damaged latest is healed
from) all walk this order, each with its own check of "valid", and say why they chose what they
chose (:func:`explain`): after Ctrl+C at step 33 with ``latest.pt`` at 30, the step-33 emergency
file wins, "newer than latest.pt (step 30)".

``latest`` keeps meaning ``latest.pt``, falling back latest → latest_backup → rolling_last_backup
→ the newest rolling or emergency checkpoint (by step, then the name's timestamp); ``best`` falls
back best → best_backup → best_previous. The orders are data (``fallback_candidates``) so the
CheckpointManager can walk the same list with its own loader and log each fallback, while
``resume-cmd`` and ``compare`` use ``resolve`` (first candidate the safe reader accepts).
Plain Python: nothing here imports torch.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from ..layouts.catalog import STATUS_OK, Entry, entry_for_file, scan
from ..errors import BadInputError, NoCheckpointError
from ..layouts.naming import Kind
from ..formats.dcp import looks_like_dcp

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
    reason: str = ""  # why this one (``newest``): "emergency_... (step 33) is newer than latest.pt (step 30)"

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
        return resume_candidates(entries)
    raise BadInputError(f"unknown checkpoint target {which!r} (choose from {', '.join(TARGETS)})")


def _newest_first(entry: Entry) -> tuple:
    """Sort key: higher step first, then later timestamp from the name; never mtime."""
    step = entry.parsed.step if entry.parsed.step is not None else -1
    stamp = entry.parsed.timestamp or datetime.min
    return (-step, -stamp.timestamp() if stamp != datetime.min else 0.0, entry.name)


def resume_candidates(entries: list[Entry]) -> list[Entry]:
    """Every checkpoint of the directory, newest first: the one order of "where to resume".

    By step (name, else metadata; unknown last), then save time (the name's timestamp, else the
    metadata's; unknown last), then the kind a resume would normally use (:data:`TIE_ORDER`),
    then the name. Save times are read only to break a tie of steps.
    """
    return sorted((e for e in entries if e.kind in TIE_ORDER), key=functools.cmp_to_key(_compare_newest))


def _compare_newest(a: Entry, b: Entry) -> int:
    for key in (_step_key, _time_key, lambda e: (TIE_ORDER.index(e.kind), e.name)):
        ka, kb = key(a), key(b)
        if ka != kb:
            return -1 if ka < kb else 1
    return 0


def _step_key(entry: Entry) -> tuple[bool, int]:
    step = entry.effective_step
    return (step is None, -(step or 0))


def _time_key(entry: Entry) -> tuple[bool, float]:
    when = saved_at(entry)
    return (when is None, -(when or 0.0))


def saved_at(entry: Entry) -> float | None:
    """When the checkpoint was saved (POSIX seconds): the name's timestamp, else the metadata's."""
    stamp = entry.parsed.timestamp
    if stamp is None:
        meta = entry.metadata
        stamp = meta.timestamp if meta is not None else None
    try:
        return stamp.timestamp() if stamp is not None else None  # naive: local time, as the names are
    except (OverflowError, OSError, ValueError):
        return None


def explain(chosen: Entry, entries: list[Entry], unusable: dict[str, str] | None = None) -> str:
    """Why ``chosen`` is where to resume, measured against ``latest.pt`` (what users expect)."""
    unusable = unusable or {}
    step = chosen.effective_step
    this = f"{chosen.name} (step {step if step is not None else 'unknown'})"
    latest = next((e for e in entries if e.kind is Kind.LATEST), None)
    if latest is None and _latest_name(entries) in unusable:  # a broken link: not in the scan
        return f"{this} is the newest valid checkpoint; {_latest_name(entries)} is {unusable[_latest_name(entries)]}"
    if latest is None or latest.name == chosen.name:
        where = "" if latest is not None else f" (there is no {_latest_name(entries)})"
        return f"{this} is the newest valid checkpoint{where}"
    if latest.name in unusable:
        return f"{this} is the newest valid checkpoint; {latest.name} is unusable: {unusable[latest.name]}"
    latest_step = latest.effective_step
    if latest_step is None:
        return f"{this} is the newest valid checkpoint; {latest.name} records no step"
    if step is not None and step > latest_step:
        return f"{this} is newer than {latest.name} (step {latest_step})"
    return f"{this} was saved after {latest.name} (step {latest_step})"


def _latest_name(entries: list[Entry]) -> str:
    sharded = bool(entries) and all(e.is_directory for e in entries if e.parsed.is_checkpoint)
    return "latest" if sharded else "latest.pt"


def intact_verdict(entry: Entry) -> str | None:
    """None when ``validate`` (default level: CRC-32 included) finds the checkpoint intact, else why not."""
    from .integrity import DEFAULT, validate_file

    result = validate_file(entry.path, DEFAULT)
    return None if result.valid else f"{result.status}: {'; '.join(result.problems)}"


def resume_point(
    directory: str | os.PathLike[str], verdict: Callable[[Entry], str | None] = intact_verdict
) -> Resolution:
    """Where to resume in ``directory`` (see the module docstring), with the reason; NoCheckpointError
    when no checkpoint is valid. Every candidate passed over is in ``skipped`` with its reason."""
    return resolve(directory, NEWEST, verdict)


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
            why = explain(entry, entries, {e.name: r for e, r in skipped}) if which == NEWEST else ""
            return Resolution(entry, which, skipped, why)
        skipped.append((entry, reason))
    tried = "; ".join(f"{e.name} {r}" for e, r in skipped) or "no candidate files"
    raise NoCheckpointError(f"no valid {which} checkpoint in {directory} ({tried})")


def resolve_target(target: str, directory: str | os.PathLike[str] | None = None) -> Resolution:
    """What a user typed: ``latest`` / ``best`` (in ``directory``), ``DIR/latest``, a directory, a file.

    A file is returned as named (the caller reads it and reports what is wrong with it); only the
    symbolic targets and directories fall back. A directory means where to resume in it
    (:func:`resume_point`: the newest intact checkpoint of any kind).
    """
    if target in (LATEST, BEST):
        return resolve(directory if directory is not None else ".", target)
    path = Path(target)
    if path.is_dir() and looks_like_dcp(path):  # one sharded checkpoint (``DIR/latest`` is a symlink to one)
        return Resolution(entry_for_file(path), target)
    if path.is_dir():
        return resume_point(path)
    if not path.exists() and path.name in (LATEST, BEST) and path.parent.is_dir():
        return resolve(path.parent, path.name)
    return Resolution(entry_for_file(path), "file")
