"""The checkpoint listing (``ckptctl list``) as data: one row per file, totals, val_loss trend.

Nothing that could mislead is hidden: a symlink with nothing behind it is a row with status
``dangling`` or ``loop`` (and where it points), and the ``<name>.replaced-<time>`` records that
``restore`` keeps are rows of their own kind, ``replaced``, with the time of the replacement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..layouts.catalog import STATUS_OK, STATUS_PARTIAL, Entry, layout_of, scan
from ..errors import BadInputError
from .listing_cache import Facts, ListingCache
from .usage import LISTED_SUFFIXES, ON_DISK_LABEL, is_listed, is_own, on_disk_bytes
from ..layouts.naming import GROUP_OF, Kind
from ..formats.storage import is_url, location

# Foreign files are listed only when they look like a checkpoint; logs and configs are not (usage.is_listed).
CHECKPOINT_SUFFIXES = LISTED_SUFFIXES
SORT_KEYS = ("kind", "step", "name", "size", "time", "val_loss")
JSON_KIND = {Kind.PARTIAL: "other"}
STATUS_OWN = "ckptctl's own file"  # the lock, the demo's marker (shown with --all)
REMOTE_READERS = 8  # files of an object store read at once by a listing


@dataclass
class Row:
    entry: Entry
    facts: Facts
    layout: str | None = None  # the layout of the directory, for checkpoint and pointer rows alike

    @property
    def kind(self) -> Kind:
        return self.entry.kind

    @property
    def status(self) -> str:
        return self.facts.status

    @property
    def error(self) -> str | None:
        return self.facts.error

    @property
    def step(self) -> int | None:
        """Step from the name, else from the metadata (fixed names like latest.pt carry none)."""
        return self.entry.step if self.entry.step is not None else self.facts.step

    @property
    def saved_at(self) -> datetime | None:
        """Saved time from the metadata, else from the name (emergency checkpoints carry one)."""
        if self.facts.timestamp:
            return datetime.fromisoformat(self.facts.timestamp)
        stamp = self.entry.parsed.timestamp
        return stamp.astimezone() if stamp and self.kind is Kind.EMERGENCY else None

    @property
    def replaced_at(self) -> datetime | None:
        """When ``restore`` replaced the file this record keeps (the time in its name)."""
        stamp = self.entry.parsed.timestamp
        return stamp.astimezone() if stamp and self.kind is Kind.REPLACED else None

    @property
    def unit(self):
        """The layout's checkpoint behind this row (None for ckptctl's own names and pointers)."""
        return self.entry.unit

    @property
    def designated(self):
        """The unit of this row, or for a pointer row the unit it points at (None: neither)."""
        if self.entry.unit is not None:
            return self.entry.unit
        target = self.entry.target
        return target.unit if target is not None else None

    @property
    def epoch(self) -> float | int | None:
        """From the layout (a float for HF Trainer), the name, or the metadata."""
        unit = self.designated
        if unit is not None and unit.epoch is not None:
            return unit.epoch
        return self.facts.epoch if self.entry.parsed.epoch is None else self.entry.parsed.epoch

    @property
    def metrics(self) -> dict[str, float]:
        """Every number the row's checkpoint records: the unit's metrics, else the losses of the file."""
        if self.designated is not None:
            return dict(self.designated.metrics)
        return {k: v for k, v in (("val_loss", self.facts.val_loss), ("train_loss", self.facts.train_loss)) if v is not None}

    @property
    def monitor(self) -> str | None:
        return self.designated.monitor if self.designated is not None else None

    @property
    def best(self) -> bool:
        return self.unit.best if self.unit is not None else self.kind is Kind.BEST

    @property
    def complete(self) -> bool:
        if self.unit is not None:
            return self.unit.complete
        return self.kind is not Kind.PARTIAL

    @property
    def missing(self) -> list[str]:
        return list(self.unit.missing) if self.unit is not None else []

    def metric(self, key: str) -> float | None:
        if key == "val_loss":
            return self.facts.val_loss
        if key == "train_loss" and self.designated is None:
            return self.facts.train_loss
        value = self.metrics.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def to_json(self) -> dict:
        saved_at, replaced_at = self.saved_at, self.replaced_at
        unit = self.unit
        return {
            "name": self.entry.name,
            "path": str(self.entry.path),
            "kind": JSON_KIND.get(self.kind, self.kind.value),
            "step": self.step if self.kind is not Kind.PARTIAL else None,
            "epoch": self.epoch,
            "val_loss": self.facts.val_loss,
            "train_loss": self.facts.train_loss,
            "size_bytes": self.entry.size_bytes,
            "saved_at": saved_at.isoformat() if saved_at else None,
            "status": self.status,
            "checked": "metadata",  # the safe unpickle of the metadata; bytes not verified (validate does)
            "error": self.error,
            "link": self.entry.link,
            "replaced_at": replaced_at.isoformat() if replaced_at else None,
            "layout": self.layout,
            "complete": self.complete,
            "missing": self.missing,
            "best": self.best,
            "metrics": self.metrics,
            "monitor": self.monitor,
            "protected": unit.protected if unit is not None else None,
            "notes": list(unit.notes) if unit is not None else [],
        }


@dataclass
class Listing:
    directory: Path  # a storage.RemotePath for a URL
    rows: list[Row]
    total_bytes: int  # hard links counted once
    layout: str | None = None  # the layout of another framework (``hf-trainer``); None: ckptctl's own names
    layout_title: str | None = None  # for people (``Hugging Face Trainer``)
    shown_bytes: int | None = None  # size on disk of the rows shown: allocated, each inode once (usage.on_disk_bytes)
    shown_apparent_bytes: int | None = None  # the same rows' apparent size, each inode once

    @property
    def checkpoints(self) -> int:
        """Rows that are a checkpoint of the layout (not its pointers)."""
        return sum(row.unit is not None for row in self.rows)

    @property
    def monitor(self) -> str | None:
        """The metric the layout ranks checkpoints by, when its units agree on one."""
        monitors = {row.monitor for row in self.rows if row.monitor}
        return monitors.pop() if len(monitors) == 1 else None

    def to_json(self) -> dict:
        return {
            "directory": str(self.directory),
            "total_bytes": self.total_bytes,
            "checked": "metadata",
            "checkpoints": [row.to_json() for row in self.rows],
            "layout": self.layout,
            "layout_title": self.layout_title,
            "monitor": self.monitor,
            "shown_bytes": self.shown_bytes,
            "shown_apparent_bytes": self.shown_apparent_bytes,
            "size_on_disk": ON_DISK_LABEL,
        }

    def val_loss_trend(self) -> list[tuple[int, float]]:
        """(step, val_loss) of rolling, emergency and epoch checkpoints, by step: is training improving?"""
        points: dict[int, float] = {}
        for row in self.rows:
            if GROUP_OF[row.kind] not in ("rolling", "epoch", "emergency", "checkpoint") or row.status != "ok":
                continue
            if row.facts.val_loss is not None and row.step is not None:
                points[row.step] = row.facts.val_loss
        return sorted(points.items())


def list_checkpoints(directory: str | os.PathLike[str], kinds: list[str] | None = None, sort: str = "kind",
                     *, use_cache: bool = True, include_own: bool = False) -> Listing:  # fmt: skip
    """Scan ``directory``, read each checkpoint's metadata safely, and order the rows.

    What was read from a file is remembered in :mod:`ckptctl.ops.listing_cache` for as long as the
    file's identity stays the same; ``use_cache=False`` reads every file and leaves the cache alone.
    ckptctl's own files (the lock, the demo's marker) are rows only with ``include_own``.
    ``total_bytes`` is the whole directory's apparent size (as before); ``shown_bytes`` the size on
    disk of the rows listed (after ``kinds``), the figure the CLI's footer shows.
    """
    from ..formats.parse_memo import remembering  # light: loads no reader

    with remembering():  # a DCP unit is read by its layout, then by the catalog: one parse of its .metadata
        return _list(directory, kinds, sort, use_cache, include_own)


def _list(directory: str | os.PathLike[str], kinds: list[str] | None, sort: str, use_cache: bool,
          include_own: bool) -> Listing:  # fmt: skip
    wanted = _kinds(kinds)
    entries = scan(directory, require_checkpoints=True, broken_links=True)
    layout = layout_of(entries)
    total = _total_bytes(entries)
    local = None if is_url(directory) else Path(directory)  # objects in a store have no stat identity
    cache = ListingCache(local, enabled=use_cache)
    listed = []
    for entry in entries:
        if not is_listed(entry, include_own):  # the rows du's "listed" figure counts too
            continue
        if wanted and entry.kind not in wanted:
            cache.get(entry)  # kept in the cache for the next, unfiltered, listing
            continue
        listed.append(entry)
    if local is None:
        _read_concurrently([entry for entry in listed if entry.kind is not Kind.PARTIAL and entry.broken is None])
    rows = [Row(entry, _facts(entry, cache), layout) for entry in listed]
    cache.save()
    _check_sort(sort, rows)
    rows.sort(key=_sort_key(sort))
    shown, shown_apparent = on_disk_bytes(row.entry for row in rows)
    return Listing(location(directory), rows, total, layout, _layout_title(layout), shown, shown_apparent)


def _layout_title(name: str | None) -> str | None:
    if name is None:
        return None
    from ..layouts import registry

    try:
        return registry.by_name(name).title
    except KeyError:
        return name


def metric_keys(rows: list[Row]) -> list[str]:
    """The metric names the rows' checkpoints record, sorted."""
    return sorted({key for row in rows for key in row.metrics})


