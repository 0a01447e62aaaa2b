"""``ckptctl prune DIR``: apply the retention policy from cron or by hand; a plan first, then deletion.

Never prompts when stdin or stderr is not a terminal: without ``--yes`` it refuses with a hint.
"""

from __future__ import annotations

import functools
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import BadInputError
from ..ops.retention import DEFAULT_REPLACED_AFTER, DEFAULT_STALE_AFTER, Policy, format_duration, parse_duration
from . import render
from .options import DirArg, DryRunOpt, JsonOpt, QuietOpt, WaitOpt, YesOpt
from .output import confirm_or_exit, handle_errors, out_console, plain_table, print_json, stdout_is_terminal, warn

if TYPE_CHECKING:  # the core is imported when the command runs, not when the app starts
    from ..ops.prune import PrunePlan, PruneResult


# Options about ckptctl's own kinds of file (rolling, emergency, val_loss in metadata): refused on another
# framework's layout, whose units have no such kinds (ckptctl.ops.prune.LAYOUT_OPTIONS apply everywhere).
NATIVE_ONLY = {"keep_rolling": "--keep-rolling", "keep_emergency": "--keep-emergency", "keep_within": "--keep-within",
               "keep_best_k": "--keep-best-k"}  # fmt: skip


@handle_errors
def prune_command(
    ctx: typer.Context,
    directory: DirArg,
    keep_rolling: Annotated[int, typer.Option("--keep-rolling", metavar="N", min=0, help="Keep the last N rolling checkpoints (by step).")] = 10,
    keep_emergency: Annotated[int, typer.Option("--keep-emergency", metavar="N", min=0, help="Keep the last N emergency checkpoints (by step, then time).")] = 10,
    keep_every: Annotated[Optional[int], typer.Option("--keep-every", metavar="STEPS", min=1, help="Also keep checkpoints whose step is a multiple of STEPS.")] = None,
    keep_within: Annotated[Optional[str], typer.Option("--keep-within", metavar="DURATION", help="Also keep checkpoints saved within DURATION (7d, 12h, 30m) of the newest one.")] = None,
    keep_best_k: Annotated[int, typer.Option("--keep-best-k", metavar="K", min=0, help="Also keep the K rolling checkpoints with the lowest val_loss (reads their metadata).")] = 0,
    stale_after: Annotated[str, typer.Option("--stale-after", metavar="DURATION", help="Remove partial writes (*.tmp) not modified for DURATION.")] = format_duration(DEFAULT_STALE_AFTER),
    keep_replaced_within: Annotated[str, typer.Option("--keep-replaced-within", metavar="DURATION", help="Remove restore's *.replaced-<time> records older than DURATION (by the time in their name).")] = format_duration(DEFAULT_REPLACED_AFTER),
    remove_damaged: Annotated[bool, typer.Option("--remove-damaged", help="Also remove the damaged, empty or incomplete rolling/emergency files met among the newest (kept and reported otherwise; never counted as one of the last N).")] = False,
    keep_last: Annotated[Optional[int], typer.Option("--keep-last", metavar="N", min=0, help="Keep the N newest checkpoints by step (default 10). Works on every layout (HF Trainer, Lightning, accelerate, DeepSpeed, torchtitan); on ckptctl's own layout it sets --keep-rolling and --keep-emergency unless those are given.")] = None,
    remove_incomplete: Annotated[bool, typer.Option("--remove-incomplete", help="Also remove incomplete checkpoints (a file the layout requires is missing); never counted as one of the last N. On ckptctl's own layout: --remove-damaged.")] = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    quiet: QuietOpt = False,
    wait: WaitOpt = 0.0,
    json_output: JsonOpt = False,
) -> None:
    """Delete old rolling and emergency checkpoints by the retention policy; latest, best and epoch files are never touched.

    Keep rules are OR'ed: a checkpoint stays if any rule keeps it. "Last N" counts only files that look
    whole (empty or truncated ones are reported, not counted); the target of a symlink such as latest.pt
    is never removed. Files whose names are not checkpoint names are listed as ignored and never removed.

    Other frameworks' directories (HF Trainer checkpoint-N/, Lightning *.ckpt, accelerate, DeepSpeed,
    torchtitan step-N/): --keep-last N keeps the N newest complete checkpoints; the best the framework
    recorded, the newest complete checkpoint and the target of latest / last.ckpt are never removed;
    incomplete checkpoints only with --remove-incomplete. A checkpoint directory is removed as a whole.
    """
    from ..ops.prune import execute, plan_prune

    given = [flag for name, flag in NATIVE_ONLY.items() if _given(ctx, name)]
    if keep_last is not None:
        keep_rolling = keep_rolling if _given(ctx, "keep_rolling") else keep_last
        keep_emergency = keep_emergency if _given(ctx, "keep_emergency") else keep_last
    policy = _policy(keep_rolling, keep_emergency, keep_every, keep_within, keep_best_k, stale_after,
                     keep_replaced_within, remove_damaged or remove_incomplete, keep_last, remove_incomplete)  # fmt: skip
    plan = plan_prune(directory, policy, native_options=given)
    if not json_output and not quiet:
        _print_plan(plan)
    if dry_run or not plan.deletions:
        _finish(plan, None, dry_run, json_output, quiet)
        return
    if not yes:
        _confirm(plan, json_output)
    result = execute(plan, wait=wait)
    _finish(plan, result, dry_run, json_output, quiet)


