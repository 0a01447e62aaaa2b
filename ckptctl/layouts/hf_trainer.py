"""Hugging Face ``Trainer`` runs: an ``output_dir`` holding ``checkpoint-<N>/`` directories.

What transformers writes (``Trainer._save_checkpoint``, ``PREFIX_CHECKPOINT_DIR = "checkpoint"``):
one directory per save named ``checkpoint-{global_step}``, holding the model
(``model.safetensors``; ``pytorch_model.bin`` in 4.x with ``save_safetensors=False``; sharded as
``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``; ``adapter_model.*`` for
PEFT), ``optimizer.pt`` + ``scheduler.pt`` + ``rng_state*.pth`` unless ``save_only_model``,
``trainer_state.json`` (``global_step``, ``epoch``, ``log_history``, ``best_model_checkpoint``,
``best_metric``) and ``training_args.bin`` (a pickled ``TrainingArguments``). transformers
4.36-4.38 wrote each save to ``tmp-checkpoint-{N}`` first and renamed it at the end, so a
``tmp-checkpoint-N`` left behind is an interrupted save: listed, never complete.

Each unit reads ``trainer_state.json`` (bounded), the safetensors headers of its weight files and
the zip end record of its pickled ones, and ``training_args.bin`` through the safe reader; no
tensor bytes. See docs/layouts/hf-trainer.md.
"""

from __future__ import annotations

import json
import os
import re
import stat as stat_module
import sys
from pathlib import Path
from typing import Any, Iterator

from .base import CONTENT_OPTIMIZER, CONTENT_WEIGHTS, Layout, Unit, UnitFile, content_of, stat_file

CHECKPOINT_NAME = re.compile(r"(tmp-)?checkpoint-([0-9]{1,18})")  # fullmatch; HF's own regex is unanchored
TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.bin"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Weights that live elsewhere: DeepSpeed ZeRO-3 without gathering (global_stepN/), FSDP sharded state dicts.
WEIGHT_DIRS = re.compile(r"global_step[0-9]+|pytorch_model_fsdp_[0-9]+")
OPTIMIZER_DIRS = re.compile(r"global_step[0-9]+|optimizer_[0-9]+")

MAX_JSON_BYTES = 64 * 1024 * 1024  # trainer_state.json / index files past this are a note, not a read
MAX_JSON_CONTAINERS = 1_000_000  # objects + arrays: a 64 MiB file of "{}," would otherwise cost gigabytes
MAX_JSON_DIGITS = 40
MAX_RECOGNISE_PROBES = 64
MAX_FILES_PER_UNIT = 100_000
MAX_WALK_DEPTH = 4
MAX_HPARAMS = 500
MAX_MISSING_SHOWN = 50
MAX_MEMO_BYTES = 4 * 1024 * 1024  # training_args.bin files up to this are read once per listing
ZIP_MAGIC = b"PK\x03\x04"


class JsonRefused(ValueError):
    """A JSON file that is not read: too large, too many objects, not JSON, or numbers too long."""


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON document at ``path``, read with bounds. ``OSError`` if it cannot be opened,
    :class:`JsonRefused` (one line) for everything about its content."""
    from ..formats.safe_open import open_regular
    from ..errors import UnreadableCheckpoint

    try:
        fh = open_regular(path)
    except UnreadableCheckpoint as exc:
        raise JsonRefused(str(exc)) from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise JsonRefused(f"{size} bytes, over the {limit // (1024 * 1024)} MiB limit for JSON; not read")
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise JsonRefused(f"over the {limit // (1024 * 1024)} MiB limit for JSON; not read")
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_CONTAINERS:  # counts brackets in strings too: conservative
        raise JsonRefused(f"more than {MAX_JSON_CONTAINERS} JSON objects and arrays; not read")
    # Python's own limit on integer digits (4300 by default) already bounds int parsing, at C speed;
    # only when that limit is lifted does every integer go through a Python check.
    try:
        return json.loads(raw) if _int_digits_bounded() else json.loads(raw, parse_int=_bounded_int)
    except RecursionError:
        raise JsonRefused("nested too deeply; not read") from None
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"not JSON ({exc.msg} at char {exc.pos})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonRefused(f"not JSON ({str(exc)[:80]})") from None


def _int_digits_bounded() -> bool:
    limit = getattr(sys, "get_int_max_str_digits", None)
    return limit is not None and 0 < limit() <= 4300


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_JSON_DIGITS:
        raise ValueError(f"an integer of more than {MAX_JSON_DIGITS} digits")
    return int(digits)


def _number(value: Any) -> float | None:
    """A JSON number as a float (NaN and infinities kept: a diverged loss is worth seeing); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None


