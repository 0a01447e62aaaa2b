"""Sharded (DCP) saves and loads of the training side: atomic commit, ``latest`` symlinks, resharding loads.

A DCP checkpoint is a directory named like a single-file one without ``.pt``
(``rolling_step_000500/``, ``epoch_00001/``, ``best_model/``). Inside, each rank wrote its
``__<rank>_<n>.distcp`` shard files and the coordinator wrote ``.metadata`` (a pickle of DCP's
dataclasses) last. A directory without ``.metadata`` is a save that never finished: *partial*.

Atomic commit (:func:`save_directory`): every rank writes into ``<name>.tmp/``; after DCP's own
final collective (``.metadata`` written) and a barrier, rank 0 fsyncs every file and the
directory, renames ``<name>.tmp`` to ``<name>`` and fsyncs the parent; a last barrier lets every
rank return only once the checkpoint is visible. A rank killed at any point leaves at most a
``*.tmp`` directory, which ``list`` shows as partial and stale-temp cleaning removes.

Non-blocking (:func:`start_save_directory`): DCP's ``async_save`` stages the state in CPU memory
and writes on its own thread, its collectives on a process group of their own; rank 0 commits on
the manager's worker thread once DCP returned (its final gather means every rank is done).

``latest``: directories cannot be hard-linked, so ``latest`` (and ``latest_backup``, ``best_model``
stays a directory) is a **relative symlink** to the rolling directory it names, replaced
atomically (new link under a ``.tmp`` name, ``rename`` over the old one). Retention keeps the
directory a pointer names (see :mod:`ckptctl.ops.retention`).

Reading a DCP directory safely is :mod:`ckptctl.formats.dcp`; the directory operations shared with
``restore`` and ``prune`` (commit, remove, repoint) are :mod:`ckptctl.durable`.
"""

from __future__ import annotations

import os
import shutil
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from ..durable import commit_directory, fsync_directory, replace_symlink
from ..errors import CheckpointError, SaveError
from ..formats.dcp import read_directory
from ..layouts.naming import TMP_SUFFIX, Kind, format_name
from .distributed import barrier, broadcast_from_main, rank

POINTER_KINDS = (Kind.LATEST, Kind.LATEST_BACKUP)


def save_directory(
    state: Mapping[str, Any],
    directory: str | os.PathLike[str],
    name: str,
    *,
    lock: AbstractContextManager | None = None,
    after_commit: Callable[[Path], None] | None = None,
    previous: str | None = None,
) -> Path:
    """Collective: every rank calls this with its shard of ``state``; returns the committed directory.

    ``lock`` (rank 0 only) is held from the temp directory's creation to the end of
    ``after_commit`` (rank 0 only: pointer updates, retention), so ``prune`` never sees a half-done save.
    An existing ``name`` is replaced; with ``previous`` it is kept under that name (``best_model_previous``).
    """
    import torch.distributed.checkpoint as dcp

    final, tmp = _save_paths(directory, name)
    leader = rank() == 0
    with lock if leader and lock is not None else nullcontext():
        _clear_temp(tmp)
        try:
            dcp.save(dict(state), storage_writer=_writer(tmp))
        except (Exception, dcp.CheckpointException) as exc:  # DCP's exception is a BaseException
            raise _save_error(name, exc) from exc
        barrier()  # every rank's shard files are complete; .metadata was written last
        if leader:
            _commit(tmp, final, previous, after_commit)
    barrier()  # every rank returns only once the checkpoint is visible under its name
    return final


