"""The write-side operations (prune, restore, resume-cmd) on another framework's layout.

A directory that is not ckptctl's own (:func:`ckptctl.layouts.catalog.is_native`, the rule every
command follows) is asked of the registry (:func:`ckptctl.layouts.registry.detect`); when a layout
recognises it, the directory is a
:class:`Run`: the layout's units (oldest first), its pointers, and what :meth:`Layout.protect`
marks. ckptctl's own directories never come here (their code paths are unchanged).

One order for all three commands: newest first by step, then by the layout's own order (its
``units()`` are oldest first by step, then name); a unit without a step is the oldest. One rule of
"where to resume": the newest unit that is *complete* (the layout's check) and *valid*
(:func:`unit_verdict`: ``ops.integrity.unit_verdict`` at the default level).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BadInputError
from ..layouts.base import POINTER_OK, Layout, Pointer, Unit
from ..layouts.catalog import Entry, check_directory, is_native
from ..layouts.naming import Kind, ParsedName

Verdict = Callable[[Unit], "str | None"]


@dataclass
class Run:
    """A directory of another framework's layout, as the layout sees it right now."""

    directory: Path
    layout: Layout
    units: list[Unit]  # oldest first
    pointers: list[Pointer] = field(default_factory=list)

    def unit(self, name: str | None) -> Unit | None:
        return next((u for u in self.units if u.name == name), None) if name else None

    def newest_first(self) -> list[Unit]:
        """Units newest first: by step, then the layout's order; unknown steps last."""
        order = {id(u): index for index, u in enumerate(self.units)}
        return sorted(self.units, key=lambda u: (u.step is not None, u.step or 0, order[id(u)]), reverse=True)

    def pointer_of(self, unit: Unit) -> list[Pointer]:
        """The pointers that designate ``unit``."""
        return [p for p in self.pointers if p.target == unit.name]

    def is_pointer_path(self, unit: Unit) -> Pointer | None:
        """The pointer whose own name is this unit (a ``last.ckpt`` that is a copy), if any."""
        return next((p for p in self.pointers if _same_path(p.path, unit.path)), None)


