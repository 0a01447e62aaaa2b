"""One checkpoint of any layout, seen as ``inspect`` and ``compare`` need it: the unit, its files
read safely, and the tensor inventory of its weights.

A path the user names (``run/checkpoint-500``, ``run/epoch=3-step=120.ckpt``, ``global_step10/``,
``checkpoint/step-20``, ``model.safetensors``) is looked up among the units of its parent
directory's layout (:func:`ckptctl.layouts.registry.detect`); a path no layout claims is a plain
file or DCP directory, read as before. The weights' inventory (name, dtype, shape) comes from
headers and pickles only: a safetensors header, the placeholders of a torch zip, a DCP
``.metadata``; never tensor bytes. Each tensor also records where its values are
(:class:`TensorSource`), for ``compare --values``.

Weight names are relative to the state dict of the model (``layers.0.weight``), whatever the
container calls it (``state_dict`` in Lightning, ``module`` in DeepSpeed, ``model_state_dict`` in
the PyTorch tutorial, ``model`` in ckptctl's own files), so two layouts of one model compare name
by name. See docs/architecture.md ("Layouts", "Reading never runs code").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..formats.bounded import bounded_str
from ..formats.checkpoint import CheckpointFile, iter_tensors
from ..formats.dcp import METADATA_FILE, SHARD_SUFFIX, looks_like_dcp, read_directory
from ..formats.reader import read_checkpoint
from ..formats.unpickler import StorageRef, TensorRef
from ..layouts.base import CONTENT_OPTIMIZER, CONTENT_WEIGHTS, Layout, Unit

# The key that holds the model's state dict, per framework, most specific first.
WEIGHT_KEYS = ("model", "state_dict", "module", "model_state_dict", "model_state")
# Top-level keys that are not weights when no WEIGHT_KEYS key is present (torchtitan puts model
# FQNs at the top level beside these; a plain ``torch.save(model.state_dict())`` has none of them).
NOT_WEIGHTS = (
    "optimizer", "optimizer_states", "optimizer_state_dict", "optim", "lr_scheduler", "lr_schedulers",
    "scheduler", "train_state", "dataloader", "rng_state", "rng_states", "callbacks", "loops",
    "args", "hyper_parameters", "ds_config", "param_shapes", "frozen_param_shapes", "buffer_names",
)  # fmt: skip
MAX_FILES_READ = 256  # files of one unit read by inspect; a layout never lists more for a real checkpoint
JSON_SUFFIXES = (".json",)

# safetensors dtype -> torch dtype name (None: no torch dtype of the same bits per element)
SAFETENSORS_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32",
    "U32": "uint32", "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16",
    "F32": "float32", "F64": "float64", "C64": "complex64", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}  # fmt: skip


@dataclass(frozen=True)
class TensorSource:
    """Where one weight tensor's values are: ``kind`` is torch (a torch.save file, ``key`` the dotted
    name inside it), safetensors (``offset``/``nbytes`` absolute in the file, ``key`` the header
    name) or dcp (a DCP directory, ``key`` the FQN in ``.metadata``)."""

    kind: str
    path: Path
    key: str
    offset: int = 0
    nbytes: int = 0


@dataclass
class FileRead:
    """One file of a unit as the safe readers saw it."""

    path: Path
    content: str
    size_bytes: int
    format: str  # zip, legacy, safetensors, dcp, json, other, missing
    status: str = "ok"  # ok / unreadable / unsafe / not read
    error: str | None = None
    unsafe_globals: list[str] = field(default_factory=list)
    ckpt: CheckpointFile | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.path.name, "content": self.content, "size_bytes": self.size_bytes, "format": self.format,
                "status": self.status, "error": self.error, "unsafe_globals": self.unsafe_globals}  # fmt: skip


@dataclass
class Weights:
    """The tensor inventory of a unit's weights, as a flat ``CheckpointFile`` (so the native
    comparison code applies unchanged), each tensor's :class:`TensorSource`, and what could not be read."""

    ckpt: CheckpointFile
    sources: dict[str, TensorSource]
    problems: list[str] = field(default_factory=list)


