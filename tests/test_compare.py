"""compare: metadata-level diff from the safe reader, value-level diff streamed from memory-mapped files."""

from __future__ import annotations

import math
import os
import shutil

import pytest

from ckptctl.ops.compare import _LoadedFile, _torch_load, compare, compare_values, open_side, tensor_values, value_bytes
from ckptctl.errors import BadInputError, CheckpointError
from tests.factories import make_state, write_checkpoint, write_hostile_checkpoint


@pytest.fixture
def pair(tmp_path):
    """The same training state written twice, once with one element of model.2.bias nudged."""
    state = make_state(step=300, epoch=2)
    a = write_checkpoint(tmp_path / "run1" / "latest.pt", state)
    state["model"]["2.bias"][1] += 0.25
    b = write_checkpoint(tmp_path / "run2" / "latest.pt", state)
    return a, b


def test_a_file_equals_itself_at_every_level(ckpt_dir):
    path = ckpt_dir / "latest.pt"
    comparison = compare(path, path)
    assert comparison.equal and comparison.level == "metadata"
    assert comparison.tensors.bytes_compared and comparison.tensors.bytes_differ == []
    values = compare_values(comparison)
    assert comparison.equal and comparison.level == "values"
    assert len(values.tensors) == comparison.tensors.count_a == 17
    assert all(t.max_abs == 0 and t.rel_l2 == 0 and t.equal for t in values.tensors)
    assert values.not_compared == {} and values.most_changed_layers() == []


def test_a_copy_and_a_hard_link_are_equal(ckpt_dir, tmp_path):
    shutil.copy(ckpt_dir / "latest.pt", tmp_path / "copy.pt")
    os.link(ckpt_dir / "latest.pt", tmp_path / "link.pt")
    for other in ("copy.pt", "link.pt"):
        comparison = compare(ckpt_dir / "latest.pt", tmp_path / other)
        compare_values(comparison)
        assert comparison.equal


def test_one_changed_element_is_named(pair):
    comparison = compare(*pair)
    assert not comparison.equal
    assert comparison.tensors.bytes_differ == ["model.2.bias"]  # found from CRC-32s, no tensor read
    assert all(f.equal for f in comparison.fields) and comparison.args.equal and comparison.keys.equal
    values = compare_values(comparison)
    assert [t.name for t in values.differing] == ["model.2.bias"]
    changed = values.differing[0]
    assert changed.max_abs == pytest.approx(0.25)
    assert changed.rel_l2 > 0
    assert values.most_changed_layers()[0]["layer"] == "model.2"
    assert values.most_changed_tensors(1)[0].name == "model.2.bias"


def test_tolerances_decide_equality_at_the_values_level(pair):
    comparison = compare(*pair)
    compare_values(comparison, atol=0.3)
    assert comparison.equal  # values supersede the CRC verdict
    compare_values(comparison, atol=0.1)
    assert not comparison.equal
    compare_values(comparison, rtol=10.0)
    assert comparison.equal


def test_bad_tolerances(pair):
    with pytest.raises(BadInputError, match="atol"):
        compare_values(compare(*pair), atol=-1)


def test_checkpoint_and_its_backup(ckpt_dir):
    comparison = compare(ckpt_dir / "latest.pt", ckpt_dir / "latest_backup.pt")
    fields = {f.name: f for f in comparison.fields}
    assert fields["step"].delta == -100 and fields["epoch"].delta == -1
    assert fields["val_loss"].delta == pytest.approx(0.1)
    assert fields["timestamp"].equal and fields["timestamp"].delta == 0
    assert {"step", "epoch", "val_loss", "dataloader_state"} <= set(comparison.keys.changed)
    assert comparison.optimizer.equal and comparison.optimizer.type_a == "AdamW"
    doc = comparison.to_json()
    assert doc["equal"] is False and doc["values"] is None and doc["level"] == "metadata"


