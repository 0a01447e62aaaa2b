"""Bounded text for untrusted objects: ``repr`` and ``str`` that stop after ``limit`` characters.

A checkpoint's object graph comes from a file. Pickle memoises, so a 3 KB file can hold a tuple
nested 60 deep whose two slots are the same inner tuple (2**60 items to any walk), a list holding
one 1 MB string a thousand times, or a tuple nested 100 000 deep. Python's own ``repr``/``str``
walk all of that (or overflow the C stack). These helpers walk iteratively, emit at most ``limit``
characters, and never convert a huge integer to decimal. Everything that turns a file's object
into text for an error message or a display goes through them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

ELLIPSIS = "…"
MAX_INT_BITS_SHOWN = 256  # larger ints are shown as "<int of N bits>": decimal conversion is quadratic

# type -> function(obj) -> (opening text, iterable of children or (key, value) pairs, closing text, is_mapping)
_VIEWS: dict[type, Callable[[Any], tuple[str, Any, str, bool]]] = {}
# types whose own __repr__ is short and cheap (placeholders of the unpickler, registered by it)
_FIXED_REPR: set[type] = set()


def register_view(cls: type, view: Callable[[Any], tuple[str, Any, str, bool]]) -> None:
    """Show instances of ``cls`` as a container: ``view(obj) -> (open, children, close, is_mapping)``."""
    _VIEWS[cls] = view


def register_fixed_repr(*classes: type) -> None:
    """Classes whose ``repr`` is bounded by construction (a tensor placeholder's dtype and shape)."""
    _FIXED_REPR.update(classes)


class _Child:
    __slots__ = ("obj", "is_key")

    def __init__(self, obj: Any, is_key: bool = False):
        self.obj = obj
        self.is_key = is_key


def bounded_repr(obj: Any, limit: int = 200, view: Callable[[Any], Any] | None = None,
                 key_view: Callable[[Any], Any] | None = None) -> str:  # fmt: skip
    """``repr(obj)`` cut at ``limit`` characters (then ending in "…"), in time and memory O(limit).

    ``view`` maps each node before it is shown (e.g. a tensor placeholder to its JSON form), and
    ``key_view`` each mapping key; both are applied to one node at a time, never to a whole graph.
    """
    parts: list[str] = []
    size = 0
    stack: list[Iterator[Any]] = [iter((_Child(obj),))]
    while stack:
        if size > limit:
            break
        try:
            item = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if type(item) is str:
            parts.append(item)
            size += len(item)
            continue
        mapper = key_view if item.is_key else view
        node = item.obj if mapper is None else mapper(item.obj)
        shown = _container(node)
        if shown is None:
            text = _leaf(node, limit - size + 1)
            parts.append(text)
            size += len(text)
        else:
            stack.append(_tokens(*shown))
    text = "".join(parts)
    return text if size <= limit and not stack else text[: max(0, limit - 1)] + ELLIPSIS


def bounded_str(obj: Any, limit: int = 200) -> str:
    """``str(obj)`` for a str (cut), else :func:`bounded_repr`: what ``f"{obj}"`` should have been."""
    if type(obj) is str:
        return obj if len(obj) <= limit else obj[: max(0, limit - 1)] + ELLIPSIS
    return bounded_repr(obj, limit)


def _container(node: Any) -> tuple[str, Any, str, bool] | None:
    t = type(node)
    if t is list:
        return "[", node, "]", False
    if t is tuple:
        return "(", node, ",)" if len(node) == 1 else ")", False
    if t is dict:
        return "{", node.items(), "}", True
    if t is set or t is frozenset:
        if not node:
            return f"{t.__name__}(", (), ")", False
        return ("{", node, "}", False) if t is set else ("frozenset({", node, "})", False)
    view = _VIEWS.get(t)
    if view is None:
        for base in t.__mro__[1:]:  # subclasses of registered views (DCP records)
            view = _VIEWS.get(base)
            if view is not None:
                break
        if view is None:
            if isinstance(node, dict):  # OrderedDict and other dict subclasses: shown as their items
                return f"{t.__name__}({{", node.items(), "})", True
            return None
    return view(node)


def _tokens(opening: str, children: Any, closing: str, mapping: bool) -> Iterator[Any]:
    yield opening
    first = True
    for child in children:
        if not first:
            yield ", "
        first = False
        if mapping:
            key, value = child
            yield _Child(key, True)
            yield ": "
            yield _Child(value)
        else:
            yield _Child(child)
    yield closing


def _leaf(node: Any, room: int) -> str:
    t = type(node)
    if t is str or t is bytes or t is bytearray:
        cut = node[: max(1, room)]
        text = repr(cut)
        return text if len(cut) == len(node) else text + ELLIPSIS
    if t is int:
        return repr(node) if node.bit_length() <= MAX_INT_BITS_SHOWN else f"<int of {node.bit_length()} bits>"
    if t is bool or node is None or t is float or t is complex:
        return repr(node)
    if t in _FIXED_REPR:
        return repr(node)
    return f"<{t.__name__}>"


def short_number(value: Any) -> str:
    """An int or float as text without ever failing on size (``str(10**5000)`` raises)."""
    if type(value) is int and value.bit_length() > MAX_INT_BITS_SHOWN:
        return f"<int of {value.bit_length()} bits>"
    if type(value) is float and not math.isfinite(value):
        return str(value)
    return bounded_repr(value, 60)