@dataclass
class UnitView:
    layout: Layout | None
    unit: Unit
    files: list[FileRead]
    weights: Weights

    @property
    def status(self) -> str:
        """unsafe > unreadable > incomplete > ok, over the unit's files."""
        statuses = {f.status for f in self.files}
        for status in ("unsafe", "unreadable"):
            if status in statuses:
                return status
        return "ok" if self.unit.complete else "incomplete"

    @property
    def error(self) -> str | None:
        bad = [f"{f.path.name}: {f.status}: {f.error}" for f in self.files if f.status in ("unsafe", "unreadable")]
        if bad:
            return "; ".join(bad[:5]) + (f"; … ({len(bad) - 5} more)" if len(bad) > 5 else "")
        if not self.unit.complete:
            return "incomplete: missing " + (", ".join(self.unit.missing[:10]) or "required files")
        return None


LOOSE_LAYOUT = "loose"


def find_unit(path: str | os.PathLike[str], *, loose_torch_files: bool = False) -> tuple[Layout, Unit] | None:
    """The unit of a registered layout that ``path`` is (a file or a directory), with its layout; else None.

    The lookup is :func:`ckptctl.layouts.catalog.unit_at` (one rule for every command; see why there).
    A torch file of the loose-files layout (``model.pt``, ``a.pt``) is not returned unless
    ``loose_torch_files``: the safe reader's own view of one file (every key, every tensor) says
    more than a loose unit does, and ``compare``/``inspect`` of two plain files stay as they were.
    """
    from ..layouts import registry
    from ..layouts.catalog import unit_at

    entry = unit_at(path)
    if entry is None or entry.unit is None:
        return None
    unit = entry.unit
    if unit.layout == LOOSE_LAYOUT and not loose_torch_files and not unit.path.name.lower().endswith(".safetensors"):
        return None
    return registry.by_name(unit.layout), unit


def view_of(layout: Layout | None, unit: Unit) -> UnitView:
    """Read every file of ``unit`` safely (pickles and headers only) and inventory its weights."""
    files = read_files(unit)
    return UnitView(layout, unit, files, weights_of(unit, files))


def read_files(unit: Unit) -> list[FileRead]:
    """Each file of the unit through the reader its format needs; a DCP unit is one entry."""
    if unit.is_directory and looks_like_dcp(unit.path):
        return [_read_one(unit.path, CONTENT_WEIGHTS, unit.size_bytes, dcp=True)]
    reads = []
    files = unit.files
    if unit.is_directory and os.path.isfile(unit.path / METADATA_FILE) and not os.path.islink(unit.path / METADATA_FILE):
        # a DCP checkpoint plus files of the layout's own (Lightning's FSDP sharded save: meta.pt)
        inside = [f for f in files if f.path.parent == unit.path and (f.path.name == METADATA_FILE or f.path.name.endswith(SHARD_SUFFIX))]
        reads.append(_read_one(unit.path, CONTENT_WEIGHTS, sum(f.size_bytes for f in inside), dcp=True))
        files = [f for f in files if f not in inside]
    for index, unit_file in enumerate(files):
        if index >= MAX_FILES_READ:
            reads.append(FileRead(unit_file.path, unit_file.content, unit_file.size_bytes, "other", "not read",
                                  f"more than {MAX_FILES_READ} files in one checkpoint"))  # fmt: skip
            continue
        reads.append(_read_one(unit_file.path, unit_file.content, unit_file.size_bytes))
    return reads


def _read_one(path: Path, content: str, size: int, dcp: bool = False) -> FileRead:
    name = path.name.lower()
    if dcp:
        read = FileRead(path, content, size, "dcp")
        _safe(read, lambda: read_directory(path))
        return read
    if not os.path.lexists(path):
        return FileRead(path, content, size, "missing", "unreadable", "missing")
    if name.endswith(JSON_SUFFIXES) or name == METADATA_FILE:
        return FileRead(path, content, size, "json")  # read by the layout (bounded JSON), not here
    if name.endswith(".safetensors"):
        read = FileRead(path, content, size, "safetensors")
        _safe(read, lambda: _safetensors_ckpt(path))
        return read
    read = FileRead(path, content, size, "other")
    ckpt = _safe(read, lambda: read_checkpoint(path, spans=True))
    if ckpt is not None:
        read.format = ckpt.format
    elif read.status == "unreadable" and "unknown file format" in (read.error or "") and content not in (CONTENT_WEIGHTS, CONTENT_OPTIMIZER):
        read.status, read.error = "ok", None  # a text file, a script: not a checkpoint file, nothing to read
    return read