def _step_int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _basename(path: Any) -> str | None:
    """The last component of a path HF recorded (relative to where the script ran, maybe Windows-style)."""
    if not isinstance(path, str) or not path:
        return None
    parts = [p for p in re.split(r"[/\\]", path[-4096:]) if p]
    return parts[-1] if parts else None


class _State:
    """What one ``trainer_state.json`` says, validated field by field (bad types are dropped, noted)."""

    def __init__(self, document: Any):
        self.notes: list[str] = []
        if not isinstance(document, dict):
            self.notes.append(f"{TRAINER_STATE}: not a JSON object")
            document = {}
        self.global_step = _step_int(document.get("global_step"))
        if "global_step" in document and self.global_step is None:
            self.notes.append(f"{TRAINER_STATE}: global_step is not a step number")
        self.epoch = _number(document.get("epoch"))
        self.best_name = _basename(document.get("best_model_checkpoint"))
        self.best_step = _step_int(document.get("best_global_step"))
        self.best_metric = _number(document.get("best_metric"))
        history = document.get("log_history")
        if history is not None and not isinstance(history, list):
            self.notes.append(f"{TRAINER_STATE}: log_history is not a list")
            history = None
        self.history: list[dict[str, Any]] = [e for e in history or () if isinstance(e, dict)]

    def metrics_at(self, step: int) -> dict[str, float]:
        """Every number logged at ``step`` (train and eval entries), and the latest loss up to it.

        ``log_history`` is in step order, so the walk goes backwards and stops at the first loss
        logged before ``step``: a checkpoint's own file costs a few entries, not its whole history.
        """
        metrics: dict[str, float] = {}
        for entry in reversed(self.history):
            at = _step_int(entry.get("step"))
            if at is None or at > step:
                continue
            if at < step:
                if "loss" in metrics:
                    break
                loss = _number(entry.get("loss"))
                if loss is not None:
                    metrics["loss"] = loss
                    break
                continue
            for key, value in entry.items():
                number = _number(value)
                if number is not None and key not in ("step", "epoch") and key not in metrics:
                    metrics[key] = number
        return metrics


