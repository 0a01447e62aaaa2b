"""list_checkpoints(): the rows, JSON contract, --kind/--sort, trend, and damaged files alongside good ones."""

from __future__ import annotations

import json
import random

import pytest

from ckptctl.errors import BadInputError
from ckptctl.ops.listing import SORT_KEYS, list_checkpoints
from tests import hostile
from tests.factories import make_state, write_checkpoint

JSON_KEYS = {"name", "path", "kind", "step", "epoch", "val_loss", "train_loss", "size_bytes", "saved_at", "status", "checked", "error",
             "link", "replaced_at", "layout", "complete", "missing", "best", "metrics", "monitor", "protected", "notes"}
KINDS = {"latest", "latest_backup", "rolling", "rolling_backup", "emergency", "best", "best_backup", "best_previous",
         "epoch", "replaced", "other"}  # fmt: skip
STATUSES = {"ok", "unreadable", "unsafe", "partial", "dangling", "loop"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The layout plus every kind of damage, a hostile file, a partial write and foreign files."""
    from tests.factories import populate_layout

    d = populate_layout(tmp_path_factory.mktemp("listing") / "ckpts")
    good = (d / "rolling_step_000300.pt").read_bytes()
    (d / "rolling_step_000400.pt").write_bytes(good[: len(good) // 2])  # truncated
    (d / "rolling_step_000500.pt").write_bytes(b"")  # empty
    (d / "rolling_step_000600.pt").write_bytes(random.Random(0).randbytes(3000))  # random bytes
    (d / "rolling_step_000700.pt").write_bytes(good)
    hostile.flip_byte_in_pickle(d / "rolling_step_000700.pt", 0)  # flipped byte
    hostile.drop_data_pkl(d / "rolling_step_000300.pt", d / "rolling_step_000800.pt")  # missing data.pkl
    hostile.two_prefixes(d / "rolling_step_000300.pt", d / "rolling_step_000900.pt")  # two top-level folders
    hostile.torch_zip(d / "epoch_00009.pt", hostile.system_global(d.parent / "pwned"))
    hostile.legacy_file(d / "epoch_00010.pt", hostile.exec_builtin(d.parent / "pwned"))
    (d / "latest.pt.tmp").write_bytes(good[:100])
    (d / "model_final.pt").write_bytes(good)
    (d / "train.log").write_text("not listed")
    return d


def test_json_contract(mixed):
    doc = list_checkpoints(mixed).to_json()
    assert set(doc) == {"directory", "total_bytes", "checked", "checkpoints", "layout", "layout_title", "monitor",
                        "shown_bytes", "shown_apparent_bytes", "size_on_disk"}  # fmt: skip
    assert json.loads(json.dumps(doc)) == doc
    for row in doc["checkpoints"]:
        assert set(row) == JSON_KEYS
        assert row["kind"] in KINDS and row["status"] in STATUSES
        assert (row["error"] is None) == (row["status"] in ("ok", "partial"))
    names = [r["name"] for r in doc["checkpoints"]]
    assert "train.log" not in names and "model_final.pt" in names and "latest.pt.tmp" in names


def test_damaged_files_are_listed_with_a_status_and_the_rest_still_listed(mixed):
    rows = {r["name"]: r for r in list_checkpoints(mixed).to_json()["checkpoints"]}
    for step in (400, 500, 600, 700, 800, 900):
        row = rows[f"rolling_step_000{step}.pt"]
        assert row["status"] == ("unsafe" if step == 900 else "unreadable") and row["error"], row
        assert row["step"] == step and row["val_loss"] is None
    assert rows["rolling_step_000900.pt"]["error"].startswith("ambiguous archive (records do not share one top-level")
    assert rows["rolling_step_000500.pt"]["error"] == "empty file"
    assert "data.pkl" in rows["rolling_step_000800.pt"]["error"]
    assert "top-level folder" in rows["rolling_step_000900.pt"]["error"]
    assert rows["epoch_00009.pt"]["status"] == "unsafe" and "os.system" in rows["epoch_00009.pt"]["error"]
    assert rows["epoch_00010.pt"]["status"] == "unsafe" and "builtins.exec" in rows["epoch_00010.pt"]["error"]
    assert rows["latest.pt.tmp"]["status"] == "partial" and rows["latest.pt.tmp"]["kind"] == "other"
    assert rows["model_final.pt"]["kind"] == "other" and rows["model_final.pt"]["status"] == "ok"
    good = [r for r in rows.values() if r["status"] == "ok"]
    assert len(good) == 13 and all(r["val_loss"] is not None for r in good)
    assert not (mixed.parent / "pwned").exists()


def test_row_values(ckpt_dir):
    rows = {r["name"]: r for r in list_checkpoints(ckpt_dir).to_json()["checkpoints"]}
    latest = rows["latest.pt"]
    assert (latest["kind"], latest["step"], latest["epoch"], latest["val_loss"], latest["train_loss"]) == (
        "latest", 300, 2, pytest.approx(0.8), pytest.approx(0.6))  # fmt: skip
    assert latest["saved_at"].startswith("2026-11-01T12:00:00")
    assert latest["size_bytes"] == (ckpt_dir / "latest.pt").stat().st_size
    assert rows["epoch_00001.pt"]["epoch"] == 1 and rows["epoch_00001.pt"]["kind"] == "epoch"
    assert {r["kind"] for r in rows.values()} == KINDS - {"other", "replaced"}


def test_total_counts_hard_links_once(tmp_path):
    d = tmp_path / "d"
    write_checkpoint(d / "best_model.pt")
    (d / "best_model_backup.pt").hardlink_to(d / "best_model.pt")
    doc = list_checkpoints(d).to_json()
    assert doc["total_bytes"] == (d / "best_model.pt").stat().st_size
    assert len(doc["checkpoints"]) == 2


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [(["best"], {"best_model.pt", "best_model_backup.pt", "best_model_previous.pt"}),
     (["best_backup"], {"best_model_backup.pt"}),
     (["epoch", "emergency"], {"epoch_00000.pt", "epoch_00001.pt", "emergency_step_000250_20261101_120000.pt"}),
     (["latest"], {"latest.pt", "latest_backup.pt"})],
)  # fmt: skip
def test_kind_filter_by_kind_or_group(ckpt_dir, kinds, expected):
    assert {r.entry.name for r in list_checkpoints(ckpt_dir, kinds).rows} == expected


def test_unknown_kind_and_sort_are_bad_input(ckpt_dir):
    with pytest.raises(BadInputError, match="unknown kind 'bogus'"):
        list_checkpoints(ckpt_dir, ["bogus"])
    with pytest.raises(BadInputError, match="unknown sort key"):
        list_checkpoints(ckpt_dir, sort="mtime")


def test_sort_orders(ckpt_dir):
    def names(sort):
        return [r.entry.name for r in list_checkpoints(ckpt_dir, sort=sort).rows]

    by_step = [r.entry.effective_step for r in list_checkpoints(ckpt_dir, sort="step").rows]
    assert by_step == sorted(by_step)
    assert names("name") == sorted(names("name"))
    sizes = [r.entry.size_bytes for r in list_checkpoints(ckpt_dir, sort="size").rows]
    assert sizes == sorted(sizes, reverse=True)
    losses = [r.entry.metadata.val_loss for r in list_checkpoints(ckpt_dir, sort="val_loss").rows]
    assert losses == sorted(losses)
    assert names("kind")[0] == "latest.pt" and names("kind")[-1] == "epoch_00001.pt"
    assert set(SORT_KEYS) == {"kind", "step", "name", "size", "time", "val_loss"}


def test_sort_by_time_uses_saved_time_not_mtime(tmp_path):
    d = tmp_path / "d"
    write_checkpoint(d / "epoch_00001.pt", make_state(timestamp="2026-01-02T00:00:00"))
    write_checkpoint(d / "epoch_00002.pt", make_state(timestamp="2026-01-01T00:00:00"))
    import os

    os.utime(d / "epoch_00001.pt", (1, 1))
    assert [r.entry.name for r in list_checkpoints(d, sort="time").rows] == ["epoch_00002.pt", "epoch_00001.pt"]


def test_val_loss_trend_from_rolling_epoch_emergency_by_step(ckpt_dir):
    trend = list_checkpoints(ckpt_dir).val_loss_trend()
    assert [s for s, _ in trend] == [100, 200, 250, 300]
    assert [round(v, 2) for _, v in trend] == [1.0, 0.9, 0.85, 0.8]


def test_directory_errors_propagate(tmp_path):
    with pytest.raises(BadInputError, match="empty directory"):
        list_checkpoints(tmp_path)
    with pytest.raises(BadInputError, match="no such directory"):
        list_checkpoints(tmp_path / "absent")
