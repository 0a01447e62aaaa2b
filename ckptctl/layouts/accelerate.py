"""Hugging Face Accelerate: ``Accelerator.save_state(dir)`` writes one directory per checkpoint.

What accelerate 1.16 writes (``accelerate/checkpointing.py``: ``save_accelerator_state``,
``save_custom_state``; names from ``accelerate/utils/constants.py``)::

    checkpoint_dir/
        model.safetensors          model 0 (``pytorch_model.bin`` with safe_serialization=False);
                                   model i > 0: ``model_i.safetensors`` / ``pytorch_model_i.bin``
        optimizer.bin              optimizer 0; ``optimizer_i.bin`` for i > 0
        scheduler.bin              scheduler 0; ``scheduler_i.bin`` for i > 0 (a torch.save'd state dict)
        sampler.bin, dl_state_dict.bin, scaler.pt    only in some set-ups
        random_states_<rank>.pkl   one per process (a torch zip despite the name)
        custom_checkpoint_<i>.pkl  one per object registered with ``register_for_checkpointing``

With ``ProjectConfiguration(automatic_checkpoint_naming=True)`` the directories are
``project_dir/checkpoints/checkpoint_<N>``, where ``N`` counts the saves of *this process*: it is
not the training step, and it restarts at 0 when a resumed run builds a new Accelerator
(accelerate #3306), so ``checkpoint_0`` may be newer than ``checkpoint_5``. Without it, scripts name
the directories themselves (accelerate's examples: ``step_<N>``, ``epoch_<N>``; diffusers' scripts:
``checkpoint-<global_step>``, with the weights often written by a save hook, ``unet/...safetensors``).

Recognised: a directory whose sub-directories hold accelerate state files, or a project directory
whose ``checkpoints/`` does (its units are then named ``checkpoints/checkpoint_<N>``, so
``directory / unit.name`` is still the unit). A unit is one such sub-directory. Its step is, in this
order: a ``step``/``global_step``/``completed_steps`` key of the user state in
``custom_checkpoint_*.pkl``; the ``N`` of a ``step_<N>`` or ``checkpoint-<N>`` name; ``scheduler.bin``'s ``last_epoch`` as a
proxy (accelerate steps a prepared scheduler once per process per optimizer step unless
``split_batches``, so on several processes it runs ahead of the step). The ``checkpoint_<N>`` counter
is kept as the metric ``checkpoint_index`` and never used as the step; order is by step, then by
that counter. Complete: model weights (every index shard), optimizer, and every
``random_states_<rank>.pkl`` from 0 to the highest rank present; numbered files (``model_1``,
``optimizer_1``, ``custom_checkpoint_1``) need every lower number too. The optimizer and RNG files
are never read here, only their presence and size.
"""

from __future__ import annotations

import json
import os
import re
import stat as stat_module
from pathlib import Path
from typing import Any

from ..errors import CkptctlError
from ..formats.reader import read_checkpoint
from ..formats.safe_open import open_regular
from ..formats.safetensors import read_safetensors_header
from ..formats.values import jsonable
from .base import Layout, Pointer, Unit
from .deepspeed import MAX_ENTRIES, MAX_MISSING_SHOWN, cap_missing, inspect_tag, is_tag_directory, unit_files
from .metadata import as_float, as_int

CHECKPOINTS = "checkpoints"  # ProjectConfiguration's sub-directory for automatic naming
CHECKPOINT_N = re.compile(r"^checkpoint_(\d{1,18})$")
STEP_N = re.compile(r"^(?:step_|checkpoint-)(\d{1,18})$")  # ``checkpoint-<global_step>``: diffusers' scripts
EPOCH_N = re.compile(r"^epoch_(\d{1,18})$")
RESUME_FLAG = "--resume_from_checkpoint"  # accelerate's examples (complete_nlp_example.py); no standard flag

_IDX = r"(?:_(\d{1,6}))?"
SAFE_WEIGHTS = re.compile(rf"^model{_IDX}\.safetensors$")
BIN_WEIGHTS = re.compile(rf"^pytorch_model{_IDX}\.bin$")
OPTIMIZER = re.compile(rf"^optimizer{_IDX}\.bin$")
SCHEDULER = re.compile(rf"^scheduler{_IDX}\.bin$")
RANDOM_STATES = re.compile(r"^random_states_(\d{1,6})\.pkl$")
CUSTOM = re.compile(r"^custom_checkpoint_(\d{1,6})\.pkl$")
FSDP_WEIGHTS = re.compile(r"^pytorch_model_fsdp(?:_\d{1,6})?(?:_rank\d{1,6})?\.bin$")
FSDP_WEIGHTS_DIR = re.compile(r"^pytorch_model_fsdp_\d{1,6}$")  # a DCP directory
FSDP_OPTIMIZER_DIR = re.compile(r"^optimizer_\d{1,6}$")  # a DCP directory
DEEPSPEED_TAG = re.compile(r"^pytorch_model(?:_\d{1,6})?$")  # accelerate + DeepSpeed: an engine tag dir
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Files only accelerate's save_state writes (HF Trainer writes optimizer.pt, rng_state.pth).
MARKERS = (RANDOM_STATES, OPTIMIZER, SCHEDULER, CUSTOM)

