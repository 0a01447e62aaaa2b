"""Random-number-generator state: capture it into a checkpoint, restore it on resume, load it safely.

A resumed run is only reproducible if every generator continues where it stopped: Python's
``random``, numpy's global generator, torch's CPU generator and each CUDA device's. The checkpoint
keys are the layout's ``rng_state{python, numpy, torch, torch_cuda}``.

States are stored as plain Python values (ints, floats, str, tuples, lists, dicts) and torch
tensors, never numpy objects: a file the manager writes then opens with a plain ``torch.load(path)``
(``weights_only=True`` is torch's default since 2.6 and refuses numpy arrays). numpy arrays inside
a bit generator's state become ``{"ndarray": dtype, "shape": [...], "data": [...]}``
(:func:`to_plain`), turned back exactly by :func:`from_plain`.

Checkpoints written before that hold the numpy state as an ndarray; :func:`ckptctl.formats.torch_load.safe_globals` allows
the few numpy globals they need for one load instead of registering them for the whole process,
and :func:`restore_rng_state` accepts either form. torch and numpy are imported inside functions,
so importing this module stays light.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

NDARRAY_TAG = "ndarray"  # to_plain's key for the dtype of an ndarray stored as a list


def capture_rng_state() -> dict[str, Any]:
    """Every generator's state, ready to store under the checkpoint's ``rng_state`` key.

    Only plain values and tensors (see the module docstring): ``torch.load(path)`` reads it as is.
    """
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "numpy": None, "torch": torch.get_rng_state(), "torch_cuda": None}
    numpy = _numpy()
    if numpy is not None:
        state["numpy"] = to_plain(_numpy_global_state(numpy))
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(rng_state: Mapping[str, Any] | None) -> list[str]:
    """Put each generator back where the checkpoint left it; return the names restored.

    Missing entries are skipped (a checkpoint from a CPU run has no CUDA state; a run without
    numpy has none either), so resuming never fails because of a generator the run did not use.
    The numpy state may be plain (this version) or hold ndarrays (older checkpoints).
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
        numpy.random.set_state(_as_numpy_state(numpy, from_plain(rng_state["numpy"])))
        restored.append("numpy")
    if rng_state.get("torch") is not None:
        torch.set_rng_state(torch.as_tensor(rng_state["torch"], dtype=torch.uint8).cpu())
        restored.append("torch")
    cuda = rng_state.get("torch_cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])
        restored.append("torch_cuda")
    return restored


def to_plain(value: Any) -> Any:
    """A numpy RNG state (``np.random.get_state()``, or any ``Generator.bit_generator.state``) as
    plain values: ndarrays become tagged dicts, numpy scalars Python numbers, containers are copied.

    Use it for a numpy ``Generator`` of your own: ``state["gen"] = to_plain(gen.bit_generator.state)``,
    and on resume ``gen.bit_generator.state = from_plain(state["gen"])``.
    """
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(item) for item in value)
    numpy = _numpy()
    if numpy is not None and isinstance(value, numpy.ndarray):
        return {NDARRAY_TAG: value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}
    if numpy is not None and isinstance(value, numpy.generic):
        return value.item()
    return value


def from_plain(value: Any) -> Any:
    """The inverse of :func:`to_plain`: tagged dicts become ndarrays of their dtype again.

    Values that are already ndarrays (an older checkpoint loaded with :func:`ckptctl.formats.torch_load.safe_globals`) pass
    through unchanged.
    """
    if isinstance(value, dict):
        if set(value) == {NDARRAY_TAG, "shape", "data"}:
            numpy = _numpy()
            if numpy is None:
                raise ValueError("restoring a numpy RNG state needs numpy")
            return numpy.asarray(value["data"], dtype=numpy.dtype(value[NDARRAY_TAG])).reshape(value["shape"])
        return {key: from_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_plain(item) for item in value)
    return value



def _numpy_global_state(numpy: Any) -> Any:
    """The legacy ``(name, key, pos, has_gauss, gauss)`` tuple for the default MT19937 generator,
    the state dict when ``np.random.set_bit_generator`` installed another one (no legacy form)."""
    state = numpy.random.get_state(legacy=False)
    return numpy.random.get_state() if state.get("bit_generator") == "MT19937" else state


def _as_numpy_state(numpy: Any, value: Any) -> Any:
    """``np.random.set_state`` wants the legacy tuple with a uint32 key array, or a state dict."""
    if isinstance(value, (list, tuple)):
        name, key, *rest = value
        return (name, numpy.asarray(key, dtype=numpy.uint32), *rest)
    return value


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
