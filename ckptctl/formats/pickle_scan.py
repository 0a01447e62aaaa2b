"""Name the globals any pickle refers to, without unpickling, importing or running anything.

The restricted unpickler (:mod:`ckptctl.formats.unpickler`) decides what ckptctl *reads*; it only runs on
files that look like torch checkpoints. Scanners such as picklescan, modelscan or fickling also
name the dangerous global in every other pickle: protocol 0/1 pickles, bare ``.pkl``/``.bin``
files, numpy ``.npy`` files holding objects, pickles inside a zip that is not a torch archive, the
legacy torch stream after a damaged header. This module is that scanner: an abstract walk of the
opcodes (each opcode's argument layout and stack effect come from :mod:`pickletools`' table) that
tracks which strings sit on the stack and in the memo, so ``STACK_GLOBAL`` is resolved from the
pushes (or memo reads) that feed it, as well as ``GLOBAL``/``INST`` and registered ``EXT`` codes.

Work is bounded: a budget of opcodes shared by every pickle of one file, strings kept only while
short enough to be names, arguments skipped by length rather than copied.
"""

from __future__ import annotations

import codecs
import copyreg
import re
from dataclasses import dataclass, field
from typing import Any

MAX_OPCODES = 5_000_000  # per file: ~3 s of Python here; a longer pickle is scanned up to this point
MAX_NAME = 1024  # strings longer than this are never a module or attribute name
MAX_PICKLES = 16  # consecutive pickles in one stream (the legacy format has five)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")

_UNKNOWN = object()  # any stack value that is not a (short) string


class _Truncated(Exception):
    """The pickle ends or breaks here: stop, keeping what was found so far."""


@dataclass(frozen=True)
class _Op:
    name: str
    arg: int | None  # pickletools' ``n``: fixed size, or one of its negative markers
    pops: int  # items below the mark (or all items, without a mark)
    to_mark: bool
    pushes: int


def _table() -> dict[int, _Op]:
    import pickletools

    table = {}
    for info in pickletools.opcodes:
        before = list(info.stack_before)
        to_mark = pickletools.markobject in before
        pops = before.index(pickletools.markobject) if to_mark else len(before)
        table[ord(info.code)] = _Op(info.name, info.arg.n if info.arg else None, pops, to_mark, len(info.stack_after))
    return table


_OPS: dict[int, _Op] | None = None
_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_LENGTH_BYTES = {-2: (1, False), -3: (4, True), -4: (4, False), -5: (8, False)}  # pickletools' TAKEN_FROM_ARGUMENT*


@dataclass
class Budget:
    """Opcodes left for one file (all its pickles together)."""

    opcodes: int = MAX_OPCODES

    def spend(self) -> None:
        self.opcodes -= 1
        if self.opcodes < 0:
            raise _Truncated("opcode budget used up")


@dataclass
class Scan:
    """What one pickle names. ``end`` is the offset after its STOP (or where the walk stopped)."""

    globals: list[str] = field(default_factory=list)
    end: int = 0
    complete: bool = False  # reached STOP
    error: str | None = None


def scan_pickle(data: Any, start: int = 0, budget: Budget | None = None) -> Scan:
    """Walk one pickle in ``data`` (bytes, memoryview or mmap) from ``start``; never raises."""
    global _OPS
    if _OPS is None:
        _OPS = _table()
    walk = _Walk(data, start, budget or Budget())
    try:
        walk.run()
    except _Truncated as exc:
        walk.result.error = str(exc) or "truncated"
    except RecursionError:  # pragma: no cover - the walk is iterative
        walk.result.error = "too deep"
    walk.result.end = walk.pos
    return walk.result


def scan_stream(data: Any, start: int = 0, budget: Budget | None = None) -> list[str]:
    """Every global named by the consecutive pickles from ``start`` (a legacy torch file holds five)."""
    budget = budget or Budget()
    names: list[str] = []
    for _ in range(MAX_PICKLES):
        scan = scan_pickle(data, start, budget)
        names += [n for n in scan.globals if n not in names]
        if not scan.complete or scan.end >= len(data):
            break
        start = scan.end
    return names


