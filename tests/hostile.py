"""Builders of hostile checkpoints: pickles that run code when loaded unsafely, and damaged files.

Every "live" payload, unpickled by the standard ``pickle`` module, creates ``marker`` (a test in
test_unpickler proves it), so a reader that refuses it is shown not to execute it when ``marker``
is still absent afterwards. Pickles are assembled opcode by opcode (no ``__reduce__`` classes), so
each one uses exactly the opcode path it is named for: GLOBAL, STACK_GLOBAL, INST, OBJ, EXT1, ...
"""

from __future__ import annotations

import copyreg
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
EXT_CODE = 0xF1  # an extension code no library registers
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _str(text: str) -> bytes:
    """A protocol-2 safe string push (BINUNICODE)."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    """Protocol 0-2 GLOBAL opcode."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _stack_global(module: str, name: str) -> bytes:
    """Protocol 4 STACK_GLOBAL: module and name come from the stack."""
    return _str(module) + _str(name) + b"\x93"


def _call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)`` through REDUCE."""
    return func + b"(" + b"".join(args) + b"tR"


def _touch(marker: Path) -> str:
    return f"touch '{marker}'"


def _wrap(body: bytes, proto: int = 2) -> bytes:
    """A dict ``{"step": 1, "model": <body>}``: looks like a checkpoint until ``model`` is built."""
    return bytes([0x80, proto]) + b"}(" + _str("step") + b"K\x01" + _str("model") + body + b"u."


def system_global(marker: Path) -> bytes:
    return _wrap(_call(_global("os", "system"), _str(_touch(marker))))


def system_stack_global(marker: Path) -> bytes:
    return _wrap(_call(_stack_global("os", "system"), _str(_touch(marker))), proto=4)


def posix_system(marker: Path) -> bytes:
    return _wrap(_call(_global("posix", "system"), _str(_touch(marker))))


def exec_builtin(marker: Path) -> bytes:
    return _wrap(_call(_global("builtins", "exec"), _str(f"open({str(marker)!r}, 'w').close()")))


def eval_builtin(marker: Path) -> bytes:
    return _wrap(_call(_stack_global("builtins", "eval"), _str(f"open({str(marker)!r}, 'w').close()")), proto=4)


def subprocess_popen(marker: Path) -> bytes:
    argv = b"(" + _str("touch") + _str(str(marker)) + b"l"  # a list ['touch', marker]
    return _wrap(_call(_global("subprocess", "Popen"), argv))


def import_module_chain(marker: Path) -> bytes:
    """getattr(importlib.import_module('os'), 'system')('touch marker')."""
    module = _call(_global("importlib", "import_module"), _str("os"))
    system = _call(_global("builtins", "getattr"), module, _str("system"))
    return _wrap(system + b"(" + _str(_touch(marker)) + b"tR")


def protocol0_inst(marker: Path) -> bytes:
    """Protocol 0 INST: ``(S'cmd'\\nios\\nsystem\\n`` instantiates os.system with the marked args."""
    return b"(dS'model'\n(S'" + _touch(marker).encode() + b"'\nios\nsystem\ns."


def protocol0_obj(marker: Path) -> bytes:
    """Protocol 1 OBJ: MARK, class, args, ``o``."""
    return b"(dS'model'\n(" + _global("os", "system") + b"S'" + _touch(marker).encode() + b"'\nos."


def reduce_through_allowed(marker: Path) -> bytes:
    """An allowed callable (torch's _rebuild_from_type_v2) asked to call os.system for us."""
    func = _global("torch._tensor", "_rebuild_from_type_v2")
    args = _global("os", "system") + _global("torch", "Tensor") + b"(" + _str(_touch(marker)) + b"t" + b"N"
    return _wrap(func + b"(" + args + b"tR")


def numpy_hostile_class(marker: Path) -> bytes:
    """numpy's _reconstruct with a 'class' that is os.system's result (built before the call)."""
    cls = _call(_global("os", "system"), _str(_touch(marker)))
    return _wrap(_call(_global("numpy.core.multiarray", "_reconstruct"), cls, b"(K\x00t", _str("b")))


def codecs_nested(marker: Path) -> bytes:
    """_codecs.encode (allowed for bytes) whose text argument is os.system's result."""
    inner = _call(_global("os", "system"), _str(_touch(marker)))
    return _wrap(_call(_global("_codecs", "encode"), inner, _str("latin1")))


def persistent_storage_type(marker: Path) -> bytes:
    """A torch storage persistent id whose 'storage type' is os.system('touch marker')."""
    storage_type = _call(_global("os", "system"), _str(_touch(marker)))
    pid = b"(" + _str("storage") + storage_type + _str("0") + _str("cpu") + b"K\x04t"
    return _wrap(pid + b"Q")


def ext_opcode(marker: Path) -> bytes:
    """EXT1: a global named by an extension code (see :func:`registered_extension`)."""
    return _wrap(b"\x82" + bytes([EXT_CODE]) + b"(" + _str(_touch(marker)) + b"tR")


class registered_extension:
    """Register ``os.system`` as extension code EXT_CODE (as a careless library could), then undo."""

    def __enter__(self) -> None:
        copyreg.add_extension("os", "system", EXT_CODE)

    def __exit__(self, *exc: object) -> None:
        copyreg.remove_extension("os", "system", EXT_CODE)


@dataclass(frozen=True)
class Payload:
    """A hostile pickle builder and the global name a safe reader must report."""

    name: str
    build: Callable[[Path], bytes]
    reported: str


PAYLOADS: tuple[Payload, ...] = (
    Payload("global-os.system", system_global, "os.system"),
    Payload("stack-global-os.system", system_stack_global, "os.system"),
    Payload("posix.system", posix_system, "posix.system"),
    Payload("builtins.exec", exec_builtin, "builtins.exec"),
    Payload("builtins.eval", eval_builtin, "builtins.eval"),
    Payload("subprocess.Popen", subprocess_popen, "subprocess.Popen"),
    Payload("importlib.import_module", import_module_chain, "importlib.import_module"),
    Payload("protocol0-INST", protocol0_inst, "os.system"),
    Payload("protocol1-OBJ", protocol0_obj, "os.system"),
    Payload("reduce-through-allowed", reduce_through_allowed, "os.system"),
    Payload("numpy-reconstruct", numpy_hostile_class, "os.system"),
    Payload("codecs-nested", codecs_nested, "os.system"),
    Payload("persistent-id", persistent_storage_type, "os.system"),
)

# Not executable without help, but hostile: misuse of allowed globals, reported by the allowed name.
MISUSES: dict[str, tuple[bytes, str]] = {
    "codecs-zlib": (_wrap(_call(_global("_codecs", "encode"), _str("x" * 64), _str("zlib_codec"))), "_codecs.encode"),
    "codecs-rot13": (_wrap(_call(_global("_codecs", "encode"), _str("x"), _str("rot13"))), "_codecs.encode"),
    "numpy-allowed-class": (
        _wrap(_call(_global("numpy.core.multiarray", "_reconstruct"), _global("argparse", "Namespace"),
                    b"(K\x00t", _str("b"))),  # fmt: skip
        "numpy.core.multiarray._reconstruct",
    ),
    "copyreg-other-class": (
        _wrap(_call(_global("copyreg", "_reconstructor"), _global("collections", "OrderedDict"),
                    _global("builtins", "object"), b"N")),  # fmt: skip
        "copyreg._reconstructor",
    ),
}


def float_tensor_pickle(storage_numel: int, tensor_numel: int) -> bytes:
    """``{"step": 1, "model": <a float32 tensor of tensor_numel over a storage of storage_numel>}``.

    Hand-assembled like torch's own pickle (persistent id + _rebuild_tensor_v2), for sizes that
    disagree with the records or reach past the storage.
    """
    storage = b"(" + _str("storage") + _global("torch", "FloatStorage") + _str("0") + _str("cpu")
    storage += b"K" + bytes([storage_numel]) + b"tQ"
    args = storage + b"K\x00(K" + bytes([tensor_numel]) + b"t(K\x01t\x89N)"
    return _wrap(_global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR")


def write_hostile(path: Path, data: bytes, container: str) -> Path:
    """``data`` as data.pkl of a torch zip (``container="zip"``) or as the object pickle of a legacy file."""
    return torch_zip(path, data) if container == "zip" else legacy_file(path, data)


def torch_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None, prefix: str = "archive") -> Path:
    """A torch-style zip (stored records under one prefix) holding ``data_pkl`` as data.pkl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, data in (records or {}).items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", "3\n")
    return path


def legacy_file(path: Path, object_pickle: bytes, keys: list[str] | None = None) -> Path:
    """A pre-1.6 torch file (magic, protocol, sys_info, the object pickle, storage keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps(SYS_INFO, 2), object_pickle,
             pickle.dumps(keys or [], 2)]  # fmt: skip
    path.write_bytes(b"".join(parts))
    return path


def legacy_hostile_magic(path: Path, marker: Path) -> Path:
    """A legacy file whose very first pickle (where the magic number belongs) is hostile."""
    path.write_bytes(system_global(marker) + pickle.dumps(1001, 2))
    return path


def flip_byte_in_pickle(path: Path, offset_in_pickle: int = 10) -> Path:
    """Flip one byte inside data.pkl of a real torch zip (found through the zip's own directory)."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("/data.pkl"))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + offset_in_pickle] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def drop_data_pkl(source: Path, target: Path) -> Path:
    """A copy of a real torch zip without its data.pkl record."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data.pkl"):
                dst.writestr(info, src.read(info))
    return target


def two_prefixes(source: Path, target: Path) -> Path:
    """A copy of a real torch zip with one extra record under a second top-level folder."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("other/data.pkl", pickle.dumps({"step": 9}, 2))
    return target


# --- archives two zip readers take differently (torch's miniz against Python's zipfile) ------------


@dataclass(frozen=True)
class RawEntry:
    """One record of a hand-built zip: the central name may differ from the local one."""

    name: bytes  # as written in the central directory
    data: bytes
    local_name: bytes | None = None  # default: the central name
    flags: int = 0x800  # UTF-8 names, as torch writes them


def raw_zip(path: Path, entries: list[RawEntry], zip64: bool = False) -> Path:
    """A stored (uncompressed) zip written byte by byte, so names can hold what zipfile never writes.

    ``zip64=True`` stores every size and offset as 0xFFFFFFFF with the real values in zip64 extra
    fields (local: both sizes; central: both sizes and the offset), as writers do past 4 GiB.
    """
    import zlib

    body, central = bytearray(), bytearray()
    for entry in entries:
        local_name = entry.name if entry.local_name is None else entry.local_name
        crc = zlib.crc32(entry.data)
        offset = len(body)
        size = len(entry.data)
        local_extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        central_extra = struct.pack("<HHQQQ", 1, 24, size, size, offset) if zip64 else b""
        small, at = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (size, offset)
        body += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45 if zip64 else 20, entry.flags, 0, 0, 0x21, crc,
                            small, small, len(local_name), len(local_extra)) + local_name + local_extra + entry.data  # fmt: skip
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45 if zip64 else 20, entry.flags, 0, 0, 0x21,
                               crc, small, small, len(entry.name), len(central_extra), 0, 0, 0, 0, at)  # fmt: skip
        central += entry.name + central_extra
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(body), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(body + central + end))
    return path


def plain_pickle(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


def torch_records(data_pkl: bytes, prefix: bytes = b"archive") -> list[RawEntry]:
    return [RawEntry(prefix + b"/data.pkl", data_pkl), RawEntry(prefix + b"/byteorder", b"little"),
            RawEntry(prefix + b"/version", b"3\n")]  # fmt: skip


def overlapping_zip(path: Path, copies: int, size: int) -> Path:
    """A torch-like zip whose central directory names one ``size``-byte record ``copies`` times
    (``data/0`` .. ``data/<copies-1>``): a file of ~``size`` bytes claiming ``copies * size``."""
    import zlib

    blob = bytes(size)
    head = raw_zip(path, [*torch_records(plain_pickle({"step": 1})), RawEntry(b"archive/data/0", blob)]).read_bytes()
    cd_offset = struct.unpack_from("<I", head, len(head) - 6)[0]
    body, central = head[:cd_offset], bytearray(head[cd_offset:-22])
    record = central[central.rindex(b"PK\x01\x02") :]  # data/0's central header
    crc = zlib.crc32(blob)
    for index in range(1, copies):
        name = f"archive/data/{index}".encode()
        central += record[:16] + struct.pack("<III", crc, size, size) + struct.pack("<H", len(name)) + record[30:46] + name
    count = 3 + copies
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central), len(body), 0)
    path.write_bytes(body + bytes(central) + end)
    return path


# --- pickles that are not torch checkpoints (what scanners such as picklescan name) ------------------


def bare_pickle_file(path: Path, marker: Path, proto: int) -> Path:
    """A bare pickle of protocol 0 or 1 (first byte not ``\\x80``): INST and OBJ call os.system."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(protocol0_inst(marker) if proto == 0 else protocol0_obj(marker))
    return path


def npy_with_objects(path: Path, marker: Path) -> Path:
    """A numpy ``.npy`` file of dtype object: a header, then a pickle (``np.load(allow_pickle=True)``)."""
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + system_stack_global(marker))
    return path


