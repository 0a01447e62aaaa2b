"""ckptctl validate: exit 0 all valid, 1 any invalid, 2 bad input; one JSON document with --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests.corruption import Layout, flip
from tests.factories import cached_layout, write_checkpoint, write_hostile_checkpoint


@pytest.fixture
def ckpt_dir(tmp_path) -> Path:
    """The layout of tests/conftest.py, copied from one template written once per process."""
    return cached_layout(tmp_path / "checkpoints")


runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["validate", *args])


def damage_tensor(path):
    layout = Layout.of(path.read_bytes())
    key = layout.tensor_keys()[0]
    _h, offset, size = layout.records[key]
    path.write_bytes(flip(layout.data, offset + size // 2))
    return key


def test_valid_directory_exits_0_with_a_summary(ckpt_dir):
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["verdict", "file", "details"]
    assert sum(line.startswith("valid ") for line in lines) == 12
    assert lines[-1].startswith("12 checked: 12 valid, 0 invalid (default level, ")
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


@pytest.mark.parametrize("strays, words", [(["notes.txt"], "1 other file skipped"),
                                           (["notes.txt", "run.log"], "2 other files skipped")])  # fmt: skip
def test_summary_counts_skipped_files_in_good_english(ckpt_dir, strays, words):
    for name in strays:
        (ckpt_dir / name).write_text("not a checkpoint")
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith(f", {words})")


def test_the_tools_own_files_are_not_skipped_files(ckpt_dir):
    """The lock and the demo's marker are ckptctl's bookkeeping, not files a user expects checked."""
    for name in (".ckptctl.lock", ".ckptctl-demo"):
        (ckpt_dir / name).write_text("")
    (ckpt_dir / "notes.txt").write_text("not a checkpoint")
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith(", 1 other file skipped)")
    doc = json.loads(invoke(str(ckpt_dir), "--json").stdout)
    assert [Path(p).name for p in doc["skipped"]] == ["notes.txt"]


def test_damaged_file_exits_1_and_names_record_and_file(ckpt_dir):
    key = damage_tensor(ckpt_dir / "rolling_step_000200.pt")
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 1
    bad = [line for line in result.stdout.splitlines() if line.startswith("invalid")]
    assert len(bad) == 1 and "rolling_step_000200.pt" in bad[0] and f"record {key}: CRC mismatch" in bad[0]
    assert "12 checked: 11 valid, 1 invalid" in result.stdout


def test_json_document(ckpt_dir):
    damage_tensor(ckpt_dir / "latest.pt")
    result = invoke(str(ckpt_dir / "latest.pt"), str(ckpt_dir / "best_model.pt"), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert (doc["valid"], doc["invalid"], doc["level"]) == (1, 1, "default")
    first, second = doc["results"]
    assert set(first) >= {"path", "name", "valid", "problems", "notes", "status", "checksums"}
    assert first["name"] == "latest.pt" and first["valid"] is False and "CRC mismatch" in first["problems"][0]
    assert second == {**second, "name": "best_model.pt", "valid": True, "problems": [], "status": "valid"}


def test_hostile_file_is_unsafe_at_deep_level_and_never_runs(tmp_path):
    marker = tmp_path / "executed"
    path = write_hostile_checkpoint(tmp_path / "best_model.pt", marker)
    for level in ("--quick", "--deep"):
        result = invoke(str(path), level, "--json")
        assert result.exit_code == 1
        (entry,) = json.loads(result.stdout)["results"]
        assert entry["status"] == "unsafe" and entry["problems"] == ["unsafe: references posix.system"]
    assert not marker.exists()


def test_no_checksums_is_valid_with_a_note(tmp_path):
    import torch

    torch.serialization.set_crc32_options(False)
    try:
        path = write_checkpoint(tmp_path / "latest.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    result = invoke(str(path))
    assert result.exit_code == 0
    assert "note: no checksums: written with torch's CRC-32 switched off" in result.stdout


def test_levels_and_jobs_give_the_same_verdicts(ckpt_dir):
    damage_tensor(ckpt_dir / "epoch_00001.pt")
    verdicts = {}
    for extra in ([], ["--jobs", "1"], ["--jobs", "3"], ["--deep"]):
        doc = json.loads(invoke(str(ckpt_dir), "--json", *extra).stdout)
        verdicts[tuple(extra)] = [(r["name"], r["valid"]) for r in doc["results"]]
    assert len(set(map(tuple, verdicts.values()))) == 1
    quick = json.loads(invoke(str(ckpt_dir), "--json", "--quick").stdout)
    assert quick["invalid"] == 0 and quick["level"] == "quick"  # tensor bytes are not read at --quick


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, message in (
        ([str(tmp_path / "missing.pt")], "no such file"),
        ([str(tmp_path)], "no checkpoints in"),
        ([str(tmp_path), "--quick", "--deep"], "--quick and --deep exclude each other"),
    ):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert invoke().exit_code == 2  # PATH is required


def test_flipped_files_never_produce_a_traceback(tmp_path):
    path = write_checkpoint(tmp_path / "latest.pt")
    data = path.read_bytes()
    for at in range(0, len(data), max(1, len(data) // 40)):
        path.write_bytes(flip(data, at, 0x10))
        result = invoke(str(path))
        assert result.exit_code in (0, 1) and "Traceback" not in result.stderr + result.stdout, at


def test_progress_bar_counts_every_planned_byte_on_a_terminal(ckpt_dir, monkeypatch):
    from ckptctl.cli import progress
    from ckptctl.cli.progress import ByteProgress
    from ckptctl.ops.integrity import DEFAULT, collect_targets, planned_bytes

    advanced: list[int] = []
    original = ByteProgress.advance

    def spy(self, nbytes):
        advanced.append(nbytes)
        original(self, nbytes)

    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    monkeypatch.setattr(progress, "MIN_BYTES", 0)
    monkeypatch.setattr(ByteProgress, "advance", spy)
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 0
    assert sum(advanced) == planned_bytes(collect_targets([str(ckpt_dir)])[0], DEFAULT) > 0
    assert all(n > 0 for n in advanced)


# ------------------------------------------------- integrity vs content, access, hard links (#13)

AS_OTHER_USER = r"""
import contextlib, io, os, sys
from ckptctl.cli.app import app

