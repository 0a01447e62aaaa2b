"""``ckptctl resume-cmd CHECKPOINT``: the command that resumes a run with its saved hyperparameters.

stdout carries only the command line (so ``eval "$(ckptctl resume-cmd ...)"`` and
``... | bash`` work); warnings and the ``--compare`` table go to stderr.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from . import render
from .options import JsonOpt, complete_choices
from .output import err_console, fail, handle_errors, plain_table, print_json, stderr_is_terminal, styled, warn

if TYPE_CHECKING:  # the core is imported when the command runs, not when the app starts
    from ..ops.resume import ResumeCommand

HEADERS = ("key", "checkpoint value", "new value", "note")


@handle_errors
def resume_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CHECKPOINT",
            help="A checkpoint file, a directory (where to resume: its newest valid checkpoint of any kind), or latest / best (in --dir).",
            show_default=False,
        ),
    ],
    directory: Annotated[
        Optional[str], typer.Option("--dir", "-d", metavar="DIR", help="Directory that latest / best refer to (default: the current one).")
    ] = None,
    overrides: Annotated[
        Optional[list[str]],
        typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a saved arg (typed like the saved value); repeatable."),
    ] = None,
    allow_new: Annotated[bool, typer.Option("--allow-new", help="Allow --set keys the checkpoint's args do not have.")] = False,
    compare: Annotated[
        bool, typer.Option("--compare", "-c", help="Table of each --set: saved value, new value, and what it breaks (stderr).")
    ] = False,
    script: Annotated[
        Optional[str], typer.Option("--script", metavar="FILE", help="Training script (default: recorded in args, else a placeholder).")
    ] = None,
    python: Annotated[
        str, typer.Option("--python", metavar="COMMAND", help="Interpreter or launcher, split like a shell would (e.g. 'torchrun --nproc_per_node 4').")
    ] = "python",  # ckptctl.ops.resume.DEFAULT_PYTHON (tests/cli/test_resume_cmd.py checks they agree)
    resume_flag: Annotated[str, typer.Option("--resume-flag", metavar="FLAG", help="Option that takes the checkpoint path.")] = "--resume",
    bools: Annotated[
        str,
        typer.Option("--bools", metavar="flag|optional", autocompletion=complete_choices("flag", "optional"), help="flag: True -> --key, False left out (store_true); optional: False -> --no-key."),
    ] = "flag",
    json_output: JsonOpt = False,
) -> None:
    """Print the command line that resumes training from CHECKPOINT with every saved hyperparameter.

    Only data is printed, since eval runs it: the script is a path (not starting with -), every
    key an option name ([A-Za-z_][A-Za-z0-9_.-]*) written --key=value, every word shell-quoted
    and free of control characters, no list item argparse would take for an option. Saved args
    that break this are left out with a warning; a recorded script or a checkpoint path that does
    is refused (exit 1, "unsafe: ...", nothing on stdout: give --script); a bad --script,
    --python or --set is exit 2.
    """
    from ..ops.resume import build_resume_command
    from ..formats.storage import refuse_url

    from ..errors import CheckpointError

    refuse_url(checkpoint, "resume-cmd")
    refuse_url(directory, "resume-cmd")
    try:
        result = build_resume_command(
            checkpoint,
            directory=directory,
            overrides=overrides,
            allow_new=allow_new,
            script=script,
            python=python,
            resume_flag=resume_flag,
            bool_style=bools,
        )
    except CheckpointError as exc:  # the file it could not read: named, like inspect and compare do
        raise fail(_naming(checkpoint, directory, exc), exc.exit_code) from None
    if json_output:
        doc = result.to_json()
        doc["reason"] = result.resolution.reason  # a directory: why this checkpoint is where to resume
        print_json(doc)
        return
    for message in result.warnings:
        warn(message)
    if compare:
        _print_compare(result)
    if result.resolution.reason:
        warn(f"where to resume: {result.resolution.reason}")
    print(result.command)


def _naming(checkpoint: str, directory: str | None, exc: Exception) -> str:
    """``d/x.pt: unreadable: truncated ...``: the error with the file it is about, once."""
    from pathlib import Path

    message = str(exc)
    path = Path(directory or ".") / checkpoint if checkpoint in ("latest", "best") and directory else Path(checkpoint)
    if str(path) in message or path.name in message.split(":", 1)[0]:
        return message
    status = getattr(exc, "status", "unreadable")
    return f"{path}: {message}" if message.startswith(f"{status}:") else f"{path}: {status}: {message}"


def _cells(result: ResumeCommand) -> list[list[str]]:
    return [
        [render.display_text(c.key), "-" if c.is_new_key else render.short(c.checkpoint_value),
         render.short(c.new_value), c.note or ""]
        for c in result.changes
    ]  # fmt: skip


def _print_compare(result: ResumeCommand) -> None:
    """The comparison goes to stderr: stdout stays a runnable command line."""
    title = f"resuming {result.checkpoint} (step {render.number(result.step)}, epoch {render.number(result.epoch)})"
    if not result.changes:
        warn(f"{title}: no --set overrides, every saved value is kept")
        return
    if not stderr_is_terminal():
        warn(title)
        print(plain_table(HEADERS, _cells(result)), file=sys.stderr)
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(title=styled(title), title_justify="left", header_style="bold")
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for change, cells in zip(result.changes, _cells(result)):
        style = "red" if change.risk and change.changed else ("yellow" if change.is_new_key else "")
        table.add_row(*cells[:3], Text(cells[3], style=style))
    err_console().print(table)
