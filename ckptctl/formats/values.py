"""Inert checkpoint values (placeholders, namespaces, numpy arrays) as JSON-friendly data or short text.

The values come from a file: everything that turns them into text goes through the bounded helpers
of :mod:`ckptctl.formats.bounded` (re-exported here), so no value can make a display or an error message
walk, copy or stringify more than it shows.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from .bounded import bounded_repr, bounded_str, short_number
from .unpickler import BytesIORecord, Namespace, NumpyArray, TensorRef

__all__ = ["bounded_repr", "bounded_str", "jsonable", "key_text", "short_number", "short_repr"]

KEY_CHARS = 200  # a non-string key as text (a tuple key nested 60 deep stays 200 characters)


def key_text(key: Any) -> str:
    """A dict key as text: strings as they are, anything else as bounded text."""
    return key if type(key) is str else bounded_str(key, KEY_CHARS)


def jsonable(value: Any) -> Any:
    """Inert checkpoint values as JSON-friendly data (tensors as dtype/shape, never values).

    The size of the result is bounded by the reader's structure check (expanded objects and text);
    keys and unknown objects become bounded text.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, TensorRef):
        return {"tensor": value.dtype, "shape": list(value.shape)}
    if isinstance(value, Namespace):
        return {key_text(k): jsonable(v) for k, v in value.attrs.items()}
    if isinstance(value, dict):
        return {key_text(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, NumpyArray):
        return {"ndarray": value.dtype, "shape": list(value.shape)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, BytesIORecord):
        return _bytesio(value, jsonable(value.value))
    return bounded_repr(value, KEY_CHARS)


def _bytesio(record: BytesIORecord, value: Any) -> dict[str, Any]:
    """A BytesIO as JSON: its size, what its bytes were read as, and that value (or why not)."""
    out: dict[str, Any] = {"bytesio": record.nbytes, "format": record.format, "value": value}
    if record.error:
        out["error"] = record.error
    return out


def _json_node(value: Any) -> Any:
    """One node as :func:`jsonable` shows it, without converting what is below it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (TensorRef, NumpyArray, datetime, bytes, bytearray)):
        return jsonable(value)
    if isinstance(value, Namespace):
        return value.attrs
    if isinstance(value, BytesIORecord):
        return _bytesio(value, value.value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value) if len(value) <= 1000 else list(value)[:1000]  # only the head can be shown
    return value


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(jsonable(value))`` cut at ``limit`` characters, in work O(limit) whatever ``value`` holds."""
    return bounded_repr(value, limit, view=_json_node, key_view=key_text)
