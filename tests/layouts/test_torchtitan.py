"""torchtitan / plain DCP layout (ckptctl.layouts.torchtitan) on copies of the committed fixtures.

tests/fixtures/frameworks/torchtitan/ imitates torchtitan's current save (``checkpoint/step-10,20,30``,
``train_state = {"step": N, "ntokens_seen": M}``, ``lr_scheduler = {"last_epoch": N}``);
torchtitan_bytesio/ its 2024 save (``train_state.step`` a 0-d int32 tensor, three io.BytesIO blobs).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from ckptctl.layouts import registry
from ckptctl.layouts.torchtitan import TorchtitanLayout
from tests.factories import SystemCall

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
LAYOUT = TorchtitanLayout()


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name, symlinks=True))


def units_of(directory: Path):
    assert LAYOUT.recognise(directory, sorted(os.listdir(directory)))
    units = LAYOUT.units(directory)
    LAYOUT.protect(units, LAYOUT.pointers(directory, units))
    return units


def by_name(units):
    return {u.name: u for u in units}


def write_dcp(directory: Path, state: dict) -> Path:
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=directory)
    return directory


# ----------------------------------------------------------------------------- the two forms


def test_current_form_units_steps_metrics_and_resume(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    units = units_of(run)
    assert [u.name for u in units] == ["step-10", "step-20", "step-30"]
    assert [u.step for u in units] == [10, 20, 30]
    assert [u.metrics for u in units] == [
        {"last_epoch": 10, "ntokens_seen": 140}, {"last_epoch": 20, "ntokens_seen": 280},
        {"last_epoch": 30, "ntokens_seen": 420},
    ]  # fmt: skip
    assert all(u.complete and u.missing == [] and u.notes == [] and u.is_directory for u in units)
    assert all(u.layout == "torchtitan" for u in units)
    assert units[-1].protected == "protected: newest complete"
    assert [u.protected for u in units[:2]] == [None, None]
    assert LAYOUT.resume_args(units[-1], run) == ["--checkpoint.load_step", "30"]
    # du: every file of the directory, the shard as weights
    files = {f.path.name: f for f in units[0].files}
    assert set(files) == {".metadata", "__0_0.distcp"}
    assert files["__0_0.distcp"].content == "weights"
    assert units[0].size_bytes == sum(p.stat().st_size for p in (run / "step-10").iterdir())


def test_2024_form_reads_the_tensor_step_and_notes_the_bytesio_blobs(tmp_path):
    run = copy("torchtitan_bytesio", tmp_path) / "checkpoint"
    (run / "step-20").rename(run / "step-99")  # the step must come from train_state.step, not the name
    units = units_of(run)
    assert [(u.name, u.step) for u in units] == [("step-10", 10), ("step-99", 20)]
    assert all(u.complete for u in units)
    assert [u.metrics for u in units] == [{"last_epoch": 10}, {"last_epoch": 20}]
    assert any("io.BytesIO" in n and "train_state.global_avg_losses" in n for n in units[0].notes)
    assert "train_state.step is 20 but the directory is step-99" in units[1].notes
    # torchtitan opens step-{load_step}: the flag carries the directory's number
    assert LAYOUT.resume_args(units[1], run) == ["--checkpoint.load_step", "99"]


def test_registry_detects_torchtitan(tmp_path):
    run = copy("torchtitan", tmp_path)
    assert registry.detect(run / "checkpoint").name == "torchtitan"
    assert registry.detect(run).name == "torchtitan"


def test_dump_folder_holding_checkpoint_subfolder(tmp_path):
    dump = copy("torchtitan", tmp_path)
    (dump / "tb").mkdir()
    (dump / "tb" / "events.out").write_bytes(b"x")
    units = units_of(dump)
    assert [(u.name, u.step) for u in units] == [("checkpoint/step-10", 10), ("checkpoint/step-20", 20),
                                                 ("checkpoint/step-30", 30)]  # fmt: skip
    assert units[0].path == dump / "checkpoint" / "step-10"
    assert LAYOUT.resume_args(units[-1], dump) == ["--checkpoint.load_step", "30"]


def test_a_folder_not_named_checkpoint_is_passed_as_checkpoint_folder(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    renamed = run.rename(run.parent / "ckpts")
    unit = units_of(renamed)[-1]
    assert LAYOUT.resume_args(unit, renamed) == ["--checkpoint.folder", "ckpts", "--checkpoint.load_step", "30"]


# ----------------------------------------------------------------------------- incomplete / damaged


def test_step_without_metadata_is_an_incomplete_leftover(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    (run / "step-30" / ".metadata").unlink()
    units = by_name(units_of(run))
    newest = units["step-30"]
    assert not newest.complete and newest.missing == [".metadata"]
    assert newest.step == 30  # from the name
    assert "no .metadata" in newest.notes[0]
    assert newest.protected is None
    assert units["step-20"].protected == "protected: newest complete"


def test_empty_step_directory_beside_real_ones_is_incomplete(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    (run / "step-40").mkdir()
    unit = by_name(units_of(run))["step-40"]
    assert (unit.complete, unit.missing, unit.step) == (False, [".metadata"], 40)


def test_missing_shard_is_incomplete_and_named(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    (run / "step-30" / "__0_0.distcp").unlink()
    unit = by_name(units_of(run))["step-30"]
    assert not unit.complete
    assert unit.missing == ["__0_0.distcp"]
    assert unit.step == 30 and unit.metrics == {}  # the values live in the missing shard


def test_truncated_shard_is_incomplete_with_a_truncation_note(tmp_path):
    """Present but shorter than .metadata's offsets: nothing is missing, the file is damaged.
    Not complete (the issue: complete = .metadata present and shards intact), so never resumed from."""
    run = copy("torchtitan", tmp_path) / "checkpoint"
    shard = run / "step-30" / "__0_0.distcp"
    os.truncate(shard, shard.stat().st_size // 2)
    unit = by_name(units_of(run))["step-30"]
    assert not unit.complete
    assert unit.missing == []
    assert unit.notes and unit.notes[0].startswith("truncated: shard file __0_0.distcp holds")
    assert by_name(units_of(run))["step-20"].protected == "protected: newest complete"


def test_special_file_as_shard_is_incomplete_and_never_read(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    shard = run / "step-30" / "__0_0.distcp"
    shard.unlink()
    os.mkfifo(shard)  # a read would block forever
    unit = by_name(units_of(run))["step-30"]
    assert not unit.complete and "not a regular file" in unit.notes[0]


def record_offset(step_dir: Path, fqn: str, record: str = "data.pkl") -> int:
    """Where a record of DCP item ``fqn`` (its pickle, or ``data/0``) starts in its shard file."""
    import io
    import struct
    import zipfile

    from ckptctl.formats import dcp

    metadata = dcp._load_metadata(step_dir)
    rel, start, length = next((r, s, n) for f, _o, r, s, n in dcp._storage_items(metadata) if f == fqn)
    blob = (step_dir / rel).read_bytes()[start : start + length]
    info = next(i for i in zipfile.ZipFile(io.BytesIO(blob)).infolist() if i.filename.endswith(record))
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26 : info.header_offset + 30])
    return start + info.header_offset + 30 + name_len + extra_len


def test_flipped_byte_in_the_step_value_is_damage_not_a_wrong_step(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    shard = run / "step-30" / "__0_0.distcp"
    at = record_offset(run / "step-30", "train_state.step") + 3
    data = bytearray(shard.read_bytes())
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    unit = by_name(units_of(run))["step-30"]
    assert not unit.complete
    assert unit.step == 30  # from the name only
    assert any(n.startswith("unreadable: value train_state.step: damaged") for n in unit.notes), unit.notes


def test_flipped_byte_in_the_2024_tensor_step_is_damage(tmp_path):
    run = copy("torchtitan_bytesio", tmp_path) / "checkpoint"
    shard = run / "step-20" / "__0_0.distcp"
    at = record_offset(run / "step-20", "train_state.step", "data/0")
    data = bytearray(shard.read_bytes())
    assert data[at : at + 4] == (20).to_bytes(4, "little")  # the int32 tensor's bytes
    data[at] ^= 0x01  # 20 -> 21: the record's CRC-32 no longer matches, so no wrong step is shown
    shard.write_bytes(bytes(data))
    unit = by_name(units_of(run))["step-20"]
    assert not unit.complete and unit.step == 20
    assert any("train_state.step: damaged" in n for n in unit.notes), unit.notes


def test_garbage_metadata_is_unreadable(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    (run / "step-30" / ".metadata").write_bytes(b"\x80\x04not a pickle")
    unit = by_name(units_of(run))["step-30"]
    assert not unit.complete and unit.notes[0].startswith("unreadable:")


def test_hostile_metadata_is_unsafe_and_never_executed(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    marker = tmp_path / "pwned"
    (run / "step-30" / ".metadata").write_bytes(pickle.dumps(SystemCall(marker)))
    unit = by_name(units_of(run))["step-30"]
    assert not unit.complete and unit.notes[0].startswith("unsafe:")
    assert not marker.exists()


def test_hostile_step_value_is_unsafe_and_never_executed(tmp_path):
    import torch

    run = copy("torchtitan", tmp_path) / "checkpoint"
    marker = tmp_path / "pwned"
    write_dcp(run / "step-40", {"w": torch.zeros(2), "train_state": {"step": SystemCall(marker)}})
    assert not marker.exists()
    unit = by_name(units_of(run))["step-40"]
    assert not unit.complete
    assert any(n.startswith("unsafe: train_state.step") and "system" in n for n in unit.notes)
    assert not marker.exists()
    assert by_name(units_of(run))["step-30"].protected == "protected: newest complete"


def test_storage_path_leaving_the_directory_is_unsafe(tmp_path):
    from tests.dcp_mutations import load_case

    run = copy("torchtitan", tmp_path) / "checkpoint"
    case = load_case(run / "step-30")
    for info in case.metadata.storage_data.values():
        info.relative_path = "../step-20/__0_0.distcp"
    case.write(run / "step-30")
    unit = by_name(units_of(run))["step-30"]
    assert not unit.complete and unit.notes[0].startswith("unsafe:")


def test_dangling_and_looping_step_symlinks(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    (run / "step-40").symlink_to("nowhere")
    (run / "step-50").symlink_to("step-50")
    units = by_name(units_of(run))
    assert not units["step-40"].complete and units["step-40"].notes == ["dangling symlink to nowhere"]
    assert not units["step-50"].complete and units["step-50"].notes == ["looping symlink to step-50"]
    assert units["step-30"].protected == "protected: newest complete"


# ----------------------------------------------------------------------------- other directories


def test_non_step_subdirectories_are_ignored_and_step_abc_is_not_a_step(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    (run / "tb").mkdir()
    (run / "tb" / "events").write_bytes(b"x")
    (run / "step-abc").mkdir()  # not step-N, not DCP
    (run / "step-").mkdir()
    (run / "notes.txt").write_text("hi")
    assert [u.name for u in units_of(run)] == ["step-10", "step-20", "step-30"]


def test_plain_dcp_directories_are_units_named_by_their_directory(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    shutil.copytree(run / "step-10", run / "step-abc")
    shutil.copytree(run / "step-20", run / "best")
    units = by_name(units_of(run))
    assert set(units) == {"step-10", "step-20", "step-30", "step-abc", "best"}
    assert units["step-abc"].step == 10 and units["best"].step == 20  # train_state.step
    assert units["best"].complete
    assert LAYOUT.resume_args(units["best"], run) == [str(run / "best")]


def test_plain_dcp_run_without_any_step_directory(tmp_path):
    import torch

    run = tmp_path / "run"
    write_dcp(run / "ckpt_a", {"model": {"w": torch.zeros(3)}, "step": 5, "epoch": 1})
    write_dcp(run / "ckpt_b", {"model": {"w": torch.ones(3)}, "step": 9, "epoch": 2})
    units = units_of(run)
    assert [(u.name, u.step, u.epoch) for u in units] == [("ckpt_a", 5, 1.0), ("ckpt_b", 9, 2.0)]
    assert all(u.notes == [] for u in units)  # not "model only": it records a step
    assert all(u.complete for u in units)
    assert units[-1].protected == "protected: newest complete"
    assert registry.detect(run).name == "torchtitan"


def test_model_only_checkpoint_is_noted(tmp_path):
    import torch

    run = copy("torchtitan", tmp_path) / "checkpoint"
    write_dcp(run / "step-40", {"tok_embeddings.weight": torch.zeros(4, 2)})
    unit = by_name(units_of(run))["step-40"]
    assert unit.complete and unit.step == 40
    assert any("model only" in n for n in unit.notes)


def test_hf_export_step_directory(tmp_path):
    run = copy("torchtitan", tmp_path) / "checkpoint"
    export = run / "step-40"
    export.mkdir()
    shutil.copy(FIXTURES / "loose" / "model.safetensors", export / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"0.weight": "model-00001-of-00001.safetensors"}}
    (export / "model.safetensors.index.json").write_text(json.dumps(index))
    unit = by_name(units_of(run))["step-40"]
    assert unit.complete and unit.step == 40
    assert "Hugging Face" in unit.notes[0]
    (export / "model-00001-of-00001.safetensors").unlink()
    unit = by_name(units_of(run))["step-40"]
    assert not unit.complete and unit.missing == ["model-00001-of-00001.safetensors"]
    (export / "model.safetensors.index.json").write_text("{not json")
    unit = by_name(units_of(run))["step-40"]
    assert not unit.complete and "not JSON" in unit.notes[-1]


@pytest.mark.parametrize("setup", ["empty", "empty_step_dir", "files_only", "loose"])
def test_not_recognised(tmp_path, setup):
    run = tmp_path / "run"
    run.mkdir()
    if setup == "empty_step_dir":
        (run / "step-5").mkdir()  # nothing DCP anywhere: not a DCP run
    elif setup == "files_only":
        (run / ".metadata").write_bytes(b"x")  # one DCP checkpoint itself, not a directory of them
        (run / "__0_0.distcp").write_bytes(b"x")
    elif setup == "loose":
        shutil.copytree(FIXTURES / "loose", run, dirs_exist_ok=True)
    assert not LAYOUT.recognise(run, sorted(os.listdir(run)))
    assert LAYOUT.units(run) == []


@pytest.mark.parametrize("name", ["hf_trainer", "lightning", "accelerate", "accelerate_named", "deepspeed", "loose"])
def test_other_frameworks_are_not_torchtitan(name):
    directory = FIXTURES / name
    assert not LAYOUT.recognise(directory, sorted(os.listdir(directory)))


def test_units_read_no_tensor_bytes_and_no_torch(tmp_path):
    """The listing path imports no torch (a fresh interpreter), whatever it reads."""
    import subprocess
    import sys

    run = copy("torchtitan_bytesio", tmp_path) / "checkpoint"
    code = (
        "import sys\nfrom pathlib import Path\nfrom ckptctl.layouts.torchtitan import TorchtitanLayout\n"
        f"us = TorchtitanLayout().units(Path({str(run)!r}))\n"
        "assert [u.step for u in us] == [10, 20], us\nassert 'torch' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