def test_args_and_optimizer_hyperparameters(tmp_path):
    a_state = make_state()
    b_state = make_state()
    b_state["args"] = {**b_state["args"], "lr": 1e-4, "new_flag": True}
    del b_state["args"]["tags"]
    b_state["optimizer"]["param_groups"][0]["lr"] = 1e-4
    a = write_checkpoint(tmp_path / "a.pt", a_state)
    b = write_checkpoint(tmp_path / "b.pt", b_state)
    comparison = compare(a, b)
    assert comparison.args.changed == {"lr": (3e-4, 1e-4)}
    assert comparison.args.only_a == {"tags": ["a", "b c"]} and comparison.args.only_b == {"new_flag": True}
    assert comparison.optimizer.changed == [(0, "lr", 3e-4, 1e-4)]
    assert not comparison.equal


def test_different_models(tmp_path):
    import torch

    a = write_checkpoint(tmp_path / "small.pt", make_state(hidden=16))
    b = write_checkpoint(tmp_path / "big.pt", make_state(hidden=32, ema={"w": torch.ones(3)}))
    comparison = compare(a, b)
    tensors = comparison.tensors
    assert set(tensors.changed) >= {"model.0.weight", "model.0.bias", "model.2.weight"}
    assert list(tensors.only_b) == ["ema.w"] and tensors.only_a == {}
    assert tensors.parameters_b - tensors.parameters_a == (8 * 32 + 32 + 32 * 2 + 2) - (8 * 16 + 16 + 16 * 2 + 2)
    assert comparison.keys.only_b == {"ema": {"w": tensors.only_b["ema.w"]}}
    values = compare_values(comparison)
    assert values.not_compared["model.0.weight"] == "dtype or shape differs"
    assert "ema.w" not in {t.name for t in values.tensors}
    assert not comparison.equal


def test_directory_argument_means_its_newest_checkpoint(ckpt_dir):
    assert open_side(ckpt_dir).path.name == "latest.pt"


def test_hostile_files_are_refused_at_every_level(tmp_path, ckpt_dir):
    marker = tmp_path / "pwned"
    evil = write_hostile_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="unsafe: references posix.system") as info:
        compare(evil, ckpt_dir / "latest.pt")
    assert info.value.exit_code == 1 and info.value.status == "unsafe"
    # The value level's own loader refuses it too, should the safe reader ever be bypassed.
    with pytest.raises(BadInputError, match="weights_only"):
        _torch_load(evil, mmap=True)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"PK\x03\x04junk", "truncated or not a zip")])
def test_unreadable_files_are_findings_missing_ones_bad_input(tmp_path, ckpt_dir, content, message):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        compare(ckpt_dir / "latest.pt", bad)
    assert info.value.exit_code == 1
    with pytest.raises(BadInputError, match="no such file"):
        compare(tmp_path / "missing.pt", ckpt_dir / "latest.pt")


def test_legacy_format_is_compared_without_mmap(tmp_path):
    import torch

    state = make_state()
    a = tmp_path / "legacy.pt"
    torch.save(state, a, _use_new_zipfile_serialization=False)
    b = write_checkpoint(tmp_path / "zip.pt", state)
    comparison = compare(a, b)
    assert not comparison.tensors.bytes_compared
    values = compare_values(comparison)
    assert values.equal and len(values.tensors) == 17
    assert any("legacy format" in note for note in values.notes)


def test_progress_reports_bytes_up_to_the_total(pair):
    calls = []
    comparison = compare(*pair)
    compare_values(comparison, progress=lambda done, total, name: calls.append((done, total, name)))
    assert len(calls) > 17
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert calls[0] == (0, value_bytes(comparison), "")
    assert {c[1] for c in calls} == {value_bytes(comparison)}
    assert calls[-1][0] == calls[-1][1] > 0


def _mb_pair(tmp_path):
    """Two multi-MB checkpoints: one tensor of 3 MiB (several chunks), two small ones, an integer one."""
    import torch

    gen = torch.Generator().manual_seed(0)
    model = {"big": torch.randn(3 << 18, generator=gen), "small": torch.randn(1000, generator=gen),
             "ints": torch.arange(5000), "bf": torch.randn(1 << 17, generator=gen).bfloat16()}  # fmt: skip
    a = write_checkpoint(tmp_path / "a.pt", {"step": 1, "model": model})
    model["big"][7] += 1
    b = write_checkpoint(tmp_path / "b.pt", {"step": 2, "model": model})
    return a, b, 2 * sum(t.numel() * t.element_size() for t in model.values())