def _safe(read: FileRead, load) -> CheckpointFile | None:
    try:
        read.ckpt = load()
    except CheckpointError as exc:
        read.status, read.error = exc.status, exc.reason
        read.unsafe_globals = list(getattr(exc, "globals", []) or [])
    except OSError as exc:
        read.status, read.error = "unreadable", f"cannot read: {exc.strerror or exc}"
    return read.ckpt


def _safetensors_ckpt(path: Path) -> CheckpointFile:
    """A safetensors file as a flat CheckpointFile of placeholders (from its checked header)."""
    from ..formats.safetensors import read_safetensors_header

    header = read_safetensors_header(path)
    root: dict[str, Any] = {}
    storages: dict[str, StorageRef] = {}
    unmapped = []
    for tensor in header.tensors:
        dtype = SAFETENSORS_DTYPES.get(tensor.dtype)
        if dtype is None:
            unmapped.append(tensor.name)
            continue
        numel = 0 if 0 in tensor.shape else math.prod(tensor.shape)
        storage = StorageRef(tensor.name, dtype, numel, f"safetensors:{header.data_offset + tensor.begin}")
        storages[tensor.name] = storage
        root[tensor.name] = TensorRef(storage, 0, tensor.shape, _strides(tensor.shape), dtype)
    notes = [f"safetensors metadata: {dict(header.metadata)}"] if header.metadata else []
    if unmapped:
        notes.append(f"{len(unmapped)} tensor(s) of a dtype torch has no type for (F4/F6): not inventoried")
    ckpt = CheckpointFile(path, "safetensors", os.stat(path).st_size, root, storages, {}, None, notes, spans_read=False)
    return ckpt


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def weights_subtree(root: Any) -> tuple[str, Any]:
    """(prefix, subtree): the model's state dict inside a checkpoint's root object."""
    if not isinstance(root, dict):
        return "", root
    for key in WEIGHT_KEYS:
        value = root.get(key)
        if isinstance(value, dict) and any(True for _ in iter_tensors(value)):
            return key, value
    return "", {k: v for k, v in root.items() if not (isinstance(k, str) and k in NOT_WEIGHTS)}


def weights_of(unit: Unit, files: list[FileRead]) -> Weights:
    """The weights' inventory: every weights file's tensors, named relative to the model's state dict."""
    root: dict[str, TensorRef] = {}
    sources: dict[str, TensorSource] = {}
    problems: list[str] = []
    weight_files = [f for f in files if f.content == CONTENT_WEIGHTS]
    single_zip = None
    for read in weight_files:
        if read.ckpt is None:
            if read.format != "json":
                problems.append(f"{read.path.name}: {read.status}: {read.error}")
            continue
        ckpt = read.ckpt
        if ckpt.format == "safetensors":
            for name, ref in ckpt.root.items():
                location = ref.storage.location
                offset = int(location.split(":", 1)[1])
                _add(root, sources, problems, name, ref, TensorSource("safetensors", ckpt.path, name, offset, ref.nbytes))
            continue
        prefix, subtree = weights_subtree(ckpt.root)
        for name, ref in iter_tensors(subtree):
            inner = f"{prefix}.{name}" if prefix else name
            kind = "dcp" if ckpt.format == "dcp" else "torch"
            key = ref.storage.key if kind == "dcp" else inner
            _add(root, sources, problems, name, ref, TensorSource(kind, ckpt.path, key))
        if ckpt.format == "zip" and ckpt.container is not None:
            single_zip = ckpt if single_zip is None and len(weight_files) == 1 else None
    storages = {ref.storage.key: ref.storage for ref in root.values()}
    if single_zip is not None:  # keep the zip's CRC-32s: compare tells equal bytes without reading them
        ckpt = CheckpointFile(unit.path, "zip", unit.size_bytes, root, storages, single_zip.spans, single_zip.container)
    else:
        ckpt = CheckpointFile(unit.path, _format(unit, weight_files), unit.size_bytes, root, storages, {}, None, spans_read=False)
    return Weights(ckpt, sources, problems)


