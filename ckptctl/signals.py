"""Emergency stop: turn Ctrl+C / a scheduler's SIGTERM into "save at the next step boundary, then exit".

A signal arriving mid-step must not save a half-updated model (the optimizer may have stepped
for some parameters only), so the handler only records the request; the training loop checks
:attr:`EmergencyStop.requested` between steps, writes the emergency checkpoint from a consistent
state, and calls :meth:`EmergencyStop.exit`. A second signal means "I really want out": it aborts
at once (SystemExit with the conventional code), and the durable writer removes any temp file it
was in the middle of.

    with EmergencyStop() as stop:
        for step in range(start, total):
            train_step()
            if stop.requested:
                manager.save_emergency(state(), step=step)
                stop.exit()            # SystemExit(130) for SIGINT, 143 for SIGTERM

Under ``torchrun`` a signal may reach one rank only (a scheduler, an OOM killer's warning, a
user's ``kill``), yet every rank must stop at the same step, or the others wait forever in the
next collective. The loop then calls :meth:`EmergencyStop.check` once per step on every rank
instead of reading ``requested``: one ``all_reduce(MAX)`` of the local signal number (8 bytes),
so all ranks see the same answer at the same step, and the emergency save happens once (rank 0).
Without a process group ``check()`` is just ``requested``.

Exit code in a process group: :meth:`EmergencyStop.exit` uses ``distributed_exit_code`` (default
0), because torchrun's elastic agent treats a non-zero worker exit as a failure: it kills the
other workers, reports a ChildFailedError and, with ``--max-restarts``, starts the job again. The
run did stop as asked, after a durable emergency checkpoint, so every rank exits 0 and torchrun
exits 0. Pass ``distributed_exit_code=None`` to keep 128 + signal on every rank.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Iterable, NoReturn

from . import distributed

log = logging.getLogger("ckptctl.signals")

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class EmergencyAbort(SystemExit):
    """Raised by the second signal: leave now, with exit code 128 + signal number."""


class EmergencyStop:
    """Context manager installing SIGINT/SIGTERM handlers that request a stop; restores the old ones.

    Outside the main thread Python cannot install signal handlers: the guard then logs a warning
    and offers only the plain API (:meth:`request`), so it is still safe to use there.
    """

    def __init__(self, signals: Iterable[int] = DEFAULT_SIGNALS, *, distributed_exit_code: int | None = 0):
        self.signals = tuple(signals)
        self.distributed_exit_code = distributed_exit_code
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a stop was asked for (by a signal or :meth:`request`)."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell convention."""
        return 128 + (self.signum if self.signum is not None else signal.SIGINT)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"

    def request(self, signum: int = signal.SIGINT) -> None:
        """The plain API: ask the loop to stop at the next step boundary, as a first signal would."""
        if self.signum is None:
            self.signum = signum

    def check(self) -> bool:
        """At a step boundary, on every rank: True on all ranks if a stop was requested on any.

        A rank without a signal of its own adopts the other ranks' (the highest number when
        several differ), so its log names the signal. Call it exactly once per step on every
        rank: it is a collective (see :mod:`ckptctl.distributed`); without a process group it only
        reads the local flag.
        """
        agreed = distributed.max_over_ranks(self.signum or 0)
        if agreed and self.signum is None:
            self.signum = agreed
            log.warning("rank %d: %s received by another rank: stopping at this step",
                        distributed.rank(), self.signal_name)  # fmt: skip
        return self.requested

    def exit(self) -> NoReturn:
        """End the program with the conventional code, after the emergency checkpoint was written.

        128 + signal number; in a process group ``distributed_exit_code`` instead (see the module doc).
        """
        if distributed.is_active() and self.distributed_exit_code is not None:
            raise SystemExit(self.distributed_exit_code)
        raise SystemExit(self.exit_code)

    def __enter__(self) -> "EmergencyStop":
        if threading.current_thread() is not threading.main_thread():
            log.warning("EmergencyStop outside the main thread: signals are not caught, use request()")
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            log.warning("%s received: saving an emergency checkpoint at the end of this step "
                        "(send it again to abort at once)", name)  # fmt: skip
            return
        log.error("second signal (%s): aborting at once without an emergency checkpoint", name)
        self._restore()
        raise EmergencyAbort(128 + signum)
