"""The checkpoint filename grammar: the one place that knows what a name means.

Every other module asks this one what a file is (``parse``) or what a file should be
called (``format_name``). The grammar is a table of patterns (``PATTERNS``) so that
other layouts can be added later without touching the commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum


class Kind(str, Enum):
    """What role a file plays in the layout. The values are the stable ``--json`` strings."""

    LATEST = "latest"
    LATEST_BACKUP = "latest_backup"
    ROLLING = "rolling"
    ROLLING_BACKUP = "rolling_backup"
    EMERGENCY = "emergency"
    BEST = "best"
    BEST_BACKUP = "best_backup"
    BEST_PREVIOUS = "best_previous"
    EPOCH = "epoch"
    CHECKPOINT = "checkpoint"  # a checkpoint of another framework's layout (ckptctl.layouts.registry)
    REPLACED = "replaced"  # ``<name>.replaced-<YYYYmmdd_HHMMSS>``: what ``restore`` kept of a file it replaced
    PARTIAL = "partial"
    OTHER = "other"


# Groups as a person thinks of them; used for ordering and for per-kind reports.
GROUP_OF: dict[Kind, str] = {
    Kind.LATEST: "latest",
    Kind.LATEST_BACKUP: "latest",
    Kind.BEST: "best",
    Kind.BEST_BACKUP: "best",
    Kind.BEST_PREVIOUS: "best",
    Kind.ROLLING: "rolling",
    Kind.ROLLING_BACKUP: "rolling",
    Kind.EMERGENCY: "emergency",
    Kind.EPOCH: "epoch",
    Kind.CHECKPOINT: "checkpoint",
    Kind.REPLACED: "replaced",
    Kind.PARTIAL: "partial",
    Kind.OTHER: "other",
}

# Stable listing order of kinds (the order of the original "AVAILABLE CHECKPOINTS" report).
KIND_ORDER: tuple[Kind, ...] = (
    Kind.LATEST,
    Kind.LATEST_BACKUP,
    Kind.BEST,
    Kind.BEST_BACKUP,
    Kind.BEST_PREVIOUS,
    Kind.ROLLING,
    Kind.ROLLING_BACKUP,
    Kind.EMERGENCY,
    Kind.EPOCH,
    Kind.CHECKPOINT,
    Kind.REPLACED,
    Kind.PARTIAL,
    Kind.OTHER,
)

_KIND_RANK = {kind: rank for rank, kind in enumerate(KIND_ORDER)}

STEP_DIGITS = 6
EPOCH_DIGITS = 5
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
TMP_SUFFIX = ".tmp"
REPLACED_MARK = ".replaced-"
# ``restore`` keeps a replaced file (or link, or DCP directory) as ``<name>.replaced-<stamp>[-<n>]``:
# a record, not a checkpoint. The stamp is the local time of the replacement (like emergency names).
REPLACED = re.compile(r"(?P<orig>.+)\.replaced-(?P<ts>\d{8}_\d{6})(?:-\d+)?")


@dataclass(frozen=True)
class ParsedName:
    """What a file name says about a checkpoint (nothing here comes from the file's content)."""

    name: str
    kind: Kind
    step: int | None = None
    epoch: int | None = None
    timestamp: datetime | None = None

    @property
    def is_checkpoint(self) -> bool:
        """True for names of the layout; partial writes, restore's kept records and foreign files are not."""
        return self.kind not in (Kind.PARTIAL, Kind.REPLACED, Kind.OTHER)


@dataclass(frozen=True)
class Pattern:
    """One row of the grammar: a regex over the full name and the kind it denotes."""

    kind: Kind
    regex: re.Pattern[str]


PATTERNS: tuple[Pattern, ...] = (
    Pattern(Kind.LATEST, re.compile(r"latest\.pt")),
    Pattern(Kind.LATEST_BACKUP, re.compile(r"latest_backup\.pt")),
    Pattern(Kind.ROLLING_BACKUP, re.compile(r"rolling_last_backup\.pt")),
    Pattern(Kind.ROLLING, re.compile(r"rolling_step_(?P<step>\d{6,})\.pt")),
    Pattern(
        Kind.EMERGENCY,
        re.compile(r"emergency_step_(?P<step>\d{6,})_(?P<ts>\d{8}_\d{6})\.pt"),
    ),
    Pattern(Kind.BEST, re.compile(r"best_model\.pt")),
    Pattern(Kind.BEST_BACKUP, re.compile(r"best_model_backup\.pt")),
    Pattern(Kind.BEST_PREVIOUS, re.compile(r"best_model_previous\.pt")),
    Pattern(Kind.EPOCH, re.compile(r"epoch_(?P<epoch>\d{5,})\.pt")),
)

# Sharded (DCP) checkpoints are directories with the same names minus the ``.pt`` suffix
# (``rolling_step_000500/``, ``latest`` -> a symlink to one of them): derived from the table
# above so the grammar stays in one place.
DIR_PATTERNS: tuple[Pattern, ...] = tuple(
    Pattern(p.kind, re.compile(p.regex.pattern.removesuffix(r"\.pt"))) for p in PATTERNS
)
FILE_SUFFIX = ".pt"

FIXED_NAMES: dict[Kind, str] = {
    Kind.LATEST: "latest.pt",
    Kind.LATEST_BACKUP: "latest_backup.pt",
    Kind.ROLLING_BACKUP: "rolling_last_backup.pt",
    Kind.BEST: "best_model.pt",
    Kind.BEST_BACKUP: "best_model_backup.pt",
    Kind.BEST_PREVIOUS: "best_model_previous.pt",
}


def parse(name: str, *, directory: bool = False) -> ParsedName:
    """Classify a bare file name (or, with ``directory``, a DCP directory name). Never raises:
    unknown names are ``Kind.OTHER``; ``restore``'s ``<name>.replaced-<stamp>`` records are
    ``Kind.REPLACED`` (file, link or directory alike), with the stamp as ``timestamp``."""
    if name.endswith(TMP_SUFFIX):
        return ParsedName(name, Kind.PARTIAL)
    replaced = REPLACED.fullmatch(name)
    if replaced is not None:
        stamp = _parse_timestamp(replaced["ts"])
        return ParsedName(name, Kind.REPLACED, timestamp=stamp) if stamp else ParsedName(name, Kind.OTHER)
    for pattern in DIR_PATTERNS if directory else PATTERNS:
        match = pattern.regex.fullmatch(name)
        if match is None:
            continue
        groups = match.groupdict()
        timestamp = _parse_timestamp(groups["ts"]) if groups.get("ts") else None
        if groups.get("ts") and timestamp is None:
            return ParsedName(name, Kind.OTHER)
        return ParsedName(
            name,
            pattern.kind,
            step=int(groups["step"]) if groups.get("step") else None,
            epoch=int(groups["epoch"]) if groups.get("epoch") else None,
            timestamp=timestamp,
        )
    return ParsedName(name, Kind.OTHER)


def _parse_timestamp(text: str) -> datetime | None:
    """``YYYYMMDD_HHMMSS`` (already matched as digits by the pattern); None for an impossible date.

    Sliced by hand: ``strptime`` costs ~20 us a name, which shows on 10,000-file directories.
    """
    try:
        return datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]), int(text[11:13]), int(text[13:15]))
    except ValueError:
        return None


