"""Build real checkpoints with torch: the seed's full dict (model, AdamW, RNG states, args, dataloader)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any


def make_state(step: int = 100, epoch: int = 1, val_loss: float = 0.5, train_loss: float = 0.6,
               hidden: int = 16, namespace_args: bool = False, **extra: Any) -> dict[str, Any]:  # fmt: skip
    """The checkpoint dict of the layout, from a real model and a real AdamW step."""
    import numpy as np
    import torch

    torch.manual_seed(step)
    model = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    args = {"lr": 3e-4, "batch_size": 32, "data_path": "/data/train", "use_tensorboard": True, "tags": ["a", "b c"]}
    state = {
        "step": step,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "train_loss": train_loss,
        "val_loss": val_loss,
        "rng_state": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "torch_cuda": None,
        },
        "dataloader_state": {"epoch": epoch, "batch_idx": step % 50, "seed": 1234},
        "args": argparse.Namespace(**args) if namespace_args else args,
        "timestamp": "2026-11-01T12:00:00",
        "checkpoint_type": "regular",
    }
    state.update(extra)
    return state


def write_checkpoint(path: Path, state: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state if state is not None else make_state(**kwargs), path)
    return path


def populate_layout(directory: Path) -> Path:
    """latest(+backup), 3 rolling (+last backup), best triple, 2 epochs, 1 emergency."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate((100, 200, 300)):
        write_checkpoint(directory / f"rolling_step_{step:06d}.pt", step=step, epoch=i, val_loss=1.0 - 0.1 * i)
    write_checkpoint(directory / "rolling_last_backup.pt", step=300, epoch=2, val_loss=0.8)
    write_checkpoint(directory / "latest.pt", step=300, epoch=2, val_loss=0.8)
    write_checkpoint(directory / "latest_backup.pt", step=200, epoch=1, val_loss=0.9)
    write_checkpoint(directory / "best_model.pt", step=300, epoch=2, val_loss=0.8)
    write_checkpoint(directory / "best_model_backup.pt", step=300, epoch=2, val_loss=0.8)
    write_checkpoint(directory / "best_model_previous.pt", step=200, epoch=1, val_loss=0.9)
    write_checkpoint(directory / "epoch_00000.pt", step=100, epoch=0, val_loss=1.0)
    write_checkpoint(directory / "epoch_00001.pt", step=200, epoch=1, val_loss=0.9)
    state = make_state(step=250, epoch=1, val_loss=0.85)
    state["checkpoint_type"] = "emergency"
    write_checkpoint(directory / "emergency_step_000250_20261101_120000.pt", state)
    return directory


def write_hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A torch-style zip whose pickle calls ``os.system("touch MARKER")`` when loaded unsafely.

    Readers must refuse it without running anything: after any command, ``marker`` must not exist.
    """
    import os
    import pickle
    import zipfile

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps({"step": 1, "args": {"lr": 0.1}, "model": Exploit()}, protocol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return path


def flip_byte_in_largest_tensor(path: Path) -> None:
    """Simulate bit rot: invert one byte in the middle of the file's largest tensor record (``data/<key>``)."""
    from ckptctl.formats.container import open_container

    with open(path, "rb") as fh:
        tensors = [r for r in open_container(path, fh).records.values() if r.key.startswith("data/")]
    record = max(tensors, key=lambda r: r.size)
    offset = record.data_offset + record.size // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        value = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([value ^ 0xFF]))


class DiskFullFile:
    """Wraps a file opened for writing; fails like a full disk (ENOSPC from write) after ``limit`` bytes."""

    def __init__(self, fh: Any, limit: int):
        self._fh, self._limit, self._written = fh, limit, 0

    def write(self, data: bytes) -> int:
        import errno
        import os

        if self._written + len(data) > self._limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._written += len(data)
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> "DiskFullFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def touch_files(directory: Path, names: list[str], size: int = 0, mtime: float | None = None) -> list[Path]:
    """Files with the given names and ``size`` zero bytes, for code that must read names and stat only."""
    import os

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = directory / name
        path.write_bytes(b"\0" * size)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        paths.append(path)
    return paths


def plausible_bytes(size: int = 0) -> bytes:
    """A zip of at least ``size`` bytes (exactly ``size`` from 120 bytes on) that passes
    :mod:`ckptctl.ops.quickcheck` (no pickle inside: for code that reads names, stat and a zip's ends)."""
    import io
    import zipfile

    def archive(pad: int) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("archive/pad", b"\0" * pad)
        return buf.getvalue()

    return archive(max(0, size - len(archive(0))))


def touch_checkpoints(directory: Path, names: list[str], size: int = 0, mtime: float | None = None) -> list[Path]:
    """Like :func:`touch_files`, but each file looks whole to retention's quick check (see plausible_bytes)."""
    import os

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    payload = plausible_bytes(size)
    for name in names:
        path = directory / name
        path.write_bytes(payload)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        paths.append(path)
    return paths


_LAYOUT_TEMPLATE: list[Path] = []


def cached_layout(directory: Path) -> Path:
    """A copy of :func:`populate_layout`'s directory, written by torch once per test process.

    Copying ~200 KiB is ~50x faster than serialising twelve fresh checkpoints for every test.
    """
    import atexit
    import shutil
    import tempfile

    if not _LAYOUT_TEMPLATE:
        root = Path(tempfile.mkdtemp(prefix="ckptctl-layout-"))
        atexit.register(shutil.rmtree, root, True)
        _LAYOUT_TEMPLATE.append(populate_layout(root / "checkpoints"))
    return Path(shutil.copytree(_LAYOUT_TEMPLATE[0], directory))


def write_dcp(directory: Path, state: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    """A sharded (DCP) checkpoint directory saved in this process (DCP needs no process group)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming a single process"
        dcp.save(state if state is not None else make_state(**kwargs), checkpoint_id=directory)
    return directory


class SystemCall:
    """Pickles to ``os.system("touch MARKER")``: whatever unpickles it unsafely creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


_DCP_TEMPLATE: list[Path] = []


def cached_dcp_layout(directory: Path) -> Path:
    """A sharded (DCP) layout written once per test process by ``CheckpointManager(format="dcp")``, copied
    (symlinks as symlinks): rolling_step_000100/200/300, latest -> 300, latest_backup -> 200,
    best_model/ (step 300, val_loss 0.4), best_model_previous/ (step 200, val_loss 0.5), epoch_00001/."""
    import atexit
    import shutil
    import tempfile
    import warnings

    import torch

    from ckptctl.training.manager import CheckpointManager

    if not _DCP_TEMPLATE:
        root = Path(tempfile.mkdtemp(prefix="ckptctl-dcp-layout-")) / "checkpoints"
        atexit.register(shutil.rmtree, root.parent, True)
        mgr = CheckpointManager(root, format="dcp")

        def state(step: int) -> dict[str, Any]:
            return {"model": {"w": torch.full((8, 4), float(step))}, "step": step, "epoch": step // 200}

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in (100, 200, 300):
                mgr.save(state(step), step=step)
            mgr.save_best(state(200), step=200, val_loss=0.5)
            mgr.save_best(state(300), step=300, val_loss=0.4)
            mgr.save_epoch(state(300), epoch=1)
        _DCP_TEMPLATE.append(root)
    return Path(shutil.copytree(_DCP_TEMPLATE[0], directory, symlinks=True))
