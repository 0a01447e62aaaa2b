"""Structure-aware mutations of a real DCP checkpoint, for tests/test_fuzz_dcp.py and bench/fuzz_dcp.py.

A mutation works on what DCP wrote, not on random bytes only: ``.metadata`` is unpickled (it is
our own file, written by ``dcp.save`` a moment before) and its dataclasses are changed where a
hostile or damaged file would differ — sizes, offsets, lengths, paths, counts, chunk lists, key
paths, dtypes, field types, many entries naming one blob — then pickled again; raw byte flips,
truncations and insertions of the pickle and of the shard file cover what the structure misses.

Randomness comes from a :class:`Chooser`, so hypothesis (the suite) and ``random.Random`` (the
long run in ``bench/``) drive the same mutations.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ckptctl.formats import dcp as sharded
from ckptctl.errors import CheckpointError
from ckptctl.ops.integrity import validate_file
from ckptctl.formats.reader import read_checkpoint

SHARD = "__0_0.distcp"
INTERESTING_INTS = (0, 1, -1, 2, 7, 255, 4096, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63))
INTERESTING_VALUES: tuple[Any, ...] = (None, 0, -1, 1.5, float("nan"), "x", "", b"x", (), [], {}, 10**100, True, ("a", 1))
# How many extra entries many_refs adds: the suite keeps to cheap counts (each costs the pure-Python
# unpickler ~0.1 ms of .metadata); bench/fuzz_dcp.py adds counts beyond the DCP value budget.
MANY_REFS: tuple[int, ...] = (1, 10, 300)
PATHS = ("..", "../x.distcp", "/etc/passwd", "a/b", "missing.distcp", "", ".", ".metadata", "__0_0.distcp\0", SHARD)


class Chooser(Protocol):
    """Where a mutation's choices come from."""

    def integer(self, low: int, high: int) -> int: ...

    def pick(self, options: Sequence[Any]) -> Any: ...


@dataclasses.dataclass
class Case:
    """A checkpoint to write: the metadata object (or raw bytes once byte-mutated) and the shard bytes."""

    metadata: Any
    shard: bytearray
    metadata_bytes: bytes | None = None
    applied: list[str] = dataclasses.field(default_factory=list)

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        data = self.metadata_bytes if self.metadata_bytes is not None else pickle.dumps(self.metadata)
        (directory / ".metadata").write_bytes(data)
        (directory / SHARD).write_bytes(bytes(self.shard))
        return directory


def load_case(template: Path) -> Case:
    """A fresh, mutable copy of the checkpoint DCP wrote in ``template``."""
    return Case(pickle.loads((template / ".metadata").read_bytes()), bytearray((template / SHARD).read_bytes()))


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # MetadataIndex is a frozen dataclass


def _an_int(c: Chooser) -> int:
    return c.pick(INTERESTING_INTS) if c.integer(0, 2) else c.integer(-5, 200_000)


def _storage(case: Case, c: Chooser) -> tuple[Any, Any]:
    items = list(case.metadata.storage_data.items())
    return items[c.integer(0, len(items) - 1)]


def _tensor(case: Case, c: Chooser) -> Any:
    tensors = [v for v in case.metadata.state_dict_metadata.values() if hasattr(v, "chunks")]
    return tensors[c.integer(0, len(tensors) - 1)]


def storage_range(case: Case, c: Chooser) -> None:
    _index, info = _storage(case, c)
    _set(info, c.pick(("offset", "length")), _an_int(c))


def storage_path(case: Case, c: Chooser) -> None:
    _index, info = _storage(case, c)
    _set(info, "relative_path", c.pick(PATHS))


def tensor_shape(case: Case, c: Chooser) -> None:
    item = _tensor(case, c)
    _set(item, "size", tuple(_an_int(c) for _ in range(c.pick((0, 1, 2, 3, 64, 65, 300)))))


def chunk_list(case: Case, c: Chooser) -> None:
    item = _tensor(case, c)
    chunks = list(item.chunks)
    how = c.integer(0, 3)
    if how == 0 and chunks:
        chunks = chunks * c.pick((2, 10, 1000, 20_000))  # one object referenced many times: cheap to unpickle
    elif how == 1:
        chunks = []
    elif chunks:
        chunk = copy.copy(chunks[0])
        _set(chunk, c.pick(("sizes", "offsets")), tuple(_an_int(c) for _ in range(c.integer(0, 4))))
        chunks[0] = chunk
    _set(item, "chunks", chunks)


