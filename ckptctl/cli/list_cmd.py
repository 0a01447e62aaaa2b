"""``ckptctl list DIR``: the "AVAILABLE CHECKPOINTS" report, grouped by kind, with a val_loss trend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from . import render
from .options import DirArg, JsonOpt
from .output import handle_errors, out_console, plain_table, print_json, stdout_is_terminal

if TYPE_CHECKING:  # the core is imported when the command runs, not when the app starts
    from ..ops.listing import Listing, Row

GROUP_TITLES = {
    "latest": "Latest", "best": "Best", "rolling": "Rolling", "emergency": "Emergency",
    "epoch": "Epoch", "replaced": "Replaced by restore", "partial": "Partial writes", "other": "Other files",
}  # fmt: skip
HEADERS = ("name", "step", "epoch", "val_loss", "size", "saved", "status")


def _complete_kind(incomplete: str) -> list[str]:
    """Shell completion for --kind: the groups first, then the individual kinds."""
    from ..layouts.naming import GROUP_OF, Kind

    choices = dict.fromkeys([*GROUP_OF.values(), *(k.value for k in Kind if k is not Kind.PARTIAL)])
    return [c for c in choices if c.startswith(incomplete)]


def _complete_sort(incomplete: str) -> list[str]:
    from ..ops.listing import SORT_KEYS

    return [key for key in SORT_KEYS if key.startswith(incomplete)]


@handle_errors
def list_command(
    directory: DirArg,
    kind: Annotated[
        Optional[list[str]],
        typer.Option(
            "--kind",
            "-k",
            help="Only this kind or group (latest, best, rolling, emergency, epoch, ...); repeatable.",
            autocompletion=_complete_kind,
        ),
    ] = None,
    sort: Annotated[
        str,
        typer.Option("--sort", help="Order: kind (grouped), step, name, size, time, val_loss.", autocompletion=_complete_sort),
    ] = "kind",
    json_output: JsonOpt = False,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="Read every file again; neither use nor update the listing cache."),
    ] = False,
) -> None:
    """List the checkpoints in DIR with step, epoch, val_loss, size, age and status."""
    from ..ops.listing import list_checkpoints

    listing = list_checkpoints(directory, kind, sort, use_cache=not no_cache)
    if json_output:
        print_json(listing.to_json())
    elif stdout_is_terminal():
        _rich_report(listing, grouped=sort == "kind")
    else:
        _plain_report(listing)


def _cells(row: Row) -> list[str]:
    data = row.to_json()
    status = row.status if not row.error else f"{row.status}: {row.error}"
    if row.replaced_at is not None:
        status += f" (replaced {render.age(row.replaced_at)})"
    return [
        render.display_text(row.entry.name),
        render.number(data["step"]),
        render.number(data["epoch"]),
        render.number(data["val_loss"]),
        render.size(row.entry.size_bytes),
        render.age(row.saved_at) if data["saved_at"] else "-",
        render.display_text(status),
    ]


def _plain_report(listing: Listing) -> None:
    print(plain_table(HEADERS, (_cells(r) for r in listing.rows)))
    print(_footer(listing))


def _footer(listing: Listing) -> str:
    trend = listing.val_loss_trend()
    line = f"{render.plural(len(listing.rows), 'file')}, total storage {render.size(listing.total_bytes)}"
    if len(trend) >= 2:
        first, last = trend[0], trend[-1]
        line += (
            f"\nval_loss by step {first[0]}..{last[0]}: {render.sparkline([v for _, v in trend])}"
            f"  {render.number(first[1])} -> {render.number(last[1])}"
        )
    return line


def _rich_report(listing: Listing, grouped: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    from ..layouts.naming import GROUP_OF

    console = out_console()
    console.print(Text(f"AVAILABLE CHECKPOINTS in {render.display_text(listing.directory)}", style="bold"))
    groups: dict[str, list[Row]] = {}
    for row in listing.rows:
        groups.setdefault(GROUP_OF[row.kind] if grouped else "all", []).append(row)
    for group, rows in groups.items():
        table = Table(title=GROUP_TITLES.get(group), title_justify="left", header_style="bold")
        for header in HEADERS:
            table.add_column(header, justify="right" if header in ("step", "epoch", "val_loss", "size") else "left")
        for row in rows:
            cells = _cells(row)
            style = {"ok": "green", "partial": "yellow"}.get(row.status, "red")
            table.add_row(*cells[:-1], Text(cells[-1], style=style))
        console.print(table)
    console.print(Text(_footer(listing)))