class HfTrainerLayout(Layout):
    name = "hf-trainer"
    title = "Hugging Face Trainer"
    resume_flag = "--resume_from_checkpoint"

    # ------------------------------------------------------------------------------ recognition

    def recognise(self, directory: Path, names: list[str]) -> bool:
        probes = 0
        for name in names:
            if not CHECKPOINT_NAME.fullmatch(name):
                continue
            probes += 1
            if probes > MAX_RECOGNISE_PROBES:
                return False
            path = directory / name
            try:
                if not stat_module.S_ISDIR(os.stat(path).st_mode):
                    continue
                inside = set(os.listdir(path))
            except OSError:
                continue
            if TRAINER_STATE in inside or inside.intersection(WEIGHT_FILES) or inside.intersection(INDEX_FILES):
                return True
        return False

    # ------------------------------------------------------------------------------------ units

    def units(self, directory: Path) -> list[Unit]:
        found: list[tuple[int, str, bool]] = []  # (N, name, is tmp)
        with os.scandir(directory) as entries:
            for entry in entries:
                match = CHECKPOINT_NAME.fullmatch(entry.name)
                if match and entry.is_dir(follow_symlinks=True):
                    found.append((int(match.group(2)), entry.name, bool(match.group(1))))
        found.sort()
        units: list[Unit] = []
        states: dict[str, _State] = {}
        memo: dict[bytes, tuple[Any, list[str]]] = {}
        for number, name, staging in found:
            unit, state = self._unit(directory / name, name, number, staging, memo)
            units.append(unit)
            if state is not None:
                states[name] = state
        self._fill_from_newest(units, states)
        self._require_optimizer(units)
        self._mark_best(units, states)
        self._set_monitor(units)
        return units

    def _unit(self, path: Path, name: str, number: int, staging: bool,
              memo: dict[bytes, tuple[Any, list[str]]]) -> tuple[Unit, _State | None]:
        unit = Unit(self.name, name, path, True, step=number)
        names = _names(path, unit)
        unit.files = list(_files(path, unit))
        state = self._read_state(path, names, unit)
        if state is not None:
            if state.global_step is not None:
                if state.global_step != number:
                    unit.notes.append(f"{TRAINER_STATE}: global_step {state.global_step} but the directory says {number}")
                unit.step = state.global_step
            unit.epoch = state.epoch
            unit.metrics = state.metrics_at(unit.step if unit.step is not None else number)
        self._check_weights(path, names, unit)
        for state_file in (OPTIMIZER, SCHEDULER):  # when present, its zip end record must be there too
            problem = _container_problem(path / state_file) if state_file in names else None
            if problem:
                _damaged(unit, state_file, problem)
        unit.hparams = _hparams(path, names, unit, memo)
        if staging:
            unit.complete = False
            unit.missing.append(f"checkpoint-{number} (the save never renamed tmp-checkpoint-{number})")
            unit.notes.append(f"an interrupted save: transformers writes tmp-checkpoint-{number} and renames it when done")
        return unit, state

    def _read_state(self, path: Path, names: set[str], unit: Unit) -> _State | None:
        if TRAINER_STATE not in names:
            unit.complete = False
            unit.missing.append(TRAINER_STATE)
            return None
        try:
            state = _State(read_json(path / TRAINER_STATE))
        except (OSError, JsonRefused) as exc:
            unit.complete = False
            unit.missing.append(TRAINER_STATE)
            unit.notes.append(f"{TRAINER_STATE}: {_reason(exc)}")
            return None
        unit.notes.extend(state.notes)
        return state

    def _check_weights(self, path: Path, names: set[str], unit: Unit) -> None:
        """Weights present and their containers intact (a safetensors header, a zip end record)."""
        singles = [n for n in WEIGHT_FILES if n in names]
        indexes = [n for n in INDEX_FILES if n in names]
        elsewhere = [n for n in names if WEIGHT_DIRS.fullmatch(n) and (path / n).is_dir()]
        if not singles and not indexes and not elsewhere:
            unit.complete = False
            unit.missing.append("model.safetensors")
            return
        for single in singles:
            problem = _container_problem(path / single)
            if problem:
                _damaged(unit, single, problem)
        for index in indexes:
            try:
                document = read_json(path / index)
            except (OSError, JsonRefused) as exc:
                _damaged(unit, index, _reason(exc))
                continue
            weight_map = document.get("weight_map") if isinstance(document, dict) else None
            if not isinstance(weight_map, dict):
                _damaged(unit, index, "no weight_map")
                continue
            shards = sorted({v for v in weight_map.values() if isinstance(v, str)})
            absent = [s for s in shards if s not in names or "/" in s or "\\" in s]
            if absent:
                unit.complete = False
                unit.missing.extend(absent[:MAX_MISSING_SHOWN])
                if len(absent) > MAX_MISSING_SHOWN:
                    unit.missing.append(f"... and {len(absent) - MAX_MISSING_SHOWN} more shards of {index}")
            skip = set(absent)
            for shard in shards:
                if shard in skip:
                    continue
                problem = _container_problem(path / shard)
                if problem:
                    _damaged(unit, shard, problem)

    # ------------------------------------------------------------------------------- the run

    def _fill_from_newest(self, units: list[Unit], states: dict[str, _State]) -> None:
        """A checkpoint whose own trainer_state.json is unreadable still gets the metrics a newer one logged."""
        newest = _newest_state(units, states)
        if newest is None:
            return
        for unit in units:
            if unit.name not in states and unit.step is not None:
                unit.metrics = newest.metrics_at(unit.step)

    def _require_optimizer(self, units: list[Unit]) -> None:
        """``save_only_model`` runs have no optimizer.pt anywhere; otherwise every checkpoint needs it
        and scheduler.pt (HF loads the optimizer only when both files are there, silently otherwise)."""
        file_names = [{f.path.name for f in u.files if f.path.parent == u.path} for u in units]
        needed = [n for n in (OPTIMIZER, SCHEDULER) if any(n in names for names in file_names)]
        for unit, names in zip(units, file_names):
            if any(OPTIMIZER_DIRS.fullmatch(n) for n in _subdirs(unit)):
                continue  # DeepSpeed / FSDP keep the optimizer in a sub-directory
            for needed_name in needed:
                if needed_name not in names and needed_name not in unit.missing:
                    unit.complete = False
                    unit.missing.append(needed_name)

    def _mark_best(self, units: list[Unit], states: dict[str, _State]) -> None:
        newest = _newest_state(units, states)
        if newest is None:
            return
        best_name = newest.best_name
        if best_name is None and newest.best_step is not None:
            best_name = f"checkpoint-{newest.best_step}"
        for unit in units:
            if unit.name == best_name:
                unit.best = True
                if newest.best_metric is not None:
                    unit.metrics.setdefault("best_metric", newest.best_metric)

    def _set_monitor(self, units: list[Unit]) -> None:
        monitor = None
        for unit in reversed(units):
            wanted = (unit.hparams or {}).get("metric_for_best_model")
            if isinstance(wanted, str) and wanted:
                monitor = wanted if wanted.startswith("eval_") else f"eval_{wanted}"
                break
        if monitor is None and any("eval_loss" in u.metrics for u in units):
            monitor = "eval_loss"
        for unit in units:
            unit.monitor = monitor
            best_metric = unit.metrics.get("best_metric")
            if monitor and unit.best and best_metric is not None and monitor not in unit.metrics:
                unit.metrics[monitor] = best_metric

    def resume_args(self, unit: Unit, directory: Path) -> list[str]:
        return ["--resume_from_checkpoint", str(unit.path)]