def _check_sort(sort: str, rows: list[Row]) -> None:
    """``--sort`` takes a fixed key or any metric a listed checkpoint records (``eval_loss``)."""
    if sort in SORT_KEYS:
        return
    keys = metric_keys(rows)
    if sort not in keys:
        extra = f"; metrics here: {', '.join(keys)}" if keys else ""
        raise BadInputError(f"unknown sort key {sort!r} (choose from {', '.join(SORT_KEYS)}{extra})")


def _read_concurrently(entries: list[Entry]) -> None:
    """Object stores: reading a file costs a few round trips, so several files are read at once
    (each Entry keeps what it read). Threads suffice: they wait on the network, not the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(REMOTE_READERS) as pool:
        for _ in pool.map(lambda entry: entry.read(spans=False), entries):
            pass


def _facts(entry: Entry, cache: ListingCache) -> Facts:
    """The listing's values for one file: from the cache, or read safely (and then cached)."""
    if entry.kind is Kind.PARTIAL:
        return Facts(STATUS_PARTIAL)
    if is_own(entry):  # never opened: the lock and the demo's marker are not checkpoints
        return Facts(STATUS_OWN)
    if entry.broken is not None:  # nothing to read, nothing to cache: the link is the whole story
        status, error = entry.status()
        return Facts(status, error)
    if entry.unit is not None or entry.pointer is not None:
        return _layout_facts(entry)  # never cached: a unit is many files, a directory's stat misses changes inside
    cached = cache.get(entry)
    if cached is not None:
        return cached
    status, error = entry.status()
    meta = entry.metadata if status == STATUS_OK else None
    if meta is None:
        facts = Facts(status, error)
    else:
        stamp = meta.timestamp.isoformat() if meta.timestamp else None
        facts = Facts(status, error, meta.step, meta.epoch, meta.val_loss, meta.train_loss, stamp)
    cache.put(entry, facts)
    return facts


def _layout_facts(entry: Entry) -> Facts:
    """A layout's checkpoint or pointer: what its unit records (small files only, read by the layout)."""
    status, error = entry.status()
    meta = entry.metadata
    if meta is None:
        return Facts(status, error)
    stamp = meta.timestamp.isoformat() if meta.timestamp else None
    return Facts(status, error, meta.step, meta.epoch, meta.val_loss, meta.train_loss, stamp)


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
        return lambda row: (row.step is None, row.step or 0, row.entry.name)
    if sort == "name":
        return lambda row: row.entry.name
    if sort == "size":
        return lambda row: (-row.entry.size_bytes, row.entry.name)
    if sort == "time":
        return lambda row: (row.saved_at is None, row.saved_at.timestamp() if row.saved_at else 0.0, row.entry.name)

    def by_metric(row: Row):
        value = row.metric(sort)
        return (value is None, value if value is not None else 0.0, row.entry.name)

    return by_metric


def _total_bytes(entries: list[Entry]) -> int:
    seen: set[int] = set()
    total = 0
    for entry in entries:
        if entry.inode in seen:
            continue
        seen.add(entry.inode)
        total += entry.size_bytes
    return total
