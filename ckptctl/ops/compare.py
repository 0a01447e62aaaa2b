"""``compare`` as data: what changed between two checkpoints, cheaply first, values on request.

The default level reads both files with the safe reader only (pickle + zip directory, no tensor
bytes): metadata deltas, args, top-level keys, the tensor inventory, optimizer hyperparameters, and
the CRC-32 the zip stores for each storage, which tells whether tensor bytes differ without reading
them. ``compare_values`` (``--values``) then loads both with ``torch.load(weights_only=True,
mmap=True)`` — only after the safe reader has accepted both files — and walks tensor by tensor in
fixed-size chunks, releasing mapped pages once compared, so memory stays bounded by the chunk
size rather than the checkpoint size. torch is imported only there.

Some metadata differs between two saves of the same state: the save time, paths, host names,
process ids (:data:`VOLATILE_KEYS`). Those differences are reported as *ignored* and never decide
the verdict, so ``compare --values`` of two runs of a deterministic step says equal (exit 0);
``ignore`` (``--ignore KEY``) adds dotted paths (``args.output_dir``, ``optimizer.param_groups.0.lr``,
``model.head``) whose differences, and everything below them, are ignored the same way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import mmap as mmap_module
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import BadInputError, CheckpointError, CkptctlError
from ..layouts.metadata import Metadata, summarize
from ..formats.container import read_record
from ..formats.reader import CheckpointFile, iter_tensors, read_checkpoint
from .resolve import resolve_target
from .units import TensorSource, UnitView, find_unit, optimizer_of, plain_view
from ..formats.safe_open import open_regular
from ..formats.unpickler import DTYPE_ITEMSIZE, Namespace, NumpyArray, TensorRef
from ..formats.values import jsonable, key_text

FIELDS = ("step", "epoch", "train_loss", "val_loss", "timestamp", "checkpoint_type")
# Metadata that differs between two saves of the same training state: reported, never deciding.
# Each name is ignored as a top-level key and as a key of ``args`` (see ignore_paths).
VOLATILE_KEYS = (
    "timestamp", "saved_at", "save_time", "hostname", "host", "pid",
    "output_dir", "checkpoint_dir", "save_dir", "log_dir", "logging_dir",
)  # fmt: skip
CHUNK_ELEMENTS = 1 << 18  # elements per chunk: 2 MiB per float64 temporary
MADV_DONTNEED = 4  # Linux
TOP_CHANGED = 10

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, tensor name)


@dataclass
class Side:
    """One of the two checkpoints: where it is and what the safe reader made of it.

    For a unit of a layout (``view`` set), ``ckpt`` is its weights' inventory as one flat
    checkpoint (names relative to the model's state dict) and step/epoch come from the layout.
    """

    path: Path
    ckpt: CheckpointFile
    meta: Metadata
    view: UnitView | None = None

    @property
    def step(self) -> int | None:
        return self.view.unit.step if self.view is not None else self.meta.step

    @property
    def epoch(self) -> float | int | None:
        return self.view.unit.epoch if self.view is not None else self.meta.epoch

    @property
    def format(self) -> str:
        return self.ckpt.format

    @property
    def size_bytes(self) -> int:
        return self.view.unit.size_bytes if self.view is not None else self.ckpt.size_bytes

    def to_json(self) -> dict[str, Any]:
        doc = {"path": str(self.path), "format": self.format, "size_bytes": self.size_bytes,
               "step": self.step, "epoch": self.epoch}  # fmt: skip
        if self.view is not None:
            unit = self.view.unit
            doc.update(layout=unit.layout, unit={
                "name": unit.name, "is_directory": unit.is_directory, "metrics": jsonable(unit.metrics),
                "monitor": unit.monitor, "best": unit.best, "complete": unit.complete, "missing": list(unit.missing),
                "files": [f.to_json() for f in self.view.files], "weights_problems": list(self.view.weights.problems),
            })  # fmt: skip
        return doc


@dataclass
class FieldDelta:
    name: str
    a: Any
    b: Any
    delta: float | int | None  # b - a (seconds for timestamps)
    ignored: bool = False  # volatile or --ignore: a difference here does not decide

    @property
    def equal(self) -> bool:
        return _same(self.a, self.b)


@dataclass
class KeyDiff:
    """Keys only in A, only in B, and in both with different values."""

    only_a: dict[str, Any] = field(default_factory=dict)
    only_b: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    ignored: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # differences that do not decide (None: absent)

    @property
    def equal(self) -> bool:
        return not (self.only_a or self.only_b or self.changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "only_a": jsonable(self.only_a),
            "only_b": jsonable(self.only_b),
            "changed": [{"key": k, "a": jsonable(a), "b": jsonable(b)} for k, (a, b) in self.changed.items()],
            "ignored": [{"key": k, "a": jsonable(a), "b": jsonable(b)} for k, (a, b) in self.ignored.items()],
        }


@dataclass
class InventoryDiff:
    """Tensor names, dtypes and shapes; storage bytes compared through their stored CRC-32."""

    count_a: int
    count_b: int
    parameters_a: int
    parameters_b: int
    only_a: dict[str, TensorRef]
    only_b: dict[str, TensorRef]
    changed: dict[str, tuple[TensorRef, TensorRef]]  # dtype or shape differs
    bytes_differ: list[str]  # same dtype and shape, storage CRC-32 differs
    bytes_compared: bool  # False when a file has no CRC-32s (legacy format, checksums off)
    ignored: list[str] = field(default_factory=list)  # tensors that differ under an ignored path

    @property
    def equal(self) -> bool:
        return not (self.only_a or self.only_b or self.changed or self.bytes_differ)

    def to_json(self) -> dict[str, Any]:
        return {
            "count_a": self.count_a,
            "count_b": self.count_b,
            "parameters_a": self.parameters_a,
            "parameters_b": self.parameters_b,
            "parameter_delta": self.parameters_b - self.parameters_a,
            "only_a": [_tensor_json(n, t) for n, t in self.only_a.items()],
            "only_b": [_tensor_json(n, t) for n, t in self.only_b.items()],
            "changed": [{"name": n, "a": _tensor_json(None, a), "b": _tensor_json(None, b)} for n, (a, b) in self.changed.items()],
            "bytes_differ": self.bytes_differ,
            "bytes_compared": self.bytes_compared,
            "ignored": self.ignored,
        }


@dataclass
class OptimizerDiff:
    type_a: str | None
    type_b: str | None
    groups_a: int
    groups_b: int
    changed: list[tuple[int, str, Any, Any]]  # (group index, hyperparameter, a, b)
    ignored: list[tuple[int, str, Any, Any]] = field(default_factory=list)  # under an ignored path

    @property
    def equal(self) -> bool:
        return self.type_a == self.type_b and self.groups_a == self.groups_b and not self.changed

    def to_json(self) -> dict[str, Any]:
        return {
            "type_a": self.type_a,
            "type_b": self.type_b,
            "groups_a": self.groups_a,
            "groups_b": self.groups_b,
            "changed": [{"group": g, "key": k, "a": jsonable(a), "b": jsonable(b)} for g, k, a, b in self.changed],
            "ignored": [{"group": g, "key": k, "a": jsonable(a), "b": jsonable(b)} for g, k, a, b in self.ignored],
        }


@dataclass
class TensorValues:
    """One tensor's value comparison: max |Δ|, ‖Δ‖₂/‖A‖₂, and equality under atol/rtol."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs: float = 0.0
    rel_l2: float = 0.0
    equal: bool = True
    sq_diff: float = 0.0
    sq_a: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "max_abs": _num(self.max_abs),
                "rel_l2": _num(self.rel_l2), "equal": self.equal}  # fmt: skip