# ----------------------------------------------------------------------------------- helpers


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    return str(exc)


def _damaged(unit: Unit, name: str, problem: str) -> None:
    unit.complete = False
    unit.missing.append(name)
    unit.notes.append(f"{name}: {problem}")


def _names(path: Path, unit: Unit) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError as exc:
        unit.complete = False
        unit.notes.append(f"cannot list: {exc.strerror or exc}")
        return set()


def _subdirs(unit: Unit) -> set[str]:
    """Names of the unit's direct sub-directories that hold files."""
    return {f.path.relative_to(unit.path).parts[0] for f in unit.files if f.path.parent != unit.path}


def _files(root: Path, unit: Unit) -> Iterator[UnitFile]:
    """Every file under the checkpoint directory (symlinked directories are not entered), bounded."""
    stack: list[tuple[Path, int]] = [(root, 0)]
    count = 0
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError:
            continue
        for entry in listed:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                if depth + 1 < MAX_WALK_DEPTH:
                    stack.append((Path(entry.path), depth + 1))
                continue
            count += 1
            if count > MAX_FILES_PER_UNIT:
                unit.notes.append(f"more than {MAX_FILES_PER_UNIT} files; the rest are not counted")
                return
            yield stat_file(Path(entry.path), _content(entry.name))


def _content(name: str) -> str:
    if name in WEIGHT_FILES or name.endswith(".safetensors"):
        return CONTENT_WEIGHTS
    if name == OPTIMIZER:
        return CONTENT_OPTIMIZER
    return content_of(name)


