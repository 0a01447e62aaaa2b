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
instead of reading ``requested``. Every ``check_every``-th call (default 5) is an agreement: it
collects the previous agreement's answer and (unless it says stop) starts the next one, an ``all_reduce(MAX)`` of the
local signal number on ckptctl's gloo control group (:func:`ckptctl.training.distributed.start_agreement`:
CPU only, so never a host-device sync with NCCL, with a timeout). The all_reduce runs in the
background for ``check_every`` steps, so collecting it does not wait for the slowest rank, and the
calls in between only count. Every rank starts and collects its agreements at the same call counts,
so all ranks see the same answer at the same step, and no rank runs more than one agreement ahead
(the collection waits for it); the emergency save happens once (rank 0). A signal is acted on
within ``2 * check_every`` steps. Without a process group ``check()`` is just ``requested``.

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

log = logging.getLogger("ckptctl.training.signals")

DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class EmergencyAbort(SystemExit):
    """Raised by the second signal: leave now, with exit code 128 + signal number."""


class EmergencyStop:
    """Context manager installing SIGINT/SIGTERM handlers that request a stop; restores the old ones.

    Outside the main thread Python cannot install signal handlers: the guard then logs a warning
    and offers only the plain API (:meth:`request`), so it is still safe to use there.
    """

    def __init__(
        self,
        signals: Iterable[int] = DEFAULT_SIGNALS,
        *,
        distributed_exit_code: int | None = 0,
        check_every: int = 5,
        timeout: float = distributed.DEFAULT_TIMEOUT,
    ):
        if check_every < 1:
            raise ValueError(f"check_every must be at least 1, got {check_every}")
        self.signals = tuple(signals)
        self.distributed_exit_code = distributed_exit_code
        self.check_every = check_every
        self.timeout = timeout  # seconds an agreement waits for the other ranks (then CollectiveError)
        self.signum: int | None = None
        self._checks = 0  # calls of check() in a process group: every check_every-th one is an agreement
        self._agreed = False
        self._pending: distributed.Agreement | None = None  # the agreement started at the last agreement call
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
        """At a step boundary, on every rank: True on all ranks, at the same call, if a stop was requested on any.

        In a process group every ``check_every``-th call agrees (see the module doc), the others return
        False without any communication even if this rank has a signal: the stop waits for the next
        agreement, so that every rank stops at the same step. A rank without a signal of its own
        adopts the other ranks' (the highest number when several differ), so its log names the signal.
        Call it exactly once per step on every rank. Without a process group it reads the local flag.
        Raises :class:`~ckptctl.errors.CollectiveError` when the ranks are not at the same call.
        """
        if not distributed.is_active():
            return self.requested
        if self._agreed:
            return True
        self._checks += 1
        if self._checks % self.check_every:
            return False
        pending, self._pending = self._pending, None
        agreed = pending.result() if pending is not None else 0  # started check_every calls ago: done by now
        if not agreed:
            self._pending = distributed.start_agreement(distributed.CALLS[0], self.signum or 0, timeout=self.timeout)
        if agreed and self.signum is None:
            self.signum = agreed
            log.warning("rank %d: %s received by another rank: stopping at this step",
                        distributed.rank(), self.signal_name)  # fmt: skip
        self._agreed = bool(agreed)
        return self._agreed

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
        pending, self._pending = self._pending, None
        if pending is not None and exc_type is None:  # every rank started it: collect it before the group goes
            pending.result()

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
