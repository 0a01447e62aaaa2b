"""The checkpoint listing (``ckptctl list``) as data: one row per file, totals, val_loss trend."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .catalog import Entry, scan
from .errors import BadInputError
from .naming import GROUP_OF, Kind
from .storage import location

# Foreign files are listed only when they look like a checkpoint; logs and configs are not.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SORT_KEYS = ("kind", "step", "name", "size", "time", "val_loss")
JSON_KIND = {Kind.PARTIAL: "other"}


@dataclass
class Row:
    entry: Entry
    status: str
    error: str | None

    @property
    def kind(self) -> Kind:
        return self.entry.kind

    def to_json(self) -> dict:
        meta = self.entry.metadata if self.status == "ok" else None
        saved_at = self.entry.saved_at if self.kind is not Kind.PARTIAL else None
        return {
            "name": self.entry.name,
            "path": str(self.entry.path),
            "kind": JSON_KIND.get(self.kind, self.kind.value),
            "step": self.entry.effective_step if self.kind is not Kind.PARTIAL else None,
            "epoch": (meta.epoch if meta else None) if self.entry.parsed.epoch is None else self.entry.parsed.epoch,
            "val_loss": meta.val_loss if meta else None,
            "train_loss": meta.train_loss if meta else None,
            "size_bytes": self.entry.size_bytes,
            "saved_at": saved_at.isoformat() if saved_at else None,
            "status": self.status,
            "error": self.error,
        }


@dataclass
class Listing:
    directory: Path  # a storage.RemotePath for a URL
    rows: list[Row]
    total_bytes: int  # hard links counted once

    def to_json(self) -> dict:
        return {
            "directory": str(self.directory),
            "total_bytes": self.total_bytes,
            "checkpoints": [row.to_json() for row in self.rows],
        }

    def val_loss_trend(self) -> list[tuple[int, float]]:
        """(step, val_loss) of rolling, emergency and epoch checkpoints, by step: is training improving?"""
        points: dict[int, float] = {}
        for row in self.rows:
            if GROUP_OF[row.kind] not in ("rolling", "epoch", "emergency") or row.status != "ok":
                continue
            meta = row.entry.metadata
            step = row.entry.effective_step
            if meta and meta.val_loss is not None and step is not None:
                points[step] = meta.val_loss
        return sorted(points.items())


def list_checkpoints(directory: str | os.PathLike[str], kinds: list[str] | None = None, sort: str = "kind") -> Listing:
    """Scan ``directory``, read each checkpoint's metadata safely, and order the rows."""
    if sort not in SORT_KEYS:
        raise BadInputError(f"unknown sort key {sort!r} (choose from {', '.join(SORT_KEYS)})")
    wanted = _kinds(kinds)
    entries = scan(directory, require_checkpoints=True)
    total = _total_bytes(entries)
    rows = []
    for entry in entries:
        if entry.kind is Kind.OTHER and not entry.name.endswith(CHECKPOINT_SUFFIXES):
            continue
        if wanted and entry.kind not in wanted:
            continue
        status, error = entry.status()
        rows.append(Row(entry, status, error))
    rows.sort(key=_sort_key(sort))
    return Listing(location(directory), rows, total)


def _kinds(kinds: list[str] | None) -> set[Kind]:
    """``--kind`` accepts a kind (``best_backup``) or a group (``best`` = all three best files)."""
    wanted: set[Kind] = set()
    for name in kinds or []:
        group = [k for k, g in GROUP_OF.items() if g == name]
        if group:
            wanted.update(group)
            continue
        try:
            wanted.add(Kind(name))
        except ValueError:
            choices = sorted({k.value for k in Kind} | set(GROUP_OF.values()))
            raise BadInputError(f"unknown kind {name!r} (choose from {', '.join(choices)})") from None
    return wanted


def _sort_key(sort: str):
    if sort == "kind":
        return lambda row: 0  # the catalog order already is by kind, step, timestamp
    if sort == "step":
        return lambda row: (row.entry.effective_step is None, row.entry.effective_step or 0, row.entry.name)
    if sort == "name":
        return lambda row: row.entry.name
    if sort == "size":
        return lambda row: (-row.entry.size_bytes, row.entry.name)
    if sort == "time":
        return lambda row: (row.entry.saved_at is None, row.entry.saved_at.timestamp() if row.entry.saved_at else 0.0, row.entry.name)

    def by_loss(row: Row):
        meta = row.entry.metadata if row.status == "ok" else None
        loss = meta.val_loss if meta else None
        return (loss is None, loss if loss is not None else 0.0, row.entry.name)

    return by_loss


def _total_bytes(entries: list[Entry]) -> int:
    seen: set[int] = set()
    total = 0
    for entry in entries:
        if entry.inode in seen:
            continue
        seen.add(entry.inode)
        total += entry.size_bytes
    return total
