#!/usr/bin/env python3
"""A complete training script that never loses a run: ckptctl's CheckpointManager in a real loop.

    python examples/train.py --checkpoint_dir runs/exp1                  # train from scratch
    python examples/train.py --checkpoint_dir runs/exp1 --resume latest  # continue after a crash
    python examples/train.py --checkpoint_dir runs/exp1 --list_checkpoints

What the manager does for this loop:
- every --checkpoint_freq steps: rolling_step_N.pt + latest.pt (+ backups), keeping the last
  --keep_checkpoints rolling files;
- after each validation: best_model.pt if val_loss improved (also across restarts);
- at each epoch end: epoch_NNNNN.pt, kept forever;
- Ctrl+C or SIGTERM: the current step finishes, an emergency checkpoint is written from that
  consistent state, and the script exits with 130 / 143 (a second Ctrl+C aborts at once);
- --resume: model, optimizer, RNG states and the loader's exact position (the next batch is the one
  an uninterrupted run would have drawn).

Under torchrun (``torchrun --nproc_per_node 2 examples/train.py ...``) it joins a gloo process group
and trains with DistributedDataParallel; every rank calls every manager method (rank 0 writes, rank
0's val_loss decides) and ``stop.check()`` — never ``if rank == 0: manager.save_best(...)``, which
raises CollectiveError (see the README, "Multi-process training").

The model (a small MLP on synthetic regression data) is only there to have something to train.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint_dir", default="./checkpoints", help="where checkpoints live")
    parser.add_argument("--checkpoint_freq", type=int, default=100, help="rolling checkpoint every N steps")
    parser.add_argument("--keep_checkpoints", type=int, default=10, help="rolling checkpoints to keep")
    parser.add_argument("--keep_emergency_checkpoints", type=int, default=10, help="emergency checkpoints to keep")
    parser.add_argument("--backup_mode", choices=("link", "copy", "reflink"), default="link",
                        help="how *_backup.pt files are made: hard link (free, no bit-rot protection) or a copy")
    parser.add_argument("--resume", metavar="latest|best|PATH", help="continue from this checkpoint")
    parser.add_argument("--list_checkpoints", action="store_true", help="list the checkpoints and exit")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps_per_epoch", type=int, default=200)
    parser.add_argument("--eval_freq", type=int, default=50, help="validate (and maybe save best) every N steps")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step_delay", type=float, default=0.0, help="sleep per step (to watch Ctrl+C handling)")
    return parser.parse_args(argv)


class SyntheticLoader:
    """Batches of y = tanh(x·w) + noise, reshuffled per epoch; resumable through its state dict."""

    def __init__(self, torch, batch_size: int, steps_per_epoch: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.torch, self.batch_size, self.steps_per_epoch, self.seed = torch, batch_size, steps_per_epoch, seed
        w = torch.randn(16, 1, generator=generator) / 4
        self.x = torch.randn(steps_per_epoch * batch_size, 16, generator=generator)
        self.y = torch.tanh(self.x @ w) + 0.05 * torch.randn(self.x.shape[0], 1, generator=generator)
        self.x_val = torch.randn(512, 16, generator=generator)
        self.y_val = torch.tanh(self.x_val @ w)
        self.epoch, self.batch_idx = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_idx": self.batch_idx, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_idx = state["epoch"], state["batch_idx"]

    def next_batch(self):
        """The next batch of the current epoch; the same (epoch, batch_idx) always gives the same batch."""
        order = self.torch.randperm(self.x.shape[0], generator=self.torch.Generator().manual_seed(self.seed + self.epoch))
        index = order[self.batch_idx * self.batch_size : (self.batch_idx + 1) * self.batch_size]
        self.batch_idx += 1
        return self.x[index], self.y[index]

    def end_of_epoch(self) -> bool:
        return self.batch_idx >= self.steps_per_epoch

    def start_next_epoch(self) -> None:
        self.epoch, self.batch_idx = self.epoch + 1, 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.list_checkpoints:  # no torch needed to look at a directory
        from ckptctl.cli.app import app

        app(["list", args.checkpoint_dir], prog_name="ckptctl")

    import torch

    from ckptctl.training import distributed
    from ckptctl.training.manager import CheckpointManager, build_state
    from ckptctl.training.signals import EmergencyStop

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: one process group for all ranks
        import torch.distributed as dist

        dist.init_process_group("gloo")
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loader = SyntheticLoader(torch, args.batch_size, args.steps_per_epoch, args.seed)
    # on every rank; the default master_process=None means "rank 0 writes" under a process group
    manager = CheckpointManager(
        args.checkpoint_dir,
        keep_last_n=args.keep_checkpoints,
        keep_emergency_n=args.keep_emergency_checkpoints,
        backup_mode=args.backup_mode,
    )

    step, val_loss = 0, None  # val_loss: the latest validation result, stored in every checkpoint
    if args.resume:  # weights_only load with fallback; the same file on every rank
        resumed = manager.resume(model, optimizer, which=args.resume, dataloader=loader)
        step, val_loss = resumed.step or 0, resumed.state.get("val_loss")
        print(f"resumed from {resumed.path.name} at step {step} (epoch {loader.epoch}, batch {loader.batch_idx})",
              flush=True)  # fmt: skip
    trained = model
    if distributed.is_active():  # gradients averaged over the ranks; checkpoints hold the plain model
        trained = torch.nn.parallel.DistributedDataParallel(model)

    def checkpoint(train_loss: float) -> dict:
        return build_state(step=step, epoch=loader.epoch, model=model, optimizer=optimizer, train_loss=train_loss,
                           val_loss=val_loss, dataloader=loader, args=args)  # fmt: skip

    total_steps = args.epochs * args.steps_per_epoch
    with EmergencyStop() as stop:
        print(f"training steps {step + 1}..{total_steps} (Ctrl+C saves an emergency checkpoint)", flush=True)
        while step < total_steps:
            if loader.end_of_epoch():
                loader.start_next_epoch()
            x, y = loader.next_batch()
            loss = torch.nn.functional.mse_loss(trained(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            train_loss = float(loss.detach())
            time.sleep(args.step_delay)

            if stop.check():  # Ctrl+C / SIGTERM arrived (on any rank): save this step, then leave
                path = manager.save_emergency(checkpoint(train_loss), step=step)
                print(f"interrupted by {stop.signal_name} at step {step}: saved {path}; "
                      f"resume with --resume {path}", flush=True)  # fmt: skip
                stop.exit()  # exit code 130 (SIGINT) or 143 (SIGTERM); 0 on every rank under torchrun
            if step % args.eval_freq == 0:
                with torch.no_grad():
                    val_loss = float(torch.nn.functional.mse_loss(model(loader.x_val), loader.y_val))
                if manager.save_best(checkpoint(train_loss), step=step, val_loss=val_loss):  # on every rank
                    print(f"step {step}: new best val_loss {val_loss:.5f}", flush=True)
            if step % args.checkpoint_freq == 0:
                path = manager.save(checkpoint(train_loss), step=step)
                print(f"step {step}: saved {path.name if path else '(not rank 0)'} train_loss {train_loss:.5f}",
                      flush=True)  # fmt: skip
            if loader.end_of_epoch():
                manager.save_epoch(checkpoint(train_loss), epoch=loader.epoch)
                print(f"step {step}: end of epoch {loader.epoch}", flush=True)
    print(f"done: {step} steps; best val_loss {manager.best_val_loss}", flush=True)
    return 0


if __name__ == "__main__":
    from ckptctl.errors import CkptctlError

    try:
        sys.exit(main())
    except CkptctlError as exc:  # e.g. --resume latest with nothing loadable: one clear line, exit 1
        print(f"train.py: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl+C before training started: nothing to save yet
        print("train.py: interrupted before training started", file=sys.stderr)
        sys.exit(130)
