"""ckptctl chart: series from the listing and an HF run's log_history, the terminal plot, --json, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from ckptctl.ops.metrics import metric_series
from tests.factories import populate_layout, touch_checkpoints

runner = CliRunner()
HF = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks" / "hf_trainer"


def invoke(*args: str, **kwargs):
    return runner.invoke(app, ["chart", *args], **kwargs)


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return populate_layout(tmp_path_factory.mktemp("native") / "ckpt")


def _listed(directory: Path) -> dict:
    result = runner.invoke(app, ["list", str(directory), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_native_series_equal_the_listing(native):
    rows = [r for r in _listed(native)["checkpoints"] if r["kind"] in ("rolling", "epoch", "emergency")]
    expected_val = sorted({r["step"]: r["val_loss"] for r in rows}.items())
    expected_train = sorted({r["step"]: r["train_loss"] for r in rows}.items())
    result = invoke(str(native), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["source"] == "checkpoints"
    assert document["metrics"]["val_loss"] == [list(p) for p in expected_val]
    assert document["metrics"]["train_loss"] == [list(p) for p in expected_train]
    assert [step for step, _ in document["metrics"]["val_loss"]] == [100, 200, 250, 300]
    assert document["metrics"]["val_loss"][-1] == [300, pytest.approx(0.8)]


def test_pointers_do_not_add_points(tmp_path):
    """latest.pt / best_model.pt alone (no rolling file at that step) are pointers: no point of their own."""
    from tests.factories import write_checkpoint

    write_checkpoint(tmp_path / "rolling_step_000100.pt", step=100, val_loss=0.7)
    write_checkpoint(tmp_path / "best_model.pt", step=999, val_loss=0.1)
    chart = metric_series(tmp_path)
    assert chart.series["val_loss"] == [(100, pytest.approx(0.7))]


def test_hf_series_are_the_whole_log_history():
    state = json.loads((HF / "checkpoint-6" / "trainer_state.json").read_text())
    history = state["log_history"]
    result = invoke(str(HF), "--json", "-m", "loss", "-m", "eval_loss", "-m", "learning_rate")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["layout"] == "hf-trainer" and document["source"] == "log_history"
    assert document["source_path"].endswith("checkpoint-6/trainer_state.json")
    for name in ("loss", "eval_loss", "learning_rate"):
        assert document["metrics"][name] == [[e["step"], e[name]] for e in history if name in e]
    assert len(document["metrics"]["loss"]) == 6  # every logged step, not one point per checkpoint (3)
    assert "grad_norm" in document["available"]


def test_hf_default_selection_is_the_losses():
    document = json.loads(invoke(str(HF), "--json").stdout)
    assert sorted(document["metrics"]) == ["eval_loss", "loss"]


def test_hf_newest_unreadable_state_falls_back_to_an_older_one(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(HF, run, symlinks=True)
    (run / "checkpoint-6" / "trainer_state.json").write_text("{not json")
    chart = metric_series(run)
    assert chart.source == "log_history" and chart.source_path.endswith("checkpoint-4/trainer_state.json")
    assert [step for step, _ in chart.series["loss"]] == [1, 2, 3, 4]
    assert any("checkpoint-6" in note for note in chart.notes)


def test_terminal_output_contains_the_plot_and_table(native):
    result = invoke(str(native))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "by step (checkpoints)" in out and "step" in out
    assert "┌" in out and "┤" in out  # the plot's frame and y ticks
    assert "\x1b[" not in out  # piped: no colour codes
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "step train_loss val_loss" in lines
    assert "300 0.6 0.8" in lines


def test_hf_terminal_plot_names_the_source():
    result = invoke(str(HF))
    assert result.exit_code == 0, result.output
    assert "eval_loss, loss by step (trainer_state.json log_history)" in result.stdout
    assert "eval_loss" in result.stdout


def test_no_metrics_is_one_line_and_exit_1(tmp_path):
    touch_checkpoints(tmp_path, ["rolling_step_000100.pt"], size=10)  # unreadable: no metric recorded
    result = invoke(str(tmp_path))
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert "no metrics in" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    document = json.loads(invoke(str(tmp_path), "--json").stdout)
    assert document["metrics"] == {} and document["available"] == []


def test_unknown_metric_is_bad_input():
    result = invoke(str(HF), "--metric", "nope")
    assert result.exit_code == 2
    assert "no metric nope" in result.stderr and "eval_loss" in result.stderr
    assert "Traceback" not in result.output


def test_missing_directory_is_bad_input(tmp_path):
    result = invoke(str(tmp_path / "absent"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_png_without_matplotlib_is_one_line(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = invoke(str(HF), "--png", str(tmp_path / "out.png"))
    assert result.exit_code == 2
    assert "matplotlib" in result.stderr and not (tmp_path / "out.png").exists()


def test_non_finite_values_are_counted_not_drawn(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(HF, run, symlinks=True)
    path = run / "checkpoint-6" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["log_history"][0]["loss"] = float("nan")
    state["log_history"].append({"step": "7", "loss": 1.0})  # a step that is not a number: ignored
    state["log_history"].append("not an entry")
    path.write_text(json.dumps(state))
    chart = metric_series(run)
    assert chart.skipped_non_finite == 1
    assert [step for step, _ in chart.series["loss"]] == [2, 3, 4, 5, 6]


def test_terminal_gets_colour_and_no_table(monkeypatch):
    from ckptctl.cli import chart_cmd

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(chart_cmd, "stdout_is_terminal", lambda: True)
    monkeypatch.setattr(chart_cmd, "_encodes", lambda text: True)
    result = invoke(str(HF))
    assert result.exit_code == 0, result.output
    assert "\x1b[" in result.stdout and "eval_loss" in result.stdout
    assert not any(line.split()[:3] == ["step", "eval_loss", "loss"] for line in result.stdout.splitlines())


def test_no_color_on_a_terminal_is_plain(monkeypatch):
    from ckptctl.cli import chart_cmd

    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(chart_cmd, "stdout_is_terminal", lambda: True)
    result = invoke(str(HF))
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stdout
    assert any(line.split()[:3] == ["step", "eval_loss", "loss"] for line in result.stdout.splitlines())


def test_ascii_only_stdout_gets_an_ascii_plot(monkeypatch):
    from ckptctl.cli import chart_cmd

    monkeypatch.setattr(chart_cmd, "_encodes", lambda text: False)
    result = invoke(str(HF))
    assert result.exit_code == 0, result.output
    assert "+-----" in result.stdout and "** loss" in result.stdout
    assert not any(ord(char) > 127 for char in result.stdout)


def test_lightning_points_are_the_listed_metrics():
    lightning = HF.parent / "lightning"
    rows = [r for r in _listed(lightning)["checkpoints"] if r["layout"] == "lightning" and r["step"] is not None
            and "val_loss" in r["metrics"] and r["status"] != "dangling"]  # fmt: skip
    expected = sorted({r["step"]: r["metrics"]["val_loss"] for r in rows}.items())
    document = json.loads(invoke(str(lightning), "--json").stdout)
    assert document["source"] == "checkpoints" and expected
    assert document["metrics"]["val_loss"] == [list(p) for p in expected]


# ------------------------------------------------------------------ --png (matplotlib, the [png] extra)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def matplotlib_installed():
    return pytest.importorskip("matplotlib")


def test_png_is_written_and_decodes_to_the_chart(tmp_path, matplotlib_installed, monkeypatch):
    from matplotlib.image import imread

    from ckptctl.cli import chart_cmd

    figures = []
    real = chart_cmd.png_figure
    monkeypatch.setattr(chart_cmd, "png_figure", lambda chart, series: figures.append(real(chart, series)) or figures[-1])
    out = tmp_path / "out.png"
    result = invoke(str(HF), "--metric", "loss", "--metric", "eval_loss", "--metric", "learning_rate", "--png", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines()[-1] == f"ckptctl: wrote {out}"
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = imread(out)
    height, width = image.shape[:2]
    assert image.ndim == 3 and image.shape[2] in (3, 4) and width >= 400 and height >= 300
    assert image[..., :3].std() > 0.05  # lines and text on white, not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temp file left beside it
    # the figure names what it draws: the losses share axes, the learning rate has its own
    (figure,) = figures
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["loss, eval_loss by step", "learning_rate by step"]
    labels = [line.get_label() for axes in figure.axes for line in axes.get_lines()]
    assert labels == ["loss", "eval_loss", "learning_rate"]
    assert "trainer_state.json log_history" in figure.get_suptitle()
    loss = figure.axes[0].get_lines()[0]
    assert [list(p) for p in zip(loss.get_xdata(), loss.get_ydata())] == [list(p) for p in metric_series(HF).series["loss"]]


def test_png_figure_of_native_checkpoints_names_val_loss(native, matplotlib_installed):
    from ckptctl.cli import chart_cmd

    chart = metric_series(native)
    figure = chart_cmd.png_figure(chart, chart.select(None))
    assert any("val_loss" in axes.get_title() for axes in figure.axes)
    assert chart_cmd._render_png(figure).startswith(PNG_SIGNATURE)


def test_png_replaces_an_existing_file_atomically(tmp_path, matplotlib_installed):
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    inode = out.stat().st_ino
    assert invoke(str(HF), "--png", str(out)).exit_code == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE) and out.stat().st_ino != inode  # renamed over, not rewritten


def test_a_failed_rendering_leaves_the_old_file(tmp_path, matplotlib_installed, monkeypatch):
    from matplotlib.figure import Figure

    out = tmp_path / "out.png"
    out.write_bytes(b"old chart")

    def broken(self, *args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(Figure, "savefig", broken)
    result = invoke(str(HF), "--png", str(out))
    assert result.exit_code == 70 and "Traceback" not in result.output  # a bug: one line, like any other
    assert len(result.stderr.strip().splitlines()) == 1 and "renderer exploded" in result.stderr
    assert out.read_bytes() == b"old chart" and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_failed_write_leaves_no_partial_file(tmp_path, matplotlib_installed, monkeypatch):
    import errno

    from ckptctl import durable

    out = tmp_path / "out.png"
    out.write_bytes(b"old chart")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "_fsync", disk_full)
    result = invoke(str(HF), "--png", str(out))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"ckptctl: error: cannot write --png {out}: No space left on device"]
    assert out.read_bytes() == b"old chart" and [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.parametrize("case", ["missing directory", "a directory", "parent is a file"])
def test_bad_png_paths_are_one_line_and_exit_2(tmp_path, case, monkeypatch):
    from ckptctl.ops import metrics

    read = []
    monkeypatch.setattr(metrics, "metric_series", lambda *a, **k: read.append(a))  # checked before reading
    (tmp_path / "file").write_text("x")
    out, expected = {
        "missing directory": (tmp_path / "nope" / "out.png", f"no such directory: {tmp_path / 'nope'}"),
        "a directory": (tmp_path, "it is a directory"),
        "parent is a file": (tmp_path / "file" / "out.png", f"not a directory: {tmp_path / 'file'}"),
    }[case]
    result = invoke(str(HF), "--png", str(out))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"ckptctl: error: cannot write --png {out}: {expected}"]
    assert read == [] and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: a read-only directory cannot be tested as root")
def test_png_in_a_read_only_directory_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = invoke(str(HF), "--png", str(locked / "out.png"))
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 2 and "permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (locked / "out.png").exists()


def test_unwritable_directory_is_refused_before_reading(tmp_path, monkeypatch):
    """Root passes any permission check, so os.access is what the refusal is tested through."""
    from ckptctl.cli import chart_cmd

    monkeypatch.setattr(chart_cmd.os, "access", lambda path, mode: False)
    result = invoke(str(HF), "--png", str(tmp_path / "out.png"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"ckptctl: error: cannot write --png {tmp_path / 'out.png'}: permission denied on {tmp_path}"]


PROBE = """
import json, sys
from typer.testing import CliRunner
from ckptctl.cli.app import app
result = CliRunner().invoke(app, json.loads(sys.argv[1]))
print(json.dumps({"code": result.exit_code, "matplotlib": sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib")[:1]}))
"""


@pytest.mark.parametrize("png", [False, True], ids=["terminal", "png"])
def test_matplotlib_is_imported_only_with_png(tmp_path, png, matplotlib_installed):
    args = ["chart", str(HF), *(["--png", str(tmp_path / "out.png")] if png else [])]
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe == {"code": 0, "matplotlib": ["matplotlib"] if png else []}


def test_missing_extra_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = invoke(str(HF), "--png", str(tmp_path / "out.png"))
    assert result.stderr.strip().splitlines() == [
        "ckptctl: error: --png needs matplotlib, which is not installed: pip install 'ckptctl[png]' (the terminal chart needs nothing)"]
