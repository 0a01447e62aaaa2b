"""``ckptctl inspect PATH``: everything worth knowing before resuming from or deploying a checkpoint.

PATH is a checkpoint file, a DCP directory, or one checkpoint of another framework's layout (an HF
``checkpoint-500/``, a Lightning ``.ckpt``, a DeepSpeed ``global_step10/``, ...).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import EXIT_FINDINGS
from . import render
from .options import JsonOpt
from .output import fail, handle_errors, print_json

KEY_WIDTH = 24  # the value column of key/value sections; a longer key gets a line of its own
MAX_KEY_CHARS = 120  # a key from a file is shown up to this many characters (then "…")

PathArg = Annotated[
    str,
    typer.Argument(metavar="PATH", show_default=False,
                   help="A checkpoint file, a DCP directory, or one checkpoint of any layout (checkpoint-500/, x.ckpt, global_step10/)."),  # fmt: skip
]


@handle_errors
def inspect_command(
    file: PathArg,
    tensors: Annotated[bool, typer.Option("--tensors", "-t", help="List every tensor (name, dtype, shape).")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Show a checkpoint's metadata, args, RNG and dataloader state, model and optimizer summary."""
    from ..ops.inspection import inspect_target

    report = inspect_target(file, with_tensors=tensors)
    if json_output:
        print_json(report)
    else:
        _print_report(report)
    if report["status"] != "ok":
        if not json_output:
            raise fail(_error_line(file, report["status"], report["error"]), EXIT_FINDINGS)
        raise typer.Exit(EXIT_FINDINGS)


def _error_line(path: str, status: str, error: str | None) -> str:
    """``d/x.pt: unreadable: truncated ...`` with the path as given (like compare, export, resume-cmd),
    and the status word once: ``run/checkpoint-2: optimizer.pt: unreadable: ...``."""
    error = error or ""
    if error.startswith(f"{status}:") or f": {status}:" in error:
        return f"{path}: {error}"
    return f"{path}: {status}: {error}" if error else f"{path}: {status}"


def bounded_str(value: object, limit: int) -> str:
    """Bounded text of a value from a file (imported when a command runs: ``--help`` stays light)."""
    from ..formats.bounded import bounded_str as bounded

    return bounded(value, limit)


def _print_report(report: dict) -> None:
    if "unit" in report:
        _print_unit(report)
        return
    lines = [f"{report['name']}  ({report['kind']}, {render.size(report['size_bytes'])}, {report['format'] or '?'} format)"]
    if report["status"] != "ok":
        _print_lines(lines)
        return
    for key in ("step", "epoch", "train_loss", "val_loss", "checkpoint_type", "saved_at"):
        lines.append(f"  {key:<16}{render.short(report[key]) if report[key] is not None else '-'}")
    lines.append(f"  {'rng_states':<16}{', '.join(report['rng_states']) or '-'}")
    _section(lines, "args", report["args"])
    _section(lines, "dataloader_state", report["dataloader_state"])
    _model(lines, "model", report["model"])
    _optimizer(lines, report["optimizer"])
    _section(lines, "other keys", report["extra"])
    _tensors(lines, report)
    _print_lines(lines)


