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
from typing import Iterator

from .base import Layout

# Filled as layouts land: (module, class name), imported lazily so ``ckptctl --help`` stays light.
LAYOUT_TABLE: tuple[tuple[str, str], ...] = (
    ("hf_trainer", "HfTrainerLayout"),
    ("deepspeed", "DeepSpeedLayout"),
    ("accelerate", "AccelerateLayout"),
    ("lightning", "LightningLayout"),
    ("torchtitan", "TorchtitanLayout"),
    ("loose", "LooseFilesLayout"),  # last: any checkpoint-like files nobody else claimed
)


def layouts() -> Iterator[Layout]:
    """Every registered layout, in recognition order; a layout's module is imported when the
    iteration reaches it, so :func:`detect` and :func:`by_name` stop importing at the first match
    (a ``list`` of a Hugging Face run imports none of the other layouts' readers)."""
    import importlib

    for module, cls in LAYOUT_TABLE:
        yield getattr(importlib.import_module(f"{__package__}.{module}"), cls)()


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
