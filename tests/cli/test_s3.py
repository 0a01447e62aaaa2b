"""The CLI on object storage: list / inspect / validate / du / prune on ``s3://`` URLs give the same
answers as on a local copy (moto's S3 server on loopback); URL-specific errors are one line, exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def both(args: list[str], local, url, position: int = -1) -> tuple[dict, dict]:
    """Run ``args`` with the local directory and with the URL (at ``position``); both JSON documents,
    the URL's with every URL spelled as the local path (the only difference allowed)."""
    docs = []
    for where in (str(local), url):
        argv = [*args]
        argv.insert(len(argv) + 1 + position if position < 0 else position, where)
        result = run(*argv)
        docs.append((result.exit_code, result.stdout.replace(url, str(local))))
    (code_here, here), (code_there, there) = docs
    assert code_here == code_there, (here, there)
    return json.loads(here), json.loads(there)


def test_list_json_is_the_same(s3_layout):
    here, there = both(["list", "--json"], *s3_layout, position=1)
    # size on disk: allocated blocks here, the object sizes there (an object store has no blocks)
    assert there.pop("shown_bytes") == there["shown_apparent_bytes"] and here.pop("shown_bytes") > 0
    assert there == here
    statuses = {row["name"]: row["status"] for row in there["checkpoints"]}
    assert statuses["rolling_step_000400.pt"] == "unsafe" and statuses["latest.pt"] == "ok"


def test_list_plain_report_names_the_url(s3_layout):
    local, url = s3_layout
    result = run("list", url)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1].split()[:4] == ["latest.pt", "300", "2", "0.8"]
    assert "14 files, " in result.stdout and "on disk (allocated, hard links once)" in result.stdout


def test_list_of_a_url_reads_several_objects_at_once(s3_layout, monkeypatch):
    import threading

    from ckptctl.layouts import catalog

    threads: set[int] = set()
    real = catalog.read_checkpoint

    def recording(path, **kwargs):
        if str(path).startswith("s3://"):
            threads.add(threading.get_ident())
        return real(path, **kwargs)

    monkeypatch.setattr(catalog, "read_checkpoint", recording)
    here, there = both(["list", "--json"], *s3_layout, position=1)
    # size on disk: allocated blocks here, the object sizes there (an object store has no blocks)
    assert there.pop("shown_bytes") == there["shown_apparent_bytes"] and here.pop("shown_bytes") > 0
    assert there == here
    assert len(threads) > 1  # the objects were read by several threads


