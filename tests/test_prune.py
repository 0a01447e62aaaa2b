"""Prune plan and execution: names and stat only, deletes under the lock, re-plans, never more than planned."""

from __future__ import annotations

import builtins
import errno
import os
import threading
import time
from datetime import timedelta

import pytest

from ckptctl.layouts import catalog
from ckptctl.ops import prune as prune_module
from ckptctl.errors import BadInputError, CheckpointError, LockedError
from ckptctl.locking import DirectoryLock
from ckptctl.ops.prune import execute, plan_prune
from ckptctl.ops.retention import Policy
from tests.factories import plausible_bytes, touch_checkpoints, touch_files

PROTECTED = ["latest.pt", "latest_backup.pt", "best_model.pt", "best_model_backup.pt", "best_model_previous.pt",
             "epoch_00000.pt", "rolling_last_backup.pt"]  # fmt: skip


def rolling(*steps: int) -> list[str]:
    return [f"rolling_step_{s:06d}.pt" for s in steps]


def present(directory) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.fixture
def no_checkpoint_opened(monkeypatch):
    """Fail if anything reads a checkpoint's pickle, or opens a *.pt file other than a rolling or
    emergency candidate (retention's quick check of the files it keeps), or a *.tmp file.
    Yields the list of opened paths, for tests to bound the quick checks."""
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *args, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else "")
        return real_open(file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_os_open(path, *args, **kwargs)

    def no_read(path):
        raise AssertionError(f"read a checkpoint: {path}")

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(catalog, "read_checkpoint", no_read)
    yield opened
    candidates = ("rolling_step_", "emergency_step_")
    assert not [p for p in opened if p.endswith(".tmp") or (p.endswith(".pt") and not os.path.basename(p).startswith(candidates))]


def test_plan_changes_nothing_and_opens_no_checkpoint(tmp_path, no_checkpoint_opened):
    touch_checkpoints(tmp_path, rolling(1, 2, 3, 4, 5), mtime=time.time() - 3 * 86400)
    touch_checkpoints(tmp_path, PROTECTED + rolling(*range(6, 16)) + ["notes.txt"])
    touch_files(tmp_path, ["x.pt.1.a.tmp"])
    before = present(tmp_path)
    plan = plan_prune(tmp_path, Policy(keep_every=5, keep_within=timedelta(days=1), stale_temp_after=timedelta(hours=1)))
    assert [e.name for e in plan.deletions] == rolling(1, 2, 3, 4)
    assert present(tmp_path) == before
    # only the 10 files "last 10" keeps get a quick look (newest first), each once
    assert sorted(os.path.basename(p) for p in no_checkpoint_opened) == rolling(*range(6, 16))


def test_execute_deletes_the_plan_and_nothing_else(tmp_path, no_checkpoint_opened):
    now = time.time()
    touch_checkpoints(tmp_path, PROTECTED + rolling(*range(1, 15)) + ["notes.txt"], size=200)
    touch_files(tmp_path, ["rolling_step_000015.pt.9.ab.tmp"], size=7, mtime=now - 7200)
    touch_files(tmp_path, ["rolling_step_000016.pt.9.cd.tmp"], size=7, mtime=now)
    plan = plan_prune(tmp_path, Policy(keep_rolling=3, keep_every=5, stale_temp_after=timedelta(hours=1)))
    expected = rolling(1, 2, 3, 4, 6, 7, 8, 9, 11) + ["rolling_step_000015.pt.9.ab.tmp"]
    assert [e.name for e in plan.deletions] == expected
    assert plan.freed_bytes == 9 * 200 + 7
    result = execute(plan)
    assert [e.name for e in result.removed] == expected and result.skipped == []
    assert result.freed_bytes == 1807
    assert present(tmp_path) == set(PROTECTED + rolling(5, 10, 12, 13, 14)) | {
        "notes.txt", "rolling_step_000016.pt.9.cd.tmp", ".ckptctl.lock"}
    # a second prune is a no-op
    again = plan_prune(tmp_path, Policy(keep_rolling=3, keep_every=5, stale_temp_after=timedelta(hours=1)))
    assert again.deletions == []
    assert execute(again).removed == []


def test_nothing_to_delete_does_not_take_the_lock(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2))
    with DirectoryLock(tmp_path):
        assert execute(plan_prune(tmp_path, Policy())).removed == []


