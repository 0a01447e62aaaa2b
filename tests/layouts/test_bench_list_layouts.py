"""bench/bench_list_layouts.py builds a run the HF layout reads as Trainer output (no timing here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ckptctl.layouts import registry

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_list_layouts.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_list_layouts", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_run_is_a_complete_hf_run(tmp_path):
    bench = _bench()
    run = tmp_path / "run"
    bench.write_run(run, 4, 0.05)
    layout = registry.detect(run)
    assert layout is not None and layout.name == "hf-trainer"
    units = layout.units(run)
    layout.protect(units, layout.pointers(run, units))
    assert [u.step for u in units] == [500, 1000, 1500, 2000]
    assert all(u.complete and u.monitor == "eval_loss" and "eval_loss" in u.metrics for u in units)
    lowest = min(units, key=lambda u: u.metrics["eval_loss"])
    assert [u.name for u in units if u.best] == [lowest.name] == ["checkpoint-2000"]
    assert units[2].metrics["eval_loss"] > units[1].metrics["eval_loss"]  # the eval at 1500 got worse
    assert bench.list_layout(run) == (4, None)
    assert bench.load_everything(run) > 0
