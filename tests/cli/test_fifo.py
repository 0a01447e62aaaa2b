"""Every read command on a FIFO, a character device or a directory where a checkpoint file is
expected: a prompt verdict, never a read that blocks (ckptctl.formats.safe_open).

A plain ``open()`` of a FIFO waits for a writer forever; each test has a per-test timeout, so a
regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests.factories import cached_layout, write_checkpoint, write_dcp

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore::UserWarning")]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "latest.pt"
    os.mkfifo(path)
    return path


@pytest.fixture
def fifo_dir(tmp_path) -> Path:
    """A layout directory whose ``latest.pt`` is a FIFO (the rest are real checkpoints)."""
    directory = cached_layout(tmp_path / "checkpoints")
    (directory / "latest.pt").unlink()
    os.mkfifo(directory / "latest.pt")
    return directory


@pytest.fixture(scope="module")
def dcp_template(tmp_path_factory) -> Path:
    return write_dcp(tmp_path_factory.mktemp("dcp") / "rolling_step_000100")


def _dcp_with_fifo(template: Path, parent: Path, name: str) -> Path:
    """A copy of ``template`` under ``parent`` in which the file ``name`` is a FIFO."""
    copy = parent / template.name
    shutil.copytree(template, copy)
    (copy / name).unlink()
    os.mkfifo(copy / name)
    return copy


@pytest.mark.parametrize("command", ["validate", "inspect", "resume-cmd"])
def test_a_fifo_file_gets_a_verdict(command, fifo):
    result = invoke(command, str(fifo))
    assert result.exit_code == 1, result.output
    assert "not a regular file (fifo)" in result.output + result.stderr


def test_validate_json_names_the_fifo(fifo):
    result = invoke("validate", str(fifo), "--json")
    assert result.exit_code == 1
    (entry,) = json.loads(result.stdout)["results"]
    assert entry["problems"] == ["not a regular file (fifo)"]


def test_compare_with_a_fifo_is_a_finding(fifo, tmp_path):  # exit 1, as inspect and validate (docs/exit-codes.md)
    other = write_checkpoint(tmp_path / "rolling_step_000100.pt")
    result = invoke("compare", str(other), str(fifo))
    assert result.exit_code == 1
    assert "not a regular file (fifo)" in result.stderr


def test_a_character_device_is_not_read(tmp_path):
    for command in ("validate", "inspect"):
        result = invoke(command, "/dev/zero")
        assert result.exit_code == 1
        assert "not a regular file (character device)" in result.output + result.stderr


def test_a_directory_where_a_file_is_expected(tmp_path):
    (tmp_path / "latest.pt").mkdir()
    result = invoke("inspect", str(tmp_path / "latest.pt"))
    assert result.exit_code == 2
    assert "is a directory" in result.stderr


def test_restore_dry_run_replaces_a_fifo_latest(fifo_dir):
    result = invoke("restore", str(fifo_dir), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "latest.pt is invalid (not a regular file (fifo))" in result.stdout
    assert os.path.exists(fifo_dir / "latest.pt")  # dry run: nothing changed


def test_resume_cmd_falls_back_past_a_fifo_latest(fifo_dir):
    result = invoke("resume-cmd", str(fifo_dir), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["checkpoint"] != str(fifo_dir / "latest.pt")


@pytest.mark.parametrize("command", [("list",), ("du",), ("prune", "--keep-rolling", "1", "--dry-run")])
def test_stat_only_commands_work_beside_a_fifo(command, fifo_dir):
    result = invoke(command[0], str(fifo_dir), *command[1:])
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("name", [".metadata", "__0_0.distcp"])
def test_a_fifo_inside_a_dcp_directory(name, dcp_template, tmp_path):
    checkpoint = _dcp_with_fifo(dcp_template, tmp_path, name)
    what = ".metadata" if name == ".metadata" else f"shard file {name}"
    for command in ("validate", "inspect"):
        result = invoke(command, str(checkpoint))
        assert result.exit_code == 1, result.output
        assert f"{what}: not a regular file (fifo)" in result.output + result.stderr
    listing = invoke("list", str(tmp_path), "--json")
    assert listing.exit_code == 0, listing.stderr
    (entry,) = json.loads(listing.stdout)["checkpoints"]
    assert entry["status"] == "unreadable"
