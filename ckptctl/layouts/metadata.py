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
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator

from ..formats.bounded import bounded_str

if TYPE_CHECKING:
    from ..formats.reader import CheckpointFile
    from ..formats.unpickler import TensorRef

# The reader, the unpickler and the scalar decoder are imported where a checkpoint's object graph is
# summarised (a file was read, so they are loaded already), not when this module is: a cached
# ``list`` and another framework's JSON records (``as_int``/``as_float``) never need them.
_UNPICKLER = "ckptctl.formats.unpickler"


def _is_unpickled(value: Any, name: str) -> bool:
    """``isinstance(value, unpickler.<name>)`` without importing the unpickler: while it is not
    loaded, nothing can be one of its placeholders."""
    module = sys.modules.get(_UNPICKLER)
    return module is not None and isinstance(value, getattr(module, name))

KNOWN_KEYS = (
    "step", "epoch", "model", "optimizer", "train_loss", "val_loss", "rng_state",
    "dataloader_state", "args", "timestamp", "checkpoint_type",
)  # fmt: skip
LOSS_FIELDS = ("train_loss", "val_loss")  # read as numbers from one-element tensors for every file
MAX_EXTRA_SCALARS = 8  # other top-level one-element tensors read as numbers (``best_metric``), per file
# Other frameworks' keys for the same fields (issue 11), tried in order after ckptctl's own:
STEP_KEYS = ("step", "global_step", "global_steps")  # native, Lightning, DeepSpeed; torchtitan: train_state.step
MODEL_KEYS = ("model", "state_dict", "model_state_dict", "module")  # native, Lightning, tutorial, DeepSpeed
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_states")  # native/torchtitan, tutorial/ZeRO, Lightning
HPARAMS_KEYS = ("args", "hyper_parameters", "ds_config")  # native, Lightning, DeepSpeed
TRAIN_LOSS_KEYS = ("train_loss", "loss")  # native, the PyTorch tutorial dict
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
    # where each field was found (None: absent or ckptctl's own key), for other frameworks' files
    step_key: str | None = None
    model_key: str | None = None  # "" for torchtitan's model FQNs at the top level
    optimizer_key: str | None = None
    hparams_key: str | None = None

    @functools.cached_property
    def extra_numbers(self) -> dict[str, float | int]:
        """Other top-level keys holding a one-element tensor (``best_metric``), as numbers.

        Read on first use (``inspect``, not ``list``), for at most :data:`MAX_EXTRA_SCALARS` keys.
        """
        if self.ckpt is None or not isinstance(self.root, dict):
            return {}
        from ..formats.scalars import is_scalar, read_scalars

        candidates = [key for key in self.extra_keys if is_scalar(self.root.get(key))][:MAX_EXTRA_SCALARS]
        return read_scalars(self.ckpt, {key: self.root[key] for key in candidates})

    @functools.cached_property
    def model(self) -> TensorGroupSummary | None:
        model = model_state(self.root, self.model_key)
        return tensor_summary(model) if isinstance(model, dict) else None

    @functools.cached_property
    def optimizer(self) -> OptimizerSummary | None:
        if not isinstance(self.root, dict):
            return None
        key = self.optimizer_key
        return optimizer_summary(self.root if key == "" else self.root.get(key or "optimizer"))

    @functools.cached_property
    def all_tensors(self) -> TensorGroupSummary:
        return tensor_summary(self.root)


