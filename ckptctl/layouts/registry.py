"""The table of layouts, and recognition: which layout a directory is, from what is on disk.

Adding a framework = one module in this package, its fixtures, and one row in :data:`LAYOUTS`.
Order matters: the first layout that recognises a directory wins, so specific layouts come before
general ones (loose files last). ckptctl's own layout is not a row here: a directory with ckptctl's
names goes through :mod:`ckptctl.layouts.catalog` as before, and the registry is asked only
when those names are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import Layout

# Filled as layouts land: (module, class name), imported lazily so ``ckptctl --help`` stays light.
LAYOUT_TABLE: tuple[tuple[str, str], ...] = (
    ("hf_trainer", "HfTrainerLayout"),
    ("deepspeed", "DeepSpeedLayout"),
    ("accelerate", "AccelerateLayout"),
    ("torchtitan", "TorchtitanLayout"),
    ("lightning", "LightningLayout"),
    ("loose", "LooseFilesLayout"),  # last: any checkpoint-like files nobody else claimed
)


def layouts() -> list[Layout]:
    """Every registered layout, in recognition order."""
    import importlib

    found: list[Layout] = []
    for module, cls in LAYOUT_TABLE:
        found.append(getattr(importlib.import_module(f"{__package__}.{module}"), cls)())
    return found


def detect(directory: str | os.PathLike[str]) -> Layout | None:
    """The layout of ``directory``, or None when no registered layout recognises it."""
    path = Path(directory)
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return None
    for layout in layouts():
        if layout.recognise(path, names):
            return layout
    return None


def by_name(name: str) -> Layout:
    for layout in layouts():
        if layout.name == name:
            return layout
    raise KeyError(name)
