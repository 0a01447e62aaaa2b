"""The directory lock shared by a running CheckpointManager, ``prune`` and ``restore``.

An ``fcntl.flock`` on ``<dir>/.ckptctl.lock``: advisory, released by the kernel when the holder
dies (no stale locks after SIGKILL). The lock file itself is never deleted, so two processes can
never hold locks on two different inodes of the same name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from .errors import BadInputError, LockedError

LOCK_NAME = ".ckptctl.lock"


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
                return self
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockedError(
                        f"directory is locked by another process (a running training, prune or restore): {self.directory}"
                    ) from None
                time.sleep(self.poll)

    def release(self) -> None:
        if self._fd is not None:
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
