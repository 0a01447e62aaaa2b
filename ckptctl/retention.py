"""Retention: the one policy module used by CheckpointManager's cleanup and by ``ckptctl prune``.

A plan is computed from names and ``stat`` (and, for ``keep_best_k`` only, metadata); nothing is
deleted here. Protected kinds (latest*, best*, epoch*, rolling_last_backup) are never removed; only
rolling and emergency checkpoints are candidates, each kind with its own "keep last N", ordered by
step then timestamp from the name, never by mtime. Extra keep rules are OR'ed (restic ``forget``
style): a candidate is kept when any rule keeps it, and every rule that does is named as a reason.

Time enters in two places only, because names alone cannot answer them:

- ``keep_within`` measures from the newest checkpoint (not from now, so a stopped run is not
  pruned away by waiting): a name's timestamp when it has one (emergency), else the file's mtime.
- stale ``*.tmp`` partial writes are judged by mtime age ("not written to for an hour").
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from .errors import BadInputError
from .naming import Kind, sort_key

if TYPE_CHECKING:  # annotations only: ``prune --help`` needs the policy's defaults, not the catalog
    from .catalog import Entry

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

# A rule of a policy applied to the candidates: its reason, and the candidates it keeps.
Rule = tuple[str, list["Entry"]]

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

    def __post_init__(self) -> None:
        for name in ("keep_rolling", "keep_emergency", "keep_best_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.keep_every is not None and (not isinstance(self.keep_every, int) or self.keep_every <= 0):
            raise ValueError(f"keep_every must be an integer > 0, got {self.keep_every!r}")
        for name in ("keep_within", "stale_temp_after"):
            value = getattr(self, name)
            if value is not None and value < timedelta(0):
                raise ValueError(f"{name} must not be negative, got {format_duration(value)}")


@dataclass
class Decision:
    entry: Entry
    reasons: list[str] = field(default_factory=list)

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
        """True when the plan removes checkpoints and would leave not a single one behind."""
        return bool(self.remove) and not any(d.entry.parsed.is_checkpoint for d in self.keep)


def freed_bytes(entries: list[Entry]) -> int:
    """Apparent bytes released by deleting ``entries``: an inode counts once, and only if no name survives."""
    names_removed = Counter(e.inode for e in entries)
    sizes = {e.inode: (e.size_bytes, e.nlink) for e in entries}
    return sum(size for inode, (size, nlink) in sizes.items() if names_removed[inode] >= nlink)


def plan_retention(entries: list[Entry], policy: Policy, *, now: float | None = None) -> RetentionPlan:
    """Decide, for every entry, keep (with reasons) or remove. Touches no file; ``now`` for temp ages."""
    keep: list[Decision] = []
    remove: list[Decision] = []
    candidates: dict[Kind, list[Entry]] = {kind: [] for kind in CANDIDATES}
    for entry in entries:
        kind = entry.parsed.kind
        if kind in PROTECTED_REASON:
            keep.append(Decision(entry, [PROTECTED_REASON[kind]]))
        elif kind in candidates:
            candidates[kind].append(entry)
    stale = stale_temps(entries, policy.stale_temp_after, now=now) if policy.stale_temp_after is not None else []
    stale_ids = {id(e) for e in stale}
    ignored = [e for e in entries if e.parsed.kind in (Kind.PARTIAL, Kind.OTHER) and id(e) not in stale_ids]
    for group in candidates.values():
        group.sort(key=lambda e: sort_key(e.parsed))
    reasons: dict[int, list[str]] = {}
    for reason, kept in _rules(policy, entries, candidates):
        for entry in kept:
            reasons.setdefault(id(entry), []).append(reason)
    for kind in CANDIDATES:
        for entry in candidates[kind]:
            decision = Decision(entry, reasons.get(id(entry), []))
            (keep if decision.reasons else remove).append(decision)
    return RetentionPlan(keep, remove, ignored, stale)


def refuse_if_removes_everything(plan: RetentionPlan) -> None:
    """Raise BadInputError for a plan that leaves no checkpoint at all (restic's refusal to forget all)."""
    if plan.removes_everything:
        raise BadInputError(
            f"refusing: this policy would remove all {len(plan.remove)} checkpoints and keep none "
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


def _rules(policy: Policy, entries: list[Entry], candidates: dict[Kind, list[Entry]]) -> list[Rule]:
    """Each rule of the policy, in reason order: (reason, the candidates it keeps)."""
    rolling, emergency = candidates[Kind.ROLLING], candidates[Kind.EMERGENCY]
    everything = rolling + emergency
    rules = [_keep_last(rolling, policy.keep_rolling, "rolling"), _keep_last(emergency, policy.keep_emergency, "emergency")]
    rules.append(_pointed_to(entries, everything))
    if policy.keep_every:
        every = policy.keep_every
        rules.append((f"every {every} steps", [e for e in everything if e.step is not None and e.step % every == 0]))
    if policy.keep_within is not None:
        rules.append(_keep_within(entries, everything, policy.keep_within))
    if policy.keep_best_k:
        rules.append(_keep_best(rolling, policy.keep_best_k))
    return rules


def _pointed_to(entries: list[Entry], candidates: list[Entry]) -> Rule:
    """Sharded checkpoints: ``latest``/``latest_backup`` are symlinks to a rolling directory, which
    must outlive them (a file's hard link keeps its data by itself; a symlink does not)."""
    targets = {e.inode for e in entries if e.is_directory and e.kind in (Kind.LATEST, Kind.LATEST_BACKUP)}
    return "latest points here", [e for e in candidates if e.is_directory and e.inode in targets]


def _keep_last(ordered: list[Entry], count: int, label: str) -> Rule:
    """The newest ``count`` of ``ordered`` (already in step, then timestamp order)."""
    return f"last {count} {label}", ordered[max(0, len(ordered) - count) :] if count else []


def saved_time(entry: Entry) -> float:
    """When a file was saved, from names and stat only: the name's timestamp, else its mtime."""
    if entry.parsed.timestamp is not None:
        return entry.parsed.timestamp.timestamp()  # naive local time, as the manager names files
    return entry.mtime


def _keep_within(entries: list[Entry], candidates: list[Entry], window: timedelta) -> Rule:
    """Candidates saved within ``window`` of the newest checkpoint of any kind."""
    newest = max((saved_time(e) for e in entries if e.parsed.is_checkpoint), default=0.0)
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
