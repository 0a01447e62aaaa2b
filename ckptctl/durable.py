"""Durable, atomic file operations: the one place that writes checkpoint files.

Used by :class:`ckptctl.training.manager.CheckpointManager` and by ``ckptctl restore``. The protocol
(docs/architecture.md, "Durable, atomic writes"):

1. write to ``<final>.<pid>.<random>.tmp`` in the *same* directory (so the rename cannot cross
   file systems), flush, ``fsync``;
2. verify the written zip's records against their CRC-32 before the file becomes visible;
3. ``os.replace`` onto the final name (atomic: a reader sees the old file or the new one, never a
   mix), then ``fsync`` the directory so the rename itself survives a power cut.

On any failure the temp file is removed and nothing visible changes; the error says what happened
(:class:`~ckptctl.errors.SaveError`). A killed process can leave a ``*.tmp`` behind: readers ignore
it (``ckptctl.layouts.naming.parse`` classifies it as partial) and :func:`clean_stale_temp` removes it later.

Redundancy trade-off of :func:`link_or_copy`: a hard link ("link") costs nothing and protects
against deletion (``rm``, retention) but not against bit rot, because both names share the same
blocks. A "copy" writes independent blocks and survives a damaged block in the other file, at the
cost of writing the bytes again. A "reflink" shares blocks copy-on-write where the file system
supports it (btrfs, XFS): as cheap as a link, as independent as a copy against later overwrites,
but not against media damage of the shared blocks.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import shutil
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Callable, NoReturn

from .errors import CheckpointError, SaveError, UnreadableCheckpoint
from .formats.container import open_container, sniff_format
from .formats.crc import crc_records
from .formats.dcp import METADATA_FILE, read_directory
from .formats.safe_open import open_regular

TMP_SUFFIX = ".tmp"  # a write in progress; the same convention as ckptctl.layouts.naming.TMP_SUFFIX (tested)

LINK = "link"
COPY = "copy"
REFLINK = "reflink"
MODES = (LINK, COPY, REFLINK)
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
COPY_CHUNK = 64 * 1024 * 1024
# Errors that mean "this file system cannot do that here", not "the disk is in trouble".
_UNSUPPORTED = {errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS,
                errno.EINVAL, errno.ENOTTY}  # fmt: skip
_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}

# Indirections so tests can inject faults (disk full, EIO) exactly where the kernel would report them.
_fsync = os.fsync


def _open_temp(path: Path) -> BinaryIO:
    """Create the temp file exclusively (never reuse someone else's) and return it for writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "wb")


def temp_path(directory: str | os.PathLike[str], final_name: str) -> Path:
    """A fresh temp name next to ``final_name``: unique per process and call, ends in ``.tmp``."""
    return Path(directory) / f"{final_name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"


class StagedFile:
    """A fully written, fsynced and verified temp file waiting to be renamed onto its final name.

    Staging first lets a caller do the cheap preparatory renames of a flow (e.g. old best ->
    best_model_previous.pt) only once the expensive, failure-prone write has succeeded.
    Use as a context manager: leaving the block without :meth:`commit` discards the temp file.
    """

    def __init__(self, tmp: Path, final: Path):
        self.tmp = tmp
        self.final = final
        self.committed = False

    @property
    def size(self) -> int:
        return self.tmp.stat().st_size if not self.committed else self.final.stat().st_size

    def commit(self, *, fsync_dir: bool = True) -> Path:
        """Rename onto the final name (atomic) and, by default, make the rename durable."""
        replace_atomic(self.tmp, self.final, fsync_dir=fsync_dir)
        self.committed = True
        return self.final

    def discard(self) -> None:
        if not self.committed:
            _discard(self.tmp)

    def __enter__(self) -> "StagedFile":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.discard()


def stage(
    directory: str | os.PathLike[str], final_name: str, write_fn: Callable[[BinaryIO], None], *, verify: bool = True
) -> StagedFile:
    """Write ``write_fn(fileobj)`` to a temp file next to ``final_name``, fsync and verify it; nothing visible changes.

    Raises SaveError (with ``errno`` when the OS reported one); the temp file never survives an
    exception, including KeyboardInterrupt/SystemExit raised by a signal handler mid-write.
    """
    directory = Path(directory)
    final = directory / final_name
    tmp = temp_path(directory, final_name)
    try:
        with _open_temp(tmp) as fh:
            write_fn(fh)
            fh.flush()
            _fsync(fh.fileno())
        if verify:
            verify_crc(tmp)
    except BaseException as exc:
        _discard(tmp)
        _reraise(exc, final)
    return StagedFile(tmp, final)


def write_atomic(
    directory: str | os.PathLike[str],
    final_name: str,
    write_fn: Callable[[BinaryIO], None],
    *,
    verify: bool = True,
    fsync_dir: bool = True,
) -> Path:
    """Write ``directory/final_name`` through ``write_fn(fileobj)`` so it appears complete or not at all."""
    with stage(directory, final_name, write_fn, verify=verify) as staged:
        return staged.commit(fsync_dir=fsync_dir)


def verify_crc(path: str | os.PathLike[str]) -> int:
    """Check every record of a torch zip against its stored CRC-32; return how many were checked.

    0 means there was nothing to check (legacy format, or the writer switched CRC-32 off).
    Raises UnreadableCheckpoint on a mismatch or an unparseable container. torch.load does not
    check these CRCs itself, so this is the only guard against silently flipped bits.
    """
    path = Path(path)
    with open_regular(path) as fh:
        kind = sniff_format(fh)
        if kind == "legacy":
            return 0
        if kind != "zip":
            raise UnreadableCheckpoint("not a checkpoint: unknown file format")
        container = open_container(path, fh)
        if not container.has_checksums:
            return 0

        records = list(container.records.values())
        computed = crc_records(fh.fileno(), records)
    for record in records:
        actual = computed[record.key]
        if actual is None:
            raise UnreadableCheckpoint(f"truncated: record {record.key} is short")
        if actual != record.crc32:
            raise UnreadableCheckpoint(
                f"CRC-32 mismatch in record {record.key} (stored {record.crc32:08x}, computed {actual:08x})"
            )
    return len(records)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make renames/links/unlinks in ``path`` durable. File systems that cannot fsync a directory are skipped."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def replace_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, fsync_dir: bool = True) -> None:
    """Rename ``src`` over ``dst`` atomically and make it durable (both directories if they differ)."""
    src, dst = Path(src), Path(dst)
    try:
        os.replace(src, dst)
        if fsync_dir:
            fsync_directory(dst.parent)
            if src.parent.resolve() != dst.parent.resolve():
                fsync_directory(src.parent)
    except OSError as exc:
        _reraise(exc, dst)


def link_or_copy(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], mode: str = LINK, *, fsync_dir: bool = False
) -> str:
    """Make ``dst`` hold ``src``'s content without re-serialising; replace ``dst`` atomically.

    ``mode`` is "link" (hard link), "reflink" (copy-on-write clone) or "copy" (independent bytes).
    A link or reflink the file system refuses falls back to a copy. Returns the mode actually used.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    src, dst = Path(src), Path(dst)
    tmp = temp_path(dst.parent, dst.name)
    try:
        used = _materialise(src, tmp, mode)
        os.replace(tmp, dst)
    except BaseException as exc:
        _discard(tmp)
        _reraise(exc, dst)
    if fsync_dir:
        fsync_directory(dst.parent)
    return used


def stage_copy(
    src: str | os.PathLike[str], directory: str | os.PathLike[str], final_name: str, mode: str = REFLINK, *, verify: bool = True
) -> tuple[StagedFile, str]:
    """Put ``src``'s content into a verified temp file next to ``final_name``; nothing visible changes.

    Like :func:`link_or_copy`, but staged: the caller commits (atomic rename + directory fsync)
    only after its own preparations, e.g. keeping the file about to be replaced under another name
    (``ckptctl restore``). Returns the staged file and the mode actually used. Raises SaveError.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    final = Path(directory) / final_name
    tmp = temp_path(directory, final_name)
    try:
        used = _materialise(Path(src), tmp, mode)
        if verify:
            verify_crc(tmp)
    except BaseException as exc:
        _discard(tmp)
        _reraise(exc, final)
    return StagedFile(tmp, final), used


