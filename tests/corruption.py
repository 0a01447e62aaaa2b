"""A corruption corpus built from a real torch checkpoint: every way a file gets damaged on disk.

The offsets come from Python's ``zipfile`` and the zip spec directly (not from ckptctl's own
parser), so a bug in ``ckptctl.formats.container`` cannot hide a case. Each case carries a regular
expression its verdict must match: "invalid" alone is not enough, the reason must be specific.
"""

from __future__ import annotations

import io
import random
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
CENTRAL_HEADER_SIZE = 46
EOCD_SIZE = 22

TRUNCATED = r"truncated|central directory missing|not a zip|extends past|is short"
CRC = r"CRC mismatch"
END = r"end of central directory|zip64"
HEADER = r"local header|bad local header signature|local and central names differ|data descriptor"


@dataclass(frozen=True)
class Case:
    """One damaged file: what was done, its bytes, and the pattern its reported problem must match."""

    name: str
    data: bytes
    expect: str

    def matches(self, problems: list[str]) -> bool:
        return any(re.search(self.expect, p) for p in problems)


@dataclass(frozen=True)
class Layout:
    """Where things are in a torch zip, found with ``zipfile`` and the spec's header layout."""

    data: bytes
    records: dict[str, tuple[int, int, int]]  # key -> (local header offset, data offset, size)
    central: list[int]  # offsets of the central directory headers
    start_dir: int
    eocd: int

    @classmethod
    def of(cls, data: bytes) -> "Layout":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            start_dir = zf.start_dir
        records = {}
        for info in infos:
            fields = LOCAL_HEADER.unpack_from(data, info.header_offset)
            offset = info.header_offset + LOCAL_HEADER.size + fields[9] + fields[10]
            records[info.filename.split("/", 1)[1]] = (info.header_offset, offset, info.compress_size)
        central, pos = [], start_dir
        while data[pos : pos + 4] == b"PK\x01\x02":
            central.append(pos)
            name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
            pos += CENTRAL_HEADER_SIZE + name_len + extra_len + comment_len
        return cls(data, records, central, start_dir, data.rindex(b"PK\x05\x06"))

    def tensor_keys(self) -> list[str]:
        return [k for k, (_h, _o, size) in self.records.items() if k.startswith("data/") and size > 0]


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= mask
    return bytes(damaged)


def truncations(layout: Layout) -> list[Case]:
    """Cut the file inside a tensor record, inside data.pkl, inside/at the central directory."""
    data = layout.data
    _h, pkl_offset, pkl_size = layout.records["data.pkl"]
    key = layout.tensor_keys()[0]
    _h, t_offset, t_size = layout.records[key]
    cuts = {
        "inside data.pkl": pkl_offset + pkl_size // 2,
        "right after data.pkl's header": pkl_offset,
        f"inside record {key}": t_offset + t_size // 2,
        "at the central directory": layout.start_dir,
        "inside the central directory": layout.start_dir + (layout.eocd - layout.start_dir) // 2,
        "inside the end record": layout.eocd + EOCD_SIZE // 2,
        "one byte short": len(data) - 1,
        "to 4 bytes": 4,
    }
    cases = [Case(f"truncated {where}", data[:cut], TRUNCATED) for where, cut in cuts.items()]
    cases.append(Case("zero length", b"", r"empty file"))
    return cases


