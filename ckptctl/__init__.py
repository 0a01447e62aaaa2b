"""ckptctl: safe, durable PyTorch checkpoints.

The public API of the training side is re-exported here, lazily: ``import ckptctl`` (and every
module of the reading core) loads neither torch nor numpy; the first use of ``CheckpointManager``
does. The package's layers are described in docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it (imported on first use)
_LAZY = {
    "CheckpointManager": "ckptctl.training.manager",
    "build_state": "ckptctl.training.manager",
    "load_file": "ckptctl.training.manager",
    "EmergencyStop": "ckptctl.training.signals",
    "EmergencyAbort": "ckptctl.training.signals",
    "export": "ckptctl.ops.export",
}
__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from .training.manager import CheckpointManager, build_state, load_file  # noqa: F401
    from .ops.export import export  # noqa: F401
    from .training.signals import EmergencyAbort, EmergencyStop  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckptctl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
