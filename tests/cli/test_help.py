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


# --- issue #14: help and conventions -------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "commands"
LEAKED = ("<str>", "<int>", "<float>", "<int range>", "<float range>", "<list[", "<path>", "<text>", "{", "}",
          "TEXT", "INTEGER", "FLOAT", "BOOLEAN", "FILENAME", "CHOICE")  # fmt: skip
# A clean metavar: a placeholder word (DIR, FILE, N, KEY=VALUE, PERCENT|SIZE, PATH...) or the choices (a|b|c).
METAVAR = re.compile(r"^[A-Z][A-Z0-9_=%|]*(\.[a-z0-9]+)?(\.\.\.)?$|^[a-z0-9]+(\|[a-z0-9]+)+$")


def _click_command(name: str | None = None):
    import typer
    from typer.main import get_command

    group = get_command(app)
    command = group if name is None else group.commands[name]
    return command, typer.Context(command, info_name="ckptctl" if name is None else name)


def _options(name: str):
    command, _ctx = _click_command(name)
    return [p for p in command.params if p.param_type_name == "option"]


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_has_no_leaked_metavars(name):
    """No Typer/Click type names or braces in any help: DIR, FILE, N, SIZE, ... instead."""
    args = ["--help"] if name is None else [name, "--help"]  # later commands too: _Group unbraces their usage
    text = runner.invoke(app, args, prog_name="ckptctl").stdout
    usage_and_options = [line for line in text.splitlines() if line.startswith(("Usage:", "  -", "  [A-Z"))]
    for form in LEAKED:
        for line in usage_and_options:
            assert form not in line, f"ckptctl {name or ''} --help leaks {form!r}: {line!r}"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_and_argument_has_a_clean_metavar(name):
    command, ctx = _click_command(name)
    for param in command.params:
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            continue
        metavar = param.metavar
        assert metavar and METAVAR.match(metavar), f"ckptctl {name} {param.opts}: metavar {metavar!r}"


def test_top_level_help_groups_commands_in_panels():
    text = runner.invoke(app, ["--help"], prog_name="ckptctl").stdout
    headings = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[A-Z][a-z ]+:", line)]
    assert headings[0] == "Options"
    panels = [h for h in headings if h != "Options"]
    assert panels[:6] == ["Look", "Check", "Fix", "Clean up", "Ship", "Try"]
    section = None
    seen = {}
    for line in text.splitlines():
        if re.fullmatch(r"[A-Z][a-z ]+:", line):
            section = line[:-1]
        elif section in panels and re.match(r"  \S", line):  # a command (a wrapped summary is indented more)
            seen[line.split()[0]] = section
    assert set(seen) == set(COMMANDS), "every registered command is shown under a panel"
    expected = {"list": "Look", "inspect": "Look", "du": "Look", "compare": "Look", "validate": "Check",
                "restore": "Fix", "resume-cmd": "Fix", "prune": "Clean up", "export": "Ship", "demo": "Try"}  # fmt: skip
    assert {n: seen[n] for n in expected if n in seen} == {n: p for n, p in expected.items() if n in COMMANDS}


@pytest.mark.parametrize("columns", ["80", "60"])
def test_top_level_summaries_are_complete(columns):
    """Each command's summary is shown whole (wrapped if need be), never cut with '...'."""
    text = runner.invoke(app, ["--help"], prog_name="ckptctl", env={"COLUMNS": columns}).stdout
    from ckptctl.cli.app import _summary

    assert not [line for line in text.splitlines() if line.endswith("...") and "[ARGS]" not in line]
    flat = " ".join(text.split())
    group, _ctx = _click_command()
    for name in COMMANDS:
        summary = _summary(name, group.commands[name])
        assert len(summary.split()) >= 4 and f"{name} {summary}" in flat, name


def test_no_command_maps_v_to_anything_but_verbose_or_version():
    group, _ctx = _click_command()
    for param in group.params:
        if "-v" in param.opts:
            assert set(param.opts) & {"--verbose", "--version"}
    for name in COMMANDS:
        for param in _options(name):
            if "-v" in param.opts + param.secondary_opts:
                assert set(param.opts) & {"--verbose", "--version"}, f"ckptctl {name}: -v means {param.opts}"


@pytest.mark.parametrize("name", COMMANDS)
def test_conventional_short_flags(name):
    """-h is help everywhere; -n, -y, -q only ever mean --dry-run, --yes, --quiet."""
    assert runner.invoke(app, [name, "-h"], prog_name="ckptctl").exit_code == 0
    meaning = {"-n": "--dry-run", "-y": "--yes", "-q": "--quiet"}
    for param in _options(name):
        for short, long in meaning.items():
            if short in param.opts:
                assert long in param.opts, f"ckptctl {name}: {short} means {param.opts}"
            if long in param.opts:
                assert short in param.opts, f"ckptctl {name}: {long} lacks {short}"


