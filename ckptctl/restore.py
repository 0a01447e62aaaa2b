"""``ckptctl restore`` as data: plan which file replaces which, then execute it atomically and durably.

Three plans, one executor:

- :func:`plan_heal` makes a directory resumable again: an invalid or missing ``latest.pt`` is
  replaced by the newest valid of latest_backup / rolling_last_backup / rolling / emergency, an
  invalid or missing ``best_model.pt`` by ``best_model_backup.pt`` (never silently by
  ``best_model_previous.pt``: that is a different model, promoted only by an explicit rollback).
- :func:`plan_from` puts a named file in place of latest or best.
- :func:`plan_rollback_best` promotes ``best_model_previous.pt`` (the "validation spike" case).

"Valid" is :func:`ckptctl.integrity.validate_file` at the default level (structure, safe
unpickle, CRC-32 of every record, layout keys). A replaced file is never destroyed: it is kept as
``<name>.replaced-<YYYYmmdd_HHMMSS>``, which the filename grammar classifies as a foreign file (not
a checkpoint, not a partial write), unless ``discard``. :func:`execute` takes the directory lock,
checks that nothing changed since planning (a save may have landed meanwhile), stages each
source as a verified temp file (:func:`ckptctl.durable.stage_copy`), keeps the old file under its
new name (a hard link, so the target name never disappears), then renames the temp file over the
target and fsyncs the directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from . import durable
from .catalog import Entry, check_directory, scan
from .errors import BadInputError, CheckpointError
from .integrity import DEFAULT, FileResult, validate_file
from .locking import DirectoryLock
from .naming import FIXED_NAMES, Kind, format_name, parse
from .resolve import LATEST, fallback_candidates
from .sharded import set_pointer

TO_LATEST = "latest"
TO_BEST = "best"
TARGETS = (TO_LATEST, TO_BEST)
REPLACED_MARK = ".replaced-"
STAMP_FORMAT = "%Y%m%d_%H%M%S"

LATEST_NAME = FIXED_NAMES[Kind.LATEST]
BEST_NAME = FIXED_NAMES[Kind.BEST]
BEST_BACKUP_NAME = FIXED_NAMES[Kind.BEST_BACKUP]
BEST_PREVIOUS_NAME = FIXED_NAMES[Kind.BEST_PREVIOUS]

Identity = tuple[int, int, int] | None  # (inode, mtime_ns, size) of a file, None when absent


@dataclass
class Check:
    """A file examined while planning, with its verdict (shown so the plan explains itself)."""

    name: str
    valid: bool
    problems: list[str]
    step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "valid": self.valid, "problems": self.problems, "step": self.step}


@dataclass
class Action:
    """Replace ``target`` (a name in the directory) with the content of ``source``."""

    target: str
    source: Path
    reason: str
    keep_as: str | None  # the name the current target is kept under; None: absent or discarded
    step: int | None = None  # the source's step, when it has one
    target_identity: Identity = None
    source_identity: Identity = None
    status: str = "planned"  # planned / done / skipped
    mode_used: str | None = None
    note: str | None = None
    pointer: bool = False  # sharded (DCP) layout: ``target`` is a symlink re-pointed at ``source``

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "source": str(self.source),
            "reason": self.reason,
            "keep_as": self.keep_as,
            "step": self.step,
            "status": self.status,
            "mode": self.mode_used,
            "note": self.note,
        }


@dataclass
class RestorePlan:
    """Actions to take, files checked on the way, and what could not be restored (exit 1)."""

    directory: Path
    kind: str  # heal / from / rollback-best
    actions: list[Action] = field(default_factory=list)
    checked: list[Check] = field(default_factory=list)
    unrestorable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mode: str = durable.REFLINK
    executed: bool = False

    @property
    def ok(self) -> bool:
        return not self.unrestorable and all(a.status != "skipped" for a in self.actions)

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "plan": self.kind,
            "executed": self.executed,
            "ok": self.ok,
            "mode": self.mode,
            "actions": [a.to_json() for a in self.actions],
            "checked": [c.to_json() for c in self.checked],
            "unrestorable": list(self.unrestorable),
            "notes": list(self.notes),
        }


Validator = Callable[[Path], FileResult]


class _Planner:
    """Shared planning state: the scan, cached verdicts, the replaced-name stamp."""

    def __init__(self, directory: str | os.PathLike[str], kind: str, *, discard: bool, mode: str,
                 now: datetime | None, validator: Validator | None):  # fmt: skip
        if mode not in durable.MODES:
            raise BadInputError(f"unknown copy mode {mode!r} (choose from {', '.join(durable.MODES)})")
        self.directory = check_directory(directory)
        self.entries = scan(self.directory)
        self.plan = RestorePlan(self.directory, kind, mode=mode)
        self.discard = discard
        self.stamp = (now or datetime.now()).strftime(STAMP_FORMAT)
        self.validator = validator or (lambda path: validate_file(path, DEFAULT))
        self.verdicts: dict[Path, FileResult] = {}

    def entry(self, kind: Kind) -> Entry | None:
        return next((e for e in self.entries if e.kind is kind), None)

    def verdict(self, path: Path, step: int | None = None) -> FileResult:
        if path not in self.verdicts:
            result = self.validator(path)
            self.verdicts[path] = result
            self.plan.checked.append(Check(path.name, result.valid, list(result.problems), step))
        return self.verdicts[path]

    def replace(self, target: str, source: Path, reason: str, step: int | None = None) -> None:
        path = self.directory / target
        exists = _identity(path) is not None
        keep_as = None if self.discard or not exists else self.kept_name(target)
        self.plan.actions.append(
            Action(target, source, reason, keep_as, step, _identity(path), _identity(source))
        )

    def kept_name(self, target: str) -> str:
        """``<target>.replaced-<stamp>``, with a counter if that name is taken (never overwrite)."""
        base = f"{target}{REPLACED_MARK}{self.stamp}"
        taken = {e.name for e in self.entries} | {a.keep_as for a in self.plan.actions}
        name, counter = base, 1
        while name in taken or os.path.lexists(self.directory / name):
            name, counter = f"{base}-{counter}", counter + 1
        return name


def _identity(path: Path) -> Identity:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _state(planner: _Planner, name: str) -> tuple[bool, str]:
    """(usable, description) of a target file: 'missing', 'invalid: <problem>' or 'valid'."""
    path = planner.directory / name
    if _identity(path) is None:
        return False, "missing"
    result = planner.verdict(path)
    return (True, "valid") if result.valid else (False, _invalid(result))


def _invalid(result: FileResult) -> str:
    return f"invalid ({'; '.join(result.problems)})"


# ---------------------------------------------------------------------------------------- heal


def plan_heal(directory: str | os.PathLike[str], *, discard: bool = False, mode: str = durable.REFLINK,
              now: datetime | None = None, validator: Validator | None = None) -> RestorePlan:  # fmt: skip
    """Make ``directory`` resumable again; ``unrestorable`` lists what no valid file could replace."""
    planner = _Planner(directory, "heal", discard=discard, mode=mode, now=now, validator=validator)
    if not any(e.parsed.is_checkpoint for e in planner.entries):
        raise BadInputError(f"no checkpoints in {planner.directory} (no file matches the checkpoint names)")
    if _is_sharded(planner.entries):
        _heal_latest_pointer(planner)
        return planner.plan
    _heal_latest(planner)
    _heal_best(planner)
    return planner.plan


def _is_sharded(entries: list[Entry]) -> bool:
    """A directory of sharded (DCP) checkpoints: checkpoint directories and no checkpoint files."""
    named = [e for e in entries if e.parsed.is_checkpoint]
    return bool(named) and all(e.is_directory for e in named)


def _heal_latest_pointer(planner: _Planner) -> None:
    """Sharded layout: ``latest`` is a symlink; when it is missing, dangling or names an invalid
    directory, point it at the newest valid rolling/emergency directory (nothing is copied, and
    the old link is not kept: the directory it named stays under its own name).
    ``best_model/`` has no backup copy in this layout, so it is not healed here."""
    name = format_name(Kind.LATEST, directory=True)
    usable, state = _state(planner, name)
    if usable:
        return
    candidates = [e for e in planner.entries if e.is_directory and e.kind in (Kind.ROLLING, Kind.EMERGENCY)]
    for entry, step in _newest_first(candidates):
        if planner.verdict(entry.path, step).valid:
            path = planner.directory / name
            planner.plan.actions.append(
                Action(name, entry.path, f"{name} is {state}; newest valid is {entry.name}", None, step,
                       _identity(path), _identity(entry.path), pointer=True)  # fmt: skip
            )
            return
    tried = ", ".join(e.name for e in candidates) or "no rolling or emergency checkpoints"
    planner.plan.unrestorable.append(f"{name} is {state} and nothing valid is left to point it at (tried: {tried})")


def _heal_latest(planner: _Planner) -> None:
    usable, state = _state(planner, LATEST_NAME)
    if usable:
        return
    candidates = [e for e in fallback_candidates(planner.entries, LATEST) if e.kind is not Kind.LATEST]
    for entry, step in _newest_first(candidates):
        if planner.verdict(entry.path, step).valid:
            planner.replace(LATEST_NAME, entry.path, f"{LATEST_NAME} is {state}; newest valid is {entry.name}", step)
            return
    tried = ", ".join(e.name for e in candidates) or "no backup, rolling or emergency checkpoints"
    planner.plan.unrestorable.append(f"{LATEST_NAME} is {state} and nothing valid is left to restore it from (tried: {tried})")


def _newest_first(candidates: list[Entry]) -> list[tuple[Entry, int | None]]:
    """Highest step first (from the name, else the metadata); equal steps keep the fallback order."""
    stepped = [(entry, entry.effective_step) for entry in candidates]
    order = sorted(range(len(stepped)), key=lambda i: (stepped[i][1] is None, -(stepped[i][1] or 0), i))
    return [stepped[i] for i in order]


def _heal_best(planner: _Planner) -> None:
    has_best_files = any(planner.entry(k) for k in (Kind.BEST, Kind.BEST_BACKUP, Kind.BEST_PREVIOUS))
    if not has_best_files:
        return
    usable, state = _state(planner, BEST_NAME)
    if usable:
        return
    backup = planner.entry(Kind.BEST_BACKUP)
    if backup is not None and planner.verdict(backup.path, backup.effective_step).valid:
        planner.replace(BEST_NAME, backup.path, f"{BEST_NAME} is {state}; {BEST_BACKUP_NAME} is valid", backup.effective_step)
        return
    why = "missing" if backup is None else "invalid"
    message = f"{BEST_NAME} is {state} and {BEST_BACKUP_NAME} is {why}"
    previous = planner.entry(Kind.BEST_PREVIOUS)
    if previous is not None and planner.verdict(previous.path, previous.effective_step).valid:
        message += f"; {BEST_PREVIOUS_NAME} is valid but holds the model before the best: promote it with --rollback-best"
    planner.plan.unrestorable.append(message)


# --------------------------------------------------------------------------------- explicit forms


def plan_from(directory: str | os.PathLike[str], source: str | os.PathLike[str], to: str, *, discard: bool = False,
              mode: str = durable.REFLINK, now: datetime | None = None, validator: Validator | None = None) -> RestorePlan:  # fmt: skip
    """Replace latest (``latest.pt``) or best (``best_model.pt`` and its backup) with ``source``."""
    if to not in TARGETS:
        raise BadInputError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    planner = _Planner(directory, "from", discard=discard, mode=mode, now=now, validator=validator)
    path = _source_path(planner.directory, source)
    targets = [LATEST_NAME] if to == TO_LATEST else [BEST_NAME, BEST_BACKUP_NAME]
    if _same_file(path, planner.directory / targets[0]):
        raise BadInputError(f"{path} is {targets[0]} itself: nothing to restore")
    result = planner.verdict(path)
    if not result.valid:
        planner.plan.unrestorable.append(f"{path.name} is {_invalid(result)}; nothing was changed")
        return planner.plan
    step = parse(path.name).step
    step = step if step is not None else _metadata_step(path)
    for target in targets:
        if not _same_file(path, planner.directory / target):
            planner.replace(target, path, f"--from {path.name} --to {to}", step)
    return planner.plan


def plan_rollback_best(directory: str | os.PathLike[str], *, discard: bool = False, mode: str = durable.REFLINK,
                       now: datetime | None = None, validator: Validator | None = None) -> RestorePlan:  # fmt: skip
    """Promote ``best_model_previous.pt`` to best (and best backup); the replaced best is kept."""
    planner = _Planner(directory, "rollback-best", discard=discard, mode=mode, now=now, validator=validator)
    previous = planner.directory / BEST_PREVIOUS_NAME
    usable, state = _state(planner, BEST_PREVIOUS_NAME)
    if not usable:
        planner.plan.unrestorable.append(f"{BEST_PREVIOUS_NAME} is {state}: nothing to roll back to")
        return planner.plan
    step = _metadata_step(previous)
    for target in (BEST_NAME, BEST_BACKUP_NAME):
        planner.replace(target, previous, f"roll back: {BEST_PREVIOUS_NAME} becomes {target}", step)
    return planner.plan


def _source_path(directory: Path, source: str | os.PathLike[str]) -> Path:
    """``--from`` as given, else as a name inside the directory; BadInputError when neither exists."""
    for path in (Path(source), directory / source):
        if path.is_file():
            return path
    raise BadInputError(f"no such file: {source} (give a path, or a file name inside {directory})")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _metadata_step(path: Path) -> int | None:
    from .catalog import entry_for_file

    return entry_for_file(path).effective_step


# --------------------------------------------------------------------------------------- execute


def execute(plan: RestorePlan, *, wait: float = 0.0) -> RestorePlan:
    """Carry out the plan's actions under the directory lock; LockedError after ``wait`` seconds.

    An action whose target or source changed since planning is skipped (``status`` says why), so
    nothing the user did not see is replaced. A failed write raises SaveError; earlier actions stay
    done and the failing target is untouched.
    """
    if not plan.actions:
        plan.executed = True
        return plan
    with DirectoryLock(plan.directory, wait=wait):
        for action in plan.actions:
            _execute_action(plan, action)
    plan.executed = True
    return plan


def _execute_action(plan: RestorePlan, action: Action) -> None:
    target = plan.directory / action.target
    if _identity(target) != action.target_identity or _identity(action.source) != action.source_identity:
        action.status, action.note = "skipped", "changed since the plan was made (a save ran meanwhile?); run restore again"
        return
    if action.pointer:
        set_pointer(plan.directory, Kind.LATEST, action.source.name)
        action.status, action.mode_used = "done", "symlink"
        return
    staged, action.mode_used = durable.stage_copy(action.source, plan.directory, action.target, plan.mode)
    with staged:
        if action.keep_as is not None:
            _keep(target, plan.directory / action.keep_as)
        staged.commit()
    action.status = "done"


def _keep(target: Path, kept: Path) -> None:
    """A second name for the file about to be replaced: a hard link (a copy where links fail)."""
    if os.path.lexists(kept):
        raise CheckpointError(f"{kept.name} exists already; refusing to overwrite it")
    durable.link_or_copy(target, kept, durable.LINK)
