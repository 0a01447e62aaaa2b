"""``ckptctl restore`` as data: plan which file replaces which, then execute it atomically and durably.

Three plans, one executor:

- :func:`plan_heal` makes a directory resumable again: a damaged, missing, dangling or looping
  ``latest.pt`` is replaced by where to resume (:func:`ckptctl.ops.resolve.resume_candidates`: the
  newest valid checkpoint of any kind, by step then save time), a damaged or missing
  ``best_model.pt`` by ``best_model_backup.pt`` (never silently by ``best_model_previous.pt``: that
  is a different model, promoted only by an explicit rollback). It heals *damage* only: an intact
  file is never replaced, whatever its content findings (a missing ``epoch`` key is no damage), so
  a newer intact checkpoint is never replaced by an older one. When a checkpoint newer than an
  intact ``latest.pt`` exists (an emergency save after Ctrl+C), the plan says so in
  ``resume_from`` and changes nothing. A file that cannot be read (permission) is not damage
  either: it is reported in ``inaccessible`` and left alone.
- :func:`plan_from` puts a named file in place of latest or best.
- :func:`plan_rollback_best` promotes ``best_model_previous.pt`` (the "validation spike" case).

Another framework's layout (:mod:`ckptctl.ops.foreign`): :func:`plan_heal` heals the layout's
pointers. A Lightning ``last.ckpt`` symlink that is dangling, looping or stale is re-pointed
(atomically) at the newest complete, valid checkpoint; a ``last.ckpt`` that is a copy and damaged is
replaced by a staged copy of it, like a damaged ``latest.pt`` (the old file kept as
``last.ckpt.replaced-<stamp>``); a DeepSpeed ``latest`` tag file (``Pointer.tag_file``) naming a missing
or damaged tag, or missing, or a dangling symlink, is rewritten atomically as a file
(:func:`ckptctl.durable.write_text_atomic`) to the newest complete, valid tag, the old one kept. This
is the only place a layout's pointer is healed: the layouts say what a pointer is, restore writes it. A stale copy or tag file is reported, not changed (restore heals damage only).
``--from``/``--to`` and ``--rollback-best`` are about ckptctl's own names: bad input there.

"Valid" is :func:`ckptctl.ops.integrity.validate_file`'s integrity verdict at the default level
(structure, safe unpickle, CRC-32 of every record). A replaced file is never destroyed: it is kept as
``<name>.replaced-<YYYYmmdd_HHMMSS>``, which the filename grammar classifies as a foreign file (not
a checkpoint, not a partial write), unless ``discard``. :func:`execute` takes the directory lock,
checks that nothing changed since planning (a save may have landed meanwhile), stages each
source as a verified temp file (:func:`ckptctl.durable.stage_copy`), keeps the old file under its
new name (a hard link, so the target name never disappears), then renames the temp file over the
target and fsyncs the directory.

Sharded (DCP) layout (a directory whose checkpoints are all directories): ``latest`` is a symlink,
so healing it and ``--to latest`` re-point it atomically (:func:`ckptctl.formats.dcp.repoint`; the old
link is kept as ``latest.replaced-<stamp>``, nothing is copied); ``best_model/`` is a directory,
so ``--to best`` and ``--rollback-best`` copy the source directory to a verified temp directory
(:func:`ckptctl.durable.stage_copy_directory`) and swap it into place atomically, the old one then
renamed to ``best_model.replaced-<stamp>`` (:func:`ckptctl.formats.dcp.commit_directory`). There is
no best_model_backup to heal from.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .. import durable
from ..layouts.catalog import Entry, check_directory, scan
from ..errors import BadInputError, CheckpointError, CkptctlError, SaveError
from .integrity import CHECKED, DEFAULT, FileResult, validate_file
from ..locking import DirectoryLock
from ..layouts.naming import FIXED_NAMES, REPLACED_MARK, Kind, format_name, parse
from .resolve import explain, resume_candidates
from ..durable import repoint
from ..layouts.base import POINTER_DAMAGED, POINTER_DANGLING, POINTER_LOOP, POINTER_STALE, Pointer, Unit
from .foreign import Run, Verdict, choose_resume, detect, incomplete_reason, open_run, unit_verdict

FILE, POINTER, DIRECTORY = "file", "pointer", "directory"  # how an Action replaces its target
TAG = "tag"  # another framework's tag file (DeepSpeed ``latest``): rewritten with the source's name
TO_LATEST = "latest"
TO_BEST = "best"
TARGETS = (TO_LATEST, TO_BEST)
STAMP_FORMAT = "%Y%m%d_%H%M%S"
NO_BEST_YET = "no best model saved yet (no best_model file and no backup of one)"

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
    status: str = "valid"  # the integrity verdict: valid / invalid / unsafe / inaccessible
    findings: list[str] = field(default_factory=list)  # content findings: shown, never acted on
    checked: str = "crc"  # what the verdict rests on (integrity.CHECKED; docs/json.md)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "valid": self.valid, "status": self.status, "checked": self.checked,
                "problems": self.problems, "findings": self.findings, "step": self.step}  # fmt: skip


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
    how: str = FILE  # FILE: staged copy; sharded (DCP) layout: POINTER re-points a symlink, DIRECTORY copies one
    broken_link: bool = False  # the target is a dangling or looping symlink (replaced, not kept)

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
    inaccessible: list[str] = field(default_factory=list)  # files restore could not read: left alone
    resume_from: Check | None = None  # heal: where to resume once the plan is done
    resume_reason: str = ""
    layout: str = "ckptctl"  # another framework's layout id (``lightning``) when the directory is one
    pointers: list[dict[str, Any]] = field(default_factory=list)  # that layout's pointers as found

    @property
    def ok(self) -> bool:
        return not self.unrestorable and all(a.status != "skipped" for a in self.actions)

    @property
    def exit_code(self) -> int:
        """1 when something could not be restored (or an action was skipped); else 2 when a file
        could not be read (permission: not damage, nothing replaced it); else 0."""
        if not self.ok:
            return 1
        return 2 if self.inaccessible else 0

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
            "inaccessible": list(self.inaccessible),
            "notes": list(self.notes),
            "resume_from": None if self.resume_from is None else {
                "name": self.resume_from.name, "step": self.resume_from.step, "reason": self.resume_reason},
            "layout": self.layout,
            "pointers": list(self.pointers),
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
        self.sharded = _is_sharded(self.entries)

    def name(self, kind: Kind) -> str:
        """The layout's name for ``kind``: ``latest.pt``, or ``latest`` in a sharded directory."""
        return format_name(kind, directory=self.sharded)

    def entry(self, kind: Kind) -> Entry | None:
        return next((e for e in self.entries if e.kind is kind), None)

    def verdict(self, path: Path, step: int | None = None) -> FileResult:
        if path not in self.verdicts:
            result = self.validator(path)
            self.verdicts[path] = result
            if step is None and result.valid:  # best_model.pt, --from FILE: the step is in its metadata
                step = _metadata_step_or_none(path)
            self.plan.checked.append(Check(path.name, result.valid, list(result.problems), step, result.status,
                                           list(result.findings), _checked(result)))  # fmt: skip
            if result.inaccessible:  # not damage: never replaced, never used as a source; reported once
                self.plan.inaccessible.append(f"{path.name}: {'; '.join(result.problems)}; fix its permissions "
                                              "(restore neither replaces nor uses a file it cannot read)")  # fmt: skip
        return self.verdicts[path]

    def replace(self, target: str, source: Path, reason: str, step: int | None = None, how: str = FILE) -> None:
        """Plan ``target`` <- ``source``; what is there now is kept as ``<target>.replaced-<stamp>``.

        A pointer's identity is the link itself (lstat): a dangling one is kept too, as a record."""
        path = self.directory / target
        identity = _identity(path, follow=how != POINTER)
        # A broken link to a file holds no data, and a copy of it would point at the healed file: not kept.
        broken = how == FILE and identity is not None and _broken_link(path) is not None
        keep_as = None if self.discard or identity is None or broken else self.kept_name(target)
        self.plan.actions.append(Action(target, source, reason, keep_as, step, identity, _identity(source), how=how,
                                        broken_link=broken))  # fmt: skip

    def kept_name(self, target: str) -> str:
        """``<target>.replaced-<stamp>``, with a counter if that name is taken (never overwrite)."""
        base = f"{target}{REPLACED_MARK}{self.stamp}"
        taken = {e.name for e in self.entries} | {a.keep_as for a in self.plan.actions}
        name, counter = base, 1
        while name in taken or os.path.lexists(self.directory / name):
            name, counter = f"{base}-{counter}", counter + 1
        return name


