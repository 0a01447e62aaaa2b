"""ckptctl list: plain when piped, Rich on a terminal, --json contract, options, errors, hostile files."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from ckptctl.ops import listing
from ckptctl.cli import list_cmd
from ckptctl.cli.app import app
from tests import hostile

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
KINDS = {"latest", "latest_backup", "rolling", "rolling_backup", "emergency", "best", "best_backup", "best_previous",
         "epoch", "replaced", "other"}  # fmt: skip
STATUSES = {"ok", "unreadable", "unsafe", "partial", "dangling", "loop"}
JSON_KEYS = {"name", "path", "kind", "step", "epoch", "val_loss", "train_loss", "size_bytes", "saved_at", "status", "checked", "error",
             "link", "replaced_at", "layout", "complete", "missing", "best", "metrics", "monitor", "protected", "notes"}


def invoke(*args: str, **kwargs):
    return runner.invoke(app, ["list", *args], **kwargs)


def test_plain_report_when_piped(ckpt_dir):
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "step", "epoch", "val_loss", "size", "saved", "status"]
    assert lines[1].split()[:4] == ["latest.pt", "300", "2", "0.8"] and lines[1].endswith("ok")
    assert [line.split()[0] for line in lines[1:13]][-1] == "epoch_00001.pt"
    assert re.search(r"^12 files, \S+ \S+ on disk \(allocated, hard links once\); \S+ \S+ apparent$", result.stdout, re.M)
    assert "val_loss by step 100..300: █▅▃▁  1 -> 0.8" in result.stdout
    assert not ANSI.search(result.stdout) and "┃" not in result.stdout and "│" not in result.stdout
    assert result.stderr == ""


def test_json_document(ckpt_dir):
    result = invoke(str(ckpt_dir), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert set(doc) == {"schema_version", "directory", "total_bytes", "checked", "checkpoints", "layout", "layout_title",
                        "monitor", "shown_bytes", "shown_apparent_bytes", "size_on_disk"}  # fmt: skip
    assert doc["layout"] is None  # ckptctl's own names
    assert doc["directory"] == str(ckpt_dir)
    assert doc["total_bytes"] == sum(p.stat().st_size for p in ckpt_dir.iterdir())
    assert len(doc["checkpoints"]) == 12
    for row in doc["checkpoints"]:
        assert set(row) == JSON_KEYS and row["kind"] in KINDS and row["status"] in STATUSES


def test_kind_option_repeatable(ckpt_dir):
    doc = json.loads(invoke(str(ckpt_dir), "--kind", "best", "-k", "epoch", "--json").stdout)
    assert {r["kind"] for r in doc["checkpoints"]} == {"best", "best_backup", "best_previous", "epoch"}


def test_sort_option(ckpt_dir):
    doc = json.loads(invoke(str(ckpt_dir), "--sort", "step", "--json").stdout)
    steps = [r["step"] for r in doc["checkpoints"]]
    assert steps == sorted(steps)
    lines = invoke(str(ckpt_dir), "--sort", "name").stdout.splitlines()[1:13]
    assert [line.split()[0] for line in lines] == sorted(line.split()[0] for line in lines)


@pytest.mark.parametrize(("args", "message"), [(["--kind", "nope"], "unknown kind 'nope'"), (["--sort", "mtime"], "unknown sort key")])
def test_bad_options_exit_2(ckpt_dir, args, message):
    result = invoke(str(ckpt_dir), *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def _terminal(monkeypatch, **env):
    """Make the command believe stdout is a terminal, and let Rich colour CliRunner's stream."""
    monkeypatch.setattr(list_cmd, "stdout_is_terminal", lambda: True)
    for key in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_rich_report_on_a_terminal_is_grouped_and_coloured(ckpt_dir, monkeypatch):
    _terminal(monkeypatch, FORCE_COLOR="1", TERM="xterm-256color", COLUMNS="160")
    out = invoke(str(ckpt_dir)).stdout
    assert "\x1b[32m" in out  # green "ok"
    plain = ANSI.sub("", out)
    assert "AVAILABLE CHECKPOINTS in" in plain
    positions = [plain.index(f"│ {group} ") for group in ("latest", "best", "rolling", "emergency", "epoch")]
    assert positions == sorted(positions)  # one table: the kind column names each group, rules separate them
    assert plain.count("┏") == 1 and plain.count("├") == 4
    assert "█▅▃▁" in plain