def _print_unit(report: dict) -> None:
    unit = report["unit"]
    title = unit["layout_title"] or unit["layout"]
    lines = [f"{report['name']}  ({title}: {'directory' if unit['is_directory'] else 'file'}, "
             f"{render.size(report['size_bytes'])})"]  # fmt: skip
    lines.append(f"layout {unit['layout']}: " + ("complete" if unit["complete"] else
                                                  f"incomplete, missing {', '.join(unit['missing']) or 'required files'}"))  # fmt: skip
    rows = [("step", unit["step"]), ("epoch", unit["epoch"]), ("best", "yes" if unit["best"] else "no"),
            ("protected", unit["protected"]), ("saved_at", unit["timestamp"])]  # fmt: skip
    for key, value in rows:
        lines.append(f"  {key:<16}{_plain(value)}")
    metrics = unit["metrics"] or {}
    if metrics:
        lines.append("metrics" + (f" (* monitored: {_key(unit['monitor'])})" if unit["monitor"] else ""))
        for key, value in metrics.items():
            mark = " *" if key == unit["monitor"] else ""
            _pair(lines, f"{_key(key)}{mark}", _plain(value))
    else:
        lines.append("metrics: -")
    lines.append(f"files ({len(unit['files'])})")
    for f in unit["files"]:
        verdict = f["status"] + (f": {f['error']}" if f["error"] else "")
        lines.append(f"  {_key(f['name']):<36} {f['content']:<10} {render.size(f['size_bytes']):>10}  {f['format']:<12} {render.short(verdict, 80)}")
    _section(lines, "hparams", unit["hparams"])
    _model(lines, "weights", unit["weights"])
    for problem in unit["weights_problems"]:
        lines.append(f"  {problem}")
    _optimizer(lines, report["optimizer"])
    notes = report["notes"]
    if notes:
        lines.append("notes")
        lines.extend(f"  {render.short(note, 100)}" for note in notes[:20])
    _tensors(lines, report)
    _print_lines(lines)


def _plain(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return render.number(value, 6)
    return render.short(value)


def _model(lines: list[str], title: str, model: dict | None) -> None:
    if not model:
        if title == "weights":
            lines.append("weights: -")
        return
    lines.append(title)
    lines.append(f"  tensors {model['tensor_count']}, parameters {model['parameter_count']:,}, {render.size(model['total_bytes'])}")
    for dtype, nbytes in model["bytes_by_dtype"].items():
        lines.append(f"    {dtype:<14}{render.size(nbytes)}")


def _optimizer(lines: list[str], optimizer: dict | None) -> None:
    if not optimizer:
        return
    flat = " (flat keys, no param_groups list)" if optimizer.get("flat") else ""
    lines.append(f"optimizer ({optimizer['type'] or 'type unknown'}){flat}: "
                 f"{render.plural(optimizer['state_entries'], 'state entry', 'state entries')}, {render.size(optimizer['total_bytes'])}")  # fmt: skip
    for i, group in enumerate(optimizer["param_groups"]):
        values = ", ".join(f"{_key(k)}={render.short(v, 40)}" for k, v in group.items())
        lines.append(f"  group {i}: {values}")


def _tensors(lines: list[str], report: dict) -> None:
    if "tensors" in report:
        lines.append(f"tensors ({len(report['tensors'])})")
        for t in report["tensors"]:
            lines.append(f"  {render.display_text(_key(t['name'])):<48} {t['dtype']:<10} {list(t['shape'])}")


def _print_lines(lines: list[str]) -> None:
    """Each line escaped on its own: names, keys and values inside come from the file."""
    print("\n".join(map(render.display_text, lines)))


def _key(key) -> str:
    """A key from a file as bounded, escaped text (a key can be megabytes long)."""
    from ..formats.bounded import bounded_str  # the reading core: loaded when a report is printed, not at start-up

    text = render.display_text(key if isinstance(key, str) else bounded_str(key, MAX_KEY_CHARS))
    return text if len(text) <= MAX_KEY_CHARS else text[: MAX_KEY_CHARS - 1] + "…"


def _pair(lines: list[str], key: str, value: str) -> None:
    """``key value`` in two columns; a key as wide as the column gets its own line, so it never runs into its value."""
    if len(key) < KEY_WIDTH:
        lines.append(f"  {key:<{KEY_WIDTH}}{value}")
    else:
        lines.append(f"  {key}")
        lines.append(f"  {'':<{KEY_WIDTH}}{value}")


def _section(lines: list[str], title: str, value) -> None:
    if value in (None, {}, []):
        lines.append(f"{title}: -")
        return
    lines.append(title)
    if isinstance(value, dict):
        for key, item in value.items():
            _pair(lines, _key(key), render.short(item))  # escaped before padding
    else:
        lines.append(f"  {render.short(value)}")
