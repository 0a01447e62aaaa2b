"""The one byte progress bar (ckptctl/cli/progress.py) of compare --values, validate and export: a known
total from the first frame, counts that move with the bytes, and nothing off a terminal or with --json."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from ckptctl.cli import progress as progress_module
from ckptctl.cli.app import app
from ckptctl.cli.progress import ByteProgress

MIB = 1 << 20
COUNTS = re.compile(r"([\d,]+\.\d)/([\d,]+\.\d|\?) ?(\w+)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, markup=False, emoji=False), buffer


def frames(buffer: io.StringIO) -> list[tuple[float, str, str]]:
    """(done, total, unit) of every frame drawn, in order."""
    text = ANSI.sub("", buffer.getvalue())
    return [(float(d.replace(",", "")), t, u) for d, t, u in COUNTS.findall(text)]


def mib(nbytes: int) -> str:
    return f"{nbytes / MIB:,.1f}"


def test_bar_shows_its_total_from_the_first_frame_and_moving_counts():
    console, buffer = terminal()
    with ByteProgress("validating", 4 * MIB, console=console, min_bytes=0) as bar:
        assert bar is not None
        bar.refresh()
        bar.advance(MIB)
        bar.refresh()
        bar.update(3 * MIB)
        bar.refresh()
    drawn = frames(buffer)
    assert drawn[0] == (0.0, "4.0", "MiB")
    assert {total for _done, total, _unit in drawn} == {"4.0"}
    assert list(dict.fromkeys(done for done, _t, _u in drawn)) == [0.0, 1.0, 3.0]
    assert "validating" in buffer.getvalue()


def test_no_bar_off_a_terminal_with_json_or_below_the_threshold(monkeypatch):
    console, buffer = terminal()
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: False)
    with ByteProgress("x", 100 * MIB, min_bytes=0) as bar:  # stderr is not a terminal
        assert bar is None
    with ByteProgress("x", 100 * MIB, console=console, show=False, min_bytes=0) as bar:  # --json / --quiet
        assert bar is None
    with ByteProgress("x", 10, console=console, min_bytes=11) as bar:  # too small to be worth a bar
        assert bar is None
    assert buffer.getvalue() == ""
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: True)
    assert progress_module.bar_console() is not None


def test_seconds_are_measured_with_or_without_a_bar():
    meter = ByteProgress("x", 0, show=False)
    with meter:
        pass
    assert meter.seconds >= 0 and meter._bar is None


def test_rich_progress_is_not_imported_when_the_app_starts():
    code = "import sys, ckptctl.cli.app; print('rich.progress' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# ------------------------------------------------------------------ the commands, forced onto a terminal


@pytest.fixture
def on_terminal(monkeypatch):
    """Every command's bar drawn into a buffer as if stderr were a terminal, a frame per update."""
    console, buffer = terminal()
    monkeypatch.setattr(progress_module, "bar_console", lambda: console)
    monkeypatch.setattr(progress_module, "MIN_BYTES", 0)
    advance, update = ByteProgress.advance, ByteProgress.update
    monkeypatch.setattr(ByteProgress, "advance", lambda self, n: (advance(self, n), self.refresh()))
    monkeypatch.setattr(ByteProgress, "update", lambda self, *a: (update(self, *a), self.refresh()))
    return buffer


def write_mb_checkpoint(path, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = {"big": torch.randn(1 << 20, generator=gen), "small": torch.randn(1 << 19, generator=gen),
             "ints": torch.arange(1000)}  # fmt: skip
    torch.save({"step": 1, "epoch": 0, "model": model}, path)
    return path, sum(t.numel() * t.element_size() for t in model.values())


def assert_moves_to(buffer: io.StringIO, total: str) -> None:
    drawn = frames(buffer)
    assert drawn, buffer.getvalue()
    assert {t for _d, t, _u in drawn} == {total}  # never "?", never another total
    done = [d for d, _t, _u in drawn]
    assert done[0] == 0.0 and done == sorted(done) and done[-1] == float(total.replace(",", ""))
    assert len(set(done)) >= 3  # moved in steps, not one jump


def test_compare_values_bar_has_the_total_and_moves(tmp_path, on_terminal):
    a, tensor_bytes = write_mb_checkpoint(tmp_path / "a.pt")
    b, _ = write_mb_checkpoint(tmp_path / "b.pt", seed=1)
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--values"])
    assert result.exit_code == 1, result.output
    assert "comparing values" in on_terminal.getvalue()
    assert_moves_to(on_terminal, mib(2 * tensor_bytes))  # both sides' bytes


def test_validate_deep_bar_has_the_total_and_moves_through_the_load(tmp_path, on_terminal):
    path, _ = write_mb_checkpoint(tmp_path / "a.pt")
    result = CliRunner().invoke(app, ["validate", "--deep", str(path)])
    assert result.exit_code == 0, result.output
    assert "validating" in on_terminal.getvalue()
    assert_moves_to(on_terminal, mib(2 * path.stat().st_size))  # the CRC pass, then the values


def test_export_bar_has_the_total_and_moves(tmp_path, on_terminal):
    path, tensor_bytes = write_mb_checkpoint(tmp_path / "a.pt")
    result = CliRunner().invoke(app, ["export", str(path), "--to", str(tmp_path / "out.safetensors")])
    assert result.exit_code == 0, result.output
    assert "exporting" in on_terminal.getvalue()
    drawn = frames(on_terminal)
    assert drawn and {t for _d, t, _u in drawn} == {mib(tensor_bytes)}


@pytest.mark.parametrize("command", ["compare", "validate", "export"])
def test_no_bar_with_json(tmp_path, on_terminal, command):
    path, _ = write_mb_checkpoint(tmp_path / "a.pt")
    args = {"compare": ["compare", str(path), str(path), "--values"], "validate": ["validate", "--deep", str(path)],
            "export": ["export", str(path), "--to", str(tmp_path / "o.safetensors")]}[command]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)
    assert on_terminal.getvalue() == ""


@pytest.mark.parametrize("command", ["compare", "validate"])
def test_no_bar_and_no_callbacks_off_a_terminal(tmp_path, monkeypatch, command):
    def refuse(*_args):
        raise AssertionError("a bar off a terminal")

    monkeypatch.setattr(progress_module, "MIN_BYTES", 0)
    monkeypatch.setattr(ByteProgress, "advance", refuse)
    monkeypatch.setattr(ByteProgress, "update", refuse)
    path, _ = write_mb_checkpoint(tmp_path / "a.pt")
    args = ["compare", str(path), str(path), "--values"] if command == "compare" else ["validate", "--deep", str(path)]
    result = CliRunner().invoke(app, args)  # CliRunner's stderr is not a terminal
    assert result.exit_code == 0, result.output