def summarize(ckpt: CheckpointFile) -> Metadata:
    """Distil ``ckpt.root`` into :class:`Metadata`; tolerant of any shape of root object.

    ckptctl's own keys first, then other frameworks' for the same field (``global_step``,
    ``state_dict``, ``optimizer_states``, ``hyper_parameters``, ...: the ``*_KEYS`` tuples above).
    A file whose root is a saved-args object (HF's ``training_args.bin``) gives its fields as args.
    """
    from ..formats.scalars import read_scalars
    from ..formats.unpickler import Namespace

    root = ckpt.root if isinstance(ckpt.root, dict) else {}
    rng = root.get("rng_state")
    loss_key = _first_key(root, TRAIN_LOSS_KEYS) or "train_loss"
    losses = {"train_loss": root.get(loss_key), "val_loss": root.get("val_loss")}
    losses.update(read_scalars(ckpt, losses))  # a tensor loss: its value (a few bytes read)
    step_key, step = _step(ckpt, root)
    model_key = _model_key(root)
    optimizer_key = _optimizer_key(root)
    hparams_key = _first_key(root, HPARAMS_KEYS, lambda v: isinstance(v, (dict, Namespace)))
    args = args_dict(root.get(hparams_key)) if hparams_key else None
    if args is None and isinstance(ckpt.root, Namespace):  # HF training_args.bin: the object is the file
        args = dict(ckpt.root.attrs)
    mapped = {k for k in (model_key, optimizer_key, hparams_key, step_key, loss_key) if k}
    if optimizer_key == "":
        mapped |= {"state", "param_groups"}
    flat_model = set(_flat_model(root)) if model_key == "" else set()
    epoch = as_int(root.get("epoch"))
    if ckpt.format == "safetensors" and isinstance(root.get("__metadata__"), dict):  # strings, by the format
        header = root["__metadata__"]
        if step is None:
            step_key, step = ("__metadata__.step", _int_text(header.get("step")))
            step_key = step_key if step is not None else None
        epoch = epoch if epoch is not None else _int_text(header.get("epoch"))
    return Metadata(
        step=step,
        epoch=epoch,
        train_loss=as_float(losses["train_loss"]),
        val_loss=as_float(losses["val_loss"]),
        timestamp=as_datetime(root.get("timestamp")),
        checkpoint_type=root.get("checkpoint_type") if isinstance(root.get("checkpoint_type"), str) else None,
        args=args,
        dataloader_state=root.get("dataloader_state"),
        rng_states=sorted(_key(k) for k, v in rng.items() if v is not None) if isinstance(rng, dict) else [],
        extra_keys=[_key(k) for k in root if k not in KNOWN_KEYS and k not in mapped and k not in flat_model],
        root=ckpt.root,
        ckpt=ckpt,
        step_key=step_key if step_key != "step" else None,
        model_key=model_key if model_key != "model" else None,
        optimizer_key=optimizer_key if optimizer_key != "optimizer" else None,
        hparams_key=hparams_key if hparams_key != "args" else None,
    )


def _int_text(value: Any) -> int | None:
    """A safetensors ``__metadata__`` number (always a string there): "120" -> 120, else None."""
    if type(value) is not str or not 0 < len(value) <= 20 or not value.strip().lstrip("-").isdigit():
        return None
    return as_int(int(value))


def _first_key(root: dict, keys: tuple[str, ...], accept: Any = None) -> str | None:
    """The first of ``keys`` present in ``root`` (with a value ``accept`` takes, when given)."""
    for key in keys:
        if key in root and (accept is None or accept(root[key])):
            return key
    return None


def _step(ckpt: CheckpointFile, root: dict) -> tuple[str | None, int | None]:
    """(key, step): ``step``, ``global_step``, ``global_steps``, or torchtitan's ``train_state.step``
    (an int, or in older saves a 0-d int tensor, read from its bytes)."""
    from ..formats.scalars import read_scalars
    from ..formats.unpickler import TensorRef

    for key in STEP_KEYS:
        step = as_int(root.get(key))
        if step is not None:
            return key, step
    state = root.get("train_state")
    if isinstance(state, dict) and "step" in state:
        value = state["step"]
        if isinstance(value, TensorRef):
            value = read_scalars(ckpt, {"step": value}).get("step", value)
        step = as_int(value)
        if step is not None:
            return "train_state.step", step
    return None, None


