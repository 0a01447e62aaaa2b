"""The one byte progress bar of the command line (``compare --values``, ``validate``, ``export``).

A transient Rich bar on stderr: shown only when stderr is a terminal, never with ``--json`` or
``--quiet``, and only for runs of at least :data:`MIN_BYTES` (a small file finishes before a bar
could help). The total is given up front, so the bar says "12.0/96.0 MiB" from the first frame.
Otherwise the context manager yields ``None``, which the core takes as "report nothing", so a
piped run pays for no callbacks at all. ``rich.progress`` is imported only when a bar is shown
(start-up: ``ckptctl --help`` and ``list`` never load it).
"""

from __future__ import annotations

import time
from typing import Any

from .output import stderr_is_terminal

MIN_BYTES = 64 * 1024 * 1024


def bar_console() -> Any:
    """Where a bar is drawn: the stderr console when stderr is a terminal, else None (no bar).
    Tests replace this with a forced-terminal console writing into a buffer."""
    if not stderr_is_terminal():
        return None
    from .output import err_console

    return err_console()


class ByteProgress:
    """``with ByteProgress("validating", total, show=not json_output) as bar:`` then ``bar.advance(n)``
    (bytes just done, from any thread) or ``bar.update(done, total, *_)`` (a running count);
    ``bar`` is None when nothing is shown. ``seconds`` is the time spent inside the block either way.
    """

    def __init__(self, label: str, total: int, *, show: bool = True, min_bytes: int | None = None, console: Any = None):
        self.label = label
        self.total = max(0, int(total))
        self.seconds = 0.0
        self._console = console
        self._show = show and self.total >= (MIN_BYTES if min_bytes is None else min_bytes)
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> ByteProgress | None:
        self._started = time.perf_counter()
        if not self._show:
            return None
        console = self._console if self._console is not None else bar_console()
        if console is None:
            return None
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        self._bar = Progress(TextColumn(self.label), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
                             TimeRemainingColumn(), console=console, transient=True)  # fmt: skip
        self._task = self._bar.add_task(self.label, total=self.total)
        self._bar.start()
        return self

    def advance(self, nbytes: int) -> None:
        self._bar.advance(self._task, nbytes)

    def update(self, done: int, total: int | None = None, *_detail: Any) -> None:
        self._bar.update(self._task, completed=done, total=self.total if total is None else total)

    def refresh(self) -> None:
        """Draw now (the bar also redraws itself ten times a second)."""
        self._bar.refresh()

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._started
        if self._bar is not None:
            self._bar.stop()
