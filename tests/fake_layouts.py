"""Small layouts of "another framework" on real files, registered by monkeypatching
``registry.layouts``: the one place the tests build fake framework directories.

For the read-side operations (:func:`register`, default both):

- :class:`FakeRun` ("fake-run"): ``ckpt-N/`` directories with ``state.json`` (step, epoch, metrics,
  best), ``weights.safetensors`` and ``optim.pt`` (all three required), and a ``current`` symlink pointer.
- :class:`FakeFiles` ("fake-files"): ``step=N.ckpt`` torch.save files (units are files), and a
  ``last.ckpt`` symlink pointer.

For the write-side operations (:func:`use`):

- :class:`DirLayout` ("fake-dirs", like HF Trainer / DeepSpeed): ``ck-N/`` directories holding
  ``model.pt`` (a real torch.save) and ``state.json`` (``{"best": bool, "loss": x, "hparams": {...}}``);
  complete when both are there; a ``latest`` tag file names a unit (like DeepSpeed's).
- :class:`FileLayout` ("fake-files", like Lightning): ``sN.ckpt`` files (real torch.save, step N)
  and ``last.ckpt``, a symlink to one of them or a full copy (then itself a unit, and a pointer).
  Their ``resume_args`` are the framework-style flags the operations print.

:func:`copy_fixture` copies a real framework fixture (``tests/fixtures/frameworks``) into ``tmp_path``.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from ckptctl.layouts.base import (CONTENT_OTHER, CONTENT_WEIGHTS, POINTER_DANGLING, POINTER_LOOP, POINTER_OK,
                                  POINTER_STALE, Layout, Pointer, Unit, content_of, stat_file)  # fmt: skip

UNIT_DIR = re.compile(r"ckpt-(\d+)")
UNIT_FILE = re.compile(r"step=(\d+)\.ckpt")
REQUIRED = ("state.json", "weights.safetensors", "optim.pt")
WRITE_UNIT_DIR = re.compile(r"ck-(\d+)")
WRITE_UNIT_FILE = re.compile(r"s(\d+)\.ckpt")


def _by_step(units: list[Unit]) -> list[Unit]:
    return sorted(units, key=lambda u: (u.step, u.name))


def _file_units(layout: str, directory: Path, pattern: re.Pattern[str]) -> list[Unit]:
    """Regular files (not symlinks) named by ``pattern`` (its group 1 the step), each a unit."""
    units = []
    for name in sorted(os.listdir(directory)):
        match = pattern.fullmatch(name)
        path = directory / name
        if match and path.is_file() and not path.is_symlink():
            units.append(Unit(layout, name, path, False, step=int(match.group(1)), files=[stat_file(path, CONTENT_WEIGHTS)]))
    return units


def _broken(path: Path) -> str | None:
    """POINTER_LOOP / POINTER_DANGLING for a symlink that leads nowhere, else None."""
    try:
        os.stat(path)
    except OSError as exc:
        return POINTER_LOOP if exc.errno == errno.ELOOP else POINTER_DANGLING
    return None


class _Named(Layout):
    """A fake layout recognised by one of its unit names (``pattern``) among the directory's names."""

    pattern: re.Pattern[str]

    def recognise(self, directory, names):
        return any(self.pattern.fullmatch(n) for n in names)


# ---------------------------------------------------------------------- read side


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
        return _by_step(units)

    def pointers(self, directory, units):
        return symlink_pointers(directory, units, "current")


class FakeFiles(_Named):
    name = "fake-files"
    title = "Fake Lightning"
    resume_flag = "--ckpt_path"
    pattern = UNIT_FILE

    def units(self, directory):
        return _by_step(_file_units(self.name, directory, UNIT_FILE))

    def pointers(self, directory, units):
        return symlink_pointers(directory, units, "last.ckpt")


def symlink_pointers(directory: Path, units: list[Unit], name: str) -> list[Pointer]:
    path = directory / name
    if not path.is_symlink():
        return []
    target = os.path.basename(os.readlink(path))
    status = _broken(path)
    if status is not None:
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


# ---------------------------------------------------------------------- write side