def _container_problem(path: Path) -> str | None:
    """Why a weight file is not intact, from its first and last bytes only (no tensor bytes)."""
    from ..errors import CheckpointError

    if path.name.endswith(".safetensors"):
        from ..formats.safetensors import read_safetensors_header

        try:
            read_safetensors_header(path)
        except CheckpointError as exc:
            return str(exc)
        except OSError as exc:
            return _reason(exc)
        return None
    from ..formats.container import end_record_problems
    from ..formats.safe_open import open_regular

    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return "truncated: empty file"
            head = fh.read(4)
            if head != ZIP_MAGIC:
                return None  # the legacy (pre-1.6) format: validate reads it
            problems = end_record_problems(fh, size)
    except CheckpointError as exc:
        return str(exc)
    except OSError as exc:
        return _reason(exc)
    missing = [p for p in problems if "missing" in p]
    return f"truncated: {missing[0]}" if missing else None


def _newest_state(units: list[Unit], states: dict[str, _State]) -> _State | None:
    """The trainer_state.json of the newest checkpoint that has a readable one (it has the full history)."""
    for unit in reversed(units):
        if unit.name in states:
            return states[unit.name]
    return None


def _hparams(path: Path, names: set[str], unit: Unit, memo: dict[bytes, tuple[Any, list[str]]]) -> dict[str, Any] | None:
    """The fields of ``training_args.bin`` when the safe reader returns them as an inert record.

    Every checkpoint of a run normally holds the same bytes: those are read once per listing
    (``memo``, keyed by the file's bytes, so a changed file is always read).
    """
    if TRAINING_ARGS not in names:
        return None
    from ..errors import CheckpointError
    from ..formats.safe_open import open_regular

    key = None
    try:
        with open_regular(path / TRAINING_ARGS) as fh:
            if os.fstat(fh.fileno()).st_size <= MAX_MEMO_BYTES:
                key = fh.read(MAX_MEMO_BYTES + 1)
    except (OSError, CheckpointError):  # unreadable: the reader below says why
        key = None
    if key is not None and key in memo:
        fields, notes = memo[key]
        unit.notes.extend(notes)
        return dict(fields) if fields is not None else None
    notes: list[str] = []
    fields = _read_hparams(path / TRAINING_ARGS, notes)
    unit.notes.extend(notes)
    if key is not None:
        memo[key] = (fields, notes)
    return dict(fields) if fields is not None else None


def _read_hparams(path: Path, notes: list[str]) -> dict[str, Any] | None:
    from ..errors import CheckpointError
    from ..formats.reader import read_checkpoint

    try:
        root = read_checkpoint(path, spans=False).root
    except CheckpointError as exc:
        reason = str(exc) if len(str(exc)) <= 160 else str(exc)[:160] + "…"
        notes.append(f"{TRAINING_ARGS}: {exc.status}: {reason}; hyperparameters not shown")
        return None
    except OSError as exc:
        notes.append(f"{TRAINING_ARGS}: {_reason(exc)}")
        return None
    fields = record_fields(root)
    if fields is None:
        notes.append(f"{TRAINING_ARGS}: not a record of fields")
    return fields


def record_fields(root: Any) -> dict[str, Any] | None:
    """The fields of an inert record (a dict, an ``attrs``/``fields``/``state`` dict, or ``__dict__``),
    as plain values: numbers, strings, bools and None as they are, anything else as bounded text."""
    from ..formats.bounded import bounded_str

    candidates: list[Any] = [root]
    for attribute in ("attrs", "fields", "state"):
        try:
            candidates.append(getattr(root, attribute, None))
        except Exception:  # an inert record may refuse unknown attributes in its own way
            pass
    try:
        candidates.append(vars(root))
    except TypeError:
        pass
    for candidate in candidates:
        if isinstance(candidate, dict) and candidate and all(type(k) is str for k in candidate):
            fields: dict[str, Any] = {}
            for key in sorted(candidate)[:MAX_HPARAMS]:
                if key.startswith("_"):
                    continue
                value = candidate[key]
                if value is None or type(value) in (bool, int, float):
                    fields[key] = value
                elif type(value) is str:
                    fields[key] = value[:1000]
                else:
                    fields[key] = bounded_str(value, 200)
            return fields
    return None
