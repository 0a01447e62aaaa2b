"""Every string that comes from a file (or a file's name) is escaped before it reaches a terminal.

A hostile directory (its own name, a file name, saved args, extra keys, string values and the
global an unsafe pickle names all hold ESC/OSC/CSI sequences, CR, BEL, backspace, newlines, C1
controls and a bidi override) is run through every command, plain and Rich, stdout and stderr;
no raw control character may come out except the tool's own line breaks (and, in colour, the
SGR sequences Rich writes), and the escaped text must be visible. ``--json`` keeps raw values.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ckptctl.cli import compare_cmd, du_cmd, list_cmd, prune_cmd, restore_cmd, resume_cmd, validate_cmd
from ckptctl.cli.app import app
from ckptctl.cli.render import display_text
from tests import hostile
from tests.factories import make_state, write_checkpoint

# "ok" repainted green and the cursor sent back to the start of the line: the verdict after it
# would be overwritten. Plus a window-title OSC, BEL, backspace, a C1 CSI and a bidi override.
REPAINT = "\x1b[32mok\x1b[0m\r"
PAYLOAD = REPAINT + "\x1b]0;PWNED\x07\x08\x9b2J\u202e"
FILE_NAME = f"ok{PAYLOAD}\n[red]x:smile:.pt"  # newlines are legal in file names
DIR_NAME = f"run{PAYLOAD}"
EVIL_MODULE = "x" + REPAINT + "\x1b[2J"  # the module of the global the unsafe pickle names
ESCAPED = "\\x1b[32mok\\x1b[0m\\r"  # what the user must see instead of REPAINT
SGR = re.compile("\x1b\\[[0-9;]*m")  # Rich's own colours, when colour is on

runner = CliRunner()


def raw_controls(text: str, colour: bool = False) -> list[str]:
    """The characters in ``text`` that must not reach a terminal (line breaks excepted)."""
    if colour:
        assert REPAINT not in text  # the injected sequence is not one Rich would write (it ends in CR)
        text = SGR.sub("", text)
    return sorted({c for c in text if c != "\n" and not c.isprintable()})


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("termsafe") / DIR_NAME
    state = make_state(step=300, epoch=2)
    state["args"] = {**state["args"], "note": f"a{PAYLOAD}b", f"k{PAYLOAD}": 1, "[red]mk[/red]": ":white_check_mark:"}
    state[f"extra{PAYLOAD}"] = f"value{PAYLOAD}"
    write_checkpoint(directory / "latest.pt", state)
    write_checkpoint(directory.parent / "clean" / "latest.pt", state)  # resume-cmd refuses a path like DIR_NAME
    write_checkpoint(directory / "latest_backup.pt", step=200, epoch=1)
    write_checkpoint(directory / "rolling_step_000100.pt", step=100)
    write_checkpoint(directory / FILE_NAME, step=50)
    unsafe = hostile._wrap(hostile._call(hostile._stack_global(EVIL_MODULE, "sys\u202etem"), hostile._str("hi")), proto=4)
    hostile.torch_zip(directory / "rolling_step_000200.pt", unsafe)
    hostile.torch_zip(directory.parent / "clean" / "unsafe.pt", unsafe)
    return directory


def run(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output and result.exit_code != 70, result.output
    return result


@pytest.fixture
def rich_terminal(monkeypatch):
    """The commands' Rich path, as on a colour terminal (CliRunner's streams are not ttys)."""
    for module in (compare_cmd, du_cmd, list_cmd, prune_cmd, restore_cmd, resume_cmd, validate_cmd):
        for name in ("stdout_is_terminal", "stderr_is_terminal"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, lambda: True)
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("COLUMNS", "400")  # no folding inside an escape sequence


def commands(d: Path) -> dict[str, list[str]]:
    weird, unsafe = str(d / FILE_NAME), str(d / "rolling_step_000200.pt")
    return {
        "list": ["list", str(d), "--no-cache"],
        "inspect": ["inspect", str(d / "latest.pt"), "--tensors"],
        "inspect-weird-name": ["inspect", weird],
        "inspect-unsafe": ["inspect", unsafe],
        "validate": ["validate", str(d)],
        "restore-from": ["restore", str(d), "--from", FILE_NAME, "--to", "latest", "--dry-run"],
        "restore-unsafe": ["restore", str(d), "--from", "rolling_step_000200.pt", "--to", "best", "--dry-run"],
        "prune": ["prune", str(d), "--dry-run", "--keep-rolling", "0"],
        "resume-cmd": ["resume-cmd", str(d.parent / "clean" / "latest.pt"), "--script", "t.py", "--set", "lr=1e-4", "--compare"],
        "resume-cmd-in-dir": ["resume-cmd", str(d / "latest.pt"), "--script", "t.py"],
        "resume-cmd-weird-name": ["resume-cmd", weird, "--script", "t.py"],
        "resume-cmd-unsafe": ["resume-cmd", str(d.parent / "clean" / "unsafe.pt")],
        "compare": ["compare", str(d / "latest.pt"), weird],
        "du": ["du", str(d)],
    }


# What each command must show escaped (file-derived text that is in its output today).
VISIBLE = {
    "list": [ESCAPED, "[red]x:smile:.pt", "\\n[red]x", "unsafe: references " + display_text(EVIL_MODULE)],
    "inspect": [ESCAPED, "\\u202e", "[red]mk[/red]", ":white_check_mark:"],
    "inspect-weird-name": [ESCAPED],
    "inspect-unsafe": ["references " + display_text(EVIL_MODULE)],
    "validate": [ESCAPED, "references " + display_text(EVIL_MODULE)],
    "restore-from": [ESCAPED],
    "restore-unsafe": ["references " + display_text(EVIL_MODULE)],
    "prune": [ESCAPED],
    "resume-cmd": ["\\x1b", "0.0003"],
    "resume-cmd-in-dir": [ESCAPED, "unsafe: the checkpoint path"],
    "resume-cmd-weird-name": [ESCAPED],
    "resume-cmd-unsafe": ["references " + display_text(EVIL_MODULE)],
    "compare": [ESCAPED, "\\u202e", ":white_check_mark:"],
    "du": [],  # plain du names no file; its Rich title names the directory (RICH_VISIBLE)
}
RICH_VISIBLE = {**VISIBLE, "du": [ESCAPED]}


@pytest.mark.parametrize("name", list(VISIBLE))
def test_plain_output_escapes_file_derived_text(hostile_dir, name):
    result = run(*commands(hostile_dir)[name])
    for stream in (result.stdout, result.stderr):
        assert raw_controls(stream) == [], (name, stream)
    for text in VISIBLE[name]:
        assert text in result.output, (name, text, result.output)


@pytest.mark.parametrize("name", list(VISIBLE))
def test_rich_output_escapes_file_derived_text(hostile_dir, name, rich_terminal):
    result = run(*commands(hostile_dir)[name])
    for stream in (result.stdout, result.stderr):
        assert raw_controls(stream, colour=True) == [], (name, stream)
    for text in RICH_VISIBLE[name]:
        assert text in SGR.sub("", result.output), (name, text, result.output)


def test_rich_shows_markup_and_emoji_codes_literally(hostile_dir, rich_terminal):
    result = run("list", str(hostile_dir), "--no-cache")
    plain = SGR.sub("", result.stdout)
    assert "[red]x:smile:.pt" in plain and "😄" not in plain


def test_the_verdict_cannot_be_repainted(hostile_dir):
    """The unsafe file's row ends in its real verdict, on its own line, after the escaped name."""
    result = run("validate", str(hostile_dir))
    assert result.exit_code == 1
    row = next(line for line in result.stdout.splitlines() if "rolling_step_000200.pt" in line)
    assert row.startswith("unsafe ") and "\r" not in row and "\x1b" not in row


