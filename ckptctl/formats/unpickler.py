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
import os
import pathlib
import pickle
import threading
import types
from dataclasses import dataclass, replace
from struct import unpack
from typing import Any, Callable

from .bounded import bounded_repr, bounded_str, register_fixed_repr, register_view
from ..errors import UnreadableCheckpoint, UnsafeCheckpoint

MAX_DEPTH = 200  # nesting depth of containers; not scaled: Python's own recursion limits sit near 1000
MAX_INT_BITS = 4096  # one integer: ~1233 decimal digits (str() of it always works; Python refuses > 4300 digits)
INT64_MAX = 2**63 - 1  # shapes, strides, offsets and element counts are int64 in torch
MAX_NAME_CHARS = 256  # a storage's key and location ("0", "cuda:0"): short in every torch file
SCALE_ENV = "CKPTCTL_READ_LIMIT_SCALE"

class BudgetExceeded(pickle.UnpicklingError):
    """A load went past one of its :class:`Budget` limits: reported as unreadable, never a crash."""

    def __init__(self, name: str, limit: int):
        super().__init__(f"exceeds {name} budget ({limit})")
        self.name = name
        self.limit = limit


def read_limit_scale() -> float:
    """``CKPTCTL_READ_LIMIT_SCALE`` (default 1): multiplies every size-derived limit of a read."""
    raw = os.environ.get(SCALE_ENV, "")
    try:
        scale = float(raw) if raw.strip() else 1.0
    except ValueError:
        return 1.0
    return scale if math.isfinite(scale) and scale > 0 else 1.0