def non_torch_zip(path: Path, marker: Path) -> Path:
    """A zip that is no torch archive (no top-level folder, deflated) holding a hostile ``.pkl``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", "model weights")
        zf.writestr("model.pkl", system_global(marker))
    return path


def torch_zip_with_hidden_member(path: Path, marker: Path) -> Path:
    """A torch archive with a benign data.pkl and a second prefix holding a hostile data.pkl."""
    entries = torch_records(plain_pickle({"step": 1}))
    entries.append(RawEntry(b"other/data.pkl", system_global(marker)))
    return raw_zip(path, entries)


def legacy_wrong_magic(path: Path, marker: Path) -> Path:
    """A legacy stream whose magic number is wrong (so not read as torch's) with a hostile object pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [pickle.dumps(12345, 2), pickle.dumps(1001, 2), pickle.dumps(SYS_INFO, 2), system_global(marker)]
    path.write_bytes(b"".join(parts))
    return path


def zip_member_zipfile_refuses(path: Path, marker: Path, damage: str) -> Path:
    """A one-member zip whose ``data.pkl`` zipfile will not open (a wrong CRC-32, or a local name
    that differs from the central one), though a loader reading its bytes runs it all the same."""
    import zlib

    payload = system_global(marker)
    local_name = b"datap.kl" if damage == "local-name" else b"data.pkl"
    crc = zlib.crc32(payload) ^ (0xFFFF if damage == "crc" else 0)
    raw = raw_zip(path, [RawEntry(b"data.pkl", payload, local_name=local_name, flags=0)]).read_bytes()
    return _patch_crc(path, raw, crc)


def _patch_crc(path: Path, raw: bytes, crc: int) -> Path:
    data = bytearray(raw)
    struct.pack_into("<I", data, 14, crc)  # local header
    struct.pack_into("<I", data, data.index(b"PK\x01\x02") + 16, crc)  # central header
    path.write_bytes(bytes(data))
    return path


@dataclass(frozen=True)
class NotACheckpoint:
    """A hostile file ckptctl cannot read as a checkpoint, and the global a scanner names in it."""

    name: str
    build: Callable[[Path, Path], Path]
    reported: str


NOT_CHECKPOINTS: tuple[NotACheckpoint, ...] = (
    NotACheckpoint("protocol-0-pickle", lambda p, m: bare_pickle_file(p, m, 0), "os.system"),
    NotACheckpoint("protocol-1-pickle", lambda p, m: bare_pickle_file(p, m, 1), "os.system"),
    NotACheckpoint("npy-with-objects", npy_with_objects, "os.system"),
    NotACheckpoint("non-torch-zip", non_torch_zip, "os.system"),
    NotACheckpoint("torch-zip-second-prefix", torch_zip_with_hidden_member, "os.system"),
    NotACheckpoint("legacy-wrong-magic", legacy_wrong_magic, "os.system"),
    NotACheckpoint("zip-member-bad-crc", lambda p, m: zip_member_zipfile_refuses(p, m, "crc"), "os.system"),
    NotACheckpoint("zip-member-local-name", lambda p, m: zip_member_zipfile_refuses(p, m, "local-name"), "os.system"),
)
