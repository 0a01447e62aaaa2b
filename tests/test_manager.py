"""CheckpointManager: layout and update flows, retention, best tracking, monitoring, safe loading with fallback."""

from __future__ import annotations

import errno
import logging
import os
import random
import re
from collections import namedtuple

import pytest

torch = pytest.importorskip("torch")

from ckptctl import durable  # noqa: E402
from ckptctl.errors import LockedError, NoCheckpointError, SaveError, UnreadableCheckpoint, UnsafeCheckpoint  # noqa: E402
from ckptctl.locking import DirectoryLock  # noqa: E402
from ckptctl.training.manager import CheckpointManager, build_state, load_file  # noqa: E402
from ckptctl.formats.reader import read_checkpoint  # noqa: E402
from tests.factories import DiskFullFile, flip_byte_in_largest_tensor, make_state, write_checkpoint  # noqa: E402


def _step(path):
    return read_checkpoint(path).root["step"]


def _names(directory):
    return sorted(p.name for p in directory.iterdir() if p.name != ".ckptctl.lock")


def _inode(path):
    return os.stat(path).st_ino


# ------------------------------------------------------------------------------------- rolling


def test_rolling_save_layout_and_latest_backup_is_previous_latest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last_n=10)
    for step in (100, 200, 300):
        assert mgr.save(make_state(step=step), step=step) == tmp_path / f"rolling_step_{step:06d}.pt"
    assert _names(tmp_path) == [
        "latest.pt", "latest_backup.pt", "rolling_last_backup.pt",
        "rolling_step_000100.pt", "rolling_step_000200.pt", "rolling_step_000300.pt",
    ]  # fmt: skip
    assert _step(tmp_path / "latest.pt") == 300
    assert _step(tmp_path / "latest_backup.pt") == 200
    assert _step(tmp_path / "rolling_last_backup.pt") == 300
    # serialised once: latest.pt and the backups are links, never a second torch.save
    assert _inode(tmp_path / "latest.pt") == _inode(tmp_path / "rolling_step_000300.pt")
    assert _inode(tmp_path / "latest_backup.pt") == _inode(tmp_path / "rolling_step_000200.pt")
    assert _inode(tmp_path / "rolling_last_backup.pt") == _inode(tmp_path / "rolling_step_000300.pt")


def test_each_save_serialises_once(tmp_path, monkeypatch):
    calls = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (calls.append(1), real_save(obj, f, *a, **k)))
    mgr = CheckpointManager(tmp_path, backup_mode="copy")
    mgr.save(make_state(step=1), step=1)
    mgr.save(make_state(step=2), step=2)
    mgr.save_best(make_state(step=2), step=2, val_loss=0.5)
    mgr.save_best(make_state(step=3), step=3, val_loss=0.4)
    assert len(calls) == 4


def test_copy_mode_backups_are_independent_files(tmp_path):
    mgr = CheckpointManager(tmp_path, backup_mode="copy")
    mgr.save(make_state(step=1, hidden=128), step=1)
    mgr.save_best(make_state(step=1, hidden=128), step=1, val_loss=0.5)
    assert _inode(tmp_path / "rolling_last_backup.pt") != _inode(tmp_path / "rolling_step_000001.pt")
    assert _inode(tmp_path / "best_model_backup.pt") != _inode(tmp_path / "best_model.pt")
    flip_byte_in_largest_tensor(tmp_path / "best_model.pt")
    assert durable.verify_crc(tmp_path / "best_model_backup.pt") > 0  # the copy survives bit rot


