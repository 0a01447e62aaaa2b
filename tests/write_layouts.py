"""Two small layouts of "another framework", with real files, for the write-side operations' tests.

- :class:`DirLayout` ("fake-dirs", like HF Trainer / DeepSpeed): ``ck-N/`` directories holding
  ``model.pt`` (a real torch.save) and ``state.json`` (``{"best": bool, "loss": x, "hparams": {...}}``);
  complete when both are there; a ``latest`` tag file names a unit (like DeepSpeed's).
- :class:`FileLayout` ("fake-files", like Lightning): ``sN.ckpt`` files (real torch.save, step N)
  and ``last.ckpt``, a symlink to one of them or a full copy (then itself a unit, and a pointer).

:func:`use` registers them by monkeypatching ``registry.layouts``. Their ``resume_args`` are the
framework-style flags the operations print.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

from ckptctl.layouts.base import (CONTENT_OTHER, CONTENT_WEIGHTS, POINTER_DANGLING, POINTER_LOOP, POINTER_OK,
                                  POINTER_STALE, Layout, Pointer, Unit, stat_file)  # fmt: skip

UNIT_DIR = re.compile(r"ck-(\d+)")
UNIT_FILE = re.compile(r"s(\d+)\.ckpt")


class DirLayout(Layout):
    name = "fake-dirs"
    title = "Fake Dirs"
    resume_flag = "--resume_from"

    def recognise(self, directory: Path, names: list[str]) -> bool:
        return any(UNIT_DIR.fullmatch(n) for n in names)

    def units(self, directory: Path) -> list[Unit]:
        units = []
        for name in sorted(os.listdir(directory)):
            match = UNIT_DIR.fullmatch(name)
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
        return sorted(units, key=lambda u: (u.step, u.name))

    def pointers(self, directory: Path, units: list[Unit]) -> list[Pointer]:
        path = directory / "latest"
        if not path.is_file():
            return []
        tag = path.read_text().strip()
        names = {u.name for u in units}
        return [Pointer("latest", path, tag, POINTER_OK if tag in names else POINTER_DANGLING)]

    def resume_args(self, unit: Unit, directory: Path) -> list[str]:
        return ["--load_dir", str(directory), "--tag", unit.name]


class FileLayout(Layout):
    name = "fake-files"
    title = "Fake Files"
    resume_flag = "--ckpt_path"

    def recognise(self, directory: Path, names: list[str]) -> bool:
        return any(UNIT_FILE.fullmatch(n) for n in names)

    def units(self, directory: Path) -> list[Unit]:
        units = []
        for name in sorted(os.listdir(directory)):
            match = UNIT_FILE.fullmatch(name)
            path = directory / name
            if match and path.is_file() and not path.is_symlink():
                units.append(Unit(self.name, name, path, False, step=int(match.group(1)),
                                  files=[stat_file(path, CONTENT_WEIGHTS)]))  # fmt: skip
        last = directory / "last.ckpt"
        if last.is_file() and not last.is_symlink():  # a copy: a unit of its own (the step of the newest)
            steps = [u.step for u in units if u.step is not None]
            units.append(Unit(self.name, "last.ckpt", last, False, step=max(steps, default=0),
                              files=[stat_file(last, CONTENT_WEIGHTS)]))  # fmt: skip
        return sorted(units, key=lambda u: (u.step, u.name))

    def pointers(self, directory: Path, units: list[Unit]) -> list[Pointer]:
        last = directory / "last.ckpt"
        if not os.path.lexists(last):
            return []
        if not last.is_symlink():
            return [Pointer("last.ckpt", last, "last.ckpt")]
        target = os.path.basename(os.readlink(last))
        try:
            os.stat(last)
        except OSError as exc:
            status = POINTER_LOOP if exc.errno == errno.ELOOP else POINTER_DANGLING
            return [Pointer("last.ckpt", last, target, status)]
        by_name = {u.name: u for u in units}
        newest = max((u.step for u in units if u.name != "last.ckpt"), default=None)
        unit = by_name.get(target)
        status = POINTER_STALE if unit is not None and newest is not None and unit.step < newest else POINTER_OK
        return [Pointer("last.ckpt", last, target, status)]


def use(monkeypatch) -> None:
    """Make the registry know only the two fake layouts."""
    from ckptctl.layouts import registry

    monkeypatch.setattr(registry, "layouts", lambda: [DirLayout(), FileLayout()])


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