class DirLayout(_Named):
    name = "fake-dirs"
    title = "Fake Dirs"
    resume_flag = "--resume_from"
    pattern = WRITE_UNIT_DIR

    def units(self, directory: Path) -> list[Unit]:
        units = []
        for name in sorted(os.listdir(directory)):
            match = WRITE_UNIT_DIR.fullmatch(name)
            path = directory / name
            if not match or not path.is_dir():
                continue
            unit = Unit(self.name, name, path, True, step=int(match.group(1)))
            missing = [f for f in ("model.pt", "state.json") if not (path / f).exists()]
            unit.complete, unit.missing = not missing, missing
            for file in sorted(os.listdir(path)):
                unit.files.append(stat_file(path / file, CONTENT_WEIGHTS if file.endswith(".pt") else CONTENT_OTHER))
            try:
                state = json.loads((path / "state.json").read_text())
            except (OSError, ValueError):
                state = {}
            unit.best = bool(state.get("best"))
            if "loss" in state:
                unit.metrics["loss"] = float(state["loss"])
            unit.hparams = state.get("hparams")
            units.append(unit)
        return _by_step(units)

    def pointers(self, directory: Path, units: list[Unit]) -> list[Pointer]:
        path = directory / "latest"
        if not path.is_file():
            return []
        tag = path.read_text().strip()
        names = {u.name for u in units}
        return [Pointer("latest", path, tag, POINTER_OK if tag in names else POINTER_DANGLING)]

    def resume_args(self, unit: Unit, directory: Path) -> list[str]:
        return ["--load_dir", str(directory), "--tag", unit.name]


class FileLayout(_Named):
    name = "fake-files"
    title = "Fake Files"
    resume_flag = "--ckpt_path"
    pattern = WRITE_UNIT_FILE

    def units(self, directory: Path) -> list[Unit]:
        units = _file_units(self.name, directory, WRITE_UNIT_FILE)
        last = directory / "last.ckpt"
        if last.is_file() and not last.is_symlink():  # a copy: a unit of its own (the step of the newest)
            steps = [u.step for u in units if u.step is not None]
            units.append(Unit(self.name, "last.ckpt", last, False, step=max(steps, default=0),
                              files=[stat_file(last, CONTENT_WEIGHTS)]))  # fmt: skip
        return _by_step(units)

    def pointers(self, directory: Path, units: list[Unit]) -> list[Pointer]:
        last = directory / "last.ckpt"
        if not os.path.lexists(last):
            return []
        if not last.is_symlink():
            return [Pointer("last.ckpt", last, "last.ckpt")]
        target = os.path.basename(os.readlink(last))
        broken = _broken(last)
        if broken is not None:
            return [Pointer("last.ckpt", last, target, broken)]
        by_name = {u.name: u for u in units}
        newest = max((u.step for u in units if u.name != "last.ckpt"), default=None)
        unit = by_name.get(target)
        status = POINTER_STALE if unit is not None and newest is not None and unit.step < newest else POINTER_OK
        return [Pointer("last.ckpt", last, target, status)]


def use(monkeypatch) -> None:
    """Make the registry know only the two write-side fake layouts."""
    register(monkeypatch, DirLayout(), FileLayout())


def save(path: Path, step: int) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "model": {"w": torch.full((4,), float(step))}}, path)
    return path


def make_dirs_run(directory: Path, steps=(2, 4, 6, 8), best: int | None = 2, latest: int | None = 8,
                  hparams: dict | None = None) -> Path:  # fmt: skip
    """``ck-N/`` units (complete), the recorded best, and a ``latest`` tag file."""
    for step in steps:
        unit = directory / f"ck-{step}"
        save(unit / "model.pt", step)
        state = {"best": step == best, "loss": 1.0 / step, "hparams": hparams or {"lr": 0.1, "batch_size": 8}}
        (unit / "state.json").write_text(json.dumps(state))
    if latest is not None:
        (directory / "latest").write_text(f"ck-{latest}")
    return directory


def make_files_run(directory: Path, steps=(4, 8, 12), last: str | None = "link") -> Path:
    """``sN.ckpt`` units and ``last.ckpt``: a symlink to the newest ("link"), a copy ("copy"), or none."""
    for step in steps:
        save(directory / f"s{step}.ckpt", step)
    newest = f"s{max(steps)}.ckpt"
    if last == "link":
        os.symlink(newest, directory / "last.ckpt")
    elif last == "copy":
        (directory / "last.ckpt").write_bytes((directory / newest).read_bytes())
    return directory


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


FIXTURES = Path(__file__).parent / "fixtures" / "frameworks"


def copy_fixture(name: str, tmp_path: Path, sub: str | None = None) -> Path:
    """A copy of ``tests/fixtures/frameworks/<name>`` (symlinks kept), returning the directory a layout
    recognises (the fixture itself, or ``sub`` inside it); skips while no layout recognises either."""
    import shutil

    import pytest

    from ckptctl.layouts import registry

    src = FIXTURES / name
    candidates = [src] + ([src / sub] if sub else [])
    found = next((c for c in candidates if registry.detect(c) is not None), None)
    if found is None:
        pytest.skip(f"no layout recognises tests/fixtures/frameworks/{name} yet (its layout module is not merged)")
    root = Path(shutil.copytree(src, tmp_path / name, symlinks=True))
    return root / found.relative_to(src)
