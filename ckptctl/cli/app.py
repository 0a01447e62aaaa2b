"""The Typer application: registers one module per command.

Command modules import only light core modules at import time; anything heavy (torch) is
imported inside the command body, so ``ckptctl --help`` and completion stay fast.
"""

from __future__ import annotations

import typer

from . import inspect_cmd, list_cmd
from . import resume_cmd
from . import compare_cmd
from . import demo_cmd
from . import validate_cmd, restore_cmd
from . import prune_cmd, du_cmd

app = typer.Typer(
    name="ckptctl",
    help="Operate PyTorch checkpoint directories: list, inspect, validate, restore, prune, compare.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("list")(list_cmd.list_command)
app.command("inspect")(inspect_cmd.inspect_command)
app.command("resume-cmd")(resume_cmd.resume_command)
app.command("compare")(compare_cmd.compare_command)
app.command("demo")(demo_cmd.demo_command)
app.command("validate")(validate_cmd.validate_command)
app.command("restore")(restore_cmd.restore_command)
app.command("prune")(prune_cmd.prune_command)
app.command("du")(du_cmd.du_command)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ckptctl")