@dataclass
class ValuesDiff:
    atol: float
    rtol: float
    tensors: list[TensorValues]
    not_compared: dict[str, str]  # name -> why
    notes: list[str] = field(default_factory=list)

    @property
    def differing(self) -> list[TensorValues]:
        return [t for t in self.tensors if not t.equal]

    @property
    def equal(self) -> bool:
        return not self.differing

    def most_changed_tensors(self, limit: int | None = None) -> list[TensorValues]:
        """Differing tensors, largest relative L2 change first (NaN and inf rank highest)."""
        ranked = sorted(self.differing, key=lambda t: (-_sortable(t.rel_l2), -_sortable(t.max_abs), t.name))
        return ranked[:limit] if limit is not None else ranked

    def most_changed_layers(self, limit: int = TOP_CHANGED) -> list[dict[str, Any]]:
        """Tensors grouped by layer (name minus its last part), ranked by relative L2 change."""
        layers: dict[str, list[TensorValues]] = {}
        for t in self.tensors:
            layers.setdefault(t.name.rpartition(".")[0] or t.name, []).append(t)
        ranked = []
        for layer, items in layers.items():
            sq_diff = sum(t.sq_diff for t in items)
            if sq_diff == 0 and all(t.equal for t in items):
                continue
            ranked.append({"layer": layer, "rel_l2": _rel(sq_diff, sum(t.sq_a for t in items)),
                           "max_abs": max(t.max_abs for t in items), "tensors": len(items)})  # fmt: skip
        ranked.sort(key=lambda r: (-_sortable(r["rel_l2"]), -_sortable(r["max_abs"]), r["layer"]))
        return ranked[:limit]

    def to_json(self) -> dict[str, Any]:
        return {
            "atol": self.atol,
            "rtol": self.rtol,
            "compared": len(self.tensors),
            "differing": len(self.differing),
            "tensors": [t.to_json() for t in self.tensors],
            "not_compared": [{"name": n, "reason": r} for n, r in self.not_compared.items()],
            "most_changed": [{**r, "rel_l2": _num(r["rel_l2"]), "max_abs": _num(r["max_abs"])} for r in self.most_changed_layers()],
            "notes": self.notes,
        }


@dataclass
class Comparison:
    a: Side
    b: Side
    fields: list[FieldDelta]
    args: KeyDiff
    keys: KeyDiff
    tensors: InventoryDiff
    optimizer: OptimizerDiff
    values: ValuesDiff | None = None
    ignore: tuple[str, ...] = ()  # dotted paths whose differences do not decide (ignore_paths)

    @property
    def units(self) -> bool:
        """Two checkpoints of layouts (units): weights compared by name, hparams as ``args``, files as ``keys``."""
        return self.a.view is not None

    @property
    def level(self) -> str:
        return "values" if self.values is not None else "metadata"

    @property
    def equal(self) -> bool:
        """Equal under the chosen level: what the exit code (0 equal, 1 different) reports.

        Differences under an ignored path (volatile metadata, ``--ignore``) are reported, never counted.
        """
        optimizer = self.optimizer.equal or covered("optimizer", self.ignore)
        parts = [all(f.equal or f.ignored for f in self.fields), self.args.equal, self.keys.equal, optimizer]
        if self.values is None:
            parts.append(self.tensors.equal)
        else:  # values supersede the CRC verdict: bytes may differ while values are close enough
            parts += [not (self.tensors.only_a or self.tensors.only_b or self.tensors.changed), self.values.equal]
        return all(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "level": self.level,
            "equal": self.equal,
            "fields": [{"field": f.name, "a": jsonable(f.a), "b": jsonable(f.b), "delta": _num(f.delta),
                        "equal": f.equal, "ignored": f.ignored} for f in self.fields],  # fmt: skip
            "args": self.args.to_json(),
            "keys": self.keys.to_json(),
            "tensors": self.tensors.to_json(),
            "optimizer": self.optimizer.to_json(),
            "values": self.values.to_json() if self.values is not None else None,
            "ignore": list(self.ignore),
            "layouts": [self.a.view.unit.layout, self.b.view.unit.layout] if self.units else None,
            "ignored": [{"key": k, "a": jsonable(a), "b": jsonable(b)} for k, (a, b) in self.ignored_differences().items()],
        }

    def ignored_differences(self) -> dict[str, tuple[Any, Any]]:
        """Every difference that did not decide, by dotted path (None: absent on that side)."""
        found: dict[str, tuple[Any, Any]] = {f.name: (f.a, f.b) for f in self.fields if f.ignored and not f.equal}
        found.update({k: pair for k, pair in self.keys.ignored.items() if k != "args"})  # args: key by key below
        found.update({f"args.{k}": pair for k, pair in self.args.ignored.items()})
        found.update({f"optimizer.param_groups.{g}.{k}": (a, b) for g, k, a, b in self.optimizer.ignored})
        tensors_a, tensors_b = dict(self.a.ckpt.tensors()), dict(self.b.ckpt.tensors())
        found.update({name: (tensors_a.get(name), tensors_b.get(name)) for name in self.tensors.ignored})
        return found


