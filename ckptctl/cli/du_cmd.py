"""``ckptctl du DIR``: what the checkpoints occupy, what is left, and how many more saves fit.

Names and ``stat`` only: no checkpoint file is opened. ``--warn-free`` turns it into a cron alert
(exit 1 when free space is below the threshold).

The headline total is the size on disk as ``list`` defines it too (``ops.usage.ON_DISK_LABEL``):
allocated blocks, hard links once; the apparent size stays a secondary figure. When the directory
holds files ``list`` does not show (logs, configs), a note gives the part ``list`` totals, so the
two commands never print different figures for the same thing. ckptctl's own files (the directory
lock, the demo's marker) are neither rows nor bytes of that total unless ``--all``; a note says
what they take (``own_files`` in JSON). Each figure is printed once: the manager's storage line
(``ops.usage.summary_line``, the same size and counts) is in ``--json`` as ``summary``, not repeated
under the table. On a narrow terminal the share bar goes first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import EXIT_FINDINGS
from . import render
from .options import DirArg, JsonOpt
from .output import handle_errors, out_console, plain_table, print_json, stdout_is_terminal, warn

if TYPE_CHECKING:  # the core is imported when the command runs, not when the app starts
    from ..ops.usage import FreeThreshold, KindUsage, Usage

HEADERS = ("kind", "files", "size", "allocated", "linked")
BAR_WIDTH = 20


@handle_errors
def du_command(
    directory: DirArg,
    warn_free: Annotated[
        Optional[str],
        typer.Option("--warn-free", metavar="PERCENT|SIZE", help="Exit 1 when free space is below this (10%, 50G, 2TiB)."),
    ] = None,
    json_output: JsonOpt = False,
    show_all: Annotated[
        bool,
        typer.Option("--all", "-a", help="Also show and count ckptctl's own files (the directory lock, the demo's marker)."),
    ] = False,
) -> None:
    """Disk usage of DIR by kind (hard links counted once), file system free space, and how many more saves fit."""
    from ..ops.usage import measure, parse_free_threshold

    threshold = parse_free_threshold(warn_free) if warn_free is not None else None
    usage = measure(directory, include_own=show_all)
    crossed = threshold is not None and threshold.crossed(usage.filesystem)
    if json_output:
        print_json(to_json(usage, threshold, crossed))
    elif stdout_is_terminal():
        _rich_report(usage)
    else:
        print(_plain_report(usage))
    if crossed:
        fs = usage.filesystem
        warn(f"free space {render.size(fs.free_bytes)} ({fs.free_percent:.1f}%) is below --warn-free {threshold.text}")
        raise typer.Exit(EXIT_FINDINGS)


def to_json(usage: Usage, threshold: FreeThreshold | None, crossed: bool) -> dict:
    """The ``--json`` document (stable keys; new keys may be added)."""
    from ..ops.usage import ON_DISK_LABEL, on_disk_total, summary_line

    fs, projection = usage.filesystem, usage.projection
    return {
        "directory": str(usage.directory),
        "kinds": [_kind_json(k) for k in usage.kinds.values()],
        "total": {**_kind_json(usage.total), "hard_links_counted_once": True},
        "checkpoint_bytes": usage.checkpoint_bytes,
        "counts": usage.counts,
        "filesystem": None if fs is None else {"total_bytes": fs.total_bytes, "used_bytes": fs.used_bytes,
                                               "free_bytes": fs.free_bytes, "free_percent": round(fs.free_percent, 2)},  # fmt: skip
        "projection": {
            "checkpoint_bytes": projection.checkpoint_bytes,
            "rolling_save_bytes": projection.rolling_save_bytes,
            "rolling_saves_fit": projection.rolling_saves_fit,
            "epoch_bytes": projection.epoch_bytes,
            "epochs_fit": projection.epochs_fit,
        },
        "summary": summary_line(usage),
        "warn_free": None if threshold is None else {"threshold": threshold.text, "below": crossed},
        "layout": usage.layout,
        "units": [{"name": u.name, "path": str(u.path), "step": u.step, "complete": u.complete,
                   **{k: v for k, v in _kind_json(u.usage).items() if k != "kind"},
                   "contents": {c: _kind_json(k) for c, k in u.contents.items()}} for u in usage.units],  # fmt: skip
        "contents": [_kind_json(k) for k in usage.contents.values()],
        "on_disk_bytes": on_disk_total(usage),
        "size_on_disk": ON_DISK_LABEL,
        "own_files": None if usage.own is None else {**_kind_json(usage.own), "counted": usage.own_included},
        "listed": None if usage.listed is None else {"files": usage.listed.files,
                                                     "on_disk_bytes": usage.listed.allocated_bytes,
                                                     "apparent_bytes": usage.listed.apparent_bytes},  # fmt: skip
    }


def _kind_json(kind: KindUsage) -> dict:
    return {"kind": kind.kind, "files": kind.files, "apparent_bytes": kind.apparent_bytes,
            "allocated_bytes": kind.allocated_bytes, "linked_files": kind.linked_files}  # fmt: skip


def _rows(usage: Usage) -> list[list[str]]:
    rows = [_cells(k) for k in usage.kinds.values() if k.files]
    return rows + [_cells(usage.total)]


UNIT_HEADERS = ("checkpoint", "files", "size", "allocated", "linked", "weights", "optimizer", "other")


def _unit_rows(usage: Usage) -> list[list[str]]:
    """Per checkpoint of a layout: its files, and the bytes of each kind of content."""
    rows = []
    for unit in usage.units:
        name = render.display_text(unit.name) + ("" if unit.complete else " (incomplete)")
        rows.append([name, *_cells(unit.usage)[1:], *(render.size(unit.contents[c].apparent_bytes)
                                                       for c in ("weights", "optimizer", "other"))])  # fmt: skip
    return rows


def _content_line(usage: Usage) -> str:
    parts = [f"{k.kind} {render.size(k.apparent_bytes)}" for k in usage.contents.values() if k.files]
    return "By content (in checkpoints): " + (", ".join(parts) if parts else "nothing")


def _cells(kind: KindUsage) -> list[str]:
    return [kind.kind, f"{kind.files:,}", render.size(kind.apparent_bytes), render.size(kind.allocated_bytes),
            str(kind.linked_files) if kind.linked_files else "-"]  # fmt: skip


def _notes(usage: Usage, filesystem: bool = True) -> list[str]:
    """The lines under the tables; ``filesystem=False`` when the terminal's disk bar already said it."""
    from ..ops.usage import ON_DISK_LABEL, on_disk_total
    from ..wording import count

    fs = usage.filesystem
    total = usage.total
    notes = [f"Total: {render.size(on_disk_total(usage))} {ON_DISK_LABEL} in {count(total.files, 'file')}; "
             f"{render.size(total.apparent_bytes)} apparent."]  # fmt: skip
    listed = usage.listed
    rest_files = usage.kinds["other"].files if usage.layout is not None else total.files - (listed.files if listed else 0)
    if listed is not None and (listed.allocated_bytes != on_disk_total(usage) or (usage.layout is None and rest_files)):
        rows = count(listed.files, "checkpoint" if usage.layout is not None else "file")
        rest = max(0, on_disk_total(usage) - listed.allocated_bytes)
        notes.append(f"Listed by `ckptctl list`: {rows}, {render.size(listed.allocated_bytes)} on disk; "
                     f"not listed: {count(rest_files, 'other file')}, {render.size(rest)}.")  # fmt: skip
    own = usage.own
    if own is not None and own.files and not usage.own_included:
        notes.append(f"Not counted: {count(own.files, 'file')} of ckptctl's own (lock, demo marker), "
                     f"{render.size(own.allocated_bytes or own.apparent_bytes)}; --all counts them.")  # fmt: skip
    if total.linked_files:
        notes.append(f"Hard links: {count(total.linked_files, 'name')} "
                     f"{'shares its' if total.linked_files == 1 else 'share their'} data with another file "
                     "(counted once, under the kind that owns the data).")  # fmt: skip
    if not filesystem:
        pass
    elif fs is None:
        notes.append("File system: n/a (object storage has no capacity or free space to report).")
    else:
        notes.append(f"File system: {render.size(fs.total_bytes)} total, {render.size(fs.used_bytes)} used, "
                     f"{render.size(fs.free_bytes)} free ({fs.free_percent:.1f}%).")  # fmt: skip
    notes.append(_projection_note(usage))
    return notes


