"""Retention: the one policy module used by CheckpointManager's cleanup and by ``ckptctl prune``.

A plan is computed from names and ``stat``; nothing is deleted here. Protected kinds (latest*,
best*, epoch*, rolling_last_backup) are never removed; only rolling and emergency checkpoints are
candidates, each kind with its own "keep last N", ordered by step then timestamp from the name,
never by mtime. Extra keep rules are OR'ed (restic ``forget`` style): a candidate is kept when any
rule keeps it, and every rule that does is named as a reason.

Three things protect data beyond the rules:

- "Last N" counts valid files only. Walking newest first, each candidate is given a quick
  structural look (:mod:`ckptctl.ops.quickcheck`: a few bytes at each end) until N pass, so an empty or
  truncated file named above every real step cannot push the real checkpoints out. The cost is
  N + the damaged files met, however large the directory. Damaged files met on the way are kept
  and reported ("damaged (empty): not counted, kept"), removed only with ``remove_damaged``.
- A symlink that stays (a pointer such as ``latest.pt``, ``best_model.pt`` or DCP's ``latest``,
  or any kept or ignored name; not ``restore``'s ``.replaced-*`` records, which are history and
  would otherwise keep a damaged directory forever) keeps every name of its chain inside the
  directory: deleting a target would leave the pointer dangling. A target outside the directory
  protects nothing here. Hard links need no protection (the data lives while any name does): removing a rolling name
  that shares its inode with ``latest.pt`` is noted as harmless in the plan.
- ``restore``'s ``<name>.replaced-<stamp>`` records are removed only by age, when the policy says
  so (``replaced_after``); the manager's policy never does.

Time enters in three places only, because names alone cannot answer them:

- ``keep_within`` measures from the newest checkpoint (not from now, so a stopped run is not
  pruned away by waiting): a name's timestamp when it has one (emergency), else the file's mtime.
- stale ``*.tmp`` partial writes are judged by mtime age ("not written to for an hour").
- ``.replaced-*`` records by the stamp in their name.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from ..errors import BadInputError
from ..layouts.naming import Kind, sort_key
from ..wording import plural

if TYPE_CHECKING:  # annotations only: ``prune --help`` needs the policy's defaults, not the catalog
    from ..layouts.base import Unit
    from ..layouts.catalog import Entry
    from .foreign import Run

PROTECTED_REASON = {
    Kind.LATEST: "protected: latest",
    Kind.LATEST_BACKUP: "protected: latest",
    Kind.BEST: "protected: best",
    Kind.BEST_BACKUP: "protected: best",
    Kind.BEST_PREVIOUS: "protected: best",
    Kind.EPOCH: "protected: epoch (kept forever)",
    Kind.ROLLING_BACKUP: "protected: rolling_last_backup",
}
CANDIDATES = {Kind.ROLLING: "rolling", Kind.EMERGENCY: "emergency"}
DEFAULT_STALE_AFTER = timedelta(hours=1)
DEFAULT_KEEP_LAST = 10  # another framework's layout: the units "last N" keeps when --keep-last is not given
DEFAULT_REPLACED_AFTER = timedelta(days=7)  # ``prune``'s default for restore's records (the manager keeps them)

# A rule of a policy applied to the candidates: its reason, and the candidates it keeps.
Rule = tuple[str, list["Entry"]]
# What is wrong with a file as a whole (None: it looks complete); see ckptctl.ops.quickcheck.problem.
Check = Callable[["Entry"], Optional[str]]
MAX_LINK_HOPS = 40  # like the kernel's limit on symlinks in one path

_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[wdhms])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")


@dataclass(frozen=True)
class Policy:
    """What to keep. Counts must be >= 0; extra rules are OR'ed with the "keep last N" rules.

    ``stale_temp_after`` None leaves partial writes alone (the manager cleans its own under the
    lock at start-up); ``prune`` sets it so cron also clears what a killed writer left behind.
    """

    keep_rolling: int = 10
    keep_emergency: int = 10
    keep_every: int | None = None  # keep rolling/emergency checkpoints whose step is a multiple of this
    keep_within: timedelta | None = None  # keep rolling/emergency this close to the newest checkpoint
    keep_best_k: int = 0  # keep the K rolling checkpoints with the lowest val_loss (reads metadata)
    stale_temp_after: timedelta | None = None  # remove *.tmp files not modified for this long
    # damaged, empty or incomplete files met among the newest: removed (True) or kept and reported
    remove_damaged: bool = False
    replaced_after: timedelta | None = None  # remove restore's ``.replaced-*`` records older than this
    # Another framework's layout (``plan_unit_retention``): keep the N newest units (None: DEFAULT_KEEP_LAST);
    # incomplete units are removed only with ``remove_incomplete`` (or ``remove_damaged``).
    keep_last: int | None = None
    remove_incomplete: bool = False

    def __post_init__(self) -> None:
        for name in ("keep_rolling", "keep_emergency", "keep_best_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.keep_last is not None and (not isinstance(self.keep_last, int) or isinstance(self.keep_last, bool)
                                           or self.keep_last < 0):  # fmt: skip
            raise ValueError(f"keep_last must be an integer >= 0, got {self.keep_last!r}")
        if self.keep_every is not None and (not isinstance(self.keep_every, int) or self.keep_every <= 0):
            raise ValueError(f"keep_every must be an integer > 0, got {self.keep_every!r}")
        for name in ("keep_within", "stale_temp_after", "replaced_after"):
            value = getattr(self, name)
            if value is not None and value < timedelta(0):
                raise ValueError(f"{name} must not be negative, got {format_duration(value)}")


@dataclass
class Decision:
    entry: Entry
    reasons: list[str] = field(default_factory=list)  # why it is kept; empty: removed
    damage: str | None = None  # what the quick check found wrong (only files it looked at)
    notes: list[str] = field(default_factory=list)  # for a removal: what else to know (a hard link's data stays)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


@dataclass
class RetentionPlan:
    keep: list[Decision]
    remove: list[Decision]
    ignored: list[Entry]  # names the grammar does not recognise, and fresh partial writes: never removed
    stale_temp: list[Entry] = field(default_factory=list)  # *.tmp older than the policy's threshold

    @property
    def deletions(self) -> list[Entry]:
        """Every file the plan deletes: the removed checkpoints, then the stale partial writes."""
        return [d.entry for d in self.remove] + list(self.stale_temp)

    @property
    def freed_bytes(self) -> int:
        """Bytes the deletions give back: a hard-linked inode counts only when all its names go."""
        return freed_bytes(self.deletions)

    @property
    def removes_everything(self) -> bool:
        """True when the plan removes usable checkpoints and would leave not a single one behind
        (damaged files, kept or removed, and broken links count for neither side)."""
        removes = any(d.entry.parsed.is_checkpoint and d.damage is None for d in self.remove)
        return removes and not any(
            d.entry.parsed.is_checkpoint and d.damage is None and d.entry.broken is None for d in self.keep
        )

    @property
    def damaged(self) -> list[Decision]:
        """Candidates the quick check found damaged, kept or (``remove_damaged``) removed."""
        return [d for d in self.keep + self.remove if d.damage is not None]


def freed_bytes(entries: list[Entry]) -> int:
    """Apparent bytes released by deleting ``entries``: an inode counts once, and only if no name survives."""
    names_removed = Counter(e.inode for e in entries)
    sizes = {e.inode: (e.size_bytes, e.nlink) for e in entries}
    return sum(size for inode, (size, nlink) in sizes.items() if names_removed[inode] >= nlink)


def plan_retention(entries: list[Entry], policy: Policy, *, now: float | None = None,
                   check: Check | None = None) -> RetentionPlan:  # fmt: skip
    """Decide, for every entry, keep (with reasons) or remove. Deletes nothing.

    Reads: ``check`` (default :func:`ckptctl.ops.quickcheck.problem`) on the candidates "last N" is
    about to keep, newest first; symlinks' targets (``readlink``); ``keep_best_k`` metadata.
    ``now`` for temp and replaced-record ages.
    """
    if check is None:  # imported here: ``prune --help`` needs the policy's defaults, not the reading side
        from .quickcheck import problem as check
    current = time.time() if now is None else now
    keep: list[Decision] = []
    candidates: dict[Kind, list[Entry]] = {kind: [] for kind in CANDIDATES}
    for entry in entries:
        kind = entry.parsed.kind
        if kind in PROTECTED_REASON:
            keep.append(Decision(entry, [PROTECTED_REASON[kind]]))
        elif kind in candidates:
            candidates[kind].append(entry)
    stale = stale_temps(entries, policy.stale_temp_after, now=current) if policy.stale_temp_after is not None else []
    aged = policy.replaced_after is not None
    handled = {id(e) for e in stale}
    ignored = [e for e in entries if e.parsed.kind in (Kind.PARTIAL, Kind.OTHER) and id(e) not in handled]
    ignored += [e for e in entries if e.parsed.kind is Kind.REPLACED and not aged]
    for group in candidates.values():
        group.sort(key=lambda e: sort_key(e.parsed))
    damaged: dict[int, str] = {}
    reasons: dict[int, list[str]] = {}
    for reason, kept in _rules(policy, entries, candidates, check, damaged):
        for entry in kept:
            reasons.setdefault(id(entry), []).append(reason)
    remove: list[Decision] = []
    for kind in CANDIDATES:
        for entry in candidates[kind]:
            decision = _candidate_decision(entry, reasons.get(id(entry), []), damaged.get(id(entry)), policy)
            (keep if decision.reasons else remove).append(decision)
    if aged:
        for entry in (e for e in entries if e.parsed.kind is Kind.REPLACED):
            decision = _replaced_decision(entry, policy.replaced_after, current)  # type: ignore[arg-type]
            (keep if decision.reasons else remove).append(decision)
    keep, remove, stale = _protect_link_targets(keep, remove, ignored, stale)
    keep.sort(key=lambda d: (d.entry.parsed.kind not in PROTECTED_REASON, sort_key(d.entry.parsed)))
    _note_hard_links(keep, remove)
    return RetentionPlan(keep, remove, ignored, stale)


def _candidate_decision(entry: Entry, reasons: list[str], damage: str | None, policy: Policy) -> Decision:
    """A rolling/emergency file's decision; a damaged one is kept as such, or removed when asked."""
    if damage is None:
        return Decision(entry, reasons)
    if policy.remove_damaged:
        return Decision(entry, [], damage, [f"damaged ({damage})"])
    return Decision(entry, [*reasons, f"damaged ({damage}): not counted, kept"], damage)