def test_json_keeps_the_raw_values(hostile_dir):
    """--json is for programs: values come back exactly as they are in the file (json escapes them)."""
    listing = json.loads(run("list", str(hostile_dir), "--json", "--no-cache").stdout)
    assert FILE_NAME in {c["name"] for c in listing["checkpoints"]}
    report = json.loads(run("inspect", str(hostile_dir / "latest.pt"), "--json").stdout)
    assert report["args"]["note"] == f"a{PAYLOAD}b" and f"extra{PAYLOAD}" in report["extra"]


def test_demo_messages_are_escaped(tmp_path):
    result = run("demo", str(tmp_path / DIR_NAME), "--steps", "30")
    assert result.exit_code == 0, result.output
    assert raw_controls(result.stdout) == [] and raw_controls(result.stderr) == []
    assert ESCAPED in result.stderr


@pytest.mark.parametrize(
    "text, shown",
    [("plain name.pt", "plain name.pt"), ("a\x1b[2Jb", "a\\x1b[2Jb"), ("\r\n\t\x00\x7f", "\\r\\n\\t\\x00\\x7f"),
     ("\x9b\u202e\u200b\u2028", "\\x9b\\u202e\\u200b\\u2028"), ("\ud800", "\\ud800"), ("é 中 ✓", "é 中 ✓")],
)  # fmt: skip
def test_display_text_escapes_like_repr(text, shown):
    assert display_text(text) == shown
    assert display_text(shown) == shown  # escaping twice changes nothing


@settings(max_examples=int(os.environ.get("CKPTCTL_FUZZ_EXAMPLES", "200")), deadline=None)
@given(st.text(st.characters(blacklist_characters="'\"\\")))
def test_display_text_is_printable_and_matches_repr(text):
    shown = display_text(text)
    assert shown.isprintable()
    assert shown == repr(text)[1:-1]  # without quotes or backslashes in the text, repr adds nothing else


def test_every_command_on_a_real_terminal(hostile_dir):
    """A subprocess on a pseudo-terminal: Rich decides on its own that it may use colour."""
    import pty

    d = hostile_dir
    for args in (["list", str(d), "--no-cache"], ["validate", str(d)], ["prune", str(d), "--dry-run"],
                 ["inspect", str(d / "rolling_step_000200.pt")], ["du", str(d)]):  # fmt: skip
        output = _on_pty(pty, [sys.executable, "-m", "ckptctl", *args])
        assert raw_controls(output, colour=True) == [], (args, output)
        assert ESCAPED in SGR.sub("", output), (args, output)


def _on_pty(pty, argv: list[str]) -> str:
    from tests.procs import run_on_pty

    env = {**os.environ, "COLUMNS": "400", "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    code, output = run_on_pty(argv, env, timeout=60)
    assert code != 70
    return output.decode("utf-8").replace("\r\n", "\n")  # the terminal's own line ends
