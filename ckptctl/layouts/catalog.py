"""One directory scan: every entry with what its name and ``stat`` say, metadata read lazily.

The filesystem is the truth: nothing here is cached across calls (``ckptctl.ops.listing_cache`` may
remember what ``list`` read from a file whose identity is unchanged; deleting it loses nothing).
Order is by kind, then step, then timestamp from the name (never mtime). ``Entry.status()`` reads
the checkpoint's pickle (not its tensors) on first use only, so commands that need names and sizes
alone (``du``, ``prune``) never open a checkpoint file.
"""

from __future__ import annotations

import errno
import os
import re
import stat as stat_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import naming
from ..errors import BadInputError, CheckpointError, UnreadableCheckpoint
from .base import POINTER_DANGLING, POINTER_LOOP, POINTER_OK, Layout, Pointer, Unit
from .naming import Kind, ParsedName
from ..formats import storage
from ..formats.storage import ObjectInfo, RemotePath, is_url

if TYPE_CHECKING:  # the readers are imported where a file is read: a cached ``list`` reads none
    from ..formats.reader import CheckpointFile
    from .metadata import Metadata


def read_checkpoint(path, **kwargs) -> CheckpointFile:
    """:func:`ckptctl.formats.reader.read_checkpoint`, imported on the first read (the safe
    reader and its unpickler are most of a listing's imports, and a cached listing reads nothing)."""
    from ..formats.reader import read_checkpoint as read

    return read(path, **kwargs)


def read_directory(path, **kwargs) -> CheckpointFile:
    """:func:`ckptctl.formats.dcp.read_directory`, imported on the first read of a sharded checkpoint."""
    from ..formats.dcp import read_directory as read

    return read(path, **kwargs)


STATUS_OK = "ok"
STATUS_UNREADABLE = "unreadable"
STATUS_UNSAFE = "unsafe"
STATUS_PARTIAL = "partial"
STATUS_DANGLING = "dangling"  # a symlink whose target does not exist
STATUS_LOOP = "loop"  # a symlink that leads back to itself
STATUS_INCOMPLETE = "incomplete"  # a layout's checkpoint with a required file missing (Unit.complete False)