def key_path(case: Case, c: Chooser) -> None:
    fqns = list(case.metadata.state_dict_metadata)
    fqn = fqns[c.integer(0, len(fqns) - 1)]
    depth = c.pick((0, 1, 2, 5, 70, 3000))
    key = c.pick(("k", 0, -1, 2**70, None, 1.5, ("t",), fqn))
    case.metadata.planner_data[fqn] = c.pick(((key,) * depth, [key] * depth, key))


def many_refs(case: Case, c: Chooser) -> None:
    """Extra value entries that all name one existing blob (the multiplication a budget must stop)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    values = [(i, s) for i, s in case.metadata.storage_data.items() if i.offset is None]
    if not values:
        return
    _index, info = values[c.integer(0, len(values) - 1)]
    for n in range(c.pick(MANY_REFS)):
        fqn = f"dup{n}"
        case.metadata.state_dict_metadata[fqn] = BytesStorageMetadata()
        case.metadata.storage_data[MetadataIndex(fqn)] = info
        case.metadata.planner_data[fqn] = (fqn,)


def dtype(case: Case, c: Chooser) -> None:
    import torch

    props = _tensor(case, c).properties
    _set(props, "dtype", c.pick((torch.float64, torch.uint8, torch.bool, torch.complex64, None, "float32", 3)))


def field_type(case: Case, c: Chooser) -> None:
    """Any field of any record (or the metadata's own dicts) replaced by a value of another type."""
    md = case.metadata
    choices: list[tuple[Any, str]] = [(md, name) for name in ("state_dict_metadata", "storage_data", "planner_data", "version")]
    index, info = _storage(case, c)
    item = _tensor(case, c)
    choices += [(index, n) for n in ("fqn", "offset", "index")] + [(info, n) for n in ("relative_path", "offset", "length")]
    choices += [(item, n) for n in ("properties", "size", "chunks")]
    target, name = choices[c.integer(0, len(choices) - 1)]
    _set(target, name, c.pick(INTERESTING_VALUES))


def drop_entry(case: Case, c: Chooser) -> None:
    table = c.pick(("state_dict_metadata", "storage_data"))
    entries = getattr(case.metadata, table)
    if entries:
        keys = list(entries)
        del entries[keys[c.integer(0, len(keys) - 1)]]


def metadata_bytes(case: Case, c: Chooser) -> None:
    """Raw damage to the pickle itself (after the structural changes): flip, cut or insert bytes."""
    data = bytearray(case.metadata_bytes if case.metadata_bytes is not None else pickle.dumps(case.metadata))
    at = c.integer(0, len(data) - 1)
    how = c.integer(0, 2)
    if how == 0:
        data[at] ^= 1 << c.integer(0, 7)
    elif how == 1:
        del data[at:]
    else:
        data[at:at] = bytes([c.integer(0, 255)]) * c.pick((1, 2, 8))
    case.metadata_bytes = bytes(data)


def shard_bytes(case: Case, c: Chooser) -> None:
    if not case.shard:
        return
    at = c.integer(0, len(case.shard) - 1)
    how = c.integer(0, 2)
    if how == 0:
        case.shard[at] ^= 1 << c.integer(0, 7)
    elif how == 1:
        del case.shard[at:]
    else:
        case.shard[at:at] = bytes(c.integer(1, 64))


STRUCTURAL: tuple[Callable[[Case, Chooser], None], ...] = (
    storage_range, storage_path, tensor_shape, chunk_list, key_path, many_refs, dtype, field_type, drop_entry, shard_bytes,
)


def mutate(case: Case, c: Chooser, count: int) -> Case:
    """``count`` structural mutations, then (sometimes) raw damage to the pickled ``.metadata``."""
    for _ in range(count):
        mutation = STRUCTURAL[c.integer(0, len(STRUCTURAL) - 1)]
        try:
            mutation(case, c)
        except (AttributeError, TypeError, ValueError, IndexError, KeyError):
            continue  # an earlier mutation changed the structure this one walks: skip it
        case.applied.append(mutation.__name__)
    if c.integer(0, 3) == 0:
        try:
            metadata_bytes(case, c)
            case.applied.append("metadata_bytes")
        except (pickle.PicklingError, TypeError, ValueError):
            pass
    return case


def read_everything(path: Path) -> list[str]:
    """Every read path of a DCP directory; the verdicts met (an exception of another type fails the test)."""
    verdicts = []
    for read in (read_checkpoint, lambda p: sharded.read_directory(p, all_values=False), sharded.chunk_problems):
        try:
            read(path)
            verdicts.append("ok")
        except CheckpointError as exc:
            verdicts.append(f"{exc.status}: {exc.reason}")
    result = validate_file(path)
    verdicts.append("valid" if result.valid else f"invalid: {result.problems[:1]}")
    return verdicts