def test_locked_directory_raises_and_deletes_nothing(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    plan = plan_prune(tmp_path, Policy(keep_rolling=1))
    with DirectoryLock(tmp_path):
        with pytest.raises(LockedError):
            execute(plan, wait=0)
    assert present(tmp_path) >= set(rolling(1, 2, 3))


def test_wait_gets_the_lock_once_released(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    plan = plan_prune(tmp_path, Policy(keep_rolling=1))
    lock = DirectoryLock(tmp_path).acquire()
    timer = threading.Timer(0.2, lock.release)
    timer.start()
    try:
        result = execute(plan, wait=30)
    finally:
        timer.join()
    assert [e.name for e in result.removed] == rolling(1, 2)


def test_a_save_between_plan_and_lock_removes_no_more_than_planned(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3, 4))
    plan = plan_prune(tmp_path, Policy(keep_rolling=2))
    touch_checkpoints(tmp_path, rolling(5))  # a save lands after the plan was shown
    result = execute(plan)
    assert [e.name for e in result.removed] == rolling(1, 2)
    assert present(tmp_path) >= set(rolling(3, 4, 5))  # step 3 is removable now, but was not in the plan


def test_a_file_replaced_under_its_name_is_not_deleted(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    plan = plan_prune(tmp_path, Policy(keep_rolling=1))
    touch_checkpoints(tmp_path, ["new"])
    os.replace(tmp_path / "new", tmp_path / rolling(1)[0])  # a new file under the planned name
    (tmp_path / rolling(2)[0]).unlink()  # and one vanished
    result = execute(plan)
    assert result.removed == []
    assert sorted(e.name for e in result.skipped) == rolling(1, 2)
    assert rolling(1)[0] in present(tmp_path)


def test_a_file_the_fresh_plan_keeps_is_not_deleted(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    plan = plan_prune(tmp_path, Policy(keep_rolling=1))
    (tmp_path / rolling(3)[0]).unlink()  # now step 2 is the newest: the policy keeps it
    result = execute(plan)
    assert [e.name for e in result.removed] == rolling(1)
    assert [e.name for e in result.skipped] == rolling(2)
    assert rolling(2)[0] in present(tmp_path)


def test_refusal_and_bad_directory(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2))
    with pytest.raises(BadInputError, match="refusing"):
        plan_prune(tmp_path, Policy(keep_rolling=0))
    with pytest.raises(BadInputError, match="no such directory"):
        plan_prune(tmp_path / "missing", Policy())
    assert present(tmp_path) == set(rolling(1, 2))


def test_a_directory_without_checkpoints_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="empty directory"):
        plan_prune(tmp_path, Policy())
    touch_checkpoints(tmp_path, ["notes.txt", "data.csv"])  # (a model.pth is a loose-files layout now)
    with pytest.raises(BadInputError, match="no checkpoints"):
        plan_prune(tmp_path, Policy())
    # a file with a checkpoint suffix makes it a directory of loose checkpoint files (layouts/loose.py)
    from ckptctl.layouts import registry

    touch_checkpoints(tmp_path, ["model.pth"])
    assert registry.detect(tmp_path).name == "loose"


def test_keep_best_k_never_runs_a_hostile_pickle(tmp_path):
    from tests.factories import write_checkpoint, write_hostile_checkpoint

    marker = tmp_path / "pwned"
    directory = tmp_path / "ckpt"
    write_hostile_checkpoint(directory / rolling(100)[0], marker)
    write_checkpoint(directory / rolling(200)[0], step=200, val_loss=0.9, hidden=2)
    write_checkpoint(directory / rolling(300)[0], step=300, val_loss=0.8, hidden=2)
    plan = plan_prune(directory, Policy(keep_rolling=1, keep_best_k=1))
    assert not marker.exists()
    assert [e.name for e in plan.deletions] == rolling(100, 200)  # the hostile file is not "best": it has no val_loss


def test_read_only_directory_is_bad_input_and_nothing_deleted(tmp_path, monkeypatch):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    plan = plan_prune(tmp_path, Policy(keep_rolling=1))
    real_access = os.access  # as root, chmod alone would not make the directory read-only
    monkeypatch.setattr(prune_module.os, "access", lambda path, mode: not mode & os.W_OK and real_access(path, mode))
    with pytest.raises(BadInputError, match="read-only"):
        execute(plan)
    assert present(tmp_path) == set(rolling(1, 2, 3))


def test_directory_refusing_the_first_unlink_is_bad_input(tmp_path, monkeypatch):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    plan = plan_prune(tmp_path, Policy(keep_rolling=1))

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(prune_module.os, "unlink", refuse)
    with pytest.raises(BadInputError, match="nothing was deleted"):
        execute(plan)
    assert set(rolling(1, 2, 3)) <= present(tmp_path)


def test_failure_after_a_deletion_says_what_was_deleted(tmp_path, monkeypatch):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    plan = plan_prune(tmp_path, Policy(keep_rolling=1))
    real_unlink = os.unlink
    calls = []

    def flaky(path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error", str(path))
        real_unlink(path)

    monkeypatch.setattr(prune_module.os, "unlink", flaky)
    with pytest.raises(CheckpointError, match="1 file was deleted before it"):
        execute(plan)
    assert rolling(1)[0] not in present(tmp_path) and rolling(2)[0] in present(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_chmod_read_only_directory(tmp_path):
    directory = tmp_path / "ro"
    touch_checkpoints(directory, rolling(1, 2, 3))
    plan = plan_prune(directory, Policy(keep_rolling=1))
    directory.chmod(0o555)
    try:
        with pytest.raises(BadInputError):
            execute(plan)
    finally:
        directory.chmod(0o755)
    assert set(rolling(1, 2, 3)) <= present(directory)


def test_keep_best_k_execution_reads_metadata(tmp_path):
    from tests.factories import write_checkpoint

    for step, loss in ((100, 0.2), (200, 0.9), (300, 0.8)):
        write_checkpoint(tmp_path / rolling(step)[0], step=step, val_loss=loss, hidden=2)
    result = execute(plan_prune(tmp_path, Policy(keep_rolling=1, keep_best_k=1)))
    assert [e.name for e in result.removed] == rolling(200)


# ------------------------------------------------------------------------------ property test

from datetime import datetime  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

VAL_LOSSES = (0.1, 0.2, 0.3, 0.5, float("nan"))
STRAYS = ("notes.txt", "rolling_step_12.pt", "model.pth", "epoch_1.pt", "emergency_step_000001_20261399_000000.pt")
ALL_PROTECTED = PROTECTED + ["epoch_00001.pt", "epoch_00123.pt"]
BASE = datetime(2026, 3, 1, 12, 0, 0).timestamp()
_checkpoint_bytes: dict[float, bytes] = {}


def checkpoint_bytes(val_loss: float) -> bytes:
    """A small real checkpoint holding ``val_loss`` (serialised once per value)."""
    key = repr(val_loss)
    if key not in _checkpoint_bytes:
        import io

        import torch

        buffer = io.BytesIO()
        torch.save({"step": 0, "val_loss": val_loss}, buffer)
        _checkpoint_bytes[key] = buffer.getvalue()
    return _checkpoint_bytes[key]


directories = st.fixed_dictionaries({
    "rolling": st.dictionaries(st.integers(0, 3000), st.tuples(st.integers(0, 30 * 86400), st.sampled_from(VAL_LOSSES)), max_size=14),
    "emergency": st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 60 * 86400)), max_size=6),
    "protected": st.lists(st.tuples(st.sampled_from(ALL_PROTECTED), st.integers(0, 30 * 86400)), max_size=5),
    "strays": st.lists(st.sampled_from(STRAYS), max_size=3),
    "temps": st.lists(st.integers(0, 3 * 3600), max_size=3),
    "pointers": st.dictionaries(st.sampled_from(ALL_PROTECTED), st.integers(0, 3000), max_size=3),
})  # fmt: skip
policies = st.builds(
    Policy,
    keep_rolling=st.integers(0, 12),
    keep_emergency=st.integers(0, 12),
    keep_every=st.one_of(st.none(), st.integers(1, 1000)),
    keep_within=st.one_of(st.none(), st.integers(0, 20 * 24).map(lambda h: timedelta(hours=h))),
    keep_best_k=st.integers(0, 3),
    stale_temp_after=st.just(timedelta(hours=1)),
)