def _identity(path: Path, follow: bool = True) -> Identity:
    """(inode, mtime, size) of what ``path`` names; of the link itself when it dangles or loops
    (a broken pointer is still something that is there); None when nothing has the name."""
    try:
        info = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        if not follow or not os.path.islink(path):
            return None
        info = os.lstat(path)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        info = os.lstat(path)
    return info.st_ino, info.st_mtime_ns, info.st_size


def _broken_link(path: Path) -> str | None:
    """'a dangling symlink (to X)' or 'a symlink loop' for a pointer that leads nowhere, else None."""
    try:
        os.stat(path)
        return None
    except FileNotFoundError:
        if not os.path.islink(path):
            return None
        return f"a dangling symlink (to {os.readlink(path)}, which does not exist)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop (a pointer that never reaches a file)"
        raise


def _state(planner: _Planner, name: str) -> tuple[bool, str]:
    """(usable, description) of a target file: 'missing', 'a dangling symlink ...', 'a symlink
    loop ...', 'invalid (<problems>)', 'inaccessible ...' or 'valid'. Only an intact file is usable;
    an inaccessible one is recorded in the plan's ``inaccessible`` (callers leave it alone)."""
    path = planner.directory / name
    if not os.path.lexists(path):
        return False, "missing"
    broken = _broken_link(path)
    if broken is not None:
        return False, broken
    result = planner.verdict(path)
    if result.inaccessible:
        return False, "inaccessible"
    return (True, "valid") if result.valid else (False, _invalid(result))