@dataclass
class Entry:
    """One file in a checkpoint directory."""

    path: Path  # a storage.RemotePath for an object in an object store (``s3://...``)
    parsed: ParsedName
    size_bytes: int
    inode: int
    nlink: int
    allocated_bytes: int
    mtime: float
    _read: tuple[CheckpointFile | None, Metadata | None, CheckpointError | None] | None = field(
        default=None, repr=False
    )
    _read_has_spans: bool = field(default=False, repr=False)
    is_directory: bool = False  # a sharded (DCP) checkpoint directory, see ckptctl.formats.dcp
    # (dev, inode, size, mtime_ns, ctime_ns) of a plain file: same identity, same bytes (listing_cache)
    identity: tuple[int, int, int, int, int] | None = None
    link: str | None = None  # what the name points at when it is a symlink (``os.readlink``), else None
    broken: str | None = None  # STATUS_DANGLING / STATUS_LOOP: a symlink with nothing readable behind it
    unit: Unit | None = None  # a checkpoint of another framework's layout (Kind.CHECKPOINT), see layouts.base
    pointer: Pointer | None = None  # a name of another framework's layout that designates a unit (``last.ckpt``)
    target: "Entry | None" = field(default=None, repr=False)  # the unit entry a pointer designates, if any

    @property
    def is_symlink(self) -> bool:
        return self.link is not None

    @property
    def name(self) -> str:
        return self.parsed.name

    @property
    def kind(self) -> Kind:
        return self.parsed.kind

    @property
    def step(self) -> int | None:
        return self.parsed.step

    def read(self, *, spans: bool = True) -> tuple[CheckpointFile | None, Metadata | None, CheckpointError | None]:
        """Read the checkpoint safely once; later calls return the same result.

        ``spans=False`` (what ``status`` and ``metadata`` use) skips the storage records' local
        headers: a listing then reads a few KB per file however large it is. A later call that
        needs spans reads the file again, fully.
        """
        if self.broken is not None:
            return None, None, UnreadableCheckpoint(f"{self.broken} symlink to {self.link}")
        if self.pointer is not None:
            if self.target is not None:
                return self.target.read(spans=spans)
            return None, None, UnreadableCheckpoint(self.pointer.detail or f"points at nothing ({self.pointer.status})")
        if self.unit is not None:
            return self._read_unit(spans)
        if self._read is None or (spans and not self._read_has_spans and self._read[0] is not None):
            from .metadata import summarize

            try:
                if self.is_directory:  # a listing (spans=False) decodes only the top-level values
                    ckpt = read_directory(self.path, all_values=spans)
                else:
                    ckpt = read_checkpoint(self.path, spans=spans)
                self._read = (ckpt, summarize(ckpt), None)
            except CheckpointError as exc:
                self._read = (None, None, exc)
            self._read_has_spans = spans
        return self._read

    def _read_unit(self, spans: bool) -> tuple[CheckpointFile | None, Metadata | None, CheckpointError | None]:
        """A layout's checkpoint: its metadata from the unit (what the layout read from its small
        files); a file unit (a Lightning ``.ckpt``) or a DCP directory unit is also read safely,
        for its status and for the callers that want the object graph. Other directory units have
        no single object graph: ``ckpt`` is None."""
        unit = self.unit
        assert unit is not None
        if self._read is not None and not (spans and not self._read_has_spans and self._read[0] is not None):
            return self._read
        from ..formats.dcp import looks_like_dcp

        ckpt: CheckpointFile | None = None
        error: CheckpointError | None = None
        if not unit.is_directory or looks_like_dcp(unit.path):
            try:
                if unit.is_directory:
                    ckpt = read_directory(unit.path, all_values=spans)
                elif str(unit.path).lower().endswith(".safetensors"):
                    ckpt = _read_safetensors(Path(unit.path))
                else:
                    ckpt = read_checkpoint(unit.path, spans=spans)
            except CheckpointError as exc:
                error = exc
            except OSError as exc:
                error = UnreadableCheckpoint(f"cannot open: {exc.strerror or exc}")
        self._read = (ckpt, None if error is not None else unit_metadata(unit, ckpt), error)
        self._read_has_spans = spans
        return self._read

    @property
    def metadata(self) -> Metadata | None:
        return self.read(spans=False)[1]

    def status(self) -> tuple[str, str | None]:
        """(status, error) as ``list`` shows them: ok / unreadable / unsafe / partial; for a
        layout's checkpoint also ``incomplete`` (a required file missing), and for a layout's
        pointer its state (``stale``, ``damaged``)."""
        if self.kind is Kind.PARTIAL:
            return STATUS_PARTIAL, None
        if self.broken is not None:
            if self.pointer is not None and self.pointer.detail:
                return self.broken, self.pointer.detail
            return self.broken, f"symlink to {self.link}"
        if self.pointer is not None:
            if self.pointer.status != POINTER_OK:
                return self.pointer.status, self.pointer.detail
            return STATUS_OK, None
        _ckpt, _meta, error = self.read(spans=False)
        if error is not None:
            return error.status, error.reason
        if self.unit is not None and not self.unit.complete:
            missing = ", ".join(self.unit.missing) or "a required file"
            return STATUS_INCOMPLETE, f"missing {missing}"
        return STATUS_OK, None

    @property
    def effective_step(self) -> int | None:
        """Step from the name, else from the metadata (fixed names like latest.pt carry none)."""
        if self.parsed.step is not None:
            return self.parsed.step
        meta = self.metadata
        return meta.step if meta else None


def _stat_user_path(path: Path, what: str) -> os.stat_result:
    """``stat`` a path the user gave, turning every failure into one clear BadInputError line."""
    try:
        return path.stat()
    except FileNotFoundError:
        raise BadInputError(f"no such {what}: {path}") from None
    except PermissionError:
        raise BadInputError(f"permission denied: {path}") from None
    except OSError as exc:  # ELOOP (symlink loop), ENAMETOOLONG, ...
        raise BadInputError(f"cannot open {path}: {exc.strerror or exc}") from None