def build(directory: Path, spec: dict) -> dict:
    """Write the directory; return what the test needs to know about each candidate."""
    info: dict[str, dict] = {}
    for step, (age, loss) in spec["rolling"].items():
        name = rolling(step)[0]
        (directory / name).write_bytes(checkpoint_bytes(loss))
        os.utime(directory / name, (BASE - age, BASE - age))
        info[name] = {"kind": "rolling", "step": step, "order": (step,), "loss": loss}
    for step, offset in spec["emergency"]:
        stamp = datetime.fromtimestamp(BASE - offset).replace(microsecond=0)
        name = f"emergency_step_{step:06d}_{stamp:%Y%m%d_%H%M%S}.pt"
        (directory / name).write_bytes(plausible_bytes())
        info[name] = {"kind": "emergency", "step": step, "order": (step, stamp), "time": stamp.timestamp()}
    for name, age in spec["protected"]:
        (directory / name).write_bytes(b"p")
        os.utime(directory / name, (BASE - age, BASE - age))
    for name, step in spec["pointers"].items():  # a symlinked pointer (dangling when that step was not written)
        if not os.path.lexists(directory / name):
            os.symlink(rolling(step)[0], directory / name)
    for name in spec["strays"]:
        (directory / name).write_bytes(b"s")
    for i, age in enumerate(spec["temps"]):
        path = directory / f"rolling_step_{i:06d}.pt.{i}.ab.tmp"
        path.write_bytes(b"t")
        os.utime(path, (time.time() - age, time.time() - age))
    for name, item in info.items():
        item.setdefault("time", os.stat(directory / name).st_mtime)
    return info


