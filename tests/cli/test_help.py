"""Every command has help text, a --json option and a README section; --help works at every level."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app

runner = CliRunner()
README = Path(__file__).resolve().parents[2] / "README.md"
COMMANDS = [command.name for command in app.registered_commands]


def test_top_level_help_lists_every_command():
    for flag in ("--help", "-h"):
        result = runner.invoke(app, [flag], prog_name="ckptctl")
        assert result.exit_code == 0
        assert "Usage: ckptctl" in result.stdout
        for name in COMMANDS:
            assert re.search(rf"^\s*{re.escape(name)}\s", result.stdout, re.M), name


def test_no_arguments_shows_help():
    result = runner.invoke(app, [], prog_name="ckptctl")
    assert "Usage: ckptctl" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_and_docstring(name):
    command = next(c for c in app.registered_commands if c.name == name)
    summary = (command.callback.__doc__ or "").strip().splitlines()
    assert summary and summary[0], f"{name} has no docstring (its help text)"
    result = runner.invoke(app, [name, "--help"], prog_name="ckptctl")
    assert result.exit_code == 0
    assert f"Usage: ckptctl {name}" in result.stdout
    assert " ".join(summary[0].split()[:4]) in " ".join(result.stdout.split())


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_json(name):
    """docs/architecture.md: every command has --json (one JSON document on stdout)."""
    assert "--json" in runner.invoke(app, [name, "--help"], prog_name="ckptctl").stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_documented_in_the_readme(name):
    assert re.search(rf"^### ckptctl {re.escape(name)}\b", README.read_text(), re.M), f"README has no '### ckptctl {name}'"


def test_unknown_command_is_a_usage_error():
    result = runner.invoke(app, ["frobnicate"], prog_name="ckptctl")
    assert result.exit_code == 2 and "Traceback" not in result.output
