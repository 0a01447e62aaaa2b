"""``ckptctl restore DIR``: heal a checkpoint directory (single files or sharded) from its backups.
Exit 0 ok, 1 nothing valid to restore from, 2 bad input or a file restore could not read (permission)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Iterable, Optional, Sequence

import typer

from ..errors import BadInputError
from .options import DirArg, DryRunOpt, JsonOpt, WaitOpt, YesOpt, complete_choices
from .output import confirm_or_exit, handle_errors, out_console, print_json, print_line, print_table, stdout_is_terminal
from .render import plural

if TYPE_CHECKING:  # the core is imported when the command runs, not when the app starts
    from ..ops.restore import Action, Check, RestorePlan


@handle_errors
def restore_command(
    directory: DirArg,
    source: Annotated[
        Optional[str], typer.Option("--from", metavar="FILE", help="Restore from this file, or sharded checkpoint directory (a path or a name in DIR); needs --to.")
    ] = None,
    to: Annotated[Optional[str], typer.Option("--to", metavar="latest|best", autocompletion=complete_choices("latest", "best"), help="What --from replaces.")] = None,
    rollback_best: Annotated[
        bool, typer.Option("--rollback-best", help="Promote best_model_previous(.pt) to best (the replaced best is kept).")
    ] = False,
    discard: Annotated[
        bool, typer.Option("--discard", help="Do not keep replaced files as <name>.replaced-<time>.")
    ] = False,
    mode: Annotated[
        str, typer.Option("--mode", metavar="reflink|copy|link", autocompletion=complete_choices("reflink", "copy", "link"), help="How the content is duplicated (reflink falls back to copy).")
    ] = "reflink",  # ckptctl.durable.REFLINK (tests/cli/test_restore.py checks they agree)
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    wait: WaitOpt = 0.0,
    json_output: JsonOpt = False,
) -> None:
    """Make DIR resumable again: replace a missing or damaged latest.pt / best_model.pt with the newest valid backup.

    Heals damage only: an intact file is never replaced (content findings such as a missing key
    are not damage), and a file it cannot read (permission) is reported, left alone, exit 2.
    latest.pt is healed from where to resume: the newest valid checkpoint of any kind. Every replacement is atomic and durable; the replaced file is kept as <name>.replaced-<time>
    unless --discard. Takes the directory lock (exit 3 while a training holds it). In a sharded
    (DCP) directory the latest symlink is re-pointed and best_model/ is replaced by a copied directory.

    Other frameworks' directories: a Lightning last.ckpt symlink that is dangling, looping or stale is
    re-pointed at the newest complete, valid checkpoint (a damaged last.ckpt copy is replaced by a copy of
    it); a DeepSpeed latest file naming a missing or damaged tag is rewritten to the newest valid tag.
    """
    from ..ops.restore import execute
    from ..formats.storage import refuse_url

    refuse_url(directory, "restore")
    refuse_url(source, "restore")
    plan = _plan(directory, source, to, rollback_best, discard, mode)
    if not json_output:
        _Report().plan(plan)
    if plan.actions and not dry_run:
        if not yes:
            _confirm(plan)
        execute(plan, wait=wait)
    if json_output:
        doc = plan.to_json()
        doc["dry_run"] = dry_run
        print_json(doc)
    else:
        _Report().outcome(plan, dry_run)
    raise typer.Exit(plan.exit_code)


def _plan(directory: str, source: str | None, to: str | None, rollback_best: bool, discard: bool, mode: str) -> RestorePlan:
    from ..ops.restore import TARGETS, plan_from, plan_heal, plan_rollback_best

    if rollback_best and (source or to):
        raise BadInputError("--rollback-best excludes --from/--to")
    if (source is None) != (to is None):
        raise BadInputError("--from FILE and --to latest|best go together")
    if to is not None and to not in TARGETS:
        raise BadInputError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if rollback_best:
        return plan_rollback_best(directory, discard=discard, mode=mode)
    if source is not None:
        return plan_from(directory, source, to, discard=discard, mode=mode)  # type: ignore[arg-type]
    return plan_heal(directory, discard=discard, mode=mode)


def _confirm(plan: RestorePlan) -> None:
    count = len(plan.actions)
    confirm_or_exit(
        f"Replace {plural(count, 'file')} in {plan.directory}?",
        refusal=f"refusing to replace {plural(count, 'file')} without confirmation: not a terminal "
        "(add --yes to restore, or --dry-run to only show the plan)",
    )


def _describe(action: Action) -> list[str]:
    step = f"step {action.step}" if action.step is not None else ""
    keep = (f"kept as {action.keep_as}" if action.keep_as else "(broken link, not kept)" if action.broken_link
            else "(discarded)" if action.target_identity else "(was missing)")  # fmt: skip
    return [action.target, "<- " + str(action.source.name), step, keep, action.reason]


def _verdict(check: Check) -> str:
    """The integrity verdict with its problems; content findings only as a count (never acted on)."""
    if check.valid:
        count = len(check.findings)
        return "valid" + (f" ({count} content finding{'s' if count > 1 else ''}: not damage)" if count else "")
    if check.status == "inaccessible":
        return "inaccessible (see below)"  # its reason is printed once, under the tables
    return f"{check.status}: " + "; ".join(check.problems)


def _nothing_to_do(plan: RestorePlan) -> str:
    """What was found intact, in words: never 'best is valid' when there is no best model."""
    if plan.layout != "ckptctl":  # another framework's layout: its pointers
        names = [p["name"] for p in plan.pointers]
        if not names:
            return "nothing to do: no pointer to heal"
        return f"nothing to do: {' and '.join(names)} {'point' if len(names) > 1 else 'points'} at a complete, valid checkpoint"
    valid = [c.name for c in plan.checked if c.valid and c.name.startswith(("latest", "best_model"))]
    checked = " and ".join(dict.fromkeys(valid)) or "nothing"
    return f"nothing to do: {checked} {'are' if len(valid) > 1 else 'is'} valid"


class _Report:
    """Rich tables on a terminal, aligned plain text when piped; everything to stdout."""

    def __init__(self) -> None:
        self.console = out_console() if stdout_is_terminal() else None

    def plan(self, plan: RestorePlan) -> None:
        self.table("checked", ("file", "verdict", "step"),
                   [[c.name, _verdict(c), c.step if c.step is not None else ""] for c in plan.checked])  # fmt: skip
        if plan.actions:
            self.table("plan", ("target", "source", "step", "old file", "reason"), [_describe(a) for a in plan.actions])
        for problem in plan.unrestorable:
            self.line(f"cannot restore: {problem}")
        for problem in plan.inaccessible:
            self.line(f"not readable: {problem}")
        for note in plan.notes:
            self.line(f"note: {note}")
        if plan.resume_from is not None and plan.kind == "heal" and not any(plan.resume_reason in n for n in plan.notes):
            self.line(f"resume from: {plan.resume_reason}")  # unless a note said it already

    def outcome(self, plan: RestorePlan, dry_run: bool) -> None:
        if not plan.actions:
            self.line(_nothing_to_do(plan) if plan.exit_code == 0 else "nothing was changed")
            return
        if dry_run:
            self.line(f"dry run: {plural(len(plan.actions), 'replacement')} planned, nothing changed")
            return
        for action in plan.actions:
            if action.status == "done":
                self.line(f"restored {action.target} from {action.source.name} ({action.mode_used})")
            else:
                self.line(f"skipped {action.target}: {action.note}")

    def line(self, text: str) -> None:
        print_line(text, self.console)

    def table(self, title: str, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        rows = list(rows)
        if rows:
            print_table(self.console, title, headers, rows)