def _invalid(result: FileResult) -> str:
    return f"invalid ({'; '.join(result.problems)})"


# ---------------------------------------------------------------------------------------- heal


def plan_heal(directory: str | os.PathLike[str], *, discard: bool = False, mode: str = durable.REFLINK,
              now: datetime | None = None, validator: Validator | None = None,
              unit_check: Verdict | None = None) -> RestorePlan:  # fmt: skip
    """Make ``directory`` resumable again; ``unrestorable`` lists what no valid file could replace.

    ``unit_check`` (another framework's layout): a unit's verdict, None when complete and valid
    (default :func:`ckptctl.ops.foreign.unit_verdict`)."""
    run = open_run(directory)
    if run is not None:
        return _plan_heal_run(run, discard=discard, mode=mode, now=now, verdict=unit_check or unit_verdict)
    planner = _Planner(directory, "heal", discard=discard, mode=mode, now=now, validator=validator)
    if not any(e.parsed.is_checkpoint for e in planner.entries):
        raise BadInputError(f"no checkpoints in {planner.directory} (no file matches the checkpoint names)")
    if planner.sharded:
        _heal_latest_pointer(planner)
    else:
        _heal_latest(planner)
    _heal_best(planner)
    return planner.plan


def _is_sharded(entries: list[Entry]) -> bool:
    """A directory of sharded (DCP) checkpoints: checkpoint directories and no checkpoint files."""
    named = [e for e in entries if e.parsed.is_checkpoint]
    return bool(named) and all(e.is_directory for e in named)


def _heal_latest_pointer(planner: _Planner) -> None:
    """Sharded layout: ``latest`` is a symlink; when it is missing, dangling or names an invalid
    directory, point it at where to resume among the rolling/emergency/epoch directories
    (:func:`ckptctl.ops.resolve.resume_candidates`' order; pointers and best_model/ left out: ``latest``
    names a directory no later save renames). Nothing is copied; the old link is kept as
    ``latest.replaced-<stamp>`` (a record of what it named) unless ``discard``."""
    name = planner.name(Kind.LATEST)
    usable, state = _state(planner, name)
    if usable or state == "inaccessible":
        return
    candidates = [e for e in resume_candidates(planner.entries) if e.kind in (Kind.ROLLING, Kind.EMERGENCY, Kind.EPOCH)]
    for entry in candidates:
        if planner.verdict(entry.path, entry.effective_step).valid:
            planner.replace(name, entry.path, f"{name} is {state}; newest valid is {entry.name}", entry.effective_step,
                            how=POINTER)  # fmt: skip
            _resume_from(planner, entry, {name: state})
            return
    tried = ", ".join(e.name for e in candidates) or "no rolling or emergency checkpoints"
    planner.plan.unrestorable.append(f"{name} is {state} and nothing valid is left to point it at (tried: {tried})")


