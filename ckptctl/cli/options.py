"""Shared ``Annotated`` option aliases, so every command spells ``--json``, ``--yes`` the same."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of a report.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking for confirmation.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", "-n", help="Show the plan, change nothing.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (for cron).")]
WaitOpt = Annotated[
    float,
    typer.Option("--wait", metavar="SECONDS", min=0, help="Wait up to SECONDS for the directory lock (default: fail at once)."),
]
DirArg = Annotated[str, typer.Argument(metavar="DIR", help="A checkpoint directory.", show_default=False)]
FileArg = Annotated[str, typer.Argument(metavar="FILE", help="A checkpoint file.", show_default=False)]


def complete_choices(*values: str):
    """A shell-completion function offering ``values`` that start with what was typed."""

    def complete(incomplete: str) -> list[str]:
        return [value for value in values if value.startswith(incomplete)]

    return complete
