"""The PyTorch Lightning layout on real Lightning 2.6.6 outputs (tests/fixtures/frameworks/lightning*)
and on Lightning-shaped files written here with torch alone (Lightning is never installed)."""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from ckptctl.layouts import registry
from ckptctl.layouts.base import POINTER_DAMAGED, POINTER_DANGLING, POINTER_LOOP, POINTER_OK, POINTER_STALE
from ckptctl.layouts.lightning import LightningLayout, parse_name
from tests.factories import write_hostile_checkpoint

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "frameworks"
E0 = "epoch=0-step=4-val_loss=0.56.ckpt"
E1 = "epoch=1-step=8-val_loss=0.57.ckpt"
E0V1 = "epoch=0-step=4-val_loss=0.56-v1.ckpt"
E1V1 = "epoch=1-step=8-val_loss=0.57-v1.ckpt"
# the exact val_loss of each fixture file (its best_k_models entry), rounded to two places in the name
VAL0, VAL1 = 0.5636191964149475, 0.5653688907623291


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst, symlinks=True)
    return dst


def _read(directory: Path):
    layout = LightningLayout()
    units = layout.units(directory)
    pointers = layout.pointers(directory, units)
    layout.protect(units, pointers)
    return layout, {u.name: u for u in units}, {p.name: p for p in pointers}, units


def _lightning_file(path: Path, *, epoch: int, step: int, score: float, best: str | None = None,
                    monitor: str | None = "val_loss", hparams=None, **extra) -> Path:  # fmt: skip
    """A .ckpt shaped like ModelCheckpoint's (keys and callback state of 2.6), written with torch.save."""
    import torch

    best_path = f"/elsewhere/run/{best or path.name}"
    state = {
        "monitor": monitor,
        "best_model_score": torch.tensor(0.125),
        "best_model_path": best_path,
        "current_score": torch.tensor(score),
        "dirpath": "/elsewhere/run",
        "best_k_models": {best_path: torch.tensor(0.125), f"/elsewhere/run/{path.name}": torch.tensor(score)},
        "kth_best_model_path": "",
        "kth_value": torch.tensor(float("inf")),
        "last_model_path": "",
    }
    ckpt = {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {"net.weight": torch.zeros(2, 2)},
        "loops": {},
        "callbacks": {f"ModelCheckpoint{{'monitor': {monitor!r}, 'mode': 'min'}}": state},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams if hparams is not None else {"lr": 0.05},
        **extra,
    }
    torch.save(ckpt, path)
    return path


# ---------------------------------------------------------------------- names


def test_parse_name_reads_template_values_version_and_last():
    parsed = parse_name("epoch=3-step=120-val_loss=0.25-v1.ckpt")
    assert (parsed.epoch, parsed.step, parsed.version, parsed.last) == (3, 120, 1, False)
    assert parsed.values == {"epoch": 3, "step": 120, "val_loss": 0.25}
    assert parse_name("last.ckpt").last and parse_name("last.ckpt").version is None
    assert parse_name("last-v2.ckpt").last and parse_name("last-v2.ckpt").version == 2
    assert not parse_name("lastly.ckpt").last


def test_parse_name_keeps_prefixes_negative_values_and_exponents():
    assert parse_name("sample-mnist-epoch=02-val_loss=-0.32.ckpt").values == {"epoch": 2, "val_loss": -0.32}
    assert parse_name("lr=1e-05-epoch=3.ckpt").values == {"lr": 1e-05, "epoch": 3}
    assert parse_name("epoch=3-lr=1e-05.ckpt").values == {"epoch": 3, "lr": 1e-05}


def test_parse_name_with_odd_templates():
    odd = parse_name("epoch=abc-step=x1.ckpt")
    assert odd.values == {} and odd.odd == ["epoch=abc", "step=x1"] and odd.step is None
    assert parse_name("step=120-val_loss=0.3.ckpt").epoch is None  # no {epoch} in the template
    assert parse_name("step=1.5.ckpt").step is None  # not a whole number
    assert parse_name("val_loss=inf.ckpt").values == {}  # Lightning writes inf for a NaN monitor
    assert not parse_name("model.ckpt").is_template and parse_name("model-v2.ckpt").version == 2


# ---------------------------------------------------------------------- the real fixtures


