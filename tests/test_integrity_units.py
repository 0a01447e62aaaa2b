"""ops.integrity.validate_unit / unit_verdict: every file of a layout's checkpoint, by its format."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from pathlib import Path

from ckptctl.layouts.base import CONTENT_OTHER, Unit, content_of, stat_file
from ckptctl.ops.integrity import DEEP, QUICK, unit_verdict, validate_unit, validate_unit_file
from tests.factories import flip_byte_in_largest_tensor, write_hostile_checkpoint

FRAMEWORKS = Path(__file__).parent / "fixtures" / "frameworks"


def _copy(tmp_path: Path, rel: str) -> Path:
    dst = tmp_path / Path(rel).name
    shutil.copytree(FRAMEWORKS / rel, dst, symlinks=True)
    return dst


def _unit(directory: Path, missing: list[str] | None = None) -> Unit:
    files = [stat_file(directory / n, content_of(n)) for n in sorted(os.listdir(directory))]
    return Unit("fake", directory.name, directory, True, files=files, complete=not missing, missing=missing or [])


def _by_name(results):
    return {r.name: r for r in results}


def _truncate(path: Path, keep: int | None = None) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(keep if keep is not None else size // 2)


def test_an_intact_accelerate_checkpoint_is_valid_file_by_file(tmp_path):
    unit = _unit(_copy(tmp_path, "accelerate/checkpoints/checkpoint_0"))
    results = _by_name(validate_unit(unit))
    assert set(results) == {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                            "custom_checkpoint_0.pkl"}  # fmt: skip
    assert all(r.status == "valid" for r in results.values()), {n: r.problems for n, r in results.items()}
    assert results["model.safetensors"].format == "safetensors"
    assert results["random_states_0.pkl"].format == "zip"  # torch.save'd, checked like a .pt (CRC-32 included)
    assert results["random_states_0.pkl"].records_checked > 0
    assert unit_verdict(unit) is None


def test_a_truncated_random_states_pkl_is_invalid(tmp_path):
    unit = _unit(_copy(tmp_path, "accelerate/checkpoints/checkpoint_0"))
    _truncate(unit.path / "random_states_0.pkl")
    result = _by_name(validate_unit(unit))["random_states_0.pkl"]
    assert result.status == "invalid" and result.failed
    assert unit_verdict(unit).startswith("random_states_0.pkl: ")


def test_a_truncated_safetensors_file_is_invalid(tmp_path):
    unit = _unit(_copy(tmp_path, "accelerate/checkpoints/checkpoint_0"))
    model = unit.path / "model.safetensors"
    _truncate(model, model.stat().st_size - 3)
    result = _by_name(validate_unit(unit))["model.safetensors"]
    assert result.status == "invalid" and "truncated" in result.problems[0]
    assert unit_verdict(unit).startswith("model.safetensors: truncated")


def test_trailing_bytes_after_the_safetensors_data_are_damage(tmp_path):
    unit = _unit(_copy(tmp_path, "accelerate/checkpoints/checkpoint_0"))
    with open(unit.path / "model.safetensors", "ab") as fh:
        fh.write(b"\0" * 5)
    result = _by_name(validate_unit(unit))["model.safetensors"]
    assert result.status == "invalid" and "5 bytes after the last tensor" in result.problems[0]


def test_a_bad_safetensors_header_is_invalid(tmp_path):
    path = tmp_path / "model.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 9]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 9)
    result = validate_unit_file(path)
    assert result.status == "invalid" and result.problems[0].startswith("corrupt safetensors header")


def test_a_missing_required_file_is_a_result_of_its_own(tmp_path):
    directory = _copy(tmp_path, "hf_trainer/checkpoint-2")
    (directory / "optimizer.pt").unlink()
    unit = _unit(directory, missing=["optimizer.pt"])
    results = _by_name(validate_unit(unit))
    assert results["optimizer.pt"].status == "invalid"
    assert results["optimizer.pt"].problems == ["missing: optimizer.pt"]
    assert unit_verdict(unit) == "incomplete: missing optimizer.pt"


def test_a_flipped_byte_in_optimizer_pt_fails_its_crc(tmp_path):
    directory = _copy(tmp_path, "hf_trainer/checkpoint-2")
    flip_byte_in_largest_tensor(directory / "optimizer.pt")
    results = _by_name(validate_unit(_unit(directory)))
    assert results["optimizer.pt"].status == "invalid"
    assert any("CRC mismatch" in p for p in results["optimizer.pt"].problems)
    assert results["model.safetensors"].status == "valid"


def test_a_hostile_file_in_a_unit_is_unsafe_and_never_runs(tmp_path):
    directory = _copy(tmp_path, "accelerate/checkpoints/checkpoint_0")
    marker = tmp_path / "pwned"
    write_hostile_checkpoint(directory / "optimizer.bin", marker)
    unit = _unit(directory)
    for level in (QUICK, "default", DEEP):
        result = _by_name(validate_unit(unit, level))["optimizer.bin"]
        assert result.status == "unsafe" and "system" in result.problems[0]
    assert "unsafe" in unit_verdict(unit)
    assert not marker.exists()


def test_a_plain_pickle_is_judged_by_the_restricted_unpickler(tmp_path, monkeypatch):
    safe = tmp_path / "state.pkl"
    safe.write_bytes(pickle.dumps({"step": 3, "lr": [0.1, 0.2]}, protocol=4))
    result = validate_unit_file(safe)
    assert result.status == "valid" and result.format == "pickle"

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = tmp_path / "custom_checkpoint_0.pkl"
    hostile.write_bytes(pickle.dumps({"state": Exploit()}, protocol=2))
    result = validate_unit_file(hostile)
    assert result.status == "unsafe" and "system" in result.problems[0]
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(safe.read_bytes()[:-4])
    assert validate_unit_file(truncated).status == "invalid"
    assert not marker.exists()


def test_an_index_names_every_shard(tmp_path):
    directory = _copy(tmp_path, "hf_trainer_sharded/checkpoint-2")
    assert unit_verdict(_unit(directory)) is None or "training_args.bin" in unit_verdict(_unit(directory))
    index = _by_name(validate_unit(_unit(directory)))["model.safetensors.index.json"]
    assert index.status == "valid"
    (directory / "model-00002-of-00002.safetensors").unlink()
    index = _by_name(validate_unit(_unit(directory)))["model.safetensors.index.json"]
    assert index.status == "invalid" and index.problems == ["missing shard: 'model-00002-of-00002.safetensors'"]


def test_an_index_naming_a_path_outside_its_directory_is_damage(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    result = validate_unit_file(index)
    assert result.status == "invalid" and "outside its directory" in result.problems[0]


def test_a_json_file_must_parse(tmp_path):
    directory = _copy(tmp_path, "hf_trainer/checkpoint-2")
    (directory / "trainer_state.json").write_text('{"global_step": 2,')
    result = _by_name(validate_unit(_unit(directory)))["trainer_state.json"]
    assert result.status == "invalid" and result.problems[0].startswith("not JSON")
    nested = tmp_path / "deep.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    assert validate_unit_file(nested).status == "invalid"  # RecursionError is a verdict, not a crash


def test_an_unknown_file_is_only_checked_for_being_readable(tmp_path):
    path = tmp_path / "zero_to_fp32.py"
    path.write_text("print('never run')\n")
    result = validate_unit_file(path)
    assert result.status == "valid" and result.format == "other"


def test_a_dcp_directory_unit_gets_the_dcp_checks(tmp_path):
    directory = _copy(tmp_path, "torchtitan/checkpoint/step-10")
    unit = _unit(directory)
    results = validate_unit(unit)
    assert [r.name for r in results] == ["step-10"] and results[0].format == "dcp" and results[0].valid
    shard = next(directory.glob("*.distcp"))
    _truncate(shard)
    assert not validate_unit(unit)[0].valid
    assert unit_verdict(unit).startswith("step-10: ")


def test_deep_skips_the_values_of_bookkeeping_files(tmp_path):
    directory = _copy(tmp_path, "accelerate/checkpoints/checkpoint_0")
    result = validate_unit_file(directory / "random_states_0.pkl", DEEP, content=CONTENT_OTHER)
    assert result.valid and result.finite is None
    assert any("values not scanned" in note for note in result.notes)
    weights = validate_unit_file(directory / "optimizer.bin", DEEP, content="optimizer")
    assert weights.valid and weights.finite is True


def test_a_file_unit_without_files_validates_its_path(tmp_path):
    src = FRAMEWORKS / "lightning_link" / "epoch=0-step=4-val_loss=0.56.ckpt"
    path = tmp_path / src.name
    shutil.copy(src, path)
    unit = Unit("fake", path.name, path, False)
    assert [r.status for r in validate_unit(unit)] == ["valid"]
    _truncate(path)
    assert validate_unit(unit)[0].status == "invalid"
    assert unit_verdict(unit).startswith(path.name + ": ")


def test_hard_links_within_a_unit_are_read_once(tmp_path):
    directory = _copy(tmp_path, "accelerate/checkpoints/checkpoint_0")
    os.link(directory / "optimizer.bin", directory / "optimizer_copy.bin")
    results = _by_name(validate_unit(_unit(directory)))
    assert results["optimizer_copy.bin"].same_file_as == "optimizer.bin"
    assert results["optimizer_copy.bin"].valid
