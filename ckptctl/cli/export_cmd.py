"""``ckptctl export CHECKPOINT --to OUT``: a checkpoint's weights as safetensors, verified. Exit 0 ok, 1 damaged
or unsafe source (nothing written), 2 bad input, 130 interrupted (nothing left behind)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import EXIT_OK
from ..wording import plural
from .options import DryRunOpt, JsonOpt, complete_choices
from .output import handle_errors, out_console, print_json, print_line, print_table, stdout_is_terminal, warn
from .progress import ByteProgress

if TYPE_CHECKING:
    from ..ops.export import ExportPlan

SYMBOLIC = ("latest", "best", "newest")


@handle_errors
def export_command(
    checkpoint: Annotated[str, typer.Argument(metavar="CHECKPOINT", show_default=False,
                          help="A checkpoint file or directory, or latest / best / newest in --dir.")],  # fmt: skip
    to: Annotated[str, typer.Option("--to", metavar="OUT", show_default=False,
                  help="A .safetensors file, or a directory for Hugging Face-style shards.")],  # fmt: skip
    directory: Annotated[Optional[str], typer.Option("--dir", metavar="DIR",
                         help="Where latest / best / newest are looked up (default: the current directory).")] = None,  # fmt: skip
    key: Annotated[Optional[str], typer.Option("--key", metavar="KEY",
                   help="Export this dotted sub-tree instead of the model weights (e.g. ema.model).")] = None,  # fmt: skip
    strip_prefix: Annotated[Optional[str], typer.Option("--strip-prefix", metavar="PREFIX",
                            help="Remove this prefix from tensor names (Lightning's 'model.', DDP's 'module.').")] = None,  # fmt: skip
    add_prefix: Annotated[Optional[str], typer.Option("--add-prefix", metavar="PREFIX", help="Put this prefix before tensor names.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", metavar="bf16|fp16|fp32",
                     help="Convert floating tensors to this dtype (others are kept).",
                     autocompletion=complete_choices("bf16", "fp16", "fp32"))] = None,  # fmt: skip
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", metavar="SIZE",
                              help="Largest shard when OUT is a directory (5GB, 500MB, 2GiB).")] = "5GB",  # fmt: skip
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists (kept until the new one is verified).")] = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Export the weights of a checkpoint as safetensors, without running its pickle, in bounded memory.

    The output is written to a temp file, verified (every tensor re-read against its CRC-32), then renamed.
    """
    from ..ops.export import execute, plan_export
    from ..ops.usage import parse_size

    source = _source(checkpoint, directory)
    plan = plan_export(source, to, key=key, strip_prefix=strip_prefix, add_prefix=add_prefix, dtype=dtype,
                       max_shard_size=parse_size(max_shard_size), force=force)  # fmt: skip
    if not dry_run:
        with ByteProgress("exporting", plan.nbytes, show=not json_output) as bar:
            execute(plan, bar.advance if bar else None)
    if json_output:
        print_json({**plan.to_json(), "dry_run": dry_run})
    else:
        _report(plan, dry_run)
    raise typer.Exit(EXIT_OK)


def _source(checkpoint: str, directory: str | None) -> str:
    """A symbolic name (latest / best / newest) resolved in ``directory`` by the one resume rule."""
    if checkpoint not in SYMBOLIC:
        return checkpoint
    from ..ops.resolve import resolve_target

    base = directory or "."
    resolution = resolve_target(base) if checkpoint == "newest" else resolve_target(checkpoint, base)
    for note in resolution.fallback_notes():
        warn(note)
    return str(resolution.path)


def _report(plan: ExportPlan, dry_run: bool) -> None:
    from .render import display_text, size

    console = out_console() if stdout_is_terminal() else None
    rows = [(s.file, str(len(s.tensors)), size(s.nbytes)) for s in plan.shards]
    print_table(console, None, ("file", "tensors", "size"), rows)
    verb = "would export" if dry_run else "exported"
    print_line(f"{verb} {plural(len(plan.tensors), 'tensor')} ({size(plan.nbytes)}) of {display_text(plan.selected)} "
               f"from {display_text(str(plan.source))} to {display_text(str(plan.output))}"
               + ("" if dry_run else ", verified"), console)  # fmt: skip
