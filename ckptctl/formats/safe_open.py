"""Open a checkpoint's bytes only if they are a regular file.

Opening a FIFO for reading blocks until a writer appears, which for a FIFO planted where a
checkpoint should be is forever; a character device such as ``/dev/zero`` or ``/dev/urandom``
never ends. A read path (``list``, ``validate``, a cron job's ``prune``) must not hang on one
such name, so every place that opens a checkpoint's bytes goes through :func:`open_regular`:

- ``stat`` first, so a device or FIFO is refused without being opened at all (opening some
  devices has side effects, e.g. rewinding a tape);
- then ``open`` with ``O_NONBLOCK`` (a FIFO swapped in after the ``stat`` opens at once instead
  of waiting for a writer) and ``fstat`` the descriptor: what is checked is what is read;
- then ``O_NONBLOCK`` is cleared again: on a regular file it changes nothing, but it must not
  leak into later reads of a file object.

Errors of ``open`` itself (missing, permission, symlink loop) stay ``OSError`` so callers keep
their own wording for them; a file that is not regular is :class:`UnreadableCheckpoint`.
"""

from __future__ import annotations

import fcntl
import os
import stat as stat_module
from typing import BinaryIO

from ..errors import UnreadableCheckpoint

_KINDS = (
    (stat_module.S_ISDIR, "directory"),
    (stat_module.S_ISFIFO, "fifo"),
    (stat_module.S_ISCHR, "character device"),
    (stat_module.S_ISBLK, "block device"),
    (stat_module.S_ISSOCK, "socket"),
    (stat_module.S_ISLNK, "symlink"),
)


def file_kind(mode: int) -> str:
    """A short name for the file type in ``mode`` ("fifo", "character device", ...)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "regular file" if stat_module.S_ISREG(mode) else "special file"


def not_regular(mode: int) -> UnreadableCheckpoint:
    """The verdict on something that is not a regular file; a directory keeps its familiar wording."""
    if stat_module.S_ISDIR(mode):
        return UnreadableCheckpoint("is a directory")
    return UnreadableCheckpoint(f"not a regular file ({file_kind(mode)})")


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> BinaryIO:
    """``open(path, "rb")`` for a regular file; UnreadableCheckpoint for anything else, never a hang.

    ``follow_symlinks=False`` adds ``O_NOFOLLOW``: a symlink as the last component is refused
    (``OSError`` ELOOP) instead of followed.
    """
    info = os.stat(path, follow_symlinks=follow_symlinks)
    if not stat_module.S_ISREG(info.st_mode) and not stat_module.S_ISLNK(info.st_mode):
        raise not_regular(info.st_mode)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat_module.S_ISREG(info.st_mode):
            raise not_regular(info.st_mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise

