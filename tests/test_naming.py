"""The filename grammar: every name of the layout parses and formats back, anything else is `other`."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckptctl.layouts import naming
from ckptctl.layouts.naming import KIND_ORDER, PATTERNS, Kind, format_name, parse, sort_key

steps = st.integers(min_value=0, max_value=10**12)
timestamps = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)
FIXED = [Kind.LATEST, Kind.LATEST_BACKUP, Kind.ROLLING_BACKUP, Kind.BEST, Kind.BEST_BACKUP, Kind.BEST_PREVIOUS]


@pytest.mark.parametrize(
    ("name", "kind", "step", "epoch"),
    [
        ("latest.pt", Kind.LATEST, None, None),
        ("latest_backup.pt", Kind.LATEST_BACKUP, None, None),
        ("rolling_step_000100.pt", Kind.ROLLING, 100, None),
        ("rolling_last_backup.pt", Kind.ROLLING_BACKUP, None, None),
        ("best_model.pt", Kind.BEST, None, None),
        ("best_model_backup.pt", Kind.BEST_BACKUP, None, None),
        ("best_model_previous.pt", Kind.BEST_PREVIOUS, None, None),
        ("epoch_00003.pt", Kind.EPOCH, None, 3),
    ],
)
def test_every_layout_name_parses(name, kind, step, epoch):
    parsed = parse(name)
    assert (parsed.kind, parsed.step, parsed.epoch) == (kind, step, epoch)
    assert parsed.is_checkpoint


def test_emergency_name_carries_step_and_timestamp():
    parsed = parse("emergency_step_000250_20261101_120030.pt")
    assert parsed.kind is Kind.EMERGENCY
    assert parsed.step == 250
    assert parsed.timestamp == datetime(2026, 11, 1, 12, 0, 30)


@given(step=steps)
def test_rolling_round_trip(step):
    name = format_name(Kind.ROLLING, step=step)
    assert parse(name).kind is Kind.ROLLING and parse(name).step == step
    assert format_name(Kind.ROLLING, step=parse(name).step) == name


@given(step=steps, when=timestamps)
def test_emergency_round_trip(step, when):
    name = format_name(Kind.EMERGENCY, step=step, timestamp=when)
    parsed = parse(name)
    assert (parsed.kind, parsed.step, parsed.timestamp) == (Kind.EMERGENCY, step, when)
    assert format_name(parsed.kind, step=parsed.step, timestamp=parsed.timestamp) == name


@given(epoch=steps)
def test_epoch_round_trip(epoch):
    parsed = parse(format_name(Kind.EPOCH, epoch=epoch))
    assert (parsed.kind, parsed.epoch) == (Kind.EPOCH, epoch)


@pytest.mark.parametrize("kind", FIXED)
def test_fixed_names_round_trip(kind):
    assert parse(format_name(kind)).kind is kind


@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789.", max_size=40))
def test_parse_then_format_is_identity_for_canonical_names(name):
    """Whatever parses as a checkpoint formats back to the same name, unless its number was padded wider."""
    parsed = parse(name)
    if not parsed.is_checkpoint:
        return
    formatted = format_name(parsed.kind, step=parsed.step, epoch=parsed.epoch, timestamp=parsed.timestamp)
    again = parse(formatted)
    assert (again.kind, again.step, again.epoch, again.timestamp) == (parsed.kind, parsed.step, parsed.epoch, parsed.timestamp)
    assert formatted == name or len(formatted) < len(name)  # only surplus leading zeros are dropped


def test_steps_wider_than_the_padding():
    assert format_name(Kind.ROLLING, step=12_345_678) == "rolling_step_12345678.pt"
    assert parse("rolling_step_12345678.pt").step == 12_345_678
    assert parse("epoch_1234567.pt").epoch == 1_234_567
    assert parse("emergency_step_1234567_20260101_000000.pt").step == 1_234_567


def test_extra_leading_zeros_still_parse():
    assert parse("rolling_step_0000000042.pt").step == 42


@pytest.mark.parametrize(
    "name", ["latest.pt.tmp", "rolling_step_000100.pt.tmp", "anything.tmp", ".latest.pt.abc123.tmp"]
)
def test_tmp_files_are_partial_writes(name):
    parsed = parse(name)
    assert parsed.kind is Kind.PARTIAL
    assert not parsed.is_checkpoint


@pytest.mark.parametrize(
    "name",
    [
        "model.pt", "latest.pth", "latest.pt.bak", "Latest.pt", "rolling_step_12345.pt",  # 5 digits: too narrow
        "rolling_step_-00001.pt", "rolling_step_00010a.pt", "epoch_0001.pt", "epoch_00001.ckpt",
        "emergency_step_000001_20261301_000000.pt",  # month 13
        "emergency_step_000001_2026010_000000.pt", "emergency_step_000001.pt", "best_model_old.pt",
        "epoch=1-step=10.ckpt", "checkpoint-500", "", "notes.txt", "rolling_step_000100.pt ",
    ],
)  # fmt: skip
def test_anything_else_is_other(name):
    parsed = parse(name)
    assert parsed.kind is Kind.OTHER
    assert parsed.step is None and parsed.epoch is None


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [(Kind.ROLLING, {}), (Kind.EMERGENCY, {"step": 1}), (Kind.EPOCH, {}), (Kind.ROLLING, {"step": -1}),
     (Kind.PARTIAL, {}), (Kind.OTHER, {})],
)  # fmt: skip
def test_format_name_refuses_incomplete_requests(kind, kwargs):
    with pytest.raises(ValueError):
        format_name(kind, **kwargs)


def test_every_pattern_kind_is_ordered_and_grouped():
    for pattern in PATTERNS:
        assert pattern.kind in KIND_ORDER
        assert pattern.kind in naming.GROUP_OF


def test_sort_key_orders_by_kind_then_step_then_timestamp_never_mtime():
    names = [
        "epoch_00002.pt", "rolling_step_000200.pt", "emergency_step_000100_20260102_000000.pt", "latest.pt",
        "rolling_step_000010.pt", "emergency_step_000100_20260101_000000.pt", "best_model.pt", "epoch_00001.pt",
        "rolling_step_1000000.pt",
    ]  # fmt: skip
    ordered = [p.name for p in sorted((parse(n) for n in names), key=sort_key)]
    assert ordered == [
        "latest.pt", "best_model.pt", "rolling_step_000010.pt", "rolling_step_000200.pt", "rolling_step_1000000.pt",
        "emergency_step_000100_20260101_000000.pt", "emergency_step_000100_20260102_000000.pt",
        "epoch_00001.pt", "epoch_00002.pt",
    ]  # fmt: skip