def _complete(words: str) -> list[str]:
    cword = len(words.split()) - (not words.endswith(" "))
    env = {"_CKPTCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    result = runner.invoke(app, [], env=env, prog_name="ckptctl")
    assert result.exit_code == 0, result.output
    return result.stdout.split()


@pytest.mark.parametrize(("words", "expected"), [
    ("ckptctl restore d --to ", ["latest", "best"]),
    ("ckptctl restore d --to b", ["best"]),
    ("ckptctl restore d --mode ", ["reflink", "copy", "link"]),
    ("ckptctl restore d --mode c", ["copy"]),
    ("ckptctl resume-cmd x --bools ", ["flag", "optional"]),
    ("ckptctl export x --dtype ", ["bf16", "fp16", "fp32"]),
    ("ckptctl export x --dtype fp", ["fp16", "fp32"]),
    ("ckptctl list d --sort s", ["step", "size"]),
    ("ckptctl list d --kind r", ["rolling", "replaced", "rolling_backup"]),
])  # fmt: skip
def test_enumerated_values_complete(words, expected):
    assert _complete(words) == expected


@pytest.mark.parametrize("name", COMMANDS)
def test_metavar_choices_are_offered_by_completion(name):
    """Every option whose metavar lists its values (a|b|c) completes exactly those values."""
    for param in _options(name):
        if param.metavar and METAVAR.match(param.metavar) and param.metavar.islower():
            long = next(o for o in param.opts if o.startswith("--"))
            assert _complete(f"ckptctl {name} x {long} ") == param.metavar.split("|"), f"{name} {long}"


@pytest.mark.parametrize("argv", [
    ["list"],
    ["prune", "--keep-last", "x", "/nonexistent"],
    ["list", "/nonexistent", "--bogus"],
    ["compare", "-v", "a", "b"],
    ["frobnicate"],
    ["list", "--sort"],
])  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(argv, capsys):
    from ckptctl.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == ""
    assert 1 <= len(lines) <= 2, lines
    assert lines[0].startswith("ckptctl: error: ") and "Usage:" not in captured.err and "Error:" not in captured.err
    if len(lines) == 2:
        assert re.fullmatch(r"try 'ckptctl( [a-z-]+)? --help'", lines[1]), lines[1]


def test_usage_error_names_the_command_and_the_problem(capsys):
    from ckptctl.cli.app import main

    with pytest.raises(SystemExit):
        main(["list"])
    assert capsys.readouterr().err.splitlines() == ["ckptctl: error: list: missing argument 'DIR'", "try 'ckptctl list --help'"]


@pytest.mark.parametrize(("argv", "code"), [(["--version"], 0), (["list", "-h"], 0), ([], 2)])
def test_main_keeps_exit_codes_of_help_version_and_no_arguments(argv, code, capsys):
    from ckptctl.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    captured = capsys.readouterr()
    assert ("Usage: ckptctl" in captured.out + captured.err) or captured.out.startswith("ckptctl ")


def test_main_passes_a_command_exit_code_through(tmp_path, capsys):
    from ckptctl.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["restore", str(tmp_path), "--to", "latest"])  # the tool's own error: --to needs --from
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("ckptctl: error: ")
    with pytest.raises(SystemExit) as exit_info:
        main(["du", str(tmp_path), "--json"])
    assert exit_info.value.code == runner.invoke(app, ["du", str(tmp_path), "--json"]).exit_code == 0


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_documented_on_the_command_page(name):
    page = DOCS / f"{name}.md"
    assert page.exists(), f"docs/commands/{name}.md is missing"
    text = page.read_text()
    assert re.search(rf"^# ckptctl {re.escape(name)}\b", text, re.M), f"{page.name} has no '# ckptctl {name}'"
    for param in _options(name):
        for option in param.opts + param.secondary_opts:
            if option.startswith("--"):
                assert re.search(rf"{re.escape(option)}(?![\w-])", text), f"docs/commands/{name}.md does not mention {option}"


def _usage(name: str) -> str:
    text = runner.invoke(app, [name, "--help"], prog_name="ckptctl").stdout
    return text.splitlines()[0].removeprefix("Usage: ").strip()


OTHER_HELPERS_PAGES = {"du", "chart"}  # docs/commands/{du,chart}.md are kept with their commands' code


@pytest.mark.parametrize("name", COMMANDS)
def test_every_short_option_and_argument_is_on_the_command_page(name):
    """Issue #14: every command and option appears in the docs: -n as well as --dry-run, and the usage line."""
    text = (DOCS / f"{name}.md").read_text()
    for param in _options(name):
        for option in param.opts + param.secondary_opts:
            if re.fullmatch(r"-[a-zA-Z]", option) and option != "-h":
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), f"docs/commands/{name}.md does not mention {option}"
    if name not in OTHER_HELPERS_PAGES:
        assert f"`{_usage(name)}`" in text, f"docs/commands/{name}.md lacks its usage line `{_usage(name)}`"


def test_top_level_options_are_documented():
    group, _ctx = _click_command()
    pages = README.read_text() + "".join(p.read_text() for p in DOCS.parent.glob("*.md"))
    for param in group.params:
        for option in param.opts:
            if option.startswith("--") and option != "--help":
                assert re.search(rf"ckptctl {re.escape(option)}(?![\w-])", pages), f"ckptctl {option} is not in README.md or docs/"
