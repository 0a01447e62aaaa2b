"""``ckptctl inspect FILE``: everything worth knowing before resuming from or deploying a checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import EXIT_FINDINGS
from . import render
from .options import FileArg, JsonOpt
from .output import fail, handle_errors, print_json


@handle_errors
def inspect_command(
    file: FileArg,
    tensors: Annotated[bool, typer.Option("--tensors", "-t", help="List every tensor (name, dtype, shape).")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Show a checkpoint's metadata, args, RNG and dataloader state, model and optimizer summary."""
    from ..ops.inspection import inspect_file

    report = inspect_file(file, with_tensors=tensors)
    if json_output:
        print_json(report)
    else:
        _print_report(report)
    if report["status"] != "ok":
        if not json_output:
            raise fail(f"{report['name']}: {report['status']}: {report['error']}", EXIT_FINDINGS)
        raise typer.Exit(EXIT_FINDINGS)


def _print_report(report: dict) -> None:
    lines = [f"{report['name']}  ({report['kind']}, {render.size(report['size_bytes'])}, {report['format'] or '?'} format)"]
    if report["status"] != "ok":
        _print_lines(lines)
        return
    for key in ("step", "epoch", "train_loss", "val_loss", "checkpoint_type", "saved_at"):
        lines.append(f"  {key:<16}{render.short(report[key]) if report[key] is not None else '-'}")
    lines.append(f"  {'rng_states':<16}{', '.join(report['rng_states']) or '-'}")
    _section(lines, "args", report["args"])
    _section(lines, "dataloader_state", report["dataloader_state"])
    model = report["model"]
    if model:
        lines.append("model")
        lines.append(f"  tensors {model['tensor_count']}, parameters {model['parameter_count']:,}, {render.size(model['total_bytes'])}")
        for dtype, nbytes in model["bytes_by_dtype"].items():
            lines.append(f"    {dtype:<14}{render.size(nbytes)}")
    optimizer = report["optimizer"]
    if optimizer:
        lines.append(f"optimizer ({optimizer['type'] or 'type unknown'}): {render.plural(optimizer['state_entries'], 'state entry', 'state entries')}, {render.size(optimizer['total_bytes'])}")
        for i, group in enumerate(optimizer["param_groups"]):
            values = ", ".join(f"{k}={v}" for k, v in group.items())
            lines.append(f"  group {i}: {values}")
    _section(lines, "other keys", report["extra"])
    if "layout" in report:  # a checkpoint of another framework's layout
        lines.append(f"layout {report['layout']}: " + ("complete" if report["complete"] else
                                                        f"incomplete, missing {', '.join(report['missing'])}"))  # fmt: skip
        _section(lines, "metrics" + (f" (ranked by {report['monitor']})" if report["monitor"] else ""), report["metrics"])
        if report["files"]:
            lines.append("files")
            for f in report["files"]:
                lines.append(f"  {render.display_text(f['name']):<40} {f['content']:<10} {render.size(f['size_bytes'])}")
    if "tensors" in report:
        lines.append(f"tensors ({len(report['tensors'])})")
        for t in report["tensors"]:
            lines.append(f"  {render.display_text(t['name']):<48} {t['dtype']:<10} {list(t['shape'])}")
    _print_lines(lines)


def _print_lines(lines: list[str]) -> None:
    """Each line escaped on its own: names, keys and values inside come from the file."""
    print("\n".join(map(render.display_text, lines)))


def _section(lines: list[str], title: str, value) -> None:
    if value in (None, {}, []):
        lines.append(f"{title}: -")
        return
    lines.append(title)
    if isinstance(value, dict):
        for key, item in value.items():
            lines.append(f"  {render.display_text(key):<24}{render.short(item)}")  # escaped before padding
    else:
        lines.append(f"  {render.short(value)}")