def test_no_color_is_honoured(ckpt_dir, monkeypatch):
    _terminal(monkeypatch, FORCE_COLOR="1", TERM="xterm-256color", NO_COLOR="1", COLUMNS="160")
    out = invoke(str(ckpt_dir)).stdout
    assert "AVAILABLE CHECKPOINTS" in out
    assert not re.search(r"\x1b\[[0-9;]*3[0-9]m|\x1b\[[0-9;]*38;", out)  # no foreground colours


def test_markup_in_file_names_is_not_interpreted(tmp_path, ckpt_dir, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    (d / "[red]x[bold].pt").write_bytes((ckpt_dir / "latest.pt").read_bytes())
    (d / "latest.pt").write_bytes((ckpt_dir / "latest.pt").read_bytes())
    _terminal(monkeypatch, COLUMNS="200")
    assert "[red]x[bold].pt" in invoke(str(d)).stdout


def test_damaged_and_hostile_files_listed_and_nothing_runs(tmp_path, ckpt_dir):
    d = tmp_path / "d"
    d.mkdir()
    marker = tmp_path / "pwned"
    good = (ckpt_dir / "latest.pt").read_bytes()
    (d / "latest.pt").write_bytes(good)
    (d / "rolling_step_000100.pt").write_bytes(good[:300])
    (d / "rolling_step_000200.pt").write_bytes(b"")
    for i, payload in enumerate(hostile.PAYLOADS):
        hostile.torch_zip(d / f"epoch_{i:05d}.pt", payload.build(marker))
        hostile.legacy_file(d / f"emergency_step_{i:06d}_20260101_000000.pt", payload.build(marker))
    (d / "best_model.pt.tmp").write_bytes(good[:50])
    result = invoke(str(d), "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)["checkpoints"]}
    assert rows["latest.pt"]["status"] == "ok"
    assert rows["rolling_step_000100.pt"]["status"] == rows["rolling_step_000200.pt"]["status"] == "unreadable"
    assert rows["best_model.pt.tmp"]["status"] == "partial"
    for i, payload in enumerate(hostile.PAYLOADS):
        for name in (f"epoch_{i:05d}.pt", f"emergency_step_{i:06d}_20260101_000000.pt"):
            assert rows[name]["status"] == "unsafe" and payload.reported in rows[name]["error"]
    plain = invoke(str(d)).stdout
    assert "unsafe: references os.system" in plain and "unreadable: empty file" in plain
    assert not marker.exists()


def test_ext_opcode_file_does_not_run_under_list(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "d"
    hostile.torch_zip(d / "latest.pt", hostile.ext_opcode(marker))
    with hostile.registered_extension():
        import io
        import pickle

        class Plain(pickle.Unpickler):
            def persistent_load(self, pid):
                return None

        try:  # another library in the process loaded the code once: the C cache now holds os.system
            Plain(io.BytesIO(hostile.ext_opcode(tmp_path / "warm"))).load()
        except Exception:
            pass
        rows = json.loads(invoke(str(d), "--json").stdout)["checkpoints"]
    assert rows[0]["status"] == "unsafe" and "os.system" in rows[0]["error"]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "absent", "no such directory"),
        (lambda p: (p / "f.pt").write_bytes(b"x") and p / "f.pt", "not a directory"),
        (lambda p: p, "empty directory"),
        (lambda p: (p / "notes.txt").write_text("x") and p, "no checkpoints"),
        (lambda p: ((p / "a").symlink_to(p / "b"), (p / "b").symlink_to(p / "a")) and p / "a", "symbolic links"),
    ],
    ids=["nonexistent", "file", "empty", "no-checkpoints", "symlink-loop"],
)
def test_bad_directories_one_line_exit_2(tmp_path, setup, message):
    result = invoke(str(setup(tmp_path)))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ckptctl: error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_permission_denied_exit_2(tmp_path, monkeypatch):
    """Tests run as root, where chmod cannot deny reading: make the OS call refuse instead."""
    from ckptctl.layouts import catalog

    monkeypatch.setattr(catalog.os, "access", lambda *a, **k: False)
    result = invoke(str(tmp_path))
    assert result.exit_code == 2 and "permission denied" in result.stderr and "Traceback" not in result.stderr


