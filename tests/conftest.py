"""Shared fixtures: real checkpoints written by torch in temporary directories."""

from __future__ import annotations

import pytest

from tests.factories import make_state, write_checkpoint  # noqa: F401  (re-exported for tests)


@pytest.fixture(autouse=True, scope="session")
def _private_listing_cache(tmp_path_factory):
    """Keep ``ckptctl list``'s cache (ckptctl.listing_cache) out of the real ~/.cache, for
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
