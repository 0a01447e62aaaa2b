"""DeepSpeed: ``engine.save_checkpoint(save_dir, tag)`` writes one directory per tag and a ``latest`` file.

What DeepSpeed 0.19 writes (``deepspeed/runtime/engine.py``: ``save_checkpoint``, ``_get_ckpt_name``,
``_get_zero_ckpt_name``, ``_get_rank_zero_ckpt_name``)::

    save_dir/
        latest                                   the tag text, no newline (``global_step10``)
        global_step10/                           the tag, ``global_step{N}`` unless the script gave one
            mp_rank_00_model_states.pt           one per model-parallel rank (ZeRO-3: one per
                                                 data-parallel rank too, ``zero_pp_rank_{dp}_mp_rank_{mp}_...``)
            zero_pp_rank_0_mp_rank_00_optim_states.pt   ZeRO: one per data-parallel x model-parallel rank
                                                 (``bf16_`` prefix for the bf16 optimizer)
        zero_to_fp32.py                          copied next to the tags: "other" content, not a checkpoint

A unit is one tag directory (any directory holding ``*mp_rank_XX_model_states.pt``). Its step is
``global_steps`` from the model-states file (read through the safe reader: the pickle only, no
tensor bytes), else the ``N`` of a ``global_stepN`` name; the client state DeepSpeed merges into that
file (``epoch``, ``my_step``, ...) goes into ``metrics``/``hparams``, ``ds_config`` into ``hparams``.
The ZeRO optimizer files are never read here (they pickle DeepSpeed classes): only their presence and
size count. A unit is complete when every model-parallel rank's model-states file is present and, when
the optimizer state lives in ZeRO files, every ``*_optim_states.pt`` for the recorded
``dp_world_size`` x ``mp_world_size``.

``latest`` is a pointer: ``engine.load_checkpoint(dir)`` without a tag loads the tag it names, and
without the file loads nothing at all (it only logs a warning). It is dangling when the tag directory is
missing, damaged when that checkpoint is incomplete or the file is not a tag, stale when a newer complete
tag exists. It is a ``tag_file`` pointer: ``restore`` (:mod:`ckptctl.ops.restore`) heals it by rewriting
the file atomically, a dangling symlink in its place included.
"""

from __future__ import annotations

import os
import re
import stat as stat_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CkptctlError
from ..formats.reader import read_checkpoint
from ..formats.safe_open import open_regular
from ..formats.values import jsonable
from .base import (
    POINTER_DAMAGED,
    POINTER_DANGLING,
    POINTER_OK,
    POINTER_STALE,
    Layout,
    Pointer,
    Unit,
    UnitFile,
    content_of,
    stat_file,
)
from .metadata import as_float, as_int

LATEST = "latest"
MAX_LATEST_BYTES = 4096  # a tag is a short name; anything longer is not a tag file
MAX_RANK_FILES = 65536  # expected (dp x mp) file names enumerated per tag, at most
MAX_ENTRIES = 100_000  # entries listed per directory, at most (a hostile tree cannot make us walk forever)
MAX_CLIENT_KEYS = 64
MAX_MISSING_SHOWN = 32  # names listed in ``Unit.missing``, at most
RECOGNISE_PROBES = 64  # sub-directories looked into by recognise(), at most

_RANK = r"(\d{1,6})"
MODEL_STATES = re.compile(rf"^(?:(bf16_)?zero_pp_rank_{_RANK}_)?mp_rank_{_RANK}_model_states\.pt$")
OPTIM_STATES = re.compile(rf"^(bf16_)?zero_pp_rank_{_RANK}_mp_rank_{_RANK}_?optim_states\.pt$")
GLOBAL_STEP = re.compile(r"^global_step(\d{1,18})$")

# Keys DeepSpeed itself writes into the model-states file; every other top-level key is client state.
ENGINE_KEYS = frozenset({
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
    "frozen_param_fragments", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names",
    "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config",
    "ds_version", "checkpoint_parallel_dimensions", "universal_checkpoint_info",
})  # fmt: skip


