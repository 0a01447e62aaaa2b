"""CheckpointManager: atomic, durable checkpoints from inside a training loop, and safe resume.

    mgr = CheckpointManager("./checkpoints", keep_last_n=10, keep_emergency_n=10)  # rank 0 writes under torchrun
    mgr.save(state, step=step)                       # rolling_step_N.pt, latest.pt (+ backups), retention
    mgr.save(state, step=step, blocking=False)       # snapshot now, write on a background thread
    mgr.save_best(state, step=step, val_loss=loss)   # only if better than every earlier best
    mgr.save_epoch(state, epoch=epoch)               # epoch_NNNNN.pt, kept forever
    mgr.save_emergency(state, step=step)             # emergency_step_N_YYYYMMDD_HHMMSS.pt
    start = mgr.resume(model, optimizer).step        # where to resume (newest valid of any kind); 0 on a first run
    state = mgr.load("latest")                       # or "best", "newest", or a path; falls back if damaged

Each save serialises the state once (``torch.save`` into a verified temp file, see
:mod:`ckptctl.durable`); every other file of the save is a rename or a hard link, except the
``_backup`` duplicates, whose mechanism ``backup_mode`` chooses:

- ``"link"`` (default): free, protects against deletion but not bit rot (same blocks);
- ``"copy"``: independent bytes, survives a damaged block in the original, costs a second write;
- ``"reflink"``: copy-on-write clone where the file system supports it, else a copy.

Files written while the directory lock is held (``ckptctl prune``/``restore`` wait or exit 3).

Inside an initialised ``torch.distributed`` process group, every rank constructs the manager and
calls every method; rank 0 writes, and the decisions are rank 0's, broadcast (:mod:`ckptctl.training.distributed`):
the best val_loss at start-up, whether ``save_best`` saves, the file ``load("latest"|"best")``
resolved to. The only barrier is after ``save_emergency`` (see there); rolling, best and epoch
saves have none, since no rank reads those files during the run. Non-blocking saves
(:mod:`ckptctl.training.async_save`) are waited for by every later call, ``close()`` and interpreter exit;
with ``format="dcp"`` (DCP's ``async_save``, :func:`ckptctl.formats.dcp.start_save_directory`) that
wait ends with one ``any_rank`` agreement on the outcome, so every rank raises or none does.
This is the only core module that imports torch at import time.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import torch

from . import distributed
from .. import durable
from . import dcp_save
from .async_save import AsyncWriter
from ..layouts.catalog import scan
from ..errors import CheckpointError, NoCheckpointError, SaveError, UnreadableCheckpoint
from ..locking import DirectoryLock
from ..layouts.metadata import as_float
from ..layouts.naming import Kind, format_name
from ..formats.reader import read_checkpoint
from ..ops.resolve import BEST, BEST_CHAIN, LATEST, LATEST_CHAIN, NEWEST, explain, fallback_candidates, resume_candidates
from ..ops import retention
from ..ops.retention import Policy, plan_retention
from ..formats.torch_load import safe_globals
from .rng import capture_rng_state, restore_rng_state, to_plain
from ..ops.usage import Usage, measure, summary_line

log = logging.getLogger("ckptctl.training.manager")



@dataclass
class Resumed:
    """What :meth:`CheckpointManager.resume` restored, and where the loop should continue.

    A first run (no checkpoint in the directory) gives ``path=None``, ``step=0``, ``epoch=0``
    and an empty ``state``: ``start = mgr.resume(model, optimizer).step`` works either way.
    """

    path: Path | None
    step: int | None
    epoch: int | None
    dataloader_state: Any
    state: dict[str, Any]
    reason: str = ""  # why this checkpoint: "emergency_step_... (step 33) is newer than latest.pt (step 30)"

    @property
    def fresh(self) -> bool:
        """True when there was nothing to resume from (a first run)."""
        return self.path is None


class CheckpointManager:
    """Writes and reads one checkpoint directory in the layout of DESIGN.md."""

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        keep_last_n: int = 10,
        keep_emergency_n: int = 10,
        master_process: bool | None = None,
        *,
        backup_mode: str = durable.LINK,
        verify: bool = True,
        monitor_every: int = 10,
        lock_wait: float = 300.0,
        format: str = "pt",
        collective_timeout: float = distributed.DEFAULT_TIMEOUT,
    ):
        if keep_last_n < 1 or keep_emergency_n < 1:
            raise ValueError("keep_last_n and keep_emergency_n must be at least 1")
        if backup_mode not in durable.MODES:
            raise ValueError(f"backup_mode must be one of {', '.join(durable.MODES)}, got {backup_mode!r}")
        self.directory = Path(checkpoint_dir)
        self.keep_last_n = keep_last_n
        self.keep_emergency_n = keep_emergency_n
        # None: rank 0 of an initialised process group writes; without a process group, this process.
        self.master_process = distributed.is_main_process() if master_process is None else master_process
        self.backup_mode = backup_mode
        self.verify = verify
        self.monitor_every = monitor_every
        self.lock_wait = lock_wait
        if format not in ("pt", "dcp"):
            raise ValueError(f"format must be 'pt' or 'dcp', got {format!r}")
        self.format = format  # "dcp": sharded directories through torch.distributed.checkpoint (ckptctl.formats.dcp)
        self.loaded_path: Path | None = None
        self.loaded_reason = ""  # load("newest"): why that file (ckptctl.ops.resolve.explain)
        self._saves = 0
        self._low_space_warned = False
        self._writer = AsyncWriter()
        self._agree = False  # the background save in flight is collective (dcp): its outcome is agreed on
        self._group: Any = None  # format="dcp", blocking=False: the process group of background saves
        self._group_made = False
        self._stager: Any = None  # format="dcp", blocking=False: torch's stager, its CPU copy reused per save
        # seconds save_best/save_emergency wait for the other ranks to reach the same call (then CollectiveError)
        self.collective_timeout = collective_timeout
        distributed.control_group()  # collective: made here, where every rank is, not in a call one rank may skip
        if self.master_process:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self._lock():  # under the lock every *.tmp belongs to a writer that died
                for path in retention.clean_stale_temp(self.directory, older_than=0):
                    log.info("removed partial write left by an interrupted save: %s", path.name)
        # rank 0 reads it; every rank gets the same value, so is_better() agrees everywhere
        self.best_val_loss: float | None = distributed.broadcast_from_main(
            self._read_best_val_loss() if distributed.is_main_process() else None
        )

    # ----------------------------------------------------------------------------------- saving

    def save(self, state: Mapping[str, Any], step: int, *, blocking: bool = True) -> Path | None:
        """Rolling save: rolling_step_N.pt, latest.pt (previous one -> latest_backup.pt),
        rolling_last_backup.pt, then retention. Returns the rolling file (None off the master).

        ``blocking=False``: copy the state's tensors to the CPU now and write in the background
        (:mod:`ckptctl.training.async_save`); the returned path exists once the write finished. A save still
        in flight is waited for first, and its error raised here. With ``format="dcp"`` every rank
        calls it; DCP's ``async_save`` stages and writes (:func:`ckptctl.formats.dcp.start_save_directory`).
        """
        self._settle()
        if self.format == "dcp":  # collective: every rank writes its shards
            payload = self._payload(state, "regular", step=step)
            path = dcp_save.manager_save(self, payload, Kind.ROLLING, blocking=blocking, step=step)
            self._agree = not blocking
            return path
        if not self.master_process:
            return None
        payload = self._payload(state, "regular", step=step)
        if blocking:
            return self._write_rolling(payload, step)
        self._writer.submit(self._write_rolling, self._writer.snapshot(payload), step)
        return self.directory / format_name(Kind.ROLLING, step=step)

    def _write_rolling(self, payload: dict[str, Any], step: int) -> Path:
        """The rolling save's files, from a payload nobody else mutates (the caller's, or a snapshot)."""
        with self._lock(), self._stage(format_name(Kind.ROLLING, step=step), payload) as staged:
            rolling = staged.commit(fsync_dir=False)
            latest = self._path(Kind.LATEST)
            if latest.exists():
                durable.link_or_copy(latest, self._path(Kind.LATEST_BACKUP), durable.LINK)
            durable.link_or_copy(rolling, latest, durable.LINK)
            durable.link_or_copy(rolling, self._path(Kind.ROLLING_BACKUP), self.backup_mode)
            durable.fsync_directory(self.directory)
            self._apply_retention()
        self._after_save(rolling, copies=1)
        return rolling

    def save_best(self, state: Mapping[str, Any], step: int, val_loss: float) -> Path | None:
        """Save only if ``val_loss`` beats the best so far (also across restarts).

        Old best -> best_model_previous.pt, new -> best_model.pt, duplicate -> best_model_backup.pt.
        In a process group every rank must call it (rank 0's ``val_loss`` decides): a call on some ranks
        only raises :class:`~ckptctl.errors.CollectiveError` instead of hanging in the broadcast.
        """
        distributed.agree("save_best", timeout=self.collective_timeout)
        self._settle()
        better, agreed_loss = distributed.broadcast_from_main(self._best_decision(val_loss))
        if not better:
            return None
        if self.format == "dcp":  # best_model/ (old one -> best_model_previous/), no backup copy
            payload = self._payload(state, "regular", step=step, val_loss=float(val_loss))
            self.best_val_loss = float(agreed_loss if agreed_loss is not None else val_loss)
            return dcp_save.manager_save(self, payload, Kind.BEST)
        if not self.master_process:
            self.best_val_loss = agreed_loss  # rank 0's value: the next comparison agrees too
            return None
        payload = self._payload(state, "regular", step=step, val_loss=float(val_loss))
        with self._lock(), self._stage(format_name(Kind.BEST), payload) as staged:
            best = self._path(Kind.BEST)
            if best.exists():
                durable.link_or_copy(best, self._path(Kind.BEST_PREVIOUS), durable.LINK)
            staged.commit(fsync_dir=False)
            durable.link_or_copy(best, self._path(Kind.BEST_BACKUP), self.backup_mode)
            durable.fsync_directory(self.directory)
        previous = "none" if self.best_val_loss is None else f"{self.best_val_loss:.6g}"
        log.info("new best val_loss %.6g (was %s) at step %s", val_loss, previous, step)
        self.best_val_loss = float(val_loss)
        self._after_save(best, copies=1)
        return best

    def save_epoch(self, state: Mapping[str, Any], epoch: int) -> Path | None:
        """epoch_NNNNN.pt: never deleted by retention."""
        self._settle()
        if self.format == "dcp":
            return dcp_save.manager_save(self, self._payload(state, "regular", epoch=epoch), Kind.EPOCH, epoch=epoch)
        if not self.master_process:
            return None
        payload = self._payload(state, "regular", epoch=epoch)
        return self._save_single(format_name(Kind.EPOCH, epoch=epoch), payload, retention=False)

    def save_emergency(self, state: Mapping[str, Any], step: int) -> Path | None:
        """emergency_step_N_<time>.pt, with its own retention: never touches latest or rolling files.

        Waits for a background save in flight first; if that one failed, the emergency save is still
        written and the failure raised afterwards. In a process group, every rank calls this and
        waits at a barrier until rank 0's file is durable: the process exits next, and launchers
        tear down the remaining workers when the first one exits (torchrun on a non-zero code,
        ``srun --kill-on-bad-exit``), which must not interrupt rank 0 mid-write.
        """
        distributed.agree("save_emergency", timeout=self.collective_timeout)
        earlier_failure = self._wait_logging_failure()
        path = None
        try:
            if self.format == "dcp":  # collective; rank 0's clock names the directory on every rank
                stamp = distributed.broadcast_from_main(datetime.now())
                payload = self._payload(state, "emergency", step=step)
                path = dcp_save.manager_save(self, payload, Kind.EMERGENCY, step=step, timestamp=stamp)
            elif self.master_process:
                payload = self._payload(state, "emergency", step=step)
                name = format_name(Kind.EMERGENCY, step=step, timestamp=datetime.now())
                path = self._save_single(name, payload, retention=True)
                log.warning("emergency checkpoint saved: %s", path)
        finally:
            distributed.barrier()
        if earlier_failure is not None:
            raise earlier_failure
        return path

    def _settle(self, agree: bool = True) -> None:
        """Wait for the background save in flight and raise its error (once).

        After a sharded (collective) one, every rank raises or none does: one ``any_rank`` at this
        safe point, which every rank reaches in the same manager call (rank 0's commit may fail where
        the other ranks' writes succeeded). ``agree=False`` (an exception already propagating on
        this rank alone) waits locally: a collective there could wait for ranks that never come.
        """
        failure: Exception | None = None
        try:
            self._writer.wait()
        except Exception as exc:  # noqa: BLE001 - raised below, once the ranks agreed
            failure = exc
        collective, self._agree = self._agree, False
        if collective and agree and distributed.any_rank(failure is not None) and failure is None:
            failure = SaveError("the background sharded save failed on another rank (see that rank's log)")
        if failure is not None:
            raise failure

    def _background_group(self) -> Any:
        """The process group of non-blocking sharded saves, made at the first one (collective)."""
        if not self._group_made:
            self._group, self._group_made = distributed.background_group(), True
        return self._group

    def _background_stager(self) -> Any:
        """The stager of non-blocking sharded saves (:func:`ckptctl.formats.dcp.reusing_stager`); close() frees it."""
        if self._stager is None:
            self._stager = dcp_save.reusing_stager()
        return self._stager

    def _wait_logging_failure(self, agree: bool = True) -> BaseException | None:
        """Wait for the in-flight background save; return (and log) its failure instead of raising it."""
        try:
            self._settle(agree)
        except Exception as exc:  # noqa: BLE001 - re-raised by the caller once its own save is done
            log.error("the background save before this one failed: %s", exc)
            return exc
        return None

    def close(self) -> None:
        """Finish a background save in flight and raise its error. Saving after close() still works.

        With ``format="dcp"`` every rank calls it (an agreement on the outcome), before
        ``destroy_process_group()``: the background write needs the process group.
        """
        try:
            self._settle()
        finally:
            self._writer.close()
            if self._stager is not None:
                self._stager.close()
                self._stager = None

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # an exception is already propagating: log a background failure rather than replace it
            self._wait_logging_failure(agree=False)

    def _save_single(self, name: str, payload: dict[str, Any], retention: bool) -> Path:
        """A save that writes one file and updates nothing else."""
        with self._lock(), self._stage(name, payload) as staged:
            path = staged.commit()
            if retention:
                self._apply_retention()
        self._after_save(path, copies=0)
        return path

    def _best_decision(self, val_loss: float) -> tuple[bool, float | None]:
        """(save?, the value) as this rank sees it; in a process group rank 0's is broadcast to all."""
        better = self.is_better(val_loss)
        return better, float(val_loss) if better else None

    def is_better(self, val_loss: float) -> bool:
        """True if ``val_loss`` is finite and lower than the best so far."""
        try:
            value = float(val_loss)
        except (TypeError, ValueError):
            return False
        return math.isfinite(value) and (self.best_val_loss is None or value < self.best_val_loss)

    def _payload(self, state: Mapping[str, Any], checkpoint_type: str, **fields: Any) -> dict[str, Any]:
        """A shallow copy of the caller's dict with the layout's bookkeeping keys filled in."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        payload = dict(state)
        payload.update({key: _plain(value) for key, value in fields.items()})  # step/epoch match the file name
        rng = payload.get("rng_state")
        if isinstance(rng, Mapping) and rng.get("numpy") is not None:  # np.random.get_state() of the caller's own
            payload["rng_state"] = {**rng, "numpy": to_plain(rng["numpy"])}  # dict: plain, so torch.load opens it
        payload.setdefault("timestamp", datetime.now().astimezone().isoformat(timespec="seconds"))
        if checkpoint_type == "emergency" or "checkpoint_type" not in payload:
            payload["checkpoint_type"] = checkpoint_type
        return payload

    def _stage(self, name: str, payload: dict[str, Any]) -> durable.StagedFile:
        """Serialise once: torch.save into a verified temp file next to ``name``."""
        return durable.stage(self.directory, name, lambda fh: torch.save(payload, fh), verify=self.verify)

    def _lock(self) -> DirectoryLock:
        return DirectoryLock(self.directory, wait=self.lock_wait)

    def _path(self, kind: Kind) -> Path:
        return self.directory / format_name(kind, directory=self.format == "dcp")

    def _apply_retention(self) -> None:
        """Delete what the shared retention policy says (the same code ``ckptctl prune`` runs)."""
        plan = plan_retention(scan(self.directory, layouts=False), Policy(keep_rolling=self.keep_last_n, keep_emergency=self.keep_emergency_n))
        for decision in plan.remove:
            try:
                durable.remove_entry(decision.entry.path, decision.entry.is_directory)
            except FileNotFoundError:
                continue
            except OSError as exc:  # a file we cannot delete must not fail the save that just succeeded
                log.warning("retention could not remove %s: %s", decision.entry.name, exc.strerror or exc)
        if plan.remove:
            durable.fsync_directory(self.directory)

    # ------------------------------------------------------------------------------ monitoring

    def _after_save(self, path: Path, copies: int) -> None:
        """Every ``monitor_every`` saves, log the storage line; warn when two more saves would not fit."""
        self._saves += 1
        try:
            per_save = path.stat().st_size * (1 + (copies if self.backup_mode != durable.LINK else 0))
        except OSError:
            return
        periodic = bool(self.monitor_every) and self._saves % self.monitor_every == 0
        summary = self.storage_summary() if periodic else None
        free = summary.filesystem.free_bytes if summary else shutil.disk_usage(self.directory).free
        if summary:
            log.info(summary_line(summary))
        low = free < 2 * per_save
        if low and (periodic or not self._low_space_warned):
            log.warning(
                "low disk space for checkpoints: %d bytes free, the next two saves need about %d", free, 2 * per_save
            )
        self._low_space_warned = low

    def load_into(self, state: dict[str, Any], which: str | os.PathLike[str] = "latest") -> Path:
        """``format="dcp"``: load ``which`` into ``state`` in place, DCP resharding to its shapes (collective).

        latest -> latest_backup -> newest rolling/emergency directory; best -> best_model_previous.
        """
        self._settle()
        self.loaded_path = dcp_save.load_directory(state, self.directory, which)
        return self.loaded_path

    def storage_summary(self) -> Usage:
        """What the checkpoints occupy (hard links counted once) and what is left: ``ckptctl du``'s data."""
        return measure(self.directory)

    # ----------------------------------------------------------------------------------- loading

    def load(self, which: str | os.PathLike[str] = "latest", *, map_location: Any = "cpu", unsafe: bool = False) -> dict[str, Any]:
        """Load ``"latest"``, ``"best"``, ``"newest"`` or a path; the named chains fall back past damaged files.

        latest -> latest_backup -> rolling_last_backup -> newest rolling/emergency by step;
        best -> best_backup -> best_previous; newest: where to resume, the newest valid checkpoint
        of any kind (:func:`ckptctl.ops.resolve.resume_candidates`; why it was chosen is in
        ``self.loaded_reason``). Each fallback is logged; a directory with no checkpoint at all
        raises NoCheckpointError without logging any. ``unsafe=True`` allows
        ``weights_only=False`` (runs pickle code: only for files you trust).

        In a process group, a named chain is resolved by rank 0 and every rank loads the file rank
        0 loaded (else two ranks could fall back differently, e.g. around a save in progress); if
        any rank cannot load it, every rank raises NoCheckpointError.
        """
        self._settle()
        if which in (LATEST, BEST, NEWEST) and distributed.is_active():
            return self._load_agreed(str(which), map_location=map_location, unsafe=unsafe)
        return self._load_chain(which, map_location=map_location, unsafe=unsafe)

    def _load_agreed(self, which: str, *, map_location: Any, unsafe: bool) -> dict[str, Any]:
        """Rank 0 walks the chain and broadcasts the path (or its failure); the others load that path."""
        state: dict[str, Any] | None = None
        outcome: tuple[str, str] = ("error", "rank 0 did not answer")
        if distributed.rank() == 0:
            try:
                state = self._load_chain(which, map_location=map_location, unsafe=unsafe)
                outcome = ("path", str(self.loaded_path))
            except Exception as exc:  # every rank must learn that rank 0 failed, or they wait forever
                outcome = ("error", str(exc))
        kind, value = distributed.broadcast_from_main(outcome)
        failure = value if kind == "error" else None
        if failure is None and state is None:
            try:
                state = load_file(value, map_location=map_location, unsafe=unsafe)
                self.loaded_path = Path(value)
            except CheckpointError as exc:
                failure = f"rank {distributed.rank()} could not load {value}: {exc.reason}"
                log.error(failure)
        if distributed.any_rank(failure is not None):
            raise NoCheckpointError(failure or f"another rank could not load {value}; see its log")
        assert state is not None
        return state

    def _load_chain(self, which: str | os.PathLike[str], *, map_location: Any, unsafe: bool) -> dict[str, Any]:
        """This process's own walk down the fallback chain (see :meth:`load`)."""
        entries = scan(self.directory, layouts=False) if which in (LATEST, BEST, NEWEST) and self.directory.is_dir() else []
        if which in (LATEST, BEST, NEWEST) and not any(e.parsed.is_checkpoint for e in entries):
            raise NoCheckpointError(f"no loadable {which} checkpoint in {self.directory} (no checkpoints saved yet)")
        candidates = self._candidates(which, entries)
        tried: list[str] = []
        unusable: dict[str, str] = {}
        failed_inodes: dict[tuple[int, int], str] = {}
        for index, path in enumerate(candidates):
            following = candidates[index + 1].name if index + 1 < len(candidates) else None
            try:
                identity = _identity(path)
                if identity in failed_inodes:
                    raise UnreadableCheckpoint(f"same file as {failed_inodes[identity]} (hard link)")
                state = load_file(path, map_location=map_location, unsafe=unsafe)
            except CheckpointError as exc:
                tried.append(f"{path.name}: {exc.reason}")
                unusable[path.name] = exc.reason
                if identity is not None:
                    failed_inodes.setdefault(identity, path.name)
                if following:
                    log.warning("%s unusable (%s); falling back to %s", path.name, exc.reason, following)
                continue
            if tried:
                log.warning("loaded %s after %d fallback(s)", path.name, len(tried))
            self.loaded_path = path
            chosen = next((e for e in entries if e.path == path), None)
            self.loaded_reason = explain(chosen, entries, unusable) if which == NEWEST and chosen else ""
            return state
        detail = "; ".join(tried) if tried else "no candidates"
        raise NoCheckpointError(f"no loadable {which!s} checkpoint in {self.directory} ({detail})")

    def resume(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        which: str | os.PathLike[str] = NEWEST,
        *,
        scheduler: Any = None,
        scaler: Any = None,
        dataloader: Any = None,
        map_location: Any = "cpu",
        restore_rng: bool = True,
    ) -> Resumed:
        """Load a checkpoint into ``model``/``optimizer``/``scheduler``/``scaler``, restore RNG states,
        say where to continue.

        By default, where to resume: the newest valid checkpoint of any kind (an emergency save
        after Ctrl+C beats an older latest.pt; ``Resumed.reason`` says why), falling back past
        damaged files. A directory without any checkpoint is a first run: nothing is loaded or
        logged, and the result has ``step == 0`` (``fresh``). ``which="latest"``, ``"best"`` or a
        path load exactly that (with its fallbacks) and raise NoCheckpointError when nothing is there.

        ``dataloader``: a *stateful* loader (``state_dict``/``load_state_dict``, e.g. torchdata's
        ``StatefulDataLoader``) saved by ``build_state(dataloader=...)`` continues with the very batch
        after the saved one. A plain ``DataLoader`` has no such state: it is refused (TypeError),
        since it would restart its epoch in a new order.
        """
        _require_stateful(dataloader, "load_state_dict")
        self._settle()
        # rank 0 looks (as for best_val_loss): every rank starts fresh, or every rank loads
        if which == NEWEST and distributed.broadcast_from_main(self._nothing_saved() if distributed.is_main_process() else None):
            return Resumed(None, 0, 0, None, {}, f"no checkpoint in {self.directory} yet: starting fresh")
        state = self.load(which, map_location=map_location)
        model.load_state_dict(state["model"])
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        if dataloader is not None and state.get("dataloader_state"):
            dataloader.load_state_dict(state["dataloader_state"])
        if restore_rng:
            restore_rng_state(state.get("rng_state"))
        assert self.loaded_path is not None
        return Resumed(self.loaded_path, state.get("step"), state.get("epoch"), state.get("dataloader_state"), state,
                       self.loaded_reason or f"{self.loaded_path.name}, as asked ({which!s})")  # fmt: skip

    def _nothing_saved(self) -> bool:
        """A first run: the directory holds no checkpoint of any kind (damaged ones count: they are not nothing)."""
        if not self.directory.is_dir():
            return True
        return not any(e.parsed.is_checkpoint for e in scan(self.directory, layouts=False))

    def _candidates(self, which: str | os.PathLike[str], entries: list[Any]) -> list[Path]:
        """The orders of :mod:`ckptctl.ops.resolve` (one definition for the manager and the CLI).

        The fixed names of latest/best are tried even when absent, so a missing ``latest.pt`` is
        logged as a fallback; ``newest`` is the one rule of where to resume.
        """
        if which == NEWEST:
            return [e.path for e in resume_candidates(entries)]
        if which in (LATEST, BEST):
            fixed = LATEST_CHAIN if which == LATEST else BEST_CHAIN
            rest = [e.path for e in fallback_candidates(entries, which) if e.kind not in fixed]
            return [self._path(kind) for kind in fixed] + rest
        path = Path(which)
        if not path.exists() and not path.is_absolute() and (self.directory / path).exists():
            path = self.directory / path
        return [path]

    def _read_best_val_loss(self) -> float | None:
        """The best val_loss of an earlier run, from best_model.pt's pickle only (no tensor bytes read)."""
        for kind in (Kind.BEST, Kind.BEST_BACKUP):
            path = self._path(kind)
            if not path.exists():
                continue
            try:
                root = read_checkpoint(path).root
            except CheckpointError as exc:
                log.warning("%s unreadable (%s); trying the next best file", path.name, exc.reason)
                continue
            value = as_float(root.get("val_loss")) if isinstance(root, dict) else None
            if value is not None and math.isfinite(value):
                return value
        return None


def load_file(path: str | os.PathLike[str], *, map_location: Any = "cpu", unsafe: bool = False) -> Any:
    """Load one checkpoint with tensor values: safe reader, CRC-32 check, then ``torch.load``.

    ``weights_only=True`` with the scoped allowlist of :func:`ckptctl.formats.torch_load.safe_globals`; the safe
    reader has refused anything unsafe before torch sees the file. ``unsafe=True`` skips both
    guards and uses ``weights_only=False`` — only for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableCheckpoint("missing")
    if not unsafe:
        read_checkpoint(path)
    durable.verify_crc(path)
    try:
        if unsafe:
            return torch.load(path, map_location=map_location, weights_only=False)
        with safe_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch reports damage as RuntimeError/UnpicklingError/EOFError...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableCheckpoint(f"torch.load failed: {first_line}") from exc


def build_state(
    *,
    step: int,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    train_loss: float | None = None,
    val_loss: float | None = None,
    dataloader_state: Mapping[str, Any] | None = None,
    args: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    dataloader: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """The layout's checkpoint dict, with every RNG state captured now.

    What this adds is plain values and tensors, so ``torch.load(path)`` with torch's default
    ``weights_only=True`` opens the file outside ckptctl: RNG states as plain values
    (:mod:`ckptctl.training.rng`), ``args`` as a dict (a Namespace's attributes) with paths as strings and
    numpy numbers as Python numbers, numpy-number step/epoch/losses as Python numbers. Tensor
    losses stay tensors (``list`` and ``inspect`` read 0-d tensors as numbers).

    ``scheduler`` (an LR scheduler) and ``scaler`` (``torch.amp.GradScaler``) are stored as their
    ``state_dict()`` under ``"scheduler"``/``"scaler"``; ``resume(scheduler=, scaler=)`` loads them back.
    ``dataloader``: a stateful loader (``state_dict``/``load_state_dict``, e.g. torchdata's
    ``StatefulDataLoader``), whose ``state_dict()`` becomes ``dataloader_state`` (instead of the
    ``dataloader_state`` argument); ``resume(dataloader=)`` restores its exact position.
    """
    _require_stateful(dataloader, "state_dict")
    if dataloader is not None:
        dataloader_state = dataloader.state_dict()
    state = {
        "step": _plain(step),
        "epoch": _plain(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "train_loss": _plain(train_loss),
        "val_loss": _plain(val_loss),
        "rng_state": capture_rng_state(),
        "dataloader_state": dict(dataloader_state or {}),
        "args": _plain(vars(args) if hasattr(args, "__dict__") and not isinstance(args, Mapping) else args),
    }
    for key, owner in (("scheduler", scheduler), ("scaler", scaler)):
        if owner is not None:  # an object, or its state_dict() already taken
            state[key] = owner.state_dict() if callable(getattr(owner, "state_dict", None)) else owner
    return {**state, **extra}


def _require_stateful(dataloader: Any, method: str) -> None:
    """A loader without ``state_dict``/``load_state_dict`` cannot be resumed mid-epoch: say so, early."""
    if dataloader is not None and not callable(getattr(dataloader, method, None)):
        raise TypeError(
            f"{type(dataloader).__name__} has no {method}(): its position cannot be saved or restored "
            "(use a stateful loader such as torchdata.stateful_dataloader.StatefulDataLoader)"
        )


def _plain(value: Any) -> Any:
    """``value`` with what torch's default ``weights_only`` load refuses made plain: numpy numbers
    (``np.float64``) as Python numbers, paths as strings, inside dicts, lists and tuples too."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if type(value) in (list, tuple):  # exactly: a namedtuple's constructor takes no iterable
        return type(value)(_plain(item) for item in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return value


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino
