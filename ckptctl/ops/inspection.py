"""``inspect`` as data: one checkpoint (a file, a DCP directory, or a unit of any layout) described
as a JSON-friendly report.

A checkpoint of another framework's layout (an HF ``checkpoint-500/``, a Lightning ``.ckpt``, a
DeepSpeed ``global_step10/``, a torchtitan ``step-20/``, an accelerate ``checkpoint_1/``, a loose
``model.safetensors``) is found among its parent directory's units (:mod:`ckptctl.ops.units`):
the report then adds ``layout`` and ``unit`` (step, epoch, metrics, best, completeness, files,
hparams, the weights' tensor summary) to the keys every report has. Nothing reads tensor bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..layouts.catalog import entry_for_file
from ..layouts.naming import Kind
from ..layouts.metadata import Metadata, summarize, tensor_summary
from ..formats.values import jsonable
from .units import LOOSE_LAYOUT, UnitView, find_unit, optimizer_of, plain_view, view_of, weights_subtree


def inspect_target(path: str | os.PathLike[str], with_tensors: bool = False) -> dict[str, Any]:
    """A unit of a registered layout when ``path`` is one, else the file (or DCP directory) itself."""
    local = "://" not in str(path)
    found = find_unit(path) if local else None
    if found is not None:
        return inspect_unit(view_of(*found), with_tensors)
    target = Path(path)
    if local and target.suffix.lower() == ".safetensors" and target.is_file():  # no layout claims it: itself
        return inspect_unit(plain_view(target), with_tensors)
    report = inspect_file(path, with_tensors)
    loose = find_unit(path, loose_torch_files=True) if local and report["status"] == "ok" else None
    if loose is not None:  # a plain torch file of the loose-files layout: the file's own report, named so
        report["layout"] = loose[1].layout
    return report


def inspect_file(path: str | os.PathLike[str], with_tensors: bool = False) -> dict[str, Any]:
    """Read ``path`` safely and describe it. ``status`` is ok / unreadable / unsafe."""
    entry = entry_for_file(path)
    unit = getattr(entry, "unit", None)
    if unit is not None and unit.layout != LOOSE_LAYOUT:  # a unit directory named to inspect_file itself
        return inspect_unit(view_of(None, unit), with_tensors)
    ckpt, meta, error = entry.read()
    report: dict[str, Any] = {
        "path": str(entry.path),
        "name": entry.name,
        "kind": entry.kind.value if entry.kind is not Kind.PARTIAL else "other",
        "format": ckpt.format if ckpt else None,
        "size_bytes": entry.size_bytes,
        "status": error.status if error else "ok",
        "checked": "metadata",
        "error": error.reason if error else None,
        "unsafe_globals": getattr(error, "globals", []) if error else [],
    }
    if ckpt is None or meta is None:
        return report
    report.update(_metadata_report(meta, ckpt))
    if with_tensors:
        report["tensors"] = _tensor_list(ckpt.tensors())
    return report


def _metadata_report(meta: Metadata, ckpt) -> dict[str, Any]:
    root = ckpt.root if isinstance(ckpt.root, dict) else {}
    optimizer = _optimizer(meta.optimizer)
    extra_keys = list(meta.extra_keys)
    if optimizer is None and "optimizer" in root and root["optimizer"] is not None:
        # torchtitan's flat FQN layout (``state.<fqn>.exp_avg``, ``param_groups.<fqn>.lr``): no
        # ``param_groups`` list, but an optimizer all the same; shown, never dropped.
        optimizer = _flat_optimizer(root["optimizer"])
        extra_keys.append("optimizer")
    return dict(
        step=meta.step,
        epoch=meta.epoch,
        train_loss=meta.train_loss,
        val_loss=meta.val_loss,
        checkpoint_type=meta.checkpoint_type,
        saved_at=meta.timestamp.isoformat() if meta.timestamp else None,
        args=jsonable(meta.args),
        dataloader_state=jsonable(meta.dataloader_state),
        rng_states=meta.rng_states,
        model=_group(meta.model),
        optimizer=optimizer,
        extra={key: meta.extra_numbers.get(key, _extra_value(root.get(key))) for key in extra_keys},
        all_tensors=_group(meta.all_tensors),
        notes=ckpt.notes,
    )


def _extra_value(value: Any) -> Any:
    if isinstance(value, dict) and len(value) > 64:  # a flat optimizer: thousands of FQN keys
        return f"dict with {len(value)} keys"
    return jsonable(value)


def inspect_unit(view: UnitView, with_tensors: bool = False) -> dict[str, Any]:
    """The report of one unit: every key :func:`inspect_file` has, plus ``layout`` and ``unit``."""
    unit = view.unit
    weights = view.weights.ckpt
    meta_file = _metadata_file(view)
    meta = summarize(meta_file) if meta_file is not None else None
    metrics = dict(unit.metrics)
    report: dict[str, Any] = {
        "path": str(unit.path),
        "name": unit.name,
        "kind": "checkpoint",
        "format": weights.format if weights.format != "?" else ("directory" if unit.is_directory else None),
        "size_bytes": unit.size_bytes,
        "status": view.status,
        "checked": "metadata",
        "error": view.error,
        "unsafe_globals": sorted({g for f in view.files for g in f.unsafe_globals}),
        "layout": unit.layout,
        # the layout's view at the top level too (as ops-read's first cut had them)
        "complete": unit.complete,
        "missing": list(unit.missing),
        "best": unit.best,
        "metrics": jsonable(metrics),
        "monitor": unit.monitor,
        "files": [{"name": os.path.relpath(f.path, unit.path) if unit.is_directory else f.path.name,
                   "content": f.content, "size_bytes": f.size_bytes} for f in view.files],  # fmt: skip
    }
    optimizer = _unit_optimizer(view)
    report.update(
        step=unit.step,
        epoch=unit.epoch,
        train_loss=_first(metrics, ("train_loss", "loss")),
        val_loss=_first(metrics, ("val_loss", "eval_loss")),
        checkpoint_type=None,
        saved_at=unit.timestamp.isoformat() if unit.timestamp else None,
        args=jsonable(unit.hparams),
        dataloader_state=None,
        rng_states=[],
        model=_group(tensor_summary(weights.root)) if weights.root else None,
        optimizer=optimizer,
        extra={},
        all_tensors=_group(meta.all_tensors) if meta is not None else None,
        notes=[*unit.notes, *view.weights.problems, *(n for f in view.files if f.ckpt is not None for n in f.ckpt.notes)],
    )
    report["unit"] = {
        "name": unit.name,
        "path": str(unit.path),
        "is_directory": unit.is_directory,
        "layout": unit.layout,
        "layout_title": view.layout.title if view.layout is not None else None,
        "step": unit.step,
        "epoch": unit.epoch,
        "metrics": jsonable(metrics),
        "monitor": unit.monitor,
        "monitored_value": jsonable(unit.monitored_value),
        "best": unit.best,
        "complete": unit.complete,
        "missing": list(unit.missing),
        "protected": unit.protected,
        "timestamp": unit.timestamp.isoformat() if unit.timestamp else None,
        "hparams": jsonable(unit.hparams),
        "files": [f.to_json() for f in view.files],
        "weights": _group(tensor_summary(weights.root)) if weights.root else None,
        "weights_problems": list(view.weights.problems),
        "notes": list(unit.notes),
    }
    if with_tensors:
        report["tensors"] = _tensor_list(weights.tensors())
    return report


def _metadata_file(view: UnitView):
    """The unit's one torch file when it is a single file (a Lightning .ckpt): its keys are worth a summary."""
    readable = [f for f in view.files if f.ckpt is not None and f.format in ("zip", "legacy", "dcp")]
    return readable[0].ckpt if len(view.files) == 1 and readable else None


