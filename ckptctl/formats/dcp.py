"""Sharded checkpoints written by ``torch.distributed.checkpoint`` (DCP), read safely.

A DCP checkpoint is a directory: each rank wrote its ``__<rank>_<n>.distcp`` shard files and the
coordinator wrote ``.metadata`` (a pickle of DCP's dataclasses) last. A directory without
``.metadata`` is a save that never finished: *partial*.

Reading (:func:`read_directory`) never runs code: ``.metadata`` goes through
:class:`ckptctl.formats.unpickler.SafeUnpickler` (inert stand-ins for DCP's classes), the small
non-tensor values (``step``, ``val_loss``, ...) DCP stores as ``torch.save`` blobs inside the shard
files are read through the same unpickler, and the result is a
:class:`ckptctl.formats.reader.CheckpointFile` with tensor placeholders, so ``list``/``inspect``/``compare``
need no DCP-specific code. Writing lives elsewhere: the atomic commit, removal and pointer swaps of
a directory in :mod:`ckptctl.durable`, DCP saves and loads in :mod:`ckptctl.training.dcp_save`.
"""

from __future__ import annotations

import io
import math
import os
import stat as stat_module
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import CheckpointError, PartialCheckpoint, UnreadableCheckpoint, UnsafeCheckpoint
from . import parse_memo
from .checkpoint import CheckpointFile
from .safe_open import not_regular, open_regular
from .unpickler import DCP_RECORDS, DTYPE_ITEMSIZE, DtypeRef, StorageRef, TensorRef, safe_loads

METADATA_FILE = ".metadata"
SHARD_SUFFIX = ".distcp"
# Files of a directory of single-file checkpoints (the suffixes listing/validate look at): one of
# them beside DCP's files means the directory is not one DCP checkpoint (see looks_like_dcp).
NATIVE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
TEMP_SUFFIX = ".tmp"  # a write in progress, every writer's convention (ckptctl.layouts.naming.TEMP_SUFFIX)
MiB = 1024 * 1024


@dataclass(frozen=True)
class DcpBudget:
    """The work reading one DCP directory may do (docs/architecture.md: every reader has a budget).

    The unpickler bounds each pickle (``.metadata``, every value blob); these limits bound what
    DCP's structure multiplies: entries, chunks, dimensions, and the value bytes read and
    decoded, which many storage entries naming one blob would otherwise multiply without end.
    Sized from the input: items from the ``.metadata`` size, decoded bytes from the shard files'
    size. Exceeding one is an ``UnreadableCheckpoint`` verdict ("... exceeds the ... budget").
    Kept local to this module until the readers share one budget type (the unpickler's).
    """

    metadata_bytes: int = 256 * MiB  # .metadata is read whole
    items_base: int = 100_000  # entries + planner paths + chunks, plus one per 16 .metadata bytes (~50 in DCP's own)
    values: int = 10_000  # non-tensor values decoded (DCP's own: dozens; each costs a zip parse + unpickle)
    value_bytes: int = 1 * MiB  # one value's blob: a larger one is listed (as None), not decoded
    dims: int = 64  # dimensions of a tensor or chunk; each below 2**63 as in torch
    depth: int = 64  # levels of a key's path (planner_data)
    decoded_base: int = 64 * MiB  # value bytes read + unpickled in total: base + factor x shard bytes
    decoded_factor: int = 4

    def items(self, metadata_bytes: int) -> int:
        return self.items_base + metadata_bytes // 16

    def decoded(self, shard_bytes: int) -> int:
        return self.decoded_base + self.decoded_factor * shard_bytes


BUDGET = DcpBudget()  # read at call time: a caller with a legitimately huge checkpoint may replace it


def _over(what: str) -> UnreadableCheckpoint:
    return UnreadableCheckpoint(f"{what} exceeds the DCP reading budget")


# ------------------------------------------------------------------------------------- reading


