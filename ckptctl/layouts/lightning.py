"""PyTorch Lightning's ``ModelCheckpoint`` layout: ``*.ckpt`` files, one checkpoint each.

What Lightning writes (``lightning.pytorch.callbacks.model_checkpoint``, read for 2.6):

- names from a template, ``filename="{epoch}-{step}-{val_loss:.2f}"`` ->
  ``epoch=3-step=120-val_loss=0.25.ckpt``: ``CHECKPOINT_EQUALS_CHAR = "="`` joins a key to its
  value (``auto_insert_metric_name``), ``CHECKPOINT_JOIN_CHAR = "-"`` joins the parts; when the name
  exists already a version is appended, ``-v1``, ``-v2`` ... (``STARTING_VERSION = 1``);
- ``last.ckpt`` (``CHECKPOINT_NAME_LAST``, versioned too: ``last-v1.ckpt`` when a second run writes
  into the same directory) with ``save_last=True`` a full copy, with ``save_last="link"`` a relative
  symlink to the newest top-k file that was saved;
- inside each file: ``epoch``, ``global_step``, ``pytorch-lightning_version``, ``state_dict``,
  ``optimizer_states``, ``lr_schedulers``, ``loops``, ``hyper_parameters`` and ``callbacks``, whose
  ``"ModelCheckpoint{'monitor': ..., 'mode': ...}"`` entry holds ``monitor``, ``best_model_path``,
  ``best_model_score``, ``current_score``, ``best_k_models`` (absolute path -> score),
  ``kth_value`` (``tensor(inf)`` until the top-k is full) and ``last_model_path``; scores are 0-d
  tensors.

A unit is one ``.ckpt`` regular file (a ``last.ckpt`` copy is a unit too, protected as the last
one), or one ``.ckpt`` *directory*: strategies that save shards write the checkpoint path as a
directory (see :func:`directory_kind`):

- ``FSDPStrategy(state_dict_type="sharded")`` (``lightning.pytorch.strategies.fsdp``): DCP files
  (``.metadata``, ``__0_0.distcp``, one per rank) holding ``model`` and ``optimizer_N``, then
  ``meta.pt`` (``_METADATA_FILENAME``), a ``torch.save`` of everything else (``epoch``,
  ``global_step``, ``callbacks``, ``loops``, ``hyper_parameters``): read like a ``.ckpt`` file.
  Complete when ``meta.pt`` reads and ``.metadata`` names only shard files that are there and long
  enough (a truncated or missing shard makes it incomplete).
- ``DeepSpeedStrategy`` (``lightning.pytorch.strategies.deepspeed``): ``engine.save_checkpoint(path,
  client_state=..., tag="checkpoint")``, so ``checkpoint/mp_rank_00_model_states.pt`` (Lightning's
  keys merged into DeepSpeed's client state: read for step, epoch, callbacks; the pickle only),
  ZeRO ``*_optim_states.pt`` (never read: presence and size), ``latest`` (the tag text, which
  Lightning's load needs) and ``zero_to_fp32.py``. Complete as :func:`ckptctl.layouts.deepspeed.inspect_tag`
  says, plus ``latest``.

A directory unit's files are every file below it (``du``, ``validate``); ``prune`` removes it whole,
by one rename then a recursive delete, as every layout's directory units. A ``.ckpt`` symlink is a :class:`~ckptctl.layouts.base.Pointer`, not a unit; a ``last.ckpt``
copy is also reported as a pointer that designates itself, so ``restore`` can replace it when damaged.
Reading a unit reads its pickle through the safe reader (``spans=False``: no tensor bytes) plus the
few bytes of the score tensors (:func:`ckptctl.formats.scalars.read_scalars`); nothing runs code.

Which checkpoint is *best*: the ``best_model_path`` (matched by basename: the recorded paths are
absolute, and directories move) that the newest readable checkpoint records, by ``global_step``;
when several files share that newest step and disagree (two runs written into one directory, the
``-v1`` case) each one they name is best. Callbacks with a ``monitor`` win over those without (a
``ModelCheckpoint(monitor=None)`` records its latest save as "best").

A ``last.ckpt`` symlink is *stale* when a complete checkpoint with a higher step than the one it
names exists. Lightning itself links ``last.ckpt`` to the newest *saved* file, so a run that
Lightning finished normally is never stale; a stale link comes from an interrupted relink, a
second callback or a copy into the directory, and resuming from it silently loses the newer steps.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError
from ..formats import dcp
from ..formats.reader import CheckpointFile, read_checkpoint
from ..formats.scalars import read_scalars
from . import deepspeed
from .base import (
    CONTENT_WEIGHTS,
    POINTER_DAMAGED,
    POINTER_DANGLING,
    POINTER_LOOP,
    POINTER_STALE,
    Layout,
    Pointer,
    Unit,
    UnitFile,
    stat_file,
)
from .deepspeed import unit_files
from .torchtitan import check_shards

SUFFIX = ".ckpt"
EQUALS = "="  # ModelCheckpoint.CHECKPOINT_EQUALS_CHAR
JOIN = "-"  # ModelCheckpoint.CHECKPOINT_JOIN_CHAR
LAST = "last"  # ModelCheckpoint.CHECKPOINT_NAME_LAST
LAST_NAME = re.compile(r"last(?:-v(?P<version>\d+))?\.ckpt")
_VERSION = re.compile(r"(?P<rest>.+)-v(?P<version>\d{1,9})")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
LIGHTNING_KEYS = ("pytorch-lightning_version", "callbacks", "state_dict")
MAX_SNIFFED = 2  # files read to recognise a directory whose names say nothing
MAX_CALLBACKS = 16  # ModelCheckpoint states looked at per file
MAX_BEST_K = 10_000  # best_k_models entries searched for the file's own score
MAX_HPARAMS = 1000  # hyper-parameters kept per file
MAX_DIR_NAMES = 100_000  # names listed per checkpoint directory, at most
META_FILE = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME (FSDP sharded)
DEEPSPEED_TAG = "checkpoint"  # the tag DeepSpeedStrategy.save_checkpoint passes
DIR_FSDP = "fsdp-sharded"
DIR_DEEPSPEED = "deepspeed"
NOTE_LAST_COPY = "last (copy)"
PROTECTED_LAST = "protected: last"


@dataclass
class ParsedLightningName:
    """What a Lightning file name says: template values, ``-vN`` version, whether it is ``last``."""

    name: str
    values: dict[str, float] = field(default_factory=dict)  # every numeric key=value, epoch and step included
    version: int | None = None
    last: bool = False
    odd: list[str] = field(default_factory=list)  # key=value parts whose value is not a number

    @property
    def epoch(self) -> int | None:
        return _as_int(self.values.get("epoch"))

    @property
    def step(self) -> int | None:
        return _as_int(self.values.get("step"))

    @property
    def is_template(self) -> bool:
        return bool(self.values or self.odd)


def _as_int(value: float | None) -> int | None:
    return int(value) if value is not None and math.isfinite(value) and value == int(value) and value >= 0 else None


def parse_name(name: str) -> ParsedLightningName:
    """``epoch=3-step=120-val_loss=0.25-v1.ckpt`` -> values {epoch 3, step 120, val_loss 0.25}, version 1.

    Never raises. A key is what follows the last ``-`` before an ``=`` (so a prefix such as
    ``sample-mnist-epoch=02`` gives ``epoch``); a value runs to the ``-`` before the next key, so
    negative values and exponents (``lr=1e-05``) survive. Values that are not numbers are listed in
    ``odd``; ``inf``/``nan`` are numbers here but left out of ``values``.
    """
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    parsed = ParsedLightningName(name, last=LAST_NAME.fullmatch(name) is not None)
    version = _VERSION.fullmatch(stem)
    if version is not None:
        stem = version["rest"]
        parsed.version = int(version["version"])
    parts = stem.split(EQUALS)
    for index in range(len(parts) - 1):
        key = parts[index].rpartition(JOIN)[2]
        value = parts[index + 1] if index + 1 == len(parts) - 1 else parts[index + 1].rpartition(JOIN)[0]
        if not _KEY.fullmatch(key) or not value:
            continue
        number = _number(value)
        if number is None:
            parsed.odd.append(f"{key}={value}")
        elif math.isfinite(number):
            parsed.values[key] = number
    return parsed


def _number(text: str) -> float | None:
    if len(text) > 64:
        return None
    try:
        return float(text)
    except ValueError:
        return None


@dataclass
class _Read:
    """What one file's pickle says (all None when it could not be read)."""

    epoch: int | None = None
    step: int | None = None
    hparams: dict[str, Any] | None = None
    monitor: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # best_model_score, current_score, kth_value, own
    best_names: set[str] = field(default_factory=set)  # basenames of best_model_path (monitored states first)
    version: str | None = None
    error: CheckpointError | None = None


