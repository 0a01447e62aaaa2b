"""``ckptctl prune`` as a plan and an execution: gather -> plan -> (confirm) -> execute.

Planning reads names, ``stat`` and symlinks, plus a few bytes at each end of the files "last N"
keeps (:mod:`ckptctl.ops.quickcheck`; ``keep_best_k`` also reads metadata through the safe reader) and
changes nothing, so ``--dry-run`` is simply "plan, do not execute". Execution takes the
directory lock shared with a running :class:`~ckptctl.training.manager.CheckpointManager`, then plans again
from a fresh scan: a save may have landed between the shown plan and the lock. Only files that
both plans remove are deleted (never more than the user saw and confirmed, never something the
policy now keeps), and each is checked to still be the very inode that was planned.

Another framework's layout (a directory with none of ckptctl's names that a layout of
:mod:`ckptctl.layouts.registry` recognises): the units are planned by
:func:`ckptctl.ops.retention.plan_unit_retention` ("keep the last N" by step, never the recorded
best, the newest complete unit, a pointer's target or what the layout protects; incomplete units
only with ``remove_incomplete``), a directory unit is removed by renaming it to ``*.tmp`` first
(:func:`ckptctl.durable.remove_entry`), under the same lock and the same re-plan.

On object storage (``s3://...``) there is no directory lock: execution re-plans from a fresh
listing right before deleting, and an object counts as the planned one only while its ETag, size
and modification time are unchanged (they make up its ``inode``). A save racing the deletion
itself is not excluded; run prune on a bucket while no training writes to the prefix.
"""

from __future__ import annotations

import errno
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..layouts.catalog import Entry, scan
from ..layouts.naming import Kind
from ..durable import fsync_directory, remove_entry
from ..errors import BadInputError, CheckpointError
from ..locking import DirectoryLock
from .foreign import Run, open_run, read_run
from .retention import Policy, RetentionPlan, freed_bytes, plan_retention, plan_unit_retention, refuse_if_removes_everything
from ..formats import storage
from ..formats.storage import is_url, location
from ..wording import plural

# Deleting fails this way when the directory (or the file system) does not let us: bad input, not a finding.
_NOT_PERMITTED = {errno.EACCES, errno.EPERM, errno.EROFS}


@dataclass
class PrunePlan:
    """What a prune of ``directory`` under ``policy`` would keep and delete, and why."""

    directory: Path
    policy: Policy
    retention: RetentionPlan
    run: Run | None = None  # another framework's layout; None: ckptctl's own

    @property
    def layout(self) -> str | None:
        return self.run.layout.name if self.run is not None else None

    @property
    def deletions(self) -> list[Entry]:
        return self.retention.deletions

    @property
    def freed_bytes(self) -> int:
        return self.retention.freed_bytes


@dataclass
class PruneResult:
    """What an execution actually deleted (a subset of the plan's deletions)."""

    removed: list[Entry] = field(default_factory=list)
    skipped: list[Entry] = field(default_factory=list)  # planned, but gone, replaced, or kept by the fresh plan

    @property
    def freed_bytes(self) -> int:
        return freed_bytes(self.removed)


# Options of ``prune`` that apply to every layout; the others are about ckptctl's own kinds of file.
LAYOUT_OPTIONS = ("--keep-last", "--keep-every", "--remove-incomplete", "--stale-after", "--keep-replaced-within")


def plan_prune(directory: str | os.PathLike[str], policy: Policy, *, now: float | None = None,
               native_options: tuple[str, ...] | list[str] = ()) -> PrunePlan:  # fmt: skip
    """Plan without touching anything; BadInputError for a bad directory or a policy that keeps nothing.

    A directory without a single checkpoint name is bad input too: a prune pointed at the wrong
    directory from cron should say so, not report success. ``native_options`` names the options the
    user gave that apply to ckptctl's own layout only: on another framework's layout they are bad input.
    """
    run = open_run(directory) if not is_url(directory) else None
    if run is not None:
        if native_options:
            raise BadInputError(
                f"{', '.join(native_options)} {'applies' if len(native_options) == 1 else 'apply'} to ckptctl's own "
                f"checkpoints only; {run.directory} is a {run.layout.title} run ({run.layout.name}): "
                f"use {', '.join(LAYOUT_OPTIONS)}"
            )
        return PrunePlan(run.directory, policy, _plan_run(run, policy, now), run)
    path = location(directory)
    retention = plan_retention(scan(path, require_checkpoints=True, broken_links=True), policy, now=now)
    refuse_if_removes_everything(retention)
    return PrunePlan(path, policy, retention)


