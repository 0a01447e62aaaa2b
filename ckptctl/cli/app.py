"""The Typer application: registers one module per command.

Command modules import only light core modules at import time; anything heavy (torch) is
imported inside the command body, so ``ckptctl --help`` and completion stay fast.

``app`` (this module's attribute, built on first use) has every command. The console script
(:func:`main`) builds an app with the one command its arguments name, when they start with a
known command name and no shell completion is asked: importing and setting up the other commands'
modules and parameters is most of the start-up of a cached ``ckptctl list``. A lone ``--version``
gets none. The top-level help, an unknown command (its "did you mean") and completion get every
command, as before; a command's own help, options and errors do not depend on the other commands.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from typer.core import TyperCommand, TyperGroup

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


def _before_every_command(
    show_version: bool = typer.Option(False, "--version", help="Print ckptctl's version and exit.",
                                      callback=_print_version, is_eager=True),  # fmt: skip
) -> None:
    # Runs before each command: output must survive a terminal that cannot encode the tool's decorations.
    survive_any_encoding()


#: Every command, in registration order (the order of the help's panels' rows):
#: name -> (module of this package, its command function, help panel, one-line summary).
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "list": ("list_cmd", "list_command", "Look", "List checkpoints: step, epoch, val_loss, size, age, status."),
    "inspect": ("inspect_cmd", "inspect_command", "Look", "Show one checkpoint's metadata, args, RNG, model, optimizer."),
    "resume-cmd": ("resume_cmd", "resume_command", "Fix", "Print the command line that resumes training."),
    "compare": ("compare_cmd", "compare_command", "Look", "Compare two checkpoints: metadata, args, keys, tensors."),
    "demo": ("demo_cmd", "demo_command", "Try", "Train a tiny model with every kind of save, then list it."),
    "validate": ("validate_cmd", "validate_command", "Check", "Check checkpoints for damage (structure, unpickle, CRC-32)."),
    "restore": ("restore_cmd", "restore_command", "Fix", "Make a directory resumable again after damage."),
    "prune": ("prune_cmd", "prune_command", "Clean up", "Delete old checkpoints by a retention policy."),
    "du": ("du_cmd", "du_command", "Look", "Disk usage by kind, free space, how many more saves fit."),
    "export": ("export_cmd", "export_command", "Ship", "Export a checkpoint's weights as safetensors."),
    "chart": ("chart_cmd", "chart_command", "Look", "Plot the metrics the checkpoints carry, by step."),
}  # fmt: skip
COMPLETE_VAR = "_CKPTCTL_COMPLETE"  # set by the shell's completion script (Typer: _<PROG>_COMPLETE)


def build_app(names: list[str] | tuple[str, ...] | None = None) -> typer.Typer:
    """A Typer app with the commands ``names`` (default: every command, in :data:`COMMANDS` order)."""
    new = typer.Typer(
        name="ckptctl",
        cls=_Group,
        help="Operate PyTorch checkpoint directories: list, inspect, validate, restore, prune, compare.",
        no_args_is_help=True,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    new.callback()(_before_every_command)
    for name in COMMANDS if names is None else names:
        module, function, panel, summary = COMMANDS[name]
        callback = getattr(importlib.import_module(f"{__package__}.{module}"), function)
        new.command(name, cls=_Command, rich_help_panel=panel, short_help=summary)(callback)
    return new


def app_for(args: list[str]) -> typer.Typer:
    """The app that runs ``args``: only the named command's when ``args`` start with a known command
    name (and no completion is asked), none for a lone ``--version`` (its eager option prints and
    exits before a command is looked at), else :data:`app` with every command."""
    if COMPLETE_VAR not in os.environ:
        if args and args[0] in COMMANDS:
            return build_app([args[0]])
        if args == ["--version"]:
            return build_app([])
    return globals().get("app") or __getattr__("app")


def __getattr__(name: str):
    """``app``: every command, built (and its command modules imported) on first use."""
    if name == "app":
        built = build_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    A usage error found by the parser (missing argument, bad option value, unknown option or command)
    comes out like the tool's own errors: one ``ckptctl: error: ...`` line and one hint, exit 2.
    Typer 0.28 raises its usage errors as subclasses of the public ``typer.TyperException`` with
    ``exit_code`` 2 and the failing ``ctx`` when ``standalone_mode=False``.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app_for(args)(args=args, prog_name="ckptctl", standalone_mode=False)
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