class LightningLayout(Layout):
    name = "lightning"
    title = "PyTorch Lightning"
    resume_flag = "--ckpt_path"

    # ------------------------------------------------------------------ recognition

    def recognise(self, directory: Path, names: list[str]) -> bool:
        """A directory with ``.ckpt`` files, one of them Lightning's by name (a ``key=value``
        template, ``last.ckpt``) or, when no name says so, by content (its keys), reading at most
        :data:`MAX_SNIFFED` pickles."""
        unnamed: list[str] = []  # .ckpt files whose names say nothing, in case no name does
        for n in names:
            if not n.endswith(SUFFIX) or n.startswith("."):
                continue
            by_name = LAST_NAME.fullmatch(n) is not None or parse_name(n).is_template
            if directory_kind(directory / n) is not None:
                return True  # a sharded checkpoint directory Lightning wrote (meta.pt, checkpoint/ + latest)
            if (by_name or len(unnamed) < MAX_SNIFFED) and _is_regular_or_link(directory / n):
                if by_name:
                    return True
                unnamed.append(n)
        for n in unnamed:
            try:
                root = read_checkpoint(directory / n, spans=False).root
            except (CheckpointError, OSError):
                continue
            if isinstance(root, Mapping) and (
                "pytorch-lightning_version" in root or ("callbacks" in root and "state_dict" in root)
            ):
                return True
        return False

    # ------------------------------------------------------------------ units

    def units(self, directory: Path) -> list[Unit]:
        found: list[tuple[Unit, _Read]] = []
        for entry in _ckpt_entries(directory):
            path = directory / entry.name
            if entry.is_file(follow_symlinks=False):
                found.append(self._unit(path))
            elif entry.is_dir(follow_symlinks=False) and (
                directory_kind(path) is not None or _dir_named(entry.name)
            ):  # symlinks are pointers; a .ckpt directory is a sharded save (FSDP, DeepSpeed)
                found.append(self._dir_unit(path))
        _mark_best(found)
        units = [u for u, _ in found]
        units.sort(key=order_key)
        return units

    def _named_unit(self, path: Path, parsed: ParsedLightningName, is_directory: bool, files: list[UnitFile]) -> Unit:
        """A unit (file or directory) with what its name says: step, epoch, logged values, notes."""
        unit = Unit(self.name, path.name, path, is_directory, files=files)
        unit.step, unit.epoch = parsed.step, parsed.epoch
        unit.metrics = {k: v for k, v in parsed.values.items() if k not in ("epoch", "step")}
        if parsed.last:
            unit.notes.append(NOTE_LAST_COPY)
        if parsed.version is not None:
            unit.notes.append(f"version v{parsed.version} (Lightning's suffix for a name that existed already)")
        for odd in parsed.odd[:4]:
            unit.notes.append(f"name: {odd} is not a number")
        return unit

    def _unit(self, path: Path) -> tuple[Unit, _Read]:
        parsed = parse_name(path.name)
        unit = self._named_unit(path, parsed, False, [stat_file(path, CONTENT_WEIGHTS)])
        read = _read_file(path)
        if read.error is not None:
            unit.complete = False
            unit.missing = [f"{read.error.status}: {read.error.reason}"]
            unit.notes.append(f"{read.error.status}: {read.error.reason}" + (" (not executed)" if read.error.status == "unsafe" else ""))
            return unit, read
        _apply(unit, read, parsed)
        return unit, read

    def _dir_unit(self, path: Path) -> tuple[Unit, _Read]:
        """A ``.ckpt`` directory: its files, completeness, and the metadata of its one small file."""
        parsed = parse_name(path.name)
        unit = self._named_unit(path, parsed, True, unit_files(path))
        kind = directory_kind(path)
        read = _Read()
        if kind == DIR_FSDP:
            unit.notes.append("sharded (FSDP): DCP files and meta.pt")
            read = _inspect_fsdp(path, unit)
        elif kind == DIR_DEEPSPEED:
            unit.notes.append("sharded (DeepSpeed): checkpoint/ and latest")
            read = _inspect_deepspeed(path, unit)
        else:
            unit.complete = False
            unit.missing = [META_FILE]
            unit.notes.append("neither FSDP's meta.pt and DCP files nor DeepSpeed's checkpoint/: a save that did not finish")
        if read.error is not None:
            unit.complete = False
            problem = f"{read.error.status}: {read.error.reason}"
            unit.notes.append(problem + (" (not executed)" if read.error.status == "unsafe" else ""))
            return unit, read
        _apply(unit, read, parsed)
        return unit, read

    # ------------------------------------------------------------------ pointers

    def pointers(self, directory: Path, units: list[Unit]) -> list[Pointer]:
        by_name = {u.name: u for u in units}
        newest = max((u.step for u in units if u.complete and u.step is not None), default=None)
        found: list[Pointer] = []
        for entry in _ckpt_entries(directory):
            path = directory / entry.name
            if entry.is_symlink():
                found.append(_link_pointer(directory, path, by_name, newest))
            elif entry.name in by_name and LAST_NAME.fullmatch(entry.name):
                unit = by_name[entry.name]  # a last.ckpt copy designates itself
                pointer = Pointer(entry.name, path, entry.name)
                if not unit.complete:
                    pointer.status, pointer.detail = POINTER_DAMAGED, f"the copy is {unit.missing[0] if unit.missing else 'incomplete'}"
                elif unit.step is not None and newest is not None and newest > unit.step:
                    pointer.status = POINTER_STALE
                    pointer.detail = f"a copy of step {unit.step}; a complete checkpoint of step {newest} exists"
                found.append(pointer)
        found.sort(key=lambda p: p.name)
        return found

    # ------------------------------------------------------------------ protection, resume

    def protect(self, units: list[Unit], pointers: list[Pointer]) -> None:
        """Best, then ``last`` copies, then the newest complete checkpoint that is not a last copy,
        then every pointer's target."""
        for unit in units:
            if unit.best:
                unit.protected = "protected: best"
            elif LAST_NAME.fullmatch(unit.name):
                unit.protected = PROTECTED_LAST
        regular = [u for u in units if u.complete and u.step is not None and not LAST_NAME.fullmatch(u.name)]
        if regular:
            newest = max(regular, key=order_key)
            newest.protected = newest.protected or "protected: newest complete"
        targets = {p.target for p in pointers if p.target}
        for unit in units:
            if unit.name in targets and unit.protected is None:
                unit.protected = "protected: pointer target"

    def resume_args(self, unit: Unit, directory: Path) -> list[str]:
        return [self.resume_flag, str(unit.path)]


