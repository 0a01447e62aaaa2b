"""The registry hook of layouts/catalog.py and the read-side operations (list, validate, du) on
units, with small fake layouts on real files (tests/fake_layouts.py)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ckptctl.errors import BadInputError
from ckptctl.layouts import catalog
from ckptctl.layouts.naming import Kind
from ckptctl.ops import integrity, listing, usage
from tests import fake_layouts as fl
from tests.factories import flip_byte_in_largest_tensor, populate_layout, write_hostile_checkpoint


@pytest.fixture
def fakes(monkeypatch):
    fl.register(monkeypatch)


@pytest.fixture
def run(tmp_path, fakes):
    directory = fl.make_fake_run(tmp_path / "run")
    os.symlink("ckpt-30", directory / "current")
    return directory


@pytest.fixture
def files_run(tmp_path, fakes):
    directory = fl.make_fake_files(tmp_path / "files")
    os.symlink("step=8.ckpt", directory / "last.ckpt")
    return directory


# ------------------------------------------------------------------------------------------ catalog


def test_units_become_checkpoint_entries(run):
    entries = catalog.scan(run)
    units = [e for e in entries if e.unit is not None]
    assert [(e.name, e.kind, e.step, e.is_directory) for e in units] == [
        ("ckpt-10", Kind.CHECKPOINT, 10, True), ("ckpt-20", Kind.CHECKPOINT, 20, True), ("ckpt-30", Kind.CHECKPOINT, 30, True)]
    assert all(e.size_bytes == e.unit.size_bytes > 0 and e.identity is None for e in units)
    assert catalog.layout_of(entries) == "fake-run"


def test_a_pointer_is_a_latest_row_with_its_target(run):
    pointer = next(e for e in catalog.scan(run) if e.pointer is not None)
    assert (pointer.name, pointer.kind, pointer.link, pointer.step, pointer.size_bytes) == ("current", Kind.LATEST, "ckpt-30", 30, 0)
    assert pointer.status() == ("ok", None)
    assert pointer.metadata.step == 30  # read through the unit it names


@pytest.mark.parametrize("how", ["dangling", "loop"])
def test_a_broken_pointer_is_shown_only_with_broken_links(run, how):
    (run / "current").unlink()
    os.symlink("ckpt-99" if how == "dangling" else "current", run / "current")
    assert not any(e.pointer for e in catalog.scan(run))
    pointer = next(e for e in catalog.scan(run, broken_links=True) if e.pointer is not None)
    assert pointer.broken == how and pointer.status()[0] == how
    _ckpt, meta, error = pointer.read()
    assert meta is None and error is not None


def test_a_stale_pointer_has_its_own_status(run):
    (run / "current").unlink()
    os.symlink("ckpt-10", run / "current")
    pointer = next(e for e in catalog.scan(run) if e.pointer is not None)
    assert pointer.status() == ("stale", "points at ckpt-10, newest complete is ckpt-30")


def test_unit_metadata_comes_from_the_unit(run):
    entry = next(e for e in catalog.scan(run) if e.name == "ckpt-20")
    ckpt, meta, error = entry.read()
    assert ckpt is None and error is None  # a directory unit has no single object graph
    assert (meta.step, meta.epoch, meta.val_loss, meta.args) == (20, 1, 0.5, {"lr": 0.01})
    assert meta.train_loss == pytest.approx(0.6)
    other = next(e for e in catalog.scan(run) if e.name == "ckpt-10")
    assert other.metadata.epoch is None  # epoch 0.5 is not an integer: Metadata.epoch stays None


def test_an_incomplete_unit_has_status_incomplete(run):
    (run / "ckpt-30" / "optim.pt").unlink()
    entry = next(e for e in catalog.scan(run) if e.name == "ckpt-30")
    assert entry.status() == ("incomplete", "missing optim.pt")


def test_a_file_unit_is_still_read_safely(files_run, tmp_path):
    entries = {e.name: e for e in catalog.scan(files_run)}
    assert entries["step=4.ckpt"].status() == ("ok", None)
    assert entries["step=4.ckpt"].metadata.epoch == 1  # from the file (the unit records none)
    marker = tmp_path / "pwned"
    write_hostile_checkpoint(files_run / "step=12.ckpt", marker)
    hostile = next(e for e in catalog.scan(files_run) if e.name == "step=12.ckpt")
    assert hostile.status()[0] == "unsafe"
    assert not marker.exists()


def test_native_names_win_over_the_registry(tmp_path, fakes):
    populate_layout(tmp_path)
    fl.make_fake_run(tmp_path, steps=(5,))
    entries = catalog.scan(tmp_path)
    assert not any(e.unit for e in entries) and any(e.name == "latest.pt" for e in entries)


def test_layouts_false_asks_no_layout(run):
    assert catalog.scan(run, layouts=False) == []


def test_require_checkpoints_messages_are_kept(tmp_path, fakes):
    with pytest.raises(BadInputError, match="empty directory"):
        catalog.scan(tmp_path, require_checkpoints=True)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BadInputError, match="no checkpoints in"):
        catalog.scan(tmp_path, require_checkpoints=True)


def test_entry_for_file_recognises_a_unit_directory(run):
    entry = catalog.entry_for_file(run / "ckpt-20")
    assert entry.unit is not None and entry.unit.name == "ckpt-20" and entry.step == 20
    with pytest.raises(BadInputError, match="is a directory"):
        catalog.entry_for_file(run)



# ----------------------------------------------------------------------- one unit lookup: unit_at
# ``catalog.unit_at`` and ``ops.units.find_unit`` (inspect, compare, export) were two lookups with
# different rules for ckptctl's own names; find_unit now asks unit_at. These pin the cases where
# they used to disagree: the answer is what a scan of the parent shows.


def _lookups(path):
    """(unit_at's answer, find_unit's answer) for ``path``: the unit's name, or None."""
    from ckptctl.ops.units import find_unit

    entry = catalog.unit_at(path)
    found = find_unit(path)
    return (entry.unit.name if entry is not None else None, found[1].name if found is not None else None)