def ignore_paths(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The dotted paths whose differences do not decide: :data:`VOLATILE_KEYS` (top level and in
    ``args``) plus ``extra`` (``--ignore``). BadInputError for an empty path or path part."""
    paths = [*VOLATILE_KEYS, *(f"args.{key}" for key in VOLATILE_KEYS)]
    for path in extra:
        if not path or any(part == "" for part in path.split(".")):
            raise BadInputError(f"--ignore: {path!r} is not a dotted key path (e.g. args.output_dir)")
        paths.append(path)
    return tuple(dict.fromkeys(paths))


def covered(path: str, ignore: Sequence[str]) -> bool:
    """``path`` is an ignored path or lies below one."""
    return any(path == p or path.startswith(p + ".") for p in ignore)


def compare(a: str | os.PathLike[str], b: str | os.PathLike[str], *, ignore: Iterable[str] = ()) -> Comparison:
    """Compare two checkpoints from their pickles only (no tensor bytes are read).

    Differences under :func:`ignore_paths` (volatile metadata plus ``ignore``) are reported as
    ignored and do not make the two different.
    """
    paths = ignore_paths(ignore)
    side_a, side_b = open_side(a), open_side(b)
    if side_a.view is not None or side_b.view is not None:
        return compare_units(as_unit(side_a), as_unit(side_b), paths)
    return Comparison(
        side_a,
        side_b,
        field_deltas(side_a.meta, side_b.meta, paths),
        diff_mappings(side_a.meta.args or {}, side_b.meta.args or {}, paths, prefix="args."),
        diff_mappings(_top_level(side_a.ckpt.root), _top_level(side_b.ckpt.root), paths),
        inventory_diff(side_a, side_b, paths),
        optimizer_diff(side_a.meta, side_b.meta, paths),
        ignore=paths,
    )


def open_side(target: str | os.PathLike[str]) -> Side:
    """Read one side safely. A path that is not there is bad input (exit 2); a file that is there but
    cannot be read as a checkpoint (damaged, unsafe) is a finding about it (CheckpointError, exit 1), as
    in inspect and validate (docs/exit-codes.md).

    A unit of a layout (``checkpoint-500/``, ``x.ckpt``, ``global_step10/``, ``model.safetensors``)
    is read as one: its files through their safe readers, its weights inventoried.
    """
    found = find_unit(target) or _newest_unit_of_run(target)
    if found is not None or (str(target).lower().endswith(".safetensors") and Path(target).is_file()):
        view = view_of_checked(*found) if found is not None else _checked(plain_view(Path(target)))
        return Side(view.unit.path, view.weights.ckpt, summarize(view.weights.ckpt), view)
    try:
        path = resolve_target(str(target)).path
        ckpt = read_checkpoint(path)
    except BadInputError:
        raise
    except CheckpointError as exc:
        raise _finding(f"{target}: {exc.status}: {exc}", exc.status) from None
    except CkptctlError as exc:
        status = getattr(exc, "status", None)
        raise BadInputError(f"{target}: {status + ': ' if status else ''}{exc}") from None
    return Side(path, ckpt, summarize(ckpt))


def _finding(message: str, status: str) -> CheckpointError:
    """A side that cannot be read as a checkpoint: exit 1, its verdict (``unsafe``, ``unreadable``) kept."""
    error = CheckpointError(message)
    error.status = status
    return error


def _newest_unit_of_run(target: str | os.PathLike[str]) -> Any:
    """A run directory of a layout (``output_dir/`` of HF, ``deepspeed/``): its newest complete unit,
    as a directory argument means for ckptctl's own layout (where to resume). None otherwise."""
    from ..formats.dcp import looks_like_dcp
    from ..layouts import registry
    from ..layouts.catalog import is_native

    path = Path(target)
    if not path.is_dir() or looks_like_dcp(path) or is_native(path):
        return None
    layout = registry.detect(path)
    if layout is None:
        return None
    try:
        units = layout.units(path)
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    complete = [u for u in units if u.complete and u.step is not None]
    if not complete:
        raise BadInputError(f"no complete {layout.title} checkpoint in {path}")
    return layout, max(complete, key=lambda u: (u.step, u.name))


def view_of_checked(layout, unit) -> UnitView:
    from .units import view_of

    return _checked(view_of(layout, unit))


def _checked(view: UnitView) -> UnitView:
    """A unit whose files the safe readers refuse, or whose weights cannot be read, is a finding (exit 1)."""
    status = view.status
    if status in ("unsafe", "unreadable"):
        raise _finding(f"{view.unit.path}: {status}: {view.error}", status)
    if view.weights.problems and not view.weights.ckpt.root:
        raise _finding(f"{view.unit.path}: no readable weights: {'; '.join(view.weights.problems[:3])}", "unreadable")
    if not view.weights.ckpt.root and not view.unit.complete:
        raise _finding(f"{view.unit.path}: {view.error}", "incomplete")
    return view


def as_unit(side: Side) -> Side:
    """A native file or DCP directory as a unit of its own, to compare it with a unit of a layout."""
    if side.view is not None:
        return side
    view = plain_view(side.path, side.ckpt, side.meta)
    return Side(side.path, view.weights.ckpt, summarize(view.weights.ckpt), view)


UNIT_FIELDS = ("step", "epoch")


def compare_units(a: Side, b: Side, paths: tuple[str, ...]) -> Comparison:
    """Two units: step, epoch and every metric as fields, hparams as ``args``, file names as
    ``keys``, the weights' inventories as ``tensors``, optimizer hyperparameters."""
    ua, ub = a.view.unit, b.view.unit  # type: ignore[union-attr]
    fields = [FieldDelta(name, getattr(ua, name), getattr(ub, name), _delta(getattr(ua, name), getattr(ub, name)),
                         covered(name, paths)) for name in UNIT_FIELDS]  # fmt: skip
    for name in dict.fromkeys([*ua.metrics, *ub.metrics]):
        va, vb = ua.metrics.get(name), ub.metrics.get(name)
        fields.append(FieldDelta(f"metrics.{name}", va, vb, _delta(va, vb), covered(f"metrics.{name}", paths)))
    files_a = {f.path.name: f.content for f in a.view.files} if a.view.unit.is_directory else {}  # type: ignore[union-attr]
    files_b = {f.path.name: f.content for f in b.view.files} if b.view.unit.is_directory else {}  # type: ignore[union-attr]
    return Comparison(
        a, b, fields,
        diff_mappings(_hparams(ua.hparams), _hparams(ub.hparams), paths, prefix="args."),
        diff_mappings(files_a, files_b, paths),
        inventory_diff(a, b, paths),
        _optimizer_diff(optimizer_of(a.view), optimizer_of(b.view), paths),  # type: ignore[arg-type]
        ignore=paths,
    )  # fmt: skip


def _hparams(value: Any) -> dict[str, Any]:
    if isinstance(value, Namespace):
        return {key_text(k): v for k, v in value.attrs.items()}
    if isinstance(value, dict):
        return {key_text(k): v for k, v in value.items()}
    if value is None:
        return {}
    attrs = getattr(value, "fields", None) or getattr(value, "attrs", None)  # an inert record
    return {key_text(k): v for k, v in attrs.items()} if isinstance(attrs, dict) else {"<hparams>": value}


def _top_level(root: Any) -> dict[str, Any]:
    return {key_text(k): v for k, v in root.items()} if isinstance(root, dict) else {"<root>": root}


def field_deltas(a: Metadata, b: Metadata, ignore: Sequence[str] = ()) -> list[FieldDelta]:
    deltas = []
    for name in FIELDS:
        va, vb = getattr(a, name), getattr(b, name)
        deltas.append(FieldDelta(name, va, vb, _delta(va, vb), covered(name, ignore)))
    return deltas


def _delta(a: Any, b: Any) -> float | int | None:
    if isinstance(a, datetime) and isinstance(b, datetime):
        return (b - a).total_seconds()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return b - a
    return None


def diff_mappings(a: dict[str, Any], b: dict[str, Any], ignore: Sequence[str] = (), prefix: str = "") -> KeyDiff:
    """Key-by-key diff of two inert mappings (tensors compare by dtype and shape here).

    A difference at or below an ``ignore`` path (``prefix`` + key, dotted) goes to ``ignored``:
    a key whose values differ only in ignored parts (``dataloader_state.worker_pid``) is not changed.
    """
    diff = KeyDiff()
    for key in dict.fromkeys([*a, *b]):
        path = prefix + key
        va, vb = a.get(key), b.get(key)
        if key in a and key in b and _same(va, vb):
            continue
        if covered(path, ignore) or (key in a and key in b and _same_outside(va, vb, _below(path, ignore))):
            diff.ignored[key] = (va, vb)
        elif key not in b:
            diff.only_a[key] = va
        elif key not in a:
            diff.only_b[key] = vb
        else:
            diff.changed[key] = (va, vb)
    return diff


def _below(path: str, ignore: Sequence[str]) -> list[tuple[str, ...]]:
    """The ignored paths strictly inside ``path``, as their remaining parts."""
    return [tuple(p[len(path) + 1 :].split(".")) for p in ignore if p.startswith(path + ".")]


def _same_outside(a: Any, b: Any, inside: list[tuple[str, ...]]) -> bool:
    """Equal once the ``inside`` paths are removed from both (False when nothing is ignored inside)."""
    return bool(inside) and _same(_without(a, inside), _without(b, inside))


def _without(value: Any, paths: list[tuple[str, ...]]) -> Any:
    """A copy of an inert value with the parts at ``paths`` (key or index parts) left out."""
    if not paths:
        return value
    here = {p[0] for p in paths if len(p) == 1}
    deeper: dict[str, list[tuple[str, ...]]] = {}
    for p in paths:
        if len(p) > 1:
            deeper.setdefault(p[0], []).append(p[1:])
    if isinstance(value, Namespace):
        return ("Namespace", _without(dict(value.attrs), paths))  # stays unequal to a plain dict
    if isinstance(value, dict):
        return {k: _without(v, deeper.get(str(k), [])) for k, v in value.items() if str(k) not in here}
    if isinstance(value, (list, tuple)):
        items = [_without(v, deeper.get(str(i), [])) for i, v in enumerate(value) if str(i) not in here]
        return (type(value).__name__, items)
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality of inert values: NaN equals NaN, tensors by dtype/shape, numpy arrays by bytes."""
    if isinstance(a, TensorRef) or isinstance(b, TensorRef):
        return isinstance(a, TensorRef) and isinstance(b, TensorRef) and (a.dtype, a.shape) == (b.dtype, b.shape)
    if isinstance(a, NumpyArray) or isinstance(b, NumpyArray):
        return isinstance(a, NumpyArray) and isinstance(b, NumpyArray) and (a.dtype, a.shape, a.raw) == (b.dtype, b.shape, b.raw)
    if isinstance(a, Namespace) and isinstance(b, Namespace):
        return _same(a.attrs, b.attrs)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def inventory_diff(a: Side, b: Side, ignore: Sequence[str] = ()) -> InventoryDiff:
    """Tensors by name; a difference in a tensor under an ``ignore`` path goes to ``ignored``."""
    tensors_a, tensors_b = dict(a.ckpt.tensors()), dict(b.ckpt.tensors())
    changed, bytes_differ, ignored = {}, [], []
    bytes_compared = _has_crcs(a.ckpt) and _has_crcs(b.ckpt)
    for name, ta in tensors_a.items():
        tb = tensors_b.get(name)
        if tb is None:
            continue
        if (ta.dtype, ta.shape) != (tb.dtype, tb.shape):
            changed[name] = (ta, tb)
        elif bytes_compared and not _same_bytes(a.ckpt, ta, b.ckpt, tb):
            bytes_differ.append(name)
    only_a = {n: t for n, t in tensors_a.items() if n not in tensors_b}
    only_b = {n: t for n, t in tensors_b.items() if n not in tensors_a}
    for name in [*only_a, *only_b, *changed, *bytes_differ]:
        if covered(name, ignore):
            ignored.append(name)
    only_a, only_b, changed = ({n: t for n, t in d.items() if n not in ignored} for d in (only_a, only_b, changed))
    bytes_differ = [n for n in bytes_differ if n not in ignored]
    return InventoryDiff(
        len(tensors_a), len(tensors_b), _parameters(a.meta), _parameters(b.meta),
        only_a, only_b, changed, bytes_differ, bytes_compared, ignored,
    )  # fmt: skip


def _has_crcs(ckpt: CheckpointFile) -> bool:
    return ckpt.container is not None and ckpt.container.has_checksums


def _same_bytes(ckpt_a: CheckpointFile, ta: TensorRef, ckpt_b: CheckpointFile, tb: TensorRef) -> bool:
    """Same storage bytes (by size and stored CRC-32) and the same view into them."""
    span_a, span_b = ckpt_a.spans[ta.storage.key], ckpt_b.spans[tb.storage.key]
    return (span_a.size, span_a.crc32, ta.offset, ta.stride) == (span_b.size, span_b.crc32, tb.offset, tb.stride)


def _parameters(meta: Metadata) -> int:
    return (meta.model or meta.all_tensors).parameter_count


def optimizer_diff(a: Metadata, b: Metadata, ignore: Sequence[str] = ()) -> OptimizerDiff:
    return _optimizer_diff(a.optimizer, b.optimizer, ignore)


def _optimizer_diff(opt_a: Any, opt_b: Any, ignore: Sequence[str] = ()) -> OptimizerDiff:
    groups_a = opt_a.param_groups if opt_a else []
    groups_b = opt_b.param_groups if opt_b else []
    changed, ignored = [], []
    for index, (ga, gb) in enumerate(zip(groups_a, groups_b)):
        for key in dict.fromkeys([*ga, *gb]):
            if not _same(ga.get(key), gb.get(key)):
                ignore_it = covered(f"optimizer.param_groups.{index}.{key}", ignore)
                (ignored if ignore_it else changed).append((index, key, ga.get(key), gb.get(key)))
    return OptimizerDiff(
        opt_a.type if opt_a else None, opt_b.type if opt_b else None,
        len(groups_a), len(groups_b), changed, ignored,
    )  # fmt: skip


def compare_values(
    comparison: Comparison,
    atol: float = 0.0,
    rtol: float = 0.0,
    progress: Progress | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> ValuesDiff:
    """Compare every shared tensor's values (both sides already accepted by the safe readers).

    Where the values come from, per tensor (:class:`~ckptctl.ops.units.TensorSource`): a torch
    zip through ``torch.load(weights_only=True, mmap=True)`` (pages released as compared); a
    safetensors file through its checked header's offsets, ``chunk_elements`` at a time (our own
    reads, no pickle, no ``safetensors`` package); a DCP directory through
    ``torch.distributed.checkpoint.load`` (one process, no process group) into tensors built from
    the safe ``.metadata`` inventory, a group of at most :data:`DCP_GROUP_BYTES` per side at a time
    (one tensor when it is larger), with ``.metadata`` unpickled under an exact allowlist.

    ``progress(done, total, name)`` gets the total (:func:`value_bytes`) before anything is read, then
    the running count of bytes read from both sides, per chunk pair (see :class:`_Meter`).
    """
    if atol < 0 or rtol < 0 or not (math.isfinite(atol) and math.isfinite(rtol)):
        raise BadInputError("--atol and --rtol must be finite and >= 0")
    in_a, in_b, shared, wanted = _value_plan(comparison)
    result = ValuesDiff(atol, rtol, [], {n: "dtype or shape differs" for n in comparison.tensors.changed})
    result.not_compared.update({n: "ignored" for n in shared if n not in wanted})
    reader_a, reader_b = _ValueReader(comparison.a), _ValueReader(comparison.b)
    with _one_torch_thread():
        meter = _Meter(progress, sum(in_a[n].nbytes + in_b[n].nbytes for n in wanted))
        for group in _groups(wanted, in_b, DCP_GROUP_BYTES):
            reader_a.prepare(group, in_a, result)
            reader_b.prepare(group, in_b, result)
            for name in group:
                meter.start(name, in_a[name].nbytes + in_b[name].nbytes)
                if name not in result.not_compared:
                    _compare_one(name, reader_a, reader_b, in_a[name], in_b[name], result, chunk_elements, meter)
                meter.finish()
            reader_a.drop()
            reader_b.drop()
    result.notes += reader_a.notes + reader_b.notes
    comparison.values = result
    return result


def value_bytes(comparison: Comparison) -> int:
    """The tensor bytes ``compare_values`` will read, both sides: its progress total, known from the
    safe readers' inventories before any value is loaded."""
    in_a, in_b, _shared, wanted = _value_plan(comparison)
    return sum(in_a[n].nbytes + in_b[n].nbytes for n in wanted)


