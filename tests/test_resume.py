"""resume: saved args -> a POSIX command line that argparse reads back exactly; --set overrides and notes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptctl.errors import BadInputError, UnsafeCheckpoint
from ckptctl.ops.resume import apply_overrides, args_to_argv, build_resume_command, normalise_args, risk_of
from tests.factories import make_state, write_checkpoint, write_hostile_checkpoint

# A training script's parser, built from the same keys and the types of their saved values.
ARGPARSE_SCRIPT = r'''
import argparse, json, os, sys
spec = json.loads(os.environ["ARG_SPEC"])
parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--resume")
types = {"int": int, "float": float, "str": str}
for key, kind in spec.items():
    if kind == "bool":
        parser.add_argument(f"--{key}", action="store_true")
    elif kind == "optional_bool":
        parser.add_argument(f"--{key}", action=argparse.BooleanOptionalAction, default=None)
    elif kind.startswith("list:"):
        parser.add_argument(f"--{key}", nargs="*", type=types[kind[5:]])
    else:
        parser.add_argument(f"--{key}", type=types.get(kind, str))
json.dump(vars(parser.parse_args()), sys.stdout)
'''


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "list:" + (_kind(value[0]) if value else "str")
    return {int: "int", float: "float"}.get(type(value), "str")


def _run_in_shell(command: str, spec: dict, shell: str = "sh") -> dict:
    """Run the printed line through a real shell, exactly as a user pasting it would."""
    env = {**os.environ, "ARG_SPEC": json.dumps(spec)}
    done = subprocess.run([shell, "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@pytest.fixture(scope="module")
def parser_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("script") / "train.py"
    path.write_text(ARGPARSE_SCRIPT)
    return path


keys = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(lambda k: k != "resume")
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
values = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.lists(st.integers(min_value=-1000, max_value=1000), max_size=4),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4),
    st.lists(text, max_size=4),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.dictionaries(keys, values, max_size=8))
def test_round_trip_through_a_real_shell_and_argparse(args, parser_script):
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp) / "ck it's.pt", {"step": 7, "args": args})
        result = build_resume_command(str(ckpt), script=str(parser_script), python=sys.executable)
        assert result.command.isprintable()
        left_out = {k for k in args if k not in result.args}  # control characters, '-x' inside a list
        for key in left_out:
            assert any(f"saved arg {key!r}" in w and "left out" in w for w in result.warnings), (key, result.warnings)
        if any("cannot read back" in w for w in result.warnings):  # a scalar '--': printed, flagged
            return
        kept = {k: v for k, v in args.items() if k not in left_out}
        parsed = _run_in_shell(result.command, {k: _kind(v) for k, v in kept.items()})
    assert parsed.pop("resume") == str(ckpt)
    for key, value in kept.items():
        assert _same(parsed[key], value), (key, value, parsed[key], result.command)


def test_bash_eval_of_a_seed_checkpoint(tmp_path, parser_script):
    ckpt = write_checkpoint(tmp_path / "dir with space" / "latest.pt", make_state(namespace_args=True))
    result = build_resume_command(str(ckpt), script=str(parser_script), python=sys.executable)
    spec = {"lr": "float", "batch_size": "int", "data_path": "str", "use_tensorboard": "bool", "tags": "list:str"}
    parsed = _run_in_shell(f"eval {json.dumps(result.command)}", spec, shell="bash")
    assert parsed == {"resume": str(ckpt), "lr": 3e-4, "batch_size": 32, "data_path": "/data/train",
                      "use_tensorboard": True, "tags": ["a", "b c"]}  # fmt: skip


def test_optional_bool_style_round_trips_false(tmp_path, parser_script):
    ckpt = write_checkpoint(tmp_path / "a.pt", {"args": {"amp": False, "ema": True}})
    result = build_resume_command(str(ckpt), script=str(parser_script), python=sys.executable, bool_style="optional")
    assert "--no-amp" in result.argv and "--ema" in result.argv
    parsed = _run_in_shell(result.command, {"amp": "optional_bool", "ema": "optional_bool"})
    assert parsed["amp"] is False and parsed["ema"] is True


def test_args_to_argv_rendering():
    tokens, problems = args_to_argv(
        {"flag": True, "off": False, "none": None, "n": -3, "x": 1e-5, "s": "-a b", "e": "", "l": [1, 2], "empty": []}
    )
    assert tokens == ["--flag", "--n=-3", "--x=1e-05", "--s=-a b", "--e=", "--l", "1", "2", "--empty"]
    assert problems == []


def test_negative_floats_in_lists_avoid_exponents():
    tokens, problems = args_to_argv({"w": [-1e-05, -2.5, 3e-7]})
    assert tokens == ["--w", "-0.00001", "-2.5", "3e-07"]
    assert problems == []


def test_a_scalar_argparse_cannot_read_back_is_printed_and_flagged():
    tokens, problems = args_to_argv({"s": "--"})
    assert tokens == ["--s=--"]
    assert len(problems) == 1 and "cannot read back" in problems[0]


@pytest.mark.parametrize(
    "args, fragment",
    [({"l": ["-x"]}, "as an option"), ({"l": ["-x y"]}, "as an option"), ({"l": ["--"]}, "end argparse's options"),
     ({"w": [float("-inf")]}, "as an option"), ({"l": ["a\x1b[2J"]}, "control")],
)  # fmt: skip
def test_list_items_argparse_would_not_take_as_data_are_left_out(args, fragment):
    tokens, problems = args_to_argv(args)
    assert tokens == []
    assert len(problems) == 1 and fragment in problems[0] and "left out" in problems[0]


def test_normalise_args_drops_what_a_command_line_cannot_carry():
    args, dropped = normalise_args({"ok": 1, "nested": {"a": 1}, "bad key": 2, "pairs": [[1, 2]], "t": (1, 2)})
    assert args == {"ok": 1, "t": [1, 2]}
    assert len(dropped) == 3 and any("'nested'" in d for d in dropped)


def test_numpy_scalars_in_args_are_decoded(tmp_path):
    import numpy as np

    ckpt = write_checkpoint(tmp_path / "a.pt", {"args": {"lr": np.float64(0.5), "bs": np.int64(8), "w": np.float32(2.0)}})
    result = build_resume_command(str(ckpt), script="t.py")
    assert result.argv[2:5] == ["--lr=0.5", "--bs=8", "--w=2.0"]


def test_overrides_are_typed_like_the_saved_value():
    saved = {"lr": 3e-4, "bs": 32, "amp": True, "tags": ["a"], "ids": [1], "name": "x", "opt": None}
    final, changes = apply_overrides(
        saved, ["lr=1e-4", "bs=64", "amp=no", "tags=b 'c d'", "ids=[3, 4]", "name=007", "opt=3"], allow_new=False
    )
    assert final == {"lr": 1e-4, "bs": 64, "amp": False, "tags": ["b", "c d"], "ids": [3, 4], "name": "007", "opt": 3}
    assert all(c.changed for c in changes)


@pytest.mark.parametrize(
    "override, message",
    [("bs=abc", "not an integer"), ("lr=fast", "not a number"), ("amp=maybe", "not true/false"),
     ("novalue", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("bad key=1", "not an option name"), ("ids=[1,", "not a JSON list")],
)  # fmt: skip
def test_bad_overrides_are_bad_input(override, message):
    with pytest.raises(BadInputError, match=message) as info:
        apply_overrides({"bs": 32, "lr": 0.1, "amp": True, "ids": [1]}, [override], allow_new=False)
    assert info.value.exit_code == 2


def test_unknown_key_needs_allow_new_and_suggests_close_names():
    with pytest.raises(BadInputError, match=r"did you mean batch_size\?.*--allow-new"):
        apply_overrides({"batch_size": 32}, ["batchsize=64"], allow_new=False)
    final, changes = apply_overrides({"batch_size": 32}, ["batchsize=64", "debug=true", "tag=x y"], allow_new=True)
    assert final == {"batch_size": 32, "batchsize": 64, "debug": True, "tag": "x y"}
    assert changes[0].is_new_key and changes[0].note.startswith("new key") and "effective batch" in changes[0].note


def test_notes_flag_changes_that_touch_saved_state():
    saved = {"lr": 3e-4, "beta2": 0.95, "weight_decay": 0.1, "seq_len": 512, "data_path": "/d", "world_size": 8,
             "warmup_steps": 100, "num_workers": 4, "seed": 1}  # fmt: skip
    overrides = ["lr=1e-4", "beta2=0.99", "weight_decay=0", "seq_len=1024", "data_path=/e", "world_size=4",
                 "warmup_steps=10", "num_workers=8", "seed=1"]  # fmt: skip
    _final, changes = apply_overrides(saved, overrides, allow_new=False, saved_lrs=[2.5e-4])
    risks = {c.key: c.risk for c in changes}
    assert risks == {"lr": "learning rate", "beta2": "optimizer betas", "weight_decay": "weight decay",
                     "seq_len": "sequence length", "data_path": "data path", "world_size": "world size",
                     "warmup_steps": "schedule", "num_workers": None, "seed": None}  # fmt: skip
    notes = {c.key: c.note for c in changes}
    assert "restores the saved lr (0.00025)" in notes["lr"]
    assert notes["seed"] == "unchanged" and notes["num_workers"] is None


@pytest.mark.parametrize("key", ["lr", "base_lr", "learning_rate", "lr_min"])
def test_learning_rate_keys(key):
    assert risk_of(key).category == "learning rate"


@pytest.mark.parametrize("key", ["epochs", "num_workers", "log_every", "dataloader_workers", "output_dir"])
def test_harmless_keys_have_no_risk(key):
    assert risk_of(key) is None


def test_command_shape_script_python_and_resume_key(tmp_path):
    args = {"script": "src/train improved.py", "resume": "old.pt", "lr": 0.1}
    ckpt = write_checkpoint(tmp_path / "a.pt", {"step": 5, "epoch": 1, "args": args})
    result = build_resume_command(str(ckpt), python="torchrun --nproc_per_node 4", resume_flag="--resume")
    assert result.argv == ["torchrun", "--nproc_per_node", "4", "src/train improved.py",
                           "--script=src/train improved.py", "--lr=0.1", f"--resume={ckpt}"]  # fmt: skip
    assert result.command.startswith("torchrun --nproc_per_node 4 'src/train improved.py'")
    assert not result.script_is_placeholder and result.warnings == []
    doc = result.to_json()
    assert doc["step"] == 5 and doc["argv"] == result.argv and doc["command"] == result.command


def test_placeholder_script_and_missing_args_warn(tmp_path):
    ckpt = write_checkpoint(tmp_path / "a.pt", {"step": 5})
    result = build_resume_command(str(ckpt))
    assert result.argv == ["python", "train.py", f"--resume={ckpt}"]
    assert result.script_is_placeholder
    assert any("no saved args" in w for w in result.warnings)
    assert any("placeholder" in w for w in result.warnings)


@pytest.mark.parametrize("kwargs, message", [({"resume_flag": "resume"}, "not an option name"),
                                             ({"python": ""}, "must not be empty"),
                                             ({"bool_style": "yes"}, "boolean style")])  # fmt: skip
def test_bad_options(tmp_path, kwargs, message):
    ckpt = write_checkpoint(tmp_path / "a.pt", {"step": 5})
    with pytest.raises(BadInputError, match=message):
        build_resume_command(str(ckpt), **kwargs)


def test_hostile_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = write_hostile_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpoint, match="posix.system"):
        build_resume_command(str(ckpt))
    assert not marker.exists()