def test_list_of_a_url_neither_uses_nor_writes_the_listing_cache(s3_layout, tmp_path, monkeypatch):
    from ckptctl.ops import listing_cache

    monkeypatch.setenv("CKPTCTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(listing_cache, "SETTLE_SECONDS", -60.0)
    for _ in range(2):
        assert run("list", "--json", s3_layout[1]).exit_code == 0
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", ["latest.pt", "rolling_step_000400.pt", "rolling_step_000500.pt"])
def test_inspect_json_is_the_same(s3_layout, name):
    local, url = s3_layout
    here, there = both(["inspect", "--json", "--tensors"], local / name, f"{url}/{name}", position=1)
    assert there == here
    assert not (local.parent / "MARKER").exists()


@pytest.mark.parametrize("level", [[], ["--quick"]], ids=["default", "quick"])
def test_validate_json_is_the_same(s3_layout, level):
    here, there = both(["validate", "--json", *level], *s3_layout, position=1)
    here.pop("seconds"), there.pop("seconds")
    assert there == here
    verdicts = {Path_name(r["path"]): r["status"] for r in there["results"]}
    assert verdicts["rolling_step_000400.pt"] == "unsafe"
    assert verdicts["rolling_step_000500.pt"] == ("valid" if level else "invalid")  # the flipped byte: CRC only
    assert there["skipped"] == [str(s3_layout[0] / "notes.txt")]


def Path_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def test_validate_exit_code_for_damage_is_1(s3_layout):
    result = run("validate", s3_layout[1] + "/rolling_step_000500.pt")
    assert result.exit_code == 1 and "CRC mismatch" in result.stdout


def test_du_json_has_the_same_sizes_and_no_file_system(s3_layout):
    here, there = both(["du", "--json"], *s3_layout, position=1)
    assert there["filesystem"] is None and here["filesystem"] is not None
    for doc in (here, there):
        for kind in [*doc["kinds"], doc["total"]]:
            kind.pop("allocated_bytes")  # blocks on disk; an object store bills the apparent size
    assert there["kinds"] == here["kinds"] and there["total"] == here["total"] and there["counts"] == here["counts"]
    assert there["projection"]["rolling_save_bytes"] == here["projection"]["rolling_save_bytes"]
    assert there["projection"]["rolling_saves_fit"] is None and there["summary"].endswith("n/a free")


def test_du_plain_says_n_a_for_the_file_system(s3_layout):
    result = run("du", s3_layout[1])
    assert result.exit_code == 0 and "File system: n/a" in result.stdout


def test_du_warn_free_on_a_url_is_bad_input(s3_layout):
    result = run("du", "--warn-free", "10%", s3_layout[1])
    assert result.exit_code == 2 and "no free space to check" in result.stderr


def test_prune_dry_run_json_is_the_same(s3_layout):
    here, there = both(["prune", "--keep-rolling", "2", "--dry-run", "--json"], *s3_layout, position=-1)
    assert there == here
    assert [d["name"] for d in there["remove"]] == ["rolling_step_000100.pt", "rolling_step_000200.pt", "rolling_step_000300.pt"]


def test_prune_deletes_the_same_objects_as_locally(s3_layout, s3_endpoint, tmp_path):
    local = shutil.copytree(s3_layout[0], tmp_path / "copy")
    url = s3_endpoint.upload(local, "s3://ckpt-tests/prune-real")
    here, there = both(["prune", "--keep-rolling", "1", "--keep-emergency", "0", "--yes", "--json"], local, url)
    assert there == here and len(there["removed"]) == 5
    listed = s3_endpoint.filesystem().ls(url[5:], detail=False)
    assert sorted(name.rsplit("/", 1)[-1] for name in listed) == sorted(p.name for p in local.iterdir() if p.name != ".ckptctl.lock")  # no lock on a bucket
    again = run("prune", "--keep-rolling", "1", "--keep-emergency", "0", "--yes", url)
    assert again.exit_code == 0 and "Nothing to remove." in again.stdout


def test_prune_without_yes_off_a_terminal_refuses(s3_layout):
    result = run("prune", "--keep-rolling", "1", s3_layout[1])
    assert result.exit_code == 2 and "refusing to delete" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "s3://ckpt-tests/no-such-prefix"], "no such directory: s3://ckpt-tests/no-such-prefix"),
        (["list", "s3://no-such-bucket-ckptctl/run"], "no such directory: s3://no-such-bucket-ckptctl/run"),
        (["du", "s3://ckpt-tests/run-1/checkpoints/latest.pt"], "not a directory"),
        (["inspect", "s3://ckpt-tests/run-1/checkpoints/nothing.pt"], "no such file"),
        (["validate", "s3://ckpt-tests/no-such-prefix"], "no such file"),
        (["validate", "--deep", "s3://ckpt-tests/run-1/checkpoints/latest.pt"], "--deep is not supported for URLs"),
        (["list", "nosuchscheme://bucket/run"], "unsupported URL"),
    ],
)
def test_bad_urls_are_one_line_exit_2(s3_layout, args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["restore", "s3://b/run"],
        ["restore", "/tmp/x", "--from", "s3://b/run/latest.pt", "--to", "latest"],
        ["compare", "s3://b/run/latest.pt", "/tmp/b.pt"],
        ["resume-cmd", "s3://b/run/latest.pt"],
    ],
    ids=["restore", "restore-from", "compare", "resume-cmd"],
)
def test_commands_that_need_a_local_file_refuse_urls(args):
    result = run(*args)
    assert result.exit_code == 2
    assert f"{args[0]} is not supported for URLs" in result.stderr


def _ckptctl(args: list[str], prelude: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    code = f"import sys\n{prelude}\nfrom ckptctl.cli.app import main\nsys.argv = ['ckptctl', *{args!r}]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_missing_s3_extra_is_one_line_exit_2():
    result = _ckptctl(["list", "s3://bucket/run"], prelude="sys.modules['s3fs'] = None  # not installed")
    assert result.returncode == 2
    assert result.stderr.strip() == "ckptctl: error: s3:// URLs need the s3 extra: pip install 'ckptctl[s3]'"


def test_no_credentials_is_one_line_exit_2(s3_layout, s3_endpoint, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=s3_endpoint.url, AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    result = _ckptctl(["list", s3_layout[1]], env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == f"ckptctl: error: cannot read {s3_layout[1]}: NoCredentialsError: Unable to locate credentials"
