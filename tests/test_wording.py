"""wording.plural: the one way a count meets a noun in human output."""

from __future__ import annotations

import pytest

from ckptctl.cli import render
from ckptctl.wording import plural


@pytest.mark.parametrize("count, expected", [(0, "0 files"), (1, "1 file"), (2, "2 files"), (-1, "-1 files")])
def test_regular_nouns(count, expected):
    assert plural(count, "file") == expected


def test_irregular_nouns_and_multi_word_nouns():
    assert plural(1, "state entry", "state entries") == "1 state entry"
    assert plural(3, "state entry", "state entries") == "3 state entries"
    assert plural(1, "other file") == "1 other file"


def test_render_reexports_it_and_uses_it():
    assert render.plural is plural
    assert render.short({"a": 1}) == "dict with 1 key" and render.short({"a": 1, "b": 2}) == "dict with 2 keys"
