"""The exit-code matrix (docs/exit-codes.md): every command x {ok, finding, bad input, unreadable file,
locked, declined prompt, interrupted}, each cell a real run on real checkpoints (tests/factories.py).

0 ok, 1 findings (including a checkpoint file the user named that cannot be read, and "no" at a
prompt), 2 usage or bad input, 3 directory locked, 70 internal error, 130 interrupted.
Cells that do not apply are listed in ``NOT_APPLICABLE`` with the reason.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl import errors
from ckptctl.cli import output
from ckptctl.cli.app import app
from ckptctl.locking import HOLDER_MAX_BYTES, LOCK_NAME, DirectoryLock, describe_holder, holder_record
from tests.factories import populate_layout, write_hostile_checkpoint
from tests.procs import Job

runner = CliRunner()

COMMANDS = ["list", "inspect", "validate", "restore", "prune", "du", "resume-cmd", "compare", "export", "chart", "demo"]
CASES = ["ok", "finding", "bad_input", "unreadable", "locked", "declined", "interrupted"]

NOT_APPLICABLE = {
    ("list", "finding"): "list reports damaged files as rows; listing them is its job (exit 0)",
    ("list", "unreadable"): "takes a directory; a damaged file in it is a row, not an error",
    ("du", "unreadable"): "takes a directory and reads only sizes, never a file's content",
    ("prune", "finding"): "damaged files met are kept and reported in the plan, a successful prune (exit 0)",
    ("prune", "unreadable"): "takes a directory; damaged files are kept and reported (--remove-damaged)",
    ("restore", "unreadable"): "a damaged latest.pt is what restore heals: see its ok cell",
    ("demo", "finding"): "the demo writes its own checkpoints; there is nothing to find",
    ("demo", "unreadable"): "takes no checkpoint file",
    ("chart", "unreadable"): "takes a directory; a damaged file in it records no metric (its finding cell)",
    ("compare", "locked"): "read-only commands never take the directory lock",
    **{(c, "locked"): "read-only: never takes the directory lock"
       for c in ("list", "inspect", "validate", "du", "resume-cmd", "export", "chart")},  # fmt: skip
    ("demo", "locked"): "demo refuses a non-empty directory before its lock matters (bad input)",
    **{(c, "declined"): "never prompts" for c in COMMANDS if c not in ("prune", "restore")},
}

# The core call each command makes, where a Ctrl+C is injected (imported by the command when it runs).
CORE = {
    "list": ("ckptctl.ops.listing", "list_checkpoints"),
    "inspect": ("ckptctl.ops.inspection", "inspect_target"),
    "validate": ("ckptctl.ops.integrity", "collect_targets"),
    "restore": ("ckptctl.ops.restore", "plan_heal"),
    "prune": ("ckptctl.ops.prune", "plan_prune"),
    "du": ("ckptctl.ops.usage", "measure"),
    "resume-cmd": ("ckptctl.ops.resume", "build_resume_command"),
    "compare": ("ckptctl.ops.compare", "compare"),
    "export": ("ckptctl.ops.export", "plan_export"),
    "chart": ("ckptctl.ops.metrics", "metric_series"),
    "demo": ("ckptctl.training.demo", "run_demo"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One real run (populate_layout), a garbage file, a hostile pickle; copied per test before writing."""
    root = tmp_path_factory.mktemp("exit_codes")
    populate_layout(root / "run")
    (root / "garbage.pt").write_bytes(b"not a checkpoint " * 8)
    write_hostile_checkpoint(root / "evil.pt", root / "pwned")
    (root / "empty").mkdir()
    return root


