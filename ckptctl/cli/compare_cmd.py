"""``ckptctl compare A B``: what changed between two checkpoints. Exit 0 equal, 1 different, 2 bad input.

Volatile metadata (save time, paths, host names, pids: ``ckptctl.ops.compare.VOLATILE_KEYS``) and
``--ignore KEY`` paths are shown as ignored and never make two checkpoints different.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Iterable, Optional, Sequence

import typer

from ..errors import EXIT_FINDINGS, EXIT_OK
from . import render
from .options import JsonOpt
from .output import handle_errors, out_console, print_json, print_line, print_table, stdout_is_terminal, warn
from .progress import ByteProgress

if TYPE_CHECKING:  # the core is imported when the command runs, not when the app starts
    from ..ops.compare import Comparison

LIST_LIMIT = 20

_PATH_HELP = ("A checkpoint: a file, a DCP directory, or one checkpoint of any layout (checkpoint-500/, x.ckpt, "
              "global_step10/, model.safetensors); a run directory means its newest valid (complete) checkpoint.")
PathArg = Annotated[str, typer.Argument(metavar="A", help=_PATH_HELP, show_default=False)]
OtherPathArg = Annotated[str, typer.Argument(metavar="B", help="The checkpoint to compare with A (same forms).", show_default=False)]


@handle_errors
def compare_command(
    a: PathArg,
    b: OtherPathArg,
    values: Annotated[
        bool, typer.Option("--values", help="Also compare tensor values, streamed: torch zips memory-mapped, "
                           "safetensors by header offsets, DCP through torch.distributed.checkpoint.")
    ] = False,
    atol: Annotated[float, typer.Option("--atol", metavar="TOL", min=0, help="Absolute tolerance for --values.")] = 0.0,
    rtol: Annotated[float, typer.Option("--rtol", metavar="TOL", min=0, help="Relative tolerance for --values (|a-b| <= atol + rtol*|b|).")] = 0.0,
    top: Annotated[int, typer.Option("--top", metavar="N", min=1, help="How many most-changed tensors and layers to show.")] = 10,
    ignore: Annotated[
        Optional[list[str]],
        typer.Option("--ignore", metavar="KEY", help="Show differences at this dotted key path (and below) as "
                     "ignored: they do not make A and B different (e.g. args.output_dir). Repeatable. The save "
                     "time, paths, host names and pids are always ignored."),  # fmt: skip
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Compare checkpoints A and B: metadata, args, keys, tensor inventory, optimizer; --values for tensor values.

    Exit 0 when equal, 1 when different; volatile metadata (save time, paths) never decides.
    """
    from ..ops.compare import compare, compare_values, value_bytes
    from ..formats.storage import refuse_url

    refuse_url(a, "compare")
    refuse_url(b, "compare")
    comparison = compare(a, b, ignore=ignore or ())
    if values:
        with ByteProgress("comparing values", value_bytes(comparison), show=not json_output) as bar:
            compare_values(comparison, atol=atol, rtol=rtol, progress=bar.update if bar else None)
    if json_output:
        print_json(comparison.to_json())
    else:
        _Report(comparison, top).print()
    raise typer.Exit(EXIT_OK if comparison.equal else EXIT_FINDINGS)