class _Walk:
    def __init__(self, data: Any, start: int, budget: Budget):
        self.data = data
        self.pos = start
        self.budget = budget
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.result = Scan()

    # --- reading -------------------------------------------------------------------------------

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Truncated("truncated")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise _Truncated("truncated")
        self.pos += n

    def line(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise _Truncated("truncated")
        chunk = bytes(self.data[self.pos : end]) if end - self.pos <= MAX_NAME else b""
        self.pos = end + 1
        return chunk

    def argument(self, op: _Op) -> Any:
        """The argument of ``op``: an int or bytes when needed later, else skipped (None)."""
        n = op.arg
        if n is None:
            return None
        if n > 0:
            raw = self.take(n)
            return int.from_bytes(raw, "little") if op.name in ("BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT", "EXT1", "EXT2", "EXT4") else None
        if n == -1:  # up to a newline (GLOBAL and INST: two lines)
            first = self.line()
            if op.name in ("GLOBAL", "INST"):
                return first, self.line()
            return first
        size, signed = _LENGTH_BYTES[n]
        length = int.from_bytes(self.take(size), "little", signed=signed)
        if op.name in _STRINGS and length <= MAX_NAME:
            return self.take(length)
        self.skip(length)
        return _UNKNOWN

    # --- the stack -----------------------------------------------------------------------------

    def pop(self) -> Any:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) <= floor:
            raise _Truncated("stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> None:
        if not self.marks:
            raise _Truncated("no mark")
        del self.stack[self.marks.pop() :]

    def name(self, module: Any, name: Any) -> None:
        """Record ``module.name`` if Python could import it.

        Operands that are not strings pushed by the pickle itself name nothing: pickle's
        STACK_GLOBAL refuses anything but ``str``, and the only other way to make one on the stack
        is a call, whose callable is a global named here already. Nor can a name that is no
        identifier be imported; random bytes walked as a pickle produce such names.
        """
        if not (isinstance(module, str) and isinstance(name, str) and NAME.match(module) and NAME.match(name)):
            return
        full = f"{module}.{name}"
        if full not in self.result.globals:
            self.result.globals.append(full)

    # --- the walk ------------------------------------------------------------------------------

    def run(self) -> None:
        ops = _OPS
        assert ops is not None
        while True:
            self.budget.spend()
            if self.pos >= len(self.data):
                raise _Truncated("truncated")
            op = ops.get(self.data[self.pos])
            if op is None:
                raise _Truncated(f"unknown opcode at {self.pos}")
            self.pos += 1
            arg = self.argument(op)
            if op.name == "STOP":
                self.result.complete = True
                return
            self.step(op, arg)

    def step(self, op: _Op, arg: Any) -> None:
        name = op.name
        if name in _STRINGS:
            self.stack.append(_string(name, arg))
        elif name == "MARK":
            self.marks.append(len(self.stack))
        elif name in ("GLOBAL", "INST"):
            self.name(_utf8(arg[0]), _utf8(arg[1]))
            if name == "INST":
                self.pop_mark()
            self.stack.append(_UNKNOWN)
        elif name == "STACK_GLOBAL":
            attr, module = self.pop(), self.pop()
            self.name(module, attr)
            self.stack.append(_UNKNOWN)
        elif name in ("EXT1", "EXT2", "EXT4"):
            pair = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
            if pair:  # an unregistered code fails to load: nothing to name
                self.name(*pair)
            self.stack.append(_UNKNOWN)
        elif name == "DUP":
            value = self.pop()
            self.stack += [value, value]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not self.stack:
                raise _Truncated("memo of an empty stack")
            index = len(self.memo) if name == "MEMOIZE" else _memo_index(arg)
            self.memo[index] = self.stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            self.stack.append(self.memo.get(_memo_index(arg), _UNKNOWN))
        elif name == "POP":
            if self.marks and len(self.stack) == self.marks[-1]:
                self.marks.pop()  # POP on an empty frame drops the mark, as pickle does
            else:
                self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        else:  # PROTO, FRAME, containers, REDUCE, BUILD...: only the stack effect matters
            if op.to_mark:
                self.pop_mark()
            for _ in range(op.pops):
                self.pop()
            self.stack += [_UNKNOWN] * op.pushes


def _memo_index(arg: Any) -> int:
    if isinstance(arg, int):
        return arg
    try:
        return int(arg)
    except (TypeError, ValueError):
        raise _Truncated("bad memo index") from None


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _string(opname: str, raw: Any) -> Any:
    """The str a string opcode pushes (as the unpickler decodes it), or unknown when too long."""
    if not isinstance(raw, bytes):
        return _UNKNOWN
    try:
        if opname == "STRING":  # protocol 0: a quoted repr
            if len(raw) < 2 or raw[:1] != raw[-1:] or raw[:1] not in (b"'", b'"'):
                raise _Truncated("bad STRING")
            return codecs.escape_decode(raw[1:-1])[0].decode("latin-1")
        if opname in ("BINSTRING", "SHORT_BINSTRING"):
            return raw.decode("latin-1")
        if opname == "UNICODE":
            return raw.decode("raw-unicode-escape")
        return raw.decode("utf-8", "surrogatepass")
    except (UnicodeDecodeError, ValueError):
        return _UNKNOWN


# ------------------------------------------------------------------------------------- file kinds


NPY_MAGIC = b"\x93NUMPY"


def npy_payload_offset(data: Any) -> int | None:
    """Where the pickle of an object ``.npy`` starts (after its header), or None if not ``.npy``."""
    if bytes(data[:6]) != NPY_MAGIC or len(data) < 10:
        return None
    major = data[6]
    if major == 1:
        return 10 + int.from_bytes(bytes(data[8:10]), "little")
    if major in (2, 3) and len(data) >= 12:
        return 12 + int.from_bytes(bytes(data[8:12]), "little")
    return None


def scan_file_bytes(data: Any, budget: Budget | None = None) -> list[str]:
    """The globals of a whole file's bytes: an ``.npy`` array's pickle, or pickles from offset 0."""
    offset = npy_payload_offset(data)
    return scan_stream(data, offset if offset is not None else 0, budget)


MAX_MEMBER_BYTES = 256 * 1024 * 1024  # decompressed bytes scanned across one zip's members
MAX_MEMBERS = 10_000
MEMBER_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dat", ".data", ".bin", ".pt", ".pth", ".ckpt", ".npy")


def unsafe_globals(fh: Any, size: int, kind: str) -> list[str]:
    """Globals outside :data:`ckptctl.formats.unpickler.ALLOWED` named by any pickle in the open file ``fh``.

    ``kind`` is :func:`ckptctl.formats.container.sniff_format`'s answer: a zip has its pickle-like members
    scanned (decompressed within a budget), anything else is scanned from its first byte (an
    ``.npy`` after its header). Never raises for damaged input.
    """
    from .unpickler import ALLOWED

    try:
        if kind == "zip":
            names = _zip_globals(fh)
        else:
            data = _file_bytes(fh, size)
            try:
                names = scan_file_bytes(data)
            finally:
                if hasattr(data, "close"):
                    data.close()
    except (OSError, ValueError, MemoryError):
        return []
    return [name for name in names if name not in ALLOWED]


def _file_bytes(fh: Any, size: int) -> Any:
    """The whole file without reading it up front: a read-only mapping locally, else its bytes."""
    import mmap

    try:
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, AttributeError):
        fh.seek(0)
        return fh.read(min(size, MAX_MEMBER_BYTES))


