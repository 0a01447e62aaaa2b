"""The Typer application: registers one module per command.

Command modules import only light core modules at import time; anything heavy (torch) is
imported inside the command body, so ``ckptctl --help`` and completion stay fast.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperCommand, TyperGroup

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

#: The panels of the top-level help, in order. A command registered without ``rich_help_panel``
#: (a later addition) is shown under the panel this map names, else under "Other commands".
PANELS = ("Look", "Check", "Fix", "Clean up", "Ship", "Try")
DEFAULT_PANEL = {"list": "Look", "inspect": "Look", "du": "Look", "compare": "Look", "chart": "Look",
                 "validate": "Check", "restore": "Fix", "resume-cmd": "Fix", "prune": "Clean up",
                 "export": "Ship", "demo": "Try"}  # fmt: skip


def _summary(name: str, command) -> str:
    """The command's one-line summary, whole: its short_help, else the first sentence of its help."""
    text = command.short_help or (command.help or "").strip().split("\n\n")[0]
    text = " ".join(text.split())
    return text if command.short_help else text.split(". ")[0].rstrip(".") + "."


class _Command(TyperCommand):
    """Usage lines without Typer 0.28's braces around required arguments (``{DIR}`` -> ``DIR``)."""

    def collect_usage_pieces(self, ctx):  # type: ignore[override]
        return [_unbrace(piece) for piece in super().collect_usage_pieces(ctx)]


class _Group(TyperGroup):
    """The top-level help: commands grouped by panel (plain text, no boxes), summaries never cut."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():  # a command registered without cls=_Command (a later addition)
            if type(command) is TyperCommand:
                command.__class__ = _Command

    def format_commands(self, ctx, formatter) -> None:  # type: ignore[override]
        panels: dict[str, list[tuple[str, str]]] = {}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            panel = getattr(command, "rich_help_panel", None) or DEFAULT_PANEL.get(name, "Other commands")
            panels.setdefault(panel, []).append((name, _summary(name, command)))
        width = max((len(name) for rows in panels.values() for name, _ in rows), default=0)
        for panel in sorted(panels, key=lambda p: PANELS.index(p) if p in PANELS else len(PANELS)):
            with formatter.section(panel):
                formatter.write_dl([(name.ljust(width), text) for name, text in panels[panel]])


def _unbrace(piece: str) -> str:
    return piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece


app = typer.Typer(
    name="ckptctl",
    cls=_Group,
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


app.command("list", cls=_Command, rich_help_panel="Look",
            short_help="List checkpoints: step, epoch, val_loss, size, age, status.")(list_cmd.list_command)
app.command("inspect", cls=_Command, rich_help_panel="Look",
            short_help="Show one checkpoint's metadata, args, RNG, model, optimizer.")(inspect_cmd.inspect_command)
app.command("resume-cmd", cls=_Command, rich_help_panel="Fix",
            short_help="Print the command line that resumes training.")(resume_cmd.resume_command)
app.command("compare", cls=_Command, rich_help_panel="Look",
            short_help="Compare two checkpoints: metadata, args, keys, tensors.")(compare_cmd.compare_command)
app.command("demo", cls=_Command, rich_help_panel="Try",
            short_help="Train a tiny model with every kind of save, then list it.")(demo_cmd.demo_command)
app.command("validate", cls=_Command, rich_help_panel="Check",
            short_help="Check checkpoints for damage (structure, unpickle, CRC-32).")(validate_cmd.validate_command)
app.command("restore", cls=_Command, rich_help_panel="Fix",
            short_help="Make a directory resumable again after damage.")(restore_cmd.restore_command)
app.command("prune", cls=_Command, rich_help_panel="Clean up",
            short_help="Delete old checkpoints by a retention policy.")(prune_cmd.prune_command)
app.command("du", cls=_Command, rich_help_panel="Look",
            short_help="Disk usage by kind, free space, how many more saves fit.")(du_cmd.du_command)
app.command("export", cls=_Command, rich_help_panel="Ship",
            short_help="Export a checkpoint's weights as safetensors.")(export_cmd.export_command)
app.command("chart", cls=_Command, rich_help_panel="Look",
            short_help="Plot the metrics the checkpoints carry, by step.")(chart_cmd.chart_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    A usage error found by the parser (missing argument, bad option value, unknown option or command)
    comes out like the tool's own errors: one ``ckptctl: error: ...`` line and one hint, exit 2.
    Typer 0.28 raises its usage errors as subclasses of the public ``typer.TyperException`` with
    ``exit_code`` 2 and the failing ``ctx`` when ``standalone_mode=False``.
    """
    try:
        code = app(args=argv, prog_name="ckptctl", standalone_mode=False)
    except typer.Abort:
        print("ckptctl: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as exc:
        sys.exit(_usage_error(exc))
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: typer.TyperException) -> int:
    from .output import display_text

    ctx = getattr(exc, "ctx", None)
    message = exc.format_message()
    if ctx is not None and message == ctx.get_help():  # no arguments at all: the help, as before
        print(message, file=sys.stderr)
        return exc.exit_code
    message = " ".join(message.split()).rstrip(".").replace("valid int range", "valid integer")
    message = message.replace("valid float range", "valid number")
    message = message[:1].lower() + message[1:]
    where = ctx.command_path.removeprefix("ckptctl").strip() if ctx is not None else ""
    print(f"ckptctl: error: {where + ': ' if where else ''}{display_text(message)}", file=sys.stderr)
    if ctx is not None:
        print(f"try '{ctx.command_path} --help'", file=sys.stderr)
    return exc.exit_code
