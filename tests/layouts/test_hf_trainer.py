"""The Hugging Face Trainer layout on real Trainer output (tests/fixtures/frameworks/hf_trainer*),
copied to tmp_path, and on damaged variants of it."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from ckptctl.layouts import registry
from ckptctl.layouts.base import CONTENT_OPTIMIZER, CONTENT_OTHER, CONTENT_WEIGHTS
from ckptctl.layouts.hf_trainer import MAX_JSON_BYTES, HfTrainerLayout

FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
LAYOUT = HfTrainerLayout()


def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(FRAMEWORKS / name, dst, symlinks=True)
    return dst


@pytest.fixture
def run(tmp_path):
    return _copy(tmp_path, "hf_trainer")


def _units(directory: Path):
    units = LAYOUT.units(directory)
    LAYOUT.protect(units, LAYOUT.pointers(directory, units))
    return {u.name: u for u in units}


def _state(path: Path) -> dict:
    return json.loads((path / "trainer_state.json").read_text())


def _write_state(path: Path, document) -> None:
    (path / "trainer_state.json").write_text(json.dumps(document))


# ------------------------------------------------------------------------------------ recognition


@pytest.mark.parametrize("name", ["hf_trainer", "hf_trainer_sharded", "hf_trainer_bin"])
def test_registry_detects_every_hf_fixture(name):
    layout = registry.detect(FRAMEWORKS / name)
    assert layout is not None and layout.name == "hf-trainer" and layout.title == "Hugging Face Trainer"
    assert registry.by_name("hf-trainer").resume_flag == "--resume_from_checkpoint"


@pytest.mark.parametrize("name", ["lightning", "lightning_link", "accelerate", "accelerate_named", "deepspeed",
                                  "torchtitan", "torchtitan_bytesio", "loose"])
def test_other_frameworks_are_not_hf(name):
    directory = FRAMEWORKS / name
    assert not LAYOUT.recognise(directory, sorted(os.listdir(directory)))
    if name == "torchtitan":  # its DCP steps sit one level down
        inner = directory / "checkpoint"
        assert not LAYOUT.recognise(inner, sorted(os.listdir(inner)))


def test_empty_checkpoint_dirs_and_lookalikes_are_not_a_run(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-abc").mkdir()
    (tmp_path / "checkpoint-abc" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-7").write_text("a file, not a directory")
    assert not LAYOUT.recognise(tmp_path, sorted(os.listdir(tmp_path)))
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    assert LAYOUT.recognise(tmp_path, sorted(os.listdir(tmp_path)))


def test_a_run_with_only_a_staging_leftover_is_recognised(tmp_path):
    shutil.copytree(FRAMEWORKS / "hf_trainer" / "checkpoint-2", tmp_path / "tmp-checkpoint-2")
    assert LAYOUT.recognise(tmp_path, sorted(os.listdir(tmp_path)))


# ------------------------------------------------------------------------------ units and records


def test_units_steps_epochs_in_order(run):
    units = LAYOUT.units(run)
    assert [u.name for u in units] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [u.step for u in units] == [2, 4, 6]
    assert [u.epoch for u in units] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(isinstance(u.epoch, float) for u in units)
    assert all(u.layout == "hf-trainer" and u.is_directory and u.path == run / u.name for u in units)
    assert all(u.complete and u.missing == [] for u in units)


def test_order_is_numeric_not_by_name(tmp_path):
    src = FRAMEWORKS / "hf_trainer" / "checkpoint-2"
    for n in (10, 9, 100):
        shutil.copytree(src, tmp_path / f"checkpoint-{n}")
        state = _state(tmp_path / f"checkpoint-{n}")
        state["global_step"] = n
        _write_state(tmp_path / f"checkpoint-{n}", state)
    assert [u.step for u in LAYOUT.units(tmp_path)] == [9, 10, 100]


def test_metrics_are_the_numbers_logged_at_the_step(run):
    units = _units(run)
    history = _state(run / "checkpoint-6")["log_history"]
    for name, unit in units.items():
        at_step = [e for e in history if e["step"] == unit.step]
        expected = {k: v for e in at_step for k, v in e.items() if k not in ("step", "epoch")}
        for key, value in expected.items():
            assert unit.metrics[key] == pytest.approx(value), (name, key)
        assert "eval_loss" in unit.metrics and "loss" in unit.metrics and "learning_rate" in unit.metrics
    assert units["checkpoint-4"].metrics["eval_loss"] == pytest.approx(2.7758915424346924)
    assert units["checkpoint-6"].metrics["loss"] == pytest.approx(2.7752513885498047)


def test_loss_is_the_latest_logged_when_none_at_the_step(run):
    state = _state(run / "checkpoint-6")
    state["log_history"] = [e for e in state["log_history"] if not (e["step"] == 6 and "loss" in e)]
    _write_state(run / "checkpoint-6", state)
    assert _units(run)["checkpoint-6"].metrics["loss"] == pytest.approx(2.765812397003174)  # step 5's


def test_best_and_monitor_from_trainer_state(run):
    units = _units(run)
    assert [n for n, u in units.items() if u.best] == ["checkpoint-2"]  # recorded as "hf_trainer/checkpoint-2"
    assert all(u.monitor == "eval_loss" for u in units.values())
    best = units["checkpoint-2"]
    assert best.metrics["best_metric"] == pytest.approx(2.7650437355041504)
    assert best.monitored_value == pytest.approx(2.7650437355041504)
    assert best.protected == "protected: best"
    assert units["checkpoint-6"].protected == "protected: newest complete"
    assert units["checkpoint-4"].protected is None


@pytest.mark.parametrize("recorded", ["/elsewhere/absolute/out/checkpoint-4", "checkpoint-4", "runs\\out\\checkpoint-4",
                                      "out/checkpoint-4/"])
def test_best_is_matched_by_basename(run, recorded):
    state = _state(run / "checkpoint-6")
    state["best_model_checkpoint"] = recorded
    _write_state(run / "checkpoint-6", state)
    assert [n for n, u in _units(run).items() if u.best] == ["checkpoint-4"]


def test_best_comes_from_the_newest_state(run):
    # an older checkpoint's own file may name an older best; the newest file's record wins
    state = _state(run / "checkpoint-4")
    state["best_model_checkpoint"] = "hf_trainer/checkpoint-4"
    _write_state(run / "checkpoint-4", state)
    assert [n for n, u in _units(run).items() if u.best] == ["checkpoint-2"]


def test_best_pruned_by_hf_marks_nothing(run):
    shutil.rmtree(run / "checkpoint-2")
    units = _units(run)
    assert not any(u.best for u in units.values())
    assert units["checkpoint-6"].protected == "protected: newest complete"


def test_best_global_step_when_no_best_path(run):
    state = _state(run / "checkpoint-6")
    state["best_model_checkpoint"] = None
    state["best_global_step"] = 4
    _write_state(run / "checkpoint-6", state)
    assert [n for n, u in _units(run).items() if u.best] == ["checkpoint-4"]


def test_hparams_note_or_fields_never_a_crash(run):
    for unit in LAYOUT.units(run):
        if unit.hparams is None:  # TrainingArguments is not (yet) an inert record: the file reads as unsafe
            assert any(n.startswith("training_args.bin: unsafe") for n in unit.notes)
        else:
            assert unit.hparams["metric_for_best_model"] in ("eval_loss", "loss")


def _save_args(path: Path, obj) -> None:
    import torch

    torch.save(obj, path / "training_args.bin")


def test_monitor_from_training_args_record(run):
    for unit in ("checkpoint-2", "checkpoint-4", "checkpoint-6"):
        _save_args(run / unit, {"metric_for_best_model": "accuracy", "learning_rate": 0.01, "output_dir": "x"})
    units = _units(run)
    assert all(u.monitor == "eval_accuracy" for u in units.values())
    assert units["checkpoint-6"].hparams == {"metric_for_best_model": "accuracy", "learning_rate": 0.01,
                                              "output_dir": "x"}
    assert not any(n.startswith("training_args.bin") for u in units.values() for n in u.notes)


def test_hparams_from_a_namespace_record(run):
    import argparse

    _save_args(run / "checkpoint-6", argparse.Namespace(metric_for_best_model="eval_bleu", seed=3))
    units = _units(run)
    assert units["checkpoint-6"].hparams == {"metric_for_best_model": "eval_bleu", "seed": 3}
    assert units["checkpoint-2"].monitor == "eval_bleu"
    assert units["checkpoint-4"].hparams != units["checkpoint-6"].hparams  # read per file, not once per run


def test_identical_training_args_are_shared_not_aliased(run):
    for unit in ("checkpoint-2", "checkpoint-4", "checkpoint-6"):
        _save_args(run / unit, {"metric_for_best_model": "eval_loss", "seed": 1})
    units = LAYOUT.units(run)
    assert all(u.hparams == {"metric_for_best_model": "eval_loss", "seed": 1} for u in units)
    units[0].hparams["seed"] = 2
    assert units[1].hparams["seed"] == 1


def test_unsafe_training_args_is_a_note_not_a_crash(run):
    import collections

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    _save_args(run / "checkpoint-6", collections.OrderedDict(x=Evil()))
    unit = _units(run)["checkpoint-6"]
    assert unit.hparams is None and unit.complete
    assert any(n.startswith("training_args.bin: unsafe") and ("os.system" in n or "posix.system" in n)
               for n in unit.notes)


def test_files_and_contents(run):
    unit = _units(run)["checkpoint-4"]
    contents = {f.path.name: f.content for f in unit.files}
    assert contents == {
        "config.json": CONTENT_OTHER, "generation_config.json": CONTENT_OTHER, "model.safetensors": CONTENT_WEIGHTS,
        "optimizer.pt": CONTENT_OPTIMIZER, "rng_state.pth": CONTENT_OTHER, "scheduler.pt": CONTENT_OTHER,
        "trainer_state.json": CONTENT_OTHER, "training_args.bin": CONTENT_OTHER,
    }
    assert unit.size_bytes == sum(p.stat().st_size for p in (run / "checkpoint-4").iterdir())


def test_resume_args(run):
    unit = _units(run)["checkpoint-6"]
    assert LAYOUT.resume_args(unit, run) == ["--resume_from_checkpoint", str(run / "checkpoint-6")]


# ------------------------------------------------------------------------------ other HF variants


def test_sharded_checkpoint_is_complete(tmp_path):
    run = _copy(tmp_path, "hf_trainer_sharded")
    unit = _units(run)["checkpoint-2"]
    assert unit.complete and unit.best and unit.epoch == 1.0
    weights = sorted(f.path.name for f in unit.files if f.content == CONTENT_WEIGHTS)
    assert weights == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_sharded_missing_shard_is_incomplete(tmp_path):
    run = _copy(tmp_path, "hf_trainer_sharded")
    (run / "checkpoint-2" / "model-00002-of-00002.safetensors").unlink()
    unit = _units(run)["checkpoint-2"]
    assert not unit.complete and unit.missing == ["model-00002-of-00002.safetensors"]
    assert unit.protected == "protected: best"  # the recorded best is kept even when damaged


def test_sharded_truncated_shard_is_incomplete(tmp_path):
    run = _copy(tmp_path, "hf_trainer_sharded")
    shard = run / "checkpoint-2" / "model-00001-of-00002.safetensors"
    os.truncate(shard, shard.stat().st_size - 5)
    unit = _units(run)["checkpoint-2"]
    assert not unit.complete and unit.missing == ["model-00001-of-00002.safetensors"]
    assert any(n.startswith("model-00001-of-00002.safetensors: ") for n in unit.notes)


@pytest.mark.parametrize("weight_map", [{"a": "../checkpoint-9/model.safetensors"}, "nope", None])
def test_sharded_index_naming_outside_or_malformed(tmp_path, weight_map):
    run = _copy(tmp_path, "hf_trainer_sharded")
    index = run / "checkpoint-2" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    unit = _units(run)["checkpoint-2"]
    assert not unit.complete
    assert unit.missing == (["../checkpoint-9/model.safetensors"] if isinstance(weight_map, dict)
                            else ["model.safetensors.index.json"])


def test_an_index_naming_many_absent_shards_is_reported_bounded(tmp_path):
    run = _copy(tmp_path, "hf_trainer_sharded")
    index = run / "checkpoint-2" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {f"t{i}": f"model-{i:05d}-of-20000.safetensors" for i in range(20000)}}))
    unit = _units(run)["checkpoint-2"]
    assert not unit.complete and len(unit.missing) == 51
    assert unit.missing[-1] == "... and 19950 more shards of model.safetensors.index.json"


def test_transformers_4_bin_checkpoints(tmp_path):
    run = _copy(tmp_path, "hf_trainer_bin")
    units = _units(run)
    assert [u.step for u in units.values()] == [2, 4]
    assert all(u.complete for u in units.values())
    assert units["checkpoint-4"].best and units["checkpoint-4"].epoch == 1.0
    assert {f.path.name: f.content for f in units["checkpoint-2"].files}["pytorch_model.bin"] == CONTENT_WEIGHTS


def test_truncated_pytorch_model_bin_is_incomplete(tmp_path):
    run = _copy(tmp_path, "hf_trainer_bin")
    weights = run / "checkpoint-2" / "pytorch_model.bin"
    os.truncate(weights, weights.stat().st_size // 2)
    unit = _units(run)["checkpoint-2"]
    assert not unit.complete and unit.missing == ["pytorch_model.bin"]
    assert any(n.startswith("pytorch_model.bin: truncated") for n in unit.notes)


def test_adapter_weights_count(run):
    (run / "checkpoint-4" / "model.safetensors").rename(run / "checkpoint-4" / "adapter_model.safetensors")
    unit = _units(run)["checkpoint-4"]
    assert unit.complete
    assert {f.path.name: f.content for f in unit.files}["adapter_model.safetensors"] == CONTENT_WEIGHTS


# ------------------------------------------------------------------------------- incomplete units


def test_missing_weights_is_incomplete(run):
    (run / "checkpoint-4" / "model.safetensors").unlink()
    units = _units(run)
    assert not units["checkpoint-4"].complete and units["checkpoint-4"].missing == ["model.safetensors"]


def test_missing_trainer_state_is_incomplete_metrics_from_newest(run):
    (run / "checkpoint-4" / "trainer_state.json").unlink()
    unit = _units(run)["checkpoint-4"]
    assert not unit.complete and unit.missing == ["trainer_state.json"]
    assert unit.step == 4 and unit.epoch is None
    assert unit.metrics["eval_loss"] == pytest.approx(2.7758915424346924)  # from checkpoint-6's full history


def test_newest_incomplete_moves_protection_and_never_crashes(run):
    (run / "checkpoint-6" / "trainer_state.json").unlink()
    units = _units(run)
    assert not units["checkpoint-6"].complete
    assert units["checkpoint-4"].protected == "protected: newest complete"
    assert [n for n, u in units.items() if u.best] == ["checkpoint-2"]  # checkpoint-4's file records it too


def test_optimizer_expected_when_the_run_saves_it(run):
    (run / "checkpoint-4" / "optimizer.pt").unlink()
    (run / "checkpoint-6" / "scheduler.pt").unlink()
    units = _units(run)
    assert units["checkpoint-4"].missing == ["optimizer.pt"] and not units["checkpoint-4"].complete
    assert units["checkpoint-6"].missing == ["scheduler.pt"] and not units["checkpoint-6"].complete
    assert units["checkpoint-2"].protected == "protected: best"
    assert units["checkpoint-2"].complete


def test_save_only_model_runs_need_no_optimizer(run):
    for unit in ("checkpoint-2", "checkpoint-4", "checkpoint-6"):
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (run / unit / name).unlink()
    assert all(u.complete for u in _units(run).values())


def test_truncated_optimizer_is_incomplete(run):
    optimizer = run / "checkpoint-4" / "optimizer.pt"
    os.truncate(optimizer, optimizer.stat().st_size - 30)
    unit = _units(run)["checkpoint-4"]
    assert not unit.complete and unit.missing == ["optimizer.pt"]


def test_staging_leftover_is_an_incomplete_unit(run):
    shutil.copytree(run / "checkpoint-6", run / "tmp-checkpoint-8")
    state = _state(run / "tmp-checkpoint-8")
    state["global_step"] = 8
    _write_state(run / "tmp-checkpoint-8", state)
    (run / "tmp-checkpoint-8" / "optimizer.pt").unlink()  # the save was cut short
    units = _units(run)
    assert list(units) == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "tmp-checkpoint-8"]
    leftover = units["tmp-checkpoint-8"]
    assert leftover.step == 8 and not leftover.complete and leftover.protected is None
    assert "optimizer.pt" in leftover.missing and any("tmp-checkpoint-8" in m for m in leftover.missing)
    assert units["checkpoint-6"].protected == "protected: newest complete"


def test_staging_leftover_next_to_its_final_directory(run):
    shutil.copytree(run / "checkpoint-6", run / "tmp-checkpoint-6")
    units = LAYOUT.units(run)
    assert [u.name for u in units][-2:] == ["checkpoint-6", "tmp-checkpoint-6"]
    assert units[-2].complete and not units[-1].complete


def test_unrelated_directories_and_files_are_ignored(run):
    for name in ("runs", "logs", "checkpoint-abc", "checkpoint-12abc", "checkpoint-", "checkpoint_3", "Checkpoint-3"):
        (run / name).mkdir()
        (run / name / "trainer_state.json").write_text("{}")
    (run / "checkpoint-99").write_text("a file")
    (run / "model.safetensors").write_bytes(b"")  # the final save_model() output is not a unit
    assert [u.name for u in LAYOUT.units(run)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


# ----------------------------------------------------------------- hostile trainer_state.json


def _only_note(run: Path, unit: str = "checkpoint-4"):
    units = _units(run)
    assert [u.name for u in units.values()] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    found = units[unit]
    assert not found.complete and found.missing == ["trainer_state.json"]
    notes = [n for n in found.notes if n.startswith("trainer_state.json: ")]
    assert len(notes) == 1
    return notes[0]


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe\x00garbage", b'{"a": 1} trailing'])
def test_garbage_trainer_state(run, content):
    (run / "checkpoint-4" / "trainer_state.json").write_bytes(content)
    assert "not JSON" in _only_note(run)


def test_huge_trainer_state_is_refused_unread(run):
    path = run / "checkpoint-4" / "trainer_state.json"
    with open(path, "r+b") as fh:
        fh.truncate(MAX_JSON_BYTES + 1)  # sparse: nothing to read, and it is never read
    assert "over the 64 MiB limit" in _only_note(run)


def test_deeply_nested_trainer_state(run):
    (run / "checkpoint-4" / "trainer_state.json").write_text("[" * 200_000 + "]" * 200_000)
    note = _only_note(run)
    assert "nested too deeply" in note or "JSON objects and arrays" in note


def test_too_many_containers(run):
    (run / "checkpoint-4" / "trainer_state.json").write_text("[" + ",".join(["{}"] * 1_000_001) + "]")
    assert "JSON objects and arrays" in _only_note(run)


def test_huge_integer_in_trainer_state(run):
    (run / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": ' + "9" * 100_000 + "}")
    assert "not JSON" in _only_note(run)


def test_huge_integer_when_pythons_digit_limit_is_lifted(run, monkeypatch):
    from ckptctl.layouts import hf_trainer

    monkeypatch.setattr(hf_trainer, "_int_digits_bounded", lambda: False)
    (run / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": ' + "9" * 100_000 + "}")
    assert "more than 40 digits" in _only_note(run)
    assert _units(run)["checkpoint-6"].complete  # ordinary integers still parse on that path


def test_trainer_state_is_a_directory_or_dangling_symlink(run):
    (run / "checkpoint-4" / "trainer_state.json").unlink()
    (run / "checkpoint-4" / "trainer_state.json").mkdir()
    (run / "checkpoint-6" / "trainer_state.json").unlink()
    (run / "checkpoint-6" / "trainer_state.json").symlink_to("nowhere.json")
    units = _units(run)
    assert not units["checkpoint-4"].complete and not units["checkpoint-6"].complete
    assert units["checkpoint-2"].protected == "protected: best"


@pytest.mark.parametrize("document", [
    [],
    "a string",
    {"global_step": "six", "epoch": "one", "log_history": {"step": 6}, "best_model_checkpoint": 7},
    {"global_step": True, "epoch": None, "log_history": [1, "x", None, {"step": "6", "loss": "nan"},
                                                         {"step": 6, "loss": True, "eval_loss": [1]}]},
    {"global_step": -3, "best_model_checkpoint": "", "best_metric": "low", "log_history": []},
])
def test_wrong_types_in_trainer_state(run, document):
    _write_state(run / "checkpoint-6", document)
    units = _units(run)
    unit = units["checkpoint-6"]
    assert unit.step == 6 and unit.complete  # parseable JSON: the unit is complete, bad fields are dropped
    assert all(isinstance(v, float) for v in unit.metrics.values())
    assert unit.epoch is None or isinstance(unit.epoch, float)
    assert not any(u.best for u in units.values())  # the newest state names no usable best


def test_global_step_disagreeing_with_the_name_is_noted(run):
    state = _state(run / "checkpoint-4")
    state["global_step"] = 5
    _write_state(run / "checkpoint-4", state)
    unit = _units(run)["checkpoint-4"]
    assert unit.step == 5 and any("global_step 5" in n for n in unit.notes)


def test_nan_loss_is_kept(run):
    path = run / "checkpoint-6" / "trainer_state.json"
    path.write_text(path.read_text().replace('"loss": 2.7752513885498047', '"loss": NaN'))
    loss = _units(run)["checkpoint-6"].metrics["loss"]
    assert loss != loss


# ---------------------------------------------------------------------- what is read, and how much


def _data_offset(path: Path) -> int:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
    return 8 + length


def test_tensor_bytes_are_never_read(run):
    before = {u.name: (u.complete, u.metrics, u.missing) for u in LAYOUT.units(run)}
    for unit in ("checkpoint-2", "checkpoint-4", "checkpoint-6"):
        weights = run / unit / "model.safetensors"
        start, size = _data_offset(weights), weights.stat().st_size
        with open(weights, "r+b") as fh:  # every tensor byte becomes 0xff (NaN): same size, same header
            fh.seek(start)
            fh.write(b"\xff" * (size - start))
    after = {u.name: (u.complete, u.metrics, u.missing) for u in LAYOUT.units(run)}
    assert after == before


def test_truncated_data_section_is_incomplete_and_units_still_work(run):
    weights = run / "checkpoint-6" / "model.safetensors"
    os.truncate(weights, _data_offset(weights) + 10)
    units = _units(run)
    assert not units["checkpoint-6"].complete and units["checkpoint-6"].missing == ["model.safetensors"]
    assert any(n.startswith("model.safetensors: ") and "truncated" in n for n in units["checkpoint-6"].notes)
    assert units["checkpoint-4"].protected == "protected: newest complete"


def test_bad_safetensors_header_is_incomplete(run):
    weights = run / "checkpoint-2" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.seek(9)
        fh.write(b"\x00")  # inside the JSON header
    unit = _units(run)["checkpoint-2"]
    assert not unit.complete and unit.missing == ["model.safetensors"]


def test_symlinks_inside_a_checkpoint(run):
    target = run / "checkpoint-4"
    (target / "loop").symlink_to(target)  # a directory symlink back to itself is not walked
    (target / "model.safetensors").unlink()
    (target / "model.safetensors").symlink_to(run / "checkpoint-6" / "model.safetensors")
    unit = _units(run)["checkpoint-4"]
    assert unit.complete
    (run / "checkpoint-6" / "model.safetensors").unlink()  # now dangling for checkpoint-4, missing for 6
    units = _units(run)
    assert units["checkpoint-4"].missing == ["model.safetensors"]
    assert units["checkpoint-6"].missing == ["model.safetensors"]


def test_deepspeed_subdirectory_holds_weights_and_optimizer(run):
    unit = run / "checkpoint-6"
    (unit / "global_step6").mkdir()
    for name in ("optimizer.pt", "model.safetensors"):
        (unit / name).rename(unit / "global_step6" / ("mp_rank_00_model_states.pt" if name.startswith("model")
                                                      else "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    (unit / "latest").write_text("global_step6")
    found = _units(run)["checkpoint-6"]
    assert found.complete, found.missing
    contents = {f.path.name: f.content for f in found.files}
    assert contents["mp_rank_00_model_states.pt"] == CONTENT_WEIGHTS
    assert contents["zero_pp_rank_0_mp_rank_00_optim_states.pt"] == CONTENT_OPTIMIZER


def test_reading_a_run_imports_neither_torch_nor_numpy():
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ckptctl.layouts import registry\n"
        f"for name in ('hf_trainer', 'hf_trainer_sharded', 'hf_trainer_bin'):\n"
        f"    path = Path({str(FRAMEWORKS)!r}) / name\n"
        "    layout = registry.detect(path)\n"
        "    units = layout.units(path)\n"
        "    layout.protect(units, layout.pointers(path, units))\n"
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
