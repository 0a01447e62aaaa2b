"""What a safe read gives: a checkpoint's inert object graph, where its bytes lie, and a walk over its tensors.

Shared by every reader (the torch zip and legacy reader in :mod:`ckptctl.formats.reader`, DCP
directories in :mod:`ckptctl.formats.dcp`), so neither has to import the other.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .bounded import bounded_str
from .container import Container
from .unpickler import Namespace, StorageRef, TensorRef


@dataclass(frozen=True)
class Span:
    """Where one storage's bytes lie in the file, and the CRC-32 recorded for them (zip only)."""

    key: str
    offset: int
    size: int
    crc32: int | None


@dataclass
class CheckpointFile:
    """A checkpoint read without running code: the inert object graph and where its bytes are."""

    path: Path
    format: str  # "zip", "legacy" or "dcp" (a sharded checkpoint directory)
    size_bytes: int
    root: Any
    storages: dict[str, StorageRef]
    spans: dict[str, Span]  # storage key -> bytes in the file
    container: Container | None = None
    notes: list[str] = field(default_factory=list)
    spans_read: bool = True  # False after read_checkpoint(..., spans=False): ``spans`` is empty

    def tensors(self) -> Iterator[tuple[str, TensorRef]]:
        """Every tensor placeholder with a dotted path (``model.0.weight``), in pickle order."""
        yield from iter_tensors(self.root)


def _is_tensor_ref(item: Any) -> bool:
    return isinstance(item, TensorRef)


def iter_tensors(root: Any, is_tensor: Callable[[Any], bool] = _is_tensor_ref) -> Iterator[tuple[str, Any]]:
    """Depth-first, iterative walk yielding (dotted path, tensor) pairs.

    ``is_tensor`` lets the same walk (and so the same names) run over a ``torch.load``-ed graph
    (``torch.is_tensor``), which ``compare --values`` matches against the safe reader's inventory.
    """
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        prefix, item = stack.pop()
        if is_tensor(item):
            yield prefix, item
            continue
        children = _named_children(item)
        for name, child in reversed(children):
            stack.append((f"{prefix}.{name}" if prefix else str(name), child))


def _named_children(item: Any) -> list[tuple[str, Any]]:
    if isinstance(item, dict):  # keys from the file: bounded text (a tuple key can expand to 2**60 items)
        return [(k if type(k) is str else bounded_str(k), v) for k, v in item.items()]
    if isinstance(item, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(item)]
    if isinstance(item, Namespace):
        return [(str(k), v) for k, v in item.attrs.items()]
    if isinstance(item, argparse.Namespace):  # the real one, from torch.load
        return [(str(k), v) for k, v in vars(item).items()]
    return []