# ---------------------------------------------------------------------- helpers


def _apply(unit: Unit, read: _Read, parsed: ParsedLightningName) -> None:
    """What a readable checkpoint's Lightning metadata says, over what its name said (file and
    directory units alike)."""
    if read.step is not None:
        unit.step = read.step
    if read.epoch is not None:
        unit.epoch = read.epoch
    if read.hparams is not None:
        unit.hparams = read.hparams
    unit.monitor = read.monitor
    own = read.scores.pop("own", None)
    current = read.scores.get("current_score")
    unit.metrics.update(read.scores)
    if read.monitor:
        if own is not None:
            unit.metrics[read.monitor] = own  # this file's own entry in best_k_models: exact
        elif current is not None and not parsed.last:
            unit.metrics[read.monitor] = current  # a top-k file is saved right after current_score is set
    if read.version:
        unit.notes.append(f"pytorch-lightning {read.version}")


def order_key(unit: Unit) -> tuple[int, int, bool, str]:
    """Oldest first: by step; at one step a ``-vN`` file after the one without (Lightning wrote it
    later, the second run into the directory), a ``last`` copy after the top-k file it follows."""
    version = parse_name(unit.name).version or 0
    return (unit.step if unit.step is not None else -1, version, LAST_NAME.fullmatch(unit.name) is not None, unit.name)


