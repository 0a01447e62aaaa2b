"""ckptctl du: per-kind table, hard links once, file system, projection, summary line, --warn-free, --json, bars."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from ckptctl.ops import usage as usage_module
from ckptctl.cli import du_cmd, render
from ckptctl.cli.app import app
from tests.test_prune import no_checkpoint_opened  # noqa: F401  (fixture)
from tests.test_startup import _run as run_fresh_interpreter
from tests.test_usage import HF_FIXTURE, KiB, fake_statvfs, make_layout

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["du", *args])


@pytest.fixture
def layout(tmp_path):
    return make_layout(tmp_path / "ckpt")


def test_plain_report(layout, monkeypatch, no_checkpoint_opened):
    fake_statvfs(monkeypatch, total_blocks=1000, free_blocks=300, avail_blocks=250, frsize=1024 * KiB)
    result = invoke(str(layout))
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert lines[0] == "kind files size allocated linked"
    assert "latest 2 0 Bytes 0 Bytes 2" in lines
    assert any(line.startswith("rolling 4 40.0 KiB ") for line in lines)
    assert any(line.startswith("epoch 2 40.0 KiB ") for line in lines)
    assert any(line.startswith("total 11 93.0 KiB ") and line.endswith(" 2") for line in lines)  # 40+40+10+3 KiB + 5 B
    assert not any(line.startswith("best ") for line in lines)  # empty kinds are left out
    assert "Hard links: 2 names share their data with another file (counted once, under the kind that owns the data)." in lines
    assert "File system: 1000.0 MiB total, 700.0 MiB used, 250.0 MiB free (25.0%)." in lines
    assert ("Room for 12,800 more rolling saves (20.0 KiB each, file and backup copy) "
            "or 12,800 more epochs (20.0 KiB each) before the disk is full.") == lines[-1]  # fmt: skip
    usage = usage_module.measure(layout)
    total, listed = render.size(usage.total.allocated_bytes), render.size(usage.listed.allocated_bytes)
    assert f"Total: {total} on disk (allocated, hard links once) in 11 files; 93.0 KiB apparent." in lines
    # notes.txt is counted by du but is not a row of list: the part list totals is said once, explicitly
    rest = render.size(usage.total.allocated_bytes - usage.listed.allocated_bytes)
    assert f"Listed by `ckptctl list`: 10 files, {listed} on disk; not listed: 1 other file, {rest}." in lines


def test_json_document(layout, monkeypatch, no_checkpoint_opened):
    fake_statvfs(monkeypatch, total_blocks=1000, free_blocks=300, avail_blocks=250, frsize=4096)
    result = invoke(str(layout), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    kinds = {k["kind"]: k for k in doc["kinds"]}
    assert list(kinds) == ["latest", "rolling", "emergency", "best", "epoch", "replaced", "partial", "other"]
    assert kinds["latest"] == {"kind": "latest", "files": 2, "apparent_bytes": 0, "allocated_bytes": 0, "linked_files": 2}
    assert kinds["partial"]["apparent_bytes"] == 3 * KiB
    assert doc["total"]["files"] == 11 and doc["total"]["hard_links_counted_once"] is True
    assert doc["total"]["apparent_bytes"] == sum(k["apparent_bytes"] for k in doc["kinds"])
    assert doc["filesystem"] == {"total_bytes": 1000 * 4096, "used_bytes": 700 * 4096, "free_bytes": 250 * 4096,
                                 "free_percent": 25.0}  # fmt: skip
    assert doc["projection"] == {"checkpoint_bytes": 10 * KiB, "rolling_save_bytes": 20 * KiB, "rolling_saves_fit": 50,
                                 "epoch_bytes": 20 * KiB, "epochs_fit": 50}  # fmt: skip
    assert doc["counts"]["rolling"] == 3 and doc["counts"]["epoch"] == 2
    assert doc["summary"].startswith("Checkpoint storage:") and doc["warn_free"] is None


@pytest.mark.parametrize(
    "threshold, crossed",
    [("30%", True), ("25%", False), ("10%", False), ("1001M", True), ("1000M", False), ("1.1GB", True), ("1GB", False)],
)  # fmt: skip
def test_warn_free_exit_code(layout, monkeypatch, threshold, crossed):
    fake_statvfs(monkeypatch, total_blocks=4000, free_blocks=1000, avail_blocks=1000, frsize=1024 * KiB)  # 1000 MiB free, 25%
    result = invoke(str(layout), "--warn-free", threshold, "--json")
    assert result.exit_code == (1 if crossed else 0), result.output
    assert json.loads(result.stdout)["warn_free"] == {"threshold": threshold, "below": crossed}
    assert ("is below --warn-free" in result.stderr) is crossed


@pytest.mark.parametrize("threshold", ["lots", "150%", "-5%", "5iB"])
def test_bad_warn_free_is_exit_2(layout, threshold):
    result = invoke(str(layout), "--warn-free", threshold)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stdout == ""


def test_missing_directory_and_file(tmp_path):
    result = invoke(str(tmp_path / "nope"))
    assert result.exit_code == 2 and "no such directory" in result.stderr
    (tmp_path / "f").write_text("x")
    assert invoke(str(tmp_path / "f")).exit_code == 2


def test_empty_directory_reports_nothing_to_project(tmp_path):
    result = invoke(str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "No checkpoint yet to project from." in result.stdout
    assert "Total: 0 Bytes on disk (allocated, hard links once) in 0 files; 0 Bytes apparent." in result.stdout
    assert json.loads(invoke(str(tmp_path), "--json").stdout)["summary"].endswith(", 0 files — " + _free(tmp_path))


def test_bar_chart_on_a_terminal(layout, monkeypatch):
    monkeypatch.setattr(du_cmd, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "120")
    fake_statvfs(monkeypatch, total_blocks=1000, free_blocks=500, avail_blocks=500)
    result = invoke(str(layout))
    assert result.exit_code == 0, result.output
    assert "share" in result.stdout and "█" in result.stdout
    assert "disk " + "█" * 20 + "·" * 20 + " 50% full: " in result.stdout
    assert "File system:" not in result.stdout  # the bar's line says it


def test_bar_proportions():
    assert du_cmd._bar(1, 4, 20) == "█" * 5 + "·" * 15
    assert du_cmd._bar(0, 0, 4) == "····"


def test_manager_style_directory_summary_matches_library(layout):
    result = invoke(str(layout), "--json")
    assert json.loads(result.stdout)["summary"] == usage_module.storage_summary(layout)


@pytest.mark.parametrize("args", [[], ["--json"], ["--warn-free", "0%"]], ids=lambda a: " ".join(a) or "plain")
def test_du_imports_neither_torch_nor_numpy(layout, args):
    probe = run_fresh_interpreter(["du", str(layout), *args])
    assert probe["code"] == 0 and ("Checkpoint storage:" if args == ["--json"] else "Total: ") in probe["stdout"]
    assert probe["heavy"] == []


def test_replaced_records_are_counted_as_their_own_kind(tmp_path):
    (tmp_path / "rolling_step_000001.pt").write_bytes(b"r" * 100)
    (tmp_path / "latest.pt.replaced-20261101_120000").write_bytes(b"o" * 40)  # the data only it holds
    os.link(tmp_path / "rolling_step_000001.pt", tmp_path / "best_model.pt.replaced-20261101_120000")
    doc = json.loads(invoke(str(tmp_path), "--json").stdout)
    replaced = {k["kind"]: k for k in doc["kinds"]}["replaced"]
    assert (replaced["files"], replaced["apparent_bytes"], replaced["linked_files"]) == (2, 40, 1)
    assert doc["counts"]["replaced"] == 2


def _free(directory) -> str:
    import humanize

    return humanize.naturalsize(usage_module.measure(directory).filesystem.free_bytes, binary=True) + " free"


def test_each_figure_is_said_once(layout, monkeypatch):
    """The total, the free space and the per-kind counts appear once; the manager's line is not repeated."""
    fake_statvfs(monkeypatch, total_blocks=1000, free_blocks=300, avail_blocks=250, frsize=1024 * KiB)
    for terminal in (False, True):
        monkeypatch.setattr(du_cmd, "stdout_is_terminal", lambda: terminal)
        out = invoke(str(layout)).stdout
        usage = usage_module.measure(layout)
        assert out.count(render.size(usage.total.allocated_bytes) + " on disk") == 1
        assert out.count("250.0 MiB free") == 1 and "Checkpoint storage" not in out
        assert out.count("hard links once") == 1