def looks_like_dcp(path: str | os.PathLike[str]) -> bool:
    """One DCP checkpoint, recognised by its own structure (what ``inspect``/``validate`` of a
    directory accept as a single sharded checkpoint).

    DCP's files (``.metadata``, ``*.distcp``) are needed, and nothing that makes the directory a
    directory *of* checkpoints: a single-file checkpoint (``*.pt``, ``*.pth``, ``*.ckpt``,
    ``*.bin``, or its ``.tmp``) or a checkpoint-named subdirectory. Otherwise a ``.metadata`` or
    an empty ``x.distcp`` planted beside a hostile ``latest.pt`` would turn the directory into
    "one DCP checkpoint" and the ``latest.pt`` would never be examined; with this rule the
    directory is read as a native one and the stray files are merely reported.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    dcp_files = False
    try:
        with os.scandir(path) as it:
            for dirent in it:
                if dirent.name == METADATA_FILE or dirent.name.endswith(SHARD_SUFFIX):
                    dcp_files = True
                elif _native_entry(dirent):
                    return False
    except OSError:
        return False
    return dcp_files


def _native_entry(dirent: os.DirEntry[str]) -> bool:
    """A name that belongs to a directory of checkpoints, not inside one DCP checkpoint: a
    single-file checkpoint, or a subdirectory (DCP's writer makes none; a visible one is a
    checkpoint of its own, ``rolling_step_000002/`` or ``step-20/``)."""
    if dirent.name.removesuffix(TEMP_SUFFIX).endswith(NATIVE_SUFFIXES):
        return True
    if dirent.name.startswith("."):
        return False
    try:
        return dirent.is_dir()
    except OSError:
        return False


def directory_sizes(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(apparent, allocated) bytes of the regular files directly inside ``path`` (DCP writes no subdirectories)."""
    size = allocated = 0
    try:
        with os.scandir(path) as it:
            for dirent in it:
                try:
                    info = dirent.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat_module.S_ISREG(info.st_mode):
                    size += info.st_size
                    allocated += getattr(info, "st_blocks", 0) * 512
    except OSError:
        pass
    return size, allocated


def read_directory(path: str | os.PathLike[str], *, all_values: bool = True) -> CheckpointFile:
    """Read a DCP directory safely. Raises PartialCheckpoint, UnreadableCheckpoint or UnsafeCheckpoint.

    ``all_values=False`` (the listing's fast path, like ``read_checkpoint(spans=False)``) decodes only
    the top-level values (``step``, ``val_loss``, ``timestamp``...); nested ones (optimizer
    hyper-parameters, RNG states) are left as None. Every step runs under :data:`BUDGET`.
    """
    from .storage import is_url

    if is_url(path):
        raise UnreadableCheckpoint("sharded (DCP) checkpoint on object storage: not supported, copy it to a local path")
    path = Path(path)
    metadata = _load_metadata(path)
    files = _shard_files(path, metadata)
    tensors, storages = _tensor_inventory(metadata)
    values = _decode_values(path, metadata, files, None if all_values else _top_level_keys(metadata))
    root = _build_root(metadata, tensors, values)
    size, _allocated = directory_sizes(path)
    notes = [f"sharded (DCP) checkpoint: {len(files)} shard file(s), version {metadata.fields.get('version')!s}"]
    return CheckpointFile(path, "dcp", size, root, storages, {}, None, notes, spans_read=False)


# ------------------------------------------------------------------ parsed .metadata, remembered
#
# One ``ckptctl list`` of a torchtitan run parses each ``.metadata`` twice: the layout (completeness,
# step, metrics) and the catalog's read (status, the object graph). The safe parse is most of the
# listing (about 0.2 s for a 1 MB ``.metadata``), so while a listing runs (parse_memo.remembering)
# the parsed result is remembered by the identity of the file read — (device, inode, size,
# mtime_ns, ctime_ns) from ``fstat`` of the open descriptor, the rule of ckptctl.ops.listing_cache —
# and a later read of the same bytes reuses it. Only in memory, never on disk, forgotten when the
# listing ends. A rewritten or replaced ``.metadata`` has another identity (ctime cannot be set
# back: ``utime`` moves it to now), so it is always parsed afresh; a file whose ctime is younger
# than SETTLE_SECONDS is never remembered (a write within one timestamp tick could leave its
# identity unchanged). Only successful parses are kept: damaged or hostile ones are refused again
# on every read. The budget checks are re-run on every use, under the current BUDGET. The memory
# is bounded by the ``.metadata`` bytes remembered (a parsed graph is ~14x its file): once full
# nothing more is added (the layout-then-catalog order would defeat an LRU).