def test_value_progress_total_comes_first_and_bytes_move_within_a_tensor(tmp_path, monkeypatch):
    from ckptctl.ops import compare as compare_module

    a, b, tensor_bytes = _mb_pair(tmp_path)
    events: list = []
    original_load = compare_module._torch_load
    monkeypatch.setattr(compare_module, "_torch_load", lambda *args: (events.append("load"), original_load(*args))[1])
    comparison = compare(a, b)
    assert value_bytes(comparison) == tensor_bytes  # from the inventories, before anything is loaded
    compare_values(comparison, progress=lambda done, total, name: events.append((done, total, name)),
                   chunk_elements=1 << 16)  # fmt: skip
    calls = [e for e in events if e != "load"]
    assert events[0] == (0, tensor_bytes, "") and events[1] == "load"  # the total before the first byte
    assert {total for _d, total, _n in calls} == {tensor_bytes}
    done = [d for d, _t, _n in calls]
    assert all(x < y for x, y in zip(done, done[1:]))  # strictly increasing, no repeats
    assert done[-1] == tensor_bytes
    big = [d for d, _t, name in calls if name == "model.big"]
    assert len(big) >= 12  # 3 MiB per side in 256 KiB chunks: the bar moves inside one tensor


def test_value_progress_counts_tensors_not_compared(tmp_path, monkeypatch):
    from ckptctl.ops import compare as compare_module

    a, b, tensor_bytes = _mb_pair(tmp_path)

    def refuse(*_args, **_kwargs):
        raise compare_module._NotCompared("refused for the test")

    monkeypatch.setattr(compare_module._ValueReader, "chunks", refuse)
    calls = []
    values = compare_values(compare(a, b), progress=lambda done, total, name: calls.append((done, total)))
    assert len(values.not_compared) == 4
    assert calls[0] == (0, tensor_bytes) and calls[-1] == (tensor_bytes, tensor_bytes)
    assert [d for d, _t in calls] == sorted(d for d, _t in calls)


def test_tensor_values_edge_cases():
    import torch

    nan, inf = math.nan, math.inf
    same = tensor_values("t", torch.tensor([nan, inf, -0.0, 1.0]), torch.tensor([nan, inf, 0.0, 1.0]), 0, 0)
    assert same.equal and same.max_abs == 0 and same.rel_l2 == 0
    nan_vs_number = tensor_values("t", torch.tensor([nan, 1.0]), torch.tensor([0.0, 1.0]), 0, 0)
    assert not nan_vs_number.equal and math.isnan(nan_vs_number.max_abs)
    big = 2**62
    ints = tensor_values("t", torch.tensor([big, 1]), torch.tensor([big + 1, 1]), 0, 0)
    assert not ints.equal  # exact, although float64 cannot tell 2**62 from 2**62 + 1
    assert not tensor_values("t", torch.tensor([True]), torch.tensor([False]), 0, 0).equal
    complex_diff = tensor_values("t", torch.tensor([1 + 1j]), torch.tensor([1 + 2j]), 0, 0)
    assert complex_diff.max_abs == 1.0 and complex_diff.rel_l2 == pytest.approx(1 / math.sqrt(2))
    zero_ref = tensor_values("t", torch.zeros(2), torch.ones(2), 0, 0)
    assert zero_ref.rel_l2 == inf


def test_chunking_does_not_change_the_result():
    import torch

    torch.manual_seed(0)
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    whole = tensor_values("t", a, b, 0, 0, chunk=10_000)
    chunked = tensor_values("t", a, b, 0, 0, chunk=3)
    assert chunked.max_abs == whole.max_abs
    assert chunked.rel_l2 == pytest.approx(whole.rel_l2)
    assert chunked.max_abs == pytest.approx(float((a - b).abs().max()))
    assert chunked.rel_l2 == pytest.approx(float((a - b).double().norm() / a.double().norm()))


