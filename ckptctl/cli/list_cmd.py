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
# Another framework's layout: the metric column is named after what the layout ranks by (or eval loss).
LAYOUT_HEADERS = ("name", "step", "epoch", "{metric}", "best", "size", "complete", "status")


def _complete_kind(incomplete: str) -> list[str]:
    """Shell completion for --kind: the groups first, then the individual kinds."""
    from ..layouts.naming import GROUP_OF, Kind

    choices = dict.fromkeys([*GROUP_OF.values(), *(k.value for k in Kind if k is not Kind.PARTIAL)])
    return [c for c in choices if c.startswith(incomplete)]


def _complete_sort(incomplete: str) -> list[str]:
    from ..ops.listing import SORT_KEYS

    return [key for key in SORT_KEYS if key.startswith(incomplete)]  # metric names depend on the directory


@handle_errors
def list_command(
    directory: DirArg,
    kind: Annotated[
        Optional[list[str]],
        typer.Option(
            "--kind",
            "-k",
            metavar="KIND",
            help="Only this kind or group (latest, best, rolling, emergency, epoch, ...); repeatable.",
            autocompletion=_complete_kind,
        ),
    ] = None,
    sort: Annotated[
        str,
        typer.Option("--sort", metavar="KEY", help="Order: kind (grouped), step, name, size, time, val_loss, or any metric the "
                     "checkpoints record (eval_loss, eval_accuracy, ...).", autocompletion=_complete_sort),
    ] = "kind",
    json_output: JsonOpt = False,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="Read every file again; neither use nor update the listing cache."),
    ] = False,
    show_all: Annotated[
        bool,
        typer.Option("--all", "-a", help="Also list ckptctl's own files (the directory lock, the demo's marker)."),
    ] = False,
) -> None:
    """List the checkpoints in DIR with step, epoch, val_loss, size, age and status."""
    from ..ops.listing import list_checkpoints

    listing = list_checkpoints(directory, kind, sort, use_cache=not no_cache, include_own=show_all)
    if json_output:
        print_json(listing.to_json())
    elif listing.layout is not None:
        _layout_report(listing, rich=stdout_is_terminal())
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
    from ..ops.usage import ON_DISK_LABEL

    line = (f"{render.plural(len(listing.rows), 'file')}, {render.size(listing.shown_bytes)} {ON_DISK_LABEL}; "
            f"{render.size(listing.shown_apparent_bytes)} apparent")  # fmt: skip
    if len(trend) >= 2:
        first, last = trend[0], trend[-1]
        line += (
            f"\n{render.display_text(listing.monitor or 'val_loss')} by step {first[0]}..{last[0]}: "
            f"{render.sparkline([v for _, v in trend])}"
            f"  {render.number(first[1])} -> {render.number(last[1])}"
        )
    return line


def _fit_footer(footer: str, width: int) -> str:
    """A footer line too wide for the terminal breaks at its ``; `` (a figure is never split by a wrap)."""
    from rich.cells import cell_len

    return "\n".join(line.replace("; ", "\n") if cell_len(line) > width else line for line in footer.split("\n"))


def _rich_report(listing: Listing, grouped: bool) -> None:
    """One table: a ``kind`` column names each group on its first row, and a rule separates the groups."""
    from ..layouts.naming import GROUP_OF

    console = out_console()
    console.print(render.styled_line(f"AVAILABLE CHECKPOINTS in {render.display_text(listing.directory)}", "bold"))
    headers = list(HEADERS)
    rows, sections, styles = [], [], []
    previous = None
    for row in listing.rows:
        group = GROUP_OF[row.kind] if grouped else None
        cells = _cells(row)
        rows.append(cells)
        styles.append(_status_style(row.status))
        sections.append(previous is not None and group != previous)
        previous = group
    if grouped:
        headers.insert(0, "kind")
        shown: set[str] = set()
        for row, cells in zip(listing.rows, rows):
            group = GROUP_OF[row.kind]
            cells.insert(0, "" if group in shown else group)
            shown.add(group)
    _print_table(console, headers, rows, sections, styles, right=("step", "epoch", "val_loss", "size"))
    console.print(render.styled_line(_fit_footer(_footer(listing), console.width)))


def _status_style(status: str) -> str:
    from ..ops.listing import STATUS_OWN

    return {"ok": "green", "partial": "yellow", STATUS_OWN: "dim"}.get(status, "red")


# Narrow terminals (render.fit_table): these columns give way first, in this order, then the status
# wraps, then the box goes, then the late columns give way while the name would be cut below
# NAME_FLOOR characters; the name is cut last, in the middle (``rolli…_000220.pt``).
DROP_ORDER = ("kind", "saved", "epoch", "complete", "best")  # kind: the rules show the groups already
SHRINK_ORDER = ("status", "complete", "name")
LATE_DROP_ORDER = ("size", "val_loss", "step")  # a layout's metric column gives way where val_loss does
NAME_FLOOR = 16

