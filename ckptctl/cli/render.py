"""Formatting shared by the commands: sizes, ages, inert values as JSON, a val_loss sparkline,
and :func:`display_text`, the one escape every file-derived string passes before a terminal."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from ..wording import plural  # noqa: F401  (re-exported: the CLI's counts use render.plural)

SPARK_CHARS = "▁▂▃▄▅▆▇█"

# The tool's own decorations, spelled in ASCII for a stream that cannot encode them (``LC_ALL=C``,
# ``PYTHONIOENCODING=ascii``): the sparkline's blocks become a low-to-high ramp, dashes, arrows and
# the ellipsis their usual ASCII look-alikes. Anything else unencodable (a file name's ``é``) is
# shown as its escape, ``\xe9``, the way :func:`display_text` shows control characters.
ASCII_LOOKALIKES = {
    **dict(zip(SPARK_CHARS, "_.-~=+*#")),
    "—": "-", "–": "-", "…": "...", "→": "->", "←": "<-", "×": "x", "·": ".", "≈": "~", "±": "+/-",
    "≤": "<=", "≥": ">=", "Δ": "d", "‖": "|", "₂": "2", "²": "^2", "Σ": "sum ", "✓": "ok", "✗": "x",
}


def display_text(value: object) -> str:
    """``value`` as one line that is safe to write to a terminal.

    Names, keys, values and error messages come from files (and file names from directories) that
    an attacker may have written: a raw ESC, CR, backspace or bidi override in them could repaint
    the screen, e.g. turn an ``unsafe`` verdict into a green ``ok``. Every character Python's
    ``repr`` would escape (C0/C1 controls, DEL, newline, tab, format characters such as U+202E or
    zero-width spaces, line separators, lone surrogates) is shown as that escape: ``\\x1b``,
    ``\\r``, ``\\n``, ``\\u202e``. Everything else is unchanged, so applying it twice is harmless.
    JSON output does not use it (``json.dumps`` escapes for itself and keeps the raw value).
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    return repr(char)[1:-1]


