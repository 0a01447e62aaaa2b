"""``inspect`` as data: one checkpoint file described as a JSON-friendly report."""

from __future__ import annotations

import os
from typing import Any

from ..layouts.catalog import entry_for_file
from ..layouts.naming import Kind
from ..formats.values import jsonable


def inspect_file(path: str | os.PathLike[str], with_tensors: bool = False) -> dict[str, Any]:
    """Read ``path`` safely and describe it. ``status`` is ok / unreadable / unsafe."""
    entry = entry_for_file(path)
    ckpt, meta, error = entry.read()
    report: dict[str, Any] = {
        "path": str(entry.path),
        "name": entry.name,
        "kind": entry.kind.value if entry.kind is not Kind.PARTIAL else "other",
        "format": ckpt.format if ckpt else None,
        "size_bytes": entry.size_bytes,
        "status": error.status if error else "ok",
        "error": error.reason if error else None,
        "unsafe_globals": getattr(error, "globals", []) if error else [],
    }
    unit = entry.unit
    if unit is not None:  # a checkpoint of another framework's layout (``run/checkpoint-500``)
        status, reason = entry.status()
        report.update(status=status, error=reason, **_unit_report(unit))
        if ckpt is None:
            report["format"] = "directory" if unit.is_directory else report["format"]
    if meta is not None and ckpt is None and unit is not None:  # a directory unit: what its records say
        report.update(
            step=meta.step, epoch=unit.epoch if unit.epoch is not None else meta.epoch, train_loss=meta.train_loss,
            val_loss=meta.val_loss, checkpoint_type=None, saved_at=meta.timestamp.isoformat() if meta.timestamp else None,
            args=jsonable(meta.args), dataloader_state=None, rng_states=[], model=None, optimizer=None, extra={},
            all_tensors=None, notes=list(unit.notes),
        )  # fmt: skip
        return report
    if ckpt is None or meta is None:
        return report
    root = ckpt.root if isinstance(ckpt.root, dict) else {}
    report.update(
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
        optimizer=_optimizer(meta.optimizer),
        extra={key: meta.extra_numbers.get(key, jsonable(root.get(key))) for key in meta.extra_keys},
        all_tensors=_group(meta.all_tensors),
        notes=ckpt.notes,
    )
    if with_tensors:
        report["tensors"] = [
            {"name": name, "dtype": t.dtype, "shape": list(t.shape), "nbytes": t.nbytes, "storage": t.storage.key}
            for name, t in ckpt.tensors()
        ]
    return report


def _unit_report(unit) -> dict[str, Any]:
    """The layout's view of a unit: completeness, metrics, best, and its files by kind of content."""
    return {
        "layout": unit.layout,
        "complete": unit.complete,
        "missing": list(unit.missing),
        "best": unit.best,
        "metrics": dict(unit.metrics),
        "monitor": unit.monitor,
        "files": [{"name": os.path.relpath(f.path, unit.path) if unit.is_directory else os.path.basename(f.path),
                   "content": f.content, "size_bytes": f.size_bytes} for f in unit.files],  # fmt: skip
    }


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
