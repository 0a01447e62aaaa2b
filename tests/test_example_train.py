"""examples/train.py end to end: train, resume from latest, Ctrl+C -> one emergency checkpoint and exit 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ckptctl.durable import verify_crc
from ckptctl.formats.reader import read_checkpoint
from tests.procs import Job

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train.py"
SMALL = ["--steps_per_epoch", "20", "--checkpoint_freq", "10", "--eval_freq", "10", "--keep_checkpoints", "2"]


def _example():
    """examples/train.py as a module, to run its main() in this process (saves a torch start-up)."""
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("example_train", SCRIPT)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(directory, *args, timeout=120):
    return subprocess.run([sys.executable, str(SCRIPT), "--checkpoint_dir", str(directory), *args],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _names(directory, prefix):
    return sorted(p.name for p in directory.glob(f"{prefix}*.pt"))


def test_train_resume_interrupt_and_list(tmp_path):
    directory = tmp_path / "run"
    assert _example().main(["--checkpoint_dir", str(directory), "--epochs", "2", *SMALL]) == 0
    assert _names(directory, "rolling_step") == ["rolling_step_000030.pt", "rolling_step_000040.pt"]
    assert _names(directory, "epoch") == ["epoch_00000.pt", "epoch_00001.pt"]
    assert read_checkpoint(directory / "latest.pt").root["step"] == 40
    assert read_checkpoint(directory / "best_model.pt").root["val_loss"] > 0
    rolling_before = {name: (directory / name).read_bytes() for name in _names(directory, "rolling_step")}

    # resume from latest, then press Ctrl+C (a real SIGINT) while it trains slowly
    command = [sys.executable, str(SCRIPT), "--checkpoint_dir", str(directory), "--resume", "latest",
               "--epochs", "50", *SMALL, "--step_delay", "0.02"]  # fmt: skip
    with Job(command, tmp_path / "logs", name="train") as job:
        started = job.wait_for_output("training steps")  # printed once the guard is installed: Ctrl+C now
        assert "resumed from latest.pt at step 40 (epoch 1, batch 20)" in started
        os.kill(job.proc.pid, signal.SIGINT)
        code = job.wait(timeout=60)
    out = err = job.log.read_text()
    assert code == 130, job.output()
    emergency = _names(directory, "emergency")
    assert len(emergency) == 1  # exactly one emergency checkpoint
    assert "interrupted by SIGINT at step" in out and emergency[0] in out
    assert "Traceback" not in err
    step = read_checkpoint(directory / emergency[0]).root["step"]
    assert step > 40 and read_checkpoint(directory / emergency[0]).root["checkpoint_type"] == "emergency"
    for name in os.listdir(directory):
        if name.endswith(".pt"):
            assert verify_crc(directory / name) > 0
    if step < 50:  # no rolling save happened between resume and Ctrl+C: the rolling files are untouched
        assert {name: (directory / name).read_bytes() for name in _names(directory, "rolling_step")} == rolling_before

    listed = _run(directory, "--list_checkpoints")
    assert listed.returncode == 0
    assert emergency[0] in listed.stdout and "latest.pt" in listed.stdout


def test_resume_from_nothing_is_a_clear_error(tmp_path):
    from ckptctl.errors import NoCheckpointError

    with pytest.raises(NoCheckpointError, match="no loadable latest checkpoint"):
        _example().main(["--checkpoint_dir", str(tmp_path / "empty"), "--resume", "latest", *SMALL])


def test_example_flags_match_the_original_document():
    args = _example().parse_args(["--checkpoint_freq", "5", "--keep_checkpoints", "3",
                                  "--keep_emergency_checkpoints", "4", "--resume", "best", "--list_checkpoints"])  # fmt: skip
    assert (args.checkpoint_freq, args.keep_checkpoints, args.keep_emergency_checkpoints) == (5, 3, 4)
    assert args.resume == "best" and args.list_checkpoints and args.checkpoint_dir == "./checkpoints"
