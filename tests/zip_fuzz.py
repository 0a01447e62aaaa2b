"""A structure-aware fuzzer of the zip reader against torch's own (used by tests and bench/fuzz_zip.py).

Mutations start from small real ``torch.save`` archives and act on the zip's structure: central
and local header fields, names (ASCII case, NUL, control characters, another prefix), a record's
local header offset pointed at another record, duplicated and reordered records (rebuilt with
:func:`tests.hostile.raw_zip`), truncation and flipped bytes. :func:`judge` asserts the property:
ckptctl's only exceptions are its verdicts, and every archive it reads is one
``torch.load(weights_only=True)`` reads too, with the same keys, tensor names, dtypes and shapes.
"""

from __future__ import annotations

import collections
import io
import os
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from ckptctl.errors import CheckpointError
from ckptctl.formats.reader import iter_tensors, read_checkpoint
from tests import hostile

EXAMPLES = int(os.environ.get("CKPTCTL_FUZZ_EXAMPLES", "120"))
VERDICTS: collections.Counter = collections.Counter()  # filled by judge(); bench/fuzz_zip.py prints it

CENTRAL_FIELDS = {"flags": (8, "H"), "method": (10, "H"), "crc": (16, "I"), "csize": (20, "I"), "usize": (24, "I"),
                  "name_len": (28, "H"), "extra_len": (30, "H"), "offset": (42, "I")}  # fmt: skip
LOCAL_FIELDS = {"flags": (6, "H"), "method": (8, "H"), "crc": (14, "I"), "csize": (18, "I"), "usize": (22, "I"),
                "name_len": (26, "H"), "extra_len": (28, "H")}  # fmt: skip
NAME_BYTES = [ord("A"), ord("a"), ord("D"), ord("/"), ord("."), 0, 0x1B, 0x7F, 0xE9, ord("\\")]

_SEEDS: list[bytes] = []


def seeds() -> list[bytes]:
    """Three small real archives: protocol 2, CRC-32 off, and a different state (built once)."""
    if not _SEEDS:
        import torch

        states = [{"w": torch.arange(12.0).reshape(3, 4), "b": torch.zeros(4, dtype=torch.int64), "step": 7},
                  {"model": {"x": torch.ones(2, dtype=torch.float16)}, "epoch": 1, "tag": "t"}]  # fmt: skip
        for index, state in enumerate(states):
            buffer = io.BytesIO()
            torch.save(state, buffer)
            _SEEDS.append(buffer.getvalue())
            if index == 0 and hasattr(torch.serialization, "set_crc32_options"):
                torch.serialization.set_crc32_options(False)
                try:
                    buffer = io.BytesIO()
                    torch.save(state, buffer)
                    _SEEDS.append(buffer.getvalue())
                finally:
                    torch.serialization.set_crc32_options(True)
    return _SEEDS


def _layout(data: bytes) -> tuple[list[int], list[int]]:
    """Offsets of the local headers and of the central headers, in directory order.

    Read from the (well-formed, unmutated) end record by the spec, not by a zip library: the
    rebuilt archives hold names no library decodes.
    """
    count, _size, start = struct.unpack_from("<HII", data, len(data) - 12)
    local, central, pos = [], [], start
    for _ in range(count):
        central.append(pos)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        offset = struct.unpack_from("<I", data, pos + 42)[0]
        if offset == 0xFFFFFFFF:  # raw_zip(zip64=True): sizes, then the offset, in the zip64 extra field
            offset = struct.unpack_from("<Q", data, pos + 46 + name_len + 4 + 16)[0]
        local.append(offset)
        pos += 46 + name_len + extra_len + comment_len
    return local, central


def _set(raw: bytearray, at: int, fmt: str, value: int) -> None:
    size = struct.calcsize("<" + fmt)
    if 0 <= at and at + size <= len(raw):
        struct.pack_into("<" + fmt, raw, at, value % (1 << (8 * size)))


