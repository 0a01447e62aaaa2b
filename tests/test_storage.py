"""ckptctl.formats.storage and the core read paths on object storage, against moto's S3 server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptctl.formats import storage
from ckptctl.layouts.catalog import entry_for_file, scan
from ckptctl.errors import BadInputError, UnreadableCheckpoint
from ckptctl.ops.integrity import DEEP, collect_targets, crc_records, crc_records_stream, validate_file
from ckptctl.formats.container import open_container
from ckptctl.ops.prune import execute, plan_prune
from ckptctl.formats.reader import read_checkpoint
from ckptctl.ops.retention import Policy
from ckptctl.ops.usage import measure
from tests.factories import write_checkpoint


# ------------------------------------------------------------------------------ no endpoint needed


@pytest.mark.parametrize("value", ["s3://bucket/run", "gs://b/x", "S3://B", "file:///tmp/x"])
def test_urls_are_recognised(value):
    assert storage.is_url(value)


@pytest.mark.parametrize("value", ["/tmp/run", "run/checkpoints", "s3:/bucket/run", "C:\\runs\\x", Path("s3://b")])
def test_plain_paths_stay_plain(value):
    assert not storage.is_url(value)
    assert isinstance(storage.location(value), Path)


def test_unknown_scheme_is_bad_input():
    with pytest.raises(BadInputError, match="unsupported URL nosuchscheme://x"):
        storage.remote("nosuchscheme://x/y")


def test_refuse_url_names_the_command():
    storage.refuse_url("/local/dir", "restore")  # plain paths pass
    storage.refuse_url(None, "restore")
    with pytest.raises(BadInputError, match="restore is not supported for URLs"):
        storage.refuse_url("s3://b/run", "restore")


def test_remote_path_prints_as_its_url_and_has_no_fspath():
    path = storage.RemotePath("s3://b/run", fs=None) / "latest.pt"
    assert str(path) == "s3://b/run/latest.pt" and path.name == "latest.pt"
    with pytest.raises(TypeError):
        Path(path)  # never handed to a local file call by mistake


# ---------------------------------------------------------------------------------- the endpoint


def test_listdir_gives_names_sizes_and_times(s3_layout):
    local, url = s3_layout
    rows = storage.listdir(storage.remote(url))
    assert {r.path.name: r.size for r in rows} == {p.name: p.stat().st_size for p in local.iterdir()}
    assert all(r.mtime > 0 and not r.is_dir for r in rows)
    assert len({r.identity for r in rows}) == len(rows)


def test_a_rewritten_object_gets_a_new_identity(s3_endpoint, tmp_path):
    write_checkpoint(tmp_path / "latest.pt", step=1)
    url = s3_endpoint.upload(tmp_path, "s3://ckpt-tests/identity")
    before = storage.stat(storage.remote(url + "/latest.pt"))
    write_checkpoint(tmp_path / "latest.pt", step=2, hidden=20)
    s3_endpoint.upload(tmp_path, url)
    after = storage.stat(storage.remote(url + "/latest.pt"))
    assert before.identity != after.identity


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://ckpt-tests/no-such-prefix", "no such directory: s3://ckpt-tests/no-such-prefix"),
        ("s3://no-such-bucket-ckptctl/run", "no such directory: s3://no-such-bucket-ckptctl/run"),
        ("s3://ckpt-tests/run-1/checkpoints/latest.pt", "not a directory"),
    ],
)
def test_listing_a_bad_prefix_is_one_clear_error(s3_layout, url, message):
    with pytest.raises(BadInputError, match=message):
        scan(url)


def test_missing_object_is_bad_input(s3_layout):
    with pytest.raises(BadInputError, match="no such file"):
        entry_for_file(s3_layout[1] + "/nothing.pt")


def test_scan_of_a_url_matches_the_local_scan(s3_layout):
    local, url = s3_layout
    here, there = scan(local), scan(url)
    assert [(e.name, e.kind, e.size_bytes) for e in here] == [(e.name, e.kind, e.size_bytes) for e in there]
    assert all(str(e.path) == f"{url}/{e.name}" and e.nlink == 1 for e in there)


def test_read_checkpoint_of_a_url_matches_the_local_read(s3_layout):
    local, url = s3_layout
    here, there = read_checkpoint(local / "latest.pt"), read_checkpoint(url + "/latest.pt")
    assert there.format == here.format == "zip"
    assert there.root.keys() == here.root.keys() and there.root["step"] == here.root["step"] == 300
    assert there.spans == here.spans and there.size_bytes == here.size_bytes


def test_reading_only_the_metadata_fetches_a_small_part_of_a_large_object(s3_endpoint, tmp_path):
    """Ranged reads: the listing's read of a 4 MB checkpoint is a few KB at the endpoint."""
    import torch

    write_checkpoint(tmp_path / "latest.pt", step=7, blob=torch.zeros(1 << 20))
    url = s3_endpoint.upload(tmp_path, "s3://ckpt-tests/ranged") + "/latest.pt"
    size = (tmp_path / "latest.pt").stat().st_size
    s3_endpoint.proxy.reset()
    assert read_checkpoint(url, spans=False).root["step"] == 7
    assert s3_endpoint.proxy.bytes_served < size * 0.01
    s3_endpoint.proxy.reset()
    assert validate_file(url).valid  # the default level streams every record for its CRC
    assert s3_endpoint.proxy.bytes_served >= size