def _heal_latest(planner: _Planner) -> None:
    """latest.pt <- where to resume, when latest.pt is damaged, missing or a broken link; when it
    is intact, nothing is replaced and ``resume_from`` names any newer valid checkpoint."""
    usable, state = _state(planner, LATEST_NAME)
    if state == "inaccessible":
        return
    candidates = resume_candidates(planner.entries)
    unusable = {} if usable else {LATEST_NAME: state}
    for entry in candidates:
        if entry.kind is Kind.LATEST and not usable:
            continue
        if not planner.verdict(entry.path, entry.effective_step).valid:
            unusable[entry.name] = _invalid(planner.verdicts[entry.path])
            continue
        _resume_from(planner, entry, unusable)
        if not usable:
            planner.replace(LATEST_NAME, entry.path, f"{LATEST_NAME} is {state}; newest valid is {entry.name}",
                            entry.effective_step)  # fmt: skip
        elif entry.kind is not Kind.LATEST:
            planner.plan.notes.append(f"resume from {planner.plan.resume_reason}; {LATEST_NAME} is intact and is "
                                      "not replaced (restore heals damage only)")  # fmt: skip
        return
    if usable:
        return
    tried = ", ".join(e.name for e in candidates if e.kind is not Kind.LATEST) or "no backup, rolling or emergency checkpoints"
    planner.plan.unrestorable.append(f"{LATEST_NAME} is {state} and nothing valid is left to restore it from (tried: {tried})")


def _resume_from(planner: _Planner, entry: Entry, unusable: dict[str, str]) -> None:
    """Record where to resume (the entry chosen by the one rule) and why."""
    check = next(c for c in planner.plan.checked if c.name == entry.name)
    if check.step is None:
        check.step = entry.effective_step  # latest.pt: its step is in the metadata
    planner.plan.resume_from = check
    planner.plan.resume_reason = explain(entry, planner.entries, unusable)


def _heal_best(planner: _Planner) -> None:
    """best <- best_backup; never silently best_previous (a different model: ``--rollback-best``).
    The sharded layout keeps no best_model_backup, so there a damaged best_model/ is reported."""
    has_best_files = any(planner.entry(k) for k in (Kind.BEST, Kind.BEST_BACKUP, Kind.BEST_PREVIOUS))
    if not has_best_files and not os.path.lexists(planner.directory / planner.name(Kind.BEST)):
        planner.plan.notes.append(NO_BEST_YET)
        return
    best, backup_name, previous_name = (planner.name(k) for k in (Kind.BEST, Kind.BEST_BACKUP, Kind.BEST_PREVIOUS))
    usable, state = _state(planner, best)
    if usable or state == "inaccessible":
        return
    backup = planner.entry(Kind.BEST_BACKUP)
    if backup is not None and planner.verdict(backup.path, backup.effective_step).valid:
        planner.replace(best, backup.path, f"{best} is {state}; {backup_name} is valid", backup.effective_step)
        return
    if planner.sharded:
        message = f"{best} is {state} and the sharded layout keeps no {backup_name}"
    else:
        message = f"{best} is {state} and {backup_name} is {'missing' if backup is None else 'invalid'}"
    previous = planner.entry(Kind.BEST_PREVIOUS)
    if previous is not None and planner.verdict(previous.path, previous.effective_step).valid:
        message += f"; {previous_name} is valid but holds the model before the best: promote it with --rollback-best"
    planner.plan.unrestorable.append(message)


# --------------------------------------------------------------------------------- explicit forms