def _replaced_decision(entry: Entry, window: timedelta, now: float) -> Decision:
    """Keep a ``.replaced-*`` record while it is younger than ``window`` (its age from its name)."""
    stamp = entry.parsed.timestamp
    age = max(0.0, now - stamp.timestamp()) if stamp is not None else 0.0
    said = _rough_age(age)
    if age <= window.total_seconds():
        return Decision(entry, [f"replaced by restore {said} ago (kept {format_duration(window)})"])
    return Decision(entry, [], notes=[f"replaced by restore {said} ago"])


def _rough_age(seconds: float) -> str:
    """``9d``, ``5h``, ``12m``: an age to read, in its largest whole unit."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNIT_SECONDS[unit]:
            return f"{int(seconds // _UNIT_SECONDS[unit])}{unit}"
    return f"{int(seconds)}s"


def _protect_link_targets(keep: list[Decision], remove: list[Decision], ignored: list[Entry],
                          stale: list[Entry]) -> tuple[list[Decision], list[Decision], list[Entry]]:  # fmt: skip
    """Every symlink that stays keeps the names its chain passes through in the directory.

    A removed candidate named by a chain moves to ``keep`` with the reason "<pointer> points here";
    a kept one gains that reason too, so a plan shows why a pointer's target is safe.
    """
    staying = [d.entry for d in keep] + ignored
    pointed: dict[str, str] = {}
    for entry in staying:
        if entry.is_symlink and entry.kind is not Kind.REPLACED:  # restore's records may dangle: they are history
            for name in link_chain(entry):
                pointed.setdefault(name, entry.name)
    if not pointed:
        return keep, remove, stale
    for decision in keep:
        pointer = pointed.get(decision.entry.name)
        if pointer is not None and decision.entry.parsed.kind not in PROTECTED_REASON:
            decision.reasons.append(f"{pointer} points here")
    still_removed = []
    for decision in remove:
        pointer = pointed.get(decision.entry.name)
        if pointer is None:
            still_removed.append(decision)
        else:
            decision.reasons.append(f"{pointer} points here")
            decision.notes = []
            keep.append(decision)
    return keep, still_removed, [e for e in stale if e.name not in pointed]


def link_chain(entry: Entry) -> list[str]:
    """Names in ``entry``'s directory that its symlink chain passes through, in order.

    Hops outside the directory are followed (a chain may come back) but protect nothing there;
    a loop or more than MAX_LINK_HOPS hops ends the chain. Reads links only, never a file.
    """
    directory = os.path.realpath(entry.path.parent)
    names: list[str] = []
    seen: set[str] = set()
    path = str(entry.path)
    for _ in range(MAX_LINK_HOPS):
        try:
            target = os.readlink(path)
        except OSError:  # not a symlink (the chain's end), or gone
            break
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
        if path in seen:
            break
        seen.add(path)
        parent, name = os.path.split(path)
        if name and os.path.realpath(parent) == directory and name not in names:
            names.append(name)
    return names


def _note_hard_links(keep: list[Decision], remove: list[Decision]) -> None:
    """A removed name whose inode a kept name shares loses no data: say so in its notes."""
    kept_names: dict[object, list[str]] = {}
    for decision in keep:
        entry = decision.entry
        if not entry.is_symlink and entry.broken is None:
            kept_names.setdefault(entry.inode, []).append(entry.name)
    for decision in remove:
        entry = decision.entry
        if entry.nlink > 1 and not entry.is_symlink and entry.inode in kept_names:
            decision.notes.append(f"hard link of {', '.join(kept_names[entry.inode])}: its data stays")


def refuse_if_removes_everything(plan: RetentionPlan) -> None:
    """Raise BadInputError for a plan that leaves no checkpoint at all (restic's refusal to forget all)."""
    if plan.removes_everything:
        count = sum(d.entry.parsed.is_checkpoint and d.damage is None for d in plan.remove)
        raise BadInputError(
            f"refusing: this policy would remove all {plural(count, 'checkpoint')} and keep none "
            "(raise --keep-rolling/--keep-emergency or add a keep rule)"
        )


def stale_temps(entries: list[Entry], older_than: timedelta, *, now: float | None = None) -> list[Entry]:
    """Partial writes (``*.tmp``) not modified for ``older_than``: what a killed writer left behind.

    Delete them only while holding the directory lock: every writer holds it while its temp file
    exists, so under the lock an old temp file cannot belong to a save in progress.
    """
    current = time.time() if now is None else now
    limit = older_than.total_seconds()
    return [e for e in entries if e.kind is Kind.PARTIAL and current - e.mtime >= limit]


def _rules(policy: Policy, entries: list[Entry], candidates: dict[Kind, list[Entry]], check: Check,
           damaged: dict[int, str]) -> list[Rule]:  # fmt: skip
    """Each rule of the policy, in reason order: (reason, the candidates it keeps).

    "Last N" records the damaged files it met in ``damaged`` (id -> problem); with
    ``remove_damaged`` no other rule keeps them either.
    """
    rolling, emergency = candidates[Kind.ROLLING], candidates[Kind.EMERGENCY]
    everything = rolling + emergency
    rules = [_keep_last(rolling, policy.keep_rolling, "rolling", check, damaged),
             _keep_last(emergency, policy.keep_emergency, "emergency", check, damaged)]  # fmt: skip
    if policy.remove_damaged:
        everything = [e for e in everything if id(e) not in damaged]
        rolling = [e for e in rolling if id(e) not in damaged]
    if policy.keep_every:
        every = policy.keep_every
        rules.append((f"every {plural(every, 'step')}", [e for e in everything if e.step is not None and e.step % every == 0]))
    if policy.keep_within is not None:
        rules.append(_keep_within(entries, everything, policy.keep_within))
    if policy.keep_best_k:
        rules.append(_keep_best(rolling, policy.keep_best_k))
    return rules


def _keep_last(ordered: list[Entry], count: int, label: str, check: Check, damaged: dict[int, str]) -> Rule:
    """The newest ``count`` valid files of ``ordered`` (in step, then timestamp order).

    Newest first, each is checked until ``count`` pass: the damaged ones met are recorded in
    ``damaged`` and not counted; older files are not looked at (bounded: count + damaged).
    """
    kept: list[Entry] = []
    for entry in reversed(ordered):
        if len(kept) >= count:
            break
        problem = check(entry)
        if problem is None:
            kept.append(entry)
        else:
            damaged[id(entry)] = problem
    return f"last {count} {label}", kept[::-1]


def saved_time(entry: Entry) -> float:
    """When a file was saved, from names and stat only: the name's timestamp, else its mtime."""
    if entry.parsed.timestamp is not None:
        return entry.parsed.timestamp.timestamp()  # naive local time, as the manager names files
    return entry.mtime


def _keep_within(entries: list[Entry], candidates: list[Entry], window: timedelta) -> Rule:
    """Candidates saved within ``window`` of the newest checkpoint of any kind."""
    newest = max((saved_time(e) for e in entries if e.parsed.is_checkpoint and e.broken is None), default=0.0)
    limit = window.total_seconds()
    return f"within {format_duration(window)} of newest", [e for e in candidates if newest - saved_time(e) <= limit]


def _keep_best(rolling: list[Entry], k: int) -> Rule:
    """The K lowest val_loss among rolling checkpoints (ties: the newer step); unreadable ones never qualify."""
    scored = []
    for index, entry in enumerate(rolling):
        meta = entry.metadata
        if meta is not None and meta.val_loss is not None and meta.val_loss == meta.val_loss:  # not NaN
            scored.append((meta.val_loss, -(entry.step or 0), index))
    return f"best {k} by val_loss", [rolling[index] for _loss, _step, index in sorted(scored)[:k]]


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``90s``, ``2w``, or combined like ``1d12h``; raise BadInputError otherwise."""
    cleaned = text.strip().lower()
    if not _DURATION.fullmatch(cleaned):
        raise BadInputError(f"bad duration {text!r}: use a number with a unit, e.g. 7d, 12h, 30m, 1d12h (units: w d h m s)")
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(cleaned))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest ``parse_duration`` spelling of ``value`` (``1d12h``), for reasons and messages."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


def clean_stale_temp(directory: str | os.PathLike[str], older_than: float = 3600.0) -> list[Path]:
    """Remove ``*.tmp`` partial writes not modified for ``older_than`` seconds; return what was removed.

    A caller holding the directory lock may pass 0: every writer holds the lock while its temp
    file exists, so under the lock any temp file belongs to a writer that died.
    """
    from ..durable import remove_entry  # lazily: ``prune --help`` reads the policy defaults only
    from ..layouts.catalog import scan

    removed: list[Path] = []
    for entry in stale_temps(scan(directory), timedelta(seconds=older_than)):
        try:
            remove_entry(entry.path, entry.is_directory)
            removed.append(entry.path)
        except FileNotFoundError:
            continue
    return removed


# ------------------------------------------------------------------ another framework's layout


def plan_unit_retention(run: Run, entries: list[Entry], policy: Policy, *, now: float | None = None) -> RetentionPlan:
    """Keep or remove each unit of a foreign layout's run (``prune`` on HF, Lightning, ... directories).

    Kept whatever the rules say: what :meth:`Layout.protect` marks, the best the framework recorded,
    the newest complete unit, every pointer's target and a pointer that is itself a unit (a
    ``last.ckpt`` copy), and units without a step (they cannot be ordered). Of the others, the
    ``keep_last`` newest complete units by step (then the layout's order) and, with ``keep_every``,
    those whose step is a multiple of it. Incomplete units never count as one of the last N; they
    are kept and reported unless ``remove_incomplete``. ``entries`` (a catalog scan of the directory)
    supplies the stale ``*.tmp`` leftovers and restore's ``.replaced-*`` records, judged as natively.
    """
    current = time.time() if now is None else now
    keep_last = DEFAULT_KEEP_LAST if policy.keep_last is None else policy.keep_last
    remove_incomplete = policy.remove_incomplete or policy.remove_damaged
    ordered = run.newest_first()
    reasons: dict[int, list[str]] = {id(u): [] for u in run.units}

    def add(unit: Unit, reason: str) -> None:
        if reason not in reasons[id(unit)]:
            reasons[id(unit)].append(reason)

    pointer_units = {id(u) for u in run.units if run.is_pointer_path(u) is not None}
    for unit in run.units:
        if unit.protected and not (unit.protected == "protected: pointer target" and run.pointer_of(unit)):
            add(unit, unit.protected)  # (the default "pointer target" is said below, naming the pointer)
        if unit.best:
            add(unit, "protected: best")
        own = run.is_pointer_path(unit)
        for pointer in run.pointer_of(unit):
            if pointer is not own:  # a copy names itself
                add(unit, f"protected: {pointer.name} points here")
        if own is not None and not reasons[id(unit)]:
            add(unit, f"protected: {own.name} is a pointer")
    complete = [u for u in ordered if u.complete and u.step is not None and id(u) not in pointer_units]
    if complete:
        add(complete[0], "protected: newest complete")
    for unit in complete[:keep_last]:
        add(unit, f"last {keep_last}")
    if policy.keep_every:
        for unit in complete:
            if unit.step is not None and unit.step % policy.keep_every == 0:
                add(unit, f"every {plural(policy.keep_every, 'step')}")
    keep: list[Decision] = []
    remove: list[Decision] = []
    from .foreign import incomplete_reason, unit_entry

    unit_paths = set()
    for unit in reversed(ordered):  # oldest first, as the plan is shown
        entry = unit_entry(unit)
        if entry is None:  # vanished since the layout listed it
            continue
        unit_paths.add(os.path.abspath(unit.path))
        why = reasons[id(unit)]
        damage = incomplete_reason(unit)
        if damage is not None:
            if why:
                keep.append(Decision(entry, [*why, f"{damage}: kept, protected"], damage))
            elif remove_incomplete:
                remove.append(Decision(entry, [], damage, [damage]))
            else:
                keep.append(Decision(entry, [f"{damage}: not counted, kept (--remove-incomplete removes it)"], damage))
            continue
        if unit.step is None and not why:
            why = ["no step recorded: cannot be ordered, kept"]
        if why:
            keep.append(Decision(entry, list(why)))
        else:
            remove.append(Decision(entry, [], notes=[f"older than the last {keep_last}" if keep_last else "no rule keeps it"]))
    pointer_paths = {os.path.abspath(p.path) for p in run.pointers}
    others = [e for e in entries if os.path.abspath(e.path) not in unit_paths and e.name != ".ckptctl.lock"]
    stale = stale_temps(others, policy.stale_temp_after, now=current) if policy.stale_temp_after is not None else []
    handled = {id(e) for e in stale}
    aged = policy.replaced_after is not None
    ignored = [e for e in others if id(e) not in handled and os.path.abspath(e.path) not in pointer_paths
               and e.unit is None and (e.kind is not Kind.REPLACED or not aged)]  # fmt: skip
    if aged:
        for entry in (e for e in others if e.kind is Kind.REPLACED):
            decision = _replaced_decision(entry, policy.replaced_after, current)  # type: ignore[arg-type]
            (keep if decision.reasons else remove).append(decision)
    _note_hard_links(keep, remove)
    return RetentionPlan(keep, remove, ignored, stale)