def test_stream_crc_equals_the_local_crc(s3_layout):
    local, url = s3_layout
    with open(local / "rolling_step_000500.pt", "rb") as fh:
        records = list(open_container(local / "rolling_step_000500.pt", fh).records.values())
        expected = crc_records(fh.fileno(), records)
    with storage.open_object(storage.remote(url + "/rolling_step_000500.pt")) as fh:
        assert crc_records_stream(fh, records) == expected


@pytest.mark.parametrize("name", ["latest.pt", "rolling_step_000400.pt", "rolling_step_000500.pt"])
def test_validate_file_of_a_url_matches_the_local_verdict(s3_layout, name):
    local, url = s3_layout
    here, there = validate_file(local / name).to_json(), validate_file(f"{url}/{name}").to_json()
    assert there.pop("path") == f"{url}/{name}"
    here.pop("path")
    assert there == here
    assert not (local.parent / "MARKER").exists()


def test_validate_deep_refuses_a_url(s3_layout):
    with pytest.raises(BadInputError, match="--deep is not supported for URLs"):
        validate_file(s3_layout[1] + "/latest.pt", DEEP)


def test_measure_has_no_file_system_for_a_url(s3_layout):
    usage = measure(s3_layout[1])
    assert usage.filesystem is None
    assert usage.projection.rolling_saves_fit is None and usage.projection.checkpoint_bytes
    assert str(usage.directory) == s3_layout[1]


def test_sharded_prefix_is_listed_as_not_supported(s3_endpoint, tmp_path):
    fs = s3_endpoint.filesystem()
    write_checkpoint(tmp_path / "latest.pt")
    url = s3_endpoint.upload(tmp_path, "s3://ckpt-tests/sharded")
    fs.pipe(url.removeprefix("s3://") + "/rolling_step_000100/.metadata", b"x" * 10)
    fs.pipe(url.removeprefix("s3://") + "/rolling_step_000100/__0_0.distcp", b"y" * 90)
    entry = {e.name: e for e in scan(url)}["rolling_step_000100"]
    assert entry.is_directory and entry.size_bytes == 100
    _ckpt, _meta, error = entry.read()
    assert isinstance(error, UnreadableCheckpoint) and "not supported" in error.reason
    targets, skipped = collect_targets([url])  # validate skips it, and says so
    assert [t.name for t in targets] == ["latest.pt"] and [s.name for s in skipped] == ["rolling_step_000100"]


def test_prune_skips_an_object_rewritten_after_the_plan(s3_endpoint, tmp_path):
    """No lock on object storage: execution re-plans and deletes only objects still as planned."""
    for step in (100, 200, 300):
        write_checkpoint(tmp_path / f"rolling_step_{step:06d}.pt", step=step)
    url = s3_endpoint.upload(tmp_path, "s3://ckpt-tests/prune-race")
    plan = plan_prune(url, Policy(keep_rolling=1))
    assert sorted(e.name for e in plan.deletions) == ["rolling_step_000100.pt", "rolling_step_000200.pt"]
    write_checkpoint(tmp_path / "rolling_step_000100.pt", step=100, hidden=24)  # rewritten meanwhile
    s3_endpoint.filesystem().put_file(str(tmp_path / "rolling_step_000100.pt"), url[5:] + "/rolling_step_000100.pt")
    result = execute(plan, wait=5)
    assert [e.name for e in result.removed] == ["rolling_step_000200.pt"]
    assert [e.name for e in result.skipped] == ["rolling_step_000100.pt"]
    assert sorted(e.name for e in scan(url)) == ["rolling_step_000100.pt", "rolling_step_000300.pt"]


def test_stream_crc_windows_cut_through_records_and_a_short_file_gives_none(ckpt_dir, monkeypatch):
    import io

    path = ckpt_dir / "latest.pt"
    with open(path, "rb") as fh:
        records = list(open_container(path, fh).records.values())
        expected = crc_records(fh.fileno(), records)
        monkeypatch.setattr(storage, "STREAM_BYTES", 1000)  # windows end inside records
        assert crc_records_stream(fh, records) == expected
    data = path.read_bytes()
    last = max(records, key=lambda r: r.data_offset)
    short = crc_records_stream(io.BytesIO(data[: last.data_offset + last.size // 2]), records)
    assert short[last.key] is None
    assert {k: v for k, v in short.items() if k != last.key} == {k: v for k, v in expected.items() if k != last.key}