def test_a_partial_write_of_ckptctl_makes_the_parent_ckptctl_s_for_both_lookups(run):
    (run / "rolling_step_000040.pt.tmp").write_bytes(b"half a checkpoint")
    assert [e.kind for e in catalog.scan(run)] == [Kind.PARTIAL]  # the directory is ckptctl's: no unit
    assert _lookups(run / "ckpt-10") == (None, None)


@pytest.mark.parametrize("make", ["dangling", "fifo"])
def test_a_native_name_with_nothing_behind_it_does_not_hide_the_units(run, make):
    if make == "dangling":
        os.symlink("gone.pt", run / "latest.pt")
    else:
        os.mkfifo(run / "latest.pt")
    assert {e.name for e in catalog.scan(run) if e.unit} == {"ckpt-10", "ckpt-20", "ckpt-30"}
    assert _lookups(run / "ckpt-10") == ("ckpt-10", "ckpt-10")


def test_a_hard_linked_copy_and_its_original_are_each_their_own_unit(tmp_path, monkeypatch):
    fl.register(monkeypatch, fl.FileLayout())
    directory = fl.make_files_run(tmp_path / "run", steps=(4, 8), last=None)
    os.link(directory / "s8.ckpt", directory / "last.ckpt")  # a copy saved as a hard link: one inode, two units
    assert _lookups(directory / "s8.ckpt") == ("s8.ckpt", "s8.ckpt")
    assert _lookups(directory / "last.ckpt") == ("last.ckpt", "last.ckpt")


def test_a_dangling_link_is_a_unit_of_the_listing_but_no_unit_at_its_path(tmp_path):
    """The loose-files layout lists a dangling ``*.safetensors`` link (a finding of ``list``/``validate``);
    named alone it is a path with nothing behind it (``inspect`` and ``validate`` say: no such file)."""
    (tmp_path / "a.safetensors").write_bytes(b"x")
    os.symlink("gone.safetensors", tmp_path / "b.safetensors")
    assert catalog.unit_at(tmp_path / "a.safetensors") is not None
    assert _lookups(tmp_path / "b.safetensors") == (None, None)


def test_both_lookups_find_a_unit_by_any_spelling_of_its_path(run, monkeypatch):
    monkeypatch.chdir(run / "ckpt-20")
    assert _lookups(catalog.Path(".")) == ("ckpt-20", "ckpt-20")
    assert _lookups(run / "ckpt-20" / ".." / "ckpt-10") == ("ckpt-10", "ckpt-10")
    assert _lookups(run / "ckpt-99") == (None, None)