def _plan_run(run: Run, policy: Policy, now: float | None) -> RetentionPlan:
    entries = scan(run.directory, broken_links=True)
    # A run's leftovers are none of the layout's entries: stale ``*.tmp`` and restore's ``.replaced-*`` records
    listed = {os.path.abspath(e.path) for e in entries}
    entries += [e for e in scan(run.directory, broken_links=True, layouts=False)
                if e.kind in (Kind.PARTIAL, Kind.REPLACED) and os.path.abspath(e.path) not in listed]  # fmt: skip
    retention = plan_unit_retention(run, entries, policy, now=now)
    if retention.removes_everything:  # cannot happen while the newest complete unit is protected; kept as a guard
        raise BadInputError(f"refusing: this policy would remove every checkpoint of {run.directory} and keep none")
    return retention


def execute(plan: PrunePlan, *, wait: float = 0.0, now: float | None = None) -> PruneResult:
    """Delete the plan's files under the directory lock (LockedError after ``wait`` seconds).

    A directory that refuses the first deletion (read-only, no permission) raises BadInputError
    with nothing deleted; a later failure raises CheckpointError naming what was already removed.
    """
    result = PruneResult()
    if not plan.deletions:
        return result
    remote = is_url(plan.directory)
    if not remote:
        _check_writable(plan.directory)
    with nullcontext() if remote else DirectoryLock(plan.directory, wait=wait):
        if plan.run is not None:  # the layout as it is now, under the lock
            fresh = _plan_run(read_run(plan.directory, plan.run.layout), plan.policy, now)
        else:
            fresh = plan_retention(scan(plan.directory, broken_links=True), plan.policy, now=now)
        still_removed = {(e.name, e.inode) for e in fresh.deletions}
        for entry in plan.deletions:
            if (entry.name, entry.inode) in still_removed and (remote or _same_file(entry)):
                _unlink(entry, result)
            else:
                result.skipped.append(entry)
        if result.removed and not remote:
            fsync_directory(plan.directory)
    return result


def _check_writable(directory: Path) -> None:
    """Fail before the lock and before any deletion when the directory cannot be changed at all."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot delete in {directory}: permission denied or read-only directory; nothing was deleted")


def _same_file(entry: Entry) -> bool:
    """The name still refers to the file that was planned (not a new file saved under the same name).

    Inode and mtime together: a freed inode number can be reused at once by the next file created.
    A broken symlink is identified by the link itself.
    """
    try:
        info = os.lstat(entry.path) if entry.broken is not None else os.stat(entry.path)
    except OSError:
        return False
    return (info.st_ino, info.st_mtime) == (entry.inode, entry.mtime)


def _unlink(entry: Entry, result: PruneResult) -> None:
    try:
        if is_url(entry.path):  # the fresh listing just matched its ETag, size and mtime
            storage.delete(entry.path, recursive=entry.is_directory)  # type: ignore[arg-type]
        else:
            remove_entry(entry.path, entry.is_directory)
    except FileNotFoundError:
        result.skipped.append(entry)
        return
    except OSError as exc:
        if exc.errno in _NOT_PERMITTED and not result.removed:
            raise BadInputError(f"cannot delete {entry.path}: {exc.strerror or exc}; nothing was deleted") from None
        verb = "was" if len(result.removed) == 1 else "were"
        done = f"{plural(len(result.removed), 'file')} {verb} deleted before it" if result.removed else "nothing was deleted"
        raise CheckpointError(f"cannot delete {entry.path}: {exc.strerror or exc}; {done}") from None
    result.removed.append(entry)
