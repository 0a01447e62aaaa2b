"""ckptctl restore: plan, confirm (never prompting off a terminal), act; exit 0 ok, 1 unrestorable, 2 bad input, 3 locked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli import output
from ckptctl.cli.app import app
from ckptctl.locking import DirectoryLock
from tests.factories import cached_layout
from tests.test_restore import digests, truncate


@pytest.fixture
def ckpt_dir(tmp_path) -> Path:
    """The layout of tests/conftest.py, copied from one template written once per process."""
    return cached_layout(tmp_path / "checkpoints")


runner = CliRunner()


def invoke(*args: str, **kwargs):
    return runner.invoke(app, ["restore", *args], **kwargs)


def replaced(directory):
    return sorted(p.name for p in directory.iterdir() if ".replaced-" in p.name)


def test_healthy_directory_exit_0_nothing_to_do(ckpt_dir):
    before = digests(ckpt_dir)
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip().endswith("nothing to do: latest.pt and best_model.pt are valid")
    assert digests(ckpt_dir) == before


def test_heal_with_yes_prints_plan_then_acts(ckpt_dir):
    truncate(ckpt_dir / "latest.pt")
    result = invoke(str(ckpt_dir), "--yes")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.index("plan\n") < out.index("restored latest.pt from rolling_last_backup.pt")
    assert "latest.pt               invalid: truncated" in out
    (kept,) = replaced(ckpt_dir)
    assert kept.startswith("latest.pt.replaced-") and f"kept as {kept}" in out
    assert runner.invoke(app, ["validate", str(ckpt_dir)]).exit_code == 0


def test_not_a_terminal_refuses_without_yes(ckpt_dir):
    truncate(ckpt_dir / "latest.pt")
    before = digests(ckpt_dir)
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 2
    assert "refusing to replace 1 file without confirmation: not a terminal (add --yes" in result.stderr
    assert digests(ckpt_dir) == before


def test_prompt_on_a_terminal(ckpt_dir, monkeypatch):
    monkeypatch.setattr(output, "can_prompt", lambda: True)
    truncate(ckpt_dir / "latest.pt")
    before = digests(ckpt_dir)
    declined = invoke(str(ckpt_dir), input="n\n")
    assert declined.exit_code == 1 and "Replace 1 file in" in declined.stderr and digests(ckpt_dir) == before
    accepted = invoke(str(ckpt_dir), input="y\n")
    assert accepted.exit_code == 0 and "restored latest.pt" in accepted.stdout


def test_dry_run_changes_nothing(ckpt_dir):
    truncate(ckpt_dir / "best_model.pt")
    before = digests(ckpt_dir)
    result = invoke(str(ckpt_dir), "--dry-run")
    assert result.exit_code == 0
    assert "best_model.pt  <- best_model_backup.pt" in result.stdout
    assert result.stdout.rstrip().endswith("dry run: 1 replacement planned, nothing changed")
    assert digests(ckpt_dir) == before


def test_json_document(ckpt_dir):
    truncate(ckpt_dir / "latest.pt")
    doc = json.loads(invoke(str(ckpt_dir), "--yes", "--json").stdout)
    assert set(doc) >= {"directory", "plan", "executed", "ok", "actions", "checked", "unrestorable", "dry_run"}
    (action,) = doc["actions"]
    assert (action["target"], action["status"], action["step"]) == ("latest.pt", "done", 300)
    assert action["source"].endswith("rolling_last_backup.pt") and action["keep_as"].startswith("latest.pt.replaced-")
    assert doc["ok"] is True and doc["executed"] is True and doc["dry_run"] is False
    assert doc["checked"][0] == {**doc["checked"][0], "name": "latest.pt", "valid": False}


def test_nothing_valid_left_exits_1(tmp_path):
    from tests.factories import write_checkpoint

    write_checkpoint(tmp_path / "latest.pt")
    truncate(tmp_path / "latest.pt")
    result = invoke(str(tmp_path), "--yes")
    assert result.exit_code == 1
    assert "cannot restore: latest.pt is invalid" in result.stdout


def test_locked_directory_exits_3(ckpt_dir):
    truncate(ckpt_dir / "latest.pt")
    before = digests(ckpt_dir)
    with DirectoryLock(ckpt_dir):
        result = invoke(str(ckpt_dir), "--yes", "--wait", "0.1")
    assert result.exit_code == 3 and "locked" in result.stderr and "Traceback" not in result.stderr
    assert digests(ckpt_dir) == before


def test_rollback_best_keeps_the_replaced_best(ckpt_dir):
    previous = (ckpt_dir / "best_model_previous.pt").read_bytes()
    old_best = (ckpt_dir / "best_model.pt").read_bytes()
    result = invoke(str(ckpt_dir), "--rollback-best", "--yes")
    assert result.exit_code == 0, result.stderr
    assert (ckpt_dir / "best_model.pt").read_bytes() == previous
    kept = [name for name in replaced(ckpt_dir) if name.startswith("best_model.pt.")]
    assert (ckpt_dir / kept[0]).read_bytes() == old_best


def test_from_to_and_discard(ckpt_dir):
    result = invoke(str(ckpt_dir), "--from", "epoch_00001.pt", "--to", "latest", "--yes", "--discard")
    assert result.exit_code == 0, result.stderr
    assert (ckpt_dir / "latest.pt").read_bytes() == (ckpt_dir / "epoch_00001.pt").read_bytes()
    assert replaced(ckpt_dir) == [] and "(discarded)" in result.stdout


# ------------------------------------------------------------------------- sharded (DCP) layout


@pytest.fixture
def dcp_dir(tmp_path) -> Path:
    pytest.importorskip("torch")
    from tests.factories import cached_dcp_layout

    return cached_dcp_layout(tmp_path / "sharded")


def test_sharded_heal_dry_run_then_yes(dcp_dir):
    import os

    (dcp_dir / "rolling_step_000300" / ".metadata").unlink()
    dry = invoke(str(dcp_dir), "--dry-run")
    assert dry.exit_code == 0 and os.readlink(dcp_dir / "latest") == "rolling_step_000300"
    assert "latest  <- epoch_00001  step 300  kept as latest.replaced-" in dry.stdout  # the newest valid
    result = invoke(str(dcp_dir), "--yes")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip().endswith("restored latest from epoch_00001 (symlink)")
    assert os.readlink(dcp_dir / "latest") == "epoch_00001"
    assert runner.invoke(app, ["validate", str(dcp_dir / "latest")]).exit_code == 0


def test_sharded_json_rollback_best(dcp_dir):
    doc = json.loads(invoke(str(dcp_dir), "--rollback-best", "--yes", "--json").stdout)
    (action,) = doc["actions"]
    assert (action["target"], action["status"], action["step"]) == ("best_model", "done", 200)
    assert action["keep_as"].startswith("best_model.replaced-") and action["mode"] in ("copy", "reflink")
    assert doc["ok"] is True and doc["plan"] == "rollback-best"


def test_sharded_damaged_best_exits_1_with_the_rollback_hint(dcp_dir):
    (dcp_dir / "best_model" / ".metadata").write_bytes(b"garbage")
    result = invoke(str(dcp_dir), "--yes")
    assert result.exit_code == 1
    assert "cannot restore: best_model is invalid" in result.stdout and "--rollback-best" in result.stdout


def test_sharded_refusals_exit_2_in_one_line(dcp_dir):
    for args, message in (
        (["--from", "best_model", "--to", "latest"], "latest can only point at a rolling, emergency or epoch directory"),
        (["--from", "rolling_step_000300", "--to", "latest"], "is latest itself: nothing to restore"),
    ):
        result = invoke(str(dcp_dir), *args, "--yes")
        assert result.exit_code == 2, (args, result.stdout)
        assert message in result.stderr and result.stderr.count("\n") == 1


def test_sharded_locked_exits_3(dcp_dir):
    with DirectoryLock(dcp_dir):
        result = invoke(str(dcp_dir), "--from", "rolling_step_000100", "--to", "latest", "--yes")
    assert result.exit_code == 3 and "locked" in result.stderr


def test_bad_option_combinations_exit_2(ckpt_dir):
    for args, message in (
        (["--from", "epoch_00001.pt"], "--from FILE and --to latest|best go together"),
        (["--to", "best"], "--from FILE and --to latest|best go together"),
        (["--rollback-best", "--from", "x", "--to", "best"], "--rollback-best excludes"),
        (["--from", "epoch_00001.pt", "--to", "newest"], "--to must be one of"),
        (["--from", "missing.pt", "--to", "latest"], "no such file"),
        (["--mode", "teleport"], "unknown copy mode"),
    ):
        result = invoke(str(ckpt_dir), *args, "--yes")
        assert result.exit_code == 2, (args, result.stdout)
        assert message in result.stderr and result.stderr.count("\n") == 1
    assert invoke(str(ckpt_dir / "missing")).exit_code == 2


def test_the_cli_default_mode_is_the_cores():
    """restore_cmd spells the default out so that the app starts without importing ckptctl.durable."""
    import inspect

    from ckptctl import durable
    from ckptctl.cli.restore_cmd import restore_command

    assert inspect.signature(restore_command).parameters["mode"].default == durable.REFLINK


# ------------------------------------------ heal damage only, broken links, access (#13, #12)


def test_symlink_loop_latest_dry_run_plans_the_heal_without_a_traceback(ckpt_dir):
    (ckpt_dir / "latest.pt").unlink()
    (ckpt_dir / "latest.pt").symlink_to("latest.pt")
    result = invoke(str(ckpt_dir), "--dry-run")
    assert result.exit_code == 0, result.stderr + result.stdout
    assert "latest.pt is a symlink loop" in result.stdout and "(broken link, not kept)" in result.stdout
    assert result.stdout.rstrip().endswith("dry run: 1 replacement planned, nothing changed")
    assert (ckpt_dir / "latest.pt").is_symlink()


def test_manager_checkpoints_without_epoch_need_nothing(tmp_path):
    from tests.test_integrity import _manager_run_without_epoch

    directory = _manager_run_without_epoch(tmp_path / "run")
    result = invoke(str(directory), "--dry-run")
    assert result.exit_code == 0, result.stdout
    assert "latest.pt  valid (1 content finding: not damage)" in result.stdout and "plan\n" not in result.stdout
    assert "note: no best model saved yet" in result.stdout and "resume from: latest.pt (step 2)" in result.stdout
    assert result.stdout.rstrip().endswith("nothing to do: latest.pt is valid")  # never "best is valid"
    doc = json.loads(invoke(str(directory), "--dry-run", "--json").stdout)
    assert doc["actions"] == [] and doc["resume_from"]["name"] == "latest.pt"


def test_unreadable_latest_is_reported_once_left_alone_exit_2(ckpt_dir):
    from tests.cli.test_validate import run_without_read_permission

    before = digests(ckpt_dir)
    result = run_without_read_permission(ckpt_dir, ckpt_dir / "latest.pt", "restore", ".", "--yes")
    assert result.returncode == 2, result.stderr
    assert "plan\n" not in result.stdout
    assert [line.split(None, 1)[1] for line in result.stdout.splitlines() if line.startswith("latest.pt ")] == [
        "inaccessible (see below)"]
    assert result.stdout.count("permission denied") == 1 and "fix its permissions" in result.stdout
    (ckpt_dir / "latest.pt").chmod(0o644)
    assert digests(ckpt_dir) == before


def test_where_to_resume_is_said_once(ckpt_dir):
    """An emergency save newer than latest.pt: the note says where to resume; no second line repeats it."""
    from tests.factories import write_checkpoint

    write_checkpoint(ckpt_dir / "emergency_step_000400_20261102_120000.pt", step=400, epoch=2, val_loss=0.7)
    result = invoke(str(ckpt_dir), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "emergency_step_000400" in line and "newer than" in line]
    assert len(lines) == 1 and lines[0].startswith("note: resume from emergency_step_000400"), result.stdout


def test_an_unusable_latest_is_named_with_its_verdict_once(tmp_path):
    """'latest.pt is unusable: invalid (truncated ...)', not nested '(invalid (truncated ...))'."""
    from tests.factories import make_state, write_checkpoint

    write_checkpoint(tmp_path / "rolling_step_000010.pt", make_state(step=10))
    latest = write_checkpoint(tmp_path / "latest.pt", make_state(step=20))
    latest.write_bytes(latest.read_bytes()[:100])
    result = CliRunner().invoke(app, ["restore", str(tmp_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("resume from: ")]
    assert line.startswith("resume from: rolling_step_000010.pt (step 10) is the newest valid checkpoint; "
                           "latest.pt is unusable: invalid (truncated")  # fmt: skip
    assert "((" not in line
