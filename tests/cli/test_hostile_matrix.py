"""Every read command on every crafted file: a verdict, never code run, a crash or a hang.

Each case puts one hostile or damaged ``latest.pt`` beside a valid ``rolling_step_000100.pt`` and
runs all eight commands on the directory (or the file). Whatever the case, every command must end
with a documented exit code and no uncaught exception, the payload's marker file must not exist,
and the valid checkpoint must keep its verdict: listed ok, validated valid, chosen to resume from,
never planned for removal. The per-reader suites (test_unpickler, test_container, test_pickle_scan,
test_safe_open, ...) check the exact reasons; this one checks that no command falls over.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests import hostile
from tests.factories import write_checkpoint
from tests.test_unpickler import _long4, deep_tuple_key, shared_tuple_key

runner = CliRunner()
VALID = "rolling_step_000100.pt"
P2 = b"\x80\x02"

Build = Callable[[Path, Path], None]  # (latest.pt path, marker) -> writes the case


def _zip(data: Callable[[Path], bytes]) -> Build:
    return lambda path, marker: hostile.torch_zip(path, data(marker)) and None


def _raw(entries: Callable[[], list[hostile.RawEntry]]) -> Build:
    return lambda path, marker: hostile.raw_zip(path, entries()) and None


def _case_duplicate(marker: Path) -> list[hostile.RawEntry]:
    evil = hostile.system_global(marker)
    return [*hostile.torch_records(hostile.plain_pickle({"step": 1})), hostile.RawEntry(b"archive/DATA.PKL", evil)]


def _nul_name(marker: Path) -> list[hostile.RawEntry]:
    evil = hostile.system_global(marker)
    return [*hostile.torch_records(hostile.plain_pickle({"step": 1})), hostile.RawEntry(b"archive/data.pkl\0", evil)]


def _truncated(path: Path, marker: Path) -> None:
    write_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CASES: dict[str, Build] = {
    **{f"payload-{p.name}": _zip(p.build) for p in hostile.PAYLOADS},
    **{f"misuse-{name}": _zip(lambda m, data=data: data) for name, (data, _global) in hostile.MISUSES.items()},
    **{f"not-a-checkpoint-{c.name}": (lambda p, m, c=c: c.build(p, m) and None) for c in hostile.NOT_CHECKPOINTS},
    "legacy-hostile-magic": lambda p, m: hostile.legacy_hostile_magic(p, m) and None,
    "ambiguous-case-duplicate": lambda p, m: hostile.raw_zip(p, _case_duplicate(m)) and None,
    "ambiguous-nul-in-name": lambda p, m: hostile.raw_zip(p, _nul_name(m)) and None,
    "overlapping-records": lambda p, m: hostile.overlapping_zip(p, copies=64, size=16_384) and None,
    "deep-tuple-key": _zip(lambda m: deep_tuple_key()),
    "shared-tuple-key": _zip(lambda m: shared_tuple_key()),
    # issue 11's inert records: an allowed framework class called (its __init__ would run), and a
    # BytesIO (read as a nested checkpoint) wrapping a hostile pickle
    "record-called": _zip(lambda m: hostile._wrap(hostile._call(hostile._global("transformers.training_args", "TrainingArguments"),
                                                                hostile._str(hostile._touch(m))))),
    "bytesio-hostile": _zip(lambda m: hostile._wrap(pickle.dumps(io.BytesIO(hostile.system_global(m)), protocol=2)[2:-1])),
    "huge-int-step": _zip(lambda m: P2 + b"}" + hostile._str("step") + _long4(10**5000) + b"s."),
    "huge-int-loss": _zip(lambda m: P2 + b"}" + hostile._str("val_loss") + _long4(10**400) + b"s."),
    "storage-bigger-than-record": _zip(lambda m: hostile.float_tensor_pickle(200, 200)),
    "empty-file": lambda p, m: p.write_bytes(b"") and None,
    "random-bytes": lambda p, m: p.write_bytes(os.urandom(4096)) and None,
    "truncated": _truncated,
    "fifo": lambda p, m: os.mkfifo(p),
    "symlink-loop": lambda p, m: os.symlink(p.name, p),
    "dangling-symlink": lambda p, m: os.symlink("nowhere.pt", p),
}


# Odd but harmless: read as data (a loss beyond float range shows as null), so the verdict is ok.
READABLE = {"huge-int-loss"}
# Not a regular file: directory-wide commands leave it out (as any FIFO); named, it gets its verdict.
LEFT_OUT_OF_DIRECTORIES = {"fifo"}


@pytest.fixture(params=sorted(CASES), ids=str)
def case_dir(request, tmp_path) -> tuple[Path, Path, str]:
    directory = tmp_path / "ckpts"
    directory.mkdir()
    write_checkpoint(directory / VALID, step=100)
    marker = tmp_path / "pwned"
    CASES[request.param](directory / "latest.pt", marker)
    return directory, marker, request.param


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"ckptctl {' '.join(args)} raised {result.exception!r}\n{result.output}")
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.timeout(120)
def test_every_read_command_gives_a_verdict(case_dir):
    directory, marker, name = case_dir
    latest, valid = str(directory / "latest.pt"), str(directory / VALID)
    bad, listed = name not in READABLE, name not in LEFT_OUT_OF_DIRECTORIES

    code, out, err = _run("list", str(directory), "--json", "--no-cache")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)["checkpoints"]}
    assert rows[VALID]["status"] == "ok"
    assert ("latest.pt" in rows) == listed and (not listed or (rows["latest.pt"]["status"] != "ok") == bad)

    code, out, err = _run("validate", str(directory), "--json")
    assert code == (1 if bad and listed else 0), err
    results = {Path(row["path"]).name: row for row in json.loads(out)["results"]}
    assert results[VALID]["status"] == "valid"
    assert not listed or (results["latest.pt"]["status"] != "valid") == bad

    code, out, err = _run("validate", latest, "--deep", "--json")
    assert code in ((1, 2) if bad else (0, 1)), err  # --deep: torch's own loader may refuse a hand-built file

    code, out, err = _run("inspect", latest)
    assert code in ((1, 2) if bad else (0,)), err

    code, out, err = _run("compare", latest, valid)
    assert code in (1, 2), err

    code, out, err = _run("resume-cmd", str(directory), "--script", "train.py", "--json")
    assert code == 0, err
    assert json.loads(out)["checkpoint"].endswith(VALID)  # the newest valid one, whatever latest.pt is

    code, out, err = _run("du", str(directory), "--json")
    assert code == 0, err

    code, out, err = _run("prune", str(directory), "--dry-run", "--json")
    assert code in (0, 1), err
    assert VALID not in {Path(row["path"]).name for row in json.loads(out)["remove"]}

    code, out, err = _run("restore", str(directory), "--dry-run", "--json")
    assert code in (0, 1), err

    assert not marker.exists()