def _projection_note(usage: Usage) -> str:
    from ..wording import count

    p = usage.projection
    if usage.layout is not None:
        if p.rolling_saves_fit is None:
            return "No complete checkpoint yet to project from." if usage.filesystem is not None else \
                "Object storage: no free space to project into."
        return (f"Room for {count(p.rolling_saves_fit, 'more checkpoint')} ({render.size(p.checkpoint_bytes)} "
                "each, the newest complete one) before the disk is full.")  # fmt: skip
    if usage.filesystem is None and p.rolling_save_bytes:
        return f"One rolling save takes {render.size(p.rolling_save_bytes)} (object storage: no free space to project into)."
    if p.rolling_saves_fit is None:
        return "No checkpoint yet to project from."
    text = f"Room for {count(p.rolling_saves_fit, 'more rolling save')} ({render.size(p.rolling_save_bytes)} each"
    text += ", file and backup copy)" if p.rolling_save_bytes != p.checkpoint_bytes else ")"
    return text + f" or {count(p.epochs_fit, 'more epoch')} ({render.size(p.epoch_bytes)} each) before the disk is full."


def _plain_report(usage: Usage) -> str:
    parts = [plain_table(HEADERS, _rows(usage))]
    if usage.layout is not None:
        parts += [plain_table(UNIT_HEADERS, _unit_rows(usage)), _content_line(usage)]
    return "\n".join([*parts, *map(render.display_text, _notes(usage))])