@dataclass
class TagState:
    """What one tag directory holds, from names, ``stat`` and the model-states pickle."""

    complete: bool = True
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    step: int | None = None
    epoch: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)


def _listdir(path: Path) -> list[os.DirEntry[str]]:
    entries: list[os.DirEntry[str]] = []
    with os.scandir(path) as it:
        for entry in it:
            entries.append(entry)
            if len(entries) >= MAX_ENTRIES:
                break
    return entries


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _nonempty_file(path: Path) -> bool | None:
    """True for a regular file with bytes, False for an empty one, None when there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat_module.S_ISREG(info.st_mode):
        return None
    return info.st_size > 0


def is_tag_directory(path: Path) -> bool:
    """A directory holding a DeepSpeed model-states file (``mp_rank_00_model_states.pt``)."""
    try:
        with os.scandir(path) as it:
            for count, entry in enumerate(it):
                if MODEL_STATES.match(entry.name):
                    return True
                if count >= MAX_ENTRIES:
                    return False
    except OSError:
        return False
    return False


def unit_files(path: Path) -> list[UnitFile]:
    """Every file below ``path`` (symlinks not followed into directories), at most MAX_ENTRIES.

    The content is guessed from the path below the unit, so the files of an ``optimizer_0/`` DCP
    directory (accelerate + FSDP) are optimizer state although each is named ``__0_0.distcp``.
    """
    files: list[UnitFile] = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        below = os.path.relpath(root, path)
        for name in sorted(names):
            files.append(stat_file(Path(root) / name, content_of(name if below == "." else f"{below}/{name}")))
            if len(files) >= MAX_ENTRIES:
                return files
    return files


def _rank_name(prefix: str, dp: int | None, mp: int, kind: str) -> str:
    zero = f"{prefix}zero_pp_rank_{dp}_" if dp is not None else ""
    return f"{zero}mp_rank_{mp:02d}_{kind}.pt"


def inspect_tag(path: Path) -> TagState:
    """Completeness and metadata of one tag directory (see the module docstring). Never raises for damage."""
    state = TagState()
    names = {e.name for e in _listdir(path)}
    model_files = sorted((n for n in names if MODEL_STATES.match(n)), key=_rank_order)
    optim_files = sorted(n for n in names if OPTIM_STATES.match(n))
    if not model_files:
        state.complete = False
        state.missing.append("mp_rank_00_model_states.pt")
        return state
    main = model_files[0]
    root = _read_model_states(path / main, state)
    record = root if isinstance(root, dict) else {}
    if isinstance(root, dict):
        _fill_metadata(record, state)
    for name in model_files[1:]:  # the first was read: an empty one is unreadable already
        if _nonempty_file(path / name) is False:
            state.complete = False
            state.missing.append(f"{name} (empty)")
    _check_ranks(record, model_files, optim_files, names, path, state)
    return state


def _rank_order(name: str) -> tuple[int, int, str]:
    match = MODEL_STATES.match(name)
    assert match is not None
    dp = int(match.group(2)) if match.group(2) is not None else -1
    return (int(match.group(3)), dp, name)


def _read_model_states(path: Path, state: TagState) -> Any:
    try:
        return read_checkpoint(path, spans=False).root
    except (CkptctlError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        state.complete = False
        state.missing.append(f"{path.name} ({getattr(exc, 'status', 'unreadable')}: {reason})")
        state.notes.append(f"{path.name}: {reason}")
        return None


def _fill_metadata(record: dict, state: TagState) -> None:
    state.step = as_int(record.get("global_steps"))
    epoch = record.get("epoch")
    state.epoch = as_float(epoch) if epoch is not None else None
    for key in ("global_samples", "skipped_steps"):
        _number(state.metrics, key, record.get(key))
    scheduler = record.get("lr_scheduler")
    if isinstance(scheduler, dict):
        _number(state.metrics, "lr_scheduler.last_batch_iteration", scheduler.get("last_batch_iteration"))
        _number(state.metrics, "lr_scheduler.last_epoch", scheduler.get("last_epoch"))
    for key in ("ds_config", "ds_version", "dp_world_size", "mp_world_size", "checkpoint_parallel_dimensions"):
        if key in record:
            state.hparams[key] = jsonable(record[key])
    client: dict[str, Any] = {}
    for key, value in record.items():
        if not isinstance(key, str) or key in ENGINE_KEYS:
            continue
        if len(client) >= MAX_CLIENT_KEYS:
            state.notes.append(f"client state: more than {MAX_CLIENT_KEYS} keys, the rest not shown")
            break
        if not _number(state.metrics, key, value):
            client[key] = jsonable(value) if isinstance(value, (str, bool, type(None))) else _kind(value)
    if client:
        state.hparams["client_state"] = client


def _kind(value: Any) -> str:
    return f"<{type(value).__name__}>"


def _number(metrics: dict[str, float], key: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    number = as_float(value)
    if number is None or number != number or number in (float("inf"), float("-inf")):
        return False
    metrics[key] = number
    return True


def _check_ranks(record: dict, model_files: list[str], optim_files: list[str], names: set[str],
                 path: Path, state: TagState) -> None:  # fmt: skip
    """Every model-parallel rank's model states; for ZeRO, every (dp, mp) optimizer file."""
    mp_world = as_int(record.get("mp_world_size"))
    dp_world = as_int(record.get("dp_world_size"))
    zero3 = any(MODEL_STATES.match(n).group(2) is not None for n in model_files)  # type: ignore[union-attr]
    seen_mp = {int(MODEL_STATES.match(n).group(3)) for n in model_files}  # type: ignore[union-attr]
    seen_dp = {int(m.group(2)) for n in optim_files if (m := OPTIM_STATES.match(n))}
    if mp_world is None or mp_world < 1:
        mp_world = max(seen_mp) + 1
    if dp_world is None or dp_world < 1:
        dp_world = max(seen_dp) + 1 if seen_dp else 1
    if mp_world * dp_world > MAX_RANK_FILES:
        state.notes.append(f"world size {dp_world} x {mp_world}: too many ranks to check every file")
        return
    # ZeRO keeps the optimizer in its own files: the model states then hold ``optimizer: None`` and the
    # flattened ``param_shapes``. A file pickling an optimizer there (stage 0) needs no optimizer files.
    zero_optimizer = bool(optim_files) or (record.get("optimizer") is None and record.get("param_shapes") is not None)
    prefix = "bf16_" if any(n.startswith("bf16_") for n in optim_files) else ""
    zprefix = "bf16_" if any(n.startswith("bf16_") for n in model_files) else ""
    missing: list[str] = []
    for mp in range(mp_world):
        if zero3:
            for dp in range(dp_world):
                name = _rank_name(zprefix, dp, mp, "model_states")
                if name not in names:
                    missing.append(name)
        elif _rank_name("", None, mp, "model_states") not in names:
            missing.append(_rank_name("", None, mp, "model_states"))
        if zero_optimizer:
            for dp in range(dp_world):
                name = _rank_name(prefix, dp, mp, "optim_states")
                old = name.replace("_optim_states.pt", "optim_states.pt")  # DeepSpeed still loads the old name
                if name not in names and old not in names:
                    missing.append(name)
                else:
                    present = name if name in names else old
                    if _nonempty_file(path / present) is False:
                        missing.append(f"{present} (empty)")
    if missing:
        state.complete = False
        state.missing.extend(cap_missing(missing))


