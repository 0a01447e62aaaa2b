"""Retention: the one policy module used by CheckpointManager's cleanup and by ``ckptctl prune``.

A plan is computed from names (and, for ``keep_best_k``, metadata) only; nothing is deleted here.
Protected kinds (latest*, best*, epoch*, rolling_last_backup) are never removed; only rolling and
emergency checkpoints are candidates, each kind with its own "keep last N", ordered by step then
timestamp from the name, never by mtime. Extra keep rules are OR'ed (restic ``forget`` style).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from .catalog import Entry
from .naming import Kind, sort_key

PROTECTED_REASON = {
    Kind.LATEST: "protected: latest",
    Kind.LATEST_BACKUP: "protected: latest",
    Kind.BEST: "protected: best",
    Kind.BEST_BACKUP: "protected: best",
    Kind.BEST_PREVIOUS: "protected: best",
    Kind.EPOCH: "protected: epoch (kept forever)",
    Kind.ROLLING_BACKUP: "protected: rolling_last_backup",
}


@dataclass(frozen=True)
class Policy:
    """What to keep. Counts must be >= 0; extra rules are OR'ed with the "keep last N" rules."""

    keep_rolling: int = 10
    keep_emergency: int = 10
    keep_every: int | None = None  # keep rolling checkpoints whose step is a multiple of this
    keep_within: timedelta | None = None  # keep rolling/emergency this close to the newest checkpoint
    keep_best_k: int = 0  # keep the K rolling checkpoints with the lowest val_loss

    def __post_init__(self) -> None:
        for name in ("keep_rolling", "keep_emergency", "keep_best_k"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_every is not None and self.keep_every <= 0:
            raise ValueError(f"keep_every must be > 0, got {self.keep_every}")


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
    ignored: list[Entry]  # names the grammar does not recognise: never removed

    @property
    def freed_bytes(self) -> int:
        return sum(d.entry.size_bytes for d in self.remove if d.entry.nlink <= 1)


def plan_retention(entries: list[Entry], policy: Policy) -> RetentionPlan:
    """Decide, for every entry, keep (with reasons) or remove. Pure: touches no file."""
    keep: list[Decision] = []
    remove: list[Decision] = []
    ignored: list[Entry] = []
    by_kind: dict[Kind, list[Entry]] = {Kind.ROLLING: [], Kind.EMERGENCY: []}
    for entry in entries:
        if entry.kind in PROTECTED_REASON:
            keep.append(Decision(entry, [PROTECTED_REASON[entry.kind]]))
        elif entry.kind in by_kind:
            by_kind[entry.kind].append(entry)
        else:
            ignored.append(entry)
    for kind, count, label in (
        (Kind.ROLLING, policy.keep_rolling, "rolling"),
        (Kind.EMERGENCY, policy.keep_emergency, "emergency"),
    ):
        ordered = sorted(by_kind[kind], key=lambda e: sort_key(e.parsed))
        newest = set(id(e) for e in ordered[max(0, len(ordered) - count) :]) if count else set()
        for entry in ordered:
            decision = Decision(entry)
            if id(entry) in newest:
                decision.reasons.append(f"last {count} {label}")
            (keep if decision.keep else remove).append(decision)
    return RetentionPlan(keep, remove, ignored)
