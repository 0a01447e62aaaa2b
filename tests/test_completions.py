"""Shell completions: committed scripts match what the live app generates, and the protocol they use works."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _generator():
    spec = importlib.util.spec_from_file_location("gen_completions", ROOT / "scripts" / "gen_completions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_committed_script_is_current(shell):
    """Fails when completions/ are stale: regenerate with python scripts/gen_completions.py."""
    gen = _generator()
    committed = (ROOT / "completions" / f"ckptctl.{shell}").read_text()
    assert committed == gen.render(shell), f"completions/ckptctl.{shell} is stale: run python scripts/gen_completions.py"


def test_check_mode_reports_stale_files(tmp_path, monkeypatch):
    gen = _generator()
    monkeypatch.setattr(gen, "COMPLETIONS", tmp_path)
    (tmp_path / "ckptctl.bash").write_text("old")
    assert gen.stale() == ["bash", "zsh", "fish"]
    monkeypatch.setattr(gen, "ROOT", tmp_path.parent)
    assert gen.main([]) == 0 and gen.stale() == []
    assert gen.main(["--check"]) == 0


def _complete(shell: str, words: str, cword: int | None = None) -> list[str]:
    env = {"_CKPTCTL_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        env.update(COMP_WORDS=words, COMP_CWORD=str(cword if cword is not None else len(words.split()) - (not words.endswith(" "))))
    else:
        env.update(_TYPER_COMPLETE_ARGS=words, _TYPER_COMPLETE_FISH_ACTION="get-args")
    result = runner.invoke(app, [], env=env, prog_name="ckptctl")
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def _commands() -> set[str]:
    return {command.name for command in app.registered_commands}


def test_every_registered_command_completes():
    """Built from the live app: commands other helpers add later are covered without edits here."""
    assert set(_complete("bash", "ckptctl ", 1)) == _commands()
    assert {line.split("\t")[0] for line in _complete("fish", "ckptctl ")} == _commands()
    zsh = "\n".join(_complete("zsh", "ckptctl "))
    assert all(f'"{name}"' in zsh for name in _commands())


def test_options_and_values_complete():
    assert {"--kind", "--sort", "--json", "--help"} <= set(_complete("bash", "ckptctl list --", 2))
    assert set(_complete("bash", "ckptctl list --sort ", 3)) == {"kind", "step", "name", "size", "time", "val_loss"}
    kinds = _complete("bash", "ckptctl list --kind b", 3)
    assert kinds == ["best", "best_backup", "best_previous"]
    assert "--tensors" in _complete("bash", "ckptctl inspect --", 2)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_the_bash_script_itself_completes(tmp_path):
    """Source the committed script in a real bash and ask its function for completions."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "ckptctl").exists():
        pytest.skip("ckptctl console script not installed next to this python")
    script = f"""
source {ROOT / 'completions' / 'ckptctl.bash'}
COMP_WORDS=(ckptctl li); COMP_CWORD=1
_ckptctl_completion ckptctl
printf '%s\\n' "${{COMPREPLY[@]}}"
complete -p ckptctl
"""
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["list", "complete -o default -F _ckptctl_completion ckptctl"]