def _same_path(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def has_native_names(directory: Path) -> bool:
    """True when ``directory`` is ckptctl's own layout (its code paths): the one rule,
    :func:`ckptctl.layouts.catalog.is_native`, that ``list``, ``du`` and ``validate`` follow too."""
    return is_native(directory)


def open_run(directory: str | os.PathLike[str]) -> Run | None:
    """The :class:`Run` of ``directory``, or None when it is ckptctl's own layout (or nobody's).

    BadInputError for a directory that cannot be read. A URL is never a foreign run.
    """
    found = detect(directory)
    return read_run(*found) if found is not None else None


def detect(directory: str | os.PathLike[str]) -> tuple[Path, Layout] | None:
    """(directory, layout) when ``directory`` is another framework's layout; reads names only."""
    from ..formats.storage import is_url

    if is_url(directory):
        return None
    path = check_directory(directory)
    if has_native_names(path):
        return None
    from ..layouts import registry

    layout = registry.detect(path)
    return (path, layout) if layout is not None else None


def read_run(path: Path, layout: Layout) -> Run:
    """The units and pointers of ``path`` under ``layout``, with what it protects (fresh, no cache)."""
    try:
        units = list(layout.units(path))
        pointers = list(layout.pointers(path, units))
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    for unit in units:
        unit.protected = None  # protect() decides afresh
    layout.protect(units, pointers)
    return Run(path, layout, units, pointers)


def unit_entry(unit: Unit) -> Entry | None:
    """A catalog :class:`Entry` for a unit (kind ``checkpoint``), so prune's plan, its re-plan under
    the lock and its removal treat units like files: identity is the inode and mtime of what the
    unit's name leads to (``stat``), a directory counts once (``nlink`` 1). None when it vanished."""
    try:
        info = os.stat(unit.path)
        link = os.readlink(unit.path) if os.path.islink(unit.path) else None
    except OSError:
        return None
    parsed = ParsedName(unit.name, Kind.CHECKPOINT, unit.step, None, unit.timestamp)
    nlink = 1 if unit.is_directory else info.st_nlink
    size = unit.size_bytes if unit.is_directory or unit.files else info.st_size
    return Entry(unit.path, parsed, size, info.st_ino, nlink, unit.allocated_bytes, info.st_mtime,
                 is_directory=unit.is_directory, link=link, unit=unit)  # fmt: skip


def incomplete_reason(unit: Unit) -> str | None:
    """'incomplete (missing a, b)' for a unit the layout calls incomplete, else None."""
    if unit.complete:
        return None
    missing = ", ".join(unit.missing[:5]) + (", ..." if len(unit.missing) > 5 else "")
    return f"incomplete (missing {missing})" if missing else "incomplete"


def unit_verdict(unit: Unit) -> str | None:
    """None when ``unit`` is complete and intact at the default level of ``validate``, else why not
    (one line). Uses ``ops.integrity.unit_verdict``; until that exists, the layout's completeness and
    :func:`~ckptctl.ops.integrity.validate_file` on the unit's pickle files."""
    from . import integrity

    real = getattr(integrity, "unit_verdict", None)
    if real is not None:
        try:
            return real(unit, integrity.DEFAULT)
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
    return _fallback_verdict(unit)


def _fallback_verdict(unit: Unit) -> str | None:
    from .integrity import CHECKPOINT_SUFFIXES, DEFAULT, validate_file

    reason = incomplete_reason(unit)
    if reason is not None:
        return reason
    paths = [f.path for f in unit.files] or ([] if unit.is_directory else [unit.path])
    for path in paths:
        if not str(path).endswith(CHECKPOINT_SUFFIXES):
            continue
        try:
            result = validate_file(path, DEFAULT)
        except OSError as exc:
            return f"unreadable: {Path(path).name}: {exc.strerror or exc}"
        if not result.valid and result.status != "unsafe":
            return f"{result.status}: {Path(path).name}: {'; '.join(result.problems)}"
    return None


def describe(unit: Unit) -> str:
    """``checkpoint-500 (step 500)``."""
    return f"{unit.name} (step {unit.step if unit.step is not None else 'unknown'})"


@dataclass
class Choice:
    """Where to resume in a run: the chosen unit (None: no complete, valid one), the newer units
    passed over with their reasons, and the explanation in words."""

    unit: Unit | None
    skipped: list[tuple[Unit, str]] = field(default_factory=list)
    reason: str = ""
    verdicts: dict[str, str | None] = field(default_factory=dict)  # unit name -> verdict, for what was checked


def choose_resume(run: Run, verdict: Verdict = unit_verdict, *, exclude: Callable[[Unit], bool] | None = None) -> Choice:
    """The newest complete, valid unit (see the module docstring), with why the newer ones were skipped.

    Incomplete units are skipped without reading them; the others are validated newest first
    until one passes (cost: the skipped units + 1)."""
    choice = Choice(None)
    for unit in run.newest_first():
        if exclude is not None and exclude(unit):
            continue
        problem = incomplete_reason(unit)
        if problem is None:
            problem = verdict(unit)
        choice.verdicts[unit.name] = problem
        if problem is None:
            choice.unit = unit
            choice.reason = explain_choice(run, unit, choice.skipped)
            return choice
        choice.skipped.append((unit, problem))
    return choice


def explain_choice(run: Run, chosen: Unit, skipped: list[tuple[Unit, str]]) -> str:
    """Why ``chosen``: 'checkpoint-4 (step 4) is the newest complete, valid checkpoint; checkpoint-6
    (step 6) is newer but incomplete (missing model.safetensors)', and what the pointers say."""
    text = f"{describe(chosen)} is the newest complete, valid checkpoint"
    newer = [f"{describe(u)} is newer but {why}" for u, why in skipped]
    if newer:
        text += "; " + "; ".join(newer[:3]) + (f"; and {len(newer) - 3} more" if len(newer) > 3 else "")
    for pointer in run.pointers:
        if pointer.target == pointer.name and pointer.status == POINTER_OK:
            continue  # a copy (Lightning's last.ckpt saved in full) names itself
        if pointer.target and pointer.target != chosen.name:
            state = pointer.status if pointer.status != POINTER_OK else "names it"
            text += f"; {pointer.name} points at {pointer.target} ({state})"
        elif pointer.status != POINTER_OK and pointer.target != chosen.name:
            text += f"; {pointer.name} is {pointer.status}" + (f" ({pointer.detail})" if pointer.detail else "")
    return text


def no_valid_message(run: Run, choice: Choice) -> str:
    tried = "; ".join(f"{u.name} {why}" for u, why in choice.skipped[:5]) or "no checkpoints"
    more = f"; and {len(choice.skipped) - 5} more" if len(choice.skipped) > 5 else ""
    return f"no complete, valid checkpoint in {run.directory} ({run.layout.title}: {tried}{more})"
