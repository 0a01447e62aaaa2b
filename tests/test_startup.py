"""Startup: --help, list, inspect and shell completion never import torch or numpy (fresh interpreter each),
nothing local imports fsspec or s3fs (object storage is imported only for a URL), and nothing imports
pydantic (Typer 0.29 coerces every parameter through it: +0.27 s per command, see pyproject.toml)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Runs the app in-process inside a fresh interpreter, then reports which heavy modules got imported.
PROBE = """
import json, os, sys
from ckptctl.cli.app import app
try:
    app(json.loads(sys.argv[1]), prog_name="ckptctl")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "numpy", "fsspec", "s3fs", "pydantic") if m in sys.modules)
os.write(2, ("\\nPROBE " + json.dumps({"code": code, "heavy": heavy}) + "\\n").encode())
"""


def _run(args: list[str], env: dict[str, str] | None = None) -> dict:
    import os

    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **(env or {})})  # fmt: skip
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("PROBE ")][-1]
    return {**json.loads(line[6:]), "stdout": result.stdout}


@pytest.mark.parametrize("args", [["--help"], ["list", "--help"], ["inspect", "--help"]], ids=" ".join)
def test_help_imports_neither_torch_nor_numpy(args):
    probe = _run(args)
    assert probe["code"] == 0 and "Usage" in probe["stdout"]
    assert probe["heavy"] == []


def test_version_prints_the_installed_version_without_torch_or_numpy():
    from importlib.metadata import version

    probe = _run(["--version"])
    assert probe["code"] == 0 and probe["stdout"] == f"ckptctl {version('ckptctl')}\n"
    assert probe["heavy"] == []


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["plain", "json"])
def test_list_imports_neither_torch_nor_numpy(ckpt_dir, json_flag):
    probe = _run(["list", str(ckpt_dir), *json_flag])
    assert probe["code"] == 0 and "latest.pt" in probe["stdout"]
    assert probe["heavy"] == []


@pytest.mark.parametrize("layout", ["hf_trainer", "lightning", "deepspeed", "torchtitan/checkpoint", "accelerate"])
def test_list_of_another_frameworks_run_imports_neither_torch_nor_numpy(layout):
    from pathlib import Path

    run = Path(__file__).resolve().parent / "fixtures" / "frameworks" / layout
    probe = _run(["list", str(run), "--json"])
    assert probe["code"] == 0 and json.loads(probe["stdout"])["checkpoints"], probe
    assert probe["heavy"] == []


def test_inspect_imports_neither_torch_nor_numpy(ckpt_dir):
    probe = _run(["inspect", str(ckpt_dir / "latest.pt"), "--tensors"])
    assert probe["code"] == 0 and "AdamW" in probe["stdout"] and "numpy" in probe["stdout"]  # the RNG state names it
    assert probe["heavy"] == []


def test_list_of_a_url_imports_neither_torch_nor_numpy(s3_layout, s3_endpoint):
    probe = _run(["list", s3_layout[1]], env=s3_endpoint.env)
    assert probe["code"] == 0 and "latest.pt" in probe["stdout"]
    assert probe["heavy"] == ["fsspec", "s3fs"]


def test_completion_imports_neither_torch_nor_numpy():
    probe = _run([], env={"_CKPTCTL_COMPLETE": "complete_bash", "COMP_WORDS": "ckptctl li", "COMP_CWORD": "1"})
    assert probe["stdout"].split() == ["list"]
    assert probe["heavy"] == []


def test_the_probe_would_notice_torch():
    """Guard against a probe that can never fail: a torch module in sys.modules is reported.

    (A stand-in module, not the real import: importing torch would cost seconds per run.)
    """
    fake = "import sys, types\nsys.modules['torch'] = types.ModuleType('torch')\n"
    result = subprocess.run([sys.executable, "-c", fake + PROBE, json.dumps(["--help"])],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("PROBE ")][-1]
    assert json.loads(line[6:])["heavy"] == ["torch"]


def test_the_app_starts_without_the_commands_core_modules():
    """Every command pays for the app's start-up: the command modules import their core (the
    reader, the catalog, durable writes, ...) when they run, so ``--help`` loads none of it."""
    code = ("import sys, json; import ckptctl.cli.app; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ckptctl.'))))")  # fmt: skip
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    core = {m for m in loaded if not m.startswith("ckptctl.cli")}
    packages = {"ckptctl.layouts", "ckptctl.ops"}  # their __init__ modules hold docstrings only
    assert core <= {"ckptctl.errors", "ckptctl.layouts.naming", "ckptctl.ops.retention", "ckptctl.wording", *packages}, core  # wording: one function


def test_the_public_api_is_exported_lazily():
    """``from ckptctl import CheckpointManager, ...`` works; ``import ckptctl`` alone loads no torch."""
    code = ("import sys, ckptctl; light = 'torch' not in sys.modules; "
            "from ckptctl import CheckpointManager, EmergencyAbort, EmergencyStop, build_state, load_file; "
            "print(light, CheckpointManager.__module__, EmergencyStop.__module__, callable(build_state), callable(load_file))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "ckptctl.training.manager", "ckptctl.training.signals", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import ckptctl

        ckptctl.nothing  # noqa: B018
