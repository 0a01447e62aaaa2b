"""Known framework classes read as inert records (issue 11), and hostile uses of their names.

The fixtures under tests/fixtures/frameworks/ were written by the real frameworks (their README
lists the globals each file names); none of those frameworks is installed here, and none is
imported by the reader: every class below is a stand-in holding the pickle's data.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import pytest

from ckptctl.errors import UnreadableCheckpoint, UnsafeCheckpoint
from ckptctl.formats.reader import read_checkpoint
from ckptctl.formats.unpickler import (
    ALLOWED,
    AttributeDict,
    Budget,
    BytesIORecord,
    Namespace,
    Record,
    TensorRef,
    safe_loads,
)
from ckptctl.formats.values import jsonable, short_repr
from ckptctl.layouts.metadata import summarize
from tests import hostile
from tests.hostile import _call, _global, _str

FIXTURES = Path(__file__).parent / "fixtures" / "frameworks"
P2 = b"\x80\x02"
TRAINING_ARGS = sorted(FIXTURES.glob("hf_trainer*/checkpoint-*/training_args.bin"))
DS_OPTIM = sorted(FIXTURES.glob("deepspeed/global_step*/zero_pp_rank_0_mp_rank_00_optim_states.pt"))
BYTESIO_STEPS = sorted(FIXTURES.glob("torchtitan_bytesio/checkpoint/step-*"))
LIGHTNING = sorted(p for p in FIXTURES.glob("lightning*/*.ckpt") if p.is_file())  # lightning_fsdp: directories


def _newobj_build(module: str, name: str, state: bytes) -> bytes:
    """``module.name`` created by NEWOBJ with no arguments, then BUILD with ``state``."""
    return _global(module, name) + b")\x81" + state + b"b"


def _dict(**items: bytes) -> bytes:
    return b"}(" + b"".join(_str(k) + v for k, v in items.items()) + b"u"


def _bytesio(data: bytes) -> bytes:
    """What pickle writes for ``io.BytesIO(data)`` at protocol 2 (NEWOBJ, BUILD of its state)."""
    return pickle.dumps(io.BytesIO(data), protocol=2)


# ------------------------------------------------------------------------- the real fixture files


def test_the_fixtures_are_present():
    assert len(TRAINING_ARGS) == 6 and len(DS_OPTIM) == 2 and len(BYTESIO_STEPS) == 2 and len(LIGHTNING) >= 8


@pytest.mark.parametrize("path", TRAINING_ARGS, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_training_args_bin_reads_as_a_record_with_its_fields(path):
    ckpt = read_checkpoint(path)
    args = ckpt.root
    assert isinstance(args, Record) and args.qualname == "transformers.training_args.TrainingArguments"
    assert args.attrs["learning_rate"] == 0.01
    assert args.attrs["output_dir"].startswith("hf_trainer")
    assert args.attrs["lr_scheduler_type"] == "linear"  # the SchedulerType enum: its value
    assert args.attrs["save_strategy"] == "steps"  # SaveStrategy / IntervalStrategy
    assert args.attrs["hub_strategy"] == "every_save"
    assert isinstance(args.attrs["optim"], str) and args.attrs["optim"].startswith("adamw")
    accelerator = args.attrs["accelerator_config"]
    assert isinstance(accelerator, Record) and accelerator.qualname.endswith("AcceleratorConfig")
    assert accelerator.attrs["split_batches"] is False
    state = args.attrs["distributed_state"]
    assert state.qualname == "accelerate.state.PartialState"
    assert state.attrs["device"] == "cpu"  # torch.device('cpu')
    assert state.attrs["distributed_type"] == "NO"  # DistributedType enum
    # shown everywhere saved args are: inspect's JSON, resume-cmd --compare (Metadata.args)
    meta = summarize(ckpt)
    assert meta.args is not None and meta.args["learning_rate"] == 0.01 and isinstance(meta.args["max_steps"], int)
    shown = jsonable(args)
    assert shown["accelerator_config"]["split_batches"] is False and shown["distributed_state"]["device"] == "cpu"
    assert short_repr(args, 200).startswith("{'output_dir'")


@pytest.mark.parametrize("path", DS_OPTIM, ids=lambda p: p.parent.name)
def test_deepspeed_zero_optimizer_state_reads_with_its_records(path):
    ckpt = read_checkpoint(path)
    state = ckpt.root["optimizer_state_dict"]
    scaler = state["loss_scaler"]
    assert isinstance(scaler, Record) and scaler.qualname.endswith("LossScaler")
    assert scaler.attrs == {"cur_scale": 1.0, "dynamic": False}
    assert state["zero_stage"] == 2  # ZeroStageEnum(2)
    mappings = state["param_slice_mappings"]
    fragments = [f for group in mappings for f in group.values()]
    assert fragments and all(f.qualname.endswith("fragment_address") for f in fragments)
    assert fragments[0].attrs == {"numel": 64, "start": 0}
    assert sum(f.attrs["numel"] for f in fragments) == 90  # the 8-8-2 MLP
    meta = summarize(ckpt)
    assert meta.optimizer is not None and meta.optimizer.type == "AdamW" and meta.optimizer.param_groups[0]["lr"] == 0.001


@pytest.mark.parametrize("path", BYTESIO_STEPS, ids=lambda p: p.name)
def test_torchtitan_bytesio_values_read_as_nested_checkpoints(path):
    ckpt = read_checkpoint(path)
    state = ckpt.root["train_state"]
    step = int(path.name.split("-")[1])
    for key in ("global_avg_losses", "global_max_losses", "log_steps"):
        record = state[key]
        assert isinstance(record, BytesIORecord) and record.format == "zip" and record.error is None
        assert isinstance(record.value, list) and len(record.value) == step
    assert state["log_steps"].value == list(range(1, step + 1))
    assert all(isinstance(v, float) for v in state["global_avg_losses"].value)
    shown = jsonable(state["log_steps"])
    assert shown["format"] == "zip" and shown["value"] == list(range(1, step + 1)) and shown["bytesio"] > 1000
    # the nested archive's objects are not the file's own tensors
    assert all(not name.startswith("train_state.log_steps") for name, _ in ckpt.tensors())


@pytest.mark.parametrize("path", LIGHTNING, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lightning_checkpoints_read_with_their_hparams(path):
    ckpt = read_checkpoint(path)
    meta = summarize(ckpt)
    assert meta.args == {"lr": 0.05} or (meta.args and "lr" in meta.args)
    assert meta.step == ckpt.root["global_step"] and meta.epoch == ckpt.root["epoch"]
    assert meta.model is not None and meta.model.parameter_count == 90


# ------------------------------------------------------------------------- each record kind, crafted


def test_attribute_dict_is_a_dict_of_its_items():
    for full in ("lightning.fabric.utilities.data.AttributeDict", "pytorch_lightning.utilities.parsing.AttributeDict",
                 "lightning.pytorch.utilities.parsing.AttributeDict", "lightning_fabric.utilities.data.AttributeDict"):  # fmt: skip
        module, name = full.rsplit(".", 1)
        data = P2 + _global(module, name) + b")\x81(" + _str("lr") + b"G" + struct.pack(">d", 0.5) + _str("layers") + b"K\x02u."
        value, _ = safe_loads(data)
        assert isinstance(value, AttributeDict) and value == {"lr": 0.5, "layers": 2}
        assert jsonable({"hyper_parameters": value}) == {"hyper_parameters": {"lr": 0.5, "layers": 2}}


def test_attribute_dict_called_with_pairs_checks_its_keys():
    data = P2 + _call(_global("lightning.fabric.utilities.data", "AttributeDict"), b"](" + b"".join(
        b"(" + _str(f"k{i}") + b"K\x01t" for i in range(3)) + b"e") + b"."  # fmt: skip
    value, _ = safe_loads(data)
    assert value == {"k0": 1, "k1": 1, "k2": 1}


def test_torch_device_counter_and_bytearray_are_plain_values():
    data = P2 + b"}(" + _str("device") + _call(_global("torch", "device"), _str("cuda"), b"K\x01") \
        + _str("counts") + _call(_global("collections", "Counter"), b"}(" + _str("a") + b"K\x03u") \
        + _str("blob") + _call(_global("builtins", "bytearray"), b"C\x03abc") \
        + _str("blob2") + _call(_global("__builtin__", "bytearray"), _str("xy"), _str("latin-1")) + b"u."  # fmt: skip
    value, _ = safe_loads(data)
    assert value == {"device": "cuda:1", "counts": {"a": 3}, "blob": bytearray(b"abc"), "blob2": bytearray(b"xy")}


def test_what_pickle_itself_writes_for_counter_bytearray_and_device_reads():
    import collections

    value, _ = safe_loads(pickle.dumps({"c": collections.Counter("aab"), "b": bytearray(b"\x00\xff")}, protocol=2))
    assert value == {"c": {"a": 2, "b": 1}, "b": bytearray(b"\x00\xff")}
    value, _ = safe_loads(pickle.dumps({"b": bytearray(b"z" * 10)}, protocol=4))
    assert value == {"b": bytearray(b"z" * 10)}


def test_namedtuple_form_of_fragment_address():
    data = P2 + _global("deepspeed.utils.tensor_fragment", "fragment_address") + b"K\x08K\x40\x86\x81."
    value, _ = safe_loads(data)
    assert value.attrs == {"numel": 8, "start": 64}


def test_records_keep_namespace_behaviour_and_stay_apart_from_each_other():
    a, _ = safe_loads(P2 + _newobj_build("deepspeed.runtime.fp16.loss_scaler", "LossScaler", _dict(cur_scale=b"K\x01")) + b".")
    b, _ = safe_loads(P2 + _newobj_build("transformers.trainer_pt_utils", "AcceleratorConfig", _dict(cur_scale=b"K\x01")) + b".")
    assert isinstance(a, Namespace) and a.attrs == b.attrs == {"cur_scale": 1}
    assert a != b  # one class is not the other
    assert "LossScaler" in repr(a)


def test_bytesio_of_a_plain_pickle_and_of_opaque_bytes():
    value, _ = safe_loads(_bytesio(pickle.dumps([1, 2, 3], protocol=2)))
    assert isinstance(value, BytesIORecord) and (value.format, value.value) == ("pickle", [1, 2, 3])
    value, _ = safe_loads(_bytesio(b"\x00\x01 just bytes, no pickle"))
    assert value.format == "bytes" and value.value is None and value.nbytes == 24
    value, _ = safe_loads(_bytesio(b""))
    assert value.format == "bytes" and value.nbytes == 0


def test_bytesio_of_a_torch_zip_with_tensors_keeps_them_out_of_the_outer_file():
    torch = pytest.importorskip("torch")
    inner = io.BytesIO()
    torch.save({"w": torch.ones(3)}, inner)
    value, storages = safe_loads(_bytesio(inner.getvalue()))
    assert value.format == "zip" and isinstance(value.value["w"], TensorRef) and storages == {}


def test_the_records_are_allowlisted_by_exact_name():
    for name in ("transformers.training_args.TrainingArguments", "transformers.trainer_utils.SchedulerType",
                 "accelerate.state.PartialState", "accelerate.utils.dataclasses.DistributedType",
                 "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.zero.config.ZeroStageEnum",
                 "deepspeed.utils.tensor_fragment.fragment_address", "torch.device", "collections.Counter",
                 "builtins.bytearray", "_io.BytesIO"):  # fmt: skip
        assert name in ALLOWED
    for name in ("transformers.trainer.Trainer", "transformers.training_args.TrainingArgumentsX", "io.StringIO",
                 "_io.FileIO", "accelerate.state.AcceleratorState", "deepspeed.runtime.engine.DeepSpeedEngine"):  # fmt: skip
        assert name not in ALLOWED
        module, attr = name.rsplit(".", 1)
        with pytest.raises(UnsafeCheckpoint) as info:
            safe_loads(P2 + _global(module, attr) + b")\x81.")
        assert info.value.globals == [name]


# ------------------------------------------------------------------------- hostile uses of the names


def test_a_record_class_called_with_arguments_is_a_misuse():
    """A real load would run ``TrainingArguments.__init__`` (and ``__post_init__``): refused."""
    data = P2 + _call(_global("transformers.training_args", "TrainingArguments"), _str("out")) + b"."
    with pytest.raises(UnsafeCheckpoint) as info:
        safe_loads(data)
    assert "transformers.training_args.TrainingArguments" in str(info.value)


def test_a_record_whose_state_calls_something_is_unsafe(tmp_path):
    marker = tmp_path / "pwned"
    evil = _call(_global("os", "system"), _str(f"touch '{marker}'"))
    data = P2 + _newobj_build("transformers.training_args", "TrainingArguments", b"}(" + _str("x") + evil + b"u") + b"."
    with pytest.raises(UnsafeCheckpoint) as info:
        safe_loads(data)
    assert info.value.globals == ["os.system"] and not marker.exists()


def test_a_record_built_twice_or_with_a_bad_state_is_refused():
    twice = P2 + _newobj_build("deepspeed.runtime.fp16.loss_scaler", "LossScaler", _dict(a=b"K\x01")) + _dict(a=b"K\x02") + b"b."
    with pytest.raises(UnreadableCheckpoint, match="read-only once built"):
        safe_loads(twice)
    bad = P2 + _newobj_build("deepspeed.runtime.fp16.loss_scaler", "LossScaler", b"K\x01") + b"."
    with pytest.raises(UnreadableCheckpoint, match="malformed"):
        safe_loads(bad)


def test_building_a_record_class_itself_is_refused_and_changes_nothing():
    cls = ALLOWED["transformers.training_args.TrainingArguments"]
    data = P2 + _global("transformers.training_args", "TrainingArguments") + _dict(qualname=_str("os.system")) + b"b."
    with pytest.raises(UnreadableCheckpoint):
        safe_loads(data)
    assert cls.qualname == "transformers.training_args.TrainingArguments"
    with pytest.raises(AttributeError):
        cls.qualname = "x"


def test_an_enum_with_anything_but_one_plain_value_is_a_misuse():
    for args in (b"]", _str("a") + _str("b"), b""):
        data = P2 + _call(_global("transformers.trainer_utils", "SchedulerType"), args) + b"."
        with pytest.raises(UnsafeCheckpoint, match="misuses transformers.trainer_utils.SchedulerType"):
            safe_loads(data)


@pytest.mark.parametrize("call", [
    _call(_global("torch", "device"), b"]"),
    _call(_global("collections", "Counter"), b"]"),
    _call(_global("builtins", "bytearray"), b"J\x00\xca\x9a\x3b"),  # bytearray(10**9): never allocated
    _call(_global("builtins", "bytearray"), _str("abc"), _str("rot13")),
    _call(_global("_io", "BytesIO"), b"K\x05"),
], ids=["device-list", "counter-list", "bytearray-int", "bytearray-codec", "bytesio-int"])
def test_misuses_of_the_plain_value_classes(call):
    with pytest.raises(UnsafeCheckpoint, match="misuses"):
        safe_loads(P2 + call + b".")


def test_a_huge_bytearray_is_over_the_text_budget():
    big = b"\x00" * 4096
    data = P2 + _call(_global("builtins", "bytearray"), b"B" + struct.pack("<I", len(big)) + big) + b"."
    small = Budget.for_input(len(data), scale=1e-5)
    with pytest.raises(UnreadableCheckpoint, match="budget"):
        safe_loads(data, budget=small)
    assert safe_loads(data)[0] == bytearray(big)


def test_bytesio_wrapping_a_hostile_pickle_is_unsafe(tmp_path):
    marker = tmp_path / "pwned"
    for inner in (hostile.system_global(marker), hostile.posix_system(marker), hostile.protocol0_inst(marker)):
        with pytest.raises(UnsafeCheckpoint) as info:
            safe_loads(P2 + b"}(" + _str("train_state") + _bytesio(inner)[2:-1] + b"u.")
        assert any("system" in g or "exec" in g or "eval" in g for g in info.value.globals), info.value.globals
    assert not marker.exists()


def test_bytesio_wrapping_a_hostile_torch_zip_is_unsafe(tmp_path):
    marker = tmp_path / "pwned"
    archive = hostile.torch_zip(tmp_path / "inner.pt", hostile.system_global(marker)).read_bytes()
    with pytest.raises(UnsafeCheckpoint) as info:
        safe_loads(_bytesio(archive))
    assert "os.system" in info.value.globals and not marker.exists()


def test_bytesio_wrapping_an_ambiguous_zip_is_unsafe(tmp_path):
    marker = tmp_path / "pwned"
    entries = [*hostile.torch_records(hostile.plain_pickle({"step": 1})),
               hostile.RawEntry(b"archive/DATA.PKL", hostile.system_global(marker))]  # fmt: skip
    archive = hostile.raw_zip(tmp_path / "inner.pt", entries).read_bytes()
    with pytest.raises(UnsafeCheckpoint):
        safe_loads(_bytesio(archive))


def test_bytesio_wrapping_a_misused_allowed_global_is_unsafe():
    inner = P2 + _call(_global("transformers.training_args", "TrainingArguments"), _str("x")) + b"."
    with pytest.raises(UnsafeCheckpoint) as info:
        safe_loads(_bytesio(inner))
    assert any("TrainingArguments" in g for g in info.value.globals)


def test_a_hostile_bytesio_inside_a_real_file_makes_the_file_unsafe(tmp_path):
    marker = tmp_path / "pwned"
    path = hostile.torch_zip(tmp_path / "titan.pt", P2 + b"}(" + _str("step") + b"K\x01" + _str("log")
                             + _bytesio(hostile.system_global(marker))[2:-1] + b"u.")  # fmt: skip
    with pytest.raises(UnsafeCheckpoint, match="os.system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_deeply_nested_bytesio_is_over_budget():
    data = pickle.dumps([1, 2], protocol=2)
    for _ in range(3):
        data = _bytesio(data)
    value, _ = safe_loads(data)  # three levels: read
    assert value.value.value.value == [1, 2]
    with pytest.raises(UnreadableCheckpoint, match="nested checkpoints budget"):
        safe_loads(_bytesio(data))


def test_nested_bytesio_charges_the_outer_budget():
    from ckptctl.formats.unpickler import SafeUnpickler

    inner = pickle.dumps([[] for _ in range(3000)], protocol=2)
    unpickler = SafeUnpickler(io.BytesIO(_bytesio(inner)))
    assert len(unpickler.load().value) == 3000
    assert unpickler.budget.objects - unpickler._objects_left >= 3000  # the inner lists count for the outer load
    assert unpickler.budget.text_bytes - unpickler._text_left >= len(inner)


def test_nested_bytesio_gets_only_what_is_left_of_the_budget():
    inner = pickle.dumps([[] for _ in range(3000)], protocol=2)
    data = _bytesio(inner)
    budget = Budget.for_input(len(data))
    from dataclasses import replace

    with pytest.raises(UnreadableCheckpoint, match="budget"):
        safe_loads(data, budget=replace(budget, objects=2000))


def test_a_tar_inside_bytesio_is_refused():
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        payload = b"cos\nsystem\n(S'true'\ntR."
        info = tarfile.TarInfo("pickle")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(UnsafeCheckpoint, match="tar"):
        safe_loads(_bytesio(buffer.getvalue()))