def _value_plan(comparison: Comparison) -> tuple[dict[str, TensorRef], dict[str, TensorRef], list[str], list[str]]:
    """Both inventories, the tensors in both with one dtype and shape, and those not ignored."""
    in_a, in_b = dict(comparison.a.ckpt.tensors()), dict(comparison.b.ckpt.tensors())
    shared = [n for n in in_a if n in in_b and n not in comparison.tensors.changed]
    return in_a, in_b, shared, [n for n in shared if not covered(n, comparison.ignore)]


class _Meter:
    """``progress(done, total, name)`` as bytes are compared: once with ``done = 0`` before anything is
    read, then per chunk pair (the bytes just read from both sides), then at the end of each tensor
    (a tensor not compared counts as done). ``done`` never decreases and ends exactly at ``total``:
    each tensor's chunks are capped at its own bytes."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total = progress, total
        self.done = self.base = self.end = 0
        self.name = ""
        if progress is not None:
            progress(0, total, "")

    def start(self, name: str, nbytes: int) -> None:
        self.name, self.base, self.end = name, self.done, self.done + nbytes

    def chunk(self, nbytes: int) -> None:
        if self.progress is not None and nbytes > 0 and self.done < self.end:
            self.done = min(self.end, self.done + nbytes)
            self.progress(self.done, self.total, self.name)

    def finish(self) -> None:
        if self.done < self.end:
            self.done = self.end
            if self.progress is not None:
                self.progress(self.done, self.total, self.name)


DCP_GROUP_BYTES = 64 * 1024 * 1024  # tensors loaded from a DCP directory at once, per side


def _groups(names: list[str], refs: dict[str, TensorRef], limit: int) -> Iterator[list[str]]:
    group: list[str] = []
    size = 0
    for name in names:
        nbytes = refs[name].nbytes
        if group and size + nbytes > limit:
            yield group
            group, size = [], 0
        group.append(name)
        size += nbytes
    if group:
        yield group


class _NotCompared(Exception):
    """A tensor whose values cannot be compared; the message says why."""


def _compare_one(name: str, reader_a: "_ValueReader", reader_b: "_ValueReader", ref_a: TensorRef, ref_b: TensorRef,
                 result: ValuesDiff, chunk_elements: int, meter: _Meter) -> None:  # fmt: skip
    """Compare one tensor into ``result``, chunk by chunk from both readers (each pair's bytes to ``meter``)."""

    def done_with(xa: Any, xb: Any) -> None:
        reader_a.release(name, xa)
        reader_b.release(name, xb)
        meter.chunk(xa.numel() * xa.element_size() + xb.numel() * xb.element_size())

    try:
        pairs = zip(reader_a.chunks(name, ref_a, chunk_elements), reader_b.chunks(name, ref_b, chunk_elements))
        result.tensors.append(chunked_values(name, ref_a.dtype, tuple(ref_a.shape), pairs, result.atol, result.rtol, done_with))
    except _NotCompared as exc:
        result.not_compared[name] = str(exc)
    except (RuntimeError, TypeError) as exc:  # dtypes torch cannot widen (quantized, ...)
        result.not_compared[name] = f"cannot compare {ref_a.dtype}: {_first_line(exc)}"
    finally:
        reader_a.finish(name)
        reader_b.finish(name)


class _ValueReader:
    """Where one side's tensor values come from, opened lazily per file."""

    def __init__(self, side: Side):
        self.side = side
        self.notes: list[str] = []
        self.torch_files: dict[Path, _LoadedFile] = {}
        self.safetensors: dict[Path, int] = {}
        self.dcp: dict[Path, _DcpDirectory] = {}
        self.loaded: dict[str, Any] = {}  # DCP tensors of the current group

    def source(self, name: str, ref: TensorRef) -> TensorSource:
        view = self.side.view
        if view is not None:
            return view.weights.sources[name]
        if self.side.ckpt.format == "dcp":
            return TensorSource("dcp", self.side.path, ref.storage.key)
        return TensorSource("torch", self.side.path, name)

    def _file_ckpt(self, path: Path) -> CheckpointFile:
        view = self.side.view
        if view is None:
            return self.side.ckpt
        return next(f.ckpt for f in view.files if f.ckpt is not None and f.ckpt.path == path)

    def prepare(self, group: list[str], refs: dict[str, TensorRef], result: ValuesDiff) -> None:
        """Load the group's DCP tensors (one ``dcp.load`` per directory); others are read as compared."""
        by_dir: dict[Path, dict[str, tuple[str, TensorRef]]] = {}
        for name in group:
            source = self.source(name, refs[name])
            if source.kind == "dcp":
                by_dir.setdefault(source.path, {})[name] = (source.key, refs[name])
        for path, items in by_dir.items():
            if path not in self.dcp:
                self.dcp[path] = _DcpDirectory(path, self._file_ckpt(path))
            loaded, refused = self.dcp[path].load(items)
            self.loaded.update(loaded)
            result.not_compared.update(refused)

    def drop(self) -> None:
        self.loaded.clear()

    def chunks(self, name: str, ref: TensorRef, chunk: int) -> Iterator[Any]:
        source = self.source(name, ref)
        if source.kind == "safetensors":
            yield from self._safetensors_chunks(source, ref, chunk)
            return
        if source.kind == "dcp":
            tensor = self.loaded.get(name)
        else:
            if source.path not in self.torch_files:
                self.torch_files[source.path] = _LoadedFile(source.path, self._file_ckpt(source.path))
                self.notes += self.torch_files[source.path].notes
            tensor = self.torch_files[source.path].tensors.get(source.key)
        if tensor is None:
            raise _NotCompared("not found in torch.load's result")
        if tuple(tensor.shape) != tuple(ref.shape) or str(tensor.dtype).removeprefix("torch.") != ref.dtype:
            raise _NotCompared("torch.load's tensor differs from the safe reader's inventory")
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), chunk):
            yield flat[start : start + chunk]

    def _safetensors_chunks(self, source: TensorSource, ref: TensorRef, chunk: int) -> Iterator[Any]:
        import torch

        if sys.byteorder != "little" and DTYPE_ITEMSIZE[ref.dtype] > 1:
            raise _NotCompared("safetensors data is little-endian; this machine is not")
        dtype = getattr(torch, ref.dtype, None)
        if dtype is None:
            raise _NotCompared(f"torch has no dtype {ref.dtype}")
        fd = self.safetensors.get(source.path)
        if fd is None:
            with open_regular(source.path) as fh:
                fd = self.safetensors[source.path] = os.dup(fh.fileno())
        itemsize = DTYPE_ITEMSIZE[ref.dtype]
        step = chunk * itemsize
        for start in range(0, source.nbytes, step):
            want = min(step, source.nbytes - start)
            data = os.pread(fd, want, source.offset + start)
            if len(data) != want:
                raise _NotCompared(f"{source.path.name}: short read (the file changed since its header was checked)")
            yield torch.frombuffer(bytearray(data), dtype=dtype)

    def release(self, name: str, chunk: Any) -> None:
        for loaded in self.torch_files.values():
            loaded.release(chunk)

    def finish(self, name: str) -> None:
        self.loaded.pop(name, None)

    def __del__(self) -> None:
        for fd in self.safetensors.values():
            try:
                os.close(fd)
            except OSError:
                pass