def _is_regular_or_link(path: Path) -> bool:
    try:
        return path.is_symlink() or path.is_file()
    except OSError:
        return False


def _ckpt_entries(directory: Path) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as it:
        return sorted((e for e in it if e.name.endswith(SUFFIX) and not e.name.startswith(".")), key=lambda e: e.name)


def _read_file(path: Path) -> _Read:
    """The pickle's fields and the scores' few bytes; a damaged or unsafe file is a verdict."""
    read = _Read()
    try:
        ckpt = read_checkpoint(path, spans=False)
    except CheckpointError as exc:
        read.error = exc
        return read
    root = ckpt.root
    if not isinstance(root, Mapping):
        return read
    read.epoch = _plain_int(root.get("epoch"))
    read.step = _plain_int(root.get("global_step"))
    version = root.get("pytorch-lightning_version")
    read.version = version[:32] if isinstance(version, str) else None
    read.hparams = _as_dict(root.get("hyper_parameters"))
    _read_callbacks(ckpt, root.get("callbacks"), path.name, read)
    return read


def _plain_int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _as_dict(value: Any) -> dict[str, Any] | None:
    """Hyper-parameters as a dict: a plain mapping, or an inert record's attributes (AttributeDict)."""
    if not isinstance(value, Mapping):
        value = getattr(value, "attrs", None) if value is not None else None
    if isinstance(value, Mapping):
        return {str(k)[:200]: v for k, v in itertools.islice(value.items(), MAX_HPARAMS)}
    return None


