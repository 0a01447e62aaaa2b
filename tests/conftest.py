"""Shared fixtures: real checkpoints written by torch in temporary directories."""

from __future__ import annotations

import pytest

from tests.factories import make_state, write_checkpoint  # noqa: F401  (re-exported for tests)


@pytest.fixture(autouse=True, scope="session")
def _private_listing_cache(tmp_path_factory):
    """Keep ``ckptctl list``'s cache (ckptctl.ops.listing_cache) out of the real ~/.cache, for
    in-process calls and for every subprocess the tests start."""
    import os

    old = os.environ.get("CKPTCTL_CACHE_DIR")
    os.environ["CKPTCTL_CACHE_DIR"] = str(tmp_path_factory.mktemp("ckptctl-cache"))
    yield
    if old is None:
        os.environ.pop("CKPTCTL_CACHE_DIR", None)
    else:
        os.environ["CKPTCTL_CACHE_DIR"] = old


@pytest.fixture
def ckpt_dir(tmp_path):
    """A directory in the layout with a few real checkpoints (latest, rolling, best, epoch, emergency)."""
    from tests.factories import populate_layout

    return populate_layout(tmp_path / "checkpoints")


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on loopback (behind a byte-counting proxy), this process pointed at it.

    Skips only when the test extra's s3fs/moto are not installed (CI installs them).
    """
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from tests.s3server import Endpoint, apply_env, restore_env

    endpoint = Endpoint()
    previous = apply_env(endpoint.env)
    yield endpoint
    restore_env(previous)
    endpoint.stop()


@pytest.fixture(scope="session")
def s3_layout(s3_endpoint, tmp_path_factory):
    """(local directory, its URL): the layout plus a damaged, a hostile and a foreign file, uploaded once.

    Read-only: tests that delete upload their own copy.
    """
    from tests.factories import flip_byte_in_largest_tensor, populate_layout, write_checkpoint, write_hostile_checkpoint

    root = tmp_path_factory.mktemp("s3layout")
    local = populate_layout(root / "checkpoints")
    write_hostile_checkpoint(local / "rolling_step_000400.pt", root / "MARKER")
    flip_byte_in_largest_tensor(write_checkpoint(local / "rolling_step_000500.pt", step=500, epoch=3, val_loss=0.7))
    (local / "notes.txt").write_text("not a checkpoint\n")
    return local, s3_endpoint.upload(local, "s3://ckpt-tests/run-1/checkpoints")