SETTLE_SECONDS = 1.0
MEMO_BYTES = 16 * MiB  # of .metadata files remembered: ~200 MB of parsed graphs at most


def forget_parsed() -> None:
    """Drop every remembered ``.metadata`` parse (tests)."""
    parse_memo.forget()


def _remember(identity: tuple[int, int, int, int, int], root: Any, now_ns: int) -> None:
    size, ctime_ns = identity[2], identity[4]
    if not parse_memo.active or ctime_ns > now_ns - SETTLE_SECONDS * 1e9:
        return
    if parse_memo.remembered_bytes + size > MEMO_BYTES:
        return
    parse_memo.memo[identity] = root
    parse_memo.remembered_bytes += size


def _load_metadata(path: Path) -> Any:
    budget = BUDGET
    meta_path = path / METADATA_FILE
    now_ns = time.time_ns()  # before reading: a write after this moment gets a later ctime
    try:
        with open_regular(meta_path) as fh:  # a FIFO here would block a plain open() forever
            info = os.fstat(fh.fileno())
            identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            root = parse_memo.memo.get(identity) if parse_memo.active else None
            if root is not None and info.st_size <= budget.metadata_bytes:
                _check_item_count(root, budget.items(info.st_size))
                return root
            # read(n) allocates n bytes up front: ask for what the file holds, not for the limit
            data = fh.read(min(info.st_size, budget.metadata_bytes) + 1)
    except FileNotFoundError:
        raise PartialCheckpoint("no .metadata: a sharded save that did not finish") from None
    except UnreadableCheckpoint as exc:
        raise UnreadableCheckpoint(f".metadata: {exc.reason}") from None
    except OSError as exc:
        raise UnreadableCheckpoint(f"cannot open .metadata: {exc.strerror or exc}") from None
    if len(data) > budget.metadata_bytes:
        raise _over(f".metadata's size (more than {budget.metadata_bytes:,} bytes)")
    if not data:
        raise UnreadableCheckpoint("empty .metadata")
    root, storages = safe_loads(data)
    if not isinstance(root, DCP_RECORDS["Metadata"]) or storages:
        raise UnreadableCheckpoint(".metadata does not hold DCP metadata")
    for key in ("state_dict_metadata", "storage_data"):
        if not isinstance(root.fields.get(key), dict):
            raise UnreadableCheckpoint(f"malformed .metadata: no {key}")
    _check_item_count(root, budget.items(len(data)))
    if len(data) == info.st_size:  # the bytes parsed are the ones the identity describes
        _remember(identity, root, now_ns)
    return root


def _check_item_count(metadata: Any, limit: int) -> None:
    """Entries, planner paths and chunks together: a pickle can repeat one chunk object cheaply."""
    planner = metadata.fields.get("planner_data")
    count = len(metadata.fields["storage_data"]) + len(metadata.fields["state_dict_metadata"])
    count += len(planner) if isinstance(planner, dict) else 0
    for item in metadata.fields["state_dict_metadata"].values():
        chunks = item.fields.get("chunks") if isinstance(item, DCP_RECORDS["TensorStorageMetadata"]) else None
        count += len(chunks) if isinstance(chunks, list) else 0
        if count > limit:
            break
    if count > limit:
        raise _over(f".metadata's item count (more than {limit:,})")


def _storage_items(metadata: Any) -> Iterator[tuple[str, Any, str, int, int]]:
    """(fqn, chunk offset or None, relative path, offset, length) of every stored item, type-checked."""
    for index, info in metadata.fields["storage_data"].items():
        if not isinstance(index, DCP_RECORDS["MetadataIndex"]) or not isinstance(info, DCP_RECORDS["_StorageInfo"]):
            raise UnreadableCheckpoint("malformed .metadata: storage_data")
        fqn, rel = index.fields.get("fqn"), info.fields.get("relative_path")
        offset, length = info.fields.get("offset"), info.fields.get("length")
        if not isinstance(fqn, str) or not isinstance(rel, str) or not _nonneg(offset) or not _nonneg(length):
            raise UnreadableCheckpoint("malformed .metadata: storage_data")
        if rel in ("", ".", "..") or "/" in rel or "\\" in rel or "\0" in rel:
            raise UnsafeCheckpoint([], reason=f"storage path {rel!r} leaves the checkpoint directory")
        yield fqn, index.fields.get("offset"), rel, offset, length