@dataclass(frozen=True)
class Budget:
    """The limits one pickle load runs under, sized from the input's own size ``S`` (bytes).

    Every opcode reads at least one byte, so ``opcodes`` (S + 1) holds by construction, without
    a counter. The others bound what a few bytes can make Python do, each checked by the opcode
    handler (or allowlisted function) that does the work, before it: objects created (a 1-byte
    EMPTY_SET is a 216-byte set; counted in ~64-byte units), memo entries, nesting (open MARKs and
    tuple/frozenset keys while loading, every container at the end), items in one container,
    integer size, hash and shape-check work, the size of the tree later walks see (shared
    references expanded) and the text in it. A load of ``S`` bytes stays within ``max_memory``
    (≈ 250 MiB + 62·S at the default scale; the tests measure floods against it with tracemalloc)
    and time linear in ``S``. A torch state dict uses about a third of the S-proportional part
    of ``objects`` and less of the others. ``CKPTCTL_READ_LIMIT_SCALE`` (e.g. 4) multiplies every
    size-derived limit for a legitimately huge checkpoint; depth and integer size stay fixed
    (Python's own recursion and int->str limits sit just above them).
    """

    opcodes: int
    memo: int
    depth: int
    container_items: int
    int_bits: int
    objects: int
    work: int
    expanded: int
    text_bytes: int

    @classmethod
    def for_input(cls, nbytes: int, scale: float | None = None) -> "Budget":
        """Limits for an input of ``nbytes`` bytes (``scale`` defaults to :func:`read_limit_scale`)."""
        k = read_limit_scale() if scale is None else scale
        s = max(0, nbytes)
        return cls(
            opcodes=s + 1,
            memo=int(k * ((1 << 19) + s // 4)),
            depth=MAX_DEPTH,
            container_items=int(k * (1 << 24)),
            int_bits=MAX_INT_BITS,
            objects=int(k * ((1 << 21) + s // 4)),
            work=int(k * ((1 << 22) + 4 * s)),
            expanded=int(k * ((1 << 21) + s)),
            text_bytes=int(k * ((1 << 26) + 2 * s)),
        )

    @property
    def max_memory(self) -> int:
        """Bytes a load within these limits can hold at its peak (what the tests measure against)."""
        return 64 * self.objects + 112 * self.memo + 16 * self.opcodes + self.text_bytes


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
    __setstate__ = _read_only_setstate

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_ITEMSIZE[self.dtype]


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor placeholder: what torch would build, without its values.

    Frozen, without ``__dict__``, and refusing ``__setstate__``: pickle's BUILD cannot change a
    tensor after its bounds were checked (a parameter is a new placeholder, not a mutation).
    """

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool = False
    is_parameter: bool = False
    __setstate__ = _read_only_setstate
    __hash__ = None  # type: ignore[assignment]  # as before: placeholders are compared, not hashed

    @property
    def numel(self) -> int:
        # 0 first: a zero-size tensor may have huge other dimensions (the product is checked otherwise)
        return 0 if 0 in self.shape else math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_ITEMSIZE[self.dtype]

    def __repr__(self) -> str:
        return f"tensor({self.dtype}, shape={list(self.shape)})"


def _build_once(self: Any, fields: dict[str, Any]) -> None:
    """Set the fields of a fresh inert object, once: pickle's BUILD after that is refused."""
    if self.__dict__.get("_built"):
        raise pickle.UnpicklingError(f"{type(self).__name__} objects are read-only once built")
    self.__dict__.update(fields)
    self.__dict__["_built"] = True


@dataclass(frozen=True)
class NumpyArray(metaclass=_Sealed):
    """An inert numpy array: dtype string, shape and raw bytes (e.g. the numpy RNG state).

    Frozen; pickle builds it exactly once (``_reconstruct`` then BUILD, as numpy pickles it).
    The class-level defaults make one created by NEWOBJ alone still readable.
    """

    dtype: str = "?"
    shape: tuple[int, ...] = ()
    raw: bytes = b""
    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.__dict__["_built"] = True  # made whole (numpy scalars); ``numpy_reconstruct`` makes it empty

    def __repr__(self) -> str:
        return f"ndarray({bounded_str(self.dtype, 40)}, shape={bounded_repr(list(self.shape), 200)})"


@dataclass(frozen=True)
class NumpyDtype(metaclass=_Sealed):
    """An inert numpy dtype description (``numpy.dtype('u4')``)."""

    descr: str = "?"
    state: Any = None
    __hash__ = None  # type: ignore[assignment]

    def __setstate__(self, state: Any) -> None:
        _build_once(self, {"state": state})


class Namespace(metaclass=_Sealed):
    """An inert ``argparse.Namespace``: its attributes as a dict (nothing from argparse is imported).

    Not a dataclass: pickle's NEWOBJ creates it with ``__new__`` alone, so ``attrs`` is created
    on first use rather than in ``__init__``.
    """

    def __init__(self, attrs: dict[str, Any] | None = None):
        if attrs and not (isinstance(attrs, dict) and all(type(k) is str for k in attrs)):
            raise pickle.UnpicklingError("malformed argparse.Namespace")  # copying other keys re-hashes them
        self.attrs: dict[str, Any] = dict(attrs or {})

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate) form
            state = state[0]
        if not isinstance(state, dict) or not all(type(k) is str for k in state):
            raise pickle.UnpicklingError("malformed argparse.Namespace state")
        if self.__dict__.get("_built"):
            raise pickle.UnpicklingError("Namespace objects are read-only once built")
        self.__dict__["_built"] = True
        self.__dict__.setdefault("attrs", {}).update(state)

    def __getattr__(self, name: str) -> Any:
        if name == "attrs":
            self.__dict__["attrs"] = {}
            return self.__dict__["attrs"]
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespace) and self.attrs == other.attrs

    def __repr__(self) -> str:
        return "Namespace(" + bounded_repr(self.attrs, 1000) + ")"


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
    if len(value) > 8:  # up to 8 dimensions the work is a constant per tensor (tensors are counted objects)
        _meter().charge_work(len(value))
    for v in value:  # a loop, not all(<genexpr>): this runs for every tensor of every listed file
        if type(v) is not int or v < 0 or v > INT64_MAX:
            raise pickle.UnpicklingError(f"malformed tensor {what}")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, *rest: Any, dtype: str | None = None) -> TensorRef:  # fmt: skip
    if not isinstance(storage, StorageRef) or not isinstance(offset, int) or offset < 0:
        raise pickle.UnpicklingError("malformed tensor: bad storage reference")
    shape = _int_tuple(size, "shape")
    strides = _int_tuple(stride, "stride")
    if offset > INT64_MAX:
        raise pickle.UnpicklingError("malformed tensor: bad storage offset")
    tensor = TensorRef(storage, offset, shape, strides, dtype or storage.dtype, bool(requires_grad))
    _meter().tensors.append(tensor)  # bounds are checked when the load ends (check_final_tensors)
    return tensor


def _check_bounds(tensor: TensorRef) -> None:
    """A tensor must lie inside its storage, as torch itself checks when it rebuilds one.

    Also its element count must be an int64, so ``numel`` (a product) stays small.
    """
    if len(tensor.shape) != len(tensor.stride):
        raise pickle.UnpicklingError("malformed tensor: shape and stride differ in length")
    last = tensor.offset
    numel = 1
    for n, s in zip(tensor.shape, tensor.stride):
        if n == 0:
            return  # an empty tensor reads nothing
        last += (n - 1) * s
        numel *= n
        if numel > INT64_MAX:
            raise pickle.UnpicklingError("malformed tensor: more than 2**63 elements")
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
    tensor = replace(data, is_parameter=True, requires_grad=bool(requires_grad))  # a new placeholder
    _meter().tensors.append(tensor)
    return tensor


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
    if new_type.parameter and not tensor.is_parameter:
        tensor = replace(tensor, is_parameter=True)
        _meter().tensors.append(tensor)
    return tensor


def codecs_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    """Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(str, 'latin1')``; allow exactly that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise Misuse(f"encoding {bounded_repr(encoding, 40)} of a {type(text).__name__}; only str to latin1/utf-8 is allowed")
    data = text.encode(encoding)
    _meter().charge_text(len(data))
    return data


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
    return NumpyArray.__new__(NumpyArray)  # empty until its one BUILD


def _numpy_array_setstate(self: NumpyArray, state: Any) -> None:
    # ndarray state: (version, shape, dtype, is_fortran, rawdata)
    if not isinstance(state, tuple) or len(state) != 5:
        raise pickle.UnpicklingError("malformed numpy array state")
    _version, shape, dtype, _fortran, raw = state
    fields = {
        "shape": _int_tuple(shape, "numpy shape"),
        "dtype": dtype.descr if isinstance(dtype, NumpyDtype) else bounded_repr(dtype, 40),
        "raw": bytes(raw) if isinstance(raw, (bytes, bytearray)) else b"",
    }
    _build_once(self, fields)


NumpyArray.__setstate__ = _numpy_array_setstate  # type: ignore[attr-defined]


def numpy_dtype(descr: Any = "?", *rest: Any) -> NumpyDtype:
    if not isinstance(descr, str) or len(descr) > MAX_NAME_CHARS:
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
    plain data; :mod:`ckptctl.formats.dcp` interprets them and checks their types.
    """

    __slots__ = ("fields", "_built")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def __new__(cls, *args: Any) -> "DcpRecord":
        if args:
            raise Misuse(f"{cls.__name__} takes no arguments")
        record = object.__new__(cls)
        record.fields = {}
        record._built = False
        return record

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:  # (None, slot state)
            state = state[1]
        if type(self).__name__ == "TensorProperties" and isinstance(state, tuple) and len(state) == 5:
            state = dict(zip(("dtype", "layout", "requires_grad", "memory_format", "pin_memory"), state))
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise pickle.UnpicklingError(f"malformed {type(self).__name__} state")
        if self._built:
            raise pickle.UnpicklingError(f"{type(self).__name__} objects are read-only once built")
        self._built = True
        self.fields = dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + bounded_repr(self.fields, 1000) + ")"


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
    if type(name) is not str or name not in LAYOUTS:  # type first: ``in`` hashes, and a key may be hostile
        raise Misuse(f"unknown layout {bounded_repr(name, 60)}")
    return name


def mem_format_encoding(value: Any) -> int:
    """DCP's ``_MEM_FORMAT_ENCODING(n)`` enum (contiguous, channels-last, preserve): kept as the int."""
    if type(value) is not int or value not in (0, 1, 2):
        raise Misuse("only the encodings 0, 1 and 2")
    return value


def _hashed(kind: str, items: Any) -> list[Any] | tuple[Any, ...]:
    """Items about to be hashed into a new set/dict: measured (nesting, work, collisions) first."""
    if type(items) is not list and type(items) is not tuple:
        raise Misuse(f"only {kind} of a list")
    _meter().check_keys(items, items)
    return items


def set_(items: Any = ()) -> set[Any]:
    """``builtins.set([...])`` as protocols 0-3 pickle a set; its items are checked before hashing."""
    return set(_hashed("set", items))


def frozenset_(items: Any = ()) -> frozenset[Any]:
    return frozenset(_hashed("frozenset", items))


def ordered_dict(items: Any = ()) -> collections.OrderedDict[Any, Any]:
    """``OrderedDict()`` (its items follow as SETITEMS), or Python 2's ``OrderedDict([[k, v], ...])``."""
    if type(items) is tuple and not items:
        return collections.OrderedDict()
    pairs = _hashed("OrderedDict", items)
    if not all((type(p) is list or type(p) is tuple) and len(p) == 2 for p in pairs):
        raise Misuse("only OrderedDict of (key, value) pairs")
    _meter().check_keys(pairs, [p[0] for p in pairs])
    return collections.OrderedDict(pairs)


def _path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise pickle.UnpicklingError("malformed path")
    _meter().charge_text(sum(len(p) + 1 for p in parts))  # one memoised string, named 1000 times, is no 1 GB path
    return str(pathlib.PurePosixPath(*parts)) if parts else "."


# ----------------------------------------------------------------------- framework classes, inert
#
# Classes other frameworks pickle into their checkpoint files (issue 11; the fixtures' README lists
# which file names which). None is imported or constructed: a dataclass-like object becomes a
# :class:`Record` (its class name + the fields its BUILD set, as data), an enum becomes its value,
# ``torch.device`` its text, ``Counter`` a dict, ``bytearray`` itself, and an ``io.BytesIO`` a
# :class:`BytesIORecord` whose bytes are read as a nested checkpoint through this same reader.

def _misuse(name: str, message: str) -> Misuse:
    exc = Misuse(message)
    exc.global_name = name
    return exc


MAX_NESTED = 3  # BytesIO inside BytesIO inside ...: each level re-reads its bytes, so the depth is fixed
_PLAIN = (str, int, float, bool, type(None))


class Record(Namespace):
    """An inert stand-in for a known framework object: ``qualname`` + ``attrs`` (its fields).

    A subclass of :class:`Namespace`, so every consumer that shows, compares or walks saved args
    (``inspect``, ``resume-cmd --compare``, hparams) sees the fields. Created by NEWOBJ with no
    arguments (or, for a namedtuple, plain positional values) and BUILD exactly once; anything
    else a real class would run (``__init__``, ``__post_init__``) is a :class:`Misuse`.
    """

    qualname: str = "?"
    positional: tuple[str, ...] = ()  # namedtuple fields, in order

    def __new__(cls, *args: Any) -> "Record":
        if args and (len(args) > len(cls.positional) or not all(type(a) in _PLAIN for a in args)):
            raise _misuse(cls.qualname, "takes no arguments (its code is never run)")
        record = object.__new__(cls)
        record.__dict__["attrs"] = dict(zip(cls.positional, args))
        return record

    def __init__(self, *args: Any) -> None:  # REDUCE calls cls(*args): __new__ checked the arguments
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict or None, slot state or None)
            parts = [part for part in state if part is not None]
            if not all(isinstance(part, dict) for part in parts):
                raise pickle.UnpicklingError(f"malformed {self.qualname} state")
            merged: dict[Any, Any] = {}
            for part in parts:
                merged.update(part)
            state = merged
        if not isinstance(state, dict) or not all(type(k) is str for k in state):
            raise pickle.UnpicklingError(f"malformed {self.qualname} state")
        if self.__dict__.get("_built"):
            raise pickle.UnpicklingError(f"{type(self).__name__} objects are read-only once built")
        self.__dict__["_built"] = True
        self.__dict__.setdefault("attrs", {}).update(state)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.attrs == other.attrs  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return type(self).__name__ + "(" + bounded_repr(self.attrs, 1000) + ")"