def _format(unit: Unit, weight_files: list[FileRead]) -> str:
    formats = sorted({f.format for f in weight_files if f.ckpt is not None})
    if len(formats) == 1:
        return formats[0]
    return "directory" if unit.is_directory else (formats[0] if formats else "?")


def _add(root: dict, sources: dict, problems: list, name: str, ref: TensorRef, source: TensorSource) -> None:
    if name in root:
        problems.append(f"tensor {bounded_str(name, 200)} appears in more than one weights file; the first is kept")
        return
    root[name] = ref
    sources[name] = source


OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_states", "base_optimizer_state")


def optimizer_of(view: UnitView) -> Any:
    """The :class:`~ckptctl.layouts.metadata.OptimizerSummary` of a unit's optimizer (a file that is
    an optimizer state dict, or the optimizer key of one: ``optimizer_states[0]`` in Lightning), or None."""
    from ..layouts.metadata import optimizer_summary

    for read in view.files:
        if read.ckpt is None or read.format not in ("zip", "legacy", "dcp"):
            continue
        root = read.ckpt.root if isinstance(read.ckpt.root, dict) else {}
        candidates = [root]
        for key in OPTIMIZER_KEYS:
            value = root.get(key)
            if isinstance(value, list) and value:
                value = value[0]  # Lightning: one state dict per optimizer
            candidates.append(value)
        for candidate in candidates:
            summary = optimizer_summary(candidate)
            if summary is not None:
                return summary
    return None


def plain_view(path: Path, ckpt: CheckpointFile | None = None, meta: Any = None) -> UnitView:
    """A file or DCP directory no layout claims, as a unit of its own: a ``.safetensors`` file
    (read here), or a torch file / DCP directory the caller has read (``ckpt``, ``meta``)."""
    from ..layouts.base import stat_file

    if ckpt is None:  # a .safetensors file
        info = stat_file(path, CONTENT_WEIGHTS)
        read = FileRead(path, CONTENT_WEIGHTS, info.size_bytes, "safetensors")
        _safe(read, lambda: _safetensors_ckpt(path))
        unit = Unit("safetensors", path.name, path, False, files=[info])
        if read.ckpt is not None:
            _safetensors_fields(unit, read.ckpt)
        return UnitView(None, unit, [read], weights_of(unit, [read]))
    unit = plain_unit(path, ckpt, meta)
    read = FileRead(path, CONTENT_WEIGHTS, ckpt.size_bytes, ckpt.format, ckpt=ckpt)
    return UnitView(None, unit, [read], weights_of(unit, [read]))


def _safetensors_fields(unit: Unit, ckpt: CheckpointFile) -> None:
    """``step``/``epoch`` and numbers from a safetensors ``__metadata__`` (strings, by the format)."""
    from ..formats.safetensors import read_safetensors_header

    try:
        metadata = read_safetensors_header(ckpt.path).metadata
    except (CheckpointError, OSError):
        return
    unit.hparams = dict(metadata) or None
    for key, text in metadata.items():
        try:
            number = float(text) if len(text) < 40 else None
        except ValueError:
            continue
        if number is None or not math.isfinite(number):
            continue
        if key in ("step", "global_step") and number.is_integer():
            unit.step = int(number)
        elif key == "epoch":
            unit.epoch = int(number) if number.is_integer() else number
        else:
            unit.metrics[key] = number


def plain_unit(path: Path, ckpt: CheckpointFile, meta: Any) -> Unit:
    """A file or DCP directory no layout claims, as a unit of its own (for comparing it with one that is)."""
    from ..layouts.base import stat_file

    metrics = {k: v for k, v in (("train_loss", meta.train_loss), ("val_loss", meta.val_loss)) if v is not None}
    files = [] if ckpt.format == "dcp" else [stat_file(path, CONTENT_WEIGHTS)]
    unit = Unit("ckptctl", path.name, path, ckpt.format == "dcp", step=meta.step,
                epoch=meta.epoch, metrics=metrics, hparams=meta.args, files=files)  # fmt: skip
    return unit