def ascii_fallback(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler (registered by ``output.survive_any_encoding``): what an unencodable
    run of text becomes, so output never fails on the terminal's encoding."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    bad = error.object[error.start : error.end]
    return "".join(ASCII_LOOKALIKES.get(char) or _ascii_escape(char) for char in bad), error.end


def _ascii_escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    import humanize

    return humanize.naturalsize(n, binary=True)


def age(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    import humanize

    now = now or datetime.now(timezone.utc)
    return humanize.naturaltime(now - when)


def local_time(when: datetime | None) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else "-"


def iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def number(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


def short(value: Any, width: int = 60) -> str:
    """A one-line description of an inert value."""
    if isinstance(value, dict) and set(value) == {"tensor", "shape"}:
        text = f"tensor {value['tensor']} {value['shape']}"
    elif isinstance(value, dict) and set(value) == {"ndarray", "shape"}:
        text = f"ndarray {value['ndarray']} {value['shape']}"
    elif isinstance(value, dict):
        text = f"dict with {plural(len(value), 'key')}"
    elif isinstance(value, (list, tuple)) and len(value) > 8:
        text = f"{type(value).__name__} of {len(value)}"
    else:
        from ..formats.values import short_repr  # imports the unpickler's classes: only when a value is shown

        text = short_repr(value, width + 1) if not isinstance(value, str) else value[: width + 1]
    text = display_text(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def sparkline(values: list[float]) -> str:
    """A one-line trend of ``values`` (lower blocks = lower loss)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    chars = []
    for v in values:
        if v is None or not math.isfinite(v):
            chars.append(" ")
        else:
            chars.append(SPARK_CHARS[min(len(SPARK_CHARS) - 1, int((v - lo) / span * (len(SPARK_CHARS) - 1) + 0.5))])
    return "".join(chars)


def fit_columns(width: int, headers: list[str], rows: list[list[str]], drop: tuple[str, ...] = (),
                shrink: tuple[str, ...] = (), minimum: int = 8) -> tuple[list[int], dict[int, int]]:  # fmt: skip
    """Which columns of a boxed Rich table fit ``width``, and the widths of the ones that must shrink.

    Columns in ``drop`` give way first, in that order, each only while the table is too wide; then
    the columns in ``shrink`` are narrowed in order (to ``minimum``, or their header), the last of
    them (the name) last. Returns (indices of the columns kept, {index: max width}). A box of n
    columns takes ``3 n + 1`` characters around the cells (a rule and one space each side).
    """
    from rich.cells import cell_len

    natural = [max([cell_len(h), *(cell_len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    kept = list(range(len(headers)))

    def total() -> int:
        return sum(natural[i] for i in kept) + 3 * len(kept) + 1

    for name in drop:
        if total() <= width:
            break
        if name in headers and headers.index(name) in kept:
            kept.remove(headers.index(name))
    limits: dict[int, int] = {}
    for name in shrink:
        excess = total() - width
        if excess <= 0 or name not in headers or headers.index(name) not in kept:
            continue
        i = headers.index(name)
        floor = max(minimum, cell_len(headers[i]))
        new = max(floor, natural[i] - excess)
        if new < natural[i]:
            limits[i] = natural[i] = new
    return kept, limits


def fit_table(width: int, headers: list[str], rows: list[list[str]], drop: tuple[str, ...] = (),
              shrink: tuple[str, ...] = (), late_drop: tuple[str, ...] = (), *, name: str = "name",
              name_floor: int = 16, minimum: int = 16) -> tuple[list[int], dict[int, int], bool]:  # fmt: skip
    """Fit a table with a ``name`` column to ``width``: columns by priority, decorations before names.

    In order, each step only while the table is still too wide: the columns in ``drop`` give way
    (the boxed table: ``3 n + 1`` characters around n columns); the box goes (two spaces between
    columns, the group rules kept: ``2 (n - 1)``); the ``shrink`` columns other than the name are
    narrowed (they wrap) down to ``minimum`` (an error message stays readable); the columns in ``late_drop`` give way while the name would
    otherwise be cut below ``name_floor``; last, the name is cut (:func:`middle_cut`).
    Returns (indices of the columns kept, {index: max width}, whether the table keeps its box).
    """
    from rich.cells import cell_len

    natural = [max([cell_len(h), *(cell_len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    kept = list(range(len(headers)))
    limits: dict[int, int] = {}

    def total(boxed: bool) -> int:
        cells = sum(limits.get(i, natural[i]) for i in kept)
        return cells + (3 * len(kept) + 1 if boxed else 2 * max(0, len(kept) - 1))

    def index(column: str) -> int | None:
        return headers.index(column) if column in headers and headers.index(column) in kept else None

    for column in drop:
        if total(True) <= width:
            return kept, limits, True
        if (i := index(column)) is not None:
            kept.remove(i)
    if total(True) <= width:
        return kept, limits, True
    for column in shrink:
        excess = total(False) - width
        if column == name or excess <= 0 or (i := index(column)) is None:
            continue
        new = max(max(minimum, cell_len(headers[i])), natural[i] - excess)
        if new < natural[i]:
            limits[i] = new
    i = index(name)
    if i is None:
        return kept, limits, False
    floor = min(natural[i], max(name_floor, minimum))
    for column in late_drop:
        if width - (total(False) - natural[i]) >= floor:
            break
        if (j := index(column)) is not None:
            kept.remove(j)
    room = width - (total(False) - natural[i])
    if room < natural[i]:
        limits[i] = max(room, min(8, natural[i]))
    return kept, limits, False


def middle_cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, cut in the middle: ``rolli…_000220.pt``, so names that
    share a prefix (every rolling checkpoint's) stay apart by their ends."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = max(1, (width - 1) // 3)
    tail = width - 1 - head
    cut = text[:head] + "…" + text[len(text) - tail :]
    while cell_len(cut) > width and tail > 0:  # wide characters: trim until it fits
        tail -= 1
        cut = text[:head] + "…" + text[len(text) - tail :]
    return cut


def styled_line(text: str, style: str = ""):
    """A Rich ``Text`` of ``text`` (already escaped), never parsed as markup."""
    from rich.text import Text

    return Text(text, style=style)
