"""Disk usage of a checkpoint directory (``ckptctl du``, the manager's storage log line), from names and stat only.

Everything under the directory is counted, recursively: files in subdirectories ckptctl does not
know are ``other``. A directory of another framework's layout (:mod:`ckptctl.layouts.registry`)
is grouped per checkpoint unit and per kind of content (weights / optimizer / other, from the
layout's :class:`~ckptctl.layouts.base.UnitFile`), with files inside a unit's directory that the
layout does not name counted as that unit's ``other``. Hard links are counted once everywhere,
by (device, inode).

No checkpoint file of ckptctl's own names is opened (a layout directory's units are enumerated by
the layout, which reads its small record files: JSON, safetensors headers): sizes come from ``stat`` (through :func:`ckptctl.layouts.catalog.scan`), free
space from ``os.statvfs``. Hard links are counted once: the manager makes ``latest.pt`` and the
``_backup`` files as links of the file it just wrote, so adding up every name would count the same
blocks two or three times. Each shared inode is counted under the kind that owns the data (a
rolling file before the ``latest.pt`` that links to it), so the per-kind bytes add up to the total
and the names that share data are counted as ``linked_files``.

API for other modules: ``measure(directory) -> Usage``, ``summary_line(usage) -> str`` and the
shortcut ``storage_summary(directory) -> str`` for the manager's periodic log line (the same size
and counts ``du`` prints), and ``is_listed``/``on_disk_bytes``, which ``list`` totals its rows with:
"size on disk" has one definition (:data:`ON_DISK_LABEL`) in both commands.
"""

from __future__ import annotations

import os
import re
import stat as stat_module
from dataclasses import dataclass, field
from pathlib import Path

from ..layouts.base import CONTENT_OTHER, CONTENTS, Unit
from ..layouts.catalog import Entry, layout_of, scan
from ..errors import BadInputError
from ..wording import count
from ..layouts.naming import GROUP_OF, Kind
from ..formats.storage import is_url, location

# Report order of the kinds (as a person groups them), and the order in which a shared inode
# is attributed: the file that holds the data first, the names that link to it after.
GROUPS = ("latest", "rolling", "emergency", "best", "epoch", "replaced", "partial", "other")
# restore's ``.replaced-*`` records are hard links of the file they replaced: the data is counted
# under replaced only when no checkpoint name holds it any more.
OWNER_ORDER = ("rolling", "emergency", "epoch", "best", "latest", "replaced", "partial", "other")
_OWNER_RANK = {group: rank for rank, group in enumerate(OWNER_ORDER)}
# ckptctl's own files in a checkpoint directory: the directory lock (locking.LOCK_NAME) and the
# demo's marker (training.demo.MARKER; spelled here, ops sits below training). ``list`` and ``du``
# show them, and ``du`` counts them, only with ``--all``. (The listing cache lives outside.)
OWN_NAMES = frozenset({".ckptctl.lock", ".ckptctl-demo"})
# The one definition of "size on disk" of ``list`` and ``du`` (their headline totals): allocated
# blocks (``st_blocks``; the size for an object store), each inode once.
ON_DISK_LABEL = "on disk (allocated, hard links once)"
# Files that are not checkpoint names are rows of ``list`` only when they look like a checkpoint;
# logs and configs are not (``du`` counts them all, as ``other``).
LISTED_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def is_own(entry: Entry) -> bool:
    """One of ckptctl's own files, at the top of the directory (not a checkpoint, not data)."""
    return entry.name in OWN_NAMES and entry.kind is Kind.OTHER


def is_listed(entry: Entry, include_own: bool = False) -> bool:
    """Whether ``entry`` is a row of ``list`` (unfiltered): the files whose size on disk is its total."""
    if entry.kind is Kind.OTHER and not entry.name.endswith(LISTED_SUFFIXES):
        return include_own and is_own(entry)
    return True


