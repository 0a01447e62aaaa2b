"""Issue #14 output: ``list`` as one table with group rules, columns that give way on a narrow
terminal, one "size on disk" for ``list`` and ``du``, and ckptctl's own files hidden unless --all."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from ckptctl.cli import du_cmd, list_cmd, render
from ckptctl.cli.app import app
from ckptctl.ops.usage import OWN_NAMES
from tests.procs import run_on_pty

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
GROUPS = ("latest", "best", "rolling", "emergency", "epoch")


def run(*args: str):
    return runner.invoke(app, list(args))


def _terminal(monkeypatch, columns: int) -> None:
    monkeypatch.setattr(list_cmd, "stdout_is_terminal", lambda: True)
    monkeypatch.setattr(du_cmd, "stdout_is_terminal", lambda: True)
    for key in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("COLUMNS", str(columns))


def _rich(monkeypatch, columns: int, *args: str) -> list[str]:
    _terminal(monkeypatch, columns)
    result = run(*args)
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.stdout).splitlines()


def _header(lines: list[str]) -> list[str]:
    line = next(line for line in lines if line.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


@pytest.fixture
def own_dir(ckpt_dir, tmp_path):
    """The checkpoints plus ckptctl's own files (the lock, the demo's marker)."""
    d = tmp_path / "own"
    shutil.copytree(ckpt_dir, d, symlinks=True)
    (d / ".ckptctl.lock").write_text("")
    (d / ".ckptctl-demo").write_text("made by ckptctl demo\n" * 20)
    return d


# ------------------------------------------------------------------ one table with group rules


def test_list_is_one_table_with_a_rule_between_groups(ckpt_dir, monkeypatch):
    lines = _rich(monkeypatch, 100, "list", str(ckpt_dir))
    assert sum(line.startswith("┏") for line in lines) == 1  # one table (was one per group)
    assert sum(line.startswith("├") for line in lines) == len(GROUPS) - 1  # a rule between groups
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 12
    # title, 3 header lines, rows, rules, bottom border, footer (files + trend): nothing else
    assert len(lines) == 1 + 3 + 12 + (len(GROUPS) - 1) + 1 + 2
    widths = {cell_len(line) for line in lines if line[0] in "┏┃┡│├└"}
    assert len(widths) == 1  # every group has the same column widths


def test_kind_column_names_each_group_once_when_wide(ckpt_dir, monkeypatch):
    lines = _rich(monkeypatch, 160, "list", str(ckpt_dir))
    assert _header(lines) == ["kind", "name", "step", "epoch", "val_loss", "size", "saved", "status"]
    kinds = [line.strip("│").split("│")[0].strip() for line in lines if line.startswith("│")]
    assert [k for k in kinds if k] == list(GROUPS)


def test_plain_report_stays_one_aligned_table(ckpt_dir):
    lines = run("list", str(ckpt_dir)).stdout.splitlines()
    assert lines[0].split() == ["name", "step", "epoch", "val_loss", "size", "saved", "status"]
    assert len(lines) == 1 + 12 + 2


# ------------------------------------------------------------------ narrow terminals


def _borderless(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a table without its box: columns two spaces apart, rules of ``─``."""
    start = next(i for i, line in enumerate(lines) if line.startswith("name "))
    body = []
    for line in lines[start + 1 :]:
        if set(line) <= {"─", " "}:
            continue
        if not line.startswith(" ") and "  " not in line:  # the footer
            break
        body.append(line)
    split = re.compile(r"\s{2,}")
    return split.split(lines[start].strip()), [split.split(line.strip()) for line in body if not line.startswith(" ")]


def test_at_60_columns_saved_and_epoch_give_way_then_the_box_then_names_are_cut_in_the_middle(ckpt_dir, monkeypatch):
    lines = _rich(monkeypatch, 60, "list", str(ckpt_dir))
    assert all(cell_len(line) <= 60 for line in lines), lines
    assert not any(line[:1] in ("┏", "┃", "│") for line in lines)  # decorations go before names
    header, rows = _borderless(lines)
    assert header == ["name", "step", "val_loss", "size", "status"]
    names = [row[0] for row in rows]
    assert len(names) == 12 and len(set(names)) == 12  # every row still tells which file it is
    assert "rolling_step_000300.pt" in names and "best_model_previous.pt" in names  # whole
    cut = [name for name in names if "…" in name]
    assert len(cut) == 1 and cut[0].startswith("emerg") and cut[0].endswith("120000.pt")  # its end is kept
    assert sum(set(line) <= {"─", " "} for line in lines) == 1 + len(GROUPS) - 1  # header rule + group rules