def byte_flips(layout: Layout) -> list[Case]:
    """A single flipped bit in each region: pickle, tensor data, small records, headers, descriptors."""
    data = layout.data
    cases = []
    _h, pkl_offset, pkl_size = layout.records["data.pkl"]
    for frac in (0.0, 0.5, 1.0):
        at = pkl_offset + min(pkl_size - 1, int(pkl_size * frac))
        cases.append(Case(f"flip in data.pkl at +{at - pkl_offset}", flip(data, at), r"record data\.pkl: CRC mismatch"))
    for key in layout.tensor_keys()[:3]:
        _h, offset, size = layout.records[key]
        cases.append(Case(f"flip in {key}", flip(data, offset + size // 2, 0x80), rf"record {re.escape(key)}: CRC mismatch"))
    for key in ("byteorder", "version"):
        if key in layout.records:
            _h, offset, _size = layout.records[key]
            cases.append(Case(f"flip in {key}", flip(data, offset), rf"record {key}: CRC mismatch"))
    header, offset, size = layout.records[layout.tensor_keys()[0]]
    cases += [
        Case("flip in a local header signature", flip(data, header + 1), HEADER),
        Case("flip in a local header name", flip(data, header + LOCAL_HEADER.size + 2), HEADER),
        Case("flip in a local header's flags", flip(data, header + 6, 0x02), HEADER),
        Case("flip in a local header's time", flip(data, header + 10), HEADER),
        Case("flip in a local header's zero CRC", flip(data, header + 14), HEADER),
        Case("flip in a data descriptor CRC", flip(data, offset + size + 4), HEADER),
        Case("flip in a data descriptor size", flip(data, offset + size + 8), HEADER),
        Case("flip in a central directory CRC", flip(data, layout.central[0] + 16), CRC + "|" + HEADER),
        Case("flip in a central directory size", flip(data, layout.central[0] + 20, 0x10), TRUNCATED + "|overlap|holds|descriptor|contradictory sizes|" + HEADER),
        Case("flip in a central directory name", flip(data, layout.central[0] + CENTRAL_HEADER_SIZE + 2), r"names differ|share one|missing"),
        Case("flip in a central header offset", flip(data, layout.central[1] + 42, 0x04), HEADER + "|overlap"),
        Case("flip in the end record's directory offset", flip(data, layout.eocd + 16, 0x04), END),
        Case("flip in the end record's entry count", flip(data, layout.eocd + 10), END),
        Case("flip in the zip64 end record's directory offset", flip(data, layout.eocd - 20 - 56 + 48, 0x04), END + "|" + HEADER + "|" + TRUNCATED),
        Case("flip in the zip64 locator", flip(data, layout.eocd - 20 + 8, 0x04), END),
    ]  # fmt: skip
    return cases


def structural(layout: Layout, rng: random.Random) -> list[Case]:
    """Whole-file damage: random bytes, a missing record, a duplicate entry, renamed local entry."""
    data = layout.data
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        entries = [(info.filename, zf.read(info)) for info in zf.infolist()]
    missing_key = layout.tensor_keys()[0]
    without = _rezip([(n, b) for n, b in entries if not n.endswith("/" + missing_key)])
    duplicate = _rezip(entries + [entries[1]])
    header, _o, _s = layout.records["data.pkl"]
    renamed = bytearray(data)
    name_at = header + LOCAL_HEADER.size + data[header + LOCAL_HEADER.size :].index(b"data.pkl")
    renamed[name_at : name_at + 8] = b"data.pkX"
    return [
        Case("random bytes", rng.randbytes(len(data)), r"unknown file format|not a checkpoint|corrupt pickle"),
        Case("random bytes behind a zip signature", b"PK\x03\x04" + rng.randbytes(4096), TRUNCATED),
        Case(f"missing record {missing_key}", without, rf"missing record {re.escape(missing_key)}"),
        Case("duplicate entry name", duplicate, r"duplicate entry name"),
        Case("local and central names differ", bytes(renamed), r"local and central names differ"),
    ]


def _rezip(entries: list[tuple[str, bytes]]) -> bytes:
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we want
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, payload in entries:
                zf.writestr(name, payload)
    return buffer.getvalue()


def build_corpus(source: Path, seed: int = 0) -> list[Case]:
    """Every damaged variant of ``source`` (a torch zip checkpoint written with CRC-32 on)."""
    layout = Layout.of(source.read_bytes())
    return truncations(layout) + byte_flips(layout) + structural(layout, random.Random(seed))


def many_truncations(source: Path, count: int, seed: int = 0) -> list[Case]:
    """Truncations at ``count`` random offsets (plus every record boundary): all must be invalid."""
    data = source.read_bytes()
    layout = Layout.of(data)
    rng = random.Random(seed)
    offsets = {o for _h, o, _s in layout.records.values()} | {rng.randrange(0, len(data)) for _ in range(count)}
    return [Case(f"truncated to {cut} bytes", data[:cut], TRUNCATED + r"|empty file") for cut in sorted(offsets)]


def write_cases(cases: list[Case], directory: Path, name: str = "latest.pt") -> list[tuple[Case, Path]]:
    """Each case as ``<directory>/<n>/<name>`` (a layout name, so the layout checks run too)."""
    written = []
    for index, case in enumerate(cases):
        path = directory / f"{index:03d}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.data)
        written.append((case, path))
    return written
