"""Every command's --json document: a schema_version, and valid against its shipped JSON Schema
(ckptctl/schemas/<command>.json), on a native directory and on two other frameworks' runs."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from ckptctl.cli.output import SCHEMA_VERSION

jsonschema = pytest.importorskip("jsonschema")

runner = CliRunner()
FRAMEWORKS = Path(__file__).resolve().parents[1] / "fixtures" / "frameworks"
COMMANDS = ["list", "du", "validate", "restore", "prune", "inspect", "compare", "export", "resume-cmd", "chart", "demo"]
CHECKED_WORDS = {"metadata", "structure", "crc", "deep"}


def schema_of(command: str) -> dict:
    text = resources.files("ckptctl").joinpath("schemas", f"{command}.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def run_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code in (0, 1), (args, result.exit_code, result.output)
    return json.loads(result.stdout)


def assert_valid(command: str, document: dict) -> None:
    validator = jsonschema.Draft202012Validator(schema_of(command))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert not errors, (command, errors[:5])
    assert document["schema_version"] == SCHEMA_VERSION == 1
    assert next(iter(document)) == "schema_version"


@pytest.fixture
def runs(tmp_path, ckpt_dir) -> dict[str, dict[str, Path]]:
    """A native directory and two frameworks' runs (copied: restore and prune may be asked to write),
    each with a directory, a checkpoint to inspect and two to compare."""
    hf = shutil.copytree(FRAMEWORKS / "hf_trainer", tmp_path / "hf_trainer", symlinks=True)
    lightning = shutil.copytree(FRAMEWORKS / "lightning_link", tmp_path / "lightning_link", symlinks=True)
    return {
        "native": {"dir": ckpt_dir, "a": ckpt_dir / "latest.pt", "b": ckpt_dir / "best_model.pt"},
        "hf_trainer": {"dir": hf, "a": hf / "checkpoint-2", "b": hf / "checkpoint-4"},
        "lightning_link": {"dir": lightning, "a": lightning / "epoch=0-step=4-val_loss=0.56.ckpt",
                           "b": lightning / "epoch=1-step=8-val_loss=0.57.ckpt"},
    }  # fmt: skip


def documents(run: dict[str, Path], out: Path) -> dict[str, dict]:
    d, a, b = str(run["dir"]), str(run["a"]), str(run["b"])
    return {
        "list": run_json("list", d),
        "du": run_json("du", d),
        "validate": run_json("validate", d),
        "restore": run_json("restore", d, "--dry-run"),
        "prune": run_json("prune", d, "--dry-run"),
        "inspect": run_json("inspect", a),
        "compare": run_json("compare", a, b),
        "export": run_json("export", a, "--to", str(out / "model.safetensors"), "--dry-run"),
        "resume-cmd": run_json("resume-cmd", a, "--script", "train.py"),
        "chart": run_json("chart", d),
    }


@pytest.mark.parametrize("name", ["native", "hf_trainer", "lightning_link"])
def test_every_command_validates_against_its_schema(runs, name, tmp_path):
    docs = documents(runs[name], tmp_path)
    assert set(docs) == set(COMMANDS) - {"demo"}  # demo: its own test below (it trains)
    for command, document in docs.items():
        assert_valid(command, document)


def test_demo_validates_against_its_schema(tmp_path):
    document = run_json("demo", str(tmp_path / "demo"), "--steps", "30")
    assert_valid("demo", document)
    assert {row["checked"] for row in document["checkpoints"]} == {"metadata"}


def test_every_command_has_a_schema_shipped_as_package_data():
    registered = {c.name for c in app.registered_commands}
    assert registered >= set(COMMANDS), registered - set(COMMANDS)  # a new command with --json: add a schema
    with_json = {name for name in registered if "--json" in runner.invoke(app, [name, "--help"]).stdout}
    assert with_json == set(COMMANDS)
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    assert '"schemas/*.json"' in pyproject  # package data: in the wheel, not only in a checkout
    shipped = {p.name for p in resources.files("ckptctl").joinpath("schemas").iterdir() if p.name.endswith(".json")}
    assert shipped == {f"{c}.json" for c in COMMANDS}
    for command in COMMANDS:
        schema = schema_of(command)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["additionalProperties"] is True  # adding a key never breaks a consumer
        assert "schema_version" in schema["required"]


def test_schema_rejects_a_wrong_type_and_accepts_an_added_key(ckpt_dir):
    document = run_json("list", str(ckpt_dir))
    validator = jsonschema.Draft202012Validator(schema_of("list"))
    assert validator.is_valid({**document, "a_key_added_later": [1, 2]})
    broken = json.loads(json.dumps(document))
    broken["checkpoints"][0]["step"] = "300"
    assert not validator.is_valid(broken)
    del broken["schema_version"]
    assert not validator.is_valid(broken)


def test_checked_says_what_each_status_rests_on(runs):
    native = runs["native"]
    d = str(native["dir"])
    listing = run_json("list", d)
    assert listing["checked"] == "metadata"
    assert {row["checked"] for row in listing["checkpoints"]} == {"metadata"}
    assert run_json("inspect", str(native["a"]))["checked"] == "metadata"
    for flag, word in ((None, "crc"), ("--quick", "structure"), ("--deep", "deep")):
        report = run_json("validate", d, *([flag] if flag else []))
        assert report["checked"] == word
        assert {r["checked"] for r in report["results"]} == {word}
    restore = run_json("restore", d, "--dry-run")
    assert restore["checked"] and {c["checked"] for c in restore["checked"]} <= CHECKED_WORDS
    assert {c["checked"] for c in restore["checked"]} == {"crc"}


def test_restore_reports_the_step_of_every_valid_file_checked(runs):
    restore = run_json("restore", str(runs["native"]["dir"]), "--dry-run")
    steps = {c["name"]: c["step"] for c in restore["checked"]}
    assert steps["best_model.pt"] == 300 and steps["latest.pt"] == 300  # best_model.pt's was null before
    assert all(c["step"] is not None for c in restore["checked"] if c["valid"])


def test_restore_of_a_damaged_best_reports_its_step_as_unknown(ckpt_dir):
    (ckpt_dir / "best_model.pt").write_bytes(b"not a checkpoint")
    restore = run_json("restore", str(ckpt_dir), "--dry-run")
    best = next(c for c in restore["checked"] if c["name"] == "best_model.pt")
    assert best["valid"] is False and best["step"] is None and best["checked"] == "crc"
    assert_valid("restore", restore)


def test_documents_that_are_not_objects_are_left_alone(capsys):
    from ckptctl.cli.output import print_json

    print_json({"schema_version": 7, "a": 1})  # a command never sets it: the central one wins
    assert json.loads(capsys.readouterr().out) == {"schema_version": 1, "a": 1}
    print_json([1, 2])
    assert json.loads(capsys.readouterr().out) == [1, 2]


def test_docs_json_has_a_section_per_command_and_every_checked_word():
    text = (Path(__file__).resolve().parents[2] / "docs" / "json.md").read_text(encoding="utf-8")
    for command in COMMANDS:
        assert f"## `{command}`" in text and f"ckptctl/schemas/{command}.json" in text
    for word in CHECKED_WORDS:
        assert f"| `{word}` |" in text
    from ckptctl.layouts import catalog

    words = {v for k, v in vars(catalog).items() if k.startswith("STATUS_") and isinstance(v, str)}
    assert words and all(f"`{w}`" in text for w in words), words


def test_a_damaged_file_still_prints_a_valid_document(ckpt_dir):
    (ckpt_dir / "rolling_step_000200.pt").write_bytes(b"PK\x03\x04 truncated")
    listing = run_json("list", str(ckpt_dir))
    assert_valid("list", listing)
    row = next(r for r in listing["checkpoints"] if r["name"] == "rolling_step_000200.pt")
    assert row["status"] == "unreadable" and row["checked"] == "metadata"
    report = run_json("validate", str(ckpt_dir))
    assert_valid("validate", report)
    result = next(r for r in report["results"] if r["name"] == "rolling_step_000200.pt")
    assert result["status"] == "invalid" and result["checked"] == "crc"
    assert_valid("inspect", run_json("inspect", str(ckpt_dir / "rolling_step_000200.pt")))