class StagedDirectory(StagedFile):
    """A sharded (DCP) checkpoint directory copied under a temp name, fsynced and re-read, waiting for commit."""

    def commit(self, *, fsync_dir: bool = True, keep_as: Path | None = None) -> Path:
        """Into place by :func:`ckptctl.formats.dcp.commit_directory` (an atomic swap with the current
        ``final``, which then moves to ``keep_as`` or is deleted). Always fsyncs (``fsync_dir`` is
        accepted for the :class:`StagedFile` interface)."""
        try:
            commit_directory(self.tmp, self.final, keep_as)
        except OSError as exc:
            _reraise(exc, self.final)
        self.committed = True
        return self.final

    def discard(self) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)


def stage_copy_directory(
    src: str | os.PathLike[str], directory: str | os.PathLike[str], final_name: str, mode: str = REFLINK
) -> tuple[StagedDirectory, str]:
    """:func:`stage_copy` for a sharded checkpoint directory: every file materialised in ``mode``
    (shard files are never modified in place, so ``link`` is safe), then the copy is read back by
    the safe reader (DCP records no checksums: structure, values and shard sizes are what can be
    checked). Returns the staged directory and the mode used (``copy`` if any file fell back)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    final = Path(directory) / final_name
    tmp = temp_path(directory, final_name)
    used: set[str] = set()
    try:
        os.mkdir(tmp)
        with os.scandir(src) as it:
            for dirent in it:
                if not dirent.is_file(follow_symlinks=False):
                    raise SaveError(f"could not copy {src}: {dirent.name} is not a regular file")
                used.add(_materialise(Path(dirent.path), tmp / dirent.name, mode))
        fsync_directory(tmp)
        read_directory(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _reraise(exc, final)
    return StagedDirectory(tmp, final), COPY if COPY in used else mode


def _materialise(src: Path, tmp: Path, mode: str) -> str:
    if mode == LINK:
        try:
            os.link(src, tmp)
            return LINK
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
    with open(src, "rb") as fin, _open_temp(tmp) as fout:
        used = REFLINK if mode == REFLINK and _try_clone(fin.fileno(), fout.fileno()) else COPY
        if used == COPY:
            _copy_bytes(fin.fileno(), fout.fileno(), os.fstat(fin.fileno()).st_size)
        fout.flush()
        _fsync(fout.fileno())
    return used


def _try_clone(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return False
        raise


def _copy_bytes(src_fd: int, dst_fd: int, size: int) -> None:
    """An in-kernel copy (sendfile never clones, so the blocks are independent); streamed fallback."""
    offset = 0
    try:
        while offset < size:
            sent = os.sendfile(dst_fd, src_fd, offset, min(COPY_CHUNK, size - offset))
            if sent == 0:
                break
            offset += sent
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    while offset < size:
        chunk = os.pread(src_fd, min(COPY_CHUNK, size - offset), offset)
        if not chunk:
            break
        os.pwrite(dst_fd, chunk, offset)
        offset += len(chunk)
    if offset != size:
        raise OSError(errno.EIO, f"source changed size while copying ({offset} of {size} bytes)")


def remove_entry(path: Path, is_directory: bool = False) -> None:
    """Delete one checkpoint: unlink a file; a sharded checkpoint directory goes through
    :func:`ckptctl.formats.dcp.remove_directory` (renamed to ``*.tmp`` first, never half-deleted under its name)."""
    if is_directory and not path.is_symlink():
        remove_directory(path)
    else:
        os.unlink(path)


def _discard(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _reraise(exc: BaseException, target: Path) -> NoReturn:
    """Raise a SaveError saying what happened, or ``exc`` unchanged when it is not a write failure."""
    error = _as_save_error(exc, target)
    if error is exc:
        raise exc
    raise error from exc


def _as_save_error(exc: BaseException, target: Path) -> BaseException:
    """The exception to raise instead of ``exc``: a SaveError saying what happened, or ``exc`` itself."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, SaveError)):
        return exc
    if isinstance(exc, CheckpointError):
        return SaveError(f"could not write {target}: verification failed: {exc.reason}; {_UNTOUCHED}")
    os_error = _find_os_error(exc)
    if os_error is None:
        return exc
    code = os_error.errno
    reason = _REASONS.get(code, "") if code is not None else ""
    detail = os_error.strerror or str(os_error)
    text = f"{reason} ({detail})" if reason else detail
    return SaveError(f"could not write {target}: {text}; {_UNTOUCHED}", code)