class _DcpDirectory:
    """A DCP directory's tensors through ``torch.distributed.checkpoint.load``, after the safe reader.

    ``.metadata`` is unpickled again by DCP's reader, here under an exact allowlist of DCP's own
    classes (:data:`DCP_METADATA_GLOBALS`) instead of ``pickle.load``; only tensor items are
    requested (DCP reads them with ``torch.load(weights_only=True)``), never the bytes items
    (which torch's planner loads with ``weights_only=False``).
    """

    def __init__(self, path: Path, ckpt: CheckpointFile):
        self.path = path
        self.stored_bytes = ckpt.size_bytes
        self.metadata: Any = None

    def load(self, items: dict[str, tuple[str, TensorRef]]) -> tuple[dict[str, Any], dict[str, str]]:
        import warnings

        import torch
        import torch.distributed.checkpoint as dcp

        refused = {}
        state: dict[str, Any] = {}
        names: dict[str, str] = {}
        for name, (fqn, ref) in items.items():
            dtype = getattr(torch, ref.dtype, None)
            if dtype is None:
                refused[name] = f"torch has no dtype {ref.dtype}"
            elif ref.nbytes > self.stored_bytes:  # a .metadata declaring more than the shards hold
                refused[name] = f"declares {ref.nbytes:,} bytes, more than the directory's {self.stored_bytes:,}"
            else:
                state[fqn] = torch.empty(ref.shape, dtype=dtype)
                names[fqn] = name
        if not state:
            return {}, refused
        disabled = logging.root.manager.disable
        logging.disable(logging.CRITICAL)  # DCP logs a failed rank's traceback on the root logger
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process"
                dcp.load(state, storage_reader=_restricted_reader(self))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # DCP's CheckpointException is a BaseException wrapping the rank's error
            why = f"torch.distributed.checkpoint.load failed: {_dcp_reason(exc)}"
            return {}, {**refused, **{name: why for name in names.values()}}
        finally:
            logging.disable(disabled)
        return {names[fqn]: tensor for fqn, tensor in state.items()}, refused