# ------------------------------------------------------------------------------------------ listing


def test_listing_rows_of_a_layout(run):
    doc = listing.list_checkpoints(run).to_json()
    assert doc["layout"] == "fake-run" and doc["layout_title"] == "Fake Trainer" and doc["monitor"] == "eval_loss"
    rows = {r["name"]: r for r in doc["checkpoints"]}
    assert rows["ckpt-10"]["epoch"] == 0.5 and rows["ckpt-30"]["epoch"] == 1.5  # floats kept
    assert [n for n, r in rows.items() if r["best"]] == ["ckpt-20"]
    assert rows["ckpt-20"]["val_loss"] == 0.5 and rows["ckpt-20"]["metrics"]["eval_accuracy"] == 0.5
    assert rows["ckpt-20"]["monitor"] == "eval_loss" and rows["ckpt-20"]["protected"] == "protected: best"
    assert all(r["layout"] == "fake-run" and r["complete"] and r["missing"] == [] for r in rows.values())
    assert rows["current"]["kind"] == "latest" and rows["current"]["link"] == "ckpt-30" and rows["current"]["step"] == 30
    assert doc["total_bytes"] == sum(r["size_bytes"] for r in doc["checkpoints"])


def test_listing_shows_incomplete_units(run):
    os.remove(run / "ckpt-10" / "weights.safetensors")
    row = next(r for r in listing.list_checkpoints(run).to_json()["checkpoints"] if r["name"] == "ckpt-10")
    assert (row["complete"], row["missing"], row["status"]) == (False, ["weights.safetensors"], "incomplete")


def test_sort_by_any_recorded_metric(run):
    rows = listing.list_checkpoints(run, sort="eval_accuracy").rows
    assert [r.entry.name for r in rows if r.unit] == ["ckpt-10", "ckpt-30", "ckpt-20"]
    rows = listing.list_checkpoints(run, sort="val_loss").rows
    assert [r.entry.name for r in rows if r.unit] == ["ckpt-20", "ckpt-30", "ckpt-10"]
    assert [r.entry.name for r in listing.list_checkpoints(run, sort="step").rows if r.unit][-1] == "ckpt-30"
    with pytest.raises(BadInputError, match="metrics here: eval_accuracy, eval_loss, loss"):
        listing.list_checkpoints(run, sort="bleu")