def _nonneg(value: Any) -> bool:
    """A file offset, length or dimension: an int in torch's int64 range (no 10**5000 sizes)."""
    return type(value) is int and 0 <= value < 2**63


def _shard_files(path: Path, metadata: Any) -> dict[str, int]:
    """Every shard file ``.metadata`` names, with its size; a missing, short or special one is unreadable."""
    needed: dict[str, int] = {}
    for _fqn, _offset, rel, offset, length in _storage_items(metadata):
        needed[rel] = max(needed.get(rel, 0), offset + length)
    sizes: dict[str, int] = {}
    for rel, end in needed.items():
        try:
            info = os.stat(path / rel)
        except OSError:
            raise UnreadableCheckpoint(f"missing shard file {rel}") from None
        if not stat_module.S_ISREG(info.st_mode):
            raise UnreadableCheckpoint(f"shard file {rel}: {not_regular(info.st_mode).reason}")
        if info.st_size < end:
            raise UnreadableCheckpoint(f"truncated: shard file {rel} holds {info.st_size} bytes, .metadata expects {end}")
        sizes[rel] = info.st_size
    return sizes


def _tensor_inventory(metadata: Any) -> tuple[dict[str, TensorRef], dict[str, StorageRef]]:
    """A placeholder per tensor from ``.metadata`` (global shape and dtype, whatever the sharding)."""
    tensors: dict[str, TensorRef] = {}
    storages: dict[str, StorageRef] = {}
    for fqn, item in metadata.fields["state_dict_metadata"].items():
        if not isinstance(fqn, str):
            raise UnreadableCheckpoint("malformed .metadata: a non-string key")
        if isinstance(item, DCP_RECORDS["BytesStorageMetadata"]):
            continue
        if not isinstance(item, DCP_RECORDS["TensorStorageMetadata"]):
            raise UnreadableCheckpoint(f"malformed .metadata: entry {fqn}")
        dtype, shape = _tensor_type(fqn, item)
        storage = StorageRef(fqn, dtype, math.prod(shape), "dcp")
        storages[fqn] = storage
        tensors[fqn] = TensorRef(storage, 0, shape, _contiguous_strides(shape), dtype)
    return tensors, storages


def _tensor_type(fqn: str, item: Any) -> tuple[str, tuple[int, ...]]:
    props, shape = item.fields.get("properties"), item.fields.get("size")
    dtype = props.fields.get("dtype") if isinstance(props, DCP_RECORDS["TensorProperties"]) else None
    if not isinstance(dtype, DtypeRef) or dtype.name not in DTYPE_ITEMSIZE:
        raise UnreadableCheckpoint(f"malformed .metadata: tensor {fqn} has no known dtype")
    if not _shape(shape):
        raise UnreadableCheckpoint(f"malformed .metadata: tensor {fqn} has no shape")
    return dtype.name, shape


def _shape(value: Any) -> bool:
    """A tuple of at most ``BUDGET.dims`` int64 dimensions."""
    return isinstance(value, tuple) and len(value) <= BUDGET.dims and all(_nonneg(n) for n in value)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def chunk_problems(path: str | os.PathLike[str]) -> list[str]:
    """Tensors whose stored chunks do not add up to the tensor (what ``validate`` checks beyond ``list``)."""
    metadata = _load_metadata(Path(path))
    stored: dict[str, int] = {}
    for fqn, offset, *_ in _storage_items(metadata):
        if offset is not None:
            stored[fqn] = stored.get(fqn, 0) + 1
    problems = []
    for fqn, item in metadata.fields["state_dict_metadata"].items():
        if not isinstance(item, DCP_RECORDS["TensorStorageMetadata"]):
            continue
        _dtype, shape = _tensor_type(fqn, item)
        chunks = item.fields.get("chunks")
        if not isinstance(chunks, list):
            problems.append(f"tensor {fqn}: no chunk list")
            continue
        covered = sum(_chunk_numel(chunk) for chunk in chunks)
        if covered != math.prod(shape):
            problems.append(f"tensor {fqn}: chunks hold {covered} of {math.prod(shape)} elements")
        if stored.get(fqn, 0) < len(chunks):
            problems.append(f"tensor {fqn}: {len(chunks) - stored.get(fqn, 0)} chunk(s) not in any shard file")
    return problems


