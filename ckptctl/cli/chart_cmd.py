"""``ckptctl chart DIR``: the metrics the checkpoints record, by step, drawn in the terminal.

The series come from :mod:`ckptctl.ops.metrics` (for a Hugging Face Trainer run, the whole
``log_history`` of the newest checkpoint). ``plotext`` draws them; it is imported here, in the
command, so ``ckptctl --help`` and the other commands never load it. Piped output or ``NO_COLOR``:
the same plot without colour codes, then the series as a table. Exit 1 when the directory's
checkpoints record no metric at all (nothing to draw); 2 for bad input (no directory, an unknown
``--metric``, ``--png`` without matplotlib, a ``--png`` path that cannot be written).

``--png OUT.png`` draws the same groups with matplotlib (an optional extra: ``pip install
'ckptctl[png]'``), imported only then. The path is checked before anything is read; the image is
rendered in memory and then written atomically (``durable.write_bytes_atomic``), so a failure leaves
no partial file and an existing OUT as it was. :func:`png_figure` builds the Figure (a seam for tests).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import EXIT_FINDINGS
from . import render
from .options import DirArg, JsonOpt
from .output import fail, handle_errors, plain_table, print_json, stdout_is_terminal, warn

if TYPE_CHECKING:  # the core is imported when the command runs, not when the app starts
    from matplotlib.figure import Figure

    from ..ops.metrics import Chart

PLOT_HEIGHT = 20
MAX_PLOT_WIDTH = 120
MAX_TABLE_ROWS = 200  # the piped table shows this many steps; --json has every point
# LC_ALL=C / PYTHONIOENCODING=ascii: the plot's frame and dots drawn in ASCII rather than escaped
ASCII_PLOT = str.maketrans({"┌": "+", "┐": "+", "└": "+", "┘": "+", "─": "-", "│": "|", "┤": "+", "├": "+",
                            "┬": "+", "┴": "+", "┼": "+", "•": "*"})  # fmt: skip


@handle_errors
def chart_command(
    directory: DirArg,
    metric: Annotated[
        Optional[list[str]],
        typer.Option("--metric", "-m", metavar="NAME",
                     help="A metric to draw (repeat for more). Default: the losses and the monitored metric."),  # fmt: skip
    ] = None,
    png: Annotated[
        Optional[str],
        typer.Option("--png", metavar="OUT.png", help="Also write the chart as a PNG (needs pip install 'ckptctl[png]')."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Metrics of DIR's checkpoints by step (loss, val_loss, eval_loss, ...), drawn in the terminal."""
    from ..ops.metrics import metric_series

    out = None
    if png is not None:  # before anything is read: a missing extra or a bad path is one line, exit 2
        _require_matplotlib()
        out = _png_path(png)
    chart = metric_series(directory)
    selected = chart.select(metric)  # an unknown --metric: one line, exit 2
    if json_output:
        print_json(chart.to_json(metric))
    elif not selected:
        warn(f"no metrics in {render.display_text(chart.directory)}: its checkpoints record no loss or other number")
    else:
        colour = stdout_is_terminal() and not os.environ.get("NO_COLOR") and _encodes("┌▞")
        print(_plot(chart, selected, colour=colour))
        if not colour:
            print(_table(selected))
        for note in chart.notes:
            warn(render.display_text(note))
    if out is not None and selected:
        _write_png(chart, selected, out)
    if not selected:
        raise typer.Exit(EXIT_FINDINGS)


def _plot(chart: Chart, series: dict[str, list[tuple[int, float]]], *, colour: bool) -> str:
    """One plot per group: the losses share their axes; every other metric has its own."""
    import plotext as plt

    width = min(shutil.get_terminal_size((100, 24)).columns, MAX_PLOT_WIDTH)
    source = _source(chart)
    pieces = []
    for names in _groups(series):
        plt.clear_figure()
        plt.plot_size(width, PLOT_HEIGHT)
        plt.theme("pro" if colour else "clear")
        for name in names:
            steps = [step for step, _ in series[name]]
            values = [value for _, value in series[name]]
            plt.plot(steps, values, label=render.display_text(name), marker="hd" if colour else "dot")
        plt.title(f"{', '.join(render.display_text(n) for n in names)} by step ({source})")
        plt.xlabel("step")
        text = plt.build()
        pieces.append(text if colour else plt.uncolorize(text))
    plt.clear_figure()
    text = "\n".join(pieces)
    return text if colour or _encodes(text) else text.translate(ASCII_PLOT)


