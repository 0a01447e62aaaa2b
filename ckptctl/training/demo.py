"""The demo behind ``ckptctl demo``: a real CheckpointManager driving a tiny training run, in seconds.

It trains a small MLP on synthetic regression data and exercises every part of the layout:
rolling saves with retention, best-model updates, epoch ends, and an emergency save triggered by a
real SIGINT the process sends itself mid-step (exactly what a Ctrl+C does). The result is an
ordinary checkpoint directory that every ``ckptctl`` command can be tried on.

torch is imported inside :func:`run_demo`, so importing this module stays light.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..layouts.catalog import scan
from ..errors import BadInputError
from ..locking import DirectoryLock
from ..layouts.naming import Kind
from ..wording import plural

MARKER = ".ckptctl-demo"  # marks a directory the demo made, so a re-run may clear it


@dataclass
class DemoResult:
    """What the demo did; ``events`` is the human-readable story, in order."""

    directory: str
    steps_run: int
    interrupted_at: int | None
    emergency_checkpoint: str | None
    best_val_loss: float | None
    latest_step: int | None
    events: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def prepare_directory(directory: str | os.PathLike[str], force: bool = False) -> Path:
    """Create DIR, or clear an earlier demo's checkpoints from it; refuse someone else's directory.

    A non-empty directory without the demo's marker is refused (BadInputError, exit 2) unless
    ``force``: then the demo writes into it but deletes nothing it did not write itself (its
    retention may still prune old rolling/emergency checkpoints there, as a real run would).
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"not a directory: {path}")
    is_demo = (path / MARKER).is_file()
    if path.is_dir() and any(path.iterdir()) and not is_demo and not force:
        raise BadInputError(
            f"{path} is not empty and was not made by `ckptctl demo`: choose a new directory or pass --force"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create {path}: {exc.strerror or exc}") from None
    if is_demo:
        _clear_previous_demo(path)
    elif not any(path.iterdir()):
        (path / MARKER).write_text("made by `ckptctl demo`; a re-run clears the checkpoints here\n")
    return path


def _clear_previous_demo(path: Path) -> None:
    with DirectoryLock(path):
        for entry in scan(path):
            if entry.parsed.is_checkpoint or entry.kind is Kind.PARTIAL:
                entry.path.unlink(missing_ok=True)


def run_demo(
    directory: str | os.PathLike[str],
    *,
    steps: int = 300,
    on_event: Callable[[str], None] | None = None,
) -> DemoResult:
    """Train for ``steps`` steps (3 epochs), checkpointing like a real run; Ctrl+C itself at 90%.

    Rolling save every ``steps // 15`` steps (keep 5), validation every ``steps // 6`` (best
    updates), an epoch checkpoint at each epoch end, an emergency checkpoint after the SIGINT.
    """
    import torch

    from .manager import CheckpointManager, build_state
    from .signals import EmergencyStop

    if steps < 30:
        raise BadInputError(f"--steps must be at least 30, got {steps}")
    result = DemoResult(str(directory), 0, None, None, None, None)

    def event(message: str) -> None:
        result.events.append(message)
        if on_event is not None:
            on_event(message)

    torch.manual_seed(0)
    data = _synthetic_data(torch)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    manager = CheckpointManager(directory, keep_last_n=5, keep_emergency_n=3, monitor_every=10)
    steps_per_epoch, save_every, eval_every = steps // 3, max(1, steps // 15), max(1, steps // 6)
    interrupt_at = steps - steps // 10
    event(f"training a {sum(p.numel() for p in model.parameters())}-parameter MLP for {plural(steps, 'step')} in {directory}")
    last_val: float | None = None
    with EmergencyStop() as stop:
        for step in range(1, steps + 1):
            epoch, batch = divmod(step - 1, steps_per_epoch)
            mid_step = (lambda: _interrupt_self(stop)) if step == interrupt_at else None
            loss = _train_step(torch, model, optimizer, data, step, mid_step)
            if mid_step is not None:
                event(f"step {step}: sent SIGINT to itself (a Ctrl+C) between backward() and optimizer.step()")
            result.steps_run = step

            def state() -> dict:
                return build_state(step=step, epoch=epoch, model=model, optimizer=optimizer, train_loss=loss,
                                   val_loss=last_val, dataloader_state={"epoch": epoch, "batch_idx": batch + 1},
                                   args={"steps": steps, "lr": 3e-3, "demo": True})  # fmt: skip

            if stop.requested:
                path = manager.save_emergency(state(), step=step)
                result.interrupted_at, result.emergency_checkpoint = step, path.name if path else None
                event(f"step {step}: {stop.signal_name} handled at the step boundary -> {result.emergency_checkpoint}")
                break
            if step % eval_every == 0:
                last_val = _validate(torch, model, data)
                if manager.save_best(state(), step=step, val_loss=last_val):
                    event(f"step {step}: new best val_loss {last_val:.4f} -> best_model.pt")
            if step % save_every == 0:
                manager.save(state(), step=step)
                if step == save_every:
                    event(f"step {step}: rolling save -> rolling_step_{step:06d}.pt + latest.pt "
                          f"(every {plural(save_every, 'step')}, keep 5)")  # fmt: skip
            if (batch + 1) == steps_per_epoch:
                manager.save_epoch(state(), epoch=epoch)
                event(f"step {step}: end of epoch {epoch} -> epoch_{epoch:05d}.pt")
    result.best_val_loss = manager.best_val_loss
    result.latest_step = manager.load("latest").get("step")
    event(f"latest.pt loads safely (weights_only=True) at step {result.latest_step}")
    return result


def _interrupt_self(stop) -> None:
    """A real SIGINT where handlers can be installed; the plain API where they cannot (not main thread)."""
    if threading.current_thread() is threading.main_thread():
        os.kill(os.getpid(), signal.SIGINT)
    else:
        stop.request(signal.SIGINT)


def _synthetic_data(torch):
    """y = tanh(x·w) + noise: learnable by a small MLP, so val_loss falls and best updates happen."""
    w = torch.randn(16, 1) / 4
    x_train, x_val = torch.randn(2048, 16), torch.randn(512, 16)
    y_train = torch.tanh(x_train @ w) + 0.05 * torch.randn(2048, 1)
    y_val = torch.tanh(x_val @ w) + 0.05 * torch.randn(512, 1)
    return x_train, y_train, x_val, y_val


def _train_step(torch, model, optimizer, data, step: int, mid_step: Callable[[], None] | None) -> float:
    x_train, y_train, _, _ = data
    index = torch.randint(0, x_train.shape[0], (64,), generator=torch.Generator().manual_seed(step))
    loss = torch.nn.functional.mse_loss(model(x_train[index]), y_train[index])
    optimizer.zero_grad()
    loss.backward()
    if mid_step is not None:
        mid_step()  # the handler only records the request: the step still completes consistently
    optimizer.step()
    return float(loss.detach())


def _validate(torch, model, data) -> float:
    _, _, x_val, y_val = data
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x_val), y_val))