def _chunk_numel(chunk: Any) -> int:
    sizes = chunk.fields.get("sizes") if isinstance(chunk, DCP_RECORDS["ChunkStorageMetadata"]) else None
    return math.prod(sizes) if _shape(sizes) else 0


def _top_level_keys(metadata: Any) -> set[str]:
    planner = metadata.fields.get("planner_data")
    planner = planner if isinstance(planner, dict) else {}
    return {fqn for fqn in metadata.fields["state_dict_metadata"] if len(_key_path(planner, fqn)) == 1}


def _key_path(planner: dict[Any, Any], fqn: Any) -> tuple[Any, ...]:
    """Where ``fqn`` sits in the nested state dict (``planner_data``); the flat key when that is malformed."""
    path = planner.get(fqn)
    if isinstance(path, tuple) and path and all(_path_key(p) for p in path):
        return path
    return (fqn,)


def _decode_values(path: Path, metadata: Any, files: dict[str, int], only: set[str] | None = None) -> dict[str, Any]:
    """The non-tensor values (``torch.save`` blobs in the shard files), read with the restricted unpickler.

    Every byte read and unpickled counts against ``budget.decoded(shard bytes)``: a ``.metadata``
    whose entries all name the same 1 MiB blob must not cost a GiB of reading and unpickling.
    """
    budget = BUDGET
    wanted = [(fqn, rel, start, length) for fqn, offset, rel, start, length in _storage_items(metadata)
              if offset is None and length <= budget.value_bytes and (only is None or fqn in only)]  # fmt: skip
    if len(wanted) > budget.values:
        raise _over(f"the number of values ({len(wanted):,})")
    left = budget.decoded(sum(files.values()))
    if sum(length for *_, length in wanted) > left:
        raise _over(f"value bytes to read (more than {left:,})")
    values: dict[str, Any] = {}
    handles: dict[str, int] = {}
    try:
        for fqn, rel, start, length in wanted:
            if rel not in handles:
                handles[rel] = _open_shard(path, rel)
            blob = os.pread(handles[rel], length, start)
            left -= len(blob)
            values[fqn], used = _decode_blob(fqn, blob, min(left, budget.value_bytes))
            left -= used
    except OSError as exc:
        raise UnreadableCheckpoint(f"cannot read shard file: {exc.strerror or exc}") from None
    finally:
        for fd in handles.values():
            os.close(fd)
    return values


def _open_shard(path: Path, rel: str) -> int:
    """A descriptor for ``pread`` on a shard file, opened only if it is a regular file."""
    try:
        with open_regular(path / rel) as fh:
            return os.dup(fh.fileno())
    except UnreadableCheckpoint as exc:
        raise UnreadableCheckpoint(f"shard file {rel}: {exc.reason}") from None


