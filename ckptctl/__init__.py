"""ckptctl: safe, durable PyTorch checkpoints.

The core (naming, reader, catalog, metadata, ...) imports neither torch nor numpy; only
:mod:`ckptctl.training.manager` does, and it is imported lazily here so ``import ckptctl`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .training.manager import CheckpointManager


def __getattr__(name: str) -> Any:
    if name == "CheckpointManager":
        from .training.manager import CheckpointManager

        return CheckpointManager
    raise AttributeError(f"module 'ckptctl' has no attribute {name!r}")