def test_both_fixtures_are_recognised_by_the_registry():
    for name in ("lightning", "lightning_link"):
        layout = registry.detect(FIXTURES / name)
        assert isinstance(layout, LightningLayout)
        assert (layout.name, layout.title, layout.resume_flag) == ("lightning", "PyTorch Lightning", "--ckpt_path")
    assert isinstance(registry.by_name("lightning"), LightningLayout)


def test_units_of_two_runs_in_one_directory(tmp_path):
    _layout, units, pointers, ordered = _read(_copy("lightning", tmp_path))
    assert sorted(units) == sorted([E0, E1, E0V1, E1V1, "last.ckpt", "last-v1.ckpt"])
    # oldest first: by step, the -v1 file (second run) after its twin, last copies after the top-k file
    assert [u.name for u in ordered] == [E0, E0V1, E1, "last.ckpt", E1V1, "last-v1.ckpt"]
    for name in (E0, E0V1):
        assert (units[name].step, units[name].epoch) == (4, 0)
    for name in (E1, E1V1, "last.ckpt", "last-v1.ckpt"):
        assert (units[name].step, units[name].epoch) == (8, 1)
    assert all(u.complete and not u.is_directory and u.layout == "lightning" for u in units.values())
    assert all(u.hparams == {"lr": 0.05} for u in units.values())
    assert any("version v1" in n for n in units[E1V1].notes) and not any("version" in n for n in units[E1].notes)
    assert "last (copy)" in units["last.ckpt"].notes and "last (copy)" in units["last-v1.ckpt"].notes
    assert "last (copy)" not in units[E1].notes
    assert units[E1].files[0].size_bytes == (tmp_path / "lightning" / E1).stat().st_size


def test_monitor_and_scores_are_numbers_from_the_file_not_the_rounded_name(tmp_path):
    _layout, units, _pointers, _ = _read(_copy("lightning_link", tmp_path))
    first, second = units[E0], units[E1]
    assert first.monitor == second.monitor == "val_loss"
    assert first.metrics["val_loss"] == pytest.approx(VAL0) and first.metrics["val_loss"] != 0.56
    assert second.metrics["val_loss"] == pytest.approx(VAL1) and second.monitored_value == pytest.approx(VAL1)
    assert second.metrics["best_model_score"] == pytest.approx(VAL0)
    assert second.metrics["current_score"] == pytest.approx(VAL1)
    assert second.metrics["kth_value"] == pytest.approx(VAL1)
    assert "kth_value" not in first.metrics  # tensor(inf) while the top-k is not full: no number
    assert all(isinstance(v, float) for u in units.values() for v in u.metrics.values())


def test_best_is_what_the_newest_record_names_by_basename(tmp_path):
    _layout, units, _pointers, _ = _read(_copy("lightning_link", tmp_path))
    assert units[E0].best and not units[E1].best  # best_model_path is /tmp/ckptctl-fixtures/...: basename match
    assert units[E0].protected == "protected: best"
    assert units[E1].protected == "protected: newest complete"


def test_two_runs_in_one_directory_each_keep_their_best(tmp_path):
    _layout, units, _pointers, _ = _read(_copy("lightning", tmp_path))
    assert {n for n, u in units.items() if u.best} == {E0, E0V1}
    assert units["last.ckpt"].protected == units["last-v1.ckpt"].protected == "protected: last"
    assert units[E1V1].protected == "protected: newest complete"
    assert units[E1].protected is None  # an older top-k file of the first run: prune may take it


def test_last_copy_is_a_unit_and_a_pointer_to_itself(tmp_path):
    _layout, units, pointers, _ = _read(_copy("lightning", tmp_path))
    assert set(pointers) == {"last.ckpt", "last-v1.ckpt"}
    for name in ("last.ckpt", "last-v1.ckpt"):
        assert (pointers[name].target, pointers[name].status) == (name, POINTER_OK)
        assert name in units


