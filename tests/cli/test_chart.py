"""ckptctl chart: series from the listing and an HF run's log_history, the terminal plot, --json, exit codes."""

from __future__ import annotations

import json
import shutil
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