# The table without its box: no verticals, two spaces between columns, a rule under the header and
# between groups (Rich's box lines: top, head, head rule, mid, row rule, foot rule, foot, bottom).
_RULES_ONLY = "    \n    \n ── \n    \n ── \n ── \n    \n    \n"


def _print_table(console, headers: list[str], rows: list[list[str]], sections: list[bool], styles: list[str],
                 right: tuple[str, ...]) -> None:  # fmt: skip
    """A Rich table fitted to the console's width (:func:`render.fit_table`); the name and the
    status never give way."""
    from rich.box import Box
    from rich.table import Table
    from rich.text import Text

    metric = next((h for h in right if h not in ("step", "epoch", "size")), "val_loss")
    late = tuple(metric if c == "val_loss" else c for c in LATE_DROP_ORDER)
    kept, limits, boxed = render.fit_table(console.width, headers, rows, DROP_ORDER, SHRINK_ORDER, late,
                                           name_floor=NAME_FLOOR)  # fmt: skip
    if boxed:
        table = Table(header_style="bold")
    else:  # decorations go before names
        table = Table(header_style="bold", box=Box(_RULES_ONLY), show_edge=False, padding=(0, 1, 0, 0), pad_edge=False)
    name, status = headers.index("name"), headers.index("status")
    for i in kept:
        header = headers[i]
        wraps = header == "status"  # an error message wraps; a name is cut in the middle, numbers never
        table.add_column(header, justify="right" if header in right else "left", max_width=limits.get(i),
                         no_wrap=not wraps, overflow="fold" if wraps else "ellipsis")  # fmt: skip
    for cells, section, style in zip(rows, sections, styles):
        if section:
            table.add_section()
        shown = [render.middle_cut(cells[i], limits[i]) if i == name and i in limits else cells[i] for i in kept]
        table.add_row(*(Text(text, style=style) if i == status else text for i, text in zip(kept, shown)))
    console.print(table)


# ---------------------------------------------------------------------- another framework's layout


def _metric_name(listing: Listing) -> str:
    """The column the layout ranks by (``eval_loss``, ``val_loss``), else ``val_loss``."""
    return listing.monitor or "val_loss"


def layout_line(listing: Listing) -> str:
    """``Hugging Face Trainer run, 3 checkpoints`` (plus what else the listing says in one line)."""
    title = listing.layout_title or listing.layout or "checkpoint"
    line = f"{title} run, {render.plural(listing.checkpoints, 'checkpoint')}"
    incomplete = sum(1 for row in listing.rows if row.unit is not None and not row.unit.complete)
    if incomplete:
        line += f" ({incomplete} incomplete)"
    if listing.monitor:
        line += f", ranked by {listing.monitor}"
    return render.display_text(line)


def _layout_cells(row: Row, metric: str) -> list[str]:
    data = row.to_json()
    status = row.status if not row.error else f"{row.status}: {row.error}"
    if row.unit is None and row.entry.link is not None:
        said = row.error == f"symlink to {row.entry.link}"  # a dead link's error only repeats the arrow
        status = f"-> {row.entry.link}: {row.status if said else status}"
    value = row.metric(metric)
    if value is None and metric == "val_loss":
        value = row.facts.val_loss
    complete = "-" if row.unit is None else "yes" if row.complete else "no: missing " + ", ".join(row.missing)
    return [
        render.display_text(row.entry.name),
        render.number(data["step"]),
        render.number(data["epoch"]),
        render.number(value),
        "*" if row.best else "",
        render.size(row.entry.size_bytes) if row.unit is not None else "-",
        render.display_text(complete),
        render.display_text(status),
    ]


def _layout_report(listing: Listing, *, rich: bool) -> None:
    metric = _metric_name(listing)
    headers = [h.format(metric=render.display_text(metric)) for h in LAYOUT_HEADERS]
    rows = [_layout_cells(row, metric) for row in listing.rows]
    footer = _footer(listing).replace(render.plural(len(listing.rows), "file"),
                                      render.plural(len(listing.rows), "row"), 1)  # fmt: skip
    if not rich:
        print(layout_line(listing))
        print(plain_table(headers, rows))
        print(footer)
        return

    console = out_console()
    console.print(render.styled_line(f"{layout_line(listing)} in {render.display_text(listing.directory)}", "bold"))
    styles = ["green" if row.status == "ok" else "yellow" if row.status in ("incomplete", "stale") else "red"
              for row in listing.rows]  # fmt: skip
    _print_table(console, headers, rows, [False] * len(rows), styles, right=("step", "epoch", metric, "size"))
    console.print(render.styled_line(_fit_footer(footer, console.width)))