def run(argv):
    try:
        app(argv, prog_name="ckptctl")
    except SystemExit as exc:
        return exc.code or 0
    return 0

os.chdir(sys.argv[1])
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    run(sys.argv[2:])  # as root first: imports every module the command uses (root's interpreter files are private)
os.setgid(65534)
os.setuid(65534)
sys.exit(run(sys.argv[2:]))
"""


def run_without_read_permission(directory: Path, unreadable: Path, *args: str):
    """Run ``ckptctl ARGS`` in ``directory`` where ``unreadable`` (mode 000) really cannot be opened.

    As root (CI containers), permissions do not apply: the command runs in a subprocess that drops
    to uid/gid 65534 after a first run as root has imported everything it needs; paths are relative
    to ``directory``, so no parent directory needs to be searchable by that user.
    """
    import os
    import subprocess
    import sys

    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    unreadable.chmod(0)
    if os.geteuid() != 0:
        from types import SimpleNamespace

        cwd = os.getcwd()
        os.chdir(directory)
        try:
            result = runner.invoke(app, list(args))
        finally:
            os.chdir(cwd)
        return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)
    return subprocess.run([sys.executable, "-c", AS_OTHER_USER, str(directory), *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_manager_checkpoints_without_epoch_exit_0_with_a_finding(tmp_path):
    from tests.test_integrity import _manager_run_without_epoch

    directory = _manager_run_without_epoch(tmp_path / "run")
    result = invoke(str(directory))
    assert result.exit_code == 0, result.stdout
    assert result.stdout.count("finding: missing key 'epoch'") == 5 and "required" not in result.stdout
    assert "5 checked: 5 valid, 0 invalid, 5 with findings" in result.stdout
    doc = json.loads(invoke(str(directory), "--json").stdout)
    assert {r["status"] for r in doc["results"]} == {"valid"} and doc["with_findings"] == 5
    assert [r["same_file_as"] for r in doc["results"]].count("latest.pt") == 2


def test_nan_at_deep_fails_with_its_own_verdict(tmp_path):
    state = __import__("tests.factories", fromlist=["make_state"]).make_state()
    state["model"]["2.bias"][0] = float("nan")
    path = write_checkpoint(tmp_path / "latest.pt", state)
    assert invoke(str(path)).exit_code == 0  # intact; values are read at --deep only
    result = invoke(str(path), "--deep")
    assert result.exit_code == 1 and result.stdout.startswith("verdict") and "\nnon-finite " in result.stdout
    assert "finding: tensor model.2.bias: 1 NaN, 0 Inf" in result.stdout
    (entry,) = json.loads(invoke(str(path), "--deep", "--json").stdout)["results"]
    assert (entry["status"], entry["valid"], entry["finite"]) == ("valid", True, False)


def test_a_file_without_read_permission_is_inaccessible_once_and_exit_2(ckpt_dir):
    result = run_without_read_permission(ckpt_dir, ckpt_dir / "epoch_00000.pt", "validate", ".")
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "epoch_00000.pt" in line]
    assert line.startswith("inaccessible ") and "permission denied" in line
    assert result.stdout.count("permission denied") == 1 and "invalid" not in line
    assert "12 checked: 11 valid, 0 invalid, 1 not readable (permission)" in result.stdout


def test_a_one_tensor_safetensors_file_reads_in_the_singular(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "one.safetensors"))
    result = invoke(str(tmp_path / "one.safetensors"))
    assert result.exit_code == 0, result.stderr
    assert "safetensors: 1 tensor, header checked" in result.stdout
