"""prune, restore and resume-cmd from the command line on other frameworks' layouts: plans with reasons,
--dry-run, --yes, --json (today's keys plus layout fields), exit codes, the lock, one-line errors."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from ckptctl.locking import DirectoryLock
from tests import fake_layouts
from tests.test_startup import _run as run_fresh_interpreter
from tests.fake_layouts import copy_fixture, make_dirs_run, make_files_run, save, truncate

runner = CliRunner()

PRUNE_KEYS = {"directory", "keep", "remove", "stale_temp", "ignored", "damaged", "freed_bytes", "dry_run", "removed", "skipped"}
RESUME_KEYS = {"checkpoint", "requested", "skipped", "step", "epoch", "python", "script", "script_is_placeholder",
               "resume_flag", "args", "argv", "command", "changes", "warnings", "reason"}  # fmt: skip
RESTORE_KEYS = {"directory", "plan", "executed", "ok", "mode", "actions", "checked", "unrestorable", "inaccessible",
                "notes", "resume_from", "dry_run"}  # fmt: skip


@pytest.fixture
def fake(monkeypatch):
    fake_layouts.use(monkeypatch)


def run_cli(*args: str):
    return runner.invoke(app, list(args))


def lines(text: str) -> set[str]:
    return {" ".join(line.split()) for line in text.splitlines()}


# ---------------------------------------------------------------------------------------- prune

def test_prune_dry_run_table_has_reasons_and_pointers_and_changes_nothing(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 6, 8, 10), best=2, latest=8)
    before = sorted(os.listdir(run))
    result = run_cli("prune", str(run), "--keep-last", "1", "--dry-run")
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    assert "ck-2 2 protected: best" in out
    assert "ck-8 8 protected: latest points here" in out
    assert "ck-10 10 protected: newest complete, last 1" in out
    assert any(line.startswith("ck-4 4 ") and line.endswith("older than the last 1") for line in out)
    assert "latest ck-8 ok" in out
    assert "Dry run: would remove 2 checkpoints, freeing" in " ".join(out) and sorted(os.listdir(run)) == before


def test_prune_json_keeps_todays_keys_and_adds_layout_fields(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4, 6), best=None, latest=6)
    save(run / "ck-8" / "model.pt", 8)
    result = run_cli("prune", str(run), "--keep-last", "1", "--json", "--yes")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert PRUNE_KEYS <= set(doc) and doc["layout"] == "fake-dirs" and doc["dry_run"] is False
    assert doc["removed"] == ["ck-2", "ck-4"]
    assert doc["pointers"] == [{"name": "latest", "target": "ck-6", "status": "ok", "detail": None}]
    keep = {k["name"]: k for k in doc["keep"]}
    assert keep["ck-8"]["complete"] is False and keep["ck-8"]["missing"] == ["state.json"]
    assert keep["ck-6"]["kind"] == "checkpoint" and keep["ck-6"]["is_directory"] is True
    assert sorted(os.listdir(run)) == [".ckptctl.lock", "ck-6", "ck-8", "latest"]


def test_prune_remove_incomplete(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2,), best=None, latest=None)
    save(run / "ck-8" / "model.pt", 8)
    result = run_cli("prune", str(run), "--keep-last", "1", "--remove-incomplete", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed"] == ["ck-8"] and not (run / "ck-8").exists()


@pytest.mark.parametrize("option", [["--keep-rolling", "3"], ["--keep-emergency", "1"], ["--keep-within", "1d"],
                                    ["--keep-best-k", "2"]], ids=lambda o: o[0])  # fmt: skip
def test_prune_native_only_option_is_one_line_exit_2(fake, tmp_path, option):
    run = make_dirs_run(tmp_path / "run")
    result = run_cli("prune", str(run), *option, "--dry-run")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"{option[0]} applies to ckptctl's own checkpoints only" in line and "(fake-dirs)" in line
    assert "--keep-last" in line and "Traceback" not in result.output


def test_prune_keep_last_on_the_native_layout_sets_rolling_and_emergency(tmp_path):
    from tests.factories import touch_checkpoints

    touch_checkpoints(tmp_path, [f"rolling_step_{s:06d}.pt" for s in (100, 200, 300)], size=200)
    result = run_cli("prune", str(tmp_path), "--keep-last", "1", "--dry-run", "--json")
    doc = json.loads(result.stdout)
    assert [r["name"] for r in doc["remove"]] == ["rolling_step_000100.pt", "rolling_step_000200.pt"]
    assert doc["layout"] == "ckptctl"


def test_prune_without_yes_off_a_terminal_refuses(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), best=None, latest=None)
    result = run_cli("prune", str(run), "--keep-last", "1")
    assert result.exit_code == 2 and "refusing to delete 1 checkpoint without confirmation" in result.stderr
    assert (run / "ck-2").is_dir()


def test_prune_locked_is_exit_3(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), best=None, latest=None)
    with DirectoryLock(run):
        result = run_cli("prune", str(run), "--keep-last", "1", "--yes")
    assert result.exit_code == 3 and (run / "ck-2").is_dir()


def test_prune_of_a_hf_run_imports_neither_torch_nor_numpy(tmp_path):
    run = copy_fixture("hf_trainer", tmp_path)
    probe = run_fresh_interpreter(["prune", str(run), "--keep-last", "1", "--dry-run"])
    assert probe["code"] == 0 and "checkpoint-4" in probe["stdout"]
    assert probe["heavy"] == []


# ------------------------------------------------------------------------------------ resume-cmd

def test_resume_cmd_prints_only_the_fragment_on_stdout(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4))
    save(run / "ck-6" / "model.pt", 6)
    result = run_cli("resume-cmd", str(run))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"--load_dir {run} --tag ck-4\n"
    assert "ck-6 (step 6) is newer but incomplete (missing state.json)" in result.stderr


def test_resume_cmd_json_adds_layout_and_resume_args(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last="link")
    result = run_cli("resume-cmd", str(run), "--json")
    doc = json.loads(result.stdout)
    assert RESUME_KEYS <= set(doc)
    assert doc["layout"] == "fake-files" and doc["resume_args"] == ["--ckpt_path", str(run / "s8.ckpt")]
    assert doc["step"] == 8 and doc["checkpoint"] == str(run / "s8.ckpt")


def test_resume_cmd_compare_with_recorded_hparams(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2,), hparams={"lr": 0.1, "batch_size": 8})
    result = run_cli("resume-cmd", str(run), "--script", "train.py", "--set", "batch_size=16", "--compare")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"python train.py --batch_size=16 --load_dir {run} --tag ck-2\n"
    assert "batch_size" in result.stderr and "8" in result.stderr and "16" in result.stderr


def test_resume_cmd_nothing_valid_is_exit_1(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2,), latest=None)
    truncate(run / "ck-2" / "model.pt")
    result = run_cli("resume-cmd", str(run))
    assert result.exit_code == 1 and result.stdout == "" and "no complete, valid checkpoint" in result.stderr


def test_resume_cmd_hf_fixture(tmp_path):
    run = copy_fixture("hf_trainer", tmp_path)
    result = run_cli("resume-cmd", str(run))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"--resume_from_checkpoint {run / 'checkpoint-6'}\n"


# --------------------------------------------------------------------------------------- restore

def test_restore_dry_run_then_yes_heals_a_dangling_last_link(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last=None)
    os.symlink("gone.ckpt", run / "last.ckpt")
    result = run_cli("restore", str(run), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "last.ckpt" in result.stdout and "<- s8.ckpt" in result.stdout and "dry run" in result.stdout
    assert os.readlink(run / "last.ckpt") == "gone.ckpt"
    result = run_cli("restore", str(run), "--yes", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert RESTORE_KEYS <= set(doc) and doc["layout"] == "fake-files" and doc["executed"] is True
    assert doc["pointers"][0]["status"] == "dangling" and doc["actions"][0]["status"] == "done"
    assert os.readlink(run / "last.ckpt") == "s8.ckpt"


def test_restore_rewrites_a_tag_naming_a_missing_unit(fake, tmp_path):
    run = make_dirs_run(tmp_path / "run", steps=(2, 4), latest=None)
    (run / "latest").write_text("ck-9")
    result = run_cli("restore", str(run), "--yes")
    assert result.exit_code == 0, result.output
    assert (run / "latest").read_text() == "ck-4" and "restored latest from ck-4 (tag)" in result.stdout


def test_restore_nothing_to_do(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last="link")
    result = run_cli("restore", str(run))
    assert result.exit_code == 0 and "nothing to do: last.ckpt points at a complete, valid checkpoint" in result.stdout


def test_restore_unrestorable_is_exit_1(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4,), last=None)
    os.symlink("last.ckpt", run / "last.ckpt")
    truncate(run / "s4.ckpt")
    result = run_cli("restore", str(run), "--yes")
    assert result.exit_code == 1 and "cannot restore: last.ckpt is a symlink loop" in " ".join(lines(result.stdout))


def test_restore_from_on_a_foreign_layout_is_exit_2(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last="link")
    result = run_cli("restore", str(run), "--from", "s4.ckpt", "--to", "latest")
    assert result.exit_code == 2 and "(fake-files)" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_restore_locked_is_exit_3(fake, tmp_path):
    run = make_files_run(tmp_path / "run", steps=(4, 8), last=None)
    os.symlink("gone.ckpt", run / "last.ckpt")
    with DirectoryLock(run):
        result = run_cli("restore", str(run), "--yes")
    assert result.exit_code == 3 and os.readlink(run / "last.ckpt") == "gone.ckpt"


def test_restore_deepspeed_fixture_latest_missing_tag(tmp_path):
    run = copy_fixture("deepspeed", tmp_path)
    (run / "latest").write_text("global_step99")
    result = run_cli("restore", str(run), "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert (run / "latest").read_text() == "global_step10" and json.loads(result.stdout)["layout"] == "deepspeed"
