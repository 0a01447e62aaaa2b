"""Retention policy: protected kinds, last-N per kind, OR'ed keep rules with reasons, refusal, stale temps, durations."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptctl.layouts.catalog import scan
from ckptctl.errors import BadInputError
from ckptctl.ops.retention import (
    Policy,
    format_duration,
    freed_bytes,
    parse_duration,
    plan_retention,
    refuse_if_removes_everything,
    stale_temps,
)
from ckptctl.ops.quickcheck import problem as quick_problem
from tests.factories import plausible_bytes, touch_checkpoints, touch_files, write_checkpoint

PROTECTED = ["latest.pt", "latest_backup.pt", "best_model.pt", "best_model_backup.pt", "best_model_previous.pt",
             "epoch_00000.pt", "epoch_00001.pt", "rolling_last_backup.pt"]  # fmt: skip


def rolling(*steps: int) -> list[str]:
    return [f"rolling_step_{s:06d}.pt" for s in steps]


def plan_for(directory, **policy):
    return plan_retention(scan(directory), Policy(**policy))


def names(decisions) -> list[str]:
    return [d.entry.name for d in decisions]


def reasons(plan) -> dict[str, list[str]]:
    return {d.entry.name: d.reasons for d in plan.keep}


def test_default_policy_keeps_last_ten_rolling_by_step_never_protected(tmp_path):
    # step 9 written last (newest mtime) must still be the oldest: order is by step, never mtime
    touch_checkpoints(tmp_path, PROTECTED + rolling(*range(10, 130, 10)))
    touch_checkpoints(tmp_path, rolling(9), mtime=time.time() + 1000)
    plan = plan_for(tmp_path)
    assert names(plan.remove) == rolling(9, 10, 20)
    kept = reasons(plan)
    assert all(kept[n][0].startswith("protected") for n in PROTECTED)
    assert kept["best_model.pt"] == ["protected: best"]
    assert kept["rolling_step_000120.pt"] == ["last 10 rolling"]


def test_emergency_has_its_own_count_ordered_by_step_then_timestamp(tmp_path):
    emergency = ["emergency_step_000100_20260101_120000.pt", "emergency_step_000100_20260101_130000.pt",
                 "emergency_step_000050_20270101_000000.pt"]  # fmt: skip
    touch_checkpoints(tmp_path, emergency + rolling(1, 2))
    plan = plan_for(tmp_path, keep_rolling=5, keep_emergency=2)
    assert names(plan.remove) == ["emergency_step_000050_20270101_000000.pt"]
    assert reasons(plan)["emergency_step_000100_20260101_130000.pt"] == ["last 2 emergency"]


def test_fewer_than_n_keeps_all(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    assert plan_for(tmp_path, keep_rolling=10).remove == []


def test_keep_every_keeps_multiples_with_reason(tmp_path):
    touch_checkpoints(tmp_path, ["latest.pt"] + rolling(2500, 5000, 7500, 10000, 12500, 13000))
    plan = plan_for(tmp_path, keep_rolling=1, keep_every=5000)
    assert names(plan.remove) == rolling(2500, 7500, 12500)
    kept = reasons(plan)
    assert kept["rolling_step_005000.pt"] == ["every 5000 steps"]
    assert kept["rolling_step_013000.pt"] == ["last 1 rolling"]


def test_rules_are_ored_and_every_matching_rule_is_a_reason(tmp_path):
    touch_checkpoints(tmp_path, rolling(1000, 2000))
    plan = plan_for(tmp_path, keep_rolling=1, keep_every=1000)
    assert reasons(plan)["rolling_step_002000.pt"] == ["last 1 rolling", "every 1000 steps"]
    assert reasons(plan)["rolling_step_001000.pt"] == ["every 1000 steps"]


def test_keep_within_measures_from_newest_checkpoint_not_now(tmp_path):
    newest = time.time() - 90 * 86400  # a run that stopped three months ago
    touch_checkpoints(tmp_path, rolling(1), mtime=newest - 10 * 86400)
    touch_checkpoints(tmp_path, rolling(2), mtime=newest - 6 * 86400)
    touch_checkpoints(tmp_path, rolling(3), mtime=newest)
    plan = plan_for(tmp_path, keep_rolling=0, keep_within=timedelta(days=7))
    assert names(plan.remove) == rolling(1)
    assert reasons(plan)["rolling_step_000002.pt"] == ["within 7d of newest"]


def test_keep_within_uses_emergency_name_timestamp(tmp_path):
    newest = datetime(2026, 5, 1, 12, 0, 0)
    old_name = "emergency_step_000001_20260420_120000.pt"
    new_name = f"emergency_step_000002_{newest:%Y%m%d_%H%M%S}.pt"
    # mtimes say the opposite of the names: the name's timestamp wins
    touch_checkpoints(tmp_path, [old_name], mtime=newest.timestamp())
    touch_checkpoints(tmp_path, [new_name], mtime=newest.timestamp() - 30 * 86400)
    plan = plan_for(tmp_path, keep_emergency=0, keep_within=timedelta(days=3))
    assert names(plan.remove) == [old_name]


def test_keep_best_k_reads_val_loss_among_rolling(tmp_path):
    losses = {100: 0.9, 200: 0.3, 300: 0.5, 400: 0.3, 500: 0.8}
    for step, loss in losses.items():
        write_checkpoint(tmp_path / rolling(step)[0], step=step, val_loss=loss, hidden=2)
    (tmp_path / rolling(600)[0]).write_bytes(b"garbage, not a checkpoint")
    plan = plan_for(tmp_path, keep_rolling=1, keep_best_k=2)
    kept = reasons(plan)
    # tie at 0.3: both 200 and 400 are best; 300 (0.5) is not; the unreadable newest is not counted
    # as "last 1" (500 is) and is kept as damaged
    assert kept["rolling_step_000200.pt"] == ["best 2 by val_loss"]
    assert kept["rolling_step_000400.pt"] == ["best 2 by val_loss"]
    assert kept["rolling_step_000500.pt"] == ["last 1 rolling"]
    assert kept["rolling_step_000600.pt"] == ["damaged (not a zip or pickle): not counted, kept"]
    assert names(plan.remove) == rolling(100, 300)


def test_best_k_tie_prefers_newer_step(tmp_path):
    for step in (100, 200, 300):
        write_checkpoint(tmp_path / rolling(step)[0], step=step, val_loss=0.5, hidden=2)
    plan = plan_for(tmp_path, keep_rolling=0, keep_best_k=1)
    assert names(plan.keep) == rolling(300)


def test_unknown_and_partial_files_are_ignored_never_removed(tmp_path):
    strays = ["notes.txt", "rolling_step_12.pt", "model.pth", ".ckptctl.lock", "epoch_1.pt"]
    touch_checkpoints(tmp_path, strays + rolling(1, 2))
    touch_files(tmp_path, ["latest.pt.1.ab.tmp"])
    plan = plan_for(tmp_path, keep_rolling=1)
    assert sorted(e.name for e in plan.ignored) == sorted(strays + ["latest.pt.1.ab.tmp"])
    assert names(plan.remove) == rolling(1)
    assert plan.stale_temp == []  # no threshold in the policy: temps left alone


def test_stale_temps_by_age_only_with_a_threshold(tmp_path):
    now = time.time()
    touch_files(tmp_path, ["old.pt.1.aa.tmp"], mtime=now - 7200)
    touch_files(tmp_path, ["fresh.pt.2.bb.tmp"], mtime=now - 60)
    plan = plan_retention(scan(tmp_path), Policy(stale_temp_after=timedelta(hours=1)), now=now)
    assert [e.name for e in plan.stale_temp] == ["old.pt.1.aa.tmp"]
    assert [e.name for e in plan.ignored] == ["fresh.pt.2.bb.tmp"]
    assert [e.name for e in plan.deletions] == ["old.pt.1.aa.tmp"]
    everything = stale_temps(scan(tmp_path), timedelta(0), now=now)
    assert sorted(e.name for e in everything) == ["fresh.pt.2.bb.tmp", "old.pt.1.aa.tmp"]


def test_freed_bytes_counts_hard_linked_inode_once_and_only_when_all_names_go(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3), size=1000)
    os.link(tmp_path / rolling(3)[0], tmp_path / "latest.pt")  # latest shares step 3's blocks
    os.link(tmp_path / rolling(1)[0], tmp_path / "extra_link.pt")
    entries = {e.name: e for e in scan(tmp_path)}
    assert freed_bytes([entries[n] for n in rolling(2)]) == 1000
    assert freed_bytes([entries[n] for n in rolling(3)]) == 0  # latest.pt still holds it
    assert freed_bytes([entries[n] for n in rolling(1) + ["extra_link.pt"]]) == 1000
    plan = plan_for(tmp_path, keep_rolling=0)
    assert names(plan.remove) == rolling(1, 2, 3)
    assert plan.freed_bytes == 1000  # only step 2: steps 1 and 3 keep another name


def test_refuses_a_plan_that_removes_every_checkpoint(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2) + ["notes.txt"])
    plan = plan_for(tmp_path, keep_rolling=0)
    assert plan.removes_everything
    with pytest.raises(BadInputError, match="would remove all 2 checkpoints"):
        refuse_if_removes_everything(plan)


def test_removing_all_rolling_is_allowed_while_another_checkpoint_stays(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2) + ["latest.pt"])
    plan = plan_for(tmp_path, keep_rolling=0)
    assert not plan.removes_everything
    refuse_if_removes_everything(plan)  # does not raise
    assert names(plan.remove) == rolling(1, 2)


def test_an_empty_plan_is_not_refused(tmp_path):
    touch_checkpoints(tmp_path, ["notes.txt"])
    plan = plan_for(tmp_path, keep_rolling=0)
    assert not plan.removes_everything and plan.remove == []


def test_manager_call_shape_is_unchanged(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3) + ["emergency_step_000001_20260101_000000.pt", "old.pt.1.a.tmp"], mtime=0)
    plan = plan_retention(scan(tmp_path), Policy(keep_rolling=2, keep_emergency=1))
    assert names(plan.remove) == rolling(1)
    assert plan.stale_temp == []  # the manager's cleanup never deletes temp files through retention


@pytest.mark.parametrize(
    "kwargs",
    [{"keep_rolling": -1}, {"keep_emergency": -3}, {"keep_best_k": -1}, {"keep_every": 0}, {"keep_every": -5},
     {"keep_within": timedelta(days=-1)}, {"stale_temp_after": timedelta(seconds=-1)}, {"keep_rolling": 1.5},
     {"keep_rolling": True}],
)  # fmt: skip
def test_policy_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        Policy(**kwargs)


@pytest.mark.parametrize(
    "text, expected",
    [("7d", timedelta(days=7)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)), ("90s", timedelta(seconds=90)),
     ("2w", timedelta(weeks=2)), ("1d12h", timedelta(days=1, hours=12)), (" 1.5h ", timedelta(minutes=90)), ("0s", timedelta(0)),
     ("7D", timedelta(days=7))],
)  # fmt: skip
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "7x", "d7", "-1d", "7 days", "1d-2h", "h"])
def test_parse_duration_rejects(text):
    with pytest.raises(BadInputError, match="bad duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["7d", "12h", "30m", "1d12h", "2d3h4m5s", "0s"])
def test_format_duration_round_trips(text):
    assert format_duration(parse_duration(text)) == text


# --- issue 12: pointers protect their targets; damaged files never count as the newest -------------


def test_symlinked_latest_and_best_protect_their_rolling_targets(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3, 4, 5))
    os.symlink(rolling(2)[0], tmp_path / "latest.pt")
    os.symlink(rolling(1)[0], tmp_path / "best_model.pt")
    os.symlink(str(tmp_path / rolling(1)[0]), tmp_path / "best_model_backup.pt")  # absolute target
    plan = plan_for(tmp_path, keep_rolling=1)
    assert names(plan.remove) == rolling(3, 4)
    kept = reasons(plan)
    assert kept[rolling(2)[0]] == ["latest.pt points here"]
    assert kept[rolling(1)[0]] == ["best_model.pt points here"]
    assert kept["latest.pt"] == ["protected: latest"]


def test_a_chain_of_links_protects_every_hop_in_the_directory(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    os.symlink(rolling(1)[0], tmp_path / rolling(2)[0].replace("2", "7"))  # rolling_step_000007.pt -> step 1
    os.unlink(tmp_path / rolling(2)[0])
    os.symlink("rolling_step_000007.pt", tmp_path / "rolling_last_backup.pt")
    plan = plan_for(tmp_path, keep_rolling=1)  # the last 1 is step 7 (a link), step 3 goes
    assert names(plan.remove) == rolling(3)
    assert reasons(plan)[rolling(1)[0]] == ["rolling_last_backup.pt points here"]


def test_a_pointer_outside_the_directory_protects_nothing_here(tmp_path):
    outside = tmp_path / "elsewhere"
    touch_checkpoints(outside, rolling(1))
    run = tmp_path / "run"
    touch_checkpoints(run, rolling(1, 2, 3))
    os.symlink(outside / rolling(1)[0], run / "latest.pt")  # same name, different directory
    plan = plan_for(run, keep_rolling=1)
    assert names(plan.remove) == rolling(1, 2)
    assert all(d.entry.path.parent == run for d in plan.remove)


def test_removing_a_hard_link_of_latest_is_noted_as_keeping_the_data(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    os.link(tmp_path / rolling(1)[0], tmp_path / "latest.pt")
    plan = plan_for(tmp_path, keep_rolling=1)
    removed = {d.entry.name: d for d in plan.remove}
    assert set(removed) == set(rolling(1, 2))
    assert removed[rolling(1)[0]].notes == ["hard link of latest.pt: its data stays"]
    assert removed[rolling(2)[0]].notes == []


def test_empty_high_step_files_never_count_as_the_newest(tmp_path):
    write_checkpoint(tmp_path / rolling(100)[0], step=100, hidden=2)
    write_checkpoint(tmp_path / rolling(200)[0], step=200, hidden=2)
    write_checkpoint(tmp_path / rolling(300)[0], step=300, hidden=2)
    touch_files(tmp_path, rolling(999998, 999999))  # empty
    plan = plan_for(tmp_path, keep_rolling=2)
    assert names(plan.remove) == rolling(100)
    kept = reasons(plan)
    assert kept[rolling(200)[0]] == kept[rolling(300)[0]] == ["last 2 rolling"]
    assert kept[rolling(999999)[0]] == ["damaged (empty): not counted, kept"]
    assert [d.damage for d in plan.damaged] == ["empty", "empty"]
    with_removal = plan_for(tmp_path, keep_rolling=2, remove_damaged=True)
    assert names(with_removal.remove) == rolling(100, 999998, 999999)
    assert {d.entry.name: d.notes for d in with_removal.remove}[rolling(999999)[0]] == ["damaged (empty)"]


def test_truncated_files_are_damaged_and_the_check_stops_at_n_valid(tmp_path):
    for step in (1, 2, 3, 4):
        write_checkpoint(tmp_path / rolling(step)[0], step=step, hidden=2)
    data = (tmp_path / rolling(4)[0]).read_bytes()
    (tmp_path / rolling(5)[0]).write_bytes(data[: len(data) // 2])  # a save cut short
    checked: list[str] = []

    def check(entry):
        checked.append(entry.name)
        return quick_problem(entry)

    plan = plan_retention(scan(tmp_path), Policy(keep_rolling=2), check=check)
    assert checked == rolling(5, 4, 3)  # newest first, stops once two valid were found
    assert reasons(plan)[rolling(5)[0]] == ["damaged (truncated: zip end record missing): not counted, kept"]
    assert names(plan.remove) == rolling(1, 2)


def test_removing_only_damaged_files_is_not_refused_but_removing_all_valid_is(tmp_path):
    touch_files(tmp_path, rolling(7, 8))
    plan = plan_for(tmp_path, keep_rolling=1, remove_damaged=True)
    assert names(plan.remove) == rolling(7, 8) and not plan.removes_everything
    touch_checkpoints(tmp_path, rolling(1))
    plan = plan_for(tmp_path, keep_rolling=0, remove_damaged=True)
    assert plan.removes_everything  # the one valid file would go too


def test_replaced_records_are_removed_past_their_age_only_when_the_policy_says(tmp_path):
    now = datetime(2026, 6, 10, 12, 0, 0)
    old, young = "latest.pt.replaced-20260601_120000", "best_model.pt.replaced-20260609_120000-1"
    touch_checkpoints(tmp_path, rolling(1) + [old, young])
    manager_like = plan_retention(scan(tmp_path), Policy(), now=now.timestamp())
    assert names(manager_like.remove) == [] and {e.name for e in manager_like.ignored} == {old, young}
    plan = plan_retention(scan(tmp_path), Policy(replaced_after=timedelta(days=7)), now=now.timestamp())
    assert names(plan.remove) == [old]
    assert plan.remove[0].notes == ["replaced by restore 9d ago"]
    assert reasons(plan)[young] == ["replaced by restore 1d ago (kept 7d)"]
    assert not plan.removes_everything  # records are not checkpoints


# property: random directories with symlink pointers and damaged files

ALL_POINTERS = ["latest.pt", "latest_backup.pt", "best_model.pt", "best_model_backup.pt", "best_model_previous.pt",
                "rolling_last_backup.pt", "epoch_00003.pt", "my_link.pt"]  # fmt: skip

layouts = st.fixed_dictionaries({
    "steps": st.dictionaries(st.integers(0, 60), st.sampled_from(["ok", "ok", "ok", "empty", "truncated", "zeros"]),
                             max_size=12),
    "pointers": st.dictionaries(st.sampled_from(ALL_POINTERS), st.integers(0, 70), max_size=4),
    "chained": st.booleans(),
})  # fmt: skip


@settings(max_examples=int(os.environ.get("CKPTCTL_FUZZ_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(layout=layouts, keep=st.integers(0, 5), remove_damaged=st.booleans())
def test_property_pointer_targets_stay_and_damaged_files_never_displace_valid_ones(layout, keep, remove_damaged):
    good = plausible_bytes(200)
    content = {"ok": good, "empty": b"", "truncated": good[:150], "zeros": b"\0" * 200}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for step, state in layout["steps"].items():
            (directory / rolling(step)[0]).write_bytes(content[state])
        for pointer, step in layout["pointers"].items():  # a step that may not exist: a dangling pointer
            os.symlink(rolling(step)[0], directory / pointer)
        if layout["chained"] and layout["pointers"]:
            os.symlink(next(iter(layout["pointers"])), directory / "latest_chain.pt")
        plan = plan_retention(scan(directory, broken_links=True), Policy(keep_rolling=keep, remove_damaged=remove_damaged))
        removed = {d.entry.name for d in plan.remove}
        targets = {rolling(step)[0] for step in layout["pointers"].values()}
        assert not removed & targets  # nothing a pointer points at is removed
        valid = sorted(step for step, state in layout["steps"].items() if state == "ok")
        last_n = {d.entry.name for d in plan.keep if f"last {keep} rolling" in d.reasons}
        assert last_n == ({rolling(step)[0] for step in valid[max(0, len(valid) - keep) :]} if keep else set())
        newest_valid = valid[-keep] if keep and len(valid) >= keep else -1
        for step, state in layout["steps"].items():
            name = rolling(step)[0]
            if state != "ok" and step > newest_valid and keep:  # met while looking for the N newest
                assert (name in removed) == (remove_damaged and name not in targets)


def test_manager_retention_keeps_a_symlinked_pointer_target_and_counts_only_valid_files(tmp_path):
    from ckptctl.training.manager import CheckpointManager
    from tests.factories import make_state

    mgr = CheckpointManager(tmp_path, keep_last_n=2, monitor_every=0)
    mgr.save(make_state(step=1), step=1)
    os.symlink(rolling(1)[0], tmp_path / "best_model.pt")  # a pointer made by hand (or by another tool)
    touch_files(tmp_path, rolling(999999))  # an empty file named above every real step
    for step in (2, 3, 4):
        mgr.save(make_state(step=step), step=step)
    present = {p.name for p in tmp_path.iterdir()}
    assert rolling(1)[0] in present  # best_model.pt does not dangle
    assert set(rolling(3, 4, 999999)) <= present  # the two newest valid saves are kept, the empty file too
    assert rolling(2)[0] not in present


def test_a_replaced_record_link_is_history_not_a_pointer(tmp_path):
    touch_checkpoints(tmp_path, rolling(1, 2, 3))
    os.symlink(rolling(1)[0], tmp_path / "latest.pt.replaced-20260101_000000")  # what restore re-pointed away from
    os.symlink(rolling(3)[0], tmp_path / "latest.pt")
    plan = plan_for(tmp_path, keep_rolling=1)
    assert names(plan.remove) == rolling(1, 2)