def test_last_link_is_a_pointer_not_a_unit(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    layout, units, pointers, _ = _read(directory)
    assert sorted(units) == [E0, E1]
    link = pointers["last.ckpt"]
    assert (link.target, link.status, link.detail) == (E1, POINTER_OK, None)
    assert layout.resume_args(units[E1], directory) == ["--ckpt_path", str(directory / E1)]


# ---------------------------------------------------------------------- pointers: damage (healed by restore: tests/test_restore_layouts.py)


def test_dangling_link(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    (directory / E1).unlink()
    layout, units, pointers, _ = _read(directory)
    link = pointers["last.ckpt"]
    assert link.status == POINTER_DANGLING and E1 in link.detail
    assert units[E0].protected == "protected: best"


def test_self_loop_link(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    (directory / "last.ckpt").unlink()
    os.symlink("last.ckpt", directory / "last.ckpt")  # Lightning #21110
    layout, units, pointers, _ = _read(directory)
    link = pointers["last.ckpt"]
    assert link.status == POINTER_LOOP and "itself" in link.detail
    assert sorted(units) == [E0, E1]


def test_two_link_loop(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    (directory / "last.ckpt").unlink()
    os.symlink("last-v1.ckpt", directory / "last.ckpt")
    os.symlink("last.ckpt", directory / "last-v1.ckpt")
    pointers = _read(directory)[2]
    assert pointers["last.ckpt"].status == pointers["last-v1.ckpt"].status == POINTER_LOOP


def test_stale_link(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    newer = _lightning_file(directory / "epoch=3-step=16-val_loss=0.60.ckpt", epoch=3, step=16, score=0.6, best=E0)
    layout, units, pointers, _ = _read(directory)
    assert units[E0].best and not units[newer.name].best
    link = pointers["last.ckpt"]
    assert (link.status, link.target) == (POINTER_STALE, E1) and "16" in link.detail
    assert units[newer.name].protected == "protected: newest complete"
    assert units[E1].protected == "protected: pointer target"


def test_a_newer_incomplete_checkpoint_does_not_make_the_link_stale(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    newer = _lightning_file(directory / "epoch=3-step=16-val_loss=0.60.ckpt", epoch=3, step=16, score=0.6)
    newer.write_bytes(newer.read_bytes()[:-200])
    pointers = _read(directory)[2]
    assert pointers["last.ckpt"].status == POINTER_OK


def test_link_to_a_truncated_checkpoint_is_damaged(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    target = directory / E1
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    layout, units, pointers, _ = _read(directory)
    assert not units[E1].complete and units[E1].missing[0].startswith("unreadable")
    assert pointers["last.ckpt"].status == POINTER_DAMAGED and E1 in pointers["last.ckpt"].detail
    assert units[E0].protected == "protected: best"  # also the newest complete now


def test_absolute_link_inside_the_directory_names_the_unit(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    (directory / "last.ckpt").unlink()
    os.symlink(directory / E1, directory / "last.ckpt")  # what Lightning 2.1 wrote
    link = _read(directory)[2]["last.ckpt"]
    assert (link.target, link.status) == (E1, POINTER_OK)


def test_link_written_relative_to_another_directory_is_dangling_and_says_so(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    (directory / "last.ckpt").unlink()
    os.symlink(f"work_dirs/exp/checkpoints/{E1}", directory / "last.ckpt")  # Lightning #19294
    link = _read(directory)[2]["last.ckpt"]
    assert link.status == POINTER_DANGLING and f"{E1} is here" in link.detail


def test_damaged_last_copy_is_a_damaged_pointer_and_stays_protected(tmp_path):
    directory = _copy("lightning", tmp_path)
    last = directory / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    layout, units, pointers, _ = _read(directory)
    assert not units["last.ckpt"].complete
    assert pointers["last.ckpt"].status == POINTER_DAMAGED
    assert units["last.ckpt"].protected == "protected: last"


def test_stale_last_copy(tmp_path):
    directory = _copy("lightning", tmp_path)
    _lightning_file(directory / "epoch=3-step=16-val_loss=0.60.ckpt", epoch=3, step=16, score=0.6)
    pointers = _read(directory)[2]
    assert pointers["last.ckpt"].status == pointers["last-v1.ckpt"].status == POINTER_STALE


# ---------------------------------------------------------------------- damaged and hostile files


def test_hostile_ckpt_is_unsafe_and_never_executed(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    marker = tmp_path / "MARKER"
    write_hostile_checkpoint(directory / "epoch=9-step=99-val_loss=0.01.ckpt", marker)
    assert isinstance(registry.detect(directory), LightningLayout)
    layout, units, pointers, _ = _read(directory)
    hostile = units["epoch=9-step=99-val_loss=0.01.ckpt"]
    assert not hostile.complete and hostile.missing[0].startswith("unsafe")
    assert any("unsafe" in n and "system" in n for n in hostile.notes)
    assert hostile.step == 99 and hostile.protected is None  # from the name; never the newest complete
    assert pointers["last.ckpt"].status == POINTER_OK  # an unreadable newer file does not make it stale
    assert units[E1].protected == "protected: newest complete"
    assert not marker.exists()


def test_hostile_only_directory_is_not_recognised_by_content(tmp_path):
    """A lone ``model.ckpt`` whose pickle is hostile is not taken for Lightning's by its content; it is
    left to the loose-files layout (last in the table), which reports it unsafe without running it."""
    marker = tmp_path / "MARKER"
    write_hostile_checkpoint(tmp_path / "run" / "model.ckpt", marker)
    layout = registry.detect(tmp_path / "run")
    assert layout is None or layout.name == "loose"
    assert not LightningLayout().recognise(tmp_path / "run", ["model.ckpt"])
    assert not marker.exists()


def test_truncated_and_empty_ckpt(tmp_path):
    directory = _copy("lightning_link", tmp_path)
    cut = directory / "epoch=2-step=12-val_loss=0.58.ckpt"
    cut.write_bytes((directory / E1).read_bytes()[:3000])
    (directory / "epoch=3-step=16-val_loss=0.59.ckpt").write_bytes(b"")
    _layout, units, _pointers, _ = _read(directory)
    for name, step in (("epoch=2-step=12-val_loss=0.58.ckpt", 12), ("epoch=3-step=16-val_loss=0.59.ckpt", 16)):
        assert not units[name].complete and units[name].step == step and units[name].missing[0].startswith("unreadable")
        assert units[name].metrics == {"val_loss": float(name.split("val_loss=")[1][:4])}  # the name's values only
    assert units[E1].protected == "protected: newest complete"


def test_unknown_class_in_hyper_parameters_is_reported_not_a_crash(tmp_path):
    """Lightning's AttributeDict: unsafe until the unpickler knows it as an inert record; either way no crash."""
    module = types.ModuleType("lightning.fabric.utilities.data")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = module.__name__, "AttributeDict"
    module.AttributeDict = AttributeDict
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", module.__name__]
    assert not any(n in sys.modules for n in names)  # Lightning is never installed for the tests
    for name in names[:-1]:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[module.__name__] = module
    try:
        directory = tmp_path / "run"
        directory.mkdir()
        _lightning_file(directory / "epoch=0-step=4.ckpt", epoch=0, step=4, score=0.5, hparams=AttributeDict(lr=0.1))
    finally:
        for name in names:
            del sys.modules[name]
    _layout, units, _pointers, _ = _read(directory)
    unit = units["epoch=0-step=4.ckpt"]
    assert unit.step == 4
    if unit.complete:
        assert unit.hparams == {"lr": 0.1}
    else:
        assert any("AttributeDict" in n for n in unit.notes)


# ---------------------------------------------------------------------- names vs file content


def test_file_values_win_over_the_name(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    _lightning_file(directory / "epoch=3-step=120-val_loss=0.25.ckpt", epoch=4, step=121, score=0.2512)
    unit = _read(directory)[1]["epoch=3-step=120-val_loss=0.25.ckpt"]
    assert (unit.step, unit.epoch) == (121, 4)
    assert unit.metrics["val_loss"] == pytest.approx(0.2512) and unit.metrics["val_loss"] != 0.25


def test_name_without_epoch_and_odd_values(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    _lightning_file(directory / "step=120-val_loss=0.30.ckpt", epoch=2, step=120, score=0.3)
    _lightning_file(directory / "epoch=abc-val_loss=low.ckpt", epoch=5, step=200, score=0.2)
    assert isinstance(registry.detect(directory), LightningLayout)
    units = _read(directory)[1]
    assert (units["step=120-val_loss=0.30.ckpt"].epoch, units["step=120-val_loss=0.30.ckpt"].step) == (2, 120)
    odd = units["epoch=abc-val_loss=low.ckpt"]
    assert (odd.epoch, odd.step) == (5, 200) and odd.metrics["val_loss"] == pytest.approx(0.2)
    assert "name: epoch=abc is not a number" in odd.notes and "name: val_loss=low is not a number" in odd.notes


def test_names_without_a_template_are_recognised_by_content_cheaply(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    directory.mkdir()
    for i in range(5):
        _lightning_file(directory / f"model{i}.ckpt", epoch=i, step=10 * i, score=0.5)
    from ckptctl.layouts import lightning

    calls = []
    real = lightning.read_checkpoint
    monkeypatch.setattr(lightning, "read_checkpoint", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert LightningLayout().recognise(directory, sorted(os.listdir(directory)))
    assert len(calls) == 1


def test_plain_torch_ckpt_files_are_not_lightning(tmp_path, monkeypatch):
    import torch

    directory = tmp_path / "run"
    directory.mkdir()
    for i in range(4):
        torch.save({"model": {"w": torch.zeros(2)}, "epoch": i}, directory / f"model{i}.ckpt")
    from ckptctl.layouts import lightning

    calls = []
    real = lightning.read_checkpoint
    monkeypatch.setattr(lightning, "read_checkpoint", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert not LightningLayout().recognise(directory, sorted(os.listdir(directory)))
    assert len(calls) == lightning.MAX_SNIFFED  # recognition reads a bounded number of files
    assert not LightningLayout().recognise(tmp_path, ["run"])


def test_best_names_a_file_recorded_under_another_directory(tmp_path):
    directory = tmp_path / "moved"
    directory.mkdir()
    _lightning_file(directory / "epoch=0-step=4.ckpt", epoch=0, step=4, score=0.125)
    _lightning_file(directory / "epoch=1-step=8.ckpt", epoch=1, step=8, score=0.5, best="epoch=0-step=4.ckpt")
    units = _read(directory)[1]
    assert units["epoch=0-step=4.ckpt"].best and not units["epoch=1-step=8.ckpt"].best
    assert units["epoch=0-step=4.ckpt"].metrics["val_loss"] == pytest.approx(0.125)


def test_a_callback_without_monitor_still_records_its_best_but_no_monitor(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    _lightning_file(directory / "epoch=0-step=4.ckpt", epoch=0, step=4, score=0.5, monitor=None)
    unit = _read(directory)[1]["epoch=0-step=4.ckpt"]
    assert unit.monitor is None and unit.best and "val_loss" not in unit.metrics


# ---------------------------------------------------------------------- mixed directories


def test_mixed_native_and_lightning_directory(tmp_path):
    """ckptctl's own names go through layouts/catalog.py, which classifies the .ckpt files as other;
    the registry is consulted only when a directory has none of ckptctl's names (ops.foreign on the
    write side checks that first). Asked directly, this layout still sees only the .ckpt files."""
    from ckptctl.layouts import catalog
    from ckptctl.layouts.naming import Kind
    import torch

    directory = _copy("lightning_link", tmp_path)
    torch.save({"step": 300, "model": {"w": torch.zeros(2)}}, directory / "latest.pt")
    entries = {e.name: e for e in catalog.scan(directory)}
    assert entries["latest.pt"].kind is Kind.LATEST
    assert entries[E0].kind is Kind.OTHER and entries[E1].kind is Kind.OTHER
    assert isinstance(registry.detect(directory), LightningLayout)
    assert sorted(u.name for u in LightningLayout().units(directory)) == [E0, E1]


def test_an_empty_ckpt_directory_is_no_evidence_but_an_incomplete_unit(tmp_path):
    directory = tmp_path / "run"
    (directory / "epoch=0-step=4.ckpt").mkdir(parents=True)  # a sharded save that stopped after mkdir
    assert not LightningLayout().recognise(directory, sorted(os.listdir(directory)))  # nothing says Lightning
    (unit,) = LightningLayout().units(directory)
    assert unit.is_directory and not unit.complete and unit.missing == ["meta.pt"] and unit.step == 4
    (directory / "notes.ckpt").mkdir()  # a directory whose name says nothing and holds nothing: not a unit
    assert [u.name for u in LightningLayout().units(directory)] == ["epoch=0-step=4.ckpt"]
    assert not LightningLayout().recognise(tmp_path, [])


def test_plain_number_scores_are_read_and_absurd_ones_ignored(tmp_path):
    import torch

    directory = tmp_path / "run"
    directory.mkdir()
    for name, score, best in (("epoch=0-step=4.ckpt", 0.25, 10**400), ("epoch=1-step=8.ckpt", float("nan"), True)):
        torch.save({
            "epoch": int(name[6]), "global_step": int(name[13]), "state_dict": {},
            "callbacks": {"MyCheckpoint{}": {"monitor": "acc", "best_model_path": name, "current_score": score,
                                             "best_model_score": best, "best_k_models": {}}},
        }, directory / name)  # fmt: skip
    units = _read(directory)[1]
    first, second = units["epoch=0-step=4.ckpt"], units["epoch=1-step=8.ckpt"]
    assert first.monitor == "acc" and first.metrics == {"current_score": 0.25, "acc": 0.25}  # no 10**400, no crash
    assert second.metrics == {} and second.best and not first.best  # nan and a bool are not numbers
