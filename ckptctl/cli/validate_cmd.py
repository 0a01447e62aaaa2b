"""``ckptctl validate PATH...``: a verdict per checkpoint file.

Exit 0 every file intact (content findings such as a missing ``epoch`` key are shown, not counted);
1 any file damaged or unsafe, or NaN/Inf at ``--deep``; 2 bad input, or a file that could not be
read for lack of permission (nothing damaged, but the check is incomplete).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..errors import BadInputError
from . import render
from .options import JsonOpt
from .output import handle_errors, out_console, plain_table, print_json, stdout_is_terminal
from .progress import ByteProgress

if TYPE_CHECKING:  # the core is imported when the command runs, not when the app starts
    from ..ops.integrity import FileResult, Report

STYLES = {"valid": "green", "invalid": "red", "unsafe": "bold red", "inaccessible": "yellow", "non-finite": "red"}

PathsArg = Annotated[
    list[str], typer.Argument(metavar="PATH...", help="Checkpoint files or directories.", show_default=False)
]


@handle_errors
def validate_command(
    paths: PathsArg,
    quick: Annotated[bool, typer.Option("--quick", help="Only the container structure and the safe metadata unpickle.")] = False,
    deep: Annotated[
        bool, typer.Option("--deep", help="Also torch.load(weights_only=True, mmap=True) and a NaN/Inf scan of every tensor.")
    ] = False,
    jobs: Annotated[
        Optional[int], typer.Option("--jobs", "-j", metavar="N", min=1, help="Threads for the CRC-32 pass (default: up to 2, one per core).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Check checkpoint files for damage: structure, safe unpickle, CRC-32 of every record, layout keys.

    Exit 0: every file intact (findings such as a missing key are shown, not failures). Exit 1: a
    file damaged or unsafe, or NaN/Inf with --deep. Exit 2: bad input, or a file not readable
    (permission). Hard links of one file are read once.
    """
    from ..ops.integrity import DEEP, DEFAULT, QUICK, Report, collect_targets, planned_bytes, validate_targets

    if quick and deep:
        raise BadInputError("--quick and --deep exclude each other")
    level = QUICK if quick else DEEP if deep else DEFAULT
    targets, skipped = collect_targets(paths)
    workers = jobs or default_jobs()
    meter = ByteProgress("validating", planned_bytes(targets, level), show=not json_output)
    units: list[dict[str, Any]] = []
    with meter as bar:
        results = validate_targets(targets, level, jobs=workers, progress=bar.advance if bar else None, unit_summaries=units)
    report = Report(level, results, skipped, meter.seconds, units)
    if json_output:
        print_json(report.to_json())
    elif stdout_is_terminal():
        _rich_report(report)
    else:
        _plain_report(report)
    raise typer.Exit(report.exit_code)


def default_jobs() -> int:
    """Two CRC threads where there are two cores: reading and checksumming overlap (see bench/)."""
    return max(1, min(2, os.cpu_count() or 1))


def _details(result: FileResult) -> list[str]:
    return (list(result.problems) + [f"finding: {finding}" for finding in result.findings]
            + [f"note: {note}" for note in result.notes])  # fmt: skip


def _verdict(result: FileResult) -> str:
    """The integrity status, except an intact file with NaN/Inf at --deep (which fails the run)."""
    return "non-finite" if result.status == "valid" and result.finite is False else result.status


def _summary(report: Report) -> str:
    line = f"{len(report.results)} checked: {report.valid} valid, {report.invalid - report.inaccessible} invalid"
    extras = [f"{report.inaccessible} not readable (permission)" if report.inaccessible else "",
              f"{report.with_findings} with findings" if report.with_findings else ""]  # fmt: skip
    line += "".join(f", {extra}" for extra in extras if extra) + f" ({report.level} level"
    if report.bytes_checked:
        line += f", {render.size(report.bytes_checked)} CRC-checked"
    if report.skipped:
        line += f", {render.plural(len(report.skipped), 'other file')} skipped"
    return line + ")"


def _unit_lines(report: Report) -> list[str]:
    """One line per checkpoint of another framework's layout: ``checkpoint-6: invalid (optimizer.pt)``."""
    lines = []
    for unit in report.units:
        line = f"{unit['name']}: {unit['status']}"
        if unit["missing"]:
            line += f", missing {', '.join(unit['missing'])}"
        if unit["failed"]:
            line += f" ({', '.join(unit['failed'])})"
        lines.append(render.display_text(line))
    if report.units:
        good = sum(u["status"] == "valid" for u in report.units)
        lines.append(f"{render.plural(len(report.units), 'checkpoint')} ({report.units[0]['layout']}): {good} valid")
    return lines


def _plain_report(report: Report) -> None:
    rows = []
    for result in report.results:
        details = _details(result)
        rows.append([_verdict(result), str(result.path), details[0] if details else ""])
        rows += [["", "", more] for more in details[1:]]
    print(plain_table(("verdict", "file", "details"), rows))
    for line in _unit_lines(report):
        print(line)
    print(_summary(report))


def _rich_report(report: Report) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold")
    for header in ("verdict", "file", "size", "details"):
        table.add_column(header, justify="right" if header == "size" else "left", overflow="fold")
    for result in report.results:
        details = Text()
        for problem in result.problems:
            details.append(render.display_text(problem) + "\n", style="red")
        for finding in result.findings:
            details.append(f"finding: {render.display_text(finding)}\n", style="red" if result.finite is False else "yellow")
        for note in result.notes:
            details.append(f"note: {render.display_text(note)}\n", style="dim")
        details.rstrip()
        verdict = _verdict(result)
        table.add_row(Text(verdict, style=STYLES[verdict]), Text(render.display_text(result.path)),
                      render.size(result.size_bytes), details)  # fmt: skip
    console = out_console()
    console.print(table)
    for line in _unit_lines(report):
        console.print(Text(line))
    console.print(Text(_summary(report), style="bold" if report.exit_code else ""))
