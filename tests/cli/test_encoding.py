"""Output survives a terminal that cannot encode it: every command under an ASCII-only stdout/stderr
(``PYTHONIOENCODING=ascii``, or the C locale with UTF-8 mode off) exits as it would on UTF-8, prints
no traceback, and shows the tool's decorations as ASCII look-alikes and file names' other characters
as escapes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ckptctl.cli import render

ASCII_IO = {"PYTHONIOENCODING": "ascii"}
C_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}

COMMANDS = {
    "list": ["list", "{d}"],
    "inspect": ["inspect", "{d}/latest.pt", "--tensors"],
    "validate": ["validate", "{d}"],
    "restore": ["restore", "{d}", "--dry-run"],
    "prune": ["prune", "{d}", "--dry-run"],
    "resume-cmd": ["resume-cmd", "{d}"],
    "compare": ["compare", "{d}/latest.pt", "{d}/best_model.pt"],
    "du": ["du", "{d}"],
    "export": ["export", "{d}/café.pt", "--to", "{d}/out.safetensors", "--dry-run"],
    "chart": ["chart", "{d}"],
    "demo": ["demo", "{d}/../demo_checkpoints", "--steps", "30"],  # its training log too (the manager's em dash)
    "list --json": ["list", "{d}", "--json"],
}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """The usual layout plus a checkpoint whose name is not ASCII (listed among the others)."""
    from tests.factories import populate_layout

    directory = populate_layout(tmp_path_factory.mktemp("encoding") / "checkpoints")
    shutil.copyfile(directory / "latest.pt", directory / "café.pt")
    return directory


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "ckptctl", *args], capture_output=True, timeout=120,
                          env={**_base_env(), "COLUMNS": "200", **env})  # fmt: skip


def _base_env() -> dict[str, str]:
    """This environment without the variables that choose the output encoding."""
    chosen = ("PYTHONIOENCODING", "LC_ALL", "LANG", "LC_CTYPE", "PYTHONUTF8")
    return {k: v for k, v in os.environ.items() if k not in chosen}


@pytest.mark.parametrize("env", [ASCII_IO, C_LOCALE], ids=["PYTHONIOENCODING=ascii", "LC_ALL=C"])
@pytest.mark.parametrize("command", list(COMMANDS), ids=list(COMMANDS))
def test_every_command_survives_an_ascii_terminal(layout, command, env):
    result = _run([arg.format(d=layout) for arg in COMMANDS[command]], env)
    stderr = result.stderr.decode("ascii")  # raises if anything non-ASCII reached the stream
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    result.stdout.decode("ascii")


def test_every_command_is_in_the_encoding_matrix():
    from ckptctl.cli.app import app

    assert {args[0] for args in COMMANDS.values()} == {command.name for command in app.registered_commands}


def test_decorations_become_look_alikes_and_names_escapes(layout, tmp_path):
    out = _run(["list", str(layout)], ASCII_IO).stdout.decode("ascii")
    assert "caf\\xe9.pt" in out  # the file's name, escaped
    trend = [line for line in out.splitlines() if line.startswith("val_loss by step")]
    assert trend and "->" in trend[0] and "#" in trend[0]  # the sparkline ramp and the arrow, in ASCII
    # the em dash of the manager's storage line (du no longer repeats that line; the demo logs it)
    story = _run(["demo", str(tmp_path / "demo"), "--steps", "60"], ASCII_IO).stderr.decode("ascii")
    assert any("Checkpoint storage: " in line and " - " in line for line in story.splitlines())


def test_json_stays_valid_json_with_the_real_name(layout):
    result = _run(["list", str(layout), "--json"], ASCII_IO)
    text = result.stdout.decode("ascii")
    assert "caf\\u00e9.pt" in text  # JSON's own escape, not the terminal fallback's \xe9
    assert "café.pt" in json.dumps(json.loads(text), ensure_ascii=False)


def test_the_fallback_handler_maps_decorations_and_escapes_the_rest():
    import codecs

    from ckptctl.cli.output import ENCODING_FALLBACK, survive_any_encoding

    survive_any_encoding()  # registers the handler (streams here are UTF-8: left alone)
    text = render.sparkline([1.0, 0.5, 0.0]) + " a—b… x→y é \U0001f600"
    encoded = codecs.encode(text, "ascii", ENCODING_FALLBACK).decode("ascii")
    assert encoded == "#=_ a-b... x->y \\xe9 \\U0001f600"


def test_a_utf8_stream_keeps_its_characters(layout):
    """The fallback is for streams that need it: on UTF-8 the real sparkline is printed."""
    out = _run(["list", str(layout)], {"PYTHONIOENCODING": "utf-8"}).stdout.decode("utf-8")
    assert any(char in out for char in render.SPARK_CHARS) and "café.pt" in out


def _run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """``ckptctl ARGS`` with stdout and stderr on a pseudo-terminal (the Rich report), read until it exits."""
    from tests.procs import run_on_pty

    return run_on_pty([sys.executable, "-m", "ckptctl", *args], {**_base_env(), "COLUMNS": "120", "TERM": "xterm", **env})


@pytest.mark.parametrize("command", ["list", "du"])
def test_the_rich_report_on_an_ascii_terminal(layout, command):
    code, out = _run_on_a_terminal([command, str(layout)], ASCII_IO)
    text = out.decode("ascii")  # raises if anything non-ASCII reached the terminal
    assert code == 0 and "internal error" not in text and "Traceback" not in text, text
    assert "rolling" in text