def _given(ctx: typer.Context, name: str) -> bool:
    """The user gave option ``name`` (not its default)."""
    source = ctx.get_parameter_source(name)  # an enum of click's (or the click typer bundles): compare by name
    return source is not None and getattr(source, "name", "") not in ("DEFAULT", "DEFAULT_MAP")


def _policy(keep_rolling: int, keep_emergency: int, keep_every: int | None, keep_within: str | None,
            keep_best_k: int, stale_after: str, keep_replaced_within: str, remove_damaged: bool,
            keep_last: int | None = None, remove_incomplete: bool = False) -> Policy:  # fmt: skip
    try:
        return Policy(
            keep_rolling=keep_rolling,
            keep_emergency=keep_emergency,
            keep_every=keep_every,
            keep_within=parse_duration(keep_within) if keep_within is not None else None,
            keep_best_k=keep_best_k,
            stale_temp_after=parse_duration(stale_after),
            replaced_after=parse_duration(keep_replaced_within),
            remove_damaged=remove_damaged,
            keep_last=keep_last,
            remove_incomplete=remove_incomplete,
        )
    except ValueError as exc:
        raise BadInputError(f"bad policy: {exc}") from None


def _confirm(plan: PrunePlan, json_output: bool) -> None:
    count, freed = _files(len(plan.deletions), plan), render.size(plan.freed_bytes)
    confirm_or_exit(
        f"Delete {count} from {plan.directory} (frees {freed})?",
        refusal=f"refusing to delete {count} without confirmation: not a terminal "
        "(add --yes to delete, or --dry-run to only show the plan)",
        declined="nothing deleted",
    )


def _finish(plan: PrunePlan, result: PruneResult | None, dry_run: bool, json_output: bool, quiet: bool) -> None:
    if result is not None and result.skipped and not quiet:
        verb = "is" if len(result.skipped) == 1 else "are"
        warn(f"skipped {render.plural(len(result.skipped), 'planned file')} that changed or {verb} kept now (a save ran meanwhile)")
    if json_output:
        print_json(to_json(plan, result, dry_run))
    elif not quiet:
        print(_outcome(plan, result, dry_run))


def to_json(plan: PrunePlan, result: PruneResult | None, dry_run: bool) -> dict:
    """The ``--json`` document: the plan, and what an execution removed."""
    now = time.time()
    retention = plan.retention
    doc = {
        "directory": str(plan.directory),
        "keep": [{"name": d.entry.name, "kind": d.entry.kind.value, "step": d.entry.step, "reasons": d.reasons,
                  "damage": d.damage, "link": d.entry.link} for d in retention.keep],  # fmt: skip
        "remove": [{"name": d.entry.name, "kind": d.entry.kind.value, "step": d.entry.step, "size_bytes": d.entry.size_bytes,
                    "damage": d.damage, "notes": d.notes, "link": d.entry.link} for d in retention.remove],  # fmt: skip
        "stale_temp": [{"name": e.name, "size_bytes": e.size_bytes, "age_seconds": round(now - e.mtime, 1)}
                       for e in retention.stale_temp],  # fmt: skip
        "ignored": [e.name for e in retention.ignored],
        "damaged": [{"name": d.entry.name, "damage": d.damage, "removed": not d.keep} for d in retention.damaged],
        "freed_bytes": result.freed_bytes if result is not None else plan.freed_bytes,
        "dry_run": dry_run,
        "removed": [e.name for e in result.removed] if result is not None else [],
        "skipped": [e.name for e in result.skipped] if result is not None else [],
    }
    doc["layout"] = plan.layout or "ckptctl"
    if plan.run is not None:  # another framework's layout: what the units are, and its pointers
        for key, decisions in (("keep", retention.keep), ("remove", retention.remove)):
            for item, decision in zip(doc[key], decisions):
                unit = decision.entry.unit
                if unit is not None:
                    item.update({"is_directory": unit.is_directory, "complete": unit.complete, "missing": unit.missing,
                                 "best": unit.best, "protected": unit.protected, "epoch": unit.epoch})  # fmt: skip
        doc["pointers"] = [{"name": p.name, "target": p.target, "status": p.status, "detail": p.detail}
                           for p in plan.run.pointers]  # fmt: skip
    return doc


