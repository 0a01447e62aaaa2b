"""Small fake layouts on real files, registered by monkeypatching ``registry.layouts``, for the
read-side operations' tests while (and after) the real framework layouts land.

``fake-run``: ``ckpt-N/`` directories with ``state.json`` (step, epoch, metrics, best),
``weights.safetensors`` and ``optim.pt`` (all three required), and a ``current`` symlink pointer.
``fake-files``: ``step=N.ckpt`` torch.save files (units are files), and a ``last.ckpt`` symlink pointer.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from ckptctl.layouts.base import (POINTER_DANGLING, POINTER_LOOP, POINTER_OK, POINTER_STALE, Layout, Pointer, Unit,
                                  content_of, stat_file)  # fmt: skip

UNIT_DIR = re.compile(r"ckpt-(\d+)")
UNIT_FILE = re.compile(r"step=(\d+)\.ckpt")
REQUIRED = ("state.json", "weights.safetensors", "optim.pt")


class FakeRun(Layout):
    name = "fake-run"
    title = "Fake Trainer"
    resume_flag = "--resume"

    def recognise(self, directory, names):
        return any(UNIT_DIR.fullmatch(n) and (directory / n).is_dir() for n in names)

    def units(self, directory):
        units = []
        for name in sorted(os.listdir(directory)):
            match = UNIT_DIR.fullmatch(name)
            path = directory / name
            if not match or not path.is_dir():
                continue
            files = [stat_file(path / n, content_of(n)) for n in sorted(os.listdir(path)) if (path / n).is_file()]
            missing = [n for n in REQUIRED if not (path / n).is_file()]
            unit = Unit(self.name, name, path, True, step=int(match.group(1)), files=files, monitor="eval_loss",
                        complete=not missing, missing=missing)  # fmt: skip
            try:
                state = json.loads((path / "state.json").read_text())
            except (OSError, ValueError):
                state = None
                if "state.json" not in missing:
                    unit.notes.append("state.json: not JSON")
                    unit.complete = False
            if isinstance(state, dict):
                unit.epoch = state.get("epoch")
                unit.metrics = {k: float(v) for k, v in state.get("metrics", {}).items()}
                unit.best = bool(state.get("best"))
                unit.hparams = state.get("args")
            units.append(unit)
        return sorted(units, key=lambda u: (u.step, u.name))

    def pointers(self, directory, units):
        return symlink_pointers(directory, units, "current")


class FakeFiles(Layout):
    name = "fake-files"
    title = "Fake Lightning"
    resume_flag = "--ckpt_path"

    def recognise(self, directory, names):
        return any(UNIT_FILE.fullmatch(n) for n in names)

    def units(self, directory):
        units = []
        for name in sorted(os.listdir(directory)):
            match = UNIT_FILE.fullmatch(name)
            path = directory / name
            if match and path.is_file() and not path.is_symlink():
                units.append(Unit(self.name, name, path, False, step=int(match.group(1)),
                                  files=[stat_file(path, "weights")]))  # fmt: skip
        return sorted(units, key=lambda u: (u.step, u.name))

    def pointers(self, directory, units):
        return symlink_pointers(directory, units, "last.ckpt")


def symlink_pointers(directory: Path, units: list[Unit], name: str) -> list[Pointer]:
    path = directory / name
    if not path.is_symlink():
        return []
    target = os.path.basename(os.readlink(path))
    try:
        os.stat(path)
    except OSError as exc:
        status = POINTER_LOOP if exc.errno == errno.ELOOP else POINTER_DANGLING
        return [Pointer(name, path, target, status, f"{status} symlink to {target}")]
    newest = max((u for u in units if u.complete), key=lambda u: u.step or 0, default=None)
    if newest is not None and newest.name != target:
        return [Pointer(name, path, target, POINTER_STALE, f"points at {target}, newest complete is {newest.name}")]
    return [Pointer(name, path, target, POINTER_OK)]


def register(monkeypatch, *layouts: Layout) -> None:
    """Make the registry know exactly ``layouts`` (default: both fakes)."""
    from ckptctl.layouts import registry

    chosen = list(layouts) or [FakeRun(), FakeFiles()]
    monkeypatch.setattr(registry, "layouts", lambda: list(chosen))


def write_safetensors(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


def make_fake_run(directory: Path, steps=(10, 20, 30), *, losses=(0.9, 0.5, 0.7), best: int | None = 20,
                  epochs=None, model_elements: int = 16) -> Path:  # fmt: skip
    """A ``fake-run`` directory with one ``ckpt-N/`` per step (real safetensors + torch.save files)."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(steps):
        unit = directory / f"ckpt-{step}"
        unit.mkdir()
        epoch = epochs[i] if epochs else step / 20
        metrics = {"loss": losses[i] + 0.1, "eval_loss": losses[i], "eval_accuracy": 1 - losses[i]}
        (unit / "state.json").write_text(json.dumps({"step": step, "epoch": epoch, "metrics": metrics,
                                                     "best": step == best, "args": {"lr": 0.01}}))  # fmt: skip
        write_safetensors(unit / "weights.safetensors", {"w": torch.arange(model_elements, dtype=torch.float32)})
        torch.save({"state": {0: {"exp_avg": torch.ones(model_elements)}}, "param_groups": [{"lr": 0.01, "params": [0]}]},
                   unit / "optim.pt")  # fmt: skip
        torch.save({"last_epoch": step}, unit / "sched.pt")
    return directory


def make_fake_files(directory: Path, steps=(4, 8)) -> Path:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    for step in steps:
        torch.save({"global_step": step, "epoch": step // 4, "state_dict": {"w": torch.ones(4)}}, directory / f"step={step}.ckpt")
    return directory
