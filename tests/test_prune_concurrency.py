"""Cron simulation: ``ckptctl prune`` runs over and over while another process saves through CheckpointManager.

Must hold: no save fails, prune never removes what its policy keeps (nor a protected file, nor a
partial write of a save in progress, even with ``--stale-after 0s``), and ``latest.pt`` is a valid
checkpoint at every moment a reader looks.
"""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import timedelta
import threading
import time

from typer.testing import CliRunner

from ckptctl.cli.app import app
from ckptctl.durable import verify_crc
from ckptctl.layouts.naming import Kind, parse
from ckptctl.ops.prune import execute, plan_prune
from ckptctl.ops.retention import Policy
from ckptctl.formats.reader import read_checkpoint
from tests.procs import Job

STEPS = 100
KEEP_ROLLING = 3
KEEP_EMERGENCY = 1
POLICY = Policy(keep_rolling=KEEP_ROLLING, keep_emergency=KEEP_EMERGENCY, stale_temp_after=timedelta(0))

SAVER = textwrap.dedent(
    """
    import sys, time, torch
    from ckptctl.training.manager import CheckpointManager

    directory, steps = sys.argv[1], int(sys.argv[2])
    mgr = CheckpointManager(directory, keep_last_n=10, keep_emergency_n=10, lock_wait=60, monitor_every=0)
    for step in range(1, steps + 1):
        state = {"model": {"w": torch.full((64,), float(step))}, "step": step, "epoch": step // 10,
                 "val_loss": 1.0 / step}
        mgr.save(state, step=step)
        if step % 10 == 0:
            mgr.save_epoch(state, epoch=step // 10)
            mgr.save_best(state, step=step, val_loss=1.0 / step)
        if step % 7 == 0:
            mgr.save_emergency(state, step=step)
        print("saved", step, flush=True)
        time.sleep(0.01)  # a training step: lets cron's prunes land between saves, not only during one
    """
)


class LatestWatcher(threading.Thread):
    """Reads latest.pt (safe reader + CRC check) in a loop; records every failure."""

    def __init__(self, directory):
        super().__init__(daemon=True)
        self.directory = directory
        self.stop = threading.Event()
        self.reads = 0
        self.failures: list[str] = []
        self.last_step = 0

    def run(self) -> None:
        latest = self.directory / "latest.pt"
        while not self.stop.is_set():
            if not latest.exists() and self.reads == 0:
                time.sleep(0.01)  # before the first save
                continue
            try:
                step = read_checkpoint(latest).root["step"]
                verify_crc(latest)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if step < self.last_step:
                self.failures.append(f"latest.pt went back from step {self.last_step} to {step}")
            self.last_step = step
            self.reads += 1
            time.sleep(0.002)  # leave the GIL to the pruning thread


def order(name: str) -> tuple:
    parsed = parse(name)
    return (parsed.step, parsed.timestamp)


def check_prune_removals(directory, removed: list[str]) -> list[str]:
    """What prune removed must be outside its keep set: newer files of the same kind still number >= keep."""
    problems = []
    present = [p.name for p in directory.iterdir()]
    for name in removed:
        kind = parse(name).kind
        if kind is Kind.PARTIAL:
            problems.append(f"removed a partial write of a save in progress: {name}")
            continue
        if kind not in (Kind.ROLLING, Kind.EMERGENCY):
            problems.append(f"removed a protected file: {name}")
            continue
        keep = KEEP_ROLLING if kind is Kind.ROLLING else KEEP_EMERGENCY
        newer = [n for n in present if parse(n).kind is kind and order(n) > order(name)]
        if len(newer) < keep:
            problems.append(f"removed {name} with only {len(newer)} newer {kind.value} files left")
    return problems


def test_prune_from_cron_while_training_saves(tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    saver = Job([sys.executable, "-c", SAVER, str(directory), str(STEPS)], tmp_path / "logs", name="saver")
    watcher = LatestWatcher(directory)
    watcher.start()
    runner = CliRunner()
    args = ["prune", str(directory), "--yes", "--json", "--wait", "60", "--keep-rolling", str(KEEP_ROLLING),
            "--keep-emergency", str(KEEP_EMERGENCY), "--stale-after", "0s"]  # fmt: skip
    prunes, removed_total, problems = 0, 0, []
    try:
        while saver.proc.poll() is None and prunes < 2000:
            if not (directory / "latest.pt").exists():
                time.sleep(0.01)
                continue
            if prunes % 4 == 0:  # the cron command itself; in between the same core calls, 40x cheaper than Typer
                result = runner.invoke(app, args)
                assert result.exit_code == 0, result.output
                removed = json.loads(result.stdout)["removed"]
            else:
                removed = [e.name for e in execute(plan_prune(directory, POLICY), wait=60).removed]
            problems += check_prune_removals(directory, removed)
            removed_total += len(removed)
            prunes += 1
        code = saver.wait(timeout=120)
    finally:
        watcher.stop.set()
        watcher.join(timeout=10)
        saver.kill()
    assert code == 0, saver.output()
    assert f"saved {STEPS}\n" in saver.log.read_text(), saver.output()  # every save succeeded
    assert problems == []
    assert watcher.failures == [] and watcher.reads > 0
    print(f"{prunes} prunes removed {removed_total} files; latest.pt read {watcher.reads} times")
    assert prunes >= 2 and removed_total > 0  # prune really ran alongside and deleted something
    final = runner.invoke(app, args)
    assert final.exit_code == 0 and check_prune_removals(directory, json.loads(final.stdout)["removed"]) == []
    names = {p.name for p in directory.iterdir()}
    assert {f"epoch_{e:05d}.pt" for e in range(1, STEPS // 10 + 1)} <= names
    assert {"latest.pt", "latest_backup.pt", "rolling_last_backup.pt", "best_model.pt"} <= names
    assert sorted(n for n in names if parse(n).kind is Kind.ROLLING) == [
        f"rolling_step_{s:06d}.pt" for s in range(STEPS - KEEP_ROLLING + 1, STEPS + 1)]
    assert read_checkpoint(directory / "latest.pt").root["step"] == STEPS
    assert not [n for n in names if n.endswith(".tmp")]
