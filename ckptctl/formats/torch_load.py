"""Loading tensor values with ``torch.load(weights_only=True)`` and a scoped allowlist.

The safe reader (:mod:`ckptctl.formats.reader`) never needs torch; tensor *values* do (deep
validation, value comparison, the manager's load). torch's ``weights_only`` unpickler is then used
with the few extra globals a checkpoint legitimately holds (numpy RNG state of older files,
``argparse.Namespace`` args), allowed for one load only. torch and numpy are imported inside
functions, so importing this module stays light.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any, Iterator


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # numpy is optional for users of the library
        return None
    return numpy


def weights_only_globals() -> list[Any]:
    """The globals a layout checkpoint needs beyond torch's defaults: numpy RNG state, Namespace args.

    Each is inert data: an ndarray rebuilt from bytes, a dtype, a numpy scalar, an attribute bag.
    Names of both numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) are listed, so a checkpoint
    saved under either loads under either.
    """
    allowed: list[Any] = [argparse.Namespace, *framework_globals()]
    numpy = _numpy()
    if numpy is None:
        return allowed
    multiarray = _numpy_multiarray(numpy)
    allowed += [numpy.ndarray, numpy.dtype, multiarray._reconstruct, multiarray.scalar]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    dtypes = getattr(numpy, "dtypes", None)  # numpy >= 1.25: one class per dtype, needed to rebuild it
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return allowed


def framework_globals() -> list[tuple[Any, str]]:
    """Other frameworks' classes (``TrainingArguments``, DeepSpeed's ``LossScaler``, ``io.BytesIO``,
    ...) as the inert stand-ins the safe reader builds, under their real names: torch's
    ``weights_only`` unpickler then loads such a file without importing (or running) those
    frameworks, and the values are the same records ``inspect`` shows."""
    from . import unpickler

    names = [*unpickler.RECORDS, *unpickler.ENUM_CLASSES, *unpickler.ATTRIBUTE_DICTS, "_io.BytesIO"]
    return [(unpickler.ALLOWED[name], name) for name in names]


def _numpy_multiarray(numpy: Any) -> Any:
    core = getattr(numpy, "_core", None)
    if core is not None and hasattr(core, "multiarray"):
        return core.multiarray
    return numpy.core.multiarray


@contextlib.contextmanager
def safe_globals() -> Iterator[None]:
    """Allow :func:`weights_only_globals` for the loads inside this block only."""
    import torch.serialization as serialization

    allowed = weights_only_globals()
    scoped = getattr(serialization, "safe_globals", None)
    if scoped is None:  # torch 2.4 has only the process-wide registry
        serialization.add_safe_globals([g for g in allowed if not isinstance(g, tuple)])
        yield
        return
    with scoped(allowed):
        yield
