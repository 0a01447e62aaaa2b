"""A restricted unpickler that turns a checkpoint's pickle into inert data, never running its code.

``torch.load(weights_only=False)`` calls whatever a pickle names. Here ``find_class`` consults an
exact allowlist (``ALLOWED``): tensors and storages become placeholders (dtype, shape, storage key,
byte count), numpy arrays and ``argparse.Namespace`` become plain records, a few harmless builtin
types are themselves. Any other global is *not* looked up: it is recorded by name and replaced by
an inert stand-in, so a single pass reports every unsafe reference ("references os.system"), and
the caller refuses the file. Neither torch nor numpy is imported.
"""

from __future__ import annotations

import collections
import copyreg
import datetime
import io
import math
import pathlib
import pickle
import types
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UnreadableCheckpoint, UnsafeCheckpoint

MAX_DEPTH = 200
MAX_OBJECTS = 20_000_000

# dtype name -> bytes per element (torch's own names, without the "torch." prefix).
DTYPE_ITEMSIZE: dict[str, int] = {
    "float32": 4, "float64": 8, "float16": 2, "bfloat16": 2,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
    "uint16": 2, "uint32": 4, "uint64": 8,
    "complex32": 4, "complex64": 8, "complex128": 16,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
}  # fmt: skip
DTYPE_ALIASES = {
    "float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
    "short": "int16", "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32",
}  # fmt: skip
STORAGE_DTYPE: dict[str, str] = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4", "UntypedStorage": "uint8",
}  # fmt: skip
FLOAT_DTYPES = frozenset(
    {"float32", "float64", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"}
)


class Misuse(pickle.UnpicklingError):
    """An allowlisted global called in a way torch never does: deliberate, so reported as unsafe.

    ``global_name`` is filled in by :class:`_Allowed` with the name the pickle used.
    """

    global_name: str = "?"


class _Sealed(type):
    """Metaclass of the classes a pickle can name. Once sealed they are read-only.

    Pickle's BUILD opcode sets attributes on whatever object is on the stack, including a class
    that ``find_class`` returned. Without sealing, one hostile file could change how every later
    file in the same process is read (``list`` reads a whole directory in one process).
    """

    def __setattr__(cls, name: str, value: Any) -> None:
        if cls.__dict__.get("_sealed"):
            raise AttributeError(f"{cls.__name__} is read-only")
        super().__setattr__(name, value)

    def __delattr__(cls, name: str) -> None:
        if cls.__dict__.get("_sealed"):
            raise AttributeError(f"{cls.__name__} is read-only")
        super().__delattr__(name)


def _seal(*classes: type) -> None:
    for cls in classes:
        type.__setattr__(cls, "_sealed", True)


class _Allowed:
    """An allowlisted function as a pickle sees it: read-only, and misuse is named.

    Plain functions have writable ``__defaults__``/``__dict__`` that a pickle's BUILD could patch
    for later files; this wrapper has no ``__dict__`` and refuses ``setattr``.
    """

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable[..., Any]):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("read-only")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except Misuse as exc:
            if exc.global_name == "?":
                exc.global_name = self.name
            raise

    def __repr__(self) -> str:
        return f"<allowed {self.name}>"


def _read_only_setstate(self: Any, state: Any) -> None:
    """``__setstate__`` of the shared allowlist instances: a pickle's BUILD must not change them.

    (dataclass's own ``__setstate__`` for frozen slotted classes would bypass ``frozen``.)
    """
    raise pickle.UnpicklingError(f"{type(self).__name__} objects are read-only")


@dataclass(frozen=True, slots=True)
class DtypeRef:
    """A torch dtype named in the pickle (``torch.float32``), kept as its name."""

    name: str
    __setstate__ = _read_only_setstate

    @property
    def itemsize(self) -> int:
        return DTYPE_ITEMSIZE[self.name]