def format_name(
    kind: Kind,
    *,
    step: int | None = None,
    epoch: int | None = None,
    timestamp: datetime | None = None,
    directory: bool = False,
) -> str:
    """The file name for a checkpoint of ``kind``; the inverse of :func:`parse`.

    ``directory=True`` gives the name of a sharded (DCP) checkpoint directory: no ``.pt``.
    """
    name = _file_name(kind, step=step, epoch=epoch, timestamp=timestamp)
    return name.removesuffix(FILE_SUFFIX) if directory else name


def _file_name(kind: Kind, *, step: int | None, epoch: int | None, timestamp: datetime | None) -> str:
    if kind in FIXED_NAMES:
        return FIXED_NAMES[kind]
    if kind is Kind.ROLLING:
        return f"rolling_step_{_require(step, 'step'):0{STEP_DIGITS}d}.pt"
    if kind is Kind.EMERGENCY:
        ts = _require(timestamp, "timestamp").strftime(TIMESTAMP_FORMAT)
        return f"emergency_step_{_require(step, 'step'):0{STEP_DIGITS}d}_{ts}.pt"
    if kind is Kind.EPOCH:
        return f"epoch_{_require(epoch, 'epoch'):0{EPOCH_DIGITS}d}.pt"
    raise ValueError(f"kind {kind.value!r} has no file name")


def _require(value, what: str):
    if value is None:
        raise ValueError(f"a {what} is required for this kind of checkpoint")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")
    return value


def sort_key(parsed: ParsedName) -> tuple:
    """Stable order: by kind, then step (or epoch), then timestamp, then name. Never mtime."""
    return (
        _KIND_RANK[parsed.kind],
        parsed.step if parsed.step is not None else -1,
        parsed.epoch if parsed.epoch is not None else -1,
        parsed.timestamp or datetime.min,
        parsed.name,
    )
