"""While one listing runs, the parsed ``.metadata`` of DCP checkpoints (see ckptctl.formats.dcp).

``ckptctl list`` reads a DCP unit twice (the layout, then the catalog), so the second read reuses
the first parse. Only inside :func:`remembering` (``ops.listing.list_checkpoints`` enters it):
everywhere else (``du``, ``prune``, ``validate``, a training process) nothing is kept, and leaving
the outermost ``remembering`` forgets everything, so no parse outlives the listing that made it.
Light on purpose (no imports): the listing enters it without loading any reader.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

active = 0  # nesting depth of remembering()
memo: dict[tuple[int, int, int, int, int], Any] = {}  # (dev, inode, size, mtime_ns, ctime_ns) -> parsed root
remembered_bytes = 0  # sum of the sizes of the .metadata files in memo


@contextmanager
def remembering() -> Iterator[None]:
    global active
    active += 1
    try:
        yield
    finally:
        active -= 1
        if not active:
            forget()


def forget() -> None:
    global remembered_bytes
    memo.clear()
    remembered_bytes = 0
