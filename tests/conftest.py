"""Shared fixtures: real checkpoints written by torch in temporary directories."""

from __future__ import annotations

import pytest

from tests.factories import make_state, write_checkpoint  # noqa: F401  (re-exported for tests)


@pytest.fixture
def ckpt_dir(tmp_path):
    """A directory in the layout with a few real checkpoints (latest, rolling, best, epoch, emergency)."""
    from tests.factories import populate_layout

    return populate_layout(tmp_path / "checkpoints")