def _model_key(root: dict) -> str | None:
    """Where the model's state dict is: a known key, or "" when its FQNs are top-level keys (torchtitan)."""
    key = _first_key(root, MODEL_KEYS, lambda v: isinstance(v, dict))
    if key is not None:
        return key
    return "" if _flat_model(root) else None


def _flat_model(root: dict) -> dict[str, TensorRef]:
    """Top-level tensors under dotted names (``layers.0.attention.wq.weight``): torchtitan's model."""
    from ..formats.unpickler import TensorRef

    return {k: v for k, v in root.items() if type(k) is str and "." in k and isinstance(v, TensorRef)}


def model_state(root: Any, model_key: str | None) -> Any:
    """The model's state dict in ``root`` (see :func:`_model_key`); None if there is none."""
    if not isinstance(root, dict):
        return None
    if model_key == "":
        return _flat_model(root)
    return root.get(model_key or "model")


def _optimizer_key(root: dict) -> str | None:
    """Where the optimizer's state is: a known key, or "" when the file is one (HF's ``optimizer.pt``)."""
    if "state" in root and isinstance(root.get("param_groups"), list) and not any(k in root for k in MODEL_KEYS):
        return ""
    for key in OPTIMIZER_KEYS:
        value = root.get(key)
        if isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
            return key
    return None


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
    if not _is_unpickled(value, "NumpyArray") or value.shape != ():
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
    if _is_unpickled(value, "Namespace"):
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
    from ..formats.unpickler import Namespace, TensorRef

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
    """An optimizer's state: torch's ``{state, param_groups}``, a list of them (Lightning's
    ``optimizer_states``), DeepSpeed ZeRO's (``base_optimizer_state`` inside), or the flat FQN
    layout (``state.<fqn>.exp_avg``, ``param_groups.<fqn>.lr``: torchtitan, DCP's flattened form)."""
    if isinstance(value, list):
        parts = [optimizer_summary(v) for v in value]
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        types = {p.type for p in parts}
        return OptimizerSummary(types.pop() if len(types) == 1 else None, [g for p in parts for g in p.param_groups],
                                sum(p.state_entries for p in parts), tensor_summary(value))  # fmt: skip
    if not isinstance(value, dict):
        return None
    if "param_groups" not in value:
        base = value.get("base_optimizer_state")
        if isinstance(base, dict) and "param_groups" in base:  # DeepSpeed ZeRO
            inner = optimizer_summary(base)
            if inner is not None:
                return OptimizerSummary(inner.type, inner.param_groups, inner.state_entries, tensor_summary(value))
        return _flat_optimizer_summary(value)
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


def _flat_optimizer_summary(value: dict) -> OptimizerSummary | None:
    """``state.<fqn>.<stat>`` / ``param_groups.<fqn>.<hyperparameter>`` keys (one group per
    distinct set of hyperparameters, in order); None if ``value`` has neither."""
    state: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {}
    for key, item in value.items():
        if type(key) is not str:
            continue
        head, _, rest = key.partition(".")
        fqn, _, leaf = rest.rpartition(".")
        if not fqn or not leaf:
            continue
        if head == "state":
            state.setdefault(fqn, {})[leaf] = item
        elif head == "param_groups":
            groups.setdefault(fqn, {})[leaf] = item
    if not state and not groups:
        return None
    distinct: list[dict[str, Any]] = []
    for hyper in groups.values():
        entry = {k: _plain(hyper[k]) for k in OPTIMIZER_HYPERPARAMS if k in hyper}
        for group in distinct:
            if all(group.get(k) == v for k, v in entry.items()) and len(group) - 1 == len(entry):
                group["params"] += 1
                break
        else:
            distinct.append({**entry, "params": 1})
    as_torch = {"param_groups": [dict(g) for g in groups.values()]}
    return OptimizerSummary(_guess_optimizer(as_torch, state), distinct, len(state), tensor_summary(state))


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
    if _is_unpickled(value, "TensorRef"):
        return repr(value)
    return value