# module.name -> namedtuple field names (empty: a dataclass / plain object, built by BUILD)
RECORD_CLASSES: dict[str, tuple[str, ...]] = {
    "transformers.training_args.TrainingArguments": (),
    "transformers.training_args_seq2seq.Seq2SeqTrainingArguments": (),
    "transformers.trainer_pt_utils.AcceleratorConfig": (),
    "accelerate.state.PartialState": (),
    "accelerate.utils.dataclasses.DataLoaderConfiguration": (),
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": (),
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": (),
    "deepspeed.utils.tensor_fragment.fragment_address": ("numel", "start"),
}
RECORDS: dict[str, type[Record]] = {
    full: _Sealed(full.rsplit(".", 1)[1], (Record,), {"qualname": full, "positional": fields})
    for full, fields in RECORD_CLASSES.items()
}
ENUM_CLASSES = (
    "transformers.training_args.OptimizerNames",
    "transformers.trainer_utils.IntervalStrategy",
    "transformers.trainer_utils.SaveStrategy",
    "transformers.trainer_utils.HubStrategy",
    "transformers.trainer_utils.SchedulerType",
    "transformers.trainer_utils.EvaluationStrategy",
    "transformers.debug_utils.DebugOption",
    "transformers.trainer_utils.FSDPOption",
    "accelerate.utils.dataclasses.DistributedType",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
)
ATTRIBUTE_DICTS = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)


def _enum(full: str) -> Callable[..., Any]:
    """``SchedulerType('linear')`` as an enum pickles itself: kept as the value ('linear')."""

    def enum_value(*args: Any) -> Any:
        if len(args) != 1 or type(args[0]) not in _PLAIN or (type(args[0]) is str and len(args[0]) > MAX_NAME_CHARS):
            raise Misuse("only an enum's one plain value")
        return args[0]

    enum_value.__name__ = full.rsplit(".", 1)[1]
    return enum_value


class AttributeDict(dict, metaclass=_Sealed):  # type: ignore[type-arg]
    """Lightning's ``AttributeDict`` (a dict subclass holding hparams): kept as a dict.

    NEWOBJ + SETITEMS is how it pickles; ``AttributeDict({...})`` / ``([(k, v)],)`` go through the
    same key checks as an OrderedDict's items; its (normally empty) ``__dict__`` state is dropped.
    """

    def __init__(self, *args: Any) -> None:
        if len(args) > 1:
            raise _misuse("AttributeDict", "takes one mapping")
        if args:
            items = args[0]
            if type(items) is dict:
                _meter().charge_work(len(items))
                super().__init__(items)  # keys were checked when that dict was built
            else:
                super().__init__(ordered_dict(items))

    def __setstate__(self, state: Any) -> None:
        if state not in (None, {}) and not (isinstance(state, dict) and all(type(k) is str for k in state)):
            raise pickle.UnpicklingError("malformed AttributeDict state")


def torch_device(kind: Any = "cpu", index: Any = None, *rest: Any) -> str:
    """``torch.device('cuda', 0)``: kept as its text ('cuda:0')."""
    if rest or type(kind) is not str or len(kind) > 64 or not (index is None or (type(index) is int and 0 <= index < 2**31)):
        raise Misuse("only torch.device(str) or torch.device(str, int)")
    return kind if index is None else f"{kind}:{index}"