class _Report:
    """Sections as tables: Rich on a terminal, aligned plain text when piped."""

    def __init__(self, comparison: Comparison, top: int):
        self.c = comparison
        self.top = top
        self.rich = stdout_is_terminal()
        self.console = out_console() if self.rich else None

    def print(self) -> None:
        c = self.c
        if c.units:
            self.table(None, ("", "checkpoint", "layout", "format", "size", "step", "epoch", "complete"),
                       [self._unit_side("A", c.a), self._unit_side("B", c.b)])  # fmt: skip
        else:
            self.table(None, ("", "file", "format", "size", "step", "epoch"), [self._side("A", c.a), self._side("B", c.b)])
        self.table("metadata", ("field", "A", "B", "delta"), self._fields())
        self._args()
        self._keys()
        self._tensors()
        self._optimizer()
        if c.values is not None:
            self._values()
        self._ignored()
        verdict = "equal" if c.equal else "different"
        self.line(f"result: {verdict} at the {c.level} level")

    def line(self, text: str = "") -> None:
        print_line(text, self.console)

    def table(self, title: str | None, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        print_table(self.console, title, headers, rows)

    @staticmethod
    def _unit_side(label: str, side) -> list[str]:
        unit = side.view.unit
        complete = "yes" if unit.complete else "no, missing " + ", ".join(unit.missing[:5])
        return [label, str(side.path), unit.layout, side.format, render.size(side.size_bytes),
                render.number(side.step), render.number(side.epoch), complete]  # fmt: skip

    @staticmethod
    def _side(label: str, side) -> list[str]:
        return [label, str(side.path), side.ckpt.format, render.size(side.ckpt.size_bytes),
                render.number(side.meta.step), render.number(side.meta.epoch)]  # fmt: skip

    def _fields(self) -> list[list[str]]:
        rows = []
        for f in self.c.fields:
            a, b = (render.local_time(v) if f.name == "timestamp" else _value(v) for v in (f.a, f.b))
            delta = "=" if f.equal else _delta(f) + (" (ignored)" if f.ignored else "")
            rows.append([f.name, a, b, delta])
        return rows

    def _args(self) -> None:
        diff = self.c.args
        if diff.equal:
            self.line(f"{'hparams' if self.c.units else 'args'}: same")
            self.line()
            return
        rows = [[k, _value(a), _value(b)] for k, (a, b) in diff.changed.items()]
        rows += [[k, _value(v), "(absent)"] for k, v in diff.only_a.items()]
        rows += [[k, "(absent)", _value(v)] for k, v in diff.only_b.items()]
        self.table("hparams" if self.c.units else "args", ("key", "A", "B"), rows)

    def _keys(self) -> None:
        diff = self.c.keys
        parts = [f"changed: {', '.join(diff.changed)}" if diff.changed else "",
                 f"only in A: {', '.join(diff.only_a)}" if diff.only_a else "",
                 f"only in B: {', '.join(diff.only_b)}" if diff.only_b else ""]  # fmt: skip
        self.line(("files: " if self.c.units else "top-level keys: ") + ("; ".join(p for p in parts if p) or "same"))

    def _tensors(self) -> None:
        t = self.c.tensors
        delta = t.parameters_b - t.parameters_a
        what = "weights tensors" if self.c.units else "tensors"
        self.line(f"{what}: {t.count_a} in A, {t.count_b} in B; parameters {t.parameters_a:,} -> {t.parameters_b:,} ({delta:+,})")
        rows = [[n, "only in A", f"{x.dtype} {list(x.shape)}", "-"] for n, x in t.only_a.items()]
        rows += [[n, "only in B", "-", f"{x.dtype} {list(x.shape)}"] for n, x in t.only_b.items()]
        rows += [[n, "dtype/shape", f"{x.dtype} {list(x.shape)}", f"{y.dtype} {list(y.shape)}"] for n, (x, y) in t.changed.items()]
        if rows:
            self.table(None, ("tensor", "difference", "A", "B"), _capped(rows, LIST_LIMIT))
        if not t.bytes_compared:
            if self.c.values is None:
                self.line("  tensor bytes not compared (no stored CRC-32s: safetensors, DCP, legacy or several files); use --values")
        elif t.bytes_differ:
            names = ", ".join(t.bytes_differ[:5]) + (f", … ({len(t.bytes_differ) - 5} more)" if len(t.bytes_differ) > 5 else "")
            hint = "" if self.c.values is not None else "; --values for magnitudes"
            self.line(f"  storage bytes differ (CRC-32) for {render.plural(len(t.bytes_differ), 'tensor')}: {names}{hint}")
        else:
            self.line("  storage bytes identical (CRC-32) for every shared tensor")

    def _ignored(self) -> None:
        """Differences that did not decide: volatile metadata and --ignore paths."""
        ignored = list(self.c.ignored_differences())
        if ignored:
            names = ", ".join(ignored[:LIST_LIMIT]) + (f", … ({len(ignored) - LIST_LIMIT} more)" if len(ignored) > LIST_LIMIT else "")
            self.line(f"ignored differences (volatile metadata, --ignore): {names}")

    def _optimizer(self) -> None:
        o = self.c.optimizer
        if o.type_a is None and o.type_b is None and not (o.groups_a or o.groups_b):
            return
        self.line(f"optimizer: {o.type_a or '?'} -> {o.type_b or '?'}, param groups {o.groups_a} -> {o.groups_b}")
        if o.changed:
            self.table(None, ("group", "hyperparameter", "A", "B"), [[g, k, _value(a), _value(b)] for g, k, a, b in o.changed])

    def _values(self) -> None:
        v = self.c.values
        assert v is not None
        self.line(f"values (atol={v.atol:g}, rtol={v.rtol:g}): {len(v.differing)} of {render.plural(len(v.tensors), 'tensor')} {'differs' if len(v.differing) == 1 else 'differ'}")
        ranked = v.most_changed_tensors()
        rows = [[t.name, t.dtype, list(t.shape), render.number(t.max_abs), render.number(t.rel_l2)] for t in ranked]
        if rows:
            self.table("most changed tensors", ("tensor", "dtype", "shape", "max |Δ|", "rel L2"), _capped(rows, self.top))
            layers = v.most_changed_layers(self.top)
            self.table("most changed layers", ("layer", "rel L2", "max |Δ|", "tensors"),
                       [[r["layer"], render.number(r["rel_l2"]), render.number(r["max_abs"]), r["tensors"]] for r in layers])  # fmt: skip
        for name, reason in list(v.not_compared.items())[:LIST_LIMIT]:
            self.line(f"  not compared: {name}: {reason}")
        for note in v.notes:
            warn(note)


def _value(value: Any) -> str:
    return "-" if value is None else render.short(value, width=48)


def _delta(f) -> str:
    if f.delta is None:
        return "changed"
    if f.name == "timestamp":
        return f"{f.delta:+,.0f} s"
    return f"{f.delta:+}" if isinstance(f.delta, int) else f"{f.delta:+.4g}"


def _capped(rows: list[list[Any]], limit: int) -> list[list[Any]]:
    if len(rows) <= limit:
        return rows
    return rows[:limit] + [[f"… {len(rows) - limit} more (--json for all)"] + [""] * (len(rows[0]) - 1)]