@dataclass(frozen=True, slots=True)
class StorageType:
    """A storage class named in the pickle (``torch.FloatStorage``); fixes the dtype of its storages."""

    dtype: str
    __setstate__ = _read_only_setstate


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A storage the pickle points at; its bytes live in record ``data/<key>`` (or the legacy stream)."""

    key: str
    dtype: str
    numel: int  # in elements of ``dtype``
    location: str

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_ITEMSIZE[self.dtype]


@dataclass
class TensorRef:
    """A tensor placeholder: what torch would build, without its values."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool = False
    is_parameter: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_ITEMSIZE[self.dtype]

    def __repr__(self) -> str:
        return f"tensor({self.dtype}, shape={list(self.shape)})"


@dataclass
class NumpyArray(metaclass=_Sealed):
    """An inert numpy array: dtype string, shape and raw bytes (e.g. the numpy RNG state)."""

    dtype: str = "?"
    shape: tuple[int, ...] = ()
    raw: bytes = b""

    def __repr__(self) -> str:
        return f"ndarray({self.dtype}, shape={list(self.shape)})"


@dataclass
class NumpyDtype(metaclass=_Sealed):
    """An inert numpy dtype description (``numpy.dtype('u4')``)."""

    descr: str = "?"
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class Namespace(metaclass=_Sealed):
    """An inert ``argparse.Namespace``: its attributes as a dict (nothing from argparse is imported).

    Not a dataclass: pickle's NEWOBJ creates it with ``__new__`` alone, so ``attrs`` is created
    on first use rather than in ``__init__``.
    """

    def __init__(self, attrs: dict[str, Any] | None = None):
        self.attrs: dict[str, Any] = dict(attrs or {})

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate) form
            state = state[0]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("malformed argparse.Namespace state")
        self.__dict__.setdefault("attrs", {}).update(state)

    def __getattr__(self, name: str) -> Any:
        if name == "attrs":
            self.__dict__["attrs"] = {}
            return self.__dict__["attrs"]
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespace) and self.attrs == other.attrs

    def __repr__(self) -> str:
        return f"Namespace({self.attrs!r})"


class _Refused(metaclass=_Sealed):
    """Stand-in for a refused global: accepts anything, does nothing, so scanning can go on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Refused":
        return _Refused()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise pickle.UnpicklingError(f"malformed tensor {what}")
    for v in value:  # a loop, not all(<genexpr>): this runs for every tensor of every listed file
        if type(v) is not int or v < 0:
            raise pickle.UnpicklingError(f"malformed tensor {what}")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, *rest: Any, dtype: str | None = None) -> TensorRef:  # fmt: skip
    if not isinstance(storage, StorageRef) or not isinstance(offset, int) or offset < 0:
        raise pickle.UnpicklingError("malformed tensor: bad storage reference")
    shape = _int_tuple(size, "shape")
    strides = _int_tuple(stride, "stride")
    tensor = TensorRef(storage, offset, shape, strides, dtype or storage.dtype, bool(requires_grad))
    _check_bounds(tensor)
    return tensor


def _check_bounds(tensor: TensorRef) -> None:
    """A tensor must lie inside its storage, as torch itself checks when it rebuilds one."""
    last = tensor.offset
    for n, s in zip(tensor.shape, tensor.stride):
        if n == 0:
            return  # an empty tensor reads nothing
        last += (n - 1) * s
    end_bytes = (last + 1) * DTYPE_ITEMSIZE[tensor.dtype]
    if end_bytes > tensor.storage.nbytes:
        raise pickle.UnpicklingError(f"malformed tensor: reads past its storage {tensor.storage.key}")


def rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                      hooks: Any = None, *rest: Any) -> TensorRef:  # fmt: skip
    return _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks)


def rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
                      dtype: Any, *rest: Any) -> TensorRef:  # fmt: skip
    if not isinstance(dtype, DtypeRef):
        raise pickle.UnpicklingError("malformed tensor: bad dtype")
    if isinstance(storage, StorageRef) and storage.dtype != dtype.name:
        # v3 stores untyped (byte) storages; re-express the storage in the tensor's dtype.
        storage = StorageRef(storage.key, dtype.name, storage.nbytes // dtype.itemsize, storage.location)
    return _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, dtype=dtype.name)


def rebuild_parameter(data: Any, requires_grad: Any = True, hooks: Any = None, *rest: Any) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise pickle.UnpicklingError("malformed parameter")
    data.is_parameter = True
    data.requires_grad = bool(requires_grad)
    return data


@dataclass(frozen=True, slots=True)
class TensorType:
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` when used as a type argument."""

    parameter: bool
    __setstate__ = _read_only_setstate


def rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> TensorRef:
    rebuilders = (rebuild_tensor_v2, rebuild_tensor_v3, rebuild_parameter)
    if not (isinstance(func, _Allowed) and func.fn in rebuilders) or not isinstance(new_type, TensorType):
        raise Misuse("only torch's tensor rebuilders with torch.Tensor or Parameter")
    if not isinstance(args, tuple):
        raise pickle.UnpicklingError("malformed tensor arguments")
    tensor = func(*args)
    if new_type.parameter:
        tensor.is_parameter = True
    return tensor


def codecs_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    """Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(str, 'latin1')``; allow exactly that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise Misuse(f"encoding {encoding!r} of a {type(text).__name__}; only str to latin1/utf-8 is allowed")
    return text.encode(encoding)


def bytes_(*args: Any) -> bytes:
    """Protocols 0-2 spell ``b""`` as ``bytes()``; allow that (and a bytes copy), never ``bytes(n)``."""
    if args == ():
        return b""
    if len(args) == 1 and isinstance(args[0], bytes):
        return args[0]
    raise Misuse("only bytes() or bytes(b'...') is allowed")


def numpy_reconstruct(cls: Any, shape: Any = (0,), dtype: Any = b"b") -> NumpyArray:
    if cls is not NumpyArray:
        raise Misuse("only numpy.ndarray may be reconstructed")
    return NumpyArray()


def _numpy_array_setstate(self: NumpyArray, state: Any) -> None:
    # ndarray state: (version, shape, dtype, is_fortran, rawdata)
    if not isinstance(state, tuple) or len(state) != 5:
        raise pickle.UnpicklingError("malformed numpy array state")
    _version, shape, dtype, _fortran, raw = state
    self.shape = _int_tuple(shape, "numpy shape")
    self.dtype = dtype.descr if isinstance(dtype, NumpyDtype) else str(dtype)
    self.raw = raw if isinstance(raw, (bytes, bytearray)) else b""


NumpyArray.__setstate__ = _numpy_array_setstate  # type: ignore[attr-defined]


def numpy_dtype(descr: Any = "?", *rest: Any) -> NumpyDtype:
    if not isinstance(descr, str):
        raise pickle.UnpicklingError("malformed numpy dtype")
    return NumpyDtype(descr)


def numpy_scalar(dtype: Any, raw: Any = b"") -> NumpyArray:
    return NumpyArray(dtype.descr if isinstance(dtype, NumpyDtype) else "?", (), raw if isinstance(raw, bytes) else b"")


def copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Protocol 0/1 spelling of ``cls.__new__(cls)``; only for our inert classes."""
    if cls is not Namespace or base is not object:
        raise Misuse("only argparse.Namespace may be reconstructed")
    return Namespace()


class DcpRecord(metaclass=_Sealed):
    """Inert stand-in for one of DCP's metadata classes (a sharded checkpoint's ``.metadata``).

    ``.metadata`` is a pickle of dataclasses (``Metadata``, ``TensorStorageMetadata``, ...). Each
    becomes a subclass of this one named like the original, holding the fields its BUILD set as
    plain data; :mod:`ckptctl.sharded` interprets them and checks their types.
    """

    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def __new__(cls, *args: Any) -> "DcpRecord":
        if args:
            raise Misuse(f"{cls.__name__} takes no arguments")
        record = object.__new__(cls)
        record.fields = {}
        return record

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:  # (None, slot state)
            state = state[1]
        if type(self).__name__ == "TensorProperties" and isinstance(state, tuple) and len(state) == 5:
            state = dict(zip(("dtype", "layout", "requires_grad", "memory_format", "pin_memory"), state))
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise pickle.UnpicklingError(f"malformed {type(self).__name__} state")
        self.fields = dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fields!r})"


