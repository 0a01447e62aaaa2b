"""What a person wants to know about a checkpoint, distilled from its inert object graph.

The checkpoint dict of the layout is ``step, epoch, model, optimizer, train_loss, val_loss,
rng_state{...}, dataloader_state{...}, args{...}, timestamp, checkpoint_type``; unknown extra keys
are kept and shown. Everything here works on the placeholders from :mod:`ckptctl.formats.unpickler`;
losses saved as one-element tensors (``train_loss=loss``) are numbers, read by :mod:`ckptctl.formats.scalars`.
"""

from __future__ import annotations

import functools
import math
import struct
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from ..formats.bounded import bounded_str
from ..formats.reader import CheckpointFile
from ..formats.scalars import is_scalar, read_scalars
from ..formats.unpickler import Namespace, NumpyArray, TensorRef

KNOWN_KEYS = (
    "step", "epoch", "model", "optimizer", "train_loss", "val_loss", "rng_state",
    "dataloader_state", "args", "timestamp", "checkpoint_type",
)  # fmt: skip
LOSS_FIELDS = ("train_loss", "val_loss")  # read as numbers from one-element tensors for every file
MAX_EXTRA_SCALARS = 8  # other top-level one-element tensors read as numbers (``best_metric``), per file
OPTIMIZER_HYPERPARAMS = ("lr", "betas", "momentum", "weight_decay", "eps", "dampening", "nesterov", "amsgrad")


@dataclass
class TensorGroupSummary:
    """Counts for a group of tensors (a model's state dict, an optimizer's state)."""

    tensor_count: int = 0
    parameter_count: int = 0  # elements of distinct tensors (tied weights counted once)
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())


@dataclass
class OptimizerSummary:
    type: str | None
    param_groups: list[dict[str, Any]]
    state_entries: int
    tensors: TensorGroupSummary


@dataclass
class Metadata:
    """The layout's fields (None where absent or not a plain value), plus summaries.

    The tensor summaries (``model``, ``optimizer``, ``all_tensors``) are computed on first use:
    ``list`` needs only the scalar fields of every file, ``inspect`` the summaries of one.
    """

    step: int | None
    epoch: int | None
    train_loss: float | None
    val_loss: float | None
    timestamp: datetime | None
    checkpoint_type: str | None
    args: dict[str, Any] | None
    dataloader_state: Any
    rng_states: list[str]
    extra_keys: list[str]
    root: Any = field(repr=False, compare=False)
    ckpt: CheckpointFile | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def extra_numbers(self) -> dict[str, float | int]:
        """Other top-level keys holding a one-element tensor (``best_metric``), as numbers.

        Read on first use (``inspect``, not ``list``), for at most :data:`MAX_EXTRA_SCALARS` keys.
        """
        if self.ckpt is None or not isinstance(self.root, dict):
            return {}
        candidates = [key for key in self.extra_keys if is_scalar(self.root.get(key))][:MAX_EXTRA_SCALARS]
        return read_scalars(self.ckpt, {key: self.root[key] for key in candidates})

    @functools.cached_property
    def model(self) -> TensorGroupSummary | None:
        model = self.root.get("model") if isinstance(self.root, dict) else None
        return tensor_summary(model) if isinstance(model, dict) else None

    @functools.cached_property
    def optimizer(self) -> OptimizerSummary | None:
        return optimizer_summary(self.root.get("optimizer")) if isinstance(self.root, dict) else None

    @functools.cached_property
    def all_tensors(self) -> TensorGroupSummary:
        return tensor_summary(self.root)


def summarize(ckpt: CheckpointFile) -> Metadata:
    """Distil ``ckpt.root`` into :class:`Metadata`; tolerant of any shape of root object."""
    root = ckpt.root if isinstance(ckpt.root, dict) else {}
    rng = root.get("rng_state")
    losses = {key: root.get(key) for key in LOSS_FIELDS}
    losses.update(read_scalars(ckpt, losses))  # a tensor loss: its value (a few bytes read)
    return Metadata(
        step=as_int(root.get("step")),
        epoch=as_int(root.get("epoch")),
        train_loss=as_float(losses["train_loss"]),
        val_loss=as_float(losses["val_loss"]),
        timestamp=as_datetime(root.get("timestamp")),
        checkpoint_type=root.get("checkpoint_type") if isinstance(root.get("checkpoint_type"), str) else None,
        args=args_dict(root.get("args")),
        dataloader_state=root.get("dataloader_state"),
        rng_states=sorted(_key(k) for k, v in rng.items() if v is not None) if isinstance(rng, dict) else [],
        extra_keys=[_key(k) for k in root if k not in KNOWN_KEYS],
        root=ckpt.root,
        ckpt=ckpt,
    )


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _key(key: Any) -> str:
    """A key from the file as text, bounded (a tuple key can be nested 60 deep with shared halves)."""
    return key if type(key) is str else bounded_str(key, 200)