def on_disk_bytes(entries) -> tuple[int, int]:
    """(allocated, apparent) bytes of ``entries``, each inode once: the headline "size on disk" and the
    apparent size as a secondary figure. Allocated is ``st_blocks`` per file (an object's size: it has
    no blocks), so a sparse file counts what it occupies, as in ``du``'s total; only when nothing has
    blocks at all (a file system that reports none) is the apparent size the figure, as in
    :func:`on_disk_total`."""
    seen: set[int] = set()
    allocated = apparent = 0
    for entry in entries:
        if entry.inode in seen:
            continue
        seen.add(entry.inode)
        allocated += entry.allocated_bytes
        apparent += entry.size_bytes
    return allocated or apparent, apparent


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


@dataclass
class KindUsage:
    """Files of one kind. Bytes count each inode once, under the kind that owns it."""

    kind: str
    files: int = 0
    apparent_bytes: int = 0
    allocated_bytes: int = 0
    linked_files: int = 0  # names whose data is already counted under another name (hard links)

    def add(self, entry: Entry, first_name: bool) -> None:
        self.files += 1
        if first_name:
            self.apparent_bytes += entry.size_bytes
            self.allocated_bytes += entry.allocated_bytes
        else:
            self.linked_files += 1


@dataclass
class UnitUsage:
    """One checkpoint of another framework's layout: its files, inodes once, and per content kind."""

    name: str
    path: Path
    step: int | None
    complete: bool
    usage: KindUsage
    contents: dict[str, KindUsage]


@dataclass
class FilesystemUsage:
    """The file system holding the directory (``os.statvfs``); free is what an unprivileged writer gets."""

    total_bytes: int
    free_bytes: int
    used_bytes: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass
class Projection:
    """How many more saves fit in the free space at the current checkpoint size (None: nothing to go by)."""

    checkpoint_bytes: int | None  # size of the newest checkpoint
    rolling_save_bytes: int | None  # one rolling save: the file, plus its copy when backups are copies
    rolling_saves_fit: int | None
    epoch_bytes: int | None
    epochs_fit: int | None


@dataclass
class Usage:
    directory: Path
    kinds: dict[str, KindUsage]
    counts: dict[str, int]  # files per layout kind (``Kind`` values), for the summary line
    filesystem: FilesystemUsage | None  # None for an object store: no capacity, no free space
    projection: Projection
    checkpoint_bytes: int  # on-disk bytes of checkpoint files (not partial/other), inodes once
    layout: str | None = None  # another framework's layout (``hf-trainer``); None: ckptctl's own names
    units: list[UnitUsage] = field(default_factory=list)  # per checkpoint of that layout
    contents: dict[str, KindUsage] = field(default_factory=dict)  # weights / optimizer / other, whole directory
    total: KindUsage = field(init=False)
    own: KindUsage | None = None  # ckptctl's own files (lock, demo marker): rows and total only with --all
    own_included: bool = False  # whether ``own`` is also counted in ``kinds["other"]`` and the total
    listed: KindUsage | None = None  # the rows ``list`` shows (:func:`is_listed`): files, bytes inodes once

    def __post_init__(self) -> None:
        self.total = KindUsage("total")
        for usage in self.kinds.values():
            self.total.files += usage.files
            self.total.apparent_bytes += usage.apparent_bytes
            self.total.allocated_bytes += usage.allocated_bytes
            self.total.linked_files += usage.linked_files


def measure(directory: str | os.PathLike[str], *, include_own: bool = False) -> Usage:
    """Scan ``directory`` (names and stat) and its file system; BadInputError for a bad directory.

    ckptctl's own files (:data:`OWN_NAMES`) are left out of the rows and totals unless
    ``include_own``; what they take is in ``Usage.own`` either way."""
    entries = scan(directory)
    own = KindUsage("ckptctl")
    for entry in entries:
        if is_own(entry):
            own.add(entry, True)
    if not include_own:
        entries = [entry for entry in entries if not is_own(entry)]
    usage = _measure(directory, entries, include_own)
    usage.own, usage.own_included = own, include_own
    listed = [entry for entry in entries if is_listed(entry, include_own)]
    usage.listed = KindUsage("listed", len(listed))
    usage.listed.allocated_bytes, usage.listed.apparent_bytes = on_disk_bytes(listed)
    return usage