DCP_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
DCP_RECORD_NAMES: dict[str, str] = {
    f"{DCP_METADATA_MODULE}.{name}": name
    for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "TensorProperties", "MetadataIndex", "StorageMeta")
} | {"torch.distributed.checkpoint.filesystem._StorageInfo": "_StorageInfo"}  # fmt: skip
DCP_RECORDS: dict[str, type[DcpRecord]] = {
    name: _Sealed(name, (DcpRecord,), {"__slots__": ()}) for name in DCP_RECORD_NAMES.values()
}
LAYOUTS = frozenset({"torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc",
                     "torch.sparse_bsr", "torch.sparse_bsc", "torch._mkldnn", "torch.jagged"})  # fmt: skip


def torch_size(dims: Any = ()) -> tuple[int, ...]:
    """``torch.Size((3, 4))`` as DCP pickles shapes and offsets: kept as a tuple of ints."""
    if not isinstance(dims, (tuple, list)):
        raise Misuse("only a tuple of ints")
    return _int_tuple(tuple(dims), "size")


def get_layout(name: Any) -> str:
    """``torch.serialization._get_layout('torch.strided')``: the layout's name, for known layouts only."""
    if name not in LAYOUTS:
        raise Misuse(f"unknown layout {name!r}")
    return name


def mem_format_encoding(value: Any) -> int:
    """DCP's ``_MEM_FORMAT_ENCODING(n)`` enum (contiguous, channels-last, preserve): kept as the int."""
    if type(value) is not int or value not in (0, 1, 2):
        raise Misuse("only the encodings 0, 1 and 2")
    return value


def _path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise pickle.UnpicklingError("malformed path")
    return str(pathlib.PurePosixPath(*parts)) if parts else "."


ALLOWED: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "builtins.slice": slice,
    "builtins.object": object,
    "__builtin__.set": set,
    "__builtin__.frozenset": frozenset,
    "__builtin__.object": object,
    "__builtin__.complex": complex,
    "__builtin__.slice": slice,
    "__builtin__.bytes": bytes_,
    "builtins.bytes": bytes_,
    "_codecs.encode": codecs_encode,
    "copy_reg._reconstructor": copyreg_reconstructor,
    "copyreg._reconstructor": copyreg_reconstructor,
    "argparse.Namespace": Namespace,
    "datetime.datetime": datetime.datetime,
    "datetime.date": datetime.date,
    "datetime.time": datetime.time,
    "datetime.timedelta": datetime.timedelta,
    "datetime.timezone": datetime.timezone,
    "pathlib.PosixPath": _path,
    "pathlib.PurePosixPath": _path,
    "pathlib.WindowsPath": _path,
    "pathlib.PureWindowsPath": _path,
    "pathlib.Path": _path,
    "pathlib._local.PosixPath": _path,
    "pathlib._local.PurePosixPath": _path,
    "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": rebuild_from_type_v2,
    "torch._utils._rebuild_from_type_v2": rebuild_from_type_v2,
    "torch.Tensor": TensorType(parameter=False),
    "torch.nn.parameter.Parameter": TensorType(parameter=True),
    "torch.storage.UntypedStorage": StorageType("uint8"),
    "numpy.core.multiarray._reconstruct": numpy_reconstruct,
    "numpy._core.multiarray._reconstruct": numpy_reconstruct,
    "numpy.core.multiarray.scalar": numpy_scalar,
    "numpy._core.multiarray.scalar": numpy_scalar,
    "numpy.ndarray": NumpyArray,
    "numpy.dtype": numpy_dtype,
    "torch.Size": torch_size,
    "torch.serialization._get_layout": get_layout,
    f"{DCP_METADATA_MODULE}._MEM_FORMAT_ENCODING": mem_format_encoding,
}
ALLOWED.update({full: DCP_RECORDS[name] for full, name in DCP_RECORD_NAMES.items()})
ALLOWED.update({f"torch.{name}": StorageType(dtype) for name, dtype in STORAGE_DTYPE.items()})
ALLOWED.update({f"torch.{name}": DtypeRef(name) for name in DTYPE_ITEMSIZE})
ALLOWED.update({f"torch.{alias}": DtypeRef(name) for alias, name in DTYPE_ALIASES.items()})
ALLOWED.update({name: _Allowed(name, fn) for name, fn in ALLOWED.items() if isinstance(fn, types.FunctionType)})
_seal(NumpyArray, NumpyDtype, Namespace, _Refused, DcpRecord, *DCP_RECORDS.values())


class SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """An unpickler whose ``find_class`` never imports anything outside ``ALLOWED``.

    Built on Python's pure-Python unpickler on purpose: the C unpickler keeps its memo in an array
    it grows to the largest ``PUT`` index it meets, so a 10-byte pickle naming memo slot 2**31
    makes it allocate tens of GiB before any check of ours can run. The pure-Python one keeps the
    memo in a dict. It costs more unpickling time than the C one (5.5 ms -> 11 ms for a 380-tensor
    state dict, before :meth:`_load_direct` took ~30% off), which a listing can afford (and
    ckptctl.listing_cache spares unchanged files); a memory bomb it could not.
    """

    def __init__(self, file: io.BufferedIOBase, storage_hook: Callable[[StorageRef], None] | None = None):
        super().__init__(file, encoding="latin1")
        self._file = file
        self.refused: list[str] = []
        self._storage_hook = storage_hook
        self.storages: dict[str, StorageRef] = {}

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def load(self) -> Any:
        """Refuse extension-code globals before loading (see :func:`extension_globals`)."""
        if copyreg._inverted_registry:  # type: ignore[attr-defined]
            names = extension_globals(self._file)
            if names:
                self.refused.extend(names)
                raise Misuse("extension opcodes")
        return self._load_direct()

    def _load_direct(self) -> Any:
        """pickle's own opcode loop, reading straight from the file instead of through its
        ``_Unframer``: one Python call less per opcode argument (about 30% of the unpickling time
        of a listing). A FRAME (protocol 4+) only announces how many of the following bytes belong
        together; they follow inline either way, so :meth:`_skip_frame` just reads its length.
        """
        read = self.read = self._file_read
        self.readline = self._file_readline
        self.readinto = self._readinto
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        dispatch = self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                dispatch[key[0]](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    def _readinto(self, buf: bytearray) -> int:
        buf[:] = self._file_read(len(buf))  # as pickle's _Unframer does
        return len(buf)

    def _skip_frame(self) -> None:
        if len(self.read(8)) != 8:
            raise pickle.UnpicklingError("pickle data was truncated")

    dispatch[pickle.FRAME[0]] = _skip_frame

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        allowed = ALLOWED.get(full)
        if allowed is None:
            self.refused.append(full)
            return _Refused
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        # zip format: ('storage', storage_type, key, location, numel)
        # legacy format: ('storage', storage_type, root_key, location, numel, view_metadata)
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {type(pid).__name__}")
        storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(storage_type, StorageType):
            if storage_type is _Refused:
                return _Refused()
            raise pickle.UnpicklingError("malformed storage reference")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("malformed storage reference")
        existing = self.storages.get(key)
        if existing is not None:
            return existing
        ref = StorageRef(key, storage_type.dtype, numel, str(location))
        self.storages[key] = ref
        if self._storage_hook:
            self._storage_hook(ref)
        return ref


def extension_globals(file: Any) -> list[str]:
    """Globals a pickle names through EXT1/EXT2/EXT4 opcodes (the ``copyreg`` extension registry).

    The C unpickler resolves an extension code from a process-wide cache *before* calling
    ``find_class``, so once anything in the process has loaded that code, ``find_class`` never sees
    it. Only relevant when some library registered extensions, so only scanned then; ``file`` is
    left where it was.
    """
    import pickletools  # only when extensions are registered: keeps start-up light

    start = file.tell()
    names: list[str] = []
    try:
        for opcode, arg, _pos in pickletools.genops(file):
            if opcode.name in ("EXT1", "EXT2", "EXT4"):
                pair = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
                names.append(".".join(pair) if pair else f"extension code {arg}")
    except Exception:  # malformed stream: the real load reports it
        pass
    file.seek(start)
    return names


def safe_loads(data: bytes) -> tuple[Any, dict[str, StorageRef]]:
    """Unpickle ``data`` into inert objects. Raises UnsafeCheckpoint or UnreadableCheckpoint."""
    unpickler = SafeUnpickler(io.BytesIO(data))
    obj = run_unpickler(unpickler)
    return obj, unpickler.storages


def run_unpickler(unpickler: SafeUnpickler) -> Any:
    """Load one pickle with ``unpickler``, mapping every failure to a checkpoint verdict."""
    try:
        obj = unpickler.load()
    except Misuse as exc:
        names = [*unpickler.refused, exc.global_name] if exc.global_name != "?" else unpickler.refused
        reason = None if unpickler.refused else f"misuses {exc.global_name}: {exc}"
        raise UnsafeCheckpoint(names, reason=reason) from None
    except RecursionError:
        raise UnreadableCheckpoint("pickle nests too deeply") from None
    except MemoryError:
        raise UnreadableCheckpoint("pickle too large to read") from None
    except Exception as exc:  # any malformed pickle: EOFError, UnpicklingError, TypeError, ...
        if unpickler.refused:
            raise UnsafeCheckpoint(unpickler.refused) from None
        raise UnreadableCheckpoint(f"corrupt pickle: {type(exc).__name__}: {_short(exc)}") from None
    if unpickler.refused:
        raise UnsafeCheckpoint(unpickler.refused)
    check_structure(obj)
    return obj


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:120]