def _checkpoint_states(callbacks: Any) -> list[Mapping[str, Any]]:
    """The ModelCheckpoint states among ``callbacks`` (keyed ``"ModelCheckpoint{...}"``; a subclass
    has its own class name), recognised by their fields; those with a monitor first."""
    if not isinstance(callbacks, Mapping):
        return []
    states = [
        state for _key, state in itertools.islice(callbacks.items(), MAX_CALLBACKS)
        if isinstance(state, Mapping) and "best_model_path" in state
    ]  # fmt: skip
    return sorted(states, key=lambda s: not isinstance(s.get("monitor"), str))


def _read_callbacks(ckpt: CheckpointFile, callbacks: Any, own_name: str, read: _Read) -> None:
    states = _checkpoint_states(callbacks)
    if not states:
        return
    primary = states[0]
    monitored = isinstance(primary.get("monitor"), str)
    read.monitor = primary["monitor"][:200] if monitored else None
    for state in states:
        if monitored and not isinstance(state.get("monitor"), str):
            break
        path = state.get("best_model_path")
        if isinstance(path, str) and path:
            read.best_names.add(os.path.basename(path))
    wanted: dict[str, Any] = {k: primary.get(k) for k in ("best_model_score", "current_score", "kth_value")}
    best_k = primary.get("best_k_models")
    if isinstance(best_k, Mapping):
        for key, value in itertools.islice(best_k.items(), MAX_BEST_K):
            if isinstance(key, str) and os.path.basename(key) == own_name:
                wanted["own"] = value
                break
    numbers = read_scalars(ckpt, wanted)
    for key, value in wanted.items():  # plain floats (older versions, user subclasses)
        if key not in numbers and (type(value) is float or (type(value) is int and abs(value) < 2**53)):
            numbers[key] = value
    read.scores = {k: float(v) for k, v in numbers.items() if math.isfinite(float(v))}