def test_large_counts_have_thousands_separators(tmp_path, monkeypatch):
    fake_statvfs(monkeypatch, total_blocks=2 * 10**9, free_blocks=10**9, avail_blocks=3_067_300, frsize=10 * KiB)
    (tmp_path / "rolling_step_000001.pt").write_bytes(b"r" * 10 * KiB)
    lines = invoke(str(tmp_path)).stdout.splitlines()
    assert "Room for 3,067,300 more rolling saves (10.0 KiB each) or 3,067,300 more epochs (10.0 KiB each) before the disk is full." in lines


def test_table_file_counts_have_thousands_separators():
    assert du_cmd._cells(usage_module.KindUsage("rolling", files=12345))[1] == "12,345"


# ------------------------------------------------------------------ one size on disk: du and list agree


def _list_doc(directory, *args):
    result = runner.invoke(app, ["list", str(directory), "--json", "--no-cache", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _du_doc(directory, *args):
    result = invoke(str(directory), "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo") / "ckpt"
    assert runner.invoke(app, ["demo", str(directory), "--steps", "60", "--json"]).exit_code == 0
    return directory


def _hf_dir(tmp_path):
    shutil.copytree(HF_FIXTURE, tmp_path / "hf")
    return tmp_path / "hf"


def _hard_linked_dir(tmp_path):
    """Rolling files, pointers and an epoch that are hard links of them, a sparse file, and a link of a link."""
    directory = tmp_path / "links"
    directory.mkdir()
    (directory / "rolling_step_000100.pt").write_bytes(b"a" * 10_000)
    (directory / "rolling_step_000200.pt").write_bytes(b"b" * 30_000)
    os.link(directory / "rolling_step_000200.pt", directory / "latest.pt")
    os.link(directory / "latest.pt", directory / "epoch_00001.pt")
    os.link(directory / "rolling_step_000100.pt", directory / "latest_backup.pt")
    with open(directory / "best_model.pt", "wb") as fh:
        fh.truncate(8 * 1024 * 1024)  # apparent 8 MiB, hardly anything allocated
    return directory


@pytest.mark.parametrize("make", ["demo", "hf", "links"])
@pytest.mark.parametrize("show_all", [False, True], ids=["default", "all"])
def test_du_and_list_print_the_same_total(make, show_all, demo_dir, tmp_path, monkeypatch):
    directory = {"demo": lambda: demo_dir, "hf": lambda: _hf_dir(tmp_path), "links": lambda: _hard_linked_dir(tmp_path)}[make]()
    extra = ["--all"] if show_all else []
    listing, du = _list_doc(directory, *extra), _du_doc(directory, *extra)
    assert du["on_disk_bytes"] == listing["shown_bytes"] == du["listed"]["on_disk_bytes"]
    assert du["total"]["apparent_bytes"] == listing["shown_apparent_bytes"]
    assert du["size_on_disk"] == listing["size_on_disk"]
    # and the lines people read: list's footer and du's Total line carry the same figure
    monkeypatch.setenv("COLUMNS", "200")
    size = render.size(du["on_disk_bytes"])
    footer = runner.invoke(app, ["list", str(directory), "--no-cache", *extra]).stdout.splitlines()
    assert any(line.split(", ", 1)[-1].startswith(f"{size} on disk (allocated, hard links once);") for line in footer)
    assert f"Total: {size} on disk (allocated, hard links once) in " in invoke(str(directory), *extra).stdout
    assert du["summary"].startswith(f"Checkpoint storage: {size} on disk (allocated, hard links once), ")


def test_du_names_the_part_list_totals_when_the_directory_holds_more(tmp_path):
    directory = _hard_linked_dir(tmp_path)
    (directory / "train.log").write_bytes(b"x" * 5000)
    (directory / "sub").mkdir()
    os.link(directory / "rolling_step_000100.pt", directory / "sub" / "copy.pt")  # data counted already
    (directory / "foreign.ckpt").write_bytes(b"f" * 100)  # not a ckptctl name, but list shows it
    listing, du = _list_doc(directory), _du_doc(directory)
    assert du["listed"] == {"files": len(listing["checkpoints"]), "on_disk_bytes": listing["shown_bytes"],
                            "apparent_bytes": listing["shown_apparent_bytes"]}  # fmt: skip
    assert du["on_disk_bytes"] > listing["shown_bytes"]
    text = invoke(str(directory)).stdout
    rest = render.size(du["on_disk_bytes"] - listing["shown_bytes"])
    assert (f"Listed by `ckptctl list`: {len(listing['checkpoints'])} files, {render.size(listing['shown_bytes'])} on disk; "
            f"not listed: 2 other files, {rest}.") in text  # fmt: skip
