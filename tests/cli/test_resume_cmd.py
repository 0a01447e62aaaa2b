"""ckptctl resume-cmd: stdout is one runnable line, --json one document, errors one line with their code."""

from __future__ import annotations

import json
import shlex
import sys

import pytest
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
    """resume_cmd spells the default out so that the app starts without importing ckptctl.ops.resume."""
    import inspect

    from ckptctl.ops import resume
    from ckptctl.cli.resume_cmd import resume_command

    assert inspect.signature(resume_command).parameters["python"].default == resume.DEFAULT_PYTHON


# --- only data reaches the shell: eval "$(ckptctl resume-cmd ...)" runs what is printed ------------

ARGV_PRINTER = "import json, sys\njson.dump(sys.argv[1:], sys.stdout)\n"


def _eval(command: str, cwd, form: str) -> list[str]:
    """Run the printed line the documented ways (eval, a pipe to bash, sh -c) and return the argv
    the script received."""
    import subprocess

    scripts = {"eval": (["bash", "-c", 'eval "$1"', "_", command], None),
               "pipe": (["bash"], command + "\n"),
               "sh": (["sh", "-c", command], None)}  # fmt: skip
    argv, stdin = scripts[form]
    done = subprocess.run(argv, input=stdin, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _ckpt_with_args(tmp_path, args):
    return write_checkpoint(tmp_path / "run" / "latest.pt", {"step": 3, "args": args})


HOSTILE_SCRIPTS = ["-cimport os; open('MARKER', 'w')", "-mhttp.server", "--foo", "-", "",
                   "train.py\n; touch MARKER", "a\x1b[2Jb.py", "t\rrain.py", "x\u202eyp.py"]  # fmt: skip


@pytest.mark.parametrize("script", HOSTILE_SCRIPTS)
def test_a_saved_script_that_is_not_a_path_is_refused(tmp_path, script):
    ckpt = _ckpt_with_args(tmp_path, {"script": script, "lr": 0.1})
    result = invoke(str(ckpt))
    if script == "":  # an empty script is no script: the placeholder, with its warning
        assert result.exit_code == 0 and "placeholder" in result.stderr
        return
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "unsafe: " in result.stderr and "--script" in result.stderr
    assert result.stderr.isprintable() or result.stderr[:-1].isprintable()
    # the user naming the script is the way out; the saved one still travels as inert --script=...
    (tmp_path / "run" / "t.py").write_text(ARGV_PRINTER)
    result = invoke(str(ckpt), "--script", "t.py", "--python", sys.executable)
    if not script.isprintable():
        assert result.exit_code == 0 and "saved arg 'script'" in result.stderr and "left out" in result.stderr
        expected = ["--lr=0.1", f"--resume={ckpt}"]
    else:
        expected = [f"--script={script}", "--lr=0.1", f"--resume={ckpt}"]
    assert _eval(result.stdout, tmp_path / "run", "eval") == expected
    assert not (tmp_path / "run" / "MARKER").exists()


SHELL_HOSTILE_PATHS = ["$(touch MARKER)", "a;touch MARKER", "`touch MARKER`", "x' ; touch MARKER; '", "b c.py",
                       '"; touch MARKER; "', "*", "~root", "$HOME"]  # fmt: skip


@pytest.mark.parametrize("form", ["eval", "pipe", "sh"])
@pytest.mark.parametrize("script", SHELL_HOSTILE_PATHS)
def test_a_script_path_with_shell_syntax_is_data(tmp_path, script, form):
    """A path is a path however it is spelled: the shell runs that file, never the text in its name."""
    ckpt = _ckpt_with_args(tmp_path, {"train_script": script, "lr": 0.1})
    (tmp_path / "run" / script).write_text(ARGV_PRINTER)  # the file the name names: it prints its argv
    result = invoke(str(ckpt), "--python", sys.executable)
    assert result.exit_code == 0, result.output
    argv = _eval(result.stdout, tmp_path / "run", form)
    assert argv == [f"--train_script={script}", "--lr=0.1", f"--resume={ckpt}"]
    assert not (tmp_path / "run" / "MARKER").exists()


def test_hostile_keys_are_left_out_and_hostile_values_stay_data(tmp_path):
    args = {
        "a;b": 1, "-x": 2, "x y": 3, "": 4, "1st": 5, "$(touch MARKER)": 6, "--evil": 7, "k=v": 8, "é": 9,
        "q": "'; touch MARKER; '", "d": "$(touch MARKER)", "b": "`touch MARKER`", "opt": "--help", "neg": "-x",
        "nl": "a\nb", "esc": "a\x1b[2Jb", "bidi": "a\u202eb",
        "items": ["ok", "$(touch MARKER)", "-1", "-2.5"], "optlist": ["a", "-x"], "endlist": ["--", "--evil"],
        "lr": 0.1, "ok.key-1": "v",
    }  # fmt: skip
    ckpt = _ckpt_with_args(tmp_path, args)
    (tmp_path / "run" / "t.py").write_text(ARGV_PRINTER)
    result = invoke(str(ckpt), "--script", "t.py", "--python", sys.executable)
    assert result.exit_code == 0, result.output
    expected = ["--q='; touch MARKER; '", "--d=$(touch MARKER)", "--b=`touch MARKER`", "--opt=--help", "--neg=-x",
                "--items", "ok", "$(touch MARKER)", "-1", "-2.5", "--lr=0.1", "--ok.key-1=v", f"--resume={ckpt}"]  # fmt: skip
    for form in ("eval", "pipe", "sh"):
        assert _eval(result.stdout, tmp_path / "run", form) == expected
    assert not (tmp_path / "run" / "MARKER").exists()
    left_out = [line for line in result.stderr.splitlines() if "left out" in line]
    assert len(left_out) == 14  # 9 keys, 3 values with control characters, 2 lists
    for key in ("a;b", "-x", "x y", "", "1st", "$(touch MARKER)", "--evil", "k=v", "é", "nl", "esc", "bidi",
                "optlist", "endlist"):  # fmt: skip
        assert any(repr(key) in line for line in left_out), key
    assert result.stdout.rstrip("\n").isprintable() and result.stderr.replace("\n", "").isprintable()


def test_non_string_keys_of_saved_args_are_left_out(tmp_path):
    """An ``args`` dict with non-str keys: the str ones are used, the others named as left out."""
    from tests import hostile

    args = b"}(" + b"K\x01K\x02" + hostile._str("lr") + b"G?\xb9\x99\x99\x99\x99\x99\x9a" + b"u"
    data = b"\x80\x02}(" + hostile._str("step") + b"K\x03" + hostile._str("args") + args + b"u."
    ckpt = hostile.torch_zip(tmp_path / "ns.pt", data)
    result = invoke(str(ckpt), "--script", "t.py", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["argv"][2:-1] == ["--lr=0.1"] and any("left out" in w for w in doc["warnings"])


def test_a_namespace_with_non_string_keys_is_refused_as_corrupt(tmp_path):
    """No real argparse.Namespace has non-str attribute names: the reader calls the file corrupt."""
    from tests import hostile

    ns = hostile._global("argparse", "Namespace") + b")\x81" + b"}(" + b"K\x01K\x02" + hostile._str("lr") + b"G?\xb9\x99\x99\x99\x99\x99\x9a" + b"ub"
    data = b"\x80\x02}(" + hostile._str("step") + b"K\x03" + hostile._str("args") + ns + b"u."
    ckpt = hostile.torch_zip(tmp_path / "ns.pt", data)
    result = invoke(str(ckpt), "--script", "t.py", "--json")
    assert result.exit_code == 1 and "malformed argparse.Namespace state" in result.output
    assert result.stdout == ""


@pytest.mark.parametrize(
    "option, message",
    [(["--script", "-cimport os"], "starts with '-'"), (["--script", ""], "is empty"),
     (["--script", "a\nb.py"], "control"), (["--python", "-c 'import os'"], "starts with '-'"),
     (["--python", "python\x1b[2J"], "control"), (["--python", "torchrun --x\x07"], "control"),
     (["--set", "a;b=1", "--allow-new"], "not an option name"), (["--set", "-x=1", "--allow-new"], "not an option name"),
     (["--set", "lr=1", "--set", "note=a\nb", "--allow-new"], "control"),
     (["--set", "tags=-x y"], "as an option"), (["--set", "tags=[\"--\"]"], "end argparse's options"),
     (["--set", "script=-cimport os", "--allow-new"], "starts with '-'"), (["--resume-flag", "--r;x"], "not an option name")],
)  # fmt: skip
def test_bad_user_input_is_exit_2(ckpt_dir, option, message):
    result = invoke(str(ckpt_dir / "latest.pt"), *option)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1 and message in result.stderr
    assert result.stderr.rstrip("\n").isprintable()


def test_a_launcher_with_options_is_fine(ckpt_dir):
    result = invoke(str(ckpt_dir / "latest.pt"), "--script", "t.py", "--python", "torchrun --nproc_per_node 4")
    assert result.exit_code == 0 and shlex.split(result.stdout)[:5] == ["torchrun", "--nproc_per_node", "4", "t.py", "--lr=0.0003"]


@pytest.mark.parametrize(("content", "reason"), [
    (b"PK\x03\x04" + b"\0" * 60, "unreadable: truncated"),
    (b"not a checkpoint at all\n", "unreadable: not a checkpoint"),
])  # fmt: skip
def test_an_unreadable_checkpoint_is_named_in_the_error(tmp_path, content, reason):
    """Issue #14: resume-cmd's errors said what was wrong but not with which file."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    result = invoke(str(bad))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"ckptctl: error: {bad}: {reason}"), result.stderr


def test_an_error_that_names_its_file_already_is_not_prefixed_twice(tmp_path):
    write_checkpoint(tmp_path / "x.pt", {"step": 1, "args": {"script": "-rf"}})
    result = invoke(str(tmp_path / "x.pt"))
    assert result.exit_code == 1
    assert result.stderr.count(str(tmp_path / "x.pt")) == 1 and "unsafe" in result.stderr
