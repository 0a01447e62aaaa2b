"""Counts in messages: ``plural(1, "file")`` is "1 file", ``plural(2, "file")`` "2 files".

A core module (no CLI imports) because core error messages count things too; the CLI reaches it
as ``render.plural``.
"""

from __future__ import annotations


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """``count`` and ``noun``, the noun in the plural unless ``count`` is exactly one.

    ``plural_noun`` is for irregular nouns ("entry"/"entries"); the default adds an "s".
    """
    return f"{count} {_noun(count, noun, plural_noun)}"


def count(n: int, noun: str, plural_noun: str | None = None) -> str:
    """:func:`plural` with thousands separators, for figures that grow large: ``3,067,300 files``."""
    return f"{n:,} {_noun(n, noun, plural_noun)}"


def _noun(n: int, noun: str, plural_noun: str | None) -> str:
    return noun if n == 1 else (plural_noun or noun + "s")