def counter(items: Any = None) -> dict[Any, Any]:
    """``collections.Counter({...})`` (how a Counter pickles itself): kept as a dict."""
    if items is None:
        return {}
    if type(items) is not dict:
        raise Misuse("only Counter() or Counter(dict)")
    _meter().charge_work(len(items))
    return dict(items)  # keys were checked when that dict was built


def bytearray_(data: Any = b"", encoding: Any = None) -> bytearray:
    """``bytearray(b'...')`` / protocol 2's ``bytearray('...', 'latin-1')``; never ``bytearray(n)``."""
    if type(data) is str and encoding in ("latin1", "latin-1"):
        data = data.encode("latin-1")
    elif not (isinstance(data, (bytes, bytearray)) and encoding is None):
        raise Misuse("only bytearray(bytes) or bytearray(str, 'latin-1')")
    _meter().charge_text(len(data))
    return bytearray(data)


class BytesIORecord(metaclass=_Sealed):
    """An ``io.BytesIO`` (torchtitan's 2024 ``train_state`` saved lists this way), never a real one.

    Its bytes are read as a nested checkpoint through this same reader, within what is left of the
    outer load's budget and at most :data:`MAX_NESTED` levels deep: a torch zip's ``data.pkl``, or
    the pickles a legacy ``torch.load`` would unpickle. A global outside the allowlist inside makes
    the *outer* file unsafe; bytes that are no checkpoint stay opaque (``format`` "bytes", torch
    itself would only hand them over). Nested tensors are placeholders of the inner archive: the
    walks over a file's own tensors (``iter_tensors``) do not descend into ``value``.
    """

    __slots__ = ("nbytes", "position", "format", "value", "error", "_built")

    def __new__(cls, *args: Any) -> "BytesIORecord":
        if len(args) > 1 or (args and not isinstance(args[0], (bytes, bytearray))):
            raise _misuse("_io.BytesIO", "only BytesIO() or BytesIO(bytes)")
        record = object.__new__(cls)
        record._built = False
        record._fill(bytes(args[0]) if args else b"", 0)
        return record

    def __init__(self, *args: Any) -> None:
        pass

    def _fill(self, data: bytes, position: int) -> None:
        self.nbytes = len(data)
        self.position = position
        self.format, self.value, self.error = _read_nested(data) if data else ("bytes", None, None)

    def __setstate__(self, state: Any) -> None:
        # BytesIO.__getstate__: (getvalue(), tell(), __dict__ or None)
        if not (isinstance(state, tuple) and len(state) == 3 and isinstance(state[0], (bytes, bytearray))
                and type(state[1]) is int and state[2] in (None, {})):  # fmt: skip
            raise pickle.UnpicklingError("malformed BytesIO state")
        if self._built:
            raise pickle.UnpicklingError("BytesIO objects are read-only once built")
        self._built = True
        self._fill(bytes(state[0]), state[1])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BytesIORecord) and (self.format, self.nbytes, self.value, self.error) == (
            other.format, other.nbytes, other.value, other.error)  # fmt: skip

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.value is None:
            return f"BytesIO(<{self.nbytes} bytes{': ' + self.error if self.error else ''}>)"
        return f"BytesIO({self.format}: " + bounded_repr(self.value, 1000) + ")"


def _read_nested(data: bytes) -> tuple[str, Any, str | None]:
    """(format, value, error) of the bytes inside a BytesIO, read with the outer load's remaining budget.

    Globals outside the allowlist found inside are added to the outer load's refused names (so the
    outer file is unsafe and every name is reported); a budget overrun ends the outer load.
    """
    outer = _meter()
    level = getattr(outer, "nest_level", 0) + 1
    if level > MAX_NESTED:
        raise BudgetExceeded("nested checkpoints", MAX_NESTED)
    if len(data) > 262 and data[257:262] == b"ustar":  # torch's oldest (tar) format: not read
        raise _misuse("_io.BytesIO", "a tar archive inside (torch.load would unpickle its members)")
    from .container import open_container, read_record, sniff_format  # container imports nothing of ours

    fh = io.BytesIO(data)
    if sniff_format(fh) == "zip":
        try:
            container = open_container(pathlib.Path("<BytesIO>"), fh)
            pickled = read_record(fh, container.pickle_record)
        except UnsafeCheckpoint as exc:  # an ambiguous archive: another reader could see another pickle
            _refuse_nested(outer, f"_io.BytesIO ({_short(exc)})")
            return "zip", None, str(exc)
        except UnreadableCheckpoint as exc:
            return "bytes", None, f"unreadable zip: {_short(exc)}"
        value, error, _ = _load_nested(outer, level, pickled, 0)
        return "zip", value, error
    # anything else: torch.load's legacy path unpickles from the first byte (magic, protocol,
    # sys_info, the object, storage keys): read up to those five pickles back to back
    values: list[Any] = []
    position = 0
    error: str | None = None
    for _ in range(5):
        if position >= len(data):
            break
        value, error, position = _load_nested(outer, level, data, position)
        if error is not None:
            break
        values.append(value)
    if not values:
        return "bytes", None, None  # not a pickle: opaque bytes, as torch.load of the outer file gives them
    if values[0] == 0x1950A86A20F9469CFC6C:  # torch's legacy magic number: the object is the fourth pickle
        return "legacy", values[3] if len(values) > 3 else None, None if len(values) > 3 else "truncated legacy stream"
    return "pickle", values[0], None


def _refuse_nested(outer: Any, name: str) -> None:
    refused = getattr(outer, "refused", None)
    if refused is None:  # called outside a load: nothing to report into
        raise Misuse(name)
    if name not in outer._refused_seen:
        outer._refused_seen.add(name)
        refused.append(name)