def start_save_directory(
    state: Mapping[str, Any],
    directory: str | os.PathLike[str],
    name: str,
    *,
    lock: Any = None,
    after_commit: Callable[[Path], None] | None = None,
    previous: str | None = None,
    process_group: Any = None,
    stager: Any = None,
) -> Callable[[], Path]:
    """Non-blocking :func:`save_directory` (collective): returns once ``state`` is copied, with ``finish``.

    ``torch.distributed.checkpoint.async_save`` stages ``state`` in CPU memory before it returns
    (``stager``, e.g. :func:`reusing_stager`, else the writer's: tensors copied, containers
    rebuilt, other values deep-copied), then writes
    ``<name>.tmp/`` on DCP's own thread, its collectives on ``process_group``: a group used by
    background saves only, so they never interleave with the training's on the default group.

    ``finish`` (for a worker thread; no collective) waits for that write and, on rank 0, commits it as
    :func:`save_directory` does. No agreement is needed first: DCP's coordinator writes ``.metadata``
    only after every rank reported its shard files written and fsynced (its final gather), and raises
    on every rank if any rank failed, so a successful return on rank 0 means the whole checkpoint is
    on disk. ``lock`` (a :class:`~ckptctl.locking.DirectoryLock`, rank 0) is held from now to then.
    """
    import torch.distributed.checkpoint as dcp

    final, tmp = _save_paths(directory, name)
    leader = rank() == 0
    held = lock.acquire() if leader and lock is not None else None
    try:
        _clear_temp(tmp)
        future = dcp.async_save(dict(state), storage_writer=_writer(tmp), process_group=process_group, async_stager=stager)
    except BaseException as exc:
        if held is not None:
            held.release()
        if isinstance(exc, (Exception, dcp.CheckpointException)):
            raise _save_error(name, exc) from exc
        raise

    def finish() -> Path:
        try:
            try:
                future.result()
            except (Exception, dcp.CheckpointException) as exc:
                raise _save_error(name, exc) from exc
            if leader:
                _commit(tmp, final, previous, after_commit)
            return final
        finally:
            if held is not None:
                held.release()

    return finish


def _save_error(name: str, exc: BaseException) -> SaveError:
    """One line per failed rank (``rank 1: OSError: ...``) instead of DCP's tracebacks in the message."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        causes = "; ".join(f"rank {r}: {type(e).__name__}: {e}" for r, (e, _trace) in sorted(failures.items()))
    else:
        causes = f"{type(exc).__name__}: {exc}"
    return SaveError(f"sharded save of {name} failed: {causes}")


def reusing_stager() -> Any:
    """torch's ``DefaultStager`` as ``async_save`` builds it (synchronous, unpinned), kept by its owner:
    it stages into CPU storages cached per source storage and copies into them again at the next save
    (several times faster than into fresh pages, as :meth:`ckptctl.training.async_save.AsyncWriter.snapshot`
    does). Safe only because a new snapshot is taken once the previous write finished. The owner
    closes it, which frees the copies."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    return DefaultStager(StagingOptions(False, False, False, False))


def _save_paths(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """(the checkpoint directory, the temp directory every rank writes into)."""
    directory = Path(directory)
    return directory / name, directory / f"{name}{TMP_SUFFIX}"


def _clear_temp(tmp: Path) -> None:
    """Collective: rank 0 removes a stale temp directory of this name; nobody writes into it before."""
    if rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)
    barrier()


def _writer(tmp: Path) -> Any:
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemWriter(tmp, sync_files=True)  # every rank fsyncs its shard files before reporting


def _commit(tmp: Path, final: Path, previous: str | None, after_commit: Callable[[Path], None] | None) -> None:
    """Rank 0, once every rank's files are complete: rename into place, then pointers and retention."""
    commit_directory(tmp, final, final.with_name(previous) if previous else None)
    if after_commit is not None:
        after_commit(final)


def set_pointer(directory: str | os.PathLike[str], kind: Kind, target: str, *, backup: Kind | None = None) -> None:
    """Point the symlink ``kind`` (``latest``) at ``target`` atomically; the old target moves to ``backup``."""
    directory = Path(directory)
    link = directory / format_name(kind, directory=True)
    if backup is not None and link.is_symlink():
        previous = os.readlink(link)
        if previous != target:
            replace_symlink(directory / format_name(backup, directory=True), previous)
    replace_symlink(link, target)
    fsync_directory(directory)


# ----------------------------------------------------------------------------- loading (torch)