def expected_keep(directory: Path, info: dict, policy: Policy) -> set[str]:
    """Each rule computed on its own, straight from the rule's definition, then OR'ed."""
    keep: set[str] = set()
    for kind, count in (("rolling", policy.keep_rolling), ("emergency", policy.keep_emergency)):
        ordered = sorted((n for n in info if info[n]["kind"] == kind), key=lambda n: info[n]["order"])
        keep |= set(ordered[max(0, len(ordered) - count) :]) if count else set()
    if policy.keep_every:
        keep |= {n for n in info if info[n]["step"] % policy.keep_every == 0}
    if policy.keep_within is not None:
        protected_times = [os.stat(p).st_mtime for p in directory.iterdir() if p.name in ALL_PROTECTED and p.exists()]
        newest = max([i["time"] for i in info.values()] + protected_times, default=0.0)
        keep |= {n for n in info if newest - info[n]["time"] <= policy.keep_within.total_seconds()}
    if policy.keep_best_k:
        scored = sorted((info[n]["loss"], -info[n]["step"], n) for n in info
                        if info[n]["kind"] == "rolling" and info[n]["loss"] == info[n]["loss"])  # fmt: skip
        keep |= {n for _loss, _step, n in scored[: policy.keep_best_k]}
    pointers = [p for p in directory.iterdir() if p.name in ALL_PROTECTED and p.is_symlink()]
    return keep | {os.readlink(p) for p in pointers if os.readlink(p) in info}  # a pointer's target stays


@settings(max_examples=int(os.environ.get("CKPTCTL_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=directories, policy=policies)
@example(spec={"rolling": {}, "emergency": [], "protected": [], "strays": [], "temps": [3600], "pointers": {}},
         policy=Policy(keep_rolling=0, keep_emergency=0, stale_temp_after=timedelta(hours=1)))  # fmt: skip
@example(spec={"rolling": {}, "emergency": [], "protected": [], "strays": ["rolling_step_12.pt"], "temps": [], "pointers": {}},
         policy=Policy())  # a lone stray torch file is a loose-files directory, not bad input  # fmt: skip
@example(spec={"rolling": {}, "emergency": [], "protected": [], "strays": ["notes.txt"], "temps": [], "pointers": {}},
         policy=Policy())  # fmt: skip
def test_property_prune_keeps_exactly_what_the_rules_keep(spec, policy):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        info = build(directory, spec)
        before = {p.name for p in directory.iterdir()}
        protected = {n for n, _age in spec["protected"]} | set(spec["pointers"])
        live = protected - {p.name for p in directory.iterdir() if p.is_symlink() and not p.exists()}  # not dangling
        stale = {n for n in before if n.endswith(".tmp") and time.time() - os.stat(directory / n).st_mtime >= 3600}
        keep = expected_keep(directory, info, policy)
        removed = set(info) - keep
        if not info and not protected and not spec["temps"]:
            _assert_nothing_to_prune(directory, spec["strays"], policy)
            assert {p.name for p in directory.iterdir()} - {".ckptctl.lock"} == before
            return
        if removed and not keep and not live:
            with pytest.raises(BadInputError, match="refusing"):
                plan_prune(directory, policy)
            assert {p.name for p in directory.iterdir()} == before
            return
        result = execute(plan_prune(directory, policy))
        after = {p.name for p in directory.iterdir()} - {".ckptctl.lock"}
        assert protected <= after and set(spec["strays"]) <= after
        assert {e.name for e in result.removed} == removed | stale
        assert after == before - removed - stale
        if after - set(spec["strays"]):
            assert plan_prune(directory, policy).deletions == []  # a second prune is a no-op
        else:  # only stale temps were there: now only the strays are left
            _assert_nothing_to_prune(directory, spec["strays"], policy)


def _assert_nothing_to_prune(directory: Path, strays: list[str], policy: Policy) -> None:
    """Strays alone: a torch file among them makes the directory a loose-files layout, whose files
    carry no step and are never removed; without one, nothing is checkpoint-like, which is bad input."""
    if any(name.endswith((".pt", ".pth")) for name in strays):
        assert plan_prune(directory, policy).deletions == []
    else:
        with pytest.raises(BadInputError, match="no checkpoints|empty directory"):
            plan_prune(directory, policy)
