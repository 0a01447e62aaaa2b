#!/usr/bin/env python3
"""Start-up of the command line as a whole process: cached ``ckptctl list`` beside a bare ``--help``.

    python bench/bench_startup.py [--runs 21] [--tree DIR ...] [--no-installed]

Each line is the median wall time of N fresh processes; every round runs every (line, column)
once, interleaved, so a busy machine slows all columns alike. Columns:

- ``installed``: the ``ckptctl`` console script beside this interpreter (for a ``pip install -e``
  checkout that includes the editable-install finder on every start);
- one column per ``--tree DIR``: ``python -S`` with the source tree DIR on ``PYTHONPATH`` (then this
  environment's site-packages, without running their ``.pth`` files), started the way the console script starts
  (``from ckptctl.cli.app import main; main()``): as a regular, non-editable install runs. Pass a
  checkout of ``main`` (``git archive main | tar -x -C /tmp/base``) as a second tree for a baseline.

Lines: ``python -c pass`` (the interpreter alone), ``--help``, ``--version``, a cached
``list DIR`` of a demo directory (``ckptctl demo``, made once, cache warmed) into a pipe, the same
with ``--json``, the same on a pseudo-terminal (Rich's table, as a person sees it), and a list of the Hugging Face Trainer fixture (tests/fixtures/frameworks/hf_trainer,
copied to a temporary directory). The last line is the ratio list / --help per column
(issue #14's target: a cached list <= 0.15 s here). Printed twice: wall time, and the processes'
CPU time (user + system), which a machine busy with other work sways less.

Modules are compiled once, to ``.pyc`` files in a temporary ``PYTHONPYCACHEPREFIX``, as an
installed package runs (pip compiles at install); ``--no-bytecode`` compiles every module in every
process that has none (an environment with ``PYTHONDONTWRITEBYTECODE=1`` and a ``--no-compile``
install: only the standard library's own ``.pyc`` files exist).
The listing cache lives in a temporary ``CKPTCTL_CACHE_DIR``, one per column (a tree's reader
fingerprint differs from another's); everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CKPTCTL = Path(sys.executable).with_name("ckptctl")
SITE_PACKAGES = [p for p in sys.path if p.endswith("site-packages")]
LAUNCH = "import sys; from ckptctl.cli.app import main; sys.argv[0] = 'ckptctl'; main()"


def _column(name: str, tree: Path | None, env: dict[str, str]):
    """(title, argv prefix, env) of one column."""
    if tree is None:
        return name, [str(CKPTCTL)], dict(env)
    # This interpreter without ``site`` (-S), the tree, then this environment's site-packages on its
    # path: no .pth file runs (an editable install's finder would), as with a package installed normally.
    tree_env = {**env, "PYTHONPATH": os.pathsep.join([str(tree), *SITE_PACKAGES])}
    return name, [sys.executable, "-S", "-c", LAUNCH], tree_env


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of one fresh process: cpu (user + system) is less swayed by a busy machine.

    ``cwd`` is a directory without a ``ckptctl`` package: ``python -c`` puts the working directory
    first on the path, ahead of a column's tree."""
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed, cpu


def _time_on_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of one fresh process whose output is a terminal (a pseudo-terminal read to its end)."""
    import pty

    cpu, start = _cpu(), time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # the child: never returns
        try:
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    while True:
        try:
            if not os.read(fd, 65536):
                break
        except OSError:  # EIO: the child closed the terminal
            break
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed on a terminal ({os.waitstatus_to_exitcode(status)})")
    return elapsed, cpu


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "?"
    return f"load {one:.2f}/{five:.2f} on {os.cpu_count()} cpus"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="fresh processes per line and column (median)")
    parser.add_argument("--tree", action="append", default=[], type=Path,
                        help="a source tree to run from PYTHONPATH (repeatable; e.g. a checkout of main)")
    parser.add_argument("--no-installed", action="store_true", help="skip the installed console script column")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="compile every module from source in every process (PYTHONDONTWRITEBYTECODE=1, no .pyc)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    env = {**os.environ, "CKPTCTL_CACHE_DIR": str(work / "cache"), "COLUMNS": "100"}
    env.pop("PYTHONPATH", None)
    if args.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # the .pyc files that exist (the standard library's) are still used
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:  # as an installed package runs: modules compiled once (into the temporary directory, not the trees)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    columns = [] if args.no_installed else [_column("installed", None, env)]
    for tree in args.tree:
        columns.append(_column(tree.resolve().name or str(tree), tree.resolve(), env))
    for number, (_, _, col_env) in enumerate(columns):  # a cache per column: each tree has its own fingerprint
        col_env["CKPTCTL_CACHE_DIR"] = str(work / f"cache-{number}")
    if not columns:
        raise SystemExit("nothing to measure: give --tree or drop --no-installed")
    try:
        demo, hf = work / "demo", work / "hf_trainer"
        _time([*columns[0][1], "demo", str(demo)], columns[0][2], work)
        shutil.copytree(ROOT / "tests" / "fixtures" / "frameworks" / "hf_trainer", hf, symlinks=True)
        time.sleep(1.2)  # the cache stores only files that settled (listing_cache.SETTLE_SECONDS)
        lines = {
            "python -c pass": None,
            "--help": ["--help"],
            "--version": ["--version"],
            "list DIR (cached)": ["list", str(demo)],
            "list DIR --json": ["list", str(demo), "--json"],
            "list DIR, terminal": ["list", str(demo)],  # a Rich table on a pseudo-terminal
            "list hf_trainer": ["list", str(hf)],
        }
        def one(line: str, prefix: list[str], col_env: dict[str, str]) -> tuple[float, float]:
            argv = lines[line]
            if argv is None:
                return _time([sys.executable, "-c", "pass"], col_env, work)
            timer = _time_on_terminal if line.endswith("terminal") else _time
            return timer([*prefix, *argv], col_env, work)

        for _, prefix, col_env in columns:  # warm the cache (and the pyc files) of every column
            for line in lines:
                one(line, prefix, col_env)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        print(f"before: {_load()}", file=sys.stderr)
        for run in range(args.runs):
            for title, prefix, col_env in columns:
                for line in lines:
                    times.setdefault((line, title), []).append(one(line, prefix, col_env))
        print(f"after:  {_load()}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(line) for line in lines) + 2
    for which, label in ((0, "wall time"), (1, "cpu time (user + system)")):
        code = "no .pyc beyond the stdlib's" if args.no_bytecode else "with .pyc"
        print(f"{label}: median of {args.runs} fresh processes, {code}, seconds ({_load()})")
        print("".ljust(width) + "".join(title[:14].rjust(16) for title, _, _ in columns))
        medians = {key: statistics.median(v[which] for v in values) for key, values in times.items()}
        for line in lines:
            print(line.ljust(width) + "".join(f"{medians[(line, title)]:16.3f}" for title, _, _ in columns))
        for line, label in (("list DIR (cached)", "list / --help"), ("list DIR, terminal", "terminal / --help")):
            print(label.ljust(width) + "".join(f"{medians[(line, t)] / medians[('--help', t)]:16.2f}" for t, _, _ in columns))
        print()


if __name__ == "__main__":
    main()