def _unit_optimizer(view: UnitView) -> dict[str, Any] | None:
    """The optimizer's summary from the unit's optimizer file, or the optimizer key of its one file;
    a flat optimizer (torchtitan's FQN keys) of a DCP unit is summarised too."""
    summary = optimizer_of(view)
    if summary is not None:
        return _optimizer(summary)
    for read in view.files:
        root = read.ckpt.root if read.ckpt is not None and isinstance(read.ckpt.root, dict) else {}
        if read.format == "dcp" and isinstance(root.get("optimizer"), dict):
            return _flat_optimizer(root["optimizer"])
    return None


def _first(metrics: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in metrics:
            return jsonable(metrics[name])
    return None


def _tensor_list(tensors) -> list[dict[str, Any]]:
    return [
        {"name": name, "dtype": t.dtype, "shape": list(t.shape), "nbytes": t.nbytes, "storage": t.storage.key}
        for name, t in tensors
    ]


def _group(summary) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "tensor_count": summary.tensor_count,
        "parameter_count": summary.parameter_count,
        "bytes_by_dtype": summary.bytes_by_dtype,
        "total_bytes": summary.total_bytes,
    }


def _optimizer(summary) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "type": summary.type,
        "param_groups": jsonable(summary.param_groups),
        "state_entries": summary.state_entries,
        "total_bytes": summary.tensors.total_bytes,
    }


def _flat_optimizer(value: Any) -> dict[str, Any]:
    """An optimizer state without a ``param_groups`` list (torchtitan's flattened FQN keys)."""
    summary = tensor_summary(value)
    state_keys = set()
    kinds = set()
    if isinstance(value, dict):
        for key in value:
            text = key if isinstance(key, str) else str(key)
            if text.startswith("state."):
                head, _, leaf = text[len("state."):].rpartition(".")
                state_keys.add(head)
                kinds.add(leaf)
            elif isinstance(value.get(key), dict):  # nested form: {"state": {...}}
                pass
    guess = "Adam/AdamW" if {"exp_avg", "exp_avg_sq"} <= kinds else ("SGD" if "momentum_buffer" in kinds else None)
    return {
        "type": guess,
        "param_groups": [],
        "state_entries": len(state_keys) if state_keys else (summary.tensor_count and len(value)),
        "total_bytes": summary.total_bytes,
        "flat": True,
    }


__all__ = ["inspect_target", "inspect_file", "inspect_unit", "weights_subtree"]
