"""ckptctl du: per-kind table, hard links once, file system, projection, summary line, --warn-free, --json, bars."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from ckptctl.ops import usage as usage_module
from ckptctl.cli import du_cmd
from ckptctl.cli.app import app
from tests.test_prune import no_checkpoint_opened  # noqa: F401  (fixture)
from tests.test_startup import _run as run_fresh_interpreter
from tests.test_usage import KiB, fake_statvfs, make_layout

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
    assert "Hard links counted once: 2 names share their data with another file (counted under the kind that owns the data)." in lines
    assert "File system: 1000.0 MiB total, 700.0 MiB used, 250.0 MiB free (25.0%)." in lines
    assert ("Room for 12800 more rolling saves (20.0 KiB each, file and backup copy) "
            "or 12800 more epochs (20.0 KiB each) before the disk is full.") in lines  # fmt: skip
    assert lines[-1].startswith("Checkpoint storage: ") and lines[-1].endswith("(3 rolling, 1 emergency, 2 epoch) — 250.0 MiB free")


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
    assert "(0 rolling, 0 emergency, 0 epoch)" in result.stdout


def test_bar_chart_on_a_terminal(layout, monkeypatch):
    monkeypatch.setattr(du_cmd, "stdout_is_terminal", lambda: True)
    fake_statvfs(monkeypatch, total_blocks=1000, free_blocks=500, avail_blocks=500)
    result = invoke(str(layout))
    assert result.exit_code == 0, result.output
    assert "share" in result.stdout and "█" in result.stdout
    assert "disk " + "█" * 20 + "·" * 20 + " 50% full" in result.stdout


def test_bar_proportions():
    assert du_cmd._bar(1, 4, 20) == "█" * 5 + "·" * 15
    assert du_cmd._bar(0, 0, 4) == "····"


def test_manager_style_directory_summary_matches_library(layout):
    result = invoke(str(layout), "--json")
    assert json.loads(result.stdout)["summary"] == usage_module.storage_summary(layout)


@pytest.mark.parametrize("args", [[], ["--json"], ["--warn-free", "0%"]], ids=lambda a: " ".join(a) or "plain")
def test_du_imports_neither_torch_nor_numpy(layout, args):
    probe = run_fresh_interpreter(["du", str(layout), *args])
    assert probe["code"] == 0 and "Checkpoint storage:" in probe["stdout"]
    assert probe["heavy"] == []


def test_replaced_records_are_counted_as_their_own_kind(tmp_path):
    (tmp_path / "rolling_step_000001.pt").write_bytes(b"r" * 100)
    (tmp_path / "latest.pt.replaced-20261101_120000").write_bytes(b"o" * 40)  # the data only it holds
    os.link(tmp_path / "rolling_step_000001.pt", tmp_path / "best_model.pt.replaced-20261101_120000")
    doc = json.loads(invoke(str(tmp_path), "--json").stdout)
    replaced = {k["kind"]: k for k in doc["kinds"]}["replaced"]
    assert (replaced["files"], replaced["apparent_bytes"], replaced["linked_files"]) == (2, 40, 1)
    assert doc["counts"]["replaced"] == 2