@st.composite
def byte_mutations(draw: Any, data: bytes) -> bytes:
    """1-3 edits of header fields, names, offsets; then maybe a truncation or a flipped byte."""
    local, central = _layout(data)
    raw = bytearray(data)
    n = len(local)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["central", "local", "central_name", "local_name", "retarget", "flip"]))
        i = draw(st.integers(0, n - 1))
        if kind in ("central", "local"):
            fields = CENTRAL_FIELDS if kind == "central" else LOCAL_FIELDS
            field, (offset, fmt) = draw(st.sampled_from(sorted(fields.items())))
            base = central[i] if kind == "central" else local[i]
            old = struct.unpack_from("<" + fmt, raw, base + offset)[0]
            value = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(old - 70, old + 70),
                                   st.sampled_from([0, 0xFFFF, 0xFFFFFFFF])))  # fmt: skip
            _set(raw, base + offset, fmt, value)
        elif kind in ("central_name", "local_name"):
            base, name_at = (central[i], 46) if kind == "central_name" else (local[i], 30)
            name_len = struct.unpack_from("<H", raw, base + 28 if kind == "central_name" else base + 26)[0]
            if name_len:
                at = base + name_at + draw(st.integers(0, name_len - 1))
                if at < len(raw):
                    raw[at] = draw(st.sampled_from(NAME_BYTES + [raw[at] ^ 0x20]))
        elif kind == "retarget":
            _set(raw, central[i] + 42, "I", local[draw(st.integers(0, n - 1))])
        else:
            at = draw(st.integers(0, len(raw) - 1))
            raw[at] ^= 1 << draw(st.integers(0, 7))
    if draw(st.booleans()) and draw(st.booleans()):
        raw = raw[: draw(st.integers(1, len(raw)))]
    return bytes(raw)


def _variant(draw: Any, name: bytes) -> bytes:
    kind = draw(st.sampled_from(["upper", "nul", "prefix", "control", "same"]))
    prefix, _, rest = name.partition(b"/")
    if kind == "upper":
        return name.upper() if draw(st.booleans()) else prefix + b"/" + rest.upper()
    if kind == "nul":
        return name + b"\0" + draw(st.binary(max_size=3))
    if kind == "prefix":
        return b"other/" + rest
    if kind == "control":
        return name[:-1] + b"\n"
    return name


@st.composite
def rebuilt(draw: Any, data: bytes) -> bytes:
    """The seed's records rebuilt with renamed, duplicated (under a name variant) and reordered records."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    entries = []
    for info in infos:  # the bytes straight from the file: zipfile.read would check the (maybe switched off) CRC
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + 30 + name_len + extra_len
        entries.append(hostile.RawEntry(info.filename.encode(), data[start : start + info.compress_size]))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(entries) - 1))
        action = draw(st.sampled_from(["duplicate", "rename", "local_rename", "swap"]))
        entry = entries[i]
        if action == "duplicate":
            other = entries[draw(st.integers(0, len(entries) - 1))].data
            entries.insert(draw(st.integers(0, len(entries))), hostile.RawEntry(_variant(draw, entry.name), other))
        elif action == "rename":
            entries[i] = hostile.RawEntry(_variant(draw, entry.name), entry.data)
        elif action == "local_rename":
            entries[i] = hostile.RawEntry(entry.name, entry.data, local_name=_variant(draw, entry.name))
        else:
            j = draw(st.integers(0, len(entries) - 1))
            entries[i], entries[j] = entries[j], entries[i]
    with tempfile.TemporaryDirectory() as tmp:
        return hostile.raw_zip(Path(tmp) / "z", entries, zip64=draw(st.booleans())).read_bytes()


@st.composite
def archives(draw: Any) -> bytes:
    data = draw(st.sampled_from(seeds()))
    if draw(st.booleans()):
        data = draw(rebuilt(data))
        return draw(byte_mutations(data)) if draw(st.booleans()) and draw(st.booleans()) else data
    return draw(byte_mutations(data))


def _inventory(root: Any, is_tensor: Any, dtype: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    return sorted((name, dtype(t), tuple(t.shape)) for name, t in iter_tensors(root, is_tensor))


def judge(path: Path) -> str:
    """ckptctl's verdict on ``path``; for "ok", assert torch reads the same object."""
    try:
        ckpt = read_checkpoint(path)
        fast = read_checkpoint(path, spans=False)
    except CheckpointError as exc:
        VERDICTS[exc.status] += 1
        return exc.status
    import torch

    from ckptctl.formats.torch_load import safe_globals

    with safe_globals():
        loaded = torch.load(path, map_location="cpu", weights_only=True)  # any exception: a disagreement
    ours = sorted((name, t.dtype, tuple(t.shape)) for name, t in ckpt.tensors())
    theirs = _inventory(loaded, torch.is_tensor, lambda t: str(t.dtype).removeprefix("torch."))
    assert ours == theirs, (ours, theirs)
    assert fast.root.keys() == ckpt.root.keys() == loaded.keys()
    VERDICTS["ok"] += 1
    return "ok"