def _outcome(plan: PrunePlan, result: PruneResult | None, dry_run: bool) -> str:
    if not plan.deletions:
        return "Nothing to remove."
    if result is None:
        prefix = "Dry run: would remove" if dry_run else "Would remove"
        return f"{prefix} {_files(len(plan.deletions), plan)}, freeing {render.size(plan.freed_bytes)}."
    return f"Removed {_files(len(result.removed), plan)}, freed {render.size(result.freed_bytes)}."


def _files(count: int, plan: PrunePlan | None = None) -> str:
    """``3 files``; ``3 checkpoints`` on another framework's layout (a checkpoint may be a directory)."""
    return render.plural(count, "checkpoint" if plan is not None and plan.run is not None else "file")


# Neighbouring checkpoints of one run mostly have the same size: format each size once (10,000-row plans).
_size = functools.lru_cache(maxsize=1024)(render.size)


def _sections(plan: PrunePlan) -> list[tuple[str, tuple[str, ...], list[list[str]]]]:
    """(title, headers, rows) for each non-empty part of the plan."""
    from ..ops.usage import is_own

    retention, now = plan.retention, time.time()
    ignored = [e for e in retention.ignored if not is_own(e)]  # the lock, the demo's marker: the tool's own (JSON keeps them)
    remove_headers, remove_rows = ("name", "step", "size"), [[_name(d.entry), _step(d.entry.step), _size(d.entry.size_bytes)]
                                                             for d in retention.remove]  # fmt: skip
    if any(d.notes for d in retention.remove):
        remove_headers = (*remove_headers, "notes")
        remove_rows = [row + [", ".join(d.notes) or "-"] for row, d in zip(remove_rows, retention.remove)]
    sections = [
        (f"Keep ({len(retention.keep)})", ("name", "step", "reasons"),
         [[_name(d.entry), _step(d.entry.step), ", ".join(d.reasons)] for d in retention.keep]),
        (f"Remove ({len(retention.remove)})", remove_headers, remove_rows),
        (f"Stale partial writes, removed ({len(retention.stale_temp)})", ("name", "age", "size"),
         [[e.name, _age(now - e.mtime), _size(e.size_bytes)] for e in retention.stale_temp]),
        (f"Ignored, never removed ({len(ignored)})", ("name", "why"), [[_name(e), _ignored_why(e)] for e in ignored]),
    ]  # fmt: skip
    if plan.run is not None and plan.run.pointers:
        sections.append((f"Pointers, never removed ({len(plan.run.pointers)})", ("name", "points at", "state"),
                         [[p.name, p.target or "-", p.status + (f" ({p.detail})" if p.detail else "")]
                          for p in plan.run.pointers]))  # fmt: skip
    return [section for section in sections if section[2]]


def _name(entry) -> str:
    """A name, with where it points when it is a symlink (``latest.pt -> rolling_step_000300.pt``)."""
    return entry.name if entry.link is None else f"{entry.name} -> {entry.link}"


def _ignored_why(entry) -> str:
    if entry.broken is not None:
        return f"{entry.broken} symlink"
    return {"partial": "partial write (recent)", "replaced": "restore's record"}.get(entry.kind.value, "not a checkpoint name")


def _age(seconds: float) -> str:
    return format_duration(timedelta(seconds=max(0, int(seconds))))


def _step(step: int | None) -> str:
    return "-" if step is None else str(step)


def _print_plan(plan: PrunePlan) -> None:
    if not stdout_is_terminal():
        for title, headers, rows in _sections(plan):
            print(f"{title}:")
            print(plain_table(headers, rows))
            print()
        return
    from rich.table import Table

    console = out_console()
    for title, headers, rows in _sections(plan):
        style = "red" if title.startswith(("Remove", "Stale")) else None
        table = Table(title=title, title_justify="left", header_style="bold")
        for header in headers:
            table.add_column(header, justify="right" if header in ("step", "size", "age") else "left", style=style,
                             overflow="fold" if header == "name" else "ellipsis")  # fmt: skip
        for row in rows:
            table.add_row(*map(render.display_text, row))
        console.print(table)