def _dcp_reason(exc: BaseException) -> str:
    """The rank's own error inside DCP's CheckpointException, in one line."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        inner = inner[0] if isinstance(inner, tuple) and inner else inner
        if isinstance(inner, BaseException):
            return _first_line(inner)
    return _first_line(exc)  # type: ignore[arg-type]


DCP_METADATA_GLOBALS = frozenset({
    *(f"torch.distributed.checkpoint.metadata.{name}" for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")),
    "torch.distributed.checkpoint.filesystem._StorageInfo", "torch.serialization._get_layout", "torch.Size",
    "pathlib.PosixPath", "pathlib.PurePosixPath", "pathlib._local.PosixPath", "pathlib._local.PurePosixPath",
    "collections.OrderedDict",
    *(f"torch.{name}" for name in DTYPE_ITEMSIZE),
})  # fmt: skip


def _restricted_reader(directory: _DcpDirectory) -> Any:
    """A ``FileSystemReader`` whose ``read_metadata`` unpickles under :data:`DCP_METADATA_GLOBALS`
    (once per directory) instead of ``pickle.load``."""
    import pickle

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if f"{module}.{name}" not in DCP_METADATA_GLOBALS:
                raise pickle.UnpicklingError(f"refused {module}.{name}")
            return super().find_class(module, name)

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if directory.metadata is None:
                with open_regular(directory.path / ".metadata") as fh:
                    directory.metadata = Restricted(fh).load()
            metadata = directory.metadata
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(directory.path)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Chunks are small and memory-bound: one thread is as fast, and does not stall when the machine
    is busy (two intra-op threads on two shared cores ran 30x slower in the benchmark)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _LoadedFile:
    """One side loaded by ``torch.load(weights_only=True)``, memory-mapped when the format allows.

    Pages of a mapped file that have been compared are handed back to the kernel (``madvise``
    ``MADV_DONTNEED``; they are re-read from the file if touched again), so resident memory does not
    grow to the file's size. Only ranges inside this file's own mapping (found by device and inode
    in ``/proc/self/maps``) are ever released, and only when torch did not byte-swap the storages.
    """

    def __init__(self, path: "Path | Side", ckpt: CheckpointFile | None = None):
        import torch

        if isinstance(path, Side):  # one file of the two being compared
            path, ckpt = path.path, path.ckpt
        assert ckpt is not None
        self.notes: list[str] = []
        self.mmap = ckpt.format == "zip"
        if not self.mmap:
            self.notes.append(f"{path.name}: legacy format, loaded into memory (torch cannot memory-map it)")
        self.root = _torch_load(path, self.mmap)
        self.tensors = dict(iter_tensors(self.root, torch.is_tensor))
        self.ranges = _mapped_ranges(path) if self.mmap and _native_byteorder(ckpt) else []

    def release(self, tensor: Any) -> None:
        """Drop the mapped pages under ``tensor`` (a whole tensor or a chunk view of one)."""
        if not self.ranges:
            return
        if tensor.is_contiguous():
            start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()
        else:
            storage = tensor.untyped_storage()
            start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        for low, high in self.ranges:
            if low <= start and end <= high:
                page = mmap_module.PAGESIZE
                first, last = max(low, start - start % page), min(high, -(-end // page) * page)
                _madvise_dontneed(first, last - first)
                return


def _torch_load(path: Path, mmap: bool) -> Any:
    """``torch.load`` with weights_only and the layout's scoped allowlist; the safe reader ran first."""
    import torch

    from ..formats.torch_load import safe_globals

    try:
        with safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # weights_only refusals and damage surface as many exception types
        raise BadInputError(f"{path}: torch.load(weights_only=True) failed: {_first_line(exc)}") from None