def plan_from(directory: str | os.PathLike[str], source: str | os.PathLike[str], to: str, *, discard: bool = False,
              mode: str = durable.REFLINK, now: datetime | None = None, validator: Validator | None = None) -> RestorePlan:  # fmt: skip
    """Replace latest (``latest.pt``) or best (``best_model.pt`` and its backup) with ``source``.

    Sharded layout: ``--to latest`` re-points the ``latest`` symlink at a rolling, emergency or epoch
    directory inside ``directory``; ``--to best`` copies ``source`` (any sharded checkpoint) to ``best_model/``.
    """
    if to not in TARGETS:
        raise BadInputError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    _refuse_foreign(directory, "--from/--to")
    planner = _Planner(directory, "from", discard=discard, mode=mode, now=now, validator=validator)
    path = _source_path(planner.directory, source, planner.sharded)
    how = FILE if not planner.sharded else POINTER if to == TO_LATEST else DIRECTORY
    if planner.sharded:
        targets = [planner.name(Kind.LATEST if to == TO_LATEST else Kind.BEST)]
    else:
        targets = [LATEST_NAME] if to == TO_LATEST else [BEST_NAME, BEST_BACKUP_NAME]
    if _same_file(path, planner.directory / targets[0]):
        raise BadInputError(f"{path} is {targets[0]} itself: nothing to restore")
    named = _pointer_target(planner.directory, path) if how == POINTER else path
    result = planner.verdict(path)
    if not result.valid:
        planner.plan.unrestorable.append(f"{path.name} is {_invalid(result)}; nothing was changed")
        return planner.plan
    step = parse(named.name, directory=planner.sharded).step
    step = step if step is not None else _metadata_step(path)
    for target in targets:
        if not _same_file(path, planner.directory / target):
            planner.replace(target, named, f"--from {path.name} --to {to}", step, how)
    return planner.plan


def plan_rollback_best(directory: str | os.PathLike[str], *, discard: bool = False, mode: str = durable.REFLINK,
                       now: datetime | None = None, validator: Validator | None = None) -> RestorePlan:  # fmt: skip
    """Promote ``best_model_previous.pt`` to best (and best backup); the replaced best is kept.
    Sharded layout: ``best_model_previous/`` is copied to ``best_model/`` (and stays)."""
    _refuse_foreign(directory, "--rollback-best")
    planner = _Planner(directory, "rollback-best", discard=discard, mode=mode, now=now, validator=validator)
    previous_name = planner.name(Kind.BEST_PREVIOUS)
    previous = planner.directory / previous_name
    usable, state = _state(planner, previous_name)
    if not usable:
        planner.plan.unrestorable.append(f"{previous_name} is {state}: nothing to roll back to")
        return planner.plan
    step = _metadata_step(previous)
    targets = [planner.name(Kind.BEST)] if planner.sharded else [BEST_NAME, BEST_BACKUP_NAME]
    for target in targets:
        planner.replace(target, previous, f"roll back: {previous_name} becomes {target}", step,
                        DIRECTORY if planner.sharded else FILE)  # fmt: skip
    return planner.plan


def _source_path(directory: Path, source: str | os.PathLike[str], sharded: bool) -> Path:
    """``--from`` as given, else as a name inside the directory: a file, or in a sharded layout a
    checkpoint directory. BadInputError when neither exists or the kind does not match the layout."""
    for path in (Path(source), directory / source):
        if path.is_file() or path.is_dir():
            break
    else:
        raise BadInputError(f"no such file: {source} (give a path, or a file name inside {directory})")
    if path.is_dir() and not sharded:
        raise BadInputError(f"{path} is a directory; {directory} holds single-file checkpoints: give a .pt file")
    if path.is_file() and sharded:
        raise BadInputError(f"{path} is a file; {directory} holds sharded (DCP) checkpoint directories: give one of them")
    return path


def _pointer_target(directory: Path, path: Path) -> Path:
    """The directory ``latest`` will name for ``--from path``: inside ``directory`` (the link is relative),
    a rolling, emergency or epoch checkpoint (``best_model`` is renamed by the next save_best, and a
    pointer would then follow the name to another model). ``latest_backup`` stands for its target."""
    real = path.resolve()
    kind = parse(real.name, directory=True).kind
    if real.parent != directory.resolve() or kind not in (Kind.ROLLING, Kind.EMERGENCY, Kind.EPOCH):
        raise BadInputError(
            f"latest can only point at a rolling, emergency or epoch directory inside {directory}; "
            f"{path} is not one (--to best copies any sharded checkpoint)"
        )
    return directory / real.name


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _metadata_step(path: Path) -> int | None:
    from ..layouts.catalog import entry_for_file

    return entry_for_file(path).effective_step


def _checked(result: FileResult) -> str:
    level = getattr(result, "level", DEFAULT)
    return CHECKED.get(level, level)


