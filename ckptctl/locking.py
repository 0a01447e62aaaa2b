"""The directory lock shared by a running CheckpointManager, ``prune`` and ``restore``.

An ``fcntl.flock`` on ``<dir>/.ckptctl.lock``: advisory, released by the kernel when the holder
dies (no stale locks after SIGKILL). The lock file itself is never deleted, so two processes can
never hold locks on two different inodes of the same name.

The holder writes who it is into the lock file (pid, command, start time: a few dozen bytes in one
``pwrite``) so that a refused process can say "locked by pid 1234 (ckptctl prune, since 12:03:04)".
That record is advisory text only: it is read bounded (:data:`HOLDER_MAX_BYTES`), parsed leniently,
and a missing, half-written or hostile record only makes the message vaguer, never an error.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from .errors import BadInputError, LockedError

LOCK_NAME = ".ckptctl.lock"
HOLDER_MAX_BYTES = 512  # the record is read at most this long; anything beyond is ignored
_FIELD_MAX = 80  # each field shown at most this long


def holder_record(pid: int | None = None, argv: list[str] | None = None, since: float | None = None) -> bytes:
    """The record the holder writes: ``pid=..``, ``cmd=..`` (argv[0] basename and argv[1]), ``since=..``."""
    argv = list(sys.argv if argv is None else argv)
    words = [os.path.basename(argv[0]) if argv else "?"] + argv[1:2]
    cmd = " ".join(w.replace("\n", " ").replace("\r", " ") for w in words)[:_FIELD_MAX]
    text = f"pid={os.getpid() if pid is None else pid}\ncmd={cmd}\nsince={time.time() if since is None else since:.0f}\n"
    return text.encode("utf-8", "replace")[:HOLDER_MAX_BYTES]


def describe_holder(data: bytes, now: float | None = None) -> str | None:
    """``"pid 1234 (ckptctl prune, since 12:03:04)"`` from a record, or None when it says nothing usable."""
    fields: dict[str, str] = {}
    for line in data[:HOLDER_MAX_BYTES].decode("utf-8", "replace").splitlines()[:8]:
        key, sep, value = line.partition("=")
        if sep and key in ("pid", "cmd", "since"):
            fields[key] = "".join(ch if ch.isprintable() else "?" for ch in value.strip()[:_FIELD_MAX])
    pid = fields.get("pid", "")
    if not pid.isdigit() or len(pid) > 10:
        return None
    details = [fields["cmd"]] if fields.get("cmd") else []
    since = fields.get("since", "")
    if since.isdigit() and len(since) <= 12:
        stamp = time.localtime(int(since))
        today = time.localtime(time.time() if now is None else now)
        fmt = "%H:%M:%S" if stamp[:3] == today[:3] else "%Y-%m-%d %H:%M:%S"
        details.append("since " + time.strftime(fmt, stamp))
    return f"pid {pid}" + (f" ({', '.join(details)})" if details else "")


def _read_holder(fd: int) -> str | None:
    try:
        return describe_holder(os.pread(fd, HOLDER_MAX_BYTES, 0))
    except (OSError, ValueError, OverflowError):
        return None


class DirectoryLock:
    """Exclusive lock on a checkpoint directory. ``wait`` seconds to wait for it (0 = fail at once)."""

    def __init__(self, directory: str | os.PathLike[str], wait: float = 0.0, poll: float = 0.05):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.wait = wait
        self.poll = poll
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            raise BadInputError(f"permission denied: cannot create {self.path}") from None
        except OSError as exc:
            raise BadInputError(f"cannot create lock file {self.path}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                self._write_holder(fd)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    if holder:
                        raise LockedError(f"directory is locked by {holder}: {self.directory}") from None
                    raise LockedError(
                        f"directory is locked by another process (a running training, prune or restore): {self.directory}"
                    ) from None
                time.sleep(self.poll)

    @staticmethod
    def _write_holder(fd: int) -> None:
        """Replace the record with ours: truncate, then one small pwrite (a reader racing it sees
        nothing or the whole record). A read-only or full file system only loses the record."""
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder_record(), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # no stale record once the lock is free
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
