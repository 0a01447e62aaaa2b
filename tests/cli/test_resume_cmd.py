"""ckptctl resume-cmd: stdout is one runnable line, --json one document, errors one line with their code."""

from __future__ import annotations

import json
import shlex

from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests.factories import write_checkpoint, write_hostile_checkpoint

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["resume-cmd", *args])


def test_plain_output_is_one_runnable_line(ckpt_dir):
    result = invoke(str(ckpt_dir / "latest.pt"), "--script", "train.py")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert shlex.split(lines[0]) == [
        "python", "train.py", "--lr=0.0003", "--batch_size=32", "--data_path=/data/train", "--use_tensorboard",
        "--tags", "a", "b c", f"--resume={ckpt_dir / 'latest.pt'}",
    ]  # fmt: skip
    assert result.stderr == ""


def test_compare_table_goes_to_stderr_and_stdout_stays_runnable(ckpt_dir):
    result = invoke(str(ckpt_dir), "--script", "t.py", "--set", "lr=1e-4", "--set", "batch_size=32", "--compare")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 1 and "--lr=0.0001" in result.stdout
    table = result.stderr.splitlines()
    assert table[0].startswith("ckptctl: resuming") and "latest.pt (step 300, epoch 2)" in table[0]
    assert table[1].split() == ["key", "checkpoint", "value", "new", "value", "note"]
    assert "lr" in table[2] and "0.0003" in table[2] and "0.0001" in table[2] and "restores the saved lr" in table[2]
    assert "batch_size" in table[3] and "unchanged" in table[3]


def test_compare_without_overrides_says_so(ckpt_dir):
    result = invoke(str(ckpt_dir), "--script", "t.py", "--compare")
    assert result.exit_code == 0 and "no --set overrides" in result.stderr


def test_json_document(ckpt_dir):
    result = invoke("latest", "--dir", str(ckpt_dir), "--set", "lr=1e-4", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["checkpoint"] == str(ckpt_dir / "latest.pt") and doc["requested"] == "latest"
    assert doc["step"] == 300 and doc["script_is_placeholder"] is True
    assert doc["args"]["lr"] == 1e-4
    assert doc["changes"][0]["key"] == "lr" and doc["changes"][0]["risk"] == "learning rate"
    assert shlex.split(doc["command"]) == doc["argv"]
    assert any("placeholder" in w for w in doc["warnings"])


def test_fallback_is_reported_on_stderr(ckpt_dir):
    (ckpt_dir / "latest.pt").write_bytes(b"\0" * 10)
    result = invoke("latest", "--dir", str(ckpt_dir), "--script", "t.py")
    assert result.exit_code == 0
    assert result.stdout.rstrip().endswith(f"--resume={ckpt_dir / 'latest_backup.pt'}")
    assert "latest.pt unreadable" in result.stderr and "falling back" in result.stderr


def test_unknown_set_key_is_exit_2(ckpt_dir):
    result = invoke(str(ckpt_dir), "--set", "batchsize=64")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "did you mean batch_size" in result.stderr


def test_bad_bool_style_is_exit_2(ckpt_dir):
    result = invoke(str(ckpt_dir), "--bools", "maybe")
    assert result.exit_code == 2 and "boolean style" in result.stderr


def test_missing_path_is_exit_2(tmp_path):
    result = invoke(str(tmp_path / "nope.pt"))
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_no_valid_checkpoint_is_exit_1(tmp_path):
    (tmp_path / "latest.pt").write_bytes(b"garbage")
    result = invoke("latest", "--dir", str(tmp_path))
    assert result.exit_code == 1 and "no valid latest checkpoint" in result.stderr


def test_hostile_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = write_hostile_checkpoint(tmp_path / "evil.pt", marker)
    result = invoke(str(evil))
    assert result.exit_code == 1
    assert "references posix.system" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_namespace_args(tmp_path):
    from tests.factories import make_state

    ckpt = write_checkpoint(tmp_path / "a.pt", make_state(namespace_args=True))
    result = invoke(str(ckpt), "--script", "t.py", "--bools", "optional", "--json")
    assert json.loads(result.stdout)["argv"][2:4] == ["--lr=0.0003", "--batch_size=32"]


def test_the_cli_default_python_is_the_cores():
    """resume_cmd spells the default out so that the app starts without importing ckptctl.resume."""
    import inspect

    from ckptctl import resume
    from ckptctl.cli.resume_cmd import resume_command

    assert inspect.signature(resume_command).parameters["python"].default == resume.DEFAULT_PYTHON
