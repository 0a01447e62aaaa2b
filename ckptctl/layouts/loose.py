"""Loose checkpoint files: whatever ``torch.save`` / ``safetensors`` wrote into a directory.

The last row of the registry: a directory with checkpoint-like files (``*.pt``, ``*.pth``,
``*.bin``, ``*.tar``, ``*.ckpt``, ``*.safetensors``) that no other layout claimed. Each file is
one unit. What a unit says comes from the file itself, read safely:

- a pickle (torch zip or the legacy pre-1.6 format) through the restricted reader
  (``read_checkpoint(spans=False)``): ``step``/``global_step``, ``epoch``, and the numbers at the
  top level (``loss`` of the PyTorch tutorial dict, a 0-d tensor, is read from its few bytes by
  :mod:`ckptctl.formats.scalars`) go to ``metrics``; ``is_best: True`` marks it best;
- a ``.safetensors`` file through the bounded header reader: its ``__metadata__`` strings
  (``{"step": "120", "epoch": "3"}``) as numbers. No tensor byte is read.

A unit is complete when its container reads (a truncated safetensors, a damaged zip, or a pickle
that references something outside the allowlist — "unsafe", never executed — is not). Order: by
step where the file records one (files without a step first, by name). Resuming is the user's
script's business: the argument is the file's path. See docs/layouts/loose-files.md.

The layout declines a directory that is ckptctl's own (:func:`ckptctl.layouts.catalog.is_native`,
the one rule; a trace of ckptctl's -- a dangling ``latest.pt`` -- is enough against this catch-all),
and one that is the inside of a single framework checkpoint
(``trainer_state.json``, DCP's ``.metadata``, a sharded model's ``*.index.json`` or
``-0000N-of-0000M`` shards, DeepSpeed's ``mp_rank_*`` files, accelerate's ``random_states_*.pkl``):
listing its files one by one would let ``prune`` delete a shard or an optimizer of one checkpoint.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..formats.container import ZIP_MAGIC
from ..formats.reader import LEGACY_MAGIC, read_checkpoint
from ..formats.safe_open import open_regular
from ..formats.safetensors import read_safetensors_header
from ..formats.scalars import is_scalar, read_scalars
from ..formats.unpickler import TensorRef
from .base import CONTENT_OPTIMIZER, CONTENT_WEIGHTS, Layout, Unit, stat_file
from .metadata import args_dict, as_float, as_int

SUFFIXES = (".pt", ".pth", ".bin", ".tar", ".ckpt", ".safetensors")
AMBIGUOUS_SUFFIXES = (".bin", ".tar")  # also token files and datasets: a checkpoint only if it starts like one
LEGACY_HEAD = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")  # pickle PROTO 2, LONG1 of the magic
STEP_KEYS = ("step", "global_step")
EPOCH_KEYS = ("epoch",)
HPARAM_KEYS = ("args", "hparams", "hyper_parameters", "config")
MAX_METRICS = 8  # top-level numbers of one file recorded as metrics (a few bytes each for tensors)
MAX_METADATA_NUMBERS = 16  # safetensors __metadata__ entries turned into numbers
MAX_UNITS = 100_000  # files of one directory looked at
SINGLE_CHECKPOINT_MARKERS = re.compile(
    r"trainer_state\.json|\.metadata|.*\.distcp|.*\.index\.json|.*-\d{5}-of-\d{5}\.[a-z]+"
    r"|mp_rank_\d+_model_states\.pt|.*optim_states\.pt|random_states_\d+\.pkl"
)
NUMBER = re.compile(r"[+-]?(\d{1,30}(\.\d{0,30})?|\.\d{1,30})([eE][+-]?\d{1,3})?")


class LooseFilesLayout(Layout):
    name = "loose"
    title = "checkpoint files"

    fallback = True  # the catch-all, no framework's claim: a trace of ckptctl's own beats it (catalog.is_native)

    def recognise(self, directory: Path, names: list[str]) -> bool:
        from .catalog import is_native

        if any(SINGLE_CHECKPOINT_MARKERS.fullmatch(name) for name in names):
            return False
        if not any(_candidate(directory / name) for name in names if name.endswith(SUFFIXES)):
            return False
        return not is_native(directory)

    def units(self, directory: Path) -> list[Unit]:
        try:
            names = sorted(os.listdir(directory))[:MAX_UNITS]
        except OSError:
            return []
        units = [_unit(self.name, directory / name) for name in names
                 if name.endswith(SUFFIXES) and _candidate(directory / name)]  # fmt: skip
        units.sort(key=lambda u: (u.step is not None, u.step or 0, u.name))
        return units

    def protect(self, units: list[Unit], pointers: list[Any]) -> None:
        """The default (best, newest complete by step); when no complete file records a step, the
        last complete one in name order is kept as the newest: a prune never empties the directory."""
        super().protect(units, pointers)
        complete = [u for u in units if u.complete]
        if complete and not any(u.step is not None for u in complete):
            complete[-1].protected = complete[-1].protected or "protected: newest complete"

    def resume_args(self, unit: Unit, directory: Path) -> list[str]:
        """No framework flag: the file's path, for the user's own script to load."""
        return [str(unit.path)]


def _candidate(path: Path) -> bool:
    """A regular file, or a symlink that is one or leads nowhere (a dangling link is a finding).

    ``.bin`` and ``.tar`` are also the suffixes of token files (nanoGPT's ``train.bin``) and
    datasets (webdataset shards): such a file is a checkpoint only when it starts like one
    (a zip, or torch's legacy magic number), so ``prune --remove-incomplete`` never sees it.
    """
    if path.name.startswith("."):
        return False
    try:
        if path.is_symlink() and not path.exists():
            return True
        if not path.is_file():
            return False
    except OSError:
        return False
    return not path.name.endswith(AMBIGUOUS_SUFFIXES) or _starts_like_a_checkpoint(path)


def _starts_like_a_checkpoint(path: Path) -> bool:
    try:
        with open_regular(path) as fh:
            head = fh.read(len(LEGACY_HEAD))
    except (OSError, CheckpointError):
        return False
    return head.startswith(ZIP_MAGIC) or head == LEGACY_HEAD


def _unit(layout: str, path: Path) -> Unit:
    unit = Unit(layout, path.name, path, is_directory=False)
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        try:
            os.stat(path)
        except OSError as exc:
            unit.complete = False
            unit.notes.append(f"{'looping' if exc.errno == errno.ELOOP else 'dangling'} symlink to {target}")
            return unit
        unit.notes.append(f"symlink to {target}")
    content = CONTENT_OPTIMIZER if "optim" in path.name.lower() else CONTENT_WEIGHTS
    unit.files = [stat_file(path, content)]
    try:
        if path.name.endswith(".safetensors"):
            _safetensors(unit, path)
        else:
            _pickle(unit, path)
    except CheckpointError as exc:
        unit.complete = False
        unit.notes.append(f"{exc.status}: {exc.reason}" + (" (not executed)" if exc.status == "unsafe" else ""))
    except OSError as exc:
        unit.complete = False
        unit.notes.append(f"unreadable: {exc.strerror or exc}")
    return unit


def _safetensors(unit: Unit, path: Path) -> None:
    header = read_safetensors_header(path)
    unit.notes.append(f"safetensors: {len(header.tensors)} tensor(s)")
    numbers: dict[str, float | int] = {}
    for key, text in list(header.metadata.items())[:MAX_METADATA_NUMBERS]:
        number = _number(text)
        if number is not None:
            numbers[key] = number
    unit.step = next((as_int(numbers[k]) for k in STEP_KEYS if as_int(numbers.get(k)) is not None), None)
    unit.epoch = next((float(numbers[k]) for k in EPOCH_KEYS if k in numbers), None)
    unit.metrics = {k: v for k, v in numbers.items() if k not in STEP_KEYS + EPOCH_KEYS}


def _number(text: Any) -> float | int | None:
    """A metadata string as a number (``"120"`` -> 120, ``"0.5"`` -> 0.5), else None."""
    if not isinstance(text, str) or not NUMBER.fullmatch(text.strip()):
        return None
    text = text.strip()
    try:
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    except (ValueError, OverflowError):
        return None


def _pickle(unit: Unit, path: Path) -> None:
    ckpt = read_checkpoint(path, spans=False)
    if ckpt.format == "legacy":
        unit.notes.append("legacy format (torch.save before 1.6)")
    root = ckpt.root
    if not isinstance(root, dict):
        return
    tensors_only = root and all(type(k) is str and isinstance(v, TensorRef) for k, v in root.items())
    if tensors_only:
        unit.notes.append(f"state dict: {len(root)} tensor(s)")
        return
    unit.step = next((as_int(root[k]) for k in STEP_KEYS if as_int(root.get(k)) is not None), None)
    epoch = next((root[k] for k in EPOCH_KEYS if as_float(root.get(k)) is not None), None)
    unit.epoch = as_float(epoch)
    plain: dict[str, float | int] = {}
    scalars: dict[str, Any] = {}
    for key, value in root.items():
        if type(key) is not str or key in STEP_KEYS + EPOCH_KEYS or len(plain) + len(scalars) >= MAX_METRICS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = as_float(value)
            if number is not None:
                plain[key] = value if isinstance(value, int) and as_int(value) is not None else number
        elif is_scalar(value):
            scalars[key] = value
    plain.update(read_scalars(ckpt, scalars))
    unit.metrics = plain
    if root.get("is_best") is True:
        unit.best = True
    for key in HPARAM_KEYS:
        hparams = args_dict(root.get(key))
        if hparams is not None:
            unit.hparams = hparams
            break