def _native_byteorder(ckpt: CheckpointFile) -> bool:
    """torch byte-swaps (writes into) storages of a foreign-endian file; never release those pages."""
    record = ckpt.container.records.get("byteorder") if ckpt.container else None
    if record is None:
        return sys.byteorder == "little"
    with open_regular(ckpt.path) as fh:
        return read_record(fh, record, limit=16).decode("ascii", "replace").strip() == sys.byteorder


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges mapping ``path`` into this process (Linux ``/proc/self/maps``); [] elsewhere."""
    try:
        info = os.stat(path)
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 5 or ":" not in parts[3]:
            continue
        major, minor = (int(x, 16) for x in parts[3].split(":"))
        if int(parts[4]) == info.st_ino and os.makedev(major, minor) == info.st_dev:
            low, high = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((low, high))
    return ranges


def _madvise_dontneed(address: int, length: int) -> None:
    import ctypes

    libc = _libc()
    if libc is not None and length > 0:
        libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), MADV_DONTNEED)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None


def tensor_values(
    name: str, a: Any, b: Any, atol: float, rtol: float, chunk: int = CHUNK_ELEMENTS,
    done_with: Callable[[Any, Any], Any] | None = None,
) -> TensorValues:  # fmt: skip
    """max |Δ|, relative L2 change and equality of two same-shape tensors, chunk by chunk.

    Every chunk is widened to float64 (complex128 for complex), so temporaries stay a few times
    ``chunk`` elements whatever the tensor's size; ``done_with(chunk_a, chunk_b)`` lets the caller
    drop each chunk's mapped pages. NaN equals NaN; ``atol = rtol = 0`` is exact.
    """
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    pairs = ((flat_a[s : s + chunk], flat_b[s : s + chunk]) for s in range(0, flat_a.numel(), chunk))
    return chunked_values(name, str(a.dtype).removeprefix("torch."), tuple(a.shape), pairs, atol, rtol, done_with)


def chunked_values(
    name: str, dtype: str, shape: tuple[int, ...], pairs: Iterable[tuple[Any, Any]], atol: float, rtol: float,
    done_with: Callable[[Any, Any], Any] | None = None,
) -> TensorValues:  # fmt: skip
    """:func:`tensor_values` over aligned 1-D chunk pairs (from any reader: mapped zip, safetensors, DCP)."""
    import torch

    result = TensorValues(name, dtype, shape)
    for xa, xb in pairs:
        wide = torch.complex128 if (xa.is_complex() or xb.is_complex()) else torch.float64
        exact_ints = xa.dtype == xb.dtype and not (xa.is_floating_point() or xa.is_complex())
        equal, max_abs, sq_diff, sq_a = _chunk_stats(xa, xb, wide, atol, rtol, exact_ints)
        result.equal = result.equal and equal
        result.max_abs = _nan_max(result.max_abs, max_abs)
        result.sq_diff += sq_diff
        result.sq_a += sq_a
        if done_with is not None:
            done_with(xa, xb)
    result.rel_l2 = _rel(result.sq_diff, result.sq_a)
    return result


def _chunk_stats(xa: Any, xb: Any, wide: Any, atol: float, rtol: float, exact_ints: bool) -> tuple[bool, float, float, float]:
    """(equal, max |Δ|, Σ|Δ|², Σ|a|²) of one chunk; identical chunks (the common case) cost one memcmp."""
    import torch

    x = xa.to(wide)
    sq_a = float(torch.vdot(x, x).real)
    if torch.equal(xa, xb):
        return True, 0.0, 0.0, sq_a
    y = xb.to(wide)
    diff = (x - y).abs()
    max_abs = float(diff.max())
    if not math.isfinite(max_abs):  # NaN or inf present: NaN equals NaN, inf equals inf of the same sign
        same = (x == y) | (torch.isnan(x) & torch.isnan(y))
        diff = torch.where(same, 0.0, diff)
        max_abs = float(diff.max())
    sq_diff = float(torch.dot(diff, diff))
    if atol == rtol == 0:
        equal = max_abs == 0 and not (exact_ints and xa.dtype == xb.dtype)  # ints: torch.equal was exact
    else:
        equal = bool(torch.isclose(x, y, rtol, atol, equal_nan=True).all())
    return equal, max_abs, sq_diff, sq_a


def _nan_max(current: float, new: float) -> float:
    if math.isnan(current) or math.isnan(new):
        return math.nan
    return max(current, new)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _tensor_json(name: str | None, t: TensorRef) -> dict[str, Any]:
    doc = {"dtype": t.dtype, "shape": list(t.shape)}
    return {"name": name, **doc} if name is not None else doc


def _rel(sq_diff: float, sq_a: float) -> float:
    if sq_diff == 0:
        return 0.0
    return math.sqrt(sq_diff / sq_a) if sq_a > 0 else math.inf


def _sortable(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _num(x: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite floats as strings."""
    return str(x) if isinstance(x, float) and not math.isfinite(x) else x