def _mapping_rss_kib(low: int) -> int:
    """Resident KiB of the mapping starting at ``low`` (from /proc/self/smaps)."""
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            if "-" in line.split(" ", 1)[0] and ":" not in line.split(" ", 1)[0]:
                inside = int(line.split("-", 1)[0], 16) == low
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError("mapping not found")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_compared_pages_are_released(tmp_path):
    import torch

    path = write_checkpoint(tmp_path / "big.pt", {"w": torch.ones(4 * 1024 * 1024)})  # 16 MiB
    loaded = _LoadedFile(open_side(path))
    assert loaded.ranges, "torch.load(mmap=True) should map the file"
    tensor = loaded.tensors["w"]
    assert float(tensor.sum()) == 4 * 1024 * 1024  # touch every page
    low = next(lo for lo, hi in loaded.ranges if lo <= tensor.data_ptr() < hi)
    assert _mapping_rss_kib(low) >= 16 * 1024
    loaded.release(tensor)
    assert _mapping_rss_kib(low) < 1024
    assert float(tensor.sum()) == 4 * 1024 * 1024  # released pages come back from the file intact


def test_views_and_tied_tensors_survive_page_release(tmp_path):
    import torch

    base = torch.arange(3 * 1024 * 1024, dtype=torch.float32)  # 12 MiB, so releases span whole pages
    state = {"tied_a": base, "tied_b": base, "row": base.view(3, -1)[1], "col": base.view(-1, 3)[:, 2]}
    a = write_checkpoint(tmp_path / "a.pt", state)
    b = write_checkpoint(tmp_path / "b.pt", state)
    comparison = compare(a, b)
    assert comparison.equal
    values = compare_values(comparison, chunk_elements=100_000)
    assert values.equal and {t.name for t in values.tensors} == {"tied_a", "tied_b", "row", "col"}
    base[1024 * 1024 + 5] = -1.0  # in "row" and both tied names; not in "col" (1048581 % 3 == 0, col takes % 3 == 2)
    c = write_checkpoint(tmp_path / "c.pt", state)
    values = compare_values(compare(a, c), chunk_elements=100_000)
    assert {t.name for t in values.differing} == {"tied_a", "tied_b", "row"}


def test_values_run_on_one_torch_thread_and_restore_the_setting(pair):
    import torch

    before = torch.get_num_threads()
    seen = []
    compare_values(compare(*pair), progress=lambda *_: seen.append(torch.get_num_threads()))
    assert set(seen) == {1}
    assert torch.get_num_threads() == before


# ----------------------------------------------------------------- volatile metadata and --ignore


def deterministic_saves(root, monkeypatch, *, lr_b: float = 0.1, extra_b: dict | None = None):
    """The same seeded training step saved by two managers into two directories, five minutes apart
    (the manager's clock is pinned; the saved timestamp and args.output_dir differ)."""
    import datetime as dt
    import random

    import numpy as np
    import torch

    from ckptctl.training import manager as manager_module
    from ckptctl.training.manager import CheckpointManager, build_state

    paths = []
    for index, (minute, lr) in enumerate(((0, 0.1), (5, lr_b))):
        clock = dt.datetime(2026, 12, 6, 10, minute, tzinfo=dt.timezone.utc)
        monkeypatch.setattr(manager_module, "datetime", type("Clock", (dt.datetime,), {"now": staticmethod(lambda tz=None, c=clock: c)}))
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        loss = model(torch.randn(16, 4)).pow(2).mean()
        loss.backward()
        optimizer.step()
        directory = root / f"run{index + 1}"
        state = build_state(step=1, epoch=0, model=model, optimizer=optimizer, train_loss=loss.detach(),
                            args={"output_dir": str(directory), "lr": lr}, dataloader_state={"batch": 1, "worker_pid": 100 + index},
                            **(extra_b or {} if index else {}))  # fmt: skip
        paths.append(CheckpointManager(directory, monitor_every=0).save(state, step=1))
    return paths