def _measure(directory, entries: list[Entry], include_own: bool) -> Usage:
    path = location(directory)
    filesystem = None if is_url(path) else filesystem_usage(path)
    free = filesystem.free_bytes if filesystem is not None else None
    layout = layout_of(entries)
    if layout is not None:
        return _measure_layout(path, layout, entries, filesystem, free, include_own)
    kinds = _by_kind(entries)
    if not is_url(path):
        counted, seen = _covered(entries)
        if not include_own:
            counted |= {os.path.normpath(str(path / name)) for name in OWN_NAMES}
        _count_rest(path, counted, seen, kinds["other"])
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.kind.value] = counts.get(entry.kind.value, 0) + 1
    checkpoint_inodes = {e.inode: e.allocated_bytes or e.size_bytes for e in entries if e.parsed.is_checkpoint}
    return Usage(path, kinds, counts, filesystem, project(entries, free), sum(checkpoint_inodes.values()))


def _by_kind(entries: list[Entry]) -> dict[str, KindUsage]:
    """Per-kind usage; ``entries`` in scan order, so a stable sort by owner rank keeps step order within a kind."""
    kinds = {group: KindUsage(group) for group in GROUPS}
    seen: set[int] = set()
    owner_first = sorted(entries, key=lambda e: _OWNER_RANK[GROUP_OF[e.kind]])
    for entry in owner_first:
        kinds[GROUP_OF[entry.kind]].add(entry, entry.inode not in seen)
        seen.add(entry.inode)
    return kinds


def _covered(entries: list[Entry]) -> tuple[set[str], set[tuple[int, int]]]:
    """The paths and (device, inode)s the native entries count: each file, and the files directly
    inside each sharded (DCP) directory (what :func:`ckptctl.formats.dcp.directory_sizes` adds up)."""
    paths: set[str] = set()
    inodes: set[tuple[int, int]] = set()
    for entry in entries:
        try:
            if not entry.is_directory:
                info = os.stat(entry.path)
                paths.add(os.path.normpath(str(entry.path)))
                inodes.add((info.st_dev, info.st_ino))
                continue
            with os.scandir(entry.path) as it:
                for dirent in it:
                    info = dirent.stat(follow_symlinks=False)
                    if stat_module.S_ISREG(info.st_mode):
                        paths.add(os.path.normpath(dirent.path))
                        inodes.add((info.st_dev, info.st_ino))
        except OSError:
            continue
    return paths, inodes


def _walk_files(top: Path):
    """(path, lstat) of every regular file below ``top``, symlinks never followed, errors skipped."""
    for root, _dirs, files in os.walk(top, followlinks=False):
        for name in files:
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat_module.S_ISREG(info.st_mode):
                yield Path(path), info


def _count_rest(top: Path, counted: set[str], seen: set[tuple[int, int]], into: KindUsage) -> None:
    """Add every regular file below ``top`` whose path is not in ``counted`` to ``into``; one whose
    inode is in ``seen`` is a hard link of data counted already (a name, no bytes)."""
    for path, info in _walk_files(top):
        if os.path.normpath(str(path)) in counted:
            continue
        key = (info.st_dev, info.st_ino)
        _add_file(into, info, key not in seen)
        seen.add(key)


def _add_file(into: KindUsage, info: os.stat_result, first_name: bool) -> None:
    into.files += 1
    if first_name:
        into.apparent_bytes += info.st_size
        into.allocated_bytes += getattr(info, "st_blocks", 0) * 512
    else:
        into.linked_files += 1