def check_directory(directory: str | os.PathLike[str]) -> Path:
    """Resolve a user-given checkpoint directory or raise BadInputError with one clear line."""
    path = Path(directory)
    info = _stat_user_path(path, "directory")
    if not stat_module.S_ISDIR(info.st_mode):
        raise BadInputError(f"not a directory: {path} (give the directory that holds the checkpoints)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise BadInputError(f"permission denied: {path}")
    return path


def scan(directory: str | os.PathLike[str] | RemotePath, *, require_checkpoints: bool = False,
         broken_links: bool = False, layouts: bool = True) -> list[Entry]:  # fmt: skip
    """Every regular file of ``directory`` as an Entry, in the stable catalog order.

    With ``require_checkpoints`` an empty directory, or one with no checkpoint names, is bad input.
    With ``broken_links`` a dangling or looping symlink is an Entry too (``broken`` set, size 0),
    for ``list`` and ``prune`` to report; other callers never see one.
    A URL (``s3://bucket/run``) is listed through :mod:`ckptctl.formats.storage` instead.

    A local directory that is not ckptctl's own (:func:`is_native`, the one rule every command
    follows; ``broken_links`` does not change it) is offered to the layouts of
    :mod:`ckptctl.layouts.registry` (unless ``layouts`` is False: the training-side writer asks
    about its own names only): when one recognises it, the entries are that layout's checkpoints
    (``Kind.CHECKPOINT``, ``entry.unit`` set) and its pointers (``Kind.LATEST``, ``entry.pointer``
    set; a dangling or looping one only with ``broken_links``). Other files of such a directory
    are not entries (``du`` walks the whole tree itself).
    """
    path = storage.location(directory) if is_url(directory) else check_directory(directory)  # type: ignore[arg-type]
    if isinstance(path, RemotePath):
        entries = _remote_entries(path)
    else:
        found = layout_entries(path, broken_links=broken_links) if layouts and not is_native(path) else None
        entries = found if found is not None else _local_entries(path, broken_links)
    entries.sort(key=lambda e: naming.sort_key(e.parsed))
    if require_checkpoints:
        if not entries:
            raise BadInputError(f"empty directory: {path} (no checkpoints)")
        if not any(e.parsed.is_checkpoint or e.kind is Kind.PARTIAL for e in entries):
            raise BadInputError(f"no checkpoints in {path} (no file matches the checkpoint names)")
    return entries


def layout_of(entries: list[Entry]) -> str | None:
    """The layout name of scanned entries (``hf-trainer``), or None for ckptctl's own names."""
    for entry in entries:
        if entry.unit is not None:
            return entry.unit.layout
        if entry.pointer is not None and entry.target is not None and entry.target.unit is not None:
            return entry.target.unit.layout
    return None


def layout_entries(directory: Path, *, broken_links: bool = False) -> list[Entry] | None:
    """The checkpoints and pointers of ``directory`` as the layout that recognises it sees them;
    None when no registered layout does. Pointers that are themselves a unit (a ``last.ckpt``
    copy) are shown once, as the unit."""
    from . import registry

    layout = registry.detect(directory)
    if layout is None:
        return None
    try:
        units = layout.units(directory)
        pointers = layout.pointers(directory, units)
        layout.protect(units, pointers)
    except OSError as exc:
        raise BadInputError(f"cannot read {directory}: {exc.strerror or exc}") from None
    entries = [e for e in (unit_entry(u) for u in units) if e is not None]
    by_name = {e.unit.name: e for e in entries if e.unit is not None}
    unit_paths = {os.path.normpath(u.path) for u in units}
    for pointer in pointers:
        if os.path.normpath(pointer.path) in unit_paths:
            continue
        entry = _pointer_entry(pointer, by_name.get(pointer.target) if pointer.target else None)
        if entry is not None and (entry.broken is None or broken_links):
            entries.append(entry)
    if broken_links:
        entries += _stray_broken_links(directory, {os.path.normpath(str(e.path)) for e in entries})
    return entries


def _stray_broken_links(directory: Path, known: set[str]) -> list[Entry]:
    """Dangling or looping symlinks under ckptctl's names in another framework's run (a ``latest.pt``
    left by a crash): the run stays the framework's (:func:`is_native`), but the dead link is shown
    and validated as broken, not hidden. Other names are the framework's business, not ours."""
    found: list[Entry] = []
    try:
        with os.scandir(directory) as it:
            links = [d for d in it if d.is_symlink() and os.path.normpath(d.path) not in known]
    except OSError:
        return found
    for dirent in links:
        entry = _entry(directory, dirent, broken_links=True)
        if entry is not None and entry.broken is not None and entry.parsed.kind is not Kind.OTHER:
            found.append(entry)
    return sorted(found, key=lambda e: e.name)


def unit_entry(unit: Unit) -> Entry | None:
    """A layout's checkpoint as an Entry: sizes from its files (``stat``), no file read yet.

    ``identity`` stays None: the listing cache never keeps a unit's facts (a directory's own stat
    does not change when a file inside it is rewritten)."""
    try:
        info = os.stat(unit.path)
    except OSError:
        return None
    size, allocated = unit.size_bytes, unit.allocated_bytes
    if not unit.files and not unit.is_directory:
        size, allocated = info.st_size, getattr(info, "st_blocks", 0) * 512
    try:
        link = os.readlink(unit.path) if os.path.islink(unit.path) else None
    except OSError:
        link = None
    return Entry(
        path=Path(unit.path),
        parsed=ParsedName(unit.name, Kind.CHECKPOINT, step=unit.step),
        size_bytes=size,
        inode=info.st_ino,
        nlink=1 if unit.is_directory else info.st_nlink,
        allocated_bytes=allocated,
        mtime=info.st_mtime,
        is_directory=unit.is_directory,
        link=link,
        unit=unit,
    )


def _pointer_entry(pointer: Pointer, target: Entry | None) -> Entry | None:
    """A layout's pointer (``last.ckpt`` symlink, DeepSpeed ``latest``) as a ``Kind.LATEST`` row:
    size 0 (its data is the unit's), ``link`` the checkpoint it names, ``broken`` when it is a
    dangling or looping symlink, like a native ``latest`` symlink."""
    try:
        info = os.lstat(pointer.path)
    except OSError:
        return None
    link = pointer.target
    if link is None and stat_module.S_ISLNK(info.st_mode):
        try:
            link = os.readlink(pointer.path)
        except OSError:
            link = None
    broken = {POINTER_DANGLING: STATUS_DANGLING, POINTER_LOOP: STATUS_LOOP}.get(pointer.status)
    step = target.unit.step if target is not None and target.unit is not None else None
    return Entry(Path(pointer.path), ParsedName(pointer.name, Kind.LATEST, step=step), 0, info.st_ino, info.st_nlink,
                 0, info.st_mtime, link=link, broken=broken, pointer=pointer, target=target)  # fmt: skip


def _read_safetensors(path: Path) -> CheckpointFile | None:
    """A ``.safetensors`` file unit: its checked header (no pickle anywhere). As a CheckpointFile
    when :mod:`ckptctl.formats.safetensors` offers one (``read_safetensors``), else None (the
    header's verdict alone)."""
    from ..formats import safetensors

    reader = getattr(safetensors, "read_safetensors", None)
    if reader is not None:
        return reader(path)
    safetensors.read_safetensors_header(path)
    return None


def unit_metadata(unit: Unit, ckpt: CheckpointFile | None = None) -> Metadata:
    """What ``list`` and ``inspect`` show of a layout's checkpoint, from the unit's records (and
    from the file's own keys where the unit says nothing)."""
    from .metadata import Metadata, summarize

    base = summarize(ckpt) if ckpt is not None else None
    metrics = unit.metrics
    train_loss = _first_number(metrics, ("loss", "train_loss"))
    val_loss = unit.monitored_value if unit.monitored_value is not None else _first_number(metrics, ("eval_loss", "val_loss"))
    epoch = int(unit.epoch) if isinstance(unit.epoch, (int, float)) and float(unit.epoch).is_integer() else None
    return Metadata(
        step=unit.step if unit.step is not None else (base.step if base else None),
        epoch=epoch if epoch is not None else (base.epoch if base else None),
        train_loss=train_loss if train_loss is not None else (base.train_loss if base else None),
        val_loss=val_loss if val_loss is not None else (base.val_loss if base else None),
        timestamp=unit.timestamp or (base.timestamp if base else None),
        checkpoint_type=base.checkpoint_type if base else None,
        args=unit.hparams if unit.hparams is not None else (base.args if base else None),
        dataloader_state=base.dataloader_state if base else None,
        rng_states=base.rng_states if base else [],
        extra_keys=base.extra_keys if base else [],
        root=ckpt.root if ckpt is not None else None,
        ckpt=ckpt,
    )


def _first_number(metrics: dict[str, float], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _local_entries(path: Path, broken_links: bool = False) -> list[Entry]:
    entries: list[Entry] = []
    try:
        with os.scandir(path) as it:
            for dirent in it:
                entry = _entry(path, dirent, broken_links)
                if entry is not None:
                    entries.append(entry)
    except PermissionError:
        raise BadInputError(f"permission denied: {path}") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return entries


def _entry(directory: Path, dirent: os.DirEntry[str], broken_links: bool = False) -> Entry | None:
    try:
        link = os.readlink(dirent.path) if dirent.is_symlink() else None  # d_type: no syscall for plain files
    except OSError:
        return None  # replaced by a plain file meanwhile, or vanished: the next scan sees it
    try:
        info = dirent.stat(follow_symlinks=True)
    except OSError as exc:  # a dangling or looping symlink, or a vanished file
        return _broken_entry(directory / dirent.name, link, exc) if broken_links and link is not None else None
    if stat_module.S_ISDIR(info.st_mode):
        entry = _directory_entry(directory / dirent.name, info)
    elif stat_module.S_ISREG(info.st_mode):
        entry = _file_entry(directory / dirent.name, info)
    else:
        return None
    if entry is not None:
        entry.link = link
    return entry


def _broken_entry(path: Path, link: str, error: OSError) -> Entry | None:
    """A symlink with nothing readable behind it: named like its kind, sized 0, identified by the link itself."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    parsed = naming.parse(path.name)
    if parsed.kind is Kind.OTHER:  # a DCP pointer (``latest``) has no ``.pt``
        parsed = naming.parse(path.name, directory=True)
    status = STATUS_LOOP if error.errno == errno.ELOOP else STATUS_DANGLING
    return Entry(path, parsed, 0, info.st_ino, info.st_nlink, 0, info.st_mtime, link=link, broken=status)


def _file_entry(path: Path, info: os.stat_result) -> Entry:
    """A regular file, with what its name and ``stat`` say."""
    return Entry(
        path=path,
        parsed=naming.parse(path.name),
        size_bytes=info.st_size,
        inode=info.st_ino,
        nlink=info.st_nlink,
        allocated_bytes=getattr(info, "st_blocks", 0) * 512,
        mtime=info.st_mtime,
        identity=(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns),
    )


def _directory_entry(path: Path, info: os.stat_result, *, any_name: bool = False) -> Entry | None:
    """A sharded (DCP) checkpoint directory named like a checkpoint (``rolling_step_000500``,
    ``latest`` -> symlink, ``<name>.tmp``); other subdirectories are not part of the layout.

    Its size is the sum of its files; ``nlink`` is 1 because a directory has one name (a ``latest``
    symlink shares its inode, so usage and retention count it once).
    """
    parsed = naming.parse(path.name, directory=True)
    if parsed.kind is Kind.OTHER and not any_name:
        return None
    from ..formats.dcp import directory_sizes

    size, allocated = directory_sizes(path)
    return Entry(path, parsed, size, info.st_ino, 1, allocated, info.st_mtime, is_directory=True)


def _remote_entries(directory: RemotePath) -> list[Entry]:
    """The objects below a prefix as Entries (one listing, plus one per sharded checkpoint prefix)."""
    entries: list[Entry] = []
    for obj in storage.listdir(directory):
        if not obj.is_dir:
            entries.append(_remote_entry(obj))
            continue
        parsed = naming.parse(obj.path.name, directory=True)
        if parsed.kind is not Kind.OTHER:
            size = storage.directory_size(obj.path)
            entries.append(Entry(obj.path, parsed, size, obj.identity, 1, size, obj.mtime, is_directory=True))  # type: ignore[arg-type]
    return entries


def _remote_entry(obj: ObjectInfo) -> Entry:
    """An object is its own data: no hard links (nlink 1), billed by its size (allocated = size), and
    its version identity stands in for the inode, so a prune's re-plan notices an object rewritten
    since the plan was shown."""
    return Entry(obj.path, naming.parse(obj.path.name), obj.size, obj.identity, 1, obj.size, obj.mtime)  # type: ignore[arg-type]


def entry_for_file(path: str | os.PathLike[str] | RemotePath) -> Entry:
    """An Entry for a single file the user named (for ``inspect``/``validate`` of one file)."""
    if is_url(path):
        obj = storage.stat(storage.location(path))
        if obj.is_dir:
            raise BadInputError(f"is a directory: {obj.path} (give a checkpoint file; sharded checkpoints "
                                "are not read from object storage)")  # fmt: skip
        return _remote_entry(obj)
    file_path = Path(path)  # type: ignore[arg-type]
    info = _stat_user_path(file_path, "file")
    if stat_module.S_ISDIR(info.st_mode):
        unit = unit_at(file_path)
        if unit is not None:
            return unit
        from ..formats.dcp import looks_like_dcp

        if looks_like_dcp(file_path):
            return _directory_entry(file_path, info, any_name=True)  # type: ignore[return-value]
        raise BadInputError(f"is a directory: {file_path} (give a checkpoint file)")
    if not os.access(file_path, os.R_OK):
        raise BadInputError(f"permission denied: {file_path}")
    return _file_entry(file_path, info)


def unit_at(path: str | os.PathLike[str]) -> Entry | None:
    """The Entry of ``path`` when it is a checkpoint of the layout its parent directory has
    (``run/checkpoint-500``, ``run/epoch=3-step=120.ckpt``); None otherwise. The one answer to "which
    unit is this path" (``list``/``validate`` here, ``inspect``/``compare``/``export`` through
    :func:`ckptctl.ops.units.find_unit`).

    The rule is :func:`scan`'s, so a path is a unit exactly when ``scan`` of its parent shows it as one
    and every command sees one layout per directory:

    - the parent is ckptctl's own layout, and its units are not asked for, when :func:`is_native`
      (the one rule: a checkpoint of ckptctl's decides; a trace of one -- a dangling link, a FIFO,
      a partial write -- only when no framework's layout recognises the parent). The path's own
      name counts only as an entry of its parent;
    - ``path`` is matched by its own name first: a copy hard-linked to another unit (a ``last.ckpt``
      saved as a link) is itself, not the unit it shares an inode with. Another spelling of the same
      path (``.``, ``a/../b``) matches by identity; a symlink never matches the unit it points at
      (a ``last.ckpt`` link is a pointer, not the checkpoint).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return None
    parent = path.parent if path.name not in ("", ".", "..") else path.resolve().parent
    if is_native(parent):
        return None
    entries = [e for e in layout_entries(parent) or [] if e.unit is not None]
    exact = os.path.abspath(path)
    return next((e for e in entries if os.path.abspath(e.path) == exact), None) or next(
        (e for e in entries if _same_path(e.path, path)), None)


NATIVE_CHECKPOINT = "checkpoint"  # one of ckptctl's names with what ckptctl writes under it (or a write of one)
NATIVE_TRACE = "trace"  # one of ckptctl's names with no checkpoint behind it
# ckptctl's own partial writes: ``<name>.tmp`` (a sharded save in progress, training.dcp_save),
# ``<name>.<pid>.<random>.tmp`` (durable.temp_path) and ``<name>.deleting.tmp`` (durable.remove_entry)
_OWN_TEMP_TAIL = re.compile(r"(?P<name>.+)\.(?:\d+\.[0-9a-f]+|deleting)")


def is_native(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` is ckptctl's own layout: THE rule, for every command and predicate.

    :func:`scan` (with or without ``broken_links``), :func:`unit_at`, ``ops.foreign`` (``restore``,
    ``prune``, ``resume-cmd``) and the loose-files layout all ask this, so one directory is one
    layout whatever the command: ``list`` never shows as ckptctl's a directory that ``prune`` then
    prunes as a Hugging Face run, or the other way round.

    1. A *checkpoint* of ckptctl's decides: one of its names with what ckptctl writes under that
       name behind it (symlinks followed) -- a regular file named like a file (``latest.pt``,
       ``rolling_step_000100.pt``, an empty or damaged one too: ``restore`` must heal it), or a
       directory named like a sharded checkpoint (``rolling_step_000500/``, ``latest`` -> one) --
       or one being written or removed by ckptctl: its partial writes ``<name>.tmp`` (a sharded
       save in progress), ``<name>.<pid>.<random>.tmp`` (:func:`ckptctl.durable.temp_path`),
       ``<name>.deleting.tmp``. Those hold ckptctl's data (the plain-DCP layout would otherwise
       take a half-written ``rolling_step_000500.tmp/`` for a run's checkpoint and prune it by its
       rules); a ``*.tmp`` whose name is not one of ckptctl's (an editor's, a removal of an HF
       ``checkpoint-4``) is nobody's evidence.
    2. A *trace* of ckptctl's with no checkpoint behind it -- a dangling or looping symlink, a FIFO
       or device under one of its names, a directory named like a file (``latest.pt/``), a file
       named like a directory (DeepSpeed's own ``latest``) -- decides only when no framework's
       layout (Hugging Face, Lightning, DeepSpeed, torchtitan, ...) recognises the directory. Why: after a crash the user's ``latest.pt`` may dangle while their rolling files
       are gone or elsewhere; if nobody else claims the directory it is theirs, ckptctl's, and
       ``restore`` heals the link. But an HF run with a stray dead ``latest.pt`` link is still an
       HF run: a link to nothing is not a checkpoint, and letting it make the directory "native"
       would hide every ``checkpoint-N/`` from ``list``, ``restore`` and ``resume-cmd``.
       The loose-files layout is no framework's claim (it takes any ``*.pt``): a trace beats it,
       so ``prune`` never starts deleting loose files because a ckptctl link went dead.
    3. Nothing of ckptctl's (no name of its grammar; a ``*.tmp`` of another tool; restore's
       ``.replaced-*`` records, which restore keeps in other frameworks' runs too): not native.

    False too when ``directory`` cannot be read (the caller's own check says so in words).
    """
    found = _native_names(Path(directory))
    if NATIVE_CHECKPOINT in found:
        return True
    return bool(found) and _framework_layout(Path(directory)) is None


def _native_names(directory: Path) -> set[str]:
    """What ckptctl's names in ``directory`` hold (:data:`NATIVE_CHECKPOINT` / :data:`NATIVE_TRACE`);
    stops at the first checkpoint. Reads names, and ``stat`` of the few that are ckptctl's."""
    found: set[str] = set()
    try:
        with os.scandir(directory) as it:
            for dirent in it:
                what = _native_name(dirent)
                if what is not None:
                    found.add(what)
                    if what == NATIVE_CHECKPOINT:
                        break
    except OSError:
        return set()
    return found


def _native_name(dirent: os.DirEntry[str]) -> str | None:
    name = dirent.name
    if name.endswith(naming.TMP_SUFFIX):
        stem = name[: -len(naming.TMP_SUFFIX)]
        tail = _OWN_TEMP_TAIL.fullmatch(stem)
        own = _grammar_name(stem) or (tail is not None and _grammar_name(tail["name"]))
        return NATIVE_CHECKPOINT if own else None
    as_file = naming.parse(name).is_checkpoint
    as_directory = naming.parse(name, directory=True).is_checkpoint
    if not (as_file or as_directory):
        return None
    try:
        mode = os.stat(dirent.path).st_mode  # follows symlinks: a link to a checkpoint is one
    except OSError:
        return NATIVE_TRACE  # a dangling or looping symlink (or a file gone meanwhile)
    if (as_file and stat_module.S_ISREG(mode)) or (as_directory and stat_module.S_ISDIR(mode)):
        return NATIVE_CHECKPOINT
    return NATIVE_TRACE


def _grammar_name(name: str) -> bool:
    return naming.parse(name).is_checkpoint or naming.parse(name, directory=True).is_checkpoint


def _framework_layout(directory: Path) -> Layout | None:
    """The first layout of the registry other than the catch-all (``fallback``: loose files) that
    recognises ``directory``; None when none does."""
    from . import registry

    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    for layout in registry.layouts():
        if not getattr(layout, "fallback", False) and layout.recognise(directory, names):
            return layout
    return None


def _same_path(a: Path, b: Path) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    if os.path.islink(a) != os.path.islink(b):  # a ``last.ckpt`` link is not the checkpoint it names
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def by_kind(entries: list[Entry], *kinds: Kind) -> list[Entry]:
    return [e for e in entries if e.kind in kinds]


__all__ = ["Entry", "scan", "check_directory", "entry_for_file", "by_kind", "UnreadableCheckpoint"]