def test_two_saves_of_the_same_step_are_equal_with_the_timestamp_ignored(tmp_path, monkeypatch):
    a, b = deterministic_saves(tmp_path, monkeypatch)
    comparison = compare(a, b, ignore=["dataloader_state.worker_pid"])
    values = compare_values(comparison)
    assert values.equal and values.tensors and comparison.equal
    timestamp = next(f for f in comparison.fields if f.name == "timestamp")
    assert not timestamp.equal and timestamp.ignored and timestamp.delta == 300
    assert set(comparison.ignored_differences()) == {"timestamp", "args.output_dir", "dataloader_state"}


def test_volatile_metadata_alone_never_decides(tmp_path, monkeypatch):
    a, b = deterministic_saves(tmp_path, monkeypatch)
    comparison = compare(a, b)  # no --ignore: worker_pid is not volatile by name
    assert not comparison.equal and list(comparison.keys.changed) == ["dataloader_state"]
    assert "timestamp" not in comparison.keys.changed and "output_dir" not in comparison.args.changed


def test_a_real_difference_still_decides(tmp_path, monkeypatch):
    a, b = deterministic_saves(tmp_path, monkeypatch, lr_b=0.2)
    comparison = compare(a, b, ignore=["dataloader_state.worker_pid"])
    compare_values(comparison)
    assert not comparison.equal and not comparison.values.equal
    assert comparison.args.changed == {"lr": (0.1, 0.2)} and comparison.optimizer.changed == [(0, "lr", 0.1, 0.2)]


def test_ignore_paths_make_chosen_differences_non_deciding(tmp_path, monkeypatch):
    a, b = deterministic_saves(tmp_path, monkeypatch, lr_b=0.2)
    only_args = compare(a, b, ignore=["dataloader_state.worker_pid", "args.lr"])
    assert not only_args.equal and only_args.optimizer.changed  # the optimizer's lr still differs
    ignore = ["dataloader_state.worker_pid", "args.lr", "optimizer", "model"]
    comparison = compare(a, b, ignore=ignore)
    values = compare_values(comparison)
    assert comparison.equal, comparison.to_json()
    assert values.not_compared and set(values.not_compared.values()) == {"ignored"}
    assert {"args.lr", "optimizer.param_groups.0.lr", "model.0.weight"} <= set(comparison.ignored_differences())


def test_ignore_a_volatile_name_anywhere_it_is_listed(tmp_path, monkeypatch):
    a, b = deterministic_saves(tmp_path, monkeypatch, extra_b={"hostname": "node7", "pid": 4242})
    comparison = compare(a, b, ignore=["dataloader_state.worker_pid"])
    assert comparison.equal and comparison.keys.only_b == {}
    assert {"hostname", "pid"} <= set(comparison.keys.ignored)


@pytest.mark.parametrize("path", ["", "args.", ".lr", "a..b"])
def test_bad_ignore_path_is_bad_input(pair, path):
    with pytest.raises(BadInputError, match="--ignore"):
        compare(*pair, ignore=[path])


def test_ignore_does_not_hide_a_sibling_key(pair):
    """``args.lr`` ignores lr, not ``args.lr_schedule``: paths match whole parts."""
    a, b = pair
    comparison = compare(a, b, ignore=["model.2"])
    assert comparison.equal  # model.2.bias is the only difference
    assert not compare(a, b, ignore=["model.2.bia"]).equal


def test_a_run_directory_side_is_its_newest_unit_unless_the_directory_is_ckptctl_s(tmp_path, monkeypatch):
    """A run directory names its newest complete unit; a directory ``scan`` treats as ckptctl's own
    (here: a partial write beside the units) is not a run of the layout, as for the unit lookup."""
    from ckptctl.ops.compare import _newest_unit_of_run
    from tests import fake_layouts

    fake_layouts.register(monkeypatch)
    run = fake_layouts.make_fake_run(tmp_path / "run", steps=(10, 20))
    assert _newest_unit_of_run(run)[1].name == "ckpt-20"
    (run / "rolling_step_000040.pt.tmp").write_bytes(b"half a checkpoint")
    assert _newest_unit_of_run(run) is None
