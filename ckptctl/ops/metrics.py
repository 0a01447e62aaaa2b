"""Metric series of a run (``ckptctl chart``): every number its checkpoints record, by step.

One point per checkpoint from the listing (ckptctl's own ``train_loss``/``val_loss``; a layout's
``metrics``: HF ``loss``/``eval_loss``/``learning_rate``, Lightning ``val_loss`` or its monitored
score, ...). For a Hugging Face Trainer run the newest readable ``trainer_state.json`` holds the
whole ``log_history``: its curve (every logged step) is used, and the checkpoints' own points fill
in any metric it does not log. Nothing here prints; non-finite values (a diverged loss) are
counted, not plotted.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError
from ..layouts.catalog import STATUS_INCOMPLETE, STATUS_OK, STATUS_PARTIAL
from ..layouts.naming import GROUP_OF
from .listing import Listing, list_checkpoints

HF_LAYOUT = "hf-trainer"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_GROUPS = ("rolling", "epoch", "emergency", "checkpoint")
READ_STATUSES = (STATUS_OK, STATUS_PARTIAL, STATUS_INCOMPLETE)  # a unit missing its optimizer still logged its metrics
MAX_POINTS = 1_000_000  # points kept across all series of a log_history (bounded input, bounded memory)
NOT_METRICS = ("step", "epoch", "global_step")
SOURCE_CHECKPOINTS = "checkpoints"
SOURCE_LOG_HISTORY = "log_history"


@dataclass
class Chart:
    """The series of one directory: ``series[name]`` is ``[(step, value), ...]`` in step order."""

    directory: str
    layout: str | None
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    source: str = SOURCE_CHECKPOINTS  # or "log_history" (HF trainer_state.json of the newest checkpoint)
    source_path: str | None = None  # the trainer_state.json read, for log_history
    monitor: str | None = None
    skipped_non_finite: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return sorted(self.series)

    def default_names(self) -> list[str]:
        """What a chart shows without ``--metric``: the losses (and the monitored metric), else everything."""
        chosen = [n for n in self.names if "loss" in n.lower() and "runtime" not in n.lower()]
        if self.monitor and self.monitor in self.series and self.monitor not in chosen:
            chosen.append(self.monitor)
        return chosen or self.names

    def select(self, names: list[str] | None) -> dict[str, list[tuple[int, float]]]:
        """The series asked for (all of ``default_names`` when None); an unknown name is bad input."""
        if not names:
            return {n: self.series[n] for n in self.default_names()}
        unknown = [n for n in names if n not in self.series]
        if unknown:
            have = ", ".join(self.names) or "none"
            raise BadInputError(f"no metric {', '.join(unknown)} in {self.directory}; metrics here: {have}")
        return {n: self.series[n] for n in dict.fromkeys(names)}

    def to_json(self, names: list[str] | None = None) -> dict:
        return {
            "directory": self.directory,
            "layout": self.layout,
            "source": self.source,
            "source_path": self.source_path,
            "monitor": self.monitor,
            "metrics": {n: [[step, value] for step, value in points] for n, points in self.select(names).items()},
            "available": self.names,
            "skipped_non_finite": self.skipped_non_finite,
            "notes": list(self.notes),
        }


def metric_series(directory: str | os.PathLike[str]) -> Chart:
    """Read the listing of ``directory`` (and an HF run's ``log_history``) into series by step."""
    listing = list_checkpoints(directory, sort="step")
    chart = Chart(str(listing.directory), listing.layout, monitor=listing.monitor)
    points: dict[str, dict[int, float]] = {}
    for step, metrics in _checkpoint_points(listing):
        for name, value in metrics.items():
            _add(chart, points, name, step, value)
    if listing.layout == HF_LAYOUT:
        history = _newest_log_history(listing, chart)
        if history is not None:
            chart.source = SOURCE_LOG_HISTORY
            logged: dict[str, dict[int, float]] = {}
            for step, name, value in history:
                _add(chart, logged, name, step, value)
            points.update(logged)  # the full curve replaces the one-point-per-checkpoint series it logs
    chart.series = {name: sorted(by_step.items()) for name, by_step in points.items() if by_step}
    return chart


def _checkpoint_points(listing: Listing):
    for row in listing.rows:
        if row.step is None or row.status not in READ_STATUSES:
            continue
        if row.unit is None and GROUP_OF[row.kind] not in CHECKPOINT_GROUPS:
            continue  # pointers (latest, best) repeat a checkpoint's point
        yield row.step, row.metrics


def _add(chart: Chart, points: dict[str, dict[int, float]], name: str, step: int, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    try:
        number = float(value)
    except OverflowError:
        return
    if not math.isfinite(number):
        chart.skipped_non_finite += 1
        return
    points.setdefault(str(name), {})[step] = number


def _newest_log_history(listing: Listing, chart: Chart) -> list[tuple[int, str, float]] | None:
    """(step, name, value) of every numeric entry in the newest readable trainer_state.json."""
    from ..layouts.hf_trainer import JsonRefused, read_json

    units = sorted({id(r.unit): r.unit for r in listing.rows if r.unit is not None and r.unit.step is not None}.values(),
                   key=lambda u: u.step, reverse=True)  # fmt: skip
    for unit in units:
        path = Path(unit.path) / TRAINER_STATE
        try:
            document = read_json(path)
        except (OSError, JsonRefused, ValueError) as exc:
            chart.notes.append(f"{unit.name}/{TRAINER_STATE}: not read ({exc})")
            continue
        history = document.get("log_history") if isinstance(document, dict) else None
        if not isinstance(history, list):
            chart.notes.append(f"{unit.name}/{TRAINER_STATE}: no log_history list")
            continue
        chart.source_path = str(path)
        out: list[tuple[int, str, float]] = []
        for entry in history:
            if not isinstance(entry, dict):
                continue
            step = entry.get("step")
            if type(step) is not int or step < 0:
                continue
            for key, value in entry.items():
                if key in NOT_METRICS or not isinstance(key, str):
                    continue
                out.append((step, key, value))
                if len(out) >= MAX_POINTS:
                    chart.notes.append(f"{TRAINER_STATE}: more than {MAX_POINTS} logged values; the rest not read")
                    return out
        return out
    return None