def _metadata_step_or_none(path: Path) -> int | None:
    """The step of a file just validated, for the report only: None when it cannot be read again."""
    try:
        return _metadata_step(path)
    except (CkptctlError, OSError):
        return None


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
    changed = _identity(target, follow=action.how != POINTER) != action.target_identity
    if changed or _identity(action.source) != action.source_identity:
        action.status, action.note = "skipped", "changed since the plan was made (a save ran meanwhile?); run restore again"
        return
    kept = plan.directory / action.keep_as if action.keep_as is not None else None
    if action.how in (POINTER, TAG):
        try:
            if action.how == POINTER:
                repoint(target, os.path.relpath(action.source, target.parent), kept)
            else:
                _rewrite_tag(target, action.source.name, kept)
        except OSError as exc:
            raise SaveError(f"cannot write {target}: {exc.strerror or exc}") from None
        action.status, action.mode_used = "done", "symlink" if action.how == POINTER else "tag"
        return
    if action.how == DIRECTORY:
        staged_dir, action.mode_used = durable.stage_copy_directory(action.source, plan.directory, action.target, plan.mode)
        with staged_dir:
            staged_dir.commit(keep_as=kept)
        action.status = "done"
        return
    staged, action.mode_used = durable.stage_copy(action.source, plan.directory, action.target, plan.mode)
    with staged:
        if kept is not None:
            _keep(target, kept)
        staged.commit()
    action.status = "done"


def _rewrite_tag(target: Path, tag: str, kept: Path | None) -> None:
    """A tag file (DeepSpeed's ``latest``) now names ``tag``: written whole to a temp file, fsynced,
    renamed over ``target`` (a symlink there, dangling or not, is replaced by the file: the framework
    reads the file), the directory fsynced. What stood there is kept first as ``kept``: a link as
    the same link, a file under a second name."""
    if kept is not None:
        if os.path.islink(target):
            if os.path.lexists(kept):
                raise CheckpointError(f"{kept.name} exists already; refusing to overwrite it")
            os.symlink(os.readlink(target), kept)
        else:
            _keep(target, kept)
    durable.write_text_atomic(target, tag)


def _keep(target: Path, kept: Path) -> None:
    """A second name for the file about to be replaced: a hard link (a copy where links fail)."""
    if os.path.lexists(kept):
        raise CheckpointError(f"{kept.name} exists already; refusing to overwrite it")
    durable.link_or_copy(target, kept, durable.LINK)


# ------------------------------------------------------------------ another framework's layout


def _refuse_foreign(directory: str | os.PathLike[str], option: str) -> None:
    found = detect(directory)
    if found is not None:
        path, layout = found
        raise BadInputError(f"{option} works on ckptctl's own layout; {path} is a {layout.title} run ({layout.name}): "
                            f"run 'ckptctl restore {path}' to heal its pointers")  # fmt: skip


def _status_of(problem: str) -> str:
    head = problem.split(":", 1)[0].split(" (", 1)[0].strip()
    return head if head and " " not in head else "invalid"


def _plan_heal_run(run: Run, *, discard: bool, mode: str, now: datetime | None, verdict: Verdict) -> RestorePlan:
    """Heal the pointers of another framework's run (see the module docstring)."""
    planner = _Planner(run.directory, "heal", discard=discard, mode=mode, now=now, validator=None)
    plan = planner.plan
    plan.layout = run.layout.name
    plan.pointers = [{"name": p.name, "target": p.target, "status": p.status, "detail": p.detail} for p in run.pointers]
    problems: dict[str, str | None] = {}

    def check(unit: Unit) -> str | None:
        if unit.name not in problems:
            problem = incomplete_reason(unit) or verdict(unit)
            problems[unit.name] = problem
            status = "valid" if problem is None else _status_of(problem)
            shown = problem
            if problem is not None and status == "incomplete" and problem.startswith("incomplete ("):
                shown = problem[len("incomplete ("):-1]  # "incomplete: missing x", not "incomplete: incomplete (...)"
            plan.checked.append(Check(unit.name, problem is None, [shown] if shown else [], unit.step, status))
        return problems[unit.name]

    choice = choose_resume(run, check, exclude=lambda u: run.is_pointer_path(u) is not None)
    if choice.unit is not None:
        plan.resume_from = next(c for c in plan.checked if c.name == choice.unit.name)
        plan.resume_reason = choice.reason
    if not run.pointers:
        plan.notes.append(f"{run.layout.title} keeps no pointer to heal (nothing like last.ckpt or latest)")
    for pointer in run.pointers:
        _heal_run_pointer(planner, run, pointer, choice.unit, check, choice.skipped)
    return plan


