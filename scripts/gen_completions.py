#!/usr/bin/env python3
"""Regenerate completions/ckptctl.{bash,zsh,fish} from the live ``ckptctl`` app.

Run ``python scripts/gen_completions.py`` after changing the app; ``--check`` exits 1 when a
committed script differs (tests/test_completions.py runs the same check).

The scripts come from Typer's own ``--show-completion SHELL`` option, run in-process on the app.
Typer's scripts are thin: on every <Tab> the shell calls ``ckptctl`` back with
``_CKPTCTL_COMPLETE=complete_<shell>`` and the app answers from its live command tree, so commands
added later complete without regenerating. The files change only when the program name, the
completion variable or Typer's templates change. Typer auto-detects the *current* shell for
``--show-completion``; ``_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION`` makes it take the shell as
the option's value instead, so all three can be written from one shell.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"
SHELLS = ("bash", "zsh", "fish")
PROG = "ckptctl"


def render(shell: str) -> str:
    """The completion script Typer prints for ``ckptctl --show-completion SHELL``."""
    from ckptctl.cli.app import app

    out = io.StringIO()
    previous = os.environ.get("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION")
    os.environ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            app(["--show-completion", shell], prog_name=PROG)
    finally:
        if previous is None:
            os.environ.pop("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", None)
        else:
            os.environ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = previous
    script = out.getvalue()
    if f"_{PROG.upper()}_COMPLETE" not in script:
        raise RuntimeError(f"Typer printed no {shell} completion script: {script!r}")
    return script


def path_for(shell: str) -> Path:
    return COMPLETIONS / f"{PROG}.{shell}"


def stale() -> list[str]:
    """Shells whose committed script differs from what the app generates now."""
    return [shell for shell in SHELLS if not path_for(shell).exists() or path_for(shell).read_text() != render(shell)]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        outdated = stale()
        for shell in outdated:
            print(f"stale: {path_for(shell).relative_to(ROOT)} (run python scripts/gen_completions.py)", file=sys.stderr)
        return 1 if outdated else 0
    COMPLETIONS.mkdir(exist_ok=True)
    for shell in SHELLS:
        path_for(shell).write_text(render(shell))
        print(f"wrote {path_for(shell).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
