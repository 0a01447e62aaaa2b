"""Listing a torchtitan / plain-DCP run parses each ``.metadata`` once, never serves a stale parse.

``ckptctl list`` reads a DCP unit twice (the layout: completeness, step, metrics; the catalog:
status and the object graph). ckptctl.formats.dcp remembers a parsed ``.metadata`` in this process
by the identity of the file it read (device, inode, size, mtime_ns, ctime_ns) when its ctime has
settled. These tests pin: the rows are those of a full parse; the second read reuses the first
parse; a rewritten or replaced ``.metadata`` (new mtime, new inode) is parsed afresh; damaged and
hostile ones stay damaged and unsafe; a fresh file, or one over the memory bound, is not
remembered; the budget is applied again on reuse. Timings live in bench/bench_list_torchtitan.py.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from ckptctl.errors import UnreadableCheckpoint
from ckptctl.formats import dcp, parse_memo
from ckptctl.formats.unpickler import DCP_RECORDS
from ckptctl.ops.listing import list_checkpoints
from tests.factories import SystemCall

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"


@pytest.fixture(autouse=True)
def fresh_memo():
    dcp.forget_parsed()
    yield
    dcp.forget_parsed()


@pytest.fixture
def settled(monkeypatch):
    """Every file counts as settled (the copies in tmp_path were written a moment ago)."""
    monkeypatch.setattr(dcp, "SETTLE_SECONDS", -3600.0)


@pytest.fixture
def listing():
    """Inside a listing: what list_checkpoints enters around its scan and reads."""
    with parse_memo.remembering():
        yield


@pytest.fixture
def parses(monkeypatch):
    """How many times a ``.metadata`` (a DCP Metadata record) went through the unpickler."""
    count = [0]
    real = dcp.safe_loads

    def counting(data, *args, **kwargs):
        result = real(data, *args, **kwargs)
        count[0] += isinstance(result[0], DCP_RECORDS["Metadata"])
        return result

    monkeypatch.setattr(dcp, "safe_loads", counting)
    return count


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name, symlinks=True)) / "checkpoint"


def rows(directory: Path) -> list[dict]:
    return list_checkpoints(directory, use_cache=False).to_json()["checkpoints"]


def full_parse_rows(directory: Path, monkeypatch) -> list[dict]:
    """The rows with nothing remembered: every read parses its .metadata."""
    with monkeypatch.context() as m:
        m.setattr(dcp, "MEMO_BYTES", 0)
        dcp.forget_parsed()
        return rows(directory)


@pytest.mark.parametrize("name", ["torchtitan", "torchtitan_bytesio"])
def test_rows_equal_a_full_parse_and_each_metadata_is_parsed_once(name, tmp_path, monkeypatch, settled, parses):
    run = copy(name, tmp_path)
    expected = full_parse_rows(run, monkeypatch)
    units = len(expected)
    assert units >= 2 and parses[0] >= 2 * units  # without the memo: layout and catalog (and scalars) each parse
    parses[0] = 0
    assert rows(run) == expected
    assert parses[0] == units
    assert parse_memo.memo == {} and parse_memo.remembered_bytes == 0  # forgotten when the listing ends


def test_a_fresh_metadata_is_not_remembered(tmp_path, parses):
    """A ctime younger than SETTLE_SECONDS: a write in the same timestamp tick could keep the identity."""
    run = copy("torchtitan", tmp_path)
    assert len(rows(run)) == 3
    assert parses[0] == 6


def test_outside_a_listing_nothing_is_remembered(tmp_path, settled, parses):
    """du, prune, validate and a training process read a unit once: they keep nothing."""
    from ckptctl.layouts.torchtitan import TorchtitanLayout

    run = copy("torchtitan", tmp_path)
    TorchtitanLayout().units(run)
    TorchtitanLayout().units(run)
    assert parses[0] == 6 and parse_memo.memo == {} and parse_memo.active == 0


def test_over_the_memory_bound_nothing_more_is_remembered(tmp_path, monkeypatch, settled, parses):
    run = copy("torchtitan", tmp_path)
    size = (run / "step-10" / ".metadata").stat().st_size
    monkeypatch.setattr(dcp, "MEMO_BYTES", size)  # room for exactly one
    expected = full_parse_rows(run, monkeypatch)
    parses[0] = 0
    assert rows(run) == expected
    assert parses[0] == 5  # step-10 parsed once, step-20 and step-30 twice each


def _remember(run: Path, step: str):
    """Parse ``run/step`` once (the layout's read): its parse is now remembered."""
    dcp._load_metadata(run / step)
    info = (run / step / ".metadata").stat()
    assert (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns) in parse_memo.memo


def test_rewritten_metadata_same_size_new_mtime_is_parsed_afresh(tmp_path, settled, listing):
    run = copy("torchtitan", tmp_path)
    meta = run / "step-30" / ".metadata"
    _remember(run, "step-30")
    before = meta.stat()
    data = bytearray(meta.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8  # same size, other bytes
    with open(meta, "r+b") as fh:  # in place: the same inode
        fh.write(data)
    os.utime(meta, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert meta.stat().st_ino == before.st_ino and meta.stat().st_size == before.st_size
    with pytest.raises(Exception) as caught:
        dcp._load_metadata(run / "step-30")
    assert not isinstance(caught.value, AssertionError)
    row = {r["name"]: r for r in rows(run)}["step-30"]
    assert row["status"] in ("unreadable", "unsafe") and row["step"] == 30


def test_replaced_metadata_same_size_same_mtime_is_parsed_afresh(tmp_path, settled, listing):
    """Another file renamed over it, even with the old mtime copied: a new inode and ctime."""
    run = copy("torchtitan", tmp_path)
    meta = run / "step-30" / ".metadata"
    _remember(run, "step-30")
    before = meta.stat()
    other = meta.with_name(".metadata.new")
    other.write_bytes(b"\x80\x04not a pickle".ljust(before.st_size, b"."))
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, meta)
    row = {r["name"]: r for r in rows(run)}["step-30"]
    assert row["status"] == "unreadable" and row["complete"] is False


def test_replaced_by_another_steps_metadata_shows_that_content(tmp_path, monkeypatch, settled):
    """A valid .metadata replaced by another valid one: list shows what the new one says, as a full parse does."""
    run = copy("torchtitan", tmp_path)
    with parse_memo.remembering():  # one listing around both: the first one's parses are still remembered
        rows(run)
        assert len(parse_memo.memo) == 3
        shutil.copyfile(run / "step-10" / ".metadata", run / "step-30" / ".metadata.new")
        os.replace(run / "step-30" / ".metadata.new", run / "step-30" / ".metadata")
        shutil.copyfile(run / "step-10" / "__0_0.distcp", run / "step-30" / "__0_0.distcp")
        after = rows(run)
    assert after == full_parse_rows(run, monkeypatch)
    assert {r["name"]: r["step"] for r in after}["step-30"] == 10  # train_state.step of the copy


@pytest.mark.parametrize("content", [b"\x80\x04not a pickle", pickle.dumps(SystemCall("/nonexistent/marker"))])
def test_damaged_and_hostile_metadata_are_never_remembered(content, tmp_path, settled, parses):
    run = copy("torchtitan", tmp_path)
    (run / "step-30" / ".metadata").write_bytes(content)
    with parse_memo.remembering():
        first = {r["name"]: r for r in rows(run)}["step-30"]
        second = {r["name"]: r for r in rows(run)}["step-30"]
        assert len(parse_memo.memo) == 2  # step-10 and step-20 only
    assert first == second and first["status"] in ("unreadable", "unsafe") and first["complete"] is False


def test_the_budget_applies_again_to_a_remembered_parse(tmp_path, monkeypatch, settled, listing):
    run = copy("torchtitan", tmp_path)
    _remember(run, "step-30")
    monkeypatch.setattr(dcp, "BUDGET", dcp.DcpBudget(items_base=-(10**9)))  # a limit below any count
    with pytest.raises(UnreadableCheckpoint, match="budget"):
        dcp._load_metadata(run / "step-30")
    monkeypatch.setattr(dcp, "BUDGET", dcp.DcpBudget())
    _remember(run, "step-20")
    monkeypatch.setattr(dcp, "BUDGET", dcp.DcpBudget(metadata_bytes=16))
    with pytest.raises(UnreadableCheckpoint, match="budget"):
        dcp._load_metadata(run / "step-20")


def test_forget_parsed_drops_everything(tmp_path, settled, listing):
    run = copy("torchtitan", tmp_path)
    _remember(run, "step-30")
    dcp.forget_parsed()
    assert parse_memo.memo == {} and parse_memo.remembered_bytes == 0


def test_bench_run_is_a_torchtitan_run_with_its_steps_and_metrics(tmp_path):
    """bench/bench_list_torchtitan.py builds what torchtitan saves (no timing here)."""
    import importlib.util

    from ckptctl.layouts import registry

    path = Path(__file__).resolve().parents[2] / "bench" / "bench_list_torchtitan.py"
    spec = importlib.util.spec_from_file_location("bench_list_torchtitan", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = bench.write_run(tmp_path / "run" / "checkpoint", 2, 1)
    layout = registry.detect(folder)
    assert layout is not None and layout.name == "torchtitan"
    units = layout.units(folder)
    assert [(u.name, u.step, u.complete) for u in units] == [("step-500", 500, True), ("step-1000", 1000, True)]
    assert units[1].metrics == {"last_epoch": 1000, "ntokens_seen": 1000 * 8192}