def _pointer_kind(run: Run, pointer: Pointer) -> str:
    """TAG (a text file, whatever stands there now: the layout says so), POINTER (a symlink), or FILE
    (a copy of a checkpoint: ``last.ckpt`` saved in full)."""
    if pointer.tag_file:
        return TAG
    if os.path.islink(pointer.path):
        return POINTER
    if any(run.is_pointer_path(u) is pointer for u in run.units) or pointer.path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return FILE
    return TAG


def _heal_run_pointer(planner: _Planner, run: Run, pointer: Pointer, chosen: Unit | None,
                      check: Verdict, skipped: list[tuple[Unit, str]]) -> None:  # fmt: skip
    """One pointer: leave it, note it (stale copy or tag), re-point/replace it, or say it cannot be healed."""
    plan = planner.plan
    how = _pointer_kind(run, pointer)
    name = os.path.relpath(pointer.path, run.directory)
    broken = _broken_link(pointer.path) if how in (POINTER, TAG) else None  # a tag file's place may hold a link
    own = next((u for u in run.units if run.is_pointer_path(u) is pointer), None)
    target = run.unit(pointer.target)
    state: str | None = None
    if broken is not None or (how == POINTER and pointer.status in (POINTER_DANGLING, POINTER_LOOP)):
        state = broken or f"{pointer.status}" + (f" ({pointer.detail})" if pointer.detail else "")
    elif how == FILE and own is not None and check(own) is not None:
        state = f"damaged ({check(own)})"
    elif how == FILE and own is None and os.path.exists(pointer.path) and pointer.status == POINTER_DAMAGED:
        state = f"damaged ({pointer.detail or 'the layout says so'})"
    elif how != FILE and pointer.target and target is None:
        state = f"naming {pointer.target}, which does not exist"
    elif how != FILE and target is not None and check(target) is not None:
        state = f"naming {pointer.target}, which is {check(target)}"
    elif pointer.status in (POINTER_DANGLING, POINTER_LOOP):
        state = f"{pointer.status}" + (f" ({pointer.detail})" if pointer.detail else "")
    elif pointer.status == POINTER_DAMAGED:
        state = f"damaged ({pointer.detail or 'names an incomplete or invalid checkpoint'})"
    elif how != FILE and not os.path.lexists(pointer.path):
        state = "missing"
    stale = state is None and (pointer.status == POINTER_STALE or (
        how != FILE and chosen is not None and target is not None and chosen is not target
        and chosen.step is not None and target.step is not None and chosen.step > target.step))  # fmt: skip
    if state is None and not stale:
        return
    if chosen is None:
        tried = "; ".join(f"{u.name} {why}" for u, why in skipped[:5]) or "no checkpoints"
        what = state or "stale"
        plan.unrestorable.append(f"{name} is {what} and no complete, valid checkpoint is left to point it at (tried: {tried})")
        return
    if state is None:  # stale: a symlink follows the newest; a copy or a tag file is only reported
        if how != POINTER:
            plan.notes.append(f"{name} names {pointer.target or 'an older checkpoint'}; {chosen.name} (step {chosen.step}) "
                              "is newer and valid: not changed (restore heals damage only)")  # fmt: skip
            return
        state = f"stale (names {pointer.target}; {chosen.name} is newer)"
    if how == FILE and chosen.is_directory:
        plan.unrestorable.append(f"{name} is {state} and the newest valid checkpoint {chosen.name} is a directory, not a file")
        return
    if how != FILE and chosen.path.parent.resolve() != pointer.path.parent.resolve() and how == TAG:
        plan.unrestorable.append(f"{name} is {state} and {chosen.name} is not in {pointer.path.parent}: a tag names a sibling")
        return
    planner.replace(name, chosen.path, f"{name} is {state}; newest complete, valid is {chosen.name}", chosen.step, how)
    action = plan.actions[-1]
    if how == POINTER and (broken is not None and "loop" in broken or pointer.status == POINTER_LOOP):
        action.keep_as, action.broken_link = None, True  # a loop names nothing: no record to keep