def _mark_best(found: list[tuple[Unit, _Read]]) -> None:
    """Mark the units the newest record names as best (see the module docstring)."""
    recorded = [(r.step, r.best_names) for _u, r in found if r.error is None and r.best_names and r.step is not None]
    if not recorded:
        return
    newest = max(step for step, _names in recorded)
    best = set().union(*(names for step, names in recorded if step == newest))
    for unit, _read in found:
        if unit.name in best and not LAST_NAME.fullmatch(unit.name):
            unit.best = True


def _link_pointer(directory: Path, path: Path, by_name: dict[str, Unit], newest: int | None) -> Pointer:
    """A ``.ckpt`` symlink: what it names and whether that is there, complete and the newest."""
    try:
        text = os.readlink(path)
    except OSError as exc:
        return Pointer(path.name, path, None, POINTER_DAMAGED, f"cannot read the link: {exc.strerror or exc}")
    pointer = Pointer(path.name, path, text)
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            pointer.status = POINTER_LOOP
            pointer.detail = f"points at itself ({text})" if os.path.basename(text) == path.name else f"a symlink loop ({text})"
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            pointer.status = POINTER_DANGLING
            pointer.detail = f"{text} does not exist"
            if os.path.basename(text) in by_name and os.path.basename(text) != text:
                pointer.detail += f" ({os.path.basename(text)} is here: a path written from another directory)"
        else:
            pointer.status, pointer.detail = POINTER_DAMAGED, f"cannot follow it: {exc.strerror or exc}"
        return pointer
    resolved = Path(os.path.realpath(path))
    unit = by_name.get(resolved.name) if resolved.parent == Path(os.path.realpath(directory)) else None
    step: int | None
    if unit is not None:
        pointer.target = unit.name
        if not unit.complete:
            pointer.status = POINTER_DAMAGED
            pointer.detail = f"{unit.name} is {unit.missing[0] if unit.missing else 'incomplete'}"
            return pointer
        step = unit.step
    elif os.path.isdir(resolved) and directory_kind(resolved) is not None:  # a sharded save elsewhere
        outside, _read = LightningLayout()._dir_unit(resolved)
        if not outside.complete:
            pointer.status = POINTER_DAMAGED
            pointer.detail = f"{text} is {outside.missing[0] if outside.missing else 'incomplete'}"
            return pointer
        step = outside.step
    elif not os.path.isfile(resolved) or info.st_size == 0:
        pointer.status, pointer.detail = POINTER_DAMAGED, f"{text} is not a checkpoint file"
        return pointer
    else:  # a file outside this directory: read it as a unit would be read
        read = _read_file(resolved)
        if read.error is not None:
            pointer.status, pointer.detail = POINTER_DAMAGED, f"{text} is {read.error.status}: {read.error.reason}"
            return pointer
        step = read.step if read.step is not None else parse_name(resolved.name).step
    if LAST_NAME.fullmatch(path.name) and step is not None and newest is not None and newest > step:
        pointer.status = POINTER_STALE
        pointer.detail = f"names step {step}; a complete checkpoint of step {newest} exists"
    return pointer


# ---------------------------------------------------------------------- directory units