@pytest.fixture
def w(built, tmp_path) -> Path:
    shutil.copytree(built, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def damaged_run(w: Path) -> Path:
    """Every checkpoint of the run truncated: nothing restorable."""
    for path in (w / "run").glob("*.pt"):
        truncate(path)
    return w / "run"


def args_for(command: str, case: str, w: Path) -> list[str]:
    run, latest = str(w / "run"), str(w / "run" / "latest.pt")
    table = {
        ("list", "ok"): [run],
        ("list", "bad_input"): [str(w / "missing")],
        ("inspect", "ok"): [latest],
        ("inspect", "finding"): [str(w / "evil.pt")],
        ("inspect", "bad_input"): [str(w / "missing.pt")],
        ("inspect", "unreadable"): [str(w / "garbage.pt")],
        ("validate", "ok"): [run],
        ("validate", "finding"): [str(w / "evil.pt")],
        ("validate", "bad_input"): [str(w / "empty")],
        ("validate", "unreadable"): [str(w / "garbage.pt")],
        ("restore", "bad_input"): [str(w / "empty"), "--yes"],
        ("prune", "ok"): [run, "--keep-rolling", "1", "--yes"],
        ("prune", "bad_input"): [run, "--keep-within", "soon", "--yes"],
        ("du", "ok"): [run],
        ("du", "finding"): [run, "--warn-free", "100%"],
        ("du", "bad_input"): [str(w / "missing")],
        ("resume-cmd", "ok"): [run],
        ("resume-cmd", "bad_input"): [str(w / "empty")],
        ("resume-cmd", "unreadable"): [str(w / "garbage.pt")],
        ("compare", "ok"): [latest, latest],
        ("compare", "finding"): [latest, str(w / "run" / "latest_backup.pt")],
        ("compare", "bad_input"): [str(w / "missing.pt"), latest],
        ("compare", "unreadable"): [str(w / "garbage.pt"), latest],
        ("export", "ok"): [latest, "--to", str(w / "out.safetensors")],
        ("export", "finding"): [str(w / "evil.pt"), "--to", str(w / "out.safetensors")],
        ("export", "bad_input"): [latest, "--to", str(w / "out.safetensors"), "--dtype", "int3"],
        ("export", "unreadable"): [str(w / "garbage.pt"), "--to", str(w / "out.safetensors")],
        ("chart", "ok"): [run],
        ("chart", "bad_input"): [str(w / "missing")],
        ("demo", "ok"): [str(w / "demo"), "--steps", "30", "--json"],
        ("demo", "bad_input"): [str(w / "run")],
    }
    if (command, case) in table:
        return table[(command, case)]
    if command == "restore" and case in ("ok", "locked", "declined", "interrupted"):
        truncate(w / "run" / "latest.pt")
        return [run] if case == "declined" else [run, "--yes"]
    if command == "restore" and case == "finding":
        return [str(damaged_run(w)), "--yes"]
    if command in ("resume-cmd", "chart") and case == "finding":  # chart: no checkpoint records a metric
        return [str(damaged_run(w))]
    if command == "prune" and case in ("locked", "declined", "interrupted"):
        return [run, "--keep-rolling", "1"] + ([] if case == "declined" else ["--yes"])
    if case == "interrupted":
        return args_for(command, "ok", w)
    raise AssertionError(f"no arguments for {command} x {case}")


EXPECTED = {
    "ok": errors.EXIT_OK,
    "finding": errors.EXIT_FINDINGS,
    "bad_input": errors.EXIT_USAGE,
    "unreadable": errors.EXIT_FINDINGS,
    "locked": errors.EXIT_LOCKED,
    "declined": errors.EXIT_DECLINED,
    "interrupted": errors.EXIT_INTERRUPTED,
}

CELLS = [pytest.param(c, k, id=f"{c}-{k}") for c in COMMANDS for k in CASES if (c, k) not in NOT_APPLICABLE]


def test_every_cell_is_tested_or_explained():
    assert {(c, k) for c in COMMANDS for k in CASES} == {p.values[:2] for p in CELLS} | set(NOT_APPLICABLE)
    assert not {p.values[:2] for p in CELLS} & set(NOT_APPLICABLE)


def test_the_table():
    assert (errors.EXIT_OK, errors.EXIT_FINDINGS, errors.EXIT_USAGE, errors.EXIT_LOCKED) == (0, 1, 2, 3)
    assert (errors.EXIT_INTERNAL, errors.EXIT_INTERRUPTED, errors.EXIT_DECLINED) == (70, 130, 1)


def hold_lock(directory: Path, logdir: Path) -> Job:
    """A real second process that takes the directory lock and keeps it until killed."""
    script = textwrap.dedent(f"""
        import sys, time
        from ckptctl.locking import DirectoryLock
        from tests.procs import write_ready
        lock = DirectoryLock({str(directory)!r}).acquire()
        write_ready({str(logdir / "ready")!r}, "held")
        time.sleep(600)
    """)
    return Job([sys.executable, "-c", script, "prune"], logdir, name="holder")


@pytest.mark.parametrize("command, case", CELLS)
def test_matrix(command, case, w, monkeypatch, tmp_path):
    args = args_for(command, case, w)
    if case == "interrupted":
        module, name = CORE[command]

        def ctrl_c(*_a, **_k):
            raise KeyboardInterrupt

        monkeypatch.setattr(f"{module}.{name}", ctrl_c)
    if case == "declined":
        monkeypatch.setattr(output, "can_prompt", lambda: True)
    if case == "locked":
        with hold_lock(w / "run", tmp_path / "holder") as job:
            job.wait_for_file(tmp_path / "holder" / "ready")
            result = runner.invoke(app, [command, *args])
        assert f"locked by pid {job.proc.pid} (-c prune, since " in result.stderr, result.stderr
    else:
        result = runner.invoke(app, [command, *args], input="n\n" if case == "declined" else None)
    assert result.exit_code == EXPECTED[case], (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    if case != "ok":  # a non-zero exit explains itself: a report (validate, compare) or one line on stderr
        assert result.stdout.strip() or result.stderr.strip()
    if case in ("bad_input", "locked", "interrupted"):
        assert result.stderr.strip()
    assert not (w / "pwned").exists()


def test_declined_prompt_changes_nothing(w, monkeypatch):
    monkeypatch.setattr(output, "can_prompt", lambda: True)
    before = sorted(p.name for p in (w / "run").iterdir())
    for extra in ([], ["--json"]):  # the same code with --json (it was 2 there, 0 without)
        result = runner.invoke(app, ["prune", str(w / "run"), "--keep-rolling", "1", *extra], input="n\n")
        assert result.exit_code == 1 and "nothing deleted" in result.stderr
    assert sorted(p.name for p in (w / "run").iterdir()) == before


def test_an_unexpected_bug_is_70_in_one_line(w, monkeypatch):
    def bug(*_a, **_k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("ckptctl.ops.listing.list_checkpoints", bug)
    monkeypatch.delenv("CKPTCTL_DEBUG", raising=False)
    result = runner.invoke(app, ["list", str(w / "run")])
    assert result.exit_code == 70 and "internal error: ZeroDivisionError: boom" in result.stderr
    assert "Traceback" not in result.output


# --- the lock holder record -------------------------------------------------------------------------


def test_lock_file_names_its_holder_and_is_emptied_on_release(tmp_path):
    lock = DirectoryLock(tmp_path).acquire()
    data = (tmp_path / LOCK_NAME).read_bytes()
    assert data.startswith(f"pid={os.getpid()}\n".encode()) and b"\nsince=" in data
    assert describe_holder(data).startswith(f"pid {os.getpid()} (")
    lock.release()
    assert (tmp_path / LOCK_NAME).read_bytes() == b""


def test_holder_description():
    record = holder_record(pid=1234, argv=["/usr/local/bin/ckptctl", "prune", "/data/ckpt", "--yes"], since=0)
    text = describe_holder(record, now=0)
    assert text.startswith("pid 1234 (ckptctl prune, since ") and "/data" not in text
    assert describe_holder(b"") is None and describe_holder(b"pid=\n") is None
    assert describe_holder(b"pid=12\n") == "pid 12"


@pytest.mark.parametrize("content", [
    b"\x00\xff" * 100_000,
    b"pid=1\ncmd=" + b"\x1b[2J" * 10_000 + b"\nsince=1\n",
    b"pid=" + b"9" * 5000 + b"\n",
    b"pid=7\nsince=99999999999999999999999\n",
    b"\n" * 1_000_000,
])  # fmt: skip
def test_hostile_lock_file_never_crashes_nor_floods(tmp_path, content):
    """A real second process holds the lock; the lock file was overwritten with junk first."""
    (tmp_path / "d").mkdir()
    with hold_lock(tmp_path / "d", tmp_path / "holder") as job:
        job.wait_for_file(tmp_path / "holder" / "ready")
        (tmp_path / "d" / LOCK_NAME).write_bytes(content)
        result = runner.invoke(app, ["prune", str(tmp_path / "d"), "--yes"])
    assert result.exit_code in (2, 3), result.stderr  # an empty directory may be refused before the lock
    assert len(result.stderr) < 400 and "\x1b" not in result.stderr and "Traceback" not in result.output
    message = None
    with hold_lock(tmp_path / "d", tmp_path / "holder2") as job:
        job.wait_for_file(tmp_path / "holder2" / "ready")
        (tmp_path / "d" / LOCK_NAME).write_bytes(content)
        try:
            DirectoryLock(tmp_path / "d").acquire()
        except errors.LockedError as exc:
            message = str(exc)
    assert message is not None and len(message) < 200 + len(str(tmp_path)) and HOLDER_MAX_BYTES == 512
    assert message.isprintable()


@pytest.mark.parametrize("command", ["prune", "restore"])
def test_end_of_input_at_the_prompt_is_interrupted(command, w, monkeypatch):
    monkeypatch.setattr(output, "can_prompt", lambda: True)
    result = runner.invoke(app, [command, *args_for(command, "declined", w)], input="")
    assert result.exit_code == 130 and "interrupted" in result.stderr