def test_at_40_columns_the_status_stays_and_names_stay_apart(ckpt_dir, monkeypatch):
    """Was: the status column squeezed to nothing and every rolling name cut to ``rolling…``."""
    lines = _rich(monkeypatch, 40, "list", str(ckpt_dir))
    assert all(cell_len(line) <= 40 for line in lines), lines
    header, rows = _borderless(lines)
    assert header[0] == "name" and header[-1] == "status" and "step" in header
    assert "size" not in header  # size gives way before the names are cut below 16 characters
    assert all(row[-1] == "ok" for row in rows)
    names = [row[0] for row in rows]
    assert len(set(names)) == len(names) == 12 and all(cell_len(name) >= 16 or "…" not in name for name in names)


def test_a_long_error_wraps_readably_on_a_narrow_terminal(ckpt_dir, monkeypatch, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(ckpt_dir, d, symlinks=True)
    (d / "rolling_step_000200.pt").write_bytes(b"PK" + b"\0" * 100)
    lines = _rich(monkeypatch, 60, "list", str(d))
    assert all(cell_len(line) <= 60 for line in lines), lines
    row = next(i for i, line in enumerate(lines) if "000200" in line)
    assert "unreadable:" in lines[row]  # not "unreadab" / "le:" in an 8-column status
    words = " ".join(line[line.index("unreadable:") if i == 0 else 0 :].strip() for i, line in
                     enumerate(lines[row : row + 6]) if i == 0 or line.startswith(" "))  # fmt: skip
    assert "unreadable:" in words and "truncated" in words or "not a" in words


def test_at_120_columns_everything_is_shown_whole(ckpt_dir, monkeypatch):
    lines = _rich(monkeypatch, 120, "list", str(ckpt_dir))
    assert all(cell_len(line) <= 120 for line in lines)
    header = _header(lines)
    assert {"name", "step", "epoch", "val_loss", "size", "saved", "status"} <= set(header)
    assert "…" not in "\n".join(lines)
    assert any("emergency_step_000250_20261101_120000.pt" in line for line in lines)


def test_fit_columns_drops_in_order_then_shrinks_the_name_last():
    headers = ["name", "step", "saved", "status"]
    rows = [["a" * 30, "1", "3 minutes ago", "unreadable: " + "x" * 30]]
    kept, limits = render.fit_columns(200, headers, rows, ("saved",), ("status", "name"))
    assert kept == [0, 1, 2, 3] and limits == {}
    kept, limits = render.fit_columns(70, headers, rows, ("saved",), ("status", "name"))
    assert kept == [0, 1, 3] and set(limits) == {3}  # saved gone, the status wraps, the name is whole
    kept, limits = render.fit_columns(40, headers, rows, ("saved",), ("status", "name"))
    assert kept == [0, 1, 3] and limits[3] == 8 and limits[0] < 30  # the name is cut only after the status


def test_fit_table_drops_columns_then_the_box_then_late_columns_then_cuts_the_name():
    headers = ["kind", "name", "step", "size", "status"]
    rows = [["rolling", "rolling_step_000220.pt", "220", "25.0 KiB", "ok"]]
    late = ("size", "step")
    assert render.fit_table(200, headers, rows, ("kind",), ("status", "name"), late) == ([0, 1, 2, 3, 4], {}, True)
    # 63 boxed with kind; 53 without it; 46 without the box
    assert render.fit_table(63, headers, rows, ("kind",), ("status", "name"), late) == ([0, 1, 2, 3, 4], {}, True)
    assert render.fit_table(53, headers, rows, ("kind",), ("status", "name"), late) == ([1, 2, 3, 4], {}, True)
    assert render.fit_table(52, headers, rows, ("kind",), ("status", "name"), late) == ([1, 2, 3, 4], {}, False)
    assert render.fit_table(46, headers, rows, ("kind",), ("status", "name"), late) == ([1, 2, 3, 4], {}, False)
    # the name could keep 16 of its 22 characters with every column: it is cut, nothing else goes
    assert render.fit_table(40, headers, rows, ("kind",), ("status", "name"), late) == ([1, 2, 3, 4], {1: 16}, False)
    # below that, size gives way before the name is cut under 16
    assert render.fit_table(30, headers, rows, ("kind",), ("status", "name"), late) == ([1, 2, 4], {1: 16}, False)


def test_fit_table_wraps_a_long_status_to_16_columns_before_cutting_the_name():
    headers = ["name", "step", "status"]
    rows = [["rolling_step_000200.pt", "200", "unreadable: truncated or not a zip: central directory missing"]]
    kept, limits, boxed = render.fit_table(60, headers, rows, (), ("status", "name"), ("step",))
    assert (kept, boxed) == ([0, 1, 2], False) and limits == {2: 30}
    kept, limits, boxed = render.fit_table(40, headers, rows, (), ("status", "name"), ("step",))
    assert limits == {2: 16, 0: 16} and kept == [0, 1, 2]  # step stays: the name keeps 16


@pytest.mark.parametrize(("name", "width", "expected"), [
    ("rolling_step_000220.pt", 30, "rolling_step_000220.pt"),
    ("rolling_step_000220.pt", 16, "rolli…_000220.pt"),
    ("emergency_step_000270_20261206_234550.pt", 26, "emergenc…0261206_234550.pt"),
    ("abc", 1, "…"),
])  # fmt: skip
def test_middle_cut_keeps_the_distinguishing_end(name, width, expected):
    assert render.middle_cut(name, width) == expected
    assert cell_len(render.middle_cut(name, width)) <= width


def test_middle_cut_counts_wide_characters():
    cut = render.middle_cut("模型" * 10 + ".pt", 12)
    assert cell_len(cut) <= 12 and cut.endswith(".pt") and "…" in cut


def test_du_share_bar_gives_way_first_at_60_columns(ckpt_dir, monkeypatch):
    wide = _rich(monkeypatch, 120, "du", str(ckpt_dir))
    assert _header(wide) == ["kind", "files", "size", "allocated", "linked", "share"]
    narrow = _rich(monkeypatch, 60, "du", str(ckpt_dir))
    assert all(cell_len(line) <= 60 for line in narrow), narrow
    assert _header(narrow) == ["kind", "files", "size", "allocated", "linked"]
    disk = [line for line in narrow if line.startswith("disk")]
    assert len(disk) <= 1 and all(cell_len(line) <= 60 for line in disk)


def test_list_on_a_real_pseudo_terminal_at_60_columns(ckpt_dir):
    env = {**os.environ, "COLUMNS": "60", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    code, out = run_on_pty([sys.executable, "-m", "ckptctl", "list", str(ckpt_dir)], env)
    assert code == 0
    text = ANSI.sub("", out.decode()).replace("\r\n", "\n")
    assert all(cell_len(line) <= 60 for line in text.splitlines()), text
    assert "saved" not in text and "─" * 20 in text  # saved gave way; the group rules are still drawn


# ------------------------------------------------------------------ one size on disk


def test_list_and_du_headline_the_same_size_on_disk(own_dir, monkeypatch):
    listed = json.loads(run("list", "--json", str(own_dir)).stdout)
    used = json.loads(run("du", "--json", str(own_dir)).stdout)
    assert listed["shown_bytes"] == used["on_disk_bytes"] == used["total"]["allocated_bytes"]
    assert listed["size_on_disk"] == used["size_on_disk"] == "on disk (allocated, hard links once)"
    blocks = {}
    for path in own_dir.iterdir():
        if path.name not in OWN_NAMES:
            info = path.stat()
            blocks[info.st_ino] = info.st_blocks * 512
    assert listed["shown_bytes"] == sum(blocks.values())  # hard links once
    figure = render.size(listed["shown_bytes"])
    assert f"{figure} on disk (allocated, hard links once)" in run("list", str(own_dir)).stdout
    assert f"Total: {figure} on disk (allocated, hard links once)" in run("du", str(own_dir)).stdout
    assert listed["total_bytes"] > 0 and "checkpoint_bytes" in used  # the old keys stay


def test_kind_footer_counts_only_the_rows_shown(ckpt_dir):
    doc = json.loads(run("list", "--json", "--kind", "best", str(ckpt_dir)).stdout)
    inodes = {(ckpt_dir / row["name"]).stat().st_ino: (ckpt_dir / row["name"]).stat() for row in doc["checkpoints"]}
    assert len(doc["checkpoints"]) == 3
    assert doc["shown_bytes"] == sum(info.st_blocks * 512 for info in inodes.values())
    assert doc["shown_apparent_bytes"] == sum(info.st_size for info in inodes.values())
    whole = json.loads(run("list", "--json", str(ckpt_dir)).stdout)
    assert doc["shown_bytes"] < whole["shown_bytes"]
    footer = run("list", "--kind", "best", str(ckpt_dir)).stdout.splitlines()[-1]
    assert footer.startswith(f"3 files, {render.size(doc['shown_bytes'])} on disk")


# ------------------------------------------------------------------ ckptctl's own files


def test_own_files_are_hidden_from_list_unless_all(own_dir, monkeypatch):
    names = {row["name"] for row in json.loads(run("list", "--json", str(own_dir)).stdout)["checkpoints"]}
    assert not names & OWN_NAMES and len(names) == 12
    rows = json.loads(run("list", "--json", "--all", str(own_dir)).stdout)["checkpoints"]
    own = {row["name"]: row["status"] for row in rows if row["name"] in OWN_NAMES}
    assert own == {name: "ckptctl's own file" for name in OWN_NAMES}
    assert ".ckptctl.lock" in run("list", "-a", str(own_dir)).stdout
    assert ".ckptctl-demo" in "\n".join(_rich(monkeypatch, 120, "list", "--all", str(own_dir)))


def test_own_files_are_left_out_of_du_unless_all(own_dir, ckpt_dir):
    bare = json.loads(run("du", "--json", str(ckpt_dir)).stdout)
    hidden = json.loads(run("du", "--json", str(own_dir)).stdout)
    assert hidden["total"] == bare["total"]  # the lock and the marker are neither rows nor bytes
    assert hidden["own_files"]["files"] == 2 and hidden["own_files"]["counted"] is False
    shown = json.loads(run("du", "--json", "--all", str(own_dir)).stdout)
    other = next(k for k in shown["kinds"] if k["kind"] == "other")
    assert other["files"] == 2 and shown["total"]["files"] == bare["total"]["files"] + 2
    assert shown["own_files"]["counted"] is True
    assert shown["total"]["apparent_bytes"] == bare["total"]["apparent_bytes"] + (own_dir / ".ckptctl-demo").stat().st_size
    plain = run("du", str(own_dir)).stdout
    assert "Not counted: 2 files of ckptctl's own (lock, demo marker)" in plain and "--all counts them" in plain
    assert "Not counted" not in run("du", "--all", str(own_dir)).stdout


def test_own_names_match_the_lock_and_the_demo_marker():
    from ckptctl.locking import LOCK_NAME
    from ckptctl.training.demo import MARKER

    assert OWN_NAMES == {LOCK_NAME, MARKER}


def test_a_footer_too_wide_for_the_terminal_breaks_between_its_figures(ckpt_dir, monkeypatch):
    lines = _rich(monkeypatch, 60, "list", str(ckpt_dir))
    assert re.fullmatch(r"12 files, [\d.]+ \w+ on disk \(allocated, hard links once\)", lines[-3]), lines[-3:]
    assert re.fullmatch(r"[\d.]+ \w+ apparent", lines[-2]), lines[-3:]
    wide = _rich(monkeypatch, 120, "list", str(ckpt_dir))
    assert re.fullmatch(r"12 files, .*once\); [\d.]+ \w+ apparent", wide[-2]), wide[-3:]