def candidates(directory: str | os.PathLike[str], which: str | os.PathLike[str] = "latest") -> list[Path]:
    """Directories to try for ``which``: latest -> latest_backup -> newest rolling/emergency; best -> previous."""
    from ..layouts.catalog import scan

    directory = Path(directory)
    if which == "latest":
        entries = [e for e in scan(directory) if e.is_directory and e.kind in (Kind.ROLLING, Kind.EMERGENCY)]
        entries.sort(key=lambda e: (e.step or 0, e.parsed.timestamp or datetime.min))
        chain = [directory / format_name(kind, directory=True) for kind in POINTER_KINDS]
        return chain + [e.path for e in reversed(entries)]
    if which == "best":
        return [directory / format_name(kind, directory=True) for kind in (Kind.BEST, Kind.BEST_PREVIOUS)]
    path = Path(which)
    return [path if path.exists() or path.is_absolute() else directory / path]


def _refusal(path: Path) -> str | None:
    """Why the safe reader refuses ``path`` (None when it accepts it)."""
    try:
        read_directory(path)
    except CheckpointError as exc:
        return exc.reason
    return None


def load_directory(state: dict[str, Any], directory: str | os.PathLike[str], which: str | os.PathLike[str] = "latest") -> Path:
    """Load ``which`` into ``state`` in place (DCP reshards to the shapes of ``state``); returns the directory.

    Each candidate is first read with the safe reader (a partial or hostile one is skipped); in a
    process group rank 0 lists and reads them and broadcasts its verdicts, so every rank loads the same
    directory.
    """
    import torch.distributed.checkpoint as dcp

    tried: list[str] = []
    paths = broadcast_from_main(candidates(directory, which) if rank() == 0 else None)
    for path in paths:
        # rank 0's verdict for every rank: dcp.load is collective, all ranks must try the same directory
        refused = broadcast_from_main(_refusal(path) if rank() == 0 else None)
        if refused is not None:
            tried.append(f"{path.name}: {refused}")
            continue
        try:
            dcp.load(state, storage_reader=dcp.FileSystemReader(path))
        except (Exception, dcp.CheckpointException) as exc:  # DCP reports damage as many exception types
            tried.append(f"{path.name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
            continue
        return path
    from ..errors import NoCheckpointError

    raise NoCheckpointError(f"no loadable {which!s} sharded checkpoint in {directory} ({'; '.join(tried) or 'no candidates'})")


# ---------------------------------------------------------------- CheckpointManager(format="dcp")


def manager_save(manager: Any, payload: Mapping[str, Any], kind: Kind, *, blocking: bool = True, **name_fields: Any) -> Path:
    """One save of :class:`ckptctl.training.manager.CheckpointManager` in DCP format (collective).

    rolling -> also ``latest`` (old target -> ``latest_backup``) and retention; emergency -> retention;
    best -> the old ``best_model`` renamed to ``best_model_previous`` first; epoch -> nothing else.
    ``blocking=False``: :func:`start_save_directory`, its ``finish`` handed to the manager's
    :class:`~ckptctl.training.async_save.AsyncWriter` (the one in-flight bookkeeping); returns the future name.
    """
    name = format_name(kind, directory=True, **name_fields)

    def after_commit(final: Path) -> None:
        if kind is Kind.ROLLING:
            set_pointer(manager.directory, Kind.LATEST, final.name, backup=Kind.LATEST_BACKUP)
        if kind in (Kind.ROLLING, Kind.EMERGENCY):
            manager._apply_retention()

    previous = format_name(Kind.BEST_PREVIOUS, directory=True) if kind is Kind.BEST else None
    lock = manager._lock() if rank() == 0 else None
    if blocking:
        return save_directory(payload, manager.directory, name, lock=lock, after_commit=after_commit, previous=previous)
    group, stager = manager._background_group(), manager._background_stager()
    finish = start_save_directory(payload, manager.directory, name, lock=lock, after_commit=after_commit,
                                  previous=previous, process_group=group, stager=stager)  # fmt: skip
    manager._writer.submit(finish)
    return manager.directory / name
