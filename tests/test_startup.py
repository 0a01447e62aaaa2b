"""Startup: --help, list, inspect and shell completion never import torch or numpy (fresh interpreter each),
nothing local imports fsspec or s3fs (object storage is imported only for a URL), and nothing imports
pydantic (Typer 0.29 coerces every parameter through it: +0.27 s per command, see pyproject.toml).

The console script (``cli.app.main``) sets up only the command its arguments name: a cached ``list`` loads neither
the safe reader nor another command's module, and its help, errors, completion and ``--version`` are what the app
with every command gives. No test here measures time (bench/bench_startup.py does)."""

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


# --- issue #14: the console script's start-up (ckptctl.cli.app.main) ----------------------------------------------

# Runs ``main`` (what the ``ckptctl`` script runs) in a fresh interpreter; with "full" first, through the app with
# every command (what ``main`` ran before it built one command's app), for output that must be the same.
MAIN_PROBE = """
import json, os, sys
import ckptctl.cli.app as cli
if sys.argv[2] == "full":
    cli.app_for = lambda args: cli.app
try:
    cli.main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
else:
    code = 0
sys.stdout.flush()
loaded = sorted(m for m in sys.modules if m.startswith("ckptctl."))
os.write(2, ("\\nPROBE " + json.dumps({"code": code, "loaded": loaded}) + "\\n").encode())
"""
READERS = {"ckptctl.formats.reader", "ckptctl.formats.unpickler", "ckptctl.formats.container",
           "ckptctl.formats.checkpoint", "ckptctl.formats.dcp", "ckptctl.formats.scalars",
           "ckptctl.layouts.metadata"}  # fmt: skip


def _main(args: list[str], *, full: bool = False, env: dict[str, str] | None = None) -> dict:
    import os

    result = subprocess.run([sys.executable, "-c", MAIN_PROBE, json.dumps(args), "full" if full else "one"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "100", **(env or {})})  # fmt: skip
    lines = result.stderr.splitlines()
    probe = json.loads([ln for ln in lines if ln.startswith("PROBE ")][-1][6:])
    stderr = "\n".join(ln for ln in lines if not ln.startswith("PROBE ")).rstrip("\n")
    return {**probe, "stdout": result.stdout, "stderr": stderr}


def _command_modules(probe: dict) -> set[str]:
    return {m for m in probe["loaded"] if m.startswith("ckptctl.cli.") and m.endswith("_cmd")}


def test_the_command_table_names_every_command_and_module():
    from ckptctl.cli.app import COMMANDS, app, app_for

    assert [c.name for c in app.registered_commands] == list(COMMANDS)
    assert app_for(["lst"]) is app_for(["--help"]) is app_for([]) is app  # built once
    assert [c.name for c in app_for(["du", "."]).registered_commands] == ["du"]
    for name, (module, function, _panel, _summary) in COMMANDS.items():
        assert getattr(__import__(f"ckptctl.cli.{module}", fromlist=[function]), function).__name__ == function, name


@pytest.mark.parametrize("name", ["list", "inspect", "resume-cmd", "compare", "demo", "validate", "restore", "prune",
                                  "du", "export", "chart"])  # fmt: skip
def test_a_command_loads_its_own_module_only_and_helps_as_before(name):
    from ckptctl.cli.app import COMMANDS

    one = _main([name, "--help"])
    assert one["code"] == 0 and one["stdout"].startswith(f"Usage: ckptctl {name} ")
    assert _command_modules(one) == {f"ckptctl.cli.{COMMANDS[name][0]}"}
    assert one == {**_main([name, "--help"], full=True), "loaded": one["loaded"]}


def test_the_top_level_help_lists_every_command():
    from ckptctl.cli.app import COMMANDS

    probe = _main(["--help"])
    assert probe["code"] == 0
    listed = [line.split()[0] for line in probe["stdout"].splitlines() if line.startswith("  ") and line.split()[0] in COMMANDS]
    assert sorted(listed) == sorted(COMMANDS)
    assert len(_command_modules(probe)) == len(COMMANDS)


