"""Exceptions of the core, each carrying the documented exit code the CLI turns it into.

Exit codes (docs/exit-codes.md, the one table for every command): 0 ok, 1 findings (including a checkpoint
file the user named that cannot be read, and a declined confirmation), 2 usage or bad input, 3 directory
locked, 70 internal error (a bug), 130 interrupted.
The core raises these; the CLI maps them to one line on stderr and the exit code, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_INTERNAL = 70  # EX_SOFTWARE of sysexits.h: an unexpected exception, a bug
EXIT_INTERRUPTED = 130
EXIT_DECLINED = EXIT_FINDINGS  # "no" at a confirmation prompt: nothing done, like apt-get's "Abort." (exit 1)


class CkptctlError(Exception):
    """Base of every expected error; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_USAGE


class BadInputError(CkptctlError):
    """A path or value the user gave cannot be used (missing, wrong type, no permission...)."""

    exit_code = EXIT_USAGE


class CheckpointError(CkptctlError):
    """A checkpoint file could not be read as a checkpoint. ``reason`` is the short verdict."""

    exit_code = EXIT_FINDINGS
    status = "unreadable"

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UnreadableCheckpoint(CheckpointError):
    """Damaged, truncated, or not a checkpoint at all."""

    status = "unreadable"


class PartialCheckpoint(CheckpointError):
    """A write that never finished (a sharded checkpoint directory without its ``.metadata``)."""

    status = "partial"


class UnsafeCheckpoint(CheckpointError):
    """The pickle references callables outside the allowlist; it was not executed."""

    status = "unsafe"

    def __init__(self, globals_: list[str], reason: str | None = None):
        self.globals = sorted(set(globals_))
        super().__init__(reason or "references " + ", ".join(self.globals))


class LockedError(CkptctlError):
    """Another process (a running training, a prune) holds the directory lock."""

    exit_code = EXIT_LOCKED


class SaveError(CkptctlError):
    """A checkpoint could not be written durably. Nothing visible changed: older files are intact.

    ``errno`` is the operating-system error number when one caused the failure (ENOSPC, EIO, ...).
    """

    exit_code = EXIT_FINDINGS

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class NoCheckpointError(CkptctlError):
    """Nothing loadable was found (every candidate missing, damaged or unsafe)."""

    exit_code = EXIT_FINDINGS


class CollectiveError(CkptctlError):
    """Ranks of a process group did not meet at the same ckptctl call (one rank skipped it, or was elsewhere).

    Raised instead of hanging: e.g. ``if rank == 0: mgr.save_best(...)``, where the broadcast inside
    would wait forever for ranks that never call it.
    """

    exit_code = EXIT_FINDINGS