def _load_nested(outer: Any, level: int, data: bytes, start: int) -> tuple[Any, str | None, int]:
    """One pickle of ``data`` from ``start``: (value, error, end), charged to the outer budget."""
    fh = io.BytesIO(data)
    fh.seek(start)
    if isinstance(outer, SafeUnpickler):
        parent = outer.budget
        budget = replace(parent, opcodes=len(data) - start + 1, objects=max(0, outer._objects_left),
                         work=max(0, outer._work_left), text_bytes=max(0, outer._text_left))  # fmt: skip
    else:
        budget = Budget.for_input(len(data) - start)
    inner = SafeUnpickler(fh, budget=budget)
    inner.nest_level = level
    try:
        value = inner.load()
        check_final_tensors(inner)
        check_structure(value, budget)
        error = None
    except Misuse as exc:
        value, error = None, f"misuses {exc.global_name}"
        _refuse_nested(outer, f"{exc.global_name} (misused, inside _io.BytesIO)" if exc.global_name != "?" else "_io.BytesIO")
    except BudgetExceeded:
        raise
    except UnreadableCheckpoint as exc:
        if "budget" in exc.reason:
            raise BudgetExceeded("nested checkpoint", 0) from None
        value, error = None, _short(exc)
    except RecursionError:
        raise BudgetExceeded("nesting depth", MAX_DEPTH) from None
    except Exception as exc:  # not a pickle, or a damaged one: opaque bytes
        value, error = None, f"{type(exc).__name__}: {_short(exc)}"
    for name in inner.refused:
        _refuse_nested(outer, name)
    if isinstance(outer, SafeUnpickler):
        outer._new(max(0, budget.objects - inner._objects_left))
        outer.charge_work(max(0, budget.work - inner._work_left))
        outer.charge_text(max(0, budget.text_bytes - inner._text_left))
    return value, error, fh.tell()


ALLOWED: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,  # REDUCE/OBJ with items: see SafeUnpickler
    "builtins.set": set_,
    "builtins.frozenset": frozenset_,
    "builtins.complex": complex,
    "builtins.slice": slice,
    "builtins.object": object,
    "__builtin__.set": set_,
    "__builtin__.frozenset": frozenset_,
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
ALLOWED.update(RECORDS)
ALLOWED.update({full: _enum(full) for full in ENUM_CLASSES})
ALLOWED.update({full: AttributeDict for full in ATTRIBUTE_DICTS})
ALLOWED.update({
    "torch.device": torch_device,
    "collections.Counter": counter,
    "builtins.bytearray": bytearray_,
    "__builtin__.bytearray": bytearray_,
    "_io.BytesIO": BytesIORecord,
})  # fmt: skip
ALLOWED.update({name: _Allowed(name, fn) for name, fn in ALLOWED.items() if isinstance(fn, types.FunctionType)})
_seal(NumpyArray, NumpyDtype, Namespace, _Refused, DcpRecord, *DCP_RECORDS.values(), Record, *RECORDS.values(),
      AttributeDict, BytesIORecord)


_HASH_EXACT = 2**61 - 1  # |n| below this: hash(n) == n (except -1), so distinct ints never collide
MAX_COLLISIONS = 64  # keys with one hash in one dict/set: more is a hash flood (each insert probes them all)
_OP = {name: getattr(pickle, name)[0] for name in (
    "MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "LIST", "DICT", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET",
    "FROZENSET", "ADDITEMS", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ",
    "INST", "BUILD", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "INT", "LONG", "LONG4", "BYTEARRAY8", "FRAME")}  # fmt: skip
_active = threading.local()  # the load running in this thread: allowlisted functions charge its budget


class SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """An unpickler whose ``find_class`` never imports anything outside ``ALLOWED``, within a :class:`Budget`.

    Built on Python's pure-Python unpickler on purpose: the C unpickler keeps its memo in an array
    it grows to the largest ``PUT`` index it meets, so a 10-byte pickle naming memo slot 2**31
    makes it allocate tens of GiB before any check of ours can run. The pure-Python one keeps the
    memo in a dict, and its opcode handlers can be replaced: the ones that allocate, hash, or nest
    are, so each charges the budget *before* the work (a deep tuple is measured before it is
    hashed as a key). It costs more unpickling time than the C one (5.5 ms -> 11 ms for a
    380-tensor state dict, before :meth:`_load_direct` took ~30% off), which a listing can afford
    (and ckptctl.ops.listing_cache spares unchanged files); a memory bomb it could not.
    """

    def __init__(self, file: io.BufferedIOBase, storage_hook: Callable[[StorageRef], None] | None = None,
                 budget: Budget | None = None):  # fmt: skip
        super().__init__(file, encoding="latin1")
        self._file = file
        self.refused: list[str] = []
        self._refused_seen: set[str] = set()
        self._storage_hook = storage_hook
        self.storages: dict[str, StorageRef] = {}
        self.tensors: list[TensorRef] = []  # every tensor built: bounds re-checked on the final objects
        self.budget = budget if budget is not None else Budget.for_input(_input_size(file))
        self._objects_left = self.budget.objects
        self._work_left = self.budget.work
        self._text_left = self.budget.text_bytes
        self._memo_limit = self.budget.memo
        self._items_limit = self.budget.container_items
        self._depth_limit = self.budget.depth
        self._key_costs: dict[int, tuple[Any, int, int]] = {}  # id -> (tuple, hash cost, depth)
        self._collisions: dict[tuple[int, int], int] = {}  # (id(container), hash) -> keys

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def load(self) -> Any:
        """Refuse extension-code globals before loading (see :func:`extension_globals`)."""
        if copyreg._inverted_registry:  # type: ignore[attr-defined]
            names = extension_globals(self._file)
            if names:
                self.refused.extend(names)
                raise Misuse("extension opcodes")
        previous = getattr(_active, "meter", None)
        _active.meter = self
        try:
            return self._load_direct()
        finally:
            _active.meter = previous

    def _load_direct(self) -> Any:
        """pickle's own opcode loop, reading straight from the file instead of through its
        ``_Unframer``: one Python call less per opcode argument (about 30% of the unpickling time
        of a listing). A FRAME (protocol 4+) only announces how many of the following bytes belong
        together; they follow inline either way, so :meth:`_skip_frame` just reads its length.
        The loop runs at most ``budget.opcodes`` times without counting: every opcode reads at
        least one byte, and the input holds ``budget.opcodes - 1`` (a counter here cost 4%).
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
            while True:  # at most budget.opcodes times: each opcode reads at least one byte of the input
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

    dispatch[_OP["FRAME"]] = _skip_frame

    # -- budget accounting (called by the handlers below and, through _meter(), by ALLOWED) --

    def _over(self, name: str) -> None:
        limits = {"objects": self.budget.objects, "nesting depth": self.budget.depth, "memo": self.budget.memo,
                  "container items": self.budget.container_items, "work": self.budget.work,
                  "text bytes": self.budget.text_bytes}  # fmt: skip
        raise BudgetExceeded(name, limits[name])

    def _new(self, units: int = 1) -> None:
        self._objects_left -= units
        if self._objects_left < 0:
            self._over("objects")

    def charge_work(self, n: int) -> None:
        self._work_left -= n
        if self._work_left < 0:
            self._over("work")

    def charge_text(self, n: int) -> None:
        self._text_left -= n
        if self._text_left < 0:
            self._over("text bytes")

    def _items(self, n: int) -> None:
        if n > self._items_limit:
            self._over("container items")

    def check_keys(self, container: Any, keys: Any) -> None:
        """Make hashing ``keys`` into ``container`` safe: measure nested keys first, bound collisions."""
        for key in keys:
            if type(key) is not str:
                self.check_key(container, key)

    def check_key(self, container: Any, key: Any) -> None:
        t = type(key)
        if (t is int and -_HASH_EXACT < key < _HASH_EXACT and key != -1) or t is bytes or t is bool or key is None:
            return
        if t is tuple or t is frozenset:
            self.charge_work(self._hash_cost(key))
        slot = (id(container), hash(key))
        count = self._collisions.get(slot, 0) + 1
        if count > MAX_COLLISIONS:
            raise BudgetExceeded("hash collisions", MAX_COLLISIONS)
        self._collisions[slot] = count

    def _hash_cost(self, root: tuple | frozenset) -> int:
        """Elements ``hash(root)`` visits (shared inner tuples counted each time), found without
        recursion and memoised per tuple; nesting deeper than the budget is refused here, before
        C's recursive tuple hash could overflow the stack."""
        costs = self._key_costs
        known = costs.get(id(root))
        if known is None:
            stack: list[tuple[Any, int, bool]] = [(root, 0, False)]
            while stack:
                node, depth, finished = stack.pop()
                if finished:
                    cost, deepest = 1, 0
                    for child in node:
                        entry = costs.get(id(child)) if type(child) in (tuple, frozenset) else None
                        if entry is None:
                            cost += 1
                        else:
                            cost += entry[1]
                            deepest = max(deepest, entry[2] + 1)
                    if deepest > self._depth_limit:
                        self._over("nesting depth")
                    costs[id(node)] = (node, cost, deepest)
                    continue
                if id(node) in costs:
                    continue
                if depth >= self._depth_limit:
                    self._over("nesting depth")
                self.charge_work(len(node))  # the walk itself: each distinct tuple once
                stack.append((node, depth, True))
                stack.extend((child, depth + 1, False) for child in node
                             if type(child) in (tuple, frozenset) and id(child) not in costs)  # fmt: skip
            known = costs[id(root)]
        return known[1]

    # -- opcode handlers that allocate, nest, hash, or build big numbers --

    def load_mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []
        self.append = self.stack.append
        self._objects_left -= 1
        if self._objects_left < 0 or len(self.metastack) > self._depth_limit:
            self._over("objects" if self._objects_left < 0 else "nesting depth")

    dispatch[_OP["MARK"]] = load_mark

    def load_tuple(self) -> None:
        items = self.pop_mark()
        self._objects_left -= 1
        if self._objects_left < 0 or len(items) > self._items_limit:
            self._over("objects" if self._objects_left < 0 else "container items")
        self.append(tuple(items))

    dispatch[_OP["TUPLE"]] = load_tuple

    def load_tuple1(self) -> None:
        self._objects_left -= 1
        if self._objects_left < 0:
            self._over("objects")
        self.stack[-1] = (self.stack[-1],)

    dispatch[_OP["TUPLE1"]] = load_tuple1

    def load_tuple2(self) -> None:
        self._objects_left -= 1
        if self._objects_left < 0:
            self._over("objects")
        stack = self.stack
        stack[-2:] = [(stack[-2], stack[-1])]

    dispatch[_OP["TUPLE2"]] = load_tuple2

    def load_tuple3(self) -> None:
        self._new()
        stack = self.stack
        stack[-3:] = [(stack[-3], stack[-2], stack[-1])]

    dispatch[_OP["TUPLE3"]] = load_tuple3

    def load_empty_list(self) -> None:
        self._new()
        self.append([])

    dispatch[_OP["EMPTY_LIST"]] = load_empty_list

    def load_empty_dict(self) -> None:
        self._new()
        self.append({})

    dispatch[_OP["EMPTY_DICT"]] = load_empty_dict

    def load_empty_set(self) -> None:
        self._new(4)  # an empty set is 216 bytes
        self.append(set())

    dispatch[_OP["EMPTY_SET"]] = load_empty_set

    def load_list(self) -> None:
        items = self.pop_mark()
        self._items(len(items))
        self._new()
        self.append(items)

    dispatch[_OP["LIST"]] = load_list

    def load_dict(self) -> None:
        items = self.pop_mark()
        self._items(len(items) // 2)
        self._new()
        d: dict[Any, Any] = {}
        for i in range(0, len(items), 2):
            key = items[i]
            if type(key) is not str:
                self.check_key(d, key)
            d[key] = items[i + 1]
        self.append(d)

    dispatch[_OP["DICT"]] = load_dict

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        self._items(len(items))
        self._new(4)
        self.check_keys(items, items)
        self.append(frozenset(items))

    dispatch[_OP["FROZENSET"]] = load_frozenset

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise pickle.UnpicklingError("ADDITEMS on a non-set")
        self.check_keys(target, items)
        target.update(items)
        self._items(len(target))

    dispatch[_OP["ADDITEMS"]] = load_additems

    def load_append(self) -> None:
        stack = self.stack
        value = stack.pop()
        target = stack[-1]
        target.append(value)
        if type(target) is list and len(target) > self._items_limit:
            self._over("container items")

    dispatch[_OP["APPEND"]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is list:
            target.extend(items)
            self._items(len(target))
        else:
            append = target.append
            for item in items:
                append(item)

    dispatch[_OP["APPENDS"]] = load_appends

    def load_setitem(self) -> None:
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        target = stack[-1]
        if type(key) is not str:
            self.check_key(target, key)
        target[key] = value
        if isinstance(target, dict) and len(target) > self._items_limit:
            self._over("container items")

    dispatch[_OP["SETITEM"]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            key = items[i]
            if type(key) is not str:
                self.check_key(target, key)
            target[key] = items[i + 1]
        if isinstance(target, dict) and len(target) > self._items_limit:
            self._over("container items")

    dispatch[_OP["SETITEMS"]] = load_setitems

    def load_reduce(self) -> None:
        self._objects_left -= 1
        if self._objects_left < 0:
            self._over("objects")
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if args and func is collections.OrderedDict:  # torch's OrderedDict() takes the plain path
            func = ordered_dict  # items are measured before they are hashed
        stack[-1] = func(*args)

    dispatch[_OP["REDUCE"]] = load_reduce

    def _instantiate(self, klass: Any, args: list[Any]) -> None:
        """INST and OBJ (protocols 0-1) call ``klass(*args)``: OrderedDict's items are measured too."""
        if args and klass is collections.OrderedDict:
            klass = ordered_dict
        super()._instantiate(klass, args)

    def _counted(handler: Callable[[Any], None]) -> Callable[[Any], None]:  # type: ignore[misc]
        def load_counted(self: "SafeUnpickler") -> None:
            self._new()
            handler(self)

        return load_counted

    for _name in ("NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"):
        dispatch[_OP[_name]] = _counted(dispatch[_OP[_name]])
    del _counted, _name

    def load_build(self) -> None:
        """BUILD only through a class's own ``__setstate__`` (our inert classes; the placeholders'
        refuse), never pickle's fallback of writing ``inst.__dict__`` / ``setattr``: that would
        bypass ``frozen``. The one exception is an OrderedDict's attributes (torch's state dicts
        carry ``_metadata``), set as plain data with string names."""
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if type(inst) is collections.OrderedDict:
            if type(state) is not dict or not all(type(k) is str for k in state):
                raise pickle.UnpicklingError("malformed OrderedDict state")
            inst.__dict__.update(state)
            return
        setstate = getattr(type(inst), "__setstate__", None)
        if setstate is None:
            raise pickle.UnpicklingError(f"{type(inst).__name__} objects cannot be built")
        setstate(inst, state)

    dispatch[_OP["BUILD"]] = load_build

    # Memo indices must lie below the memo budget (picklers number entries 0, 1, 2, ...): then the
    # memo cannot hold more entries than the budget, and one comparison per PUT keeps it so.

    def load_put(self) -> None:
        line = self.readline()[:-1]
        if len(line) > 20:
            raise pickle.UnpicklingError("malformed PUT index")
        i = int(line)
        if not 0 <= i < self._memo_limit:
            self._over("memo")
        self.memo[i] = self.stack[-1]

    dispatch[_OP["PUT"]] = load_put

    def load_binput(self) -> None:
        i = self.read(1)[0]
        if i >= self._memo_limit:
            self._over("memo")
        self.memo[i] = self.stack[-1]

    dispatch[_OP["BINPUT"]] = load_binput

    def load_long_binput(self) -> None:
        i = unpack("<I", self.read(4))[0]
        if i >= self._memo_limit:
            self._over("memo")
        self.memo[i] = self.stack[-1]

    dispatch[_OP["LONG_BINPUT"]] = load_long_binput

    def load_memoize(self) -> None:
        memo = self.memo
        i = len(memo)
        if i >= self._memo_limit:
            self._over("memo")
        memo[i] = self.stack[-1]

    dispatch[_OP["MEMOIZE"]] = load_memoize

    def _check_digits(self, digits: bytes) -> None:
        # 1233 decimal digits ~ 4096 bits; decimal text -> int is quadratic, so refuse before converting
        if len(digits) > self.budget.int_bits * 0.302 + 3:
            raise BudgetExceeded("integer bits", self.budget.int_bits)

    def load_int(self) -> None:
        data = self.readline()
        self._check_digits(data)
        pickle._Unpickler.load_int(self._replay(data))  # type: ignore[attr-defined]

    dispatch[_OP["INT"]] = load_int

    def load_long(self) -> None:
        data = self.readline()
        self._check_digits(data)
        pickle._Unpickler.load_long(self._replay(data))  # type: ignore[attr-defined]

    dispatch[_OP["LONG"]] = load_long

    def _replay(self, line: bytes) -> "_Replay":
        return _Replay(self, line)

    def load_long4(self) -> None:
        n = unpack("<i", self.read(4))[0]
        if n < 0:
            raise pickle.UnpicklingError("LONG pickle has negative byte count")
        if n * 8 > self.budget.int_bits:
            raise BudgetExceeded("integer bits", self.budget.int_bits)
        self.append(pickle.decode_long(self.read(n)))

    dispatch[_OP["LONG4"]] = load_long4

    def load_bytearray8(self) -> None:
        n = unpack("<Q", self.read(8))[0]
        data = self.read(min(n, self._text_left + 1))  # never allocate what the header claims
        if len(data) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self._new()
        self.append(bytearray(data))

    dispatch[_OP["BYTEARRAY8"]] = load_bytearray8

    def find_class(self, module: str, name: str) -> Any:
        if len(module) + len(name) > MAX_NAME_CHARS:  # no allowed name is this long; one memoised 1 MB
            full = bounded_str(module, 100) + "." + bounded_str(name, 100)  # name is not copied per use
        else:
            full = f"{module}.{name}"
            allowed = ALLOWED.get(full)
            if allowed is not None:
                return allowed
        if full not in self._refused_seen:
            self._refused_seen.add(full)
            self.refused.append(full)
        return _Refused

    def persistent_load(self, pid: Any) -> Any:
        # zip format: ('storage', storage_type, key, location, numel)
        # legacy format: ('storage', storage_type, root_key, location, numel, view_metadata)
        if type(pid) is not tuple or len(pid) < 5 or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {type(pid).__name__}")
        storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(storage_type, StorageType):
            if storage_type is _Refused:
                return _Refused()
            raise pickle.UnpicklingError("malformed storage reference")
        if (type(key) is not str or type(location) is not str or type(numel) is not int or not 0 <= numel <= INT64_MAX
                or len(key) > MAX_NAME_CHARS or len(location) > MAX_NAME_CHARS):  # fmt: skip
            raise pickle.UnpicklingError("malformed storage reference")
        existing = self.storages.get(key)
        if existing is not None:
            return existing
        self._objects_left -= 1
        if self._objects_left < 0:
            self._over("objects")
        ref = StorageRef(key, storage_type.dtype, numel, location)
        self.storages[key] = ref
        if self._storage_hook:
            self._storage_hook(ref)
        return ref


class _Replay:
    """Hands one already-read line to pickle's own INT/LONG handler (so its parsing is kept)."""

    def __init__(self, unpickler: SafeUnpickler, line: bytes):
        self.append = unpickler.append
        self._line = line

    def readline(self) -> bytes:
        return self._line


class _Unmetered:
    """The meter outside any load (an allowlisted function called directly): charges nothing."""

    def charge_work(self, n: int) -> None:
        pass

    def charge_text(self, n: int) -> None:
        pass

    def check_keys(self, container: Any, keys: Any) -> None:
        pass

    @property
    def tensors(self) -> list[TensorRef]:
        return []


_UNMETERED = _Unmetered()


def _meter() -> Any:
    """The budget of the load running in this thread (allowlisted functions charge their work to it)."""
    return getattr(_active, "meter", None) or _UNMETERED


def _input_size(file: Any) -> int:
    """Bytes left in ``file`` from where it is: the ``S`` a load's budget is sized from."""
    if isinstance(file, io.BytesIO):
        return len(file.getbuffer()) - file.tell()
    try:
        here = file.tell()
        end = file.seek(0, 2)
        file.seek(here)
        return max(0, end - here)
    except (AttributeError, OSError, ValueError):
        return 1 << 30  # unknown: as for a 1 GiB input


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


def safe_loads(data: bytes, budget: Budget | None = None) -> tuple[Any, dict[str, StorageRef]]:
    """Unpickle ``data`` into inert objects, within ``budget`` (default: sized from ``len(data)``).

    Raises UnsafeCheckpoint or UnreadableCheckpoint ("... exceeds <limit> budget (<n>)").
    """
    unpickler = SafeUnpickler(io.BytesIO(data), budget=budget)
    obj = run_unpickler(unpickler)
    return obj, unpickler.storages


def run_unpickler(unpickler: SafeUnpickler) -> Any:
    """Load one pickle with ``unpickler``, mapping every failure to a checkpoint verdict."""
    try:
        obj = unpickler.load()
    except Misuse as exc:
        names = [*unpickler.refused, exc.global_name] if exc.global_name != "?" else unpickler.refused
        reason = None if unpickler.refused else f"misuses {exc.global_name}: {_short(exc)}"
        raise UnsafeCheckpoint(names, reason=reason) from None
    except BudgetExceeded as exc:
        if unpickler.refused:
            raise UnsafeCheckpoint(unpickler.refused) from None
        raise UnreadableCheckpoint(f"pickle {exc}") from None
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
    check_final_tensors(unpickler)
    check_structure(obj, unpickler.budget)
    return obj


def _short(exc: BaseException) -> str:
    """The first line of an error message, never stringifying a file's objects in full.

    (``str(KeyError(key))`` is ``repr(key)``: a key from the file could be a 2**60-item tuple.)
    """
    first = exc.args[0] if exc.args else ""
    text = first if type(first) is str else bounded_repr(first, 120)
    return text.splitlines()[0][:120] if text else ""


def check_final_tensors(unpickler: SafeUnpickler) -> None:
    """Bounds of every tensor placeholder, checked once the load has ended, on the final objects:
    nothing the rest of the pickle does can change them after this. Each lies inside a storage
    that is the one the pickle declared, or a re-expression of it in the tensor's dtype (torch's
    v3 rebuild) that holds no more bytes."""
    storages = unpickler.storages
    for tensor in unpickler.tensors:
        storage = tensor.storage
        declared = storages.get(storage.key)
        if declared is not storage and (declared is None or storage.nbytes > declared.nbytes):
            raise UnreadableCheckpoint(f"malformed tensor: storage {bounded_str(storage.key, 40)} changed")
        try:
            _check_bounds(tensor)
        except pickle.UnpicklingError as exc:
            raise UnreadableCheckpoint(f"corrupt pickle: {exc}") from None


def check_structure(obj: Any, budget: Budget | None = None) -> None:
    """Bound what later code walks: nesting depth, expanded object count and text, container
    sizes, no cycles (iterative).

    The count is of the tree the walkers see, not of the pickle's objects: pickle memoises, so a
    list holding one list a thousand times, nested three deep, is a few thousand objects in the
    file but a billion to any walk (``iter_tensors``, JSON output); one 1 MB string named a
    thousand times is a GB of JSON. Each container's expanded size is computed once (post-order,
    memoised by identity), so this stays linear in the file. Only containers go on the stack.
    """
    if budget is None:
        budget = Budget.for_input(1 << 30)
    max_objects, max_text, max_depth, max_items = budget.expanded, budget.text_bytes, budget.depth, budget.container_items
    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded objects, expanded text bytes) of a finished container
    on_path: set[int] = set()
    stack: list[tuple[Any, int, tuple[int, int, list[Any]] | None]] = (
        [(obj, 0, None)] if isinstance(obj, _CONTAINERS) else []
    )
    while stack:
        item, depth, leaving = stack.pop()
        key = id(item)
        if leaving is not None:  # all children are finished
            on_path.discard(key)
            leaves, text, containers = leaving
            total = 1 + leaves
            for child in containers:
                child_total, child_text = sizes[id(child)]
                total += child_total
                text += child_text
            if total > max_objects:
                raise UnreadableCheckpoint(f"pickle expands to too many objects: exceeds expanded objects budget ({max_objects})")
            if text > max_text:
                raise UnreadableCheckpoint(f"pickle expands to too much text: exceeds text bytes budget ({max_text})")
            sizes[key] = (total, text)
            continue
        if key in on_path:
            raise UnreadableCheckpoint("pickle contains a reference cycle")
        if key in sizes:
            continue
        if depth >= max_depth:
            raise UnreadableCheckpoint(f"pickle nests too deeply: exceeds nesting depth budget ({max_depth})")
        children = _children(item)
        if (len(children) // 2 if isinstance(item, dict) else len(children)) > max_items:  # dicts: keys + values
            raise UnreadableCheckpoint(f"pickle exceeds container items budget ({max_items})")
        containers = []
        text = 0
        for child in children:
            kind = type(child)
            if kind is str:
                text += len(child)
            elif kind in _LEAF_TYPES:
                pass
            elif kind is int:  # as decimal text a 4096-bit int is 1233 characters
                text += child.bit_length() // 3
            elif kind is bytes or kind is bytearray:
                text += len(child)
            elif isinstance(child, _CONTAINERS):
                containers.append(child)
        on_path.add(key)
        stack.append((item, depth, (len(children) - len(containers), text, containers)))
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
    if isinstance(item, BytesIORecord):
        return [item.value]
    return []


_CONTAINERS = (dict, list, tuple, set, frozenset, Namespace, DcpRecord, BytesIORecord)
_LEAF_TYPES = frozenset({float, bool, type(None), TensorRef, StorageRef, NumpyArray, DtypeRef})
register_fixed_repr(TensorRef, DtypeRef, StorageType, TensorType, NumpyArray)
register_view(Namespace, lambda ns: ("Namespace({", ns.attrs.items(), "})", True))
register_view(Record, lambda rec: (f"{type(rec).__name__}({{", rec.attrs.items(), "})", True))
register_view(BytesIORecord, lambda rec: (f"BytesIO({rec.format}: ", [rec.value], ")", False))
register_view(DcpRecord, lambda rec: (f"{type(rec).__name__}({{", rec.fields.items(), "})", True))