def _groups(series: dict[str, list[tuple[int, float]]]) -> list[list[str]]:
    """The losses share one plot (their scales agree); every other metric gets its own."""
    losses = [n for n in series if "loss" in n.lower()]
    return ([losses] if losses else []) + [[n] for n in series if n not in losses]


def _source(chart: Chart) -> str:
    return "trainer_state.json log_history" if chart.source == "log_history" else "checkpoints"


def _encodes(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _table(series: dict[str, list[tuple[int, float]]]) -> str:
    names = list(series)
    by_step: dict[int, dict[str, float]] = {}
    for name, points in series.items():
        for step, value in points:
            by_step.setdefault(step, {})[name] = value
    steps = sorted(by_step)
    rows = [[str(step), *(render.number(by_step[step].get(n)) for n in names)] for step in steps[:MAX_TABLE_ROWS]]
    text = plain_table(["step", *(render.display_text(n) for n in names)], rows)
    if len(steps) > MAX_TABLE_ROWS:
        text += f"\n... and {len(steps) - MAX_TABLE_ROWS} more steps (--json has every point)"
    return text


def _require_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise fail("--png needs matplotlib, which is not installed: pip install 'ckptctl[png]' (the terminal chart needs nothing)")


def _png_path(out: str) -> Path:
    """``--png``'s path, checked before any work: its directory exists and is writable, it is no directory."""
    path = Path(out)
    shown = render.display_text(out)
    if path.is_dir():
        raise fail(f"cannot write --png {shown}: it is a directory")
    parent = path.parent
    if not parent.is_dir():
        reason = "not a directory" if parent.exists() else "no such directory"
        raise fail(f"cannot write --png {shown}: {reason}: {render.display_text(str(parent))}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise fail(f"cannot write --png {shown}: permission denied on {render.display_text(str(parent))}")
    return path


def _mathtext_safe(text: str) -> str:
    """A file's metric name as matplotlib text: escaped for a terminal, ``$`` not taken as math."""
    return render.display_text(text).replace("$", r"\$")


def png_figure(chart: Chart, series: dict[str, list[tuple[int, float]]]) -> Figure:
    """The PNG's Figure: one axes per group of :func:`_groups`, each titled with its metric names."""
    from matplotlib.figure import Figure

    groups = _groups(series)
    figure = Figure(figsize=(9, 1 + 3.5 * len(groups)), layout="constrained")
    for axes, names in zip(figure.subplots(len(groups), 1, squeeze=False)[:, 0], groups):
        for name in names:
            points = series[name]
            axes.plot([s for s, _ in points], [v for _, v in points], label=_mathtext_safe(name),
                      marker="." if len(points) <= 100 else None)  # fmt: skip
        axes.set_title(f"{', '.join(_mathtext_safe(n) for n in names)} by step")
        axes.set_xlabel("step")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(f"{_mathtext_safe(chart.directory)} ({_source(chart)})")
    return figure


def _render_png(figure: Figure) -> bytes:
    """The Figure as PNG bytes, in memory: nothing touches the output path until it is complete."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _write_png(chart: Chart, series: dict[str, list[tuple[int, float]]], out: Path) -> None:
    from .. import durable

    data = _render_png(png_figure(chart, series))
    try:
        durable.write_bytes_atomic(out, data)  # a temp file, fsynced, renamed over OUT; removed on failure
    except OSError as exc:
        raise fail(f"cannot write --png {render.display_text(str(out))}: {exc.strerror or exc}")
    warn(f"wrote {render.display_text(str(out))}")
