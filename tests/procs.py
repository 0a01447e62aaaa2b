"""Child processes in tests: readiness through files the child writes, bounded waits, whole-tree kills,
and every process's output in the failure message.

A test that starts a process must never wait without a bound, never guess with a sleep that the child
got somewhere, and never fail without showing what the child printed. :class:`Job` does the three:

    with Job([sys.executable, script, ...], logdir) as job:
        pid = job.wait_for_file(logdir / "ready_rank1")   # the child wrote it (atomically: write_ready)
        os.kill(int(pid), signal.SIGTERM)                 # a signal only once the child said it is ready
        code = job.wait(timeout=120)
    assert code == 0, job.output()

Leaving the ``with`` block kills the whole tree still running (the process group of the job, and every
descendant, since torchrun starts each worker in a session of its own), and an exception inside it
(a timeout, a failed assertion) is re-raised as :class:`JobFailed` carrying the job's output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
POLL = 0.02  # how often a wait looks at its condition (polling a file the child writes, not a guess)
TAIL = 12000  # characters of each output shown in a failure message


class JobFailed(AssertionError):
    """A wait ran out, or the job ended before it said it was ready; the message holds its output."""


def write_ready(path: str | os.PathLike[str], text: str = "") -> None:
    """For the child: create ``path`` holding ``text``, atomically (a reader never sees it half written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def torchrun_command(script: str | os.PathLike[str], *args: str, nproc: int = 2) -> list[str]:
    """``torchrun --standalone`` of ``script`` on ``nproc`` local ranks, no restarts."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
        "--standalone", "--max-restarts", "0", "--monitor-interval", "0.1", str(script), *args,
    ]  # fmt: skip


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: this one, the repository importable, one OpenMP thread (2 shared cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1", **extra}


class Job:
    """One child process (and whatever it starts), its stdout+stderr in ``logdir/<name>.out``."""

    def __init__(
        self,
        argv: Sequence[str],
        logdir: str | os.PathLike[str],
        *,
        name: str = "job",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] = REPO,
    ):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.log = self.logdir / f"{name}.out"
        self.argv = list(argv)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=dict(env) if env is not None else child_env(), cwd=cwd,
                                         start_new_session=True)  # fmt: skip
        self.started = time.monotonic()

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.kill()
        if exc is not None and not isinstance(exc, JobFailed) and isinstance(exc, Exception):
            raise JobFailed(f"{type(exc).__name__}: {exc}\n{self.output()}") from exc

    def wait_for_file(self, path: str | os.PathLike[str], timeout: float = 120.0) -> str:
        """Wait until the job created ``path`` (see :func:`write_ready`); return its text.

        Fails at once if the job ended first, and after ``timeout`` seconds otherwise, with its output.
        """
        path = Path(path)
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise JobFailed(f"the job exited ({self.proc.returncode}) before writing {path.name}\n{self.output()}")
            if time.monotonic() > deadline:
                raise JobFailed(f"no {path.name} within {timeout:.0f} s\n{self.output()}")
            time.sleep(POLL)
        return path.read_text()

    def wait_for_output(self, needle: str, timeout: float = 120.0) -> str:
        """Wait until the job printed a line containing ``needle`` (it flushes it); return the output so far."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text(errors="replace")
            if needle in text:
                return text
            if self.proc.poll() is not None:
                raise JobFailed(f"the job exited ({self.proc.returncode}) before printing {needle!r}\n{self.output()}")
            if time.monotonic() > deadline:
                raise JobFailed(f"no {needle!r} within {timeout:.0f} s\n{self.output()}")
            time.sleep(POLL)

    def wait(self, timeout: float = 120.0) -> int:
        """The job's exit code, waiting at most ``timeout`` seconds (then :class:`JobFailed`, with the output)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise JobFailed(f"still running after {timeout:.0f} s (killed)\n{self.output()}") from None

    def kill(self) -> None:
        """SIGKILL the job's process group and every descendant still running (bounded)."""
        if self.proc.poll() is None:
            victims = _descendants(self.proc.pid)
            for pid in victims:  # first stop them from starting more, then kill
                _signal(pid, signal.SIGSTOP)
            _signal(-self.proc.pid, signal.SIGKILL)
            for pid in victims:
                _signal(pid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot end
                pass
        for pid in _descendants_by_session_marker(self.logdir):
            _signal(pid, signal.SIGKILL)

    def output(self) -> str:
        """The job's output and every other ``*.out``/``*.log`` in its log directory, each as a tail."""
        parts = [f"$ {' '.join(self.argv)}  (exit {self.proc.poll()}, {time.monotonic() - self.started:.1f} s)"]
        for path in sorted(self.logdir.glob("*")):
            if path.suffix in (".out", ".log", ".json", ".err") and path.is_file():
                text = path.read_text(errors="replace")
                cut = f"[... {len(text) - TAIL} characters cut ...]\n" if len(text) > TAIL else ""
                parts.append(f"----- {path.name} -----\n{cut}{text[-TAIL:]}")
        return "\n".join(parts)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from /proc's parent links), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def _descendants_by_session_marker(logdir: Path) -> list[int]:
    """Workers orphaned by a killed parent: the pids they wrote to ``logdir/pid_*`` that still run."""
    pids = []
    for pid_file in logdir.glob("pid_*"):
        try:
            pid = int(pid_file.read_text())
            if Path(f"/proc/{pid}").exists() and str(logdir) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
                errors="replace"
            ):
                pids.append(pid)
        except (OSError, ValueError):
            continue
    return pids


def run_on_pty(argv: Sequence[str], env: Mapping[str, str], timeout: float = 120) -> tuple[int, bytes]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal (what a person sees, Rich styling
    included); return its exit code and every byte it wrote, read until it closes the terminal.
    No read waits longer than ``timeout``; a child still running at the end is killed."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, env=dict(env), close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout} s from {list(argv)}; so far: {b''.join(chunks)!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        return proc.wait(timeout=timeout), b"".join(chunks)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