def cap_missing(missing: list[str]) -> list[str]:
    """At most MAX_MISSING_SHOWN names, then one line with how many more (a recorded world size of
    10**5 must not make a list row of 10**5 names)."""
    if len(missing) <= MAX_MISSING_SHOWN + 1:
        return missing
    more = 0
    for item in missing[MAX_MISSING_SHOWN:]:
        summary = _MORE.match(item)
        more += int(summary.group(1)) if summary else 1
    return missing[:MAX_MISSING_SHOWN] + [f"... and {more} more"]


_MORE = re.compile(r"^\.\.\. and (\d+) more$")


class DeepSpeedLayout(Layout):
    name = "deepspeed"
    title = "DeepSpeed"
    resume_flag = "--load_checkpoint"

    def recognise(self, directory: Path, names: list[str]) -> bool:
        if LATEST in names and _nonempty_file(directory / LATEST) is not None:
            tag = read_tag(directory / LATEST)[0]
            if tag is not None and is_tag_directory(directory / tag):
                return True
        candidates = sorted(names, key=lambda n: (GLOBAL_STEP.match(n) is None, n))[:RECOGNISE_PROBES]
        return any(is_tag_directory(directory / n) for n in candidates)

    def units(self, directory: Path) -> list[Unit]:
        units: list[Unit] = []
        for entry in _listdir(directory):
            if not _is_dir(entry) or not is_tag_directory(Path(entry.path)):
                continue
            path = Path(entry.path)
            state = inspect_tag(path)
            step = state.step
            if step is None and (match := GLOBAL_STEP.match(entry.name)):
                step = int(match.group(1))
                state.notes.append(f"step {step} from the tag name (model states give none)")
            units.append(Unit(
                layout=self.name, name=entry.name, path=path, is_directory=True, step=step,
                epoch=state.epoch, metrics=state.metrics, complete=state.complete, missing=state.missing,
                files=unit_files(path), hparams=state.hparams or None, notes=state.notes,
            ))  # fmt: skip
        units.sort(key=lambda u: (u.step is not None, u.step or 0, u.name))
        return units

    def pointers(self, directory: Path, units: list[Unit]) -> list[Pointer]:
        path = directory / LATEST
        if not os.path.lexists(path):
            if not units:
                return []
            return [_latest(path, None, POINTER_DAMAGED,
                            "missing: engine.load_checkpoint(dir) without a tag loads nothing")]  # fmt: skip
        tag, problem = read_tag(path)
        if tag is None:
            return [_latest(path, None, POINTER_DAMAGED, problem)]
        by_name = {u.name: u for u in units}
        unit = by_name.get(tag)
        if unit is None:
            if os.path.isdir(directory / tag):
                return [_latest(path, tag, POINTER_DAMAGED, f"{tag} holds no DeepSpeed model states")]
            return [_latest(path, tag, POINTER_DANGLING, f"{tag} does not exist")]
        if not unit.complete:
            return [_latest(path, tag, POINTER_DAMAGED,
                            f"{tag} is incomplete: missing " + ", ".join(unit.missing[:3]))]  # fmt: skip
        newer = [u for u in units if u.complete and u.step is not None and unit.step is not None and u.step > unit.step]
        if newer:
            newest = max(newer, key=lambda u: (u.step, u.name))
            return [_latest(path, tag, POINTER_STALE, f"{newest.name} is newer and complete")]
        return [_latest(path, tag, POINTER_OK)]

    def resume_args(self, unit: Unit, directory: Path) -> list[str]:
        """The convention of DeepSpeed training scripts: ``engine.load_checkpoint(args.load_checkpoint,
        tag=args.ckpt_id)``. DeepSpeed itself defines no flag; with the tag given, ``latest`` is not read."""
        return ["--load_checkpoint", str(directory), "--ckpt_id", unit.name]


def _latest(path: Path, tag: str | None, status: str = POINTER_OK, detail: str | None = None) -> Pointer:
    """``latest`` as a pointer: a tag file, rewritten (not re-linked) when ``restore`` heals it."""
    return Pointer(LATEST, path, tag, status, detail, tag_file=True)


def read_tag(path: Path) -> tuple[str | None, str | None]:
    """The tag ``latest`` names, or (None, why not). Reads at most MAX_LATEST_BYTES + 1 bytes."""
    try:
        with open_regular(path) as fh:
            raw = fh.read(MAX_LATEST_BYTES + 1)
    except CkptctlError as exc:
        return None, f"not a tag file: {exc}"
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    if len(raw) > MAX_LATEST_BYTES:
        return None, f"not a tag file: over {MAX_LATEST_BYTES} bytes"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not a tag file: not UTF-8 text"
    tag = text.strip()
    if not tag:
        return None, "empty: names no tag"
    if any(c in tag for c in "/\\\0") or tag in (".", "..") or not tag.isprintable():
        return None, "not a tag file: not a directory name"
    return tag, None