def directory_kind(path: Path) -> str | None:
    """:data:`DIR_FSDP` for a directory holding ``meta.pt`` or DCP files, :data:`DIR_DEEPSPEED` for
    one holding DeepSpeed's ``checkpoint/`` tag directory or a ``latest`` tag file; None otherwise
    (a file, a symlink, an empty or unknown directory). Reads names only."""
    try:
        if path.is_symlink() or not path.is_dir():
            return None
        names = set(itertools.islice(os.listdir(path), MAX_DIR_NAMES))
    except OSError:
        return None
    if META_FILE in names or dcp.METADATA_FILE in names or any(n.endswith(dcp.SHARD_SUFFIX) for n in names):
        return DIR_FSDP
    if deepspeed.LATEST in names or (DEEPSPEED_TAG in names and deepspeed.is_tag_directory(path / DEEPSPEED_TAG)):
        return DIR_DEEPSPEED
    return None


def _dir_named(name: str) -> bool:
    """A ``.ckpt`` directory whose name is Lightning's (a template, ``last``): a unit even empty."""
    return LAST_NAME.fullmatch(name) is not None or parse_name(name).is_template


def _inspect_fsdp(path: Path, unit: Unit) -> _Read:
    """``meta.pt`` through the safe reader, the DCP shards by ``stat`` against ``.metadata``."""
    names = {f.path.name for f in unit.files if f.path.parent == path}
    read = _Read()
    if META_FILE in names:
        read = _read_file(path / META_FILE)
        if read.error is not None:
            problem = f"{read.error.status}: {read.error.reason}"
            unit.missing.append(f"{META_FILE} ({problem})")
            unit.complete = False
            unit.notes.append(f"{META_FILE}: {problem}" + (" (not executed)" if read.error.status == "unsafe" else "")
                              + "; step and scores from the name only")
            read = _Read()  # the shards are still worth a look
    else:
        unit.missing.append(META_FILE)
        unit.complete = False
        unit.notes.append(f"no {META_FILE}: Lightning writes it after the shards (a save that did not finish)")
    if dcp.METADATA_FILE not in names:
        unit.missing.append(dcp.METADATA_FILE)
        unit.complete = False
        return read
    shards = Unit(unit.layout, unit.name, path, True)  # check_shards lists what it finds in ``missing``
    try:
        check_shards(shards, path, dcp._load_metadata(path))
    except CheckpointError as exc:
        unit.complete = False
        unit.notes.append(f".metadata: {exc.status}: {exc.reason}")
    except OSError as exc:
        unit.complete = False
        unit.notes.append(f".metadata: unreadable: {exc.strerror or exc}")
    unit.complete = unit.complete and shards.complete
    unit.missing.extend(shards.missing)
    unit.notes.extend(shards.notes)
    return read


def _inspect_deepspeed(path: Path, unit: Unit) -> _Read:
    """The tag directory as the DeepSpeed layout checks it; Lightning's keys from its model states."""
    read = _Read()
    tag = DEEPSPEED_TAG
    if os.path.lexists(path / deepspeed.LATEST):
        named, problem = deepspeed.read_tag(path / deepspeed.LATEST)
        if named is None:
            unit.complete = False
            unit.missing.append(f"{deepspeed.LATEST} ({problem})")
        else:
            tag = named
    else:
        unit.complete = False
        unit.missing.append(deepspeed.LATEST)
        unit.notes.append("no latest: DeepSpeed's load_checkpoint(dir) then loads nothing")
    tag_dir = path / tag
    if not tag_dir.is_dir():
        unit.complete = False
        unit.missing.append(f"{tag}/mp_rank_00_model_states.pt")
        return read
    state = deepspeed.inspect_tag(tag_dir)
    if not state.complete:
        unit.complete = False
        unit.missing.extend(f"{tag}/{name}" for name in state.missing)
    unit.notes.extend(state.notes)
    if state.step is not None and unit.step is None:
        unit.step = state.step
    model = sorted(n for n in _names(tag_dir) if deepspeed.MODEL_STATES.match(n))
    if model and state.complete:
        read = _read_file(tag_dir / model[0])
    return read


def _names(path: Path) -> list[str]:
    try:
        return list(itertools.islice(os.listdir(path), MAX_DIR_NAMES))
    except OSError:
        return []
