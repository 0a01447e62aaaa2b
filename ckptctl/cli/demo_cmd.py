"""``ckptctl demo [DIR]``: train a tiny model with the real CheckpointManager, then list the result."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .options import JsonOpt
from .output import handle_errors, print_json
from .render import display_text


@handle_errors
def demo_command(
    directory: Annotated[
        str, typer.Argument(metavar="DIR", help="Where to write the demo checkpoints (created if missing).")
    ] = "demo_checkpoints",
    force: Annotated[
        bool, typer.Option("--force", help="Use DIR even if it is not empty and was not made by the demo.")
    ] = False,
    steps: Annotated[int, typer.Option("--steps", metavar="N", min=30, help="Training steps (3 epochs; Ctrl+C itself at 90%).")] = 300,
    json_output: JsonOpt = False,
) -> None:
    """Train a tiny model for a few hundred steps with rolling, best, epoch and emergency saves, then list DIR."""
    from ..training.demo import prepare_directory, run_demo
    from ..ops.listing import list_checkpoints
    from . import list_cmd

    import logging

    path = prepare_directory(directory, force)
    with _manager_log_to_stderr(logging.ERROR if json_output else logging.INFO):
        result = run_demo(path, steps=steps, on_event=None if json_output else _progress)
    if json_output:
        print_json({**result.to_json(), "checkpoints": list_checkpoints(path).to_json()["checkpoints"]})
        return
    print(f"ckptctl demo: done. Try: ckptctl inspect {display_text(path)}/latest.pt", file=sys.stderr)
    list_cmd.list_command(str(path))


def _progress(message: str) -> None:
    print(f"ckptctl demo: {display_text(message)}", file=sys.stderr)


def _escaping_formatter(fmt: str):
    """A logging formatter whose records come out as one escaped line (messages name files in DIR)."""
    import logging

    class EscapingFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return display_text(super().format(record))

    return EscapingFormatter(fmt)


class _manager_log_to_stderr:
    """Show the library's storage line and its warnings on stderr while the demo runs (the rest is in the events)."""

    def __init__(self, level: int):
        import logging  # only the demo logs: kept out of every other command's start-up

        self.logger = logging.getLogger("ckptctl")
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(_escaping_formatter("  %(name)s: %(message)s"))
        self.handler.setLevel(level)
        self.handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.getMessage().startswith("Checkpoint storage"))
        self.level = level
        self.warning = logging.WARNING

    def __enter__(self) -> None:
        self.previous = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(min(self.level, self.previous or self.warning))

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous)