_UNTOUCHED = "the previous checkpoints are untouched"


def _find_os_error(exc: BaseException) -> OSError | None:
    """torch.save reports a failed write as RuntimeError; the OSError is in its context chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


# -------------------------------------------------------------- directories (sharded checkpoints)


def remove_directory(path: str | os.PathLike[str]) -> None:
    """Delete a checkpoint directory so that it is never seen half-deleted under its own name.

    Renamed first to a ``*.tmp`` name (partial, cleaned as a stale temp if we die mid-way),
    then removed, then the parent fsynced.
    """
    path = Path(path)
    doomed = path if path.name.endswith(TMP_SUFFIX) else path.with_name(f"{path.name}.deleting{TMP_SUFFIX}")
    if doomed != path:
        if doomed.exists():
            shutil.rmtree(doomed)
        os.rename(path, doomed)
        fsync_directory(path.parent)
    shutil.rmtree(doomed)


def commit_directory(tmp: Path, final: Path, previous: Path | None = None) -> None:
    """fsync every file and the directory, rename into place, fsync the parent.

    A directory cannot be renamed over a non-empty one, so an existing ``final`` is swapped with
    ``tmp`` in one atomic ``renameat2(RENAME_EXCHANGE)`` (Linux >= 3.15; ``final`` never disappears)
    and then moved to ``previous``, else to a ``*.tmp`` name removed afterwards. Where the exchange
    is unsupported, ``final`` moves aside first: for that moment it is absent, never half-written.
    """
    with os.scandir(tmp) as it:
        for dirent in it:
            if dirent.is_file(follow_symlinks=False):
                fd = os.open(dirent.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    fsync_directory(tmp)
    if not (tmp / METADATA_FILE).is_file():
        raise SaveError(f"sharded save of {final.name}: no .metadata was written")
    aside = previous if previous is not None else final.with_name(f"{final.name}.replaced{TMP_SUFFIX}")
    if final.exists() and not final.is_symlink():
        if aside.exists():
            remove_directory(aside)
        if _exchange(tmp, final):  # final holds the new checkpoint, tmp the old one
            os.rename(tmp, aside)
        else:
            os.rename(final, aside)
            os.rename(tmp, final)
    else:
        os.rename(tmp, final)
    fsync_directory(final.parent)
    if previous is None and aside.exists():
        shutil.rmtree(aside)


_RENAME_EXCHANGE = 2  # linux/fs.h


_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically; False where libc, kernel or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def repoint(link: Path, target: str, keep_as: Path | None = None) -> None:
    """``ckptctl restore``: point ``link`` (``latest``) at ``target`` atomically; what it was is kept as ``keep_as``
    (the same symlink; a real directory in the pointer's place is renamed), or, without ``keep_as``, dropped."""
    if os.path.lexists(link):
        if keep_as is not None:
            if link.is_symlink():
                os.symlink(os.readlink(link), keep_as)
            else:
                os.rename(link, keep_as)
        elif not link.is_symlink() and link.is_dir():
            remove_directory(link)
    replace_symlink(link, target)
    fsync_directory(link.parent)


def replace_symlink(link: Path, target: str) -> None:
    if link.exists() and not link.is_symlink():
        raise SaveError(f"{link} exists and is not a symlink: not replacing it")
    tmp = link.with_name(f"{link.name}{TMP_SUFFIX}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` (UTF-8): a DeepSpeed ``latest`` tag file."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the small file ``path`` atomically and durably: a temp file in the same directory,
    written and fsynced, renamed over ``path``, the directory fsynced. A reader sees the old bytes or
    the new ones, never a mix; on failure the temp file is removed."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            _fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    fsync_directory(path.parent)