def check_structure(obj: Any) -> None:
    """Bound what later code walks: nesting depth, expanded object count, no cycles (iterative).

    The count is of the tree the walkers see, not of the pickle's objects: pickle memoises, so a
    list holding one list a thousand times, nested three deep, is a few thousand objects in the
    file but a billion to any walk (``iter_tensors``, JSON output). Each container's expanded size
    is computed once (post-order, memoised by identity), so this stays linear in the file. Only
    containers go on the stack; leaves are just counted.
    """
    sizes: dict[int, int] = {}  # id -> expanded size of a finished container
    on_path: set[int] = set()
    stack: list[tuple[Any, int, tuple[int, list[Any]] | None]] = [(obj, 0, None)] if isinstance(obj, _CONTAINERS) else []
    while stack:
        item, depth, leaving = stack.pop()
        key = id(item)
        if leaving is not None:  # all children are finished
            on_path.discard(key)
            leaves, containers = leaving
            total = 1 + leaves + sum(sizes[id(child)] for child in containers)
            if total > MAX_OBJECTS:
                raise UnreadableCheckpoint("pickle expands to too many objects")
            sizes[key] = total
            continue
        if key in on_path:
            raise UnreadableCheckpoint("pickle contains a reference cycle")
        if key in sizes:
            continue
        if depth >= MAX_DEPTH:
            raise UnreadableCheckpoint(f"pickle nests deeper than {MAX_DEPTH} levels")
        children = _children(item)
        containers = [child for child in children if isinstance(child, _CONTAINERS)]
        on_path.add(key)
        stack.append((item, depth, (len(children) - len(containers), containers)))
        stack.extend((child, depth + 1, None) for child in containers)


def _children(item: Any) -> list[Any]:
    if isinstance(item, dict):
        return [*item.keys(), *item.values()]
    if isinstance(item, (list, tuple, set, frozenset)):
        return list(item)
    if isinstance(item, Namespace):
        return list(item.attrs.values())
    if isinstance(item, DcpRecord):
        return list(item.fields.values())
    return []


_CONTAINERS = (dict, list, tuple, set, frozenset, Namespace, DcpRecord)
