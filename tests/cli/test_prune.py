"""ckptctl prune: plan table with reasons, --dry-run, --yes / prompt / refusal, --json, --quiet, lock, bad input."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timedelta

import pytest
from typer.testing import CliRunner

from ckptctl.cli import output, prune_cmd
from ckptctl.cli.app import app
from ckptctl.locking import DirectoryLock
from tests.factories import touch_checkpoints, touch_files
from tests.test_prune import PROTECTED, no_checkpoint_opened, rolling  # noqa: F401  (fixture)
from tests.test_startup import _run as run_fresh_interpreter

runner = CliRunner()
EMERGENCY = ["emergency_step_000150_20260101_120000.pt", "emergency_step_000250_20260102_120000.pt"]


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, ["prune", *args], input=input)


@pytest.fixture
def layout(tmp_path):
    """Protected files, 14 rolling (steps 1000..14000, 200 bytes each), 2 emergency, a stray, an old temp."""
    directory = tmp_path / "ckpt"
    touch_checkpoints(directory, PROTECTED + rolling(*range(1000, 15000, 1000)) + EMERGENCY, size=200)
    touch_files(directory, ["notes.txt"])
    touch_files(directory, ["rolling_step_015000.pt.77.ab.tmp"], size=10, mtime=time.time() - 7200)
    return directory


def present(directory) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_dry_run_shows_reasons_and_sizes_and_changes_nothing(layout, no_checkpoint_opened):
    before = present(layout)
    result = invoke(str(layout), "--dry-run", "--keep-rolling", "5", "--keep-every", "5000")
    assert result.exit_code == 0, result.output
    lines = {" ".join(line.split()) for line in result.stdout.splitlines()}
    assert {"Keep (15):", "Remove (8):", "Stale partial writes, removed (1):", "Ignored, never removed (1):"} <= lines
    assert "rolling_step_005000.pt 5000 every 5000 steps" in lines
    assert "rolling_step_010000.pt 10000 last 5 rolling, every 5000 steps" in lines
    assert "best_model.pt - protected: best" in lines
    assert "epoch_00000.pt - protected: epoch (kept forever)" in lines
    assert "rolling_step_001000.pt 1000 200 Bytes" in lines
    assert "notes.txt not a checkpoint name" in lines
    assert any(line.startswith("rolling_step_015000.pt.77.ab.tmp 2h") for line in lines)
    assert "Dry run: would remove 9 files, freeing 1.6 KiB." in lines
    assert present(layout) == before


def test_json_dry_run_document(layout):
    result = invoke(str(layout), "--dry-run", "--json", "--keep-rolling", "12")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["dry_run"] is True and doc["removed"] == []
    assert doc["remove"] == [{"name": n, "kind": "rolling", "step": s, "size_bytes": 200, "damage": None, "notes": [],
                              "link": None} for n, s in zip(rolling(1000, 2000), (1000, 2000))]  # fmt: skip
    keep = {k["name"]: k["reasons"] for k in doc["keep"]}
    assert keep["latest.pt"] == ["protected: latest"] and keep["rolling_step_003000.pt"] == ["last 12 rolling"]
    assert keep[EMERGENCY[0]] == ["last 10 emergency"]
    assert [t["name"] for t in doc["stale_temp"]] == ["rolling_step_015000.pt.77.ab.tmp"]
    assert doc["ignored"] == ["notes.txt"]
    assert doc["freed_bytes"] == 410


def test_yes_deletes_and_second_run_is_a_no_op(layout, no_checkpoint_opened):
    result = invoke(str(layout), "--yes", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["dry_run"] is False
    assert doc["removed"] == rolling(1000, 2000, 3000, 4000) + ["rolling_step_015000.pt.77.ab.tmp"]
    assert doc["freed_bytes"] == 810
    assert present(layout) == set(PROTECTED + rolling(*range(5000, 15000, 1000)) + EMERGENCY) | {
        "notes.txt", ".ckptctl.lock"}
    again = invoke(str(layout), "--yes")
    assert again.exit_code == 0 and "Nothing to remove." in again.stdout


def test_not_a_terminal_without_yes_refuses_with_a_hint(layout):
    before = present(layout)
    result = invoke(str(layout))
    assert result.exit_code == 2
    assert "not a terminal" in result.stderr and "--yes" in result.stderr and "--dry-run" in result.stderr
    assert "Remove (4)" in result.stdout  # the plan is still shown
    assert present(layout) == before


def test_json_without_yes_refuses_without_a_document(layout):
    result = invoke(str(layout), "--json")
    assert result.exit_code == 2 and result.stdout == ""


@pytest.mark.parametrize("answer, deleted", [("y\n", True), ("n\n", False), ("\n", False)])
def test_prompt_on_a_terminal(layout, monkeypatch, answer, deleted):
    monkeypatch.setattr(output, "can_prompt", lambda: True)
    result = invoke(str(layout), input=answer)
    assert result.exit_code == (0 if deleted else 1), result.output  # declined: 1 (docs/exit-codes.md)
    assert "Delete 5 files" in result.stderr
    assert (rolling(1000)[0] not in present(layout)) is deleted
    assert ("Removed 5 files" in result.stdout) is deleted


def test_quiet_prints_nothing(layout):
    result = invoke(str(layout), "--yes", "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    assert rolling(1000)[0] not in present(layout)


def test_unknown_files_are_never_removed(layout):
    touch_checkpoints(layout, ["rolling_step_12.pt", "model.pth", "emergency_step_000001_20261399_000000.pt"], size=5)
    result = invoke(str(layout), "--yes", "--keep-rolling", "1", "--keep-emergency", "0", "--json")
    assert result.exit_code == 0, result.output
    assert {"rolling_step_12.pt", "model.pth", "emergency_step_000001_20261399_000000.pt", "notes.txt"} <= present(layout)
    assert set(json.loads(result.stdout)["ignored"]) >= {"rolling_step_12.pt", "model.pth"}


def test_keep_within_and_stale_after_options(layout):
    os.utime(layout / rolling(14000)[0], (time.time() + 86400 * 3, time.time() + 86400 * 3))  # the newest, 3 days on
    result = invoke(str(layout), "--dry-run", "--json", "--keep-rolling", "1", "--keep-emergency", "0",
                    "--keep-within", "2d", "--stale-after", "3h")  # fmt: skip
    doc = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    keep = {k["name"]: k["reasons"] for k in doc["keep"]}
    assert keep[rolling(14000)[0]] == ["last 1 rolling", "within 2d of newest"]
    assert {r["name"] for r in doc["remove"]} == set(rolling(*range(1000, 14000, 1000)) + EMERGENCY)
    assert doc["stale_temp"] == []  # 2 hours old, threshold 3h


def test_locked_directory_exits_3_and_deletes_nothing(layout):
    before = present(layout)
    with DirectoryLock(layout):
        result = invoke(str(layout), "--yes")
    assert result.exit_code == 3 and "locked" in result.stderr
    assert present(layout) - {".ckptctl.lock"} == before


def test_wait_for_the_lock(layout):
    lock = DirectoryLock(layout).acquire()
    timer = threading.Timer(0.3, lock.release)
    timer.start()
    try:
        result = invoke(str(layout), "--yes", "--wait", "30")
    finally:
        timer.join()
    assert result.exit_code == 0, result.output
    assert rolling(1000)[0] not in present(layout)


@pytest.mark.parametrize(
    "args, message",
    [(["--keep-rolling", "-1"], "--keep-rolling"), (["--keep-emergency", "-2"], "--keep-emergency"),
     (["--keep-best-k", "-1"], "--keep-best-k"), (["--keep-every", "0"], "--keep-every"),
     (["--keep-rolling", "ten"], "--keep-rolling"), (["--keep-within", "7x"], "bad duration '7x'"),
     (["--keep-within", "7"], "bad duration"), (["--stale-after", "soon"], "bad duration"), (["--wait", "-1"], "--wait"),
     (["--keep-rolling", "0", "--keep-emergency", "0"], "refusing")],
)  # fmt: skip
def test_bad_policy_values_exit_2_and_delete_nothing(tmp_path, args, message):
    directory = tmp_path / "only_rolling"
    touch_checkpoints(directory, rolling(1, 2, 3) + EMERGENCY)
    before = present(directory)
    result = invoke(str(directory), "--yes", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert present(directory) == before


def test_directory_without_checkpoints_exit_2(tmp_path):
    touch_checkpoints(tmp_path, ["notes.txt"])
    result = invoke(str(tmp_path), "--dry-run")
    assert result.exit_code == 2 and "no checkpoints" in result.stderr


def test_missing_and_non_directory_paths(tmp_path):
    result = invoke(str(tmp_path / "nope"), "--yes")
    assert result.exit_code == 2 and "no such directory" in result.stderr
    (tmp_path / "file.pt").write_text("x")
    result = invoke(str(tmp_path / "file.pt"), "--yes")
    assert result.exit_code == 2 and "not a directory" in result.stderr


def test_read_only_directory_exit_2_nothing_deleted(layout, monkeypatch):
    from ckptctl.ops import prune as prune_module

    before = present(layout)
    real_access = os.access  # tests run as root, where chmod alone does not make a directory read-only
    monkeypatch.setattr(prune_module.os, "access", lambda path, mode: not mode & os.W_OK and real_access(path, mode))
    result = invoke(str(layout), "--yes")
    assert result.exit_code == 2 and "read-only" in result.stderr and "nothing was deleted" in result.stderr
    assert present(layout) == before


def test_rich_tables_on_a_terminal(layout, monkeypatch):
    monkeypatch.setattr(prune_cmd, "stdout_is_terminal", lambda: True)
    result = invoke(str(layout), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Keep (" in result.stdout and "protected: best" in result.stdout and "─" in result.stdout


@pytest.mark.parametrize("args", [["--dry-run"], ["--dry-run", "--json"], ["--yes"], ["--dry-run", "--keep-best-k", "2"]],
                         ids=" ".join)  # fmt: skip
def test_prune_imports_neither_torch_nor_numpy(layout, args):
    probe = run_fresh_interpreter(["prune", str(layout), *args])
    assert probe["code"] == 0 and "rolling_step_001000.pt" in probe["stdout"]
    assert probe["heavy"] == []


@pytest.mark.parametrize("quiet", [False, True])
def test_files_changed_after_the_plan_are_skipped_and_reported(layout, monkeypatch, quiet):
    from ckptctl.ops import prune

    real_execute = prune.execute

    def save_lands_first(plan, **kwargs):
        (layout / rolling(1000)[0]).unlink()  # gone before the lock was taken
        return real_execute(plan, **kwargs)

    monkeypatch.setattr(prune, "execute", save_lands_first)  # the command imports it when it runs
    result = invoke(str(layout), "--yes", *(["--quiet"] if quiet else []))
    assert result.exit_code == 0, result.output
    assert ("skipped 1 planned file that changed" in result.stderr) is not quiet
    assert rolling(2000)[0] not in present(layout)


def test_symlinked_pointers_keep_their_targets_and_the_plan_says_why(tmp_path):
    directory = tmp_path / "run"
    touch_checkpoints(directory, rolling(100, 200, 300, 400), size=200)
    os.symlink(rolling(100)[0], directory / "latest.pt")
    os.symlink(rolling(200)[0], directory / "best_model.pt")
    dry = invoke(str(directory), "--dry-run", "--keep-rolling", "1")
    assert dry.exit_code == 0, dry.output
    lines = {" ".join(line.split()) for line in dry.stdout.splitlines()}
    assert "rolling_step_000100.pt 100 latest.pt points here" in lines
    assert "latest.pt -> rolling_step_000100.pt - protected: latest" in lines
    result = invoke(str(directory), "--yes", "--json", "--keep-rolling", "1")
    doc = json.loads(result.stdout)
    assert doc["removed"] == rolling(300)
    assert {k["name"]: k["link"] for k in doc["keep"]}["best_model.pt"] == rolling(200)[0]
    assert (directory / "latest.pt").exists() and (directory / "best_model.pt").exists()  # neither dangles


def test_empty_high_step_files_are_reported_kept_and_removed_only_when_asked(tmp_path):
    directory = tmp_path / "run"
    touch_checkpoints(directory, rolling(100, 200, 300), size=200)
    touch_files(directory, rolling(999998, 999999))
    dry = invoke(str(directory), "--dry-run", "--keep-rolling", "2")
    assert dry.exit_code == 0, dry.output
    lines = {" ".join(line.split()) for line in dry.stdout.splitlines()}
    assert "rolling_step_999999.pt 999999 damaged (empty): not counted, kept" in lines
    assert "rolling_step_000300.pt 300 last 2 rolling" in lines
    doc = json.loads(invoke(str(directory), "--dry-run", "--json", "--keep-rolling", "2").stdout)
    assert [d["name"] for d in doc["remove"]] == rolling(100)
    assert doc["damaged"] == [{"name": n, "damage": "empty", "removed": False} for n in rolling(999998, 999999)]
    result = invoke(str(directory), "--yes", "--json", "--keep-rolling", "2", "--remove-damaged")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed"] == rolling(100, 999998, 999999)
    assert present(directory) >= set(rolling(200, 300))


def test_replaced_records_go_past_keep_replaced_within(tmp_path):
    directory = tmp_path / "run"
    touch_checkpoints(directory, rolling(100))
    old = f"latest.pt.replaced-{datetime.now() - timedelta(days=30):%Y%m%d_%H%M%S}"
    young = f"latest.pt.replaced-{datetime.now() - timedelta(days=1):%Y%m%d_%H%M%S}"
    touch_files(directory, [old, young])
    doc = json.loads(invoke(str(directory), "--dry-run", "--json").stdout)
    assert [d["name"] for d in doc["remove"]] == [old] and doc["remove"][0]["kind"] == "replaced"
    doc = json.loads(invoke(str(directory), "--dry-run", "--json", "--keep-replaced-within", "60d").stdout)
    assert doc["remove"] == []
    bad = invoke(str(directory), "--dry-run", "--keep-replaced-within", "soon")
    assert bad.exit_code == 2 and "bad duration" in bad.output


def test_the_tools_own_files_are_not_listed_as_ignored(layout):
    """Issue #14: the directory lock and the demo's marker showed up as "Ignored, not a checkpoint name"."""
    (layout / ".ckptctl.lock").write_text("")
    (layout / ".ckptctl-demo").write_text("made by ckptctl demo\n")
    result = invoke(str(layout), "--dry-run")
    assert result.exit_code == 0, result.output
    assert ".ckptctl" not in result.stdout
    assert "Ignored, never removed (1):" in result.stdout and "notes.txt" in result.stdout
    doc = json.loads(invoke(str(layout), "--dry-run", "--json").stdout)
    assert {".ckptctl.lock", ".ckptctl-demo", "notes.txt"} == set(doc["ignored"])  # JSON keeps every name
