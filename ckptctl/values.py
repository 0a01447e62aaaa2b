"""Inert checkpoint values (placeholders, namespaces, numpy arrays) as JSON-friendly data."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from .unpickler import Namespace, NumpyArray, TensorRef


def jsonable(value: Any) -> Any:
    """Inert checkpoint values as JSON-friendly data (tensors as dtype/shape, never values)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, TensorRef):
        return {"tensor": value.dtype, "shape": list(value.shape)}
    if isinstance(value, Namespace):
        return {str(k): jsonable(v) for k, v in value.attrs.items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, NumpyArray):
        return {"ndarray": value.dtype, "shape": list(value.shape)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return repr(value)
