"""What every layout provides: the checkpoints of a directory as units, and what to do with them.

A *layout* is how a framework arranges a run's checkpoints on disk (ckptctl's own names, Hugging
Face Trainer's ``checkpoint-N/``, Lightning's ``*.ckpt``, ...). It is recognised from what is on
disk, never configured. Each layout is one module with one :class:`Layout` subclass, listed in
:mod:`ckptctl.layouts.registry`; the operations (list, validate, prune, restore, resume-cmd, du,
compare, inspect) ask the registry, never a file name. See docs/architecture.md.

A :class:`Unit` is one checkpoint of a layout: a file (a Lightning ``.ckpt``) or a directory (an
HF ``checkpoint-500/``), one row of ``list``, one unit of ``prune``, one argument of ``compare``.
Everything in it is recomputed from the directory on every call (no cache); reading a unit's
metadata reads small files only (JSON, the pickle of a ``.pt``, a safetensors header), never
tensor bytes, and never runs code from a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

# What a unit's files hold, for ``du`` (per kind of content) and ``validate --deep`` (model and
# optimizer tensors are checked for NaN/Inf; callback bookkeeping is not).
CONTENT_WEIGHTS = "weights"
CONTENT_OPTIMIZER = "optimizer"
CONTENT_OTHER = "other"
CONTENTS = (CONTENT_WEIGHTS, CONTENT_OPTIMIZER, CONTENT_OTHER)

# Pointer states (a Lightning ``last.ckpt`` symlink, a DeepSpeed ``latest`` tag file, a DCP
# ``latest`` symlink).
POINTER_OK = "ok"
POINTER_DANGLING = "dangling"  # names something that does not exist
POINTER_LOOP = "loop"  # a symlink that leads back to itself
POINTER_STALE = "stale"  # points at an existing checkpoint that is not the newest complete one
POINTER_DAMAGED = "damaged"  # names a checkpoint that exists but is incomplete or invalid


@dataclass
class UnitFile:
    """One file of a unit: where it is, what it holds, and its size (``stat``, no read)."""

    path: Path
    content: str = CONTENT_OTHER  # one of CONTENTS
    size_bytes: int = 0
    allocated_bytes: int = 0
    inode: tuple[int, int] | None = None  # (st_dev, st_ino): hard links are counted once by du


@dataclass
class Unit:
    """One checkpoint of a layout, with what the layout's own records say about it.

    ``metrics`` holds every number the layout records for this checkpoint (``loss``,
    ``eval_loss``, ``val_loss``, ``best_model_score``, template values of a Lightning name, ...);
    ``monitor`` names the one the framework ranks checkpoints by, when it says so. ``complete`` is
    False when a file the layout requires is missing (``missing`` says which): such a unit is
    never chosen for resume and is removed by prune only with ``--remove-incomplete``.
    ``protected`` is filled by :meth:`Layout.protect` (a reason prune must keep it).
    """

    layout: str
    name: str
    path: Path
    is_directory: bool
    step: int | None = None
    epoch: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    monitor: str | None = None
    best: bool = False
    complete: bool = True
    missing: list[str] = field(default_factory=list)
    files: list[UnitFile] = field(default_factory=list)
    hparams: dict[str, Any] | None = None
    timestamp: datetime | None = None
    protected: str | None = None
    notes: list[str] = field(default_factory=list)  # findings of the layout's own records ("trainer_state.json: not JSON")

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    @property
    def allocated_bytes(self) -> int:
        return sum(f.allocated_bytes for f in self.files)

    @property
    def monitored_value(self) -> float | None:
        return self.metrics.get(self.monitor) if self.monitor else None


@dataclass
class Pointer:
    """A name that designates a checkpoint: Lightning's ``last.ckpt`` symlink, DeepSpeed's ``latest``."""

    name: str
    path: Path
    target: str | None  # the checkpoint name it designates (None when unreadable)
    status: str = POINTER_OK
    detail: str | None = None  # why it is not ok, in words
    # A small text file naming ``target`` (DeepSpeed's ``latest``), whatever stands at ``path`` now:
    # ``restore`` heals it by rewriting the file (never by a symlink, which the framework cannot read).
    tag_file: bool = False


class Layout:
    """One framework's way of arranging checkpoints. Subclasses set ``name``/``title`` and override
    :meth:`recognise`, :meth:`units` and :meth:`resume_args`; the rest has a default that fits most.

    Methods take the run directory (a local :class:`~pathlib.Path`) and never raise for a damaged
    file: damage is a unit that is incomplete, a note, or a pointer status. ``OSError`` on the
    directory itself propagates (the caller turns it into one line of bad input).
    """

    name: ClassVar[str] = "layout"  # stable id, in ``--json`` (``hf-trainer``)
    title: ClassVar[str] = "layout"  # for people (``Hugging Face Trainer``)
    resume_flag: ClassVar[str | None] = None  # the command-line flag the framework's scripts use

    def recognise(self, directory: Path, names: list[str]) -> bool:
        """True when ``directory`` (whose entry names are ``names``) is a run of this layout."""
        raise NotImplementedError

    def units(self, directory: Path) -> list[Unit]:
        """Every checkpoint in ``directory``, oldest first (by step, then name)."""
        raise NotImplementedError

    def pointers(self, directory: Path, units: list[Unit]) -> list[Pointer]:
        """Names that designate a checkpoint (``last.ckpt``, ``latest``), with their state."""
        return []

    def protect(self, units: list[Unit], pointers: list[Pointer]) -> None:
        """Mark what prune must keep: the recorded best, the newest complete checkpoint, pointer targets."""
        for unit in units:
            if unit.best:
                unit.protected = "protected: best"
        complete = [u for u in units if u.complete and u.step is not None]
        if complete:
            newest = max(complete, key=lambda u: (u.step, u.name))
            newest.protected = newest.protected or "protected: newest complete"
        targets = {p.target for p in pointers if p.target}
        for unit in units:
            if unit.name in targets and unit.protected is None:
                unit.protected = "protected: pointer target"

    def resume_args(self, unit: Unit, directory: Path) -> list[str]:
        """The arguments that make the framework's script resume from ``unit`` (``--ckpt_path X``)."""
        return [self.resume_flag, str(unit.path)] if self.resume_flag else [str(unit.path)]


def stat_file(path: Path, content: str = CONTENT_OTHER) -> UnitFile:
    """A :class:`UnitFile` from ``stat`` (following symlinks); size 0 when it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return UnitFile(path, content)
    return UnitFile(path, content, info.st_size, getattr(info, "st_blocks", 0) * 512, (info.st_dev, info.st_ino))


def content_of(name: str) -> str:
    """A guess from a file name that fits every framework here: weights, optimizer, or other."""
    lower = name.lower()
    if "optim" in lower:
        return CONTENT_OPTIMIZER
    if lower.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".distcp")) and (
        "model" in lower or lower.endswith((".safetensors", ".distcp")) or lower.startswith("mp_rank")
    ):
        return CONTENT_WEIGHTS
    return CONTENT_OTHER