STEP_KEYS = ("step", "global_step", "completed_steps", "overall_step")
MAX_STATE_BYTES = 16 * 1024 * 1024  # scheduler/custom state files read for metadata, at most
MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_SHARDS = 100_000
MAX_USER_KEYS = 64
RECOGNISE_PROBES = 64


def _entries(path: Path) -> list[os.DirEntry[str]]:
    found: list[os.DirEntry[str]] = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                found.append(entry)
                if len(found) >= MAX_ENTRIES:
                    break
    except OSError:
        return []
    return found


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def is_state_directory(path: Path) -> bool:
    """A directory holding files only accelerate's ``save_state`` writes (and no HF Trainer state)."""
    names = [e.name for e in _entries(path)]
    if "trainer_state.json" in names:
        return False
    return any(pattern.match(name) for name in names for pattern in MARKERS)


def _size(path: Path) -> int | None:
    """Size of a regular file (following symlinks), None when there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size if stat_module.S_ISREG(info.st_mode) else None


class AccelerateLayout(Layout):
    name = "accelerate"
    title = "Hugging Face Accelerate"
    resume_flag = RESUME_FLAG

    def recognise(self, directory: Path, names: list[str]) -> bool:
        if CHECKPOINTS in names and self._candidates(directory / CHECKPOINTS, RECOGNISE_PROBES):
            return True
        return bool(self._candidates(directory, RECOGNISE_PROBES, names))

    def _candidates(self, parent: Path, limit: int | None = None, names: list[str] | None = None) -> list[Path]:
        """Sub-directories of ``parent`` that are accelerate checkpoints (the first ``limit`` probed)."""
        if names is None:
            names = [e.name for e in _entries(parent)]
        ordered = sorted(names, key=lambda n: (not (CHECKPOINT_N.match(n) or STEP_N.match(n) or EPOCH_N.match(n)), n))
        if limit is not None:
            ordered = ordered[:limit]
        return [parent / n for n in ordered if _is_dir(parent / n) and is_state_directory(parent / n)]

    def units(self, directory: Path) -> list[Unit]:
        found = self._candidates(directory)
        prefix = ""
        if not found and _is_dir(directory / CHECKPOINTS):
            found = self._candidates(directory / CHECKPOINTS)
            prefix = f"{CHECKPOINTS}/"
        units = [self._unit(path, prefix + path.name) for path in found]
        units.sort(key=_order)
        return units

    def _unit(self, path: Path, name: str) -> Unit:
        unit = Unit(layout=self.name, name=name, path=path, is_directory=True)
        names = {e.name for e in _entries(path)}
        counter = CHECKPOINT_N.match(path.name)
        if counter:
            unit.metrics["checkpoint_index"] = float(counter.group(1))
        _check_complete(path, names, unit)
        user_step, user_epoch = _read_custom_states(path, names, unit)
        scheduler_step = _read_scheduler(path, names, unit)
        name_step = STEP_N.match(path.name)
        name_epoch = EPOCH_N.match(path.name)
        if user_step is not None:
            unit.step = user_step
            unit.notes.append("step from the user state in custom_checkpoint_*.pkl")
        elif name_step:
            unit.step = int(name_step.group(1))
        elif scheduler_step is not None:
            unit.step = scheduler_step
            unit.notes.append("step: scheduler.bin last_epoch (a proxy: the scheduler may step once per process)")
        if name_step and scheduler_step is not None and scheduler_step != unit.step:
            unit.notes.append(f"scheduler.bin last_epoch {scheduler_step} differs from the step {unit.step}")
        if user_epoch is not None:
            unit.epoch = user_epoch
        elif name_epoch:
            unit.epoch = float(name_epoch.group(1))
        unit.files = unit_files(path)
        return unit

    def protect(self, units: list[Unit], pointers: list[Pointer]) -> None:
        """Accelerate records no best and no pointer: keep the newest complete checkpoint, by step and
        then by the ``checkpoint_N`` counter (a run without a scheduler records no step at all)."""
        complete = [u for u in units if u.complete]
        if complete:
            newest = max(complete, key=_order)
            newest.protected = newest.protected or "protected: newest complete"

    def resume_args(self, unit: Unit, directory: Path) -> list[str]:
        """``--resume_from_checkpoint DIR``: the flag of accelerate's example scripts, which pass it to
        ``accelerator.load_state(DIR)``. Accelerate itself defines no command-line flag."""
        return [RESUME_FLAG, str(unit.path)]


def _order(unit: Unit) -> tuple:
    counter = unit.metrics.get("checkpoint_index")
    digits = re.findall(r"\d+", unit.name)
    return (
        unit.step if unit.step is not None else -1,
        counter if counter is not None else -1,
        int(digits[-1][:18]) if digits else -1,
        unit.name,
    )


def _indexed(names: set[str], pattern: re.Pattern[str]) -> dict[int, str]:
    """Numbered files of one kind: index 0 is the bare name (``optimizer.bin``), i > 0 ``optimizer_i.bin``."""
    found: dict[int, str] = {}
    for name in names:
        match = pattern.match(name)
        if match:
            found[int(match.group(1)) if match.group(1) is not None else 0] = name
    return found


def _gaps(found: dict[int, str], name_of) -> list[str]:
    """Names of the lower numbers absent below the highest one present (at most MAX_MISSING_SHOWN + 1 lines)."""
    if not found:
        return []
    top = max(found)
    absent = top - sum(1 for i in found if i < top)
    names = []
    for i in range(top):
        if len(names) >= MAX_MISSING_SHOWN:
            return names + [f"... and {absent - len(names)} more"]
        if i not in found:
            names.append(name_of(i))
    return names


def _check_complete(path: Path, names: set[str], unit: Unit) -> None:
    missing: list[str] = []
    safe = _indexed(names, SAFE_WEIGHTS)
    binary = _indexed(names, BIN_WEIGHTS)
    weights = {**binary, **safe}
    deepspeed = sorted(n for n in names if DEEPSPEED_TAG.match(n) and _is_dir(path / n) and is_tag_directory(path / n))
    fsdp = [n for n in names if FSDP_WEIGHTS.match(n) or (FSDP_WEIGHTS_DIR.match(n) and _is_dir(path / n))]
    indexes = [n for n in INDEXES if n in names]
    if not (weights or deepspeed or fsdp or indexes):
        hooked = _hook_weights(path, names)
        if hooked:
            unit.notes.append(f"model weights saved by a save_state hook: {hooked}")
        else:
            missing.append("model.safetensors")
    missing += _gaps(weights, lambda i: "model.safetensors" if i == 0 else f"model_{i}.safetensors")
    for name in sorted(safe.values()):
        missing += _check_safetensors(path / name, unit)
    for name in sorted(binary.values()) + fsdp:
        if _size(path / name) == 0:
            missing.append(f"{name} (empty)")
    for index in indexes:
        missing += _check_index(path, index, unit)
    for tag in deepspeed:  # the engine state holds the model and the optimizer
        state = inspect_tag(path / tag)
        missing += [f"{tag}/{m}" for m in state.missing]
    optimizers = _indexed(names, OPTIMIZER)
    fsdp_optim = [n for n in names if FSDP_OPTIMIZER_DIR.match(n) and _is_dir(path / n)]
    if not (optimizers or fsdp_optim or deepspeed):
        missing.append("optimizer.bin")
    missing += _gaps(optimizers, lambda i: "optimizer.bin" if i == 0 else f"optimizer_{i}.bin")
    ranks = _indexed(names, RANDOM_STATES)
    if not ranks:
        missing.append("random_states_0.pkl")
    missing += _gaps(ranks, lambda i: f"random_states_{i}.pkl")
    missing += _gaps(_indexed(names, SCHEDULER), lambda i: "scheduler.bin" if i == 0 else f"scheduler_{i}.bin")
    missing += _gaps(_indexed(names, CUSTOM), lambda i: f"custom_checkpoint_{i}.pkl")
    for pattern in (OPTIMIZER, RANDOM_STATES, SCHEDULER, CUSTOM):
        for name in sorted(_indexed(names, pattern).values()):
            if _size(path / name) == 0:
                missing.append(f"{name} (empty)")
    if missing:
        unit.complete = False
        unit.missing = cap_missing(missing)


def _hook_weights(path: Path, names: set[str]) -> str | None:
    """Weights a ``register_save_state_pre_hook`` wrote instead of accelerate's own model file (diffusers'
    scripts: ``unet/diffusion_pytorch_model.safetensors``, ``pytorch_lora_weights.safetensors``)."""
    for name in sorted(names):
        if name.endswith(".safetensors") and (_size(path / name) or 0) > 0:
            return name
    for name in sorted(names)[:RECOGNISE_PROBES]:
        if FSDP_OPTIMIZER_DIR.match(name) or not _is_dir(path / name):
            continue
        for entry in _entries(path / name)[:RECOGNISE_PROBES]:
            if entry.name.endswith((".safetensors", ".bin")) and "optim" not in entry.name and (_size(Path(entry.path)) or 0) > 0:
                return f"{name}/{entry.name}"
    return None


def _check_safetensors(path: Path, unit: Unit) -> list[str]:
    """The bounded header read: catches a truncated or garbled weights file without reading tensors."""
    try:
        read_safetensors_header(path)
    except (CkptctlError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        unit.notes.append(f"{path.name}: {reason}")
        return [f"{path.name} (unreadable: {reason})"]
    return []


def _check_index(path: Path, index: str, unit: Unit) -> list[str]:
    """Every shard a ``*.index.json`` names must be present (a bounded JSON read)."""
    size = _size(path / index)
    if size is None or size > MAX_INDEX_BYTES:
        unit.notes.append(f"{index}: not read (over {MAX_INDEX_BYTES} bytes)" if size else f"{index}: not a file")
        return [f"{index} (unreadable)"]
    try:
        with open_regular(path / index) as fh:
            data = json.loads(fh.read(MAX_INDEX_BYTES + 1))
    except (CkptctlError, OSError, ValueError, RecursionError) as exc:
        unit.notes.append(f"{index}: not JSON ({type(exc).__name__})")
        return [f"{index} (unreadable)"]
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        unit.notes.append(f"{index}: no weight_map")
        return [f"{index} (unreadable)"]
    shards = sorted({v for v in weight_map.values() if isinstance(v, str)})[:MAX_SHARDS]
    missing = []
    for shard in shards:
        if "/" in shard or shard in (".", ".."):
            missing.append(f"{index} (names a path outside the checkpoint)")
            break
        size = _size(path / shard)
        if size is None:
            missing.append(shard)
        elif shard.endswith(".safetensors"):
            missing += _check_safetensors(path / shard, unit)
        elif size == 0:
            missing.append(f"{shard} (empty)")
    return missing


def _read_small(path: Path, unit: Unit) -> Any:
    size = _size(path)
    if size is None or size == 0:
        return None
    if size > MAX_STATE_BYTES:
        unit.notes.append(f"{path.name}: not read for metadata (over {MAX_STATE_BYTES} bytes)")
        return None
    try:
        return read_checkpoint(path, spans=False).root
    except (CkptctlError, OSError) as exc:
        unit.notes.append(f"{path.name}: {getattr(exc, 'reason', None) or exc}")
        return None


def _read_scheduler(path: Path, names: set[str], unit: Unit) -> int | None:
    if "scheduler.bin" not in names:
        return None
    root = _read_small(path / "scheduler.bin", unit)
    if not isinstance(root, dict):
        return None
    last_epoch = as_int(root.get("last_epoch"))
    if last_epoch is not None:
        unit.metrics["scheduler_last_epoch"] = float(last_epoch)
    return last_epoch if last_epoch is not None and last_epoch >= 0 else None


def _read_custom_states(path: Path, names: set[str], unit: Unit) -> tuple[int | None, float | None]:
    """The user state of ``custom_checkpoint_<i>.pkl``: numbers into metrics (``custom_<i>.`` prefix
    for i > 0), other plain values into ``hparams``; a step/epoch key when one is there."""
    step: int | None = None
    epoch: float | None = None
    hparams: dict[str, Any] = {}
    for index, name in sorted(_indexed(names, CUSTOM).items()):
        root = _read_small(path / name, unit)
        if not isinstance(root, dict):
            continue
        prefix = "" if index == 0 else f"custom_{index}."
        shown: dict[str, Any] = {}
        for count, (key, value) in enumerate(root.items()):
            if count >= MAX_USER_KEYS:
                unit.notes.append(f"{name}: more than {MAX_USER_KEYS} keys, the rest not shown")
                break
            if not isinstance(key, str):
                continue
            if key in STEP_KEYS and step is None:
                number = as_int(value)
                step = number if number is not None and number >= 0 else None
            if key == "epoch" and epoch is None:
                epoch = as_float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                real = as_float(value)
                if real is not None and real - real == 0:  # finite
                    unit.metrics[prefix + key] = real
                    continue
            shown[key] = jsonable(value) if isinstance(value, (str, bool, type(None))) else f"<{type(value).__name__}>"
        if shown:
            hparams[name] = shown
    if hparams:
        unit.hparams = hparams
    return step, epoch
