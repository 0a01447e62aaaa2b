"""ckptctl compare: exit 0 equal, 1 different, 2 bad input; one JSON document with --json."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests.factories import make_state, write_checkpoint, write_hostile_checkpoint

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["compare", *args])


def test_same_file_is_equal_at_both_levels(ckpt_dir):
    path = str(ckpt_dir / "latest.pt")
    for extra in ([], ["--values"]):
        result = invoke(path, path, *extra)
        assert result.exit_code == 0, result.stderr
        assert "storage bytes identical" in result.stdout
        assert result.stdout.rstrip().endswith(f"result: equal at the {'values' if extra else 'metadata'} level")


def test_one_changed_element_is_named_with_values(tmp_path):
    state = make_state()
    a = write_checkpoint(tmp_path / "a.pt", state)
    state["model"]["0.weight"][3, 4] = 42.0
    b = write_checkpoint(tmp_path / "b.pt", state)
    result = invoke(str(a), str(b), "--values")
    assert result.exit_code == 1
    assert "values (atol=0, rtol=0): 1 of 17 tensors differ" in result.stdout
    table = result.stdout.split("most changed tensors", 1)[1].splitlines()
    assert table[2].split()[0] == "model.0.weight"
    doc = json.loads(invoke(str(a), str(b), "--values", "--json").stdout)
    assert doc["equal"] is False and doc["level"] == "values"
    assert [t["name"] for t in doc["values"]["tensors"] if not t["equal"]] == ["model.0.weight"]
    assert doc["values"]["most_changed"][0]["layer"] == "model.0"
    assert doc["tensors"]["bytes_differ"] == ["model.0.weight"]


def test_tolerance_makes_it_equal(tmp_path):
    state = make_state()
    a = write_checkpoint(tmp_path / "a.pt", state)
    state["model"]["0.bias"][0] += 1e-6
    b = write_checkpoint(tmp_path / "b.pt", state)
    assert invoke(str(a), str(b), "--values", "--atol", "1e-5").exit_code == 0
    assert invoke(str(a), str(b), "--values").exit_code == 1
    assert invoke(str(a), str(b)).exit_code == 1  # bytes differ (CRC-32) at the metadata level


def test_backup_json_document(ckpt_dir):
    result = invoke(str(ckpt_dir / "latest.pt"), str(ckpt_dir / "latest_backup.pt"), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert set(doc) >= {"a", "b", "level", "equal", "fields", "args", "keys", "tensors", "optimizer", "values"}
    step = next(f for f in doc["fields"] if f["field"] == "step")
    assert (step["a"], step["b"], step["delta"], step["equal"]) == (300, 200, -100, False)
    assert doc["a"]["step"] == 300 and doc["b"]["path"].endswith("latest_backup.pt")


def test_plain_report_sections(ckpt_dir):
    result = invoke(str(ckpt_dir / "latest.pt"), str(ckpt_dir / "epoch_00000.pt"))
    assert result.exit_code == 1
    out = result.stdout
    for fragment in ("metadata", "step             300", "args: same", "top-level keys: changed: step",
                     "tensors: 17 in A, 17 in B", "optimizer: AdamW -> AdamW", "result: different at the metadata level"):  # fmt: skip
        assert fragment in out


def test_different_models_list_shape_changes(tmp_path):
    a = write_checkpoint(tmp_path / "a.pt", make_state(hidden=16))
    b = write_checkpoint(tmp_path / "b.pt", make_state(hidden=4))
    result = invoke(str(a), str(b), "--values")
    assert result.exit_code == 1
    assert "model.0.weight" in result.stdout and "float32 [16, 8]" in result.stdout and "float32 [4, 8]" in result.stdout
    assert "not compared: model.0.weight: dtype or shape differs" in result.stdout


def test_hostile_file_exit_1_without_running_it(tmp_path, ckpt_dir):  # a finding, as in inspect/validate
    marker = tmp_path / "pwned"
    evil = write_hostile_checkpoint(tmp_path / "evil.pt", marker)
    for extra in ([], ["--values"], ["--json"]):
        result = invoke(str(ckpt_dir / "latest.pt"), str(evil), *extra)
        assert result.exit_code == 1
        assert result.stdout == "" and result.stderr.count("\n") == 1 and "unsafe" in result.stderr
    assert not marker.exists()


def test_bad_input_exit_2(tmp_path, ckpt_dir):
    assert invoke(str(tmp_path / "missing.pt"), str(ckpt_dir / "latest.pt")).exit_code == 2
    assert invoke(str(ckpt_dir / "latest.pt"), str(ckpt_dir / "latest.pt"), "--atol", "-1").exit_code == 2


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    from ckptctl.cli import progress
    from ckptctl.cli.progress import ByteProgress

    updates = []
    original = ByteProgress.update
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    monkeypatch.setattr(progress, "MIN_BYTES", 0)
    monkeypatch.setattr(ByteProgress, "update", lambda self, *a: (updates.append(a), original(self, *a)))
    a = write_checkpoint(tmp_path / "a.pt", make_state())
    result = invoke(str(a), str(a), "--values")
    assert result.exit_code == 0
    assert updates[0][:2] == (0, updates[-1][1]) and updates[-1][0] == updates[-1][1] > 0
    assert len(updates) >= 18  # the total first, then at least once per tensor


def test_no_progress_bar_when_piped(tmp_path, monkeypatch):
    from ckptctl.cli.progress import ByteProgress

    monkeypatch.setattr(ByteProgress, "update", lambda self, *a: (_ for _ in ()).throw(AssertionError))
    a = write_checkpoint(tmp_path / "a.pt", make_state())
    assert invoke(str(a), str(a), "--values").exit_code == 0


def test_two_separate_saves_are_equal_with_values(tmp_path, monkeypatch):
    from tests.test_compare import deterministic_saves

    a, b = deterministic_saves(tmp_path, monkeypatch)
    result = invoke(str(a), str(b), "--values", "--ignore", "dataloader_state.worker_pid")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "+300 s (ignored)" in out and "0 of 10 tensors differ" in out
    assert "ignored differences (volatile metadata, --ignore): timestamp, dataloader_state, args.output_dir" in out
    assert out.rstrip().endswith("result: equal at the values level")


def test_a_real_difference_exits_1_and_ignore_is_repeatable(tmp_path, monkeypatch):
    from tests.test_compare import deterministic_saves

    a, b = deterministic_saves(tmp_path, monkeypatch, lr_b=0.2)
    assert invoke(str(a), str(b), "--values", "--ignore", "dataloader_state.worker_pid").exit_code == 1
    result = invoke(str(a), str(b), "--json", "--ignore", "dataloader_state.worker_pid", "--ignore", "args.lr",
                    "--ignore", "optimizer", "--ignore", "model")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["equal"] is True and doc["args"]["changed"] == []
    assert {"timestamp", "args.lr", "args.output_dir", "dataloader_state"} <= {d["key"] for d in doc["ignored"]}
    assert {"args.lr", "optimizer", "model", "timestamp"} <= set(doc["ignore"])
    timestamp = next(f for f in doc["fields"] if f["field"] == "timestamp")
    assert (timestamp["equal"], timestamp["ignored"], timestamp["delta"]) == (False, True, 300)
    assert doc["args"]["ignored"] == [{"key": "output_dir", "a": str(a.parent), "b": str(b.parent)}, {"key": "lr", "a": 0.1, "b": 0.2}]


def test_bad_ignore_path_exits_2(ckpt_dir):
    path = str(ckpt_dir / "latest.pt")
    result = invoke(path, path, "--ignore", "args..lr")
    assert result.exit_code == 2 and "not a dotted key path" in result.stderr and "Traceback" not in result.output


def test_one_differing_tensor_of_one_reads_in_the_singular(tmp_path):
    import torch

    torch.save({"step": 1, "model": {"w": torch.zeros(3)}}, tmp_path / "a.pt")
    torch.save({"step": 1, "model": {"w": torch.ones(3)}}, tmp_path / "b.pt")
    result = invoke(str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--values")
    assert result.exit_code == 1
    assert "values (atol=0, rtol=0): 1 of 1 tensor differs" in result.stdout