def _bar(part: int, whole: int, width: int = BAR_WIDTH) -> str:
    filled = round(width * part / whole) if whole else 0
    return "█" * filled + "·" * (width - filled)


def _fitted_table(console, title, headers: list[str], rows: list[list], drop: tuple[str, ...],
                  shrink: tuple[str, ...], first_left: str, styles: list[str] | None = None):  # fmt: skip
    """A Rich table of ``rows`` (strings) fitted to the console's width: ``drop`` columns give way first."""
    from rich.table import Table
    from rich.text import Text

    kept, limits = render.fit_columns(console.width, headers, rows, drop, shrink)
    table = Table(title=title, title_justify="left", header_style="bold")
    for i in kept:
        table.add_column(headers[i], justify="left" if headers[i] in (first_left, "share") else "right",
                         no_wrap=True, overflow="ellipsis", max_width=limits.get(i))  # fmt: skip
    for n, row in enumerate(rows):
        style = (styles or [""] * len(rows))[n]
        cells = [Text(row[i], style="cyan") if headers[i] == "share" else row[i] for i in kept]
        table.add_row(*cells, style=style or None)
    return table


def _rich_report(usage: Usage) -> None:
    from rich.text import Text

    console = out_console()
    whole = usage.total.allocated_bytes
    kinds = [k for k in usage.kinds.values() if k.files]
    rows = [[*cells, _bar(kind.allocated_bytes, whole)] for kind, cells in zip(kinds, _rows(usage))]
    rows.append([*_cells(usage.total), ""])
    # the share bar is decoration: it goes first on a narrow terminal, then the linked count
    console.print(_fitted_table(console, Text(f"Disk usage of {render.display_text(usage.directory)}"),
                                [*HEADERS, "share"], rows, ("share", "linked", "size"), ("kind",), "kind",
                                [""] * (len(rows) - 1) + ["bold"]))  # fmt: skip
    if usage.layout is not None:
        console.print(_fitted_table(console, Text(f"Per checkpoint ({render.display_text(usage.layout)})"),
                                    list(UNIT_HEADERS), _unit_rows(usage), ("linked", "other", "size", "optimizer"),
                                    ("checkpoint",), "checkpoint"))  # fmt: skip
        console.print(Text(_content_line(usage)))
    fs = usage.filesystem
    if fs is not None:  # an object store has no disk to fill
        tail = (f" {100 - fs.free_percent:.0f}% full: {render.size(fs.used_bytes)} used, "
                f"{render.size(fs.free_bytes)} free of {render.size(fs.total_bytes)}")  # fmt: skip
        width = min(2 * BAR_WIDTH, console.width - len("disk ") - len(tail) - 1)
        bar = Text("disk")  # filled: everything that is not free for us (used, and blocks reserved for root)
        if width >= 10:  # narrower than that, the bar says nothing the percentage does not
            bar.append(" ")
            bar.append(_bar(fs.total_bytes - fs.free_bytes, fs.total_bytes, width), style="red" if fs.free_percent < 10 else "green")
        bar.append(tail)
        console.print(bar)
    for note in _notes(usage, filesystem=fs is None):  # the disk bar says what the File system note would
        console.print(Text(note))