def test_retention_keeps_last_n_rolling_and_emergency_separately_epochs_forever(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last_n=3, keep_emergency_n=2)
    for step in range(1, 8):
        mgr.save(make_state(step=step), step=step)
        mgr.save_epoch(make_state(step=step), epoch=step)
    for step in (10, 11, 12):
        mgr.save_emergency(make_state(step=step), step=step)
    names = _names(tmp_path)
    assert [n for n in names if n.startswith("rolling_step")] == [f"rolling_step_{s:06d}.pt" for s in (5, 6, 7)]
    assert [n.split("_")[2] for n in names if n.startswith("emergency")] == ["000011", "000012"]
    assert [n for n in names if n.startswith("epoch")] == [f"epoch_{e:05d}.pt" for e in range(1, 8)]
    assert _step(tmp_path / "latest.pt") == 7  # emergency saves never touch latest


def test_fewer_checkpoints_than_keep_n_are_all_kept(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last_n=5)
    for step in (1, 2):
        mgr.save(make_state(step=step), step=step)
    assert "rolling_step_000001.pt" in _names(tmp_path)


def test_fills_timestamp_and_type_without_mutating_the_callers_dict(tmp_path):
    mgr = CheckpointManager(tmp_path)
    state = make_state(step=1)
    del state["timestamp"], state["checkpoint_type"]
    mgr.save(state, step=5)
    mgr.save_emergency(make_state(step=6), step=6)  # factory says "regular": an emergency save says emergency
    root = read_checkpoint(tmp_path / "latest.pt").root
    assert root["checkpoint_type"] == "regular" and root["step"] == 5 and "T" in root["timestamp"]
    emergency = next(tmp_path.glob("emergency_step_000006_*.pt"))
    assert read_checkpoint(emergency).root["checkpoint_type"] == "emergency"
    assert "timestamp" not in state and state["step"] == 1


def test_non_master_process_saves_nothing(tmp_path):
    directory = tmp_path / "ckpt"
    mgr = CheckpointManager(directory, master_process=False)
    assert mgr.save(make_state(), step=1) is None
    assert mgr.save_best(make_state(), step=1, val_loss=0.1) is None
    assert mgr.save_epoch(make_state(), epoch=1) is None
    assert mgr.save_emergency(make_state(), step=1) is None
    assert not directory.exists()


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        CheckpointManager(tmp_path, keep_last_n=0)
    with pytest.raises(ValueError, match="backup_mode"):
        CheckpointManager(tmp_path, backup_mode="symlink")
    with pytest.raises(TypeError, match="state must be a dict"):
        CheckpointManager(tmp_path).save([1, 2], step=1)


# ---------------------------------------------------------------------------------------- best


def test_best_flow_previous_backup_and_only_if_better(tmp_path):
    mgr = CheckpointManager(tmp_path)
    assert mgr.save_best(make_state(step=1), step=1, val_loss=0.9) == tmp_path / "best_model.pt"
    assert mgr.save_best(make_state(step=2), step=2, val_loss=0.7) is not None
    assert mgr.save_best(make_state(step=3), step=3, val_loss=0.8) is None  # worse: nothing written
    assert mgr.save_best(make_state(step=4), step=4, val_loss=float("nan")) is None
    assert _step(tmp_path / "best_model.pt") == 2
    assert read_checkpoint(tmp_path / "best_model.pt").root["val_loss"] == 0.7
    assert _step(tmp_path / "best_model_backup.pt") == 2
    assert _step(tmp_path / "best_model_previous.pt") == 1
    assert mgr.best_val_loss == 0.7


def test_best_val_loss_survives_a_restart(tmp_path):
    CheckpointManager(tmp_path).save_best(make_state(step=1), step=1, val_loss=0.42)
    again = CheckpointManager(tmp_path)
    assert again.best_val_loss == 0.42
    assert again.save_best(make_state(step=2), step=2, val_loss=0.5) is None
    assert again.save_best(make_state(step=3), step=3, val_loss=0.4) is not None


def test_best_val_loss_from_backup_when_best_is_damaged(tmp_path, caplog):
    CheckpointManager(tmp_path, backup_mode="copy").save_best(make_state(step=1), step=1, val_loss=0.3)
    (tmp_path / "best_model.pt").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, "ckptctl.training.manager"):
        assert CheckpointManager(tmp_path).best_val_loss == 0.3
    assert "best_model.pt unreadable" in caplog.text