def _zip_globals(fh: Any) -> list[str]:
    """Every pickle-like member of a zip (by suffix, or starting like a pickle or an ``.npy``).

    ``zipfile`` only lists the members; their bytes are taken from behind each local header
    directly, so a member whose local name or CRC-32 disagrees with the directory (which
    ``zipfile`` refuses to open, but pickle loaders reading the bytes do not care) is scanned too.
    """
    import zipfile

    budget = Budget()
    left = MAX_MEMBER_BYTES
    names: list[str] = []
    fh.seek(0)
    try:
        with zipfile.ZipFile(fh) as archive:
            infos = archive.infolist()[:MAX_MEMBERS]
    except Exception:  # any damage zipfile cannot read: nothing more to name
        return []
    for info in infos:
        if left <= 0:
            break
        by_name = info.filename.lower().endswith(MEMBER_SUFFIXES)
        head = _member_bytes(fh, info, 16)  # a storage record is not read whole just to be skipped
        if head is None or not (by_name or head[:1] == b"\x80" or head.startswith(NPY_MAGIC)):
            continue
        data = _member_bytes(fh, info, left)
        if data is None:
            continue
        left -= len(data)
        names += [n for n in scan_file_bytes(data, budget) if n not in names]
    return names


def _member_bytes(fh: Any, info: Any, limit: int) -> bytes | None:
    """A member's (decompressed) bytes, at most ``limit``; None when they cannot be had."""
    import zlib

    try:
        fh.seek(info.header_offset)
        header = fh.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            return None
        fh.seek(info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little"))
        raw = fh.read(min(info.compress_size, limit))
        if info.compress_type == 0:
            return raw
        if info.compress_type == 8:
            return zlib.decompressobj(-15).decompress(raw, limit)
    except (OSError, ValueError, zlib.error, OverflowError):
        return None
    return None  # other methods (bzip2, lzma): not scanned