def _measure_layout(path: Path, layout: str, entries: list[Entry], filesystem: FilesystemUsage | None,
                    free: int | None, include_own: bool = False) -> Usage:  # fmt: skip
    """A directory of another framework's layout: per unit, per content kind, the rest as other."""
    seen: set[tuple[int, int]] = set()
    counted: set[str] = set()
    checkpoints, other = KindUsage("checkpoint"), KindUsage("other")
    contents = {content: KindUsage(content) for content in CONTENTS}
    units: list[UnitUsage] = []
    for entry in entries:
        unit = entry.unit
        if unit is None:
            continue
        usage = UnitUsage(unit.name, Path(unit.path), unit.step, unit.complete, KindUsage(unit.name),
                          {content: KindUsage(content) for content in CONTENTS})  # fmt: skip
        for file_path, content in _unit_files(unit):
            try:
                info = os.stat(file_path)
            except OSError:
                continue
            if not stat_module.S_ISREG(info.st_mode):
                continue
            normal = os.path.normpath(str(file_path))
            if normal in counted:
                continue
            counted.add(normal)
            key = (info.st_dev, info.st_ino)
            first = key not in seen
            seen.add(key)
            for into in (usage.usage, usage.contents[content], contents[content], checkpoints):
                _add_file(into, info, first)
        units.append(usage)
    if not include_own and not is_url(path):
        counted |= {os.path.normpath(str(path / name)) for name in OWN_NAMES}
    _count_rest(path, counted, seen, other)
    kinds = {"checkpoint": checkpoints, "other": other}
    counts = {"checkpoint": len(units), "latest": sum(e.pointer is not None for e in entries)}
    newest = next((u for u in reversed(units) if u.complete and u.usage.apparent_bytes), None)
    size = newest.usage.apparent_bytes if newest is not None else None
    projection = Projection(size, size, free // size if size and free is not None else None, None, None)
    return Usage(path, kinds, counts, filesystem, projection, checkpoints.allocated_bytes or checkpoints.apparent_bytes,
                 layout, units, contents)  # fmt: skip


def _unit_files(unit: Unit):
    """(path, content) of every file of ``unit``: the layout's files first, then anything else
    inside its directory (content other: deleting the unit deletes it too)."""
    named = {os.path.normpath(str(f.path)) for f in unit.files}
    for unit_file in unit.files:
        yield Path(unit_file.path), unit_file.content if unit_file.content in CONTENTS else CONTENT_OTHER
    if not unit.files and not unit.is_directory:
        yield Path(unit.path), CONTENT_OTHER
    if unit.is_directory:
        for file_path, _info in _walk_files(Path(unit.path)):
            if os.path.normpath(str(file_path)) not in named:
                yield file_path, CONTENT_OTHER


def filesystem_usage(directory: Path) -> FilesystemUsage:
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        raise BadInputError(f"cannot stat the file system of {directory}: {exc.strerror or exc}") from None
    return FilesystemUsage(
        total_bytes=st.f_blocks * st.f_frsize,
        free_bytes=st.f_bavail * st.f_frsize,
        used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
    )


def project(entries: list[Entry], free_bytes: int | None) -> Projection:
    """Saves that fit in ``free_bytes``: the newest rolling (else latest, emergency) file sets the size.

    ``free_bytes`` None (an object store): the sizes are still given, the counts that fit are None.

    ``entries`` must be in :func:`ckptctl.layouts.catalog.scan` order (kind, then step/epoch/timestamp).
    """
    current = _newest(entries, Kind.ROLLING) or _newest(entries, Kind.LATEST) or _newest(entries, Kind.EMERGENCY)
    epoch = _newest(entries, Kind.EPOCH) or current
    rolling_save = None
    if current is not None:
        backup = _newest(entries, Kind.ROLLING_BACKUP)
        copies = 1 if backup is not None and backup.inode != current.inode else 0
        rolling_save = current.size_bytes * (1 + copies)
    epoch_bytes = epoch.size_bytes if epoch is not None else None
    return Projection(
        checkpoint_bytes=current.size_bytes if current is not None else None,
        rolling_save_bytes=rolling_save,
        rolling_saves_fit=free_bytes // rolling_save if rolling_save and free_bytes is not None else None,
        epoch_bytes=epoch_bytes,
        epochs_fit=free_bytes // epoch_bytes if epoch_bytes and free_bytes is not None else None,
    )


def _newest(entries: list[Entry], kind: Kind) -> Entry | None:
    """The last of ``kind`` in step/epoch/timestamp order (``entries`` in scan order, which is that order).

    Empty files are passed over: an empty ``rolling_step_999999.pt`` says nothing about the size of a save.
    """
    matching = [e for e in entries if e.kind is kind and e.size_bytes > 0]
    return matching[-1] if matching else None


def on_disk_total(usage: Usage) -> int:
    """The headline size of ``du`` (and ``list``'s footer): allocated bytes, hard links once."""
    return usage.total.allocated_bytes or usage.total.apparent_bytes


def file_counts(usage: Usage) -> str:
    """What the directory holds, in the words and numbers of ``du``'s table: ``14 files (2 latest,
    6 rolling, ...)``, or for another framework's layout ``3 hf-trainer checkpoints (24 files)``."""
    other = usage.kinds.get("other")
    if usage.layout is not None:
        checkpoints = usage.kinds["checkpoint"].files
        text = (f"{count(usage.counts.get('checkpoint', 0), f'{usage.layout} checkpoint')} "
                f"({count(checkpoints, 'file')})")  # fmt: skip
        return text + (f", {count(other.files, 'other file')}" if other is not None and other.files else "")
    parts = [f"{kind.files:,} {kind.kind}" for kind in usage.kinds.values() if kind.files]
    return count(usage.total.files, "file") + (f" ({', '.join(parts)})" if parts else "")


def summary_line(usage: Usage) -> str:
    """The manager's storage log line (and ``du --json``'s ``summary``), in ``du``'s definitions:
    ``Checkpoint storage: 280.0 KiB on disk (allocated, hard links once), 14 files (2 latest,
    6 rolling, 1 emergency, 3 best, 2 epoch) — 68.1 GiB free``."""
    import humanize

    free = "n/a" if usage.filesystem is None else humanize.naturalsize(usage.filesystem.free_bytes, binary=True)
    size = humanize.naturalsize(on_disk_total(usage), binary=True)
    return f"Checkpoint storage: {size} {ON_DISK_LABEL}, {file_counts(usage)} — {free} free"


def storage_summary(directory: str | os.PathLike[str]) -> str:
    """The one-line summary for ``directory``: what the manager logs every few saves."""
    return summary_line(measure(directory))


@dataclass(frozen=True)
class FreeThreshold:
    """``--warn-free``: a percentage of the file system or a byte count; exactly one is set."""

    text: str
    percent: float | None = None
    bytes: int | None = None

    def crossed(self, filesystem: FilesystemUsage | None) -> bool:
        """True when free space is below the threshold (the cron alert condition).

        An object store has no free space to fall short of: asking is bad input."""
        if filesystem is None:
            raise BadInputError("--warn-free needs a file system: an object store has no free space to check")
        if self.percent is not None:
            return filesystem.free_percent < self.percent
        return filesystem.free_bytes < (self.bytes or 0)


def parse_free_threshold(text: str) -> FreeThreshold:
    """``10%`` or a size: ``50G``/``50GiB`` (1024-based, like ``du``), ``50GB`` (1000-based), ``1048576``."""
    cleaned = text.strip()
    if cleaned.endswith("%"):
        try:
            percent = float(cleaned[:-1])
        except ValueError:
            percent = -1.0
        if not 0 <= percent <= 100:
            raise BadInputError(f"bad --warn-free {text!r}: a percentage must be between 0% and 100%")
        return FreeThreshold(text, percent=percent)
    return FreeThreshold(text, bytes=parse_size(text))


def parse_size(text: str) -> int:
    """A byte count from ``512``, ``10K``, ``1.5G``, ``2GiB`` (1024-based) or ``2GB`` (1000-based)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or (match.group(3).lower() == "ib" and not match.group(2)):
        raise BadInputError(f"bad size {text!r}: use e.g. 10%, 500M, 50G, 2TiB, 50GB or a byte count")
    number, prefix, suffix = match.groups()
    base = 1000 if suffix.lower() == "b" and prefix else 1024
    return int(float(number) * base ** _POWERS[prefix.lower()])