def as_int(value: Any) -> int | None:
    """A step/epoch as an int64, else None: ``10**5000`` is no step (and cannot even be printed)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value) if INT64_MIN <= value <= INT64_MAX else None
    number = _numpy_scalar(value)
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        return None
    return int(number) if number is not None and INT64_MIN <= number <= INT64_MAX else None


def as_float(value: Any) -> float | None:
    """A loss as a float, else None: an int beyond float's range (``10**400``) is not a loss value."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return None
    number = _numpy_scalar(value)
    return float(number) if number is not None else None


_SCALAR_FORMATS = {"<f8": "<d", "<f4": "<f", "<i8": "<q", "<i4": "<i", "f8": "<d", "f4": "<f", "i8": "<q", "i4": "<i"}


def _numpy_scalar(value: Any) -> float | int | None:
    """Decode a pickled numpy scalar (``np.float64(0.5)``) from its raw bytes, without numpy."""
    if not isinstance(value, NumpyArray) or value.shape != ():
        return None
    fmt = _SCALAR_FORMATS.get(value.dtype)
    if fmt is None or len(value.raw) != struct.calcsize(fmt):
        return None
    return struct.unpack(fmt, value.raw)[0]


def as_datetime(value: Any) -> datetime | None:
    """Timestamps are stored as ISO strings, UNIX seconds, or datetimes; normalise to UTC-aware."""
    try:
        if isinstance(value, datetime):
            result = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        elif isinstance(value, str):
            result = datetime.fromisoformat(value.strip())
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return result if result.tzinfo else result.astimezone()


def args_dict(value: Any) -> dict[str, Any] | None:
    """Saved ``args`` as a dict, whether a dict or an ``argparse.Namespace`` was saved."""
    if isinstance(value, Namespace):
        return dict(value.attrs)
    if isinstance(value, dict):
        return {_key(k): v for k, v in value.items()}
    return None


def tensor_summary(obj: Any) -> TensorGroupSummary:
    """Counts over every tensor placeholder below ``obj`` (tied weights and shared storages once)."""
    summary = TensorGroupSummary()
    seen: set[tuple] = set()
    by_dtype: Counter[str] = Counter()
    counted_storage: set[str] = set()
    for tensor in _tensor_refs(obj):
        summary.tensor_count += 1
        identity = (tensor.storage.key, tensor.offset, tensor.shape, tensor.stride)
        if identity not in seen:
            seen.add(identity)
            summary.parameter_count += tensor.numel
        if tensor.storage.key not in counted_storage:  # views share storage: count bytes per storage
            counted_storage.add(tensor.storage.key)
            by_dtype[tensor.dtype] += tensor.storage.nbytes
    summary.bytes_by_dtype = dict(sorted(by_dtype.items()))
    return summary


def _tensor_refs(obj: Any) -> Iterator[TensorRef]:
    """Every TensorRef below ``obj``, in no particular order.

    ``reader.iter_tensors`` also builds each tensor's dotted name; summaries need no names, and
    ``list`` summarises every file, so this walk skips that work.
    """
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, TensorRef):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, Namespace):
            stack.extend(item.attrs.values())


def optimizer_summary(value: Any) -> OptimizerSummary | None:
    if not isinstance(value, dict) or "param_groups" not in value:
        return None
    groups_raw = value.get("param_groups")
    state = value.get("state") if isinstance(value.get("state"), dict) else {}
    groups = []
    for group in groups_raw if isinstance(groups_raw, list) else []:
        if not isinstance(group, dict):
            continue
        entry = {k: _plain(group[k]) for k in OPTIMIZER_HYPERPARAMS if k in group}
        params = group.get("params")
        entry["params"] = len(params) if isinstance(params, list) else None
        groups.append(entry)
    return OptimizerSummary(_guess_optimizer(value, state), groups, len(state), tensor_summary(state))


def _guess_optimizer(value: dict, state: dict) -> str | None:
    """Optimizer state dicts do not name their class; infer it from the state's keys."""
    explicit = value.get("type") or value.get("optimizer_type")
    if isinstance(explicit, str):
        return explicit
    groups = value.get("param_groups") if isinstance(value.get("param_groups"), list) else []
    keys: set[str] = set()
    for entry in state.values():
        if isinstance(entry, dict):
            keys.update(_key(k) for k in entry)
    if {"exp_avg", "exp_avg_sq"} <= keys:
        decoupled = any(isinstance(g, dict) and g.get("decoupled_weight_decay") for g in groups)
        return "AdamW" if decoupled else "Adam"
    if "momentum_buffer" in keys:
        return "SGD"
    if "square_avg" in keys:
        return "RMSprop"
    if "sum" in keys:
        return "Adagrad"
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, TensorRef):
        return repr(value)
    return value
