"""Where output goes: data to stdout, everything else to stderr; Rich on a terminal, plain when piped.

Also the one table that maps core exceptions to a single line on stderr and an exit code.

Every helper here passes text through :func:`render.display_text` on its way out: names, keys,
values and error messages come from files an attacker may have written, so control characters
are shown escaped (``\\x1b``, ``\\r``) instead of reaching the terminal. Commands that build their
own Rich objects call :func:`styled` (or ``display_text``) for each file-derived string.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Any, Callable, Iterable, Sequence, TypeVar

import typer

from ..errors import EXIT_DECLINED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, CkptctlError
from .render import display_text

F = TypeVar("F", bound=Callable[..., Any])


ENCODING_FALLBACK = "ckptctl-ascii"


def survive_any_encoding() -> None:
    """Make stdout and stderr write anything, whatever their encoding (called before every command).

    Under ``LC_ALL=C`` or ``PYTHONIOENCODING=ascii`` a sparkline block or an em dash would otherwise
    end the command with a UnicodeEncodeError. A stream that cannot encode the tool's decorations
    gets :func:`render.ascii_fallback` as its error handler: ASCII look-alikes for the decorations,
    escapes (``\\xe9``) for any other character. Streams that can (UTF-8) are left alone.
    """
    import codecs

    from .render import ASCII_LOOKALIKES, ascii_fallback

    try:
        codecs.lookup_error(ENCODING_FALLBACK)
    except LookupError:
        codecs.register_error(ENCODING_FALLBACK, ascii_fallback)
    for stream in (sys.stdout, sys.stderr):
        if not _can_encode(stream, "".join(ASCII_LOOKALIKES)) and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors=ENCODING_FALLBACK)
            except (ValueError, OSError, TypeError):  # a closed or unusual stream: leave it as it is
                pass


def _can_encode(stream: Any, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def debug_enabled() -> bool:
    return os.environ.get("CKPTCTL_DEBUG", "") not in ("", "0")


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def can_prompt() -> bool:
    """A person is there to answer: stdin and stderr (where the question goes) are both terminals."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def confirm_or_exit(question: str, *, refusal: str, declined: str = "nothing changed", declined_code: int = EXIT_DECLINED) -> None:
    """Ask ``question`` on stderr and return only on "yes".

    Never prompts off a terminal: cron and pipes get ``refusal`` (one line, exit 2) instead of a
    hang. Ctrl+C or end of input at the prompt exits 130; "no" exits ``declined_code`` (1 for every
    command, docs/exit-codes.md: nothing was done, so a script must not read it as success).
    """
    if not can_prompt():
        raise fail(refusal, EXIT_USAGE)
    try:
        confirmed = typer.confirm(display_text(question), default=False, err=True)
    except typer.Abort:
        print(f"\nckptctl: interrupted, {declined}", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not confirmed:
        print(f"ckptctl: {declined}", file=sys.stderr)
        raise typer.Exit(declined_code)


def err_console():
    """A Rich console on stderr (markup and emoji codes off: a file named ``[red]x`` or ``:ok:``
    is shown as it is spelled, never interpreted)."""
    from rich.console import Console

    return Console(stderr=True, markup=False, emoji=False, highlight=False)


def out_console():
    from rich.console import Console

    return Console(markup=False, emoji=False, highlight=False)


def styled(text: object, style: str = "") -> Any:
    """A Rich ``Text`` of ``text`` escaped for the terminal (Text is never parsed as markup)."""
    from rich.text import Text

    return Text(display_text(text), style=style)


def print_line(text: object, console: Any = None) -> None:
    """One line of a report on stdout, escaped: through Rich's ``console`` when given, else plain."""
    if console is None:
        print(display_text(text))
    else:
        console.print(styled(text))


def warn(message: str) -> None:
    print(f"ckptctl: {display_text(message)}", file=sys.stderr)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one error line on stderr; return the Exit to raise (``raise fail(...)``)."""
    print(f"ckptctl: error: {display_text(message)}", file=sys.stderr)
    return typer.Exit(code)


SCHEMA_VERSION = 1  # every --json document's "schema_version"; bumped only if a key's meaning changes


def print_json(document: Any) -> None:
    """One JSON document on stdout, with ``schema_version`` first (added here so no command forgets it).

    The shapes are described by ``ckptctl/schemas/<command>.json`` and docs/json.md.
    """
    import json  # only for --json: kept out of the other reports' start-up

    if isinstance(document, dict):
        document = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in document.items() if k != "schema_version"}}

    text = json.dumps(document, indent=2, default=_json_default, ensure_ascii=False)
    if not _can_encode(sys.stdout, text):  # LC_ALL=C: JSON's own \u escapes, never the fallback's
        text = json.dumps(document, indent=2, default=_json_default, ensure_ascii=True)
    sys.stdout.write(text + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return repr(value)


def handle_errors(func: F) -> F:
    """Turn expected errors into one stderr line and their exit code; tracebacks only in debug."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except CkptctlError as exc:
            if debug_enabled():
                traceback.print_exc()
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            print("ckptctl: interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            _silence_broken_pipe()
            raise typer.Exit(0) from None
        except Exception as exc:  # an unexpected bug: still one line, trace with CKPTCTL_DEBUG=1
            if debug_enabled():
                traceback.print_exc()
            raise fail(f"internal error: {type(exc).__name__}: {exc} (set CKPTCTL_DEBUG=1 for the trace)", EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def _silence_broken_pipe() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def plain_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Aligned plain-text columns for pipes (no box drawing, no colour); every cell escaped."""
    rows = [list(map(display_text, r)) for r in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def print_table(console: Any, title: str | None, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A titled table on stdout: Rich when ``console`` is given (a terminal), else aligned plain text
    followed by a blank line (so sections stay apart when piped)."""
    rows = [[display_text(cell) for cell in row] for row in rows]
    if console is None:
        if title:
            print(display_text(title))
        print(plain_table(headers, rows))
        print()
        return
    from rich.table import Table

    table = Table(title=styled(title) if title else None, title_justify="left", header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*map(styled, row))
    console.print(table)