def _decode_blob(fqn: str, blob: bytes, limit: int) -> tuple[Any, int]:
    """The value in one ``torch.save`` blob, and how many pickle bytes it took (at most ``limit``).

    torch.save stores its records uncompressed; a compressed record (bzip2 can declare a GiB in a
    few hundred bytes, and zipfile inflates bzip2/lzma chunks without a bound) is refused unread.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            infos = [i for i in archive.infolist() if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(infos) != 1:
                raise UnreadableCheckpoint(f"value {fqn}: not a torch.save blob")
            info = infos[0]
            if info.compress_type != zipfile.ZIP_STORED:
                raise UnreadableCheckpoint(f"value {fqn}: compressed record (method {info.compress_type}), not a torch.save blob")
            if info.file_size > limit:
                raise _over(f"value {fqn} ({info.file_size:,} bytes)")
            with archive.open(info) as fh:
                data = fh.read(limit + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, ValueError):
        raise UnreadableCheckpoint(f"value {fqn}: damaged") from None
    if len(data) > limit:
        raise _over(f"value {fqn}")
    value, _storages = safe_loads(data)
    return value, len(data)


SCALAR_BLOB_BYTES = 64 * 1024  # a one-element tensor's torch.save blob is ~1.5 KB


def scalar_bytes(path: str | os.PathLike[str], fqns: set[str]) -> dict[str, tuple[str, bytes, str]]:
    """The raw element bytes of one-element tensors ``fqns`` of a DCP directory, by name:
    ``(dtype, bytes, byteorder)`` (torchtitan's older ``train_state.step``, a 0-d int32 tensor).

    torch 2.13 writes each tensor item as its own stored torch.save archive; a small one is read
    whole (CRC-checked by zipfile), its pickle through the restricted unpickler. Names not found,
    larger items and anything damaged are left out; nothing here raises.
    """
    path = Path(path)
    found: dict[str, tuple[str, bytes, str]] = {}
    try:
        metadata = _load_metadata(path)
        items = [(fqn, rel, start, length) for fqn, offset, rel, start, length in _storage_items(metadata)
                 if fqn in fqns and offset is not None and length <= SCALAR_BLOB_BYTES]  # fmt: skip
        for fqn, rel, start, length in items:
            fd = _open_shard(path, rel)
            try:
                blob = os.pread(fd, length, start)
            finally:
                os.close(fd)
            value = _scalar_from_blob(blob)
            if value is not None:
                found[fqn] = value
    except (CheckpointError, OSError):
        return found
    return found


def _scalar_from_blob(blob: bytes) -> tuple[str, bytes, str] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            infos = {i.filename.split("/", 1)[-1]: i for i in archive.infolist()}
            if any(i.compress_type != zipfile.ZIP_STORED or i.file_size > SCALAR_BLOB_BYTES for i in infos.values()):
                return None
            if "data.pkl" not in infos:
                return None
            tensor, storages = safe_loads(archive.read(infos["data.pkl"]))
            if not isinstance(tensor, TensorRef) or tensor.numel != 1 or len(storages) != 1:
                return None
            record = infos.get(f"data/{tensor.storage.key}")
            order = archive.read(infos["byteorder"]).decode("ascii", "replace") if "byteorder" in infos else "little"
            if record is None or order not in ("little", "big"):
                return None
            data = archive.read(record)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, ValueError, KeyError,
            CheckpointError):  # fmt: skip
        return None
    itemsize = DTYPE_ITEMSIZE[tensor.dtype]
    raw = data[tensor.offset * itemsize : (tensor.offset + 1) * itemsize]
    return (tensor.dtype, raw, order) if len(raw) == itemsize else None


def _build_root(metadata: Any, tensors: dict[str, TensorRef], values: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the nested state dict from DCP's flattened keys (``planner_data`` holds each key's path)."""
    planner = metadata.fields.get("planner_data")
    planner = planner if isinstance(planner, dict) else {}
    root: dict[Any, Any] = {}
    for fqn in metadata.fields["state_dict_metadata"]:
        value = tensors[fqn] if fqn in tensors else values.get(fqn)
        path = _key_path(planner, fqn)
        if len(path) > BUDGET.depth:
            raise _over(f"key {fqn}'s depth ({len(path)} levels)")
        _place(root, path, value, fqn)
    return _lists(root)


def _path_key(key: Any) -> bool:
    """A level of a key's path: a string, or an int of int64 range (a list index or an int dict key)."""
    return isinstance(key, str) or (isinstance(key, int) and -(2**63) <= key < 2**63)


def _place(root: dict[Any, Any], path: tuple[Any, ...], value: Any, fqn: str) -> None:
    node = root
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UnreadableCheckpoint(f"malformed .metadata: {fqn} lies under a value")
    if isinstance(node.get(path[-1]), dict):
        raise UnreadableCheckpoint(f"malformed .metadata: {fqn} is both a value and a container")
    node[path[-1]] = value


def _lists(node: Any) -> Any:
    """Dicts whose keys are the ints 0..n-1 were lists (DCP keys list items by int)."""
    if not isinstance(node, dict):
        return node
    items = {k: _lists(v) for k, v in node.items()}
    if items and all(type(k) is int for k in items) and sorted(items) == list(range(len(items))):
        return [items[i] for i in range(len(items))]
    return items
