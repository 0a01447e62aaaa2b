"""Random-number-generator state: capture it into a checkpoint, restore it on resume, load it safely.

A resumed run is only reproducible if every generator continues where it stopped: Python's
``random``, numpy's global generator, torch's CPU generator and each CUDA device's. The checkpoint
keys are the layout's ``rng_state{python, numpy, torch, torch_cuda}``.

numpy's state pickles as an ndarray, which ``torch.load(weights_only=True)`` refuses unless the few
numpy globals it needs are allowlisted; :func:`safe_globals` scopes that allowlist to one load
instead of registering it for the whole process. torch and numpy are imported inside functions,
so importing this module stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import random
from typing import Any, Iterator, Mapping


def capture_rng_state() -> dict[str, Any]:
    """Every generator's state, ready to store under the checkpoint's ``rng_state`` key."""
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "numpy": None, "torch": torch.get_rng_state(), "torch_cuda": None}
    numpy = _numpy()
    if numpy is not None:
        state["numpy"] = numpy.random.get_state()
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(rng_state: Mapping[str, Any] | None) -> list[str]:
    """Put each generator back where the checkpoint left it; return the names restored.

    Missing entries are skipped (a checkpoint from a CPU run has no CUDA state; a run without
    numpy has none either), so resuming never fails because of a generator the run did not use.
    """
    if not rng_state:
        return []
    import torch

    restored: list[str] = []
    if rng_state.get("python") is not None:
        random.setstate(_as_python_state(rng_state["python"]))
        restored.append("python")
    numpy = _numpy()
    if rng_state.get("numpy") is not None and numpy is not None:
        numpy.random.set_state(tuple(rng_state["numpy"]))
        restored.append("numpy")
    if rng_state.get("torch") is not None:
        torch.set_rng_state(torch.as_tensor(rng_state["torch"], dtype=torch.uint8).cpu())
        restored.append("torch")
    cuda = rng_state.get("torch_cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])
        restored.append("torch_cuda")
    return restored


def _as_python_state(value: Any) -> tuple:
    """random.setstate needs tuples all the way down; a round trip may have turned them into lists."""
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


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
    allowed: list[Any] = [argparse.Namespace]
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