def test_listing_reads_no_file_of_a_directory_unit(run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint file was read")

    monkeypatch.setattr(catalog, "read_checkpoint", refuse)
    monkeypatch.setattr(catalog, "read_directory", refuse)
    assert len(listing.list_checkpoints(run).rows) == 4


def test_units_are_never_served_from_the_listing_cache(run):
    first = listing.list_checkpoints(run).to_json()
    state = run / "ckpt-20" / "state.json"
    doc = json.loads(state.read_text())
    doc["metrics"]["eval_loss"] = 0.123
    state.write_text(json.dumps(doc))
    second = listing.list_checkpoints(run).to_json()
    assert {r["name"]: r["val_loss"] for r in second["checkpoints"]}["ckpt-20"] == 0.123 != \
        {r["name"]: r["val_loss"] for r in first["checkpoints"]}["ckpt-20"]  # fmt: skip


def test_kind_filter_on_a_layout(run):
    rows = listing.list_checkpoints(run, ["checkpoint"]).rows
    assert [r.entry.name for r in rows] == ["ckpt-10", "ckpt-20", "ckpt-30"]


# ----------------------------------------------------------------------------------------- validate


def _report(*paths):
    targets, skipped = integrity.collect_targets(paths)
    units: list = []
    results = integrity.validate_targets(targets, unit_summaries=units)
    return integrity.Report("default", results, skipped, 0.0, units)


def test_validate_a_layout_directory(run):
    report = _report(run)
    assert report.exit_code == 0
    assert len(report.results) == 12 and all(r.valid for r in report.results)
    assert [u["name"] for u in report.units] == ["ckpt-10", "ckpt-20", "ckpt-30"]
    assert all(u["status"] == "valid" and u["layout"] == "fake-run" for u in report.units)
    assert report.to_json()["layout"] == "fake-run"


def test_validate_finds_damage_in_one_unit(run):
    flip_byte_in_largest_tensor(run / "ckpt-20" / "optim.pt")
    os.remove(run / "ckpt-30" / "weights.safetensors")
    report = _report(run)
    assert report.exit_code == 1
    units = {u["name"]: u for u in report.units}
    assert units["ckpt-10"]["status"] == "valid"
    assert units["ckpt-20"]["status"] == "invalid" and units["ckpt-20"]["failed"] == ["optim.pt"]
    assert units["ckpt-30"]["missing"] == ["weights.safetensors"] and units["ckpt-30"]["status"] == "invalid"


def test_validate_a_unit_directory_alone(run):
    report = _report(run / "ckpt-10")
    assert [u["name"] for u in report.units] == ["ckpt-10"] and report.exit_code == 0
    assert {r.name for r in report.results} == {"state.json", "weights.safetensors", "optim.pt", "sched.pt"}


def test_a_dangling_pointer_fails_validate(run):
    (run / "current").unlink()
    os.symlink("ckpt-99", run / "current")
    report = _report(run)
    assert report.exit_code == 1
    broken = next(r for r in report.results if r.name == "current")
    assert broken.status == "invalid" and "dangling" in broken.problems[0]


def test_safetensors_and_pkl_in_a_native_directory_are_validated(tmp_path):
    populate_layout(tmp_path)
    shutil.copy(fl_path("loose/model.safetensors"), tmp_path / "export.safetensors")
    shutil.copy(fl_path("accelerate/checkpoints/checkpoint_0/random_states_0.pkl"), tmp_path / "random_states_0.pkl")
    report = _report(tmp_path)
    results = {r.name: r for r in report.results}
    assert results["export.safetensors"].valid and results["export.safetensors"].format == "safetensors"
    assert results["random_states_0.pkl"].valid and not report.skipped
    with open(tmp_path / "random_states_0.pkl", "r+b") as fh:
        fh.truncate(1000)
    results = {r.name: r for r in _report(tmp_path).results}
    assert results["random_states_0.pkl"].status == "invalid"


def fl_path(rel):
    from pathlib import Path

    return Path(__file__).parent / "fixtures" / "frameworks" / rel


# ---------------------------------------------------------------------------------------------- du


def _all_bytes(directory):
    seen, total = set(), 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            if not os.path.islink(os.path.join(root, name)) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def test_du_groups_a_layout_per_unit_and_content(run):
    (run / "logs").mkdir()
    (run / "logs" / "events.out").write_bytes(b"x" * 5000)
    (run / "ckpt-10" / "README.txt").write_text("not named by the layout")
    os.link(run / "ckpt-10" / "optim.pt", run / "ckpt-20" / "optim_link.pt")
    measured = usage.measure(run)
    assert measured.layout == "fake-run"
    assert measured.total.apparent_bytes == _all_bytes(run)
    assert measured.kinds["other"].apparent_bytes == 5000 and measured.kinds["other"].files == 1
    units = {u.name: u for u in measured.units}
    assert units["ckpt-10"].contents["weights"].apparent_bytes == (run / "ckpt-10" / "weights.safetensors").stat().st_size
    assert units["ckpt-10"].contents["optimizer"].apparent_bytes == (run / "ckpt-10" / "optim.pt").stat().st_size
    assert units["ckpt-10"].usage.files == 5  # the README inside the unit is the unit's "other"
    assert units["ckpt-20"].usage.linked_files == 1  # the hard link is counted once, under ckpt-10
    assert sum(k.apparent_bytes for k in measured.contents.values()) == measured.kinds["checkpoint"].apparent_bytes
    assert measured.projection.checkpoint_bytes == units["ckpt-30"].usage.apparent_bytes


def test_du_of_a_native_directory_counts_unknown_subdirectories(tmp_path):
    populate_layout(tmp_path)
    before = usage.measure(tmp_path)
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events").write_bytes(b"y" * 7000)
    after = usage.measure(tmp_path)
    assert after.layout is None and list(after.kinds) == list(before.kinds)
    assert after.kinds["other"].apparent_bytes == before.kinds["other"].apparent_bytes + 7000
    assert after.total.apparent_bytes == _all_bytes(tmp_path)