def test_internal_errors_are_one_line_too(ckpt_dir, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(listing, "list_checkpoints", boom)  # the command imports it when it runs
    monkeypatch.delenv("CKPTCTL_DEBUG", raising=False)
    result = invoke(str(ckpt_dir))
    assert result.exit_code == 70 and "internal error: RuntimeError: bug" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_cache_reads_every_file_and_writes_no_cache(ckpt_dir, tmp_path, monkeypatch):
    from ckptctl.ops import listing_cache

    monkeypatch.setenv("CKPTCTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(listing_cache, "SETTLE_SECONDS", -60.0)
    plain = invoke(str(ckpt_dir), "--json", "--no-cache")
    assert plain.exit_code == 0 and not (tmp_path / "cache").exists()
    cached = [invoke(str(ckpt_dir), "--json") for _ in range(2)]
    assert len(list((tmp_path / "cache" / "listing").iterdir())) == 1
    assert json.loads(cached[1].stdout) == json.loads(cached[0].stdout) == json.loads(plain.stdout)


def test_dangling_and_looping_links_are_listed_not_hidden(ckpt_dir, tmp_path):
    import shutil

    directory = tmp_path / "run"
    shutil.copytree(ckpt_dir, directory, symlinks=True)
    (directory / "best_model.pt").unlink()
    (directory / "best_model.pt").symlink_to("rolling_step_000042.pt")
    (directory / "best_model_backup.pt").unlink()
    (directory / "best_model_backup.pt").symlink_to("best_model_backup.pt")
    result = invoke(str(directory))
    assert result.exit_code == 0, result.output  # listed; the status says what is wrong (README: exit codes)
    rows = {line.split()[0]: " ".join(line.split()) for line in result.stdout.splitlines()[1:]}
    assert rows["best_model.pt"].endswith("dangling: symlink to rolling_step_000042.pt")
    assert rows["best_model_backup.pt"].endswith("loop: symlink to best_model_backup.pt")
    doc = json.loads(invoke(str(directory), "--json").stdout)
    best = {r["name"]: r for r in doc["checkpoints"]}["best_model.pt"]
    assert (best["kind"], best["status"], best["link"], best["size_bytes"]) == ("best", "dangling", "rolling_step_000042.pt", 0)


def test_replaced_records_are_listed_with_their_age(ckpt_dir, tmp_path):
    import os
    import shutil
    from datetime import datetime, timedelta

    directory = tmp_path / "run"
    shutil.copytree(ckpt_dir, directory)
    stamp = datetime.now() - timedelta(days=3)
    kept = f"latest.pt.replaced-{stamp:%Y%m%d_%H%M%S}"
    os.link(directory / "latest.pt", directory / kept)
    doc = json.loads(invoke(str(directory), "--json").stdout)
    row = {r["name"]: r for r in doc["checkpoints"]}[kept]
    assert row["kind"] == "replaced" and row["status"] == "ok" and row["step"] == 300
    assert row["replaced_at"].startswith(stamp.strftime("%Y-%m-%dT%H:%M:%S"))
    plain = invoke(str(directory), "--kind", "replaced").stdout
    assert kept in plain and "ok (replaced 3 days ago)" in plain