def test_failed_best_save_keeps_previous_best_files(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    mgr.save_best(make_state(step=1), step=1, val_loss=0.9)
    mgr.save_best(make_state(step=2), step=2, val_loss=0.8)

    def eio(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(durable, "_fsync", eio)
    with pytest.raises(SaveError, match="I/O error"):
        mgr.save_best(make_state(step=3), step=3, val_loss=0.1)
    assert (_step(tmp_path / "best_model.pt"), _step(tmp_path / "best_model_previous.pt")) == (2, 1)
    assert mgr.best_val_loss == 0.8
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------------ failures


def test_disk_full_mid_save_leaves_everything_intact(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last_n=2)
    for step in (1, 2, 3):
        mgr.save(make_state(step=step), step=step)
    before = {name: (tmp_path / name).read_bytes() for name in _names(tmp_path)}

    real_open = durable._open_temp
    monkeypatch.setattr(durable, "_open_temp", lambda path: DiskFullFile(real_open(path), 2048))
    with pytest.raises(SaveError, match="disk full") as info:
        mgr.save(make_state(step=4), step=4)
    assert "rolling_step_000004.pt" in str(info.value)
    after = {name: (tmp_path / name).read_bytes() for name in _names(tmp_path)}
    assert after == before  # same files, same bytes, no temp left, nothing pruned


def test_failure_after_the_rolling_file_keeps_the_previous_latest(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    mgr.save(make_state(step=1), step=1)
    real_link = os.link

    def link_eio(src, dst):
        if str(dst).startswith(str(tmp_path / "latest.pt")):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_link(src, dst)

    monkeypatch.setattr(durable.os, "link", link_eio)
    with pytest.raises(SaveError, match="latest.pt: I/O error"):
        mgr.save(make_state(step=2), step=2)
    assert _step(tmp_path / "latest.pt") == 1
    assert _step(tmp_path / "rolling_step_000002.pt") == 2  # complete, just not promoted
    assert not list(tmp_path.glob("*.tmp"))


def test_save_waits_for_the_directory_lock_then_reports_it(tmp_path):
    mgr = CheckpointManager(tmp_path, lock_wait=0.1)
    with DirectoryLock(tmp_path):
        with pytest.raises(LockedError, match="locked"):
            mgr.save(make_state(step=1), step=1)
    assert mgr.save(make_state(step=1), step=1) is not None


def test_startup_removes_partial_writes_of_a_dead_process(tmp_path, caplog):
    (tmp_path / "latest.pt.999.dead.tmp").write_bytes(b"half a checkpoint")
    write_checkpoint(tmp_path / "latest.pt", step=1)
    with caplog.at_level(logging.INFO, "ckptctl.training.manager"):
        CheckpointManager(tmp_path)
    assert _names(tmp_path) == ["latest.pt"]
    assert "latest.pt.999.dead.tmp" in caplog.text


# ---------------------------------------------------------------------------------- monitoring


def test_storage_line_every_n_saves(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, monitor_every=3)
    with caplog.at_level(logging.INFO, "ckptctl.training.manager"):
        for step in range(1, 7):
            mgr.save(make_state(step=step), step=step)
        mgr.save_epoch(make_state(), epoch=0)
        mgr.save_emergency(make_state(step=7), step=7)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Checkpoint storage:")]
    assert len(lines) == 2
    # du's words and numbers: the size on disk and the file count of each kind with files (as du's table)
    assert lines[0].startswith("Checkpoint storage: ") and " on disk (allocated, hard links once), " in lines[0]
    assert re.search(r", \d+ files \(\d+ latest, \d+ rolling\) — .+ free$", lines[0]), lines[0]
    summary = mgr.storage_summary()
    assert {k: summary.counts.get(k) for k in ("rolling", "epoch", "emergency")} == {"rolling": 6, "epoch": 1, "emergency": 1}
    unique = {os.stat(p).st_ino: os.stat(p).st_blocks * 512 for p in tmp_path.glob("*.pt")}
    assert summary.checkpoint_bytes == sum(unique.values())  # hard links counted once


def test_low_disk_space_warning(tmp_path, caplog, monkeypatch):
    from ckptctl.training import manager as manager_module

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(manager_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    mgr = CheckpointManager(tmp_path, monitor_every=0)
    with caplog.at_level(logging.WARNING, "ckptctl.training.manager"):
        mgr.save(make_state(step=1), step=1)
        mgr.save(make_state(step=2), step=2)
    warnings = [r for r in caplog.records if "low disk space" in r.getMessage()]
    assert len(warnings) == 1  # once on entering the low state, not on every save


# ------------------------------------------------------------------------------------- loading


def test_load_latest_and_best(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(make_state(step=10, namespace_args=True), step=10)
    mgr.save_best(make_state(step=10), step=10, val_loss=0.25)
    state = mgr.load("latest")
    assert state["step"] == 10 and isinstance(state["model"]["0.weight"], torch.Tensor)
    assert state["rng_state"]["numpy"][0] == "MT19937"
    assert state["args"].batch_size == 32  # argparse.Namespace allowed, as inert data
    assert mgr.load("best")["val_loss"] == 0.25
    assert mgr.loaded_path == tmp_path / "best_model.pt"


def test_allowlist_is_scoped_to_our_load(tmp_path):
    path = write_checkpoint(tmp_path / "a.pt", step=1)
    assert load_file(path)["step"] == 1
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # nothing was registered process-wide


def test_corrupted_latest_falls_back_and_says_so(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, backup_mode="copy")
    for step in (1, 2, 3):
        mgr.save(make_state(step=step, hidden=64), step=step)
    flip_byte_in_largest_tensor(tmp_path / "latest.pt")  # also rolling_step_3 (same inode); the copy is independent
    with caplog.at_level(logging.WARNING, "ckptctl.training.manager"):
        state = mgr.load("latest")
    assert state["step"] == 2 and mgr.loaded_path == tmp_path / "latest_backup.pt"
    assert "latest.pt unusable (CRC-32 mismatch" in caplog.text
    assert "falling back to latest_backup.pt" in caplog.text


def test_fallback_chain_reaches_rolling_files_and_skips_hard_links(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path)
    for step in (1, 2, 3):
        mgr.save(make_state(step=step, hidden=64), step=step)
    mgr.save_emergency(make_state(step=4, hidden=64), step=4)
    for name in ("latest.pt", "latest_backup.pt"):
        flip_byte_in_largest_tensor(tmp_path / name)  # latest.pt = rolling 3 = rolling_last_backup; latest_backup = rolling 2
    with caplog.at_level(logging.WARNING, "ckptctl.training.manager"):
        state = mgr.load("latest")
    assert state["step"] == 4  # the newest valid rolling or emergency checkpoint, by step
    assert "rolling_last_backup.pt unusable (same file as latest.pt (hard link))" in caplog.text
    os.unlink(next(tmp_path.glob("emergency_*.pt")))
    assert mgr.load("latest")["step"] == 1


def test_best_falls_back_to_backup_then_previous(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, backup_mode="copy")
    mgr.save_best(make_state(step=1, hidden=64), step=1, val_loss=0.9)
    mgr.save_best(make_state(step=2, hidden=64), step=2, val_loss=0.8)
    (tmp_path / "best_model.pt").unlink()
    with caplog.at_level(logging.WARNING, "ckptctl.training.manager"):
        assert mgr.load("best")["step"] == 2
    assert "best_model.pt unusable (missing); falling back to best_model_backup.pt" in caplog.text
    flip_byte_in_largest_tensor(tmp_path / "best_model_backup.pt")
    assert mgr.load("best")["step"] == 1


def test_load_path_and_nothing_loadable(tmp_path):
    mgr = CheckpointManager(tmp_path)
    path = write_checkpoint(tmp_path / "elsewhere.pt", step=77)
    assert mgr.load(str(path))["step"] == 77
    assert mgr.load("elsewhere.pt")["step"] == 77  # relative to the checkpoint directory
    with pytest.raises(NoCheckpointError, match="no checkpoints saved yet"):
        mgr.load("latest")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(NoCheckpointError, match="unknown file format"):
        mgr.load("broken.pt")


def test_hostile_checkpoint_is_refused_without_running_it(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "latest.pt"
    torch.save({"step": 1, "model": {}, "payload": Exploit()}, path, pickle_module=pickle)
    with pytest.raises(NoCheckpointError, match="references posix.system"):
        CheckpointManager(tmp_path).load("latest")
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpoint, match="posix.system"):
        load_file(path)
    assert not marker.exists()


def test_unsafe_load_only_when_asked(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"step": 1, "when": __import__("datetime").date(2026, 1, 1)}, path)
    with pytest.raises(UnreadableCheckpoint):
        load_file(path)
    assert load_file(path, unsafe=True)["when"].year == 2026


def test_resume_restores_model_optimizer_rng_and_dataloader_state(tmp_path):
    import numpy as np

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    mgr = CheckpointManager(tmp_path)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = build_state(step=5, epoch=1, model=model, optimizer=optimizer, train_loss=0.5,
                        dataloader_state={"epoch": 1, "batch_idx": 7}, args={"lr": 1e-3})  # fmt: skip
    mgr.save(state, step=5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    fresh = torch.nn.Linear(4, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    resumed = mgr.resume(fresh, fresh_opt)
    assert (resumed.step, resumed.epoch, resumed.dataloader_state) == (5, 1, {"epoch": 1, "batch_idx": 7})
    assert resumed.path == tmp_path / "latest.pt"
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_first_run_starts_fresh_without_warnings_or_exceptions(tmp_path, caplog):
    model = torch.nn.Linear(4, 2)
    before = model.weight.detach().clone()
    with caplog.at_level(logging.DEBUG, logger="ckptctl"):
        mgr = CheckpointManager(tmp_path / "new-run")
        resumed = mgr.resume(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert resumed.fresh and (resumed.path, resumed.step, resumed.epoch, resumed.state) == (None, 0, 0, {})
    assert "starting fresh" in resumed.reason
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert torch.equal(model.weight, before)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ckptctl"), pytest.raises(NoCheckpointError, match="no checkpoints saved yet"):
        mgr.load("latest")  # asking for latest.pt explicitly is still an error, but without fallback noise
    assert caplog.records == []


def test_a_directory_of_damaged_checkpoints_is_not_a_fresh_start(tmp_path):
    (tmp_path / "latest.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(NoCheckpointError, match="no loadable newest checkpoint"):
        CheckpointManager(tmp_path).resume(torch.nn.Linear(4, 2))


def test_resume_and_load_newest_pick_the_newest_valid_of_any_kind(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path)
    for step in (10, 20):
        mgr.save(make_state(step=step), step=step)
    best = mgr.save_best(make_state(step=25), step=25, val_loss=0.1)  # the newest training state
    assert mgr.load("newest")["step"] == 25 and mgr.loaded_path == best
    assert mgr.loaded_reason == "best_model.pt (step 25) is newer than latest.pt (step 20)"
    flip_byte_in_largest_tensor(best)  # best_model_backup.pt is a hard link: damaged too
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    with caplog.at_level(logging.WARNING, logger="ckptctl"):
        resumed = mgr.resume(model)
    assert (resumed.path.name, resumed.step) == ("latest.pt", 20)  # damaged newer files are passed over, logged
    assert "best_model.pt unusable" in caplog.text
    assert resumed.reason.startswith("latest.pt (step 20) is the newest valid checkpoint")