@pytest.mark.parametrize("args", [["lst"], ["list"], ["list", "--bogus"], ["list", ".", "--sort"], ["prune", "--keep-last", "x", "."],
                                  ["--bogus"], ["--version", "list"], ["list", "--version"], []],
                         ids=" ".join)  # fmt: skip
def test_usage_errors_and_suggestions_are_the_same_as_with_every_command(args):
    one, full = _main(args), _main(args, full=True)
    assert (one["code"], one["stdout"], one["stderr"]) == (full["code"], full["stdout"], full["stderr"])
    assert one["code"] == (0 if args == ["--version", "list"] else 2)
    if args == ["lst"]:
        assert "list" in one["stderr"]  # the parser's "did you mean" needs every command


def test_version_alone_loads_no_command_module():
    from importlib.metadata import version

    probe = _main(["--version"])
    assert probe["code"] == 0 and probe["stdout"] == f"ckptctl {version('ckptctl')}\n"
    assert _command_modules(probe) == set()


def test_completion_through_the_script_offers_every_command():
    env = {"_CKPTCTL_COMPLETE": "complete_bash", "COMP_WORDS": "ckptctl ", "COMP_CWORD": "1"}
    from ckptctl.cli.app import COMMANDS

    assert sorted(_main([], env=env)["stdout"].split()) == sorted(COMMANDS)
    env = {"_CKPTCTL_COMPLETE": "complete_bash", "COMP_WORDS": "ckptctl list --so", "COMP_CWORD": "2"}
    assert _main(["list"], env=env)["stdout"].split() == ["--sort"]


@pytest.fixture
def cached_dir(ckpt_dir, monkeypatch):
    """``ckpt_dir`` listed once in this process, so its files' facts are in the listing cache (shared with
    the subprocesses through CKPTCTL_CACHE_DIR); files count as settled at once."""
    from ckptctl.ops import listing_cache
    from ckptctl.ops.listing import list_checkpoints

    monkeypatch.setattr(listing_cache, "SETTLE_SECONDS", -60.0)
    list_checkpoints(ckpt_dir)
    return ckpt_dir


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["plain", "json"])
def test_a_cached_list_loads_no_reader_and_no_other_command(cached_dir, json_flag):
    probe = _main(["list", str(cached_dir), *json_flag])
    assert probe["code"] == 0 and "latest.pt" in probe["stdout"]
    assert READERS.isdisjoint(probe["loaded"]), sorted(READERS & set(probe["loaded"]))
    assert _command_modules(probe) == {"ckptctl.cli.list_cmd"}
    assert probe["stdout"] == _main(["list", str(cached_dir), *json_flag], full=True)["stdout"]


def test_an_uncached_list_does_load_the_reader(cached_dir):
    """The probe above could not miss the reader: a listing that reads the files loads it."""
    probe = _main(["list", str(cached_dir), "--no-cache"])
    assert probe["code"] == 0 and {"ckptctl.formats.reader", "ckptctl.formats.unpickler"} <= set(probe["loaded"])


def test_a_list_of_a_hugging_face_run_imports_no_other_layout():
    """The registry imports layouts in recognition order and stops at the first that recognises the run."""
    from pathlib import Path

    from ckptctl.layouts.registry import LAYOUT_TABLE

    run = Path(__file__).resolve().parent / "fixtures" / "frameworks" / "hf_trainer"
    probe = _main(["list", str(run), "--json"])
    assert probe["code"] == 0 and json.loads(probe["stdout"])["layout"] == "hf-trainer"
    layouts = {f"ckptctl.layouts.{module}" for module, _cls in LAYOUT_TABLE}
    assert layouts & set(probe["loaded"]) == {"ckptctl.layouts.hf_trainer"}
