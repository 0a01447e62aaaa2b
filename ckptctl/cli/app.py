"""The Typer application: registers one module per command.

Command modules import only light core modules at import time; anything heavy (torch) is
imported inside the command body, so ``ckptctl --help`` and completion stay fast.
"""

from __future__ import annotations

import typer

from . import inspect_cmd
from . import list_cmd
from . import resume_cmd
from . import compare_cmd
from . import demo_cmd
from . import validate_cmd
from . import restore_cmd
from . import prune_cmd
from . import du_cmd
from . import export_cmd
from . import chart_cmd
from .output import survive_any_encoding

app = typer.Typer(
    name="ckptctl",
    help="Operate PyTorch checkpoint directories: list, inspect, validate, restore, prune, compare.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



def _print_version(value: bool) -> None:
    if value:
        print(f"ckptctl {package_version()}")
        raise typer.Exit(0)


def package_version() -> str:
    """The installed distribution's version (what a bug report should name), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ckptctl")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


@app.callback()
def _before_every_command(
    show_version: bool = typer.Option(False, "--version", help="Print ckptctl's version and exit.",
                                      callback=_print_version, is_eager=True),  # fmt: skip
) -> None:
    # Runs before each command: output must survive a terminal that cannot encode the tool's decorations.
    survive_any_encoding()


app.command("list")(list_cmd.list_command)
app.command("inspect")(inspect_cmd.inspect_command)
app.command("resume-cmd")(resume_cmd.resume_command)
app.command("compare")(compare_cmd.compare_command)
app.command("demo")(demo_cmd.demo_command)
app.command("validate")(validate_cmd.validate_command)
app.command("restore")(restore_cmd.restore_command)
app.command("prune")(prune_cmd.prune_command)
app.command("du")(du_cmd.du_command)
app.command("export")(export_cmd.export_command)
app.command("chart")(chart_cmd.chart_command)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ckptctl")
