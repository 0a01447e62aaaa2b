"""Validate checkpoint files from outside the training process, at three levels, without running code.

- ``quick``: the container's structure and the safe (allowlisted) unpickle of ``data.pkl``, which
  also cross-checks every storage's byte count against its record.
- ``default``: also the CRC-32 of every record (``data.pkl``, tensor data, the small records),
  local headers and data descriptors against the central directory, the layout's required keys,
  and the step/epoch in the file against the file name.
- ``deep``: also ``torch.load(weights_only=True, mmap=True)`` and a NaN/Inf scan of every floating
  tensor. Never reached for a file the safe reader refused, so a hostile pickle never runs.

CRC-32 is streamed with ``os.preadv`` into one reused buffer per worker, so memory stays the same
for a 10 MB and a 500 MB file. Large records are cut into segments that ``jobs`` threads check in
parallel and the parts are joined with ISA-L's ``crc32_combine``. Per byte, validation does what
``cat`` does (a copy out of the page cache) plus a CRC, so it needs a second core to keep up with
``cat``: ``preadv`` releases the GIL, so with libdeflate's CRC (twice ISA-L's speed, but it holds
the GIL) one thread copies while the other checksums. Same polynomial and values as ``zlib.crc32``.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

from .bounded import bounded_repr
from .catalog import entry_for_file, scan
from .container import Container, Record, data_descriptor_problem, end_record_problems, open_container, sniff_format
from .errors import BadInputError, CheckpointError, UnsafeCheckpoint
from .metadata import summarize
from .naming import Kind, ParsedName, parse
from .reader import CheckpointFile, iter_tensors, read_checkpoint
from .sharded import chunk_problems, directory_sizes, looks_like_dcp, read_directory
from . import storage
from .storage import is_url

_crc32: Callable[..., int] = zlib.crc32  # ~2.6 GB/s on one core here
_crc32_combine: Callable[[int, int, int], int] | None = None
try:  # ISA-L: crc32_combine in C (0.4 us), and a CRC-32 of ~10 GB/s here
    from isal import isal_zlib

    _crc32, _crc32_combine = isal_zlib.crc32, isal_zlib.crc32_combine
except ImportError:  # pragma: no cover - isal is optional on some platforms
    pass
try:  # libdeflate: ~20 GB/s here (256-bit VPCLMULQDQ; ISA-L folds 128 bits), same values; holds the GIL
    import deflate

    _crc32 = deflate.crc32
except ImportError:  # pragma: no cover - deflate is optional on some platforms
    pass

QUICK = "quick"
DEFAULT = "default"
DEEP = "deep"
LEVELS = (QUICK, DEFAULT, DEEP)

CHUNK_BYTES = 1 << 20  # one preadv; small enough to stay in the CPU cache for the CRC that follows
# The unit of parallel work inside one record. While one thread checks the last segment of a file
# the others wait (up to one segment of work per file): splitting bench/bench_validate.py's files
# between two threads, that wait is 4.5% of their time with 32 MiB segments and none with 8 MiB.
# But smaller segments interleave the threads' reads of one file more finely, and from a cold page
# cache 8 MiB segments read ~13% slower than 32 MiB (1.13 against 1.30 GB/s, median of 6 here).
SEGMENT_BYTES = 32 << 20
NAN_SCAN_ELEMENTS = 1 << 22  # elements per NaN/Inf chunk: bounds the temporary boolean tensors
REQUIRED_KEYS = ("step", "epoch", "model")
PICKLE_CRC_MISMATCH = "record data.pkl: CRC mismatch"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")

Progress = Callable[[int], None]  # bytes just checked; may be called from worker threads


@dataclass
class FileResult:
    """The verdict for one file: ``valid`` when nothing in ``problems``; ``notes`` never invalidate."""

    path: Path
    level: str
    size_bytes: int = 0
    format: str | None = None
    checksums: bool | None = None  # None: not checked (quick level, unreadable container)
    unsafe: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records_checked: int = 0
    bytes_checked: int = 0

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        """valid / invalid / unsafe (a refused pickle is reported as its own status)."""
        if self.unsafe:
            return "unsafe"
        return "valid" if self.valid else "invalid"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "valid": self.valid,
            "status": self.status,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "level": self.level,
            "format": self.format,
            "checksums": self.checksums,
            "size_bytes": self.size_bytes,
            "records_checked": self.records_checked,
            "bytes_checked": self.bytes_checked,
        }


@dataclass
class Report:
    """Every file's verdict, in the order given (directories in catalog order)."""

    level: str
    results: list[FileResult]
    skipped: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def valid(self) -> int:
        return sum(r.valid for r in self.results)

    @property
    def invalid(self) -> int:
        return len(self.results) - self.valid

    @property
    def bytes_checked(self) -> int:
        return sum(r.bytes_checked for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "results": [r.to_json() for r in self.results],
            "valid": self.valid,
            "invalid": self.invalid,
            "level": self.level,
            "skipped": [str(p) for p in self.skipped],
            "bytes_checked": self.bytes_checked,
            "seconds": round(self.seconds, 3),
        }


# ----------------------------------------------------------------------------------------- targets


def collect_targets(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """Files to validate and files skipped. A directory contributes its checkpoint-named files
    and other files with a checkpoint suffix; partial writes (``*.tmp``) and foreign files are
    skipped. Missing paths and directories with nothing to check are bad input (exit 2).
    """
    targets: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        if is_url(raw):
            _collect_remote(str(raw), targets, skipped)
            continue
        path = Path(raw)
        if path.is_dir() and looks_like_dcp(path):  # one sharded checkpoint, named by the user
            targets.append(path)
        elif path.is_dir():
            entries = scan(path)
            chosen = [e.path for e in entries if _worth_checking(e.parsed)]
            if not chosen:
                raise BadInputError(f"no checkpoints in {path} (no file matches the checkpoint names)")
            targets += chosen
            skipped += [e.path for e in entries if not _worth_checking(e.parsed)]
        else:
            targets.append(entry_for_file(path).path)  # raises BadInputError for missing/unreadable
    return targets, skipped


def _worth_checking(parsed: ParsedName) -> bool:
    return parsed.is_checkpoint or (parsed.kind is Kind.OTHER and parsed.name.endswith(CHECKPOINT_SUFFIXES))


# ------------------------------------------------------------------------------------- validation


def validate_paths(
    paths: Iterable[str | os.PathLike[str]], level: str = DEFAULT, *, jobs: int = 1, progress: Progress | None = None
) -> Report:
    """Validate every file named or contained in ``paths``; see the module docstring for levels."""
    _check_level(level)
    started = time.perf_counter()
    targets, skipped = collect_targets(paths)
    results = [validate_file(path, level, jobs=jobs, progress=progress) for path in targets]
    return Report(level, results, skipped, time.perf_counter() - started)


def planned_bytes(paths: Iterable[Path], level: str) -> int:
    """How many bytes a run will read (for a progress bar): the file sizes, except at ``quick``."""
    if level == QUICK:
        return 0
    total = 0
    for path in paths:
        try:
            total += (path.size or 0) if is_url(path) else path.stat().st_size  # type: ignore[attr-defined]
        except OSError:
            continue
    return total


def validate_file(path: str | os.PathLike[str], level: str = DEFAULT, *, jobs: int = 1,
                  progress: Progress | None = None) -> FileResult:  # fmt: skip
    """One file's verdict. Never raises for a damaged or hostile file: every finding is a problem."""
    _check_level(level)
    if is_url(path):
        result = _remote_result(path, level)  # type: ignore[arg-type]
    else:
        result = FileResult(Path(path), level)
        if result.path.is_dir():
            return _validate_directory(result)
        try:
            result.size_bytes = result.path.stat().st_size
        except OSError as exc:
            result.problems.append(f"cannot open: {exc.strerror or exc}")
            return result
    if level != QUICK:
        _check_container(result, jobs, progress)
        if any(p.startswith(PICKLE_CRC_MISMATCH) for p in result.problems):
            # Damaged pickle bytes are not unpickled at all: a flipped memo index alone can make
            # the C unpickler allocate gigabytes before it fails.
            result.notes.append("data.pkl fails its CRC-32: not unpickled")
            return result
    ckpt = _safe_read(result)
    if ckpt is None:
        return result
    if level == QUICK:
        return result
    _check_layout(result, ckpt)
    if level == DEEP and result.valid:
        _check_values(result, ckpt)
    return result


def _validate_directory(result: FileResult) -> FileResult:
    """A sharded (DCP) checkpoint: ``.metadata`` safely read, every shard file present and long
    enough, every tensor's chunks adding up to the tensor. DCP records no checksums, so no level
    verifies the shard bytes themselves (noted)."""
    result.size_bytes = directory_sizes(result.path)[0]
    ckpt = _safe_read(result, read_directory)
    if ckpt is None:
        return result
    try:
        for problem in chunk_problems(result.path):
            _add(result, problem)
    except CheckpointError as exc:
        _add(result, exc.reason)
    result.notes.append("sharded (DCP) checkpoint: no checksums to verify")
    if result.level != QUICK:
        _check_layout(result, ckpt)
    return result


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise BadInputError(f"unknown validation level {level!r} (choose from {', '.join(LEVELS)})")


def _safe_read(result: FileResult, reader: Callable[[Path], CheckpointFile] = read_checkpoint) -> CheckpointFile | None:
    """The allowlisted unpickle (and storage-size cross-check); its refusal is the verdict."""
    try:
        ckpt = reader(result.path)
    except UnsafeCheckpoint as exc:
        result.unsafe = True
        _add(result, f"unsafe: {exc.reason}")
        return None
    except CheckpointError as exc:
        _add(result, exc.reason)
        return None
    result.format = ckpt.format
    if ckpt.format == "legacy":
        result.notes.append("legacy format (before torch 1.6): no checksums to verify")
    return ckpt


def _add(result: FileResult, problem: str) -> None:
    if problem not in result.problems:
        result.problems.append(problem)


def _check_container(result: FileResult, jobs: int, progress: Progress | None) -> None:
    """Headers and CRC-32 of every record of a zip checkpoint (nothing to do for legacy files)."""
    try:
        with _open(result.path) as fh:
            if sniff_format(fh) != "zip":
                return
            container = open_container(result.path, fh)
            result.format = "zip"
            _prefetch_descriptors(fh, container)
            for problem in end_record_problems(fh, container.file_size):
                _add(result, problem)
            for record in container.records.values():
                for problem in _header_problems(fh, record):
                    _add(result, problem)
            _check_crcs(result, fh, container, jobs, progress)
    except CheckpointError as exc:  # the safe reader reports the same structural error next
        _add(result, exc.reason)
    except OSError as exc:
        _add(result, f"read error: {exc.strerror or exc}")


def _header_problems(fh: BinaryIO, record: Record) -> list[str]:
    problems = []
    if record.header_mismatches:
        fields = ", ".join(record.header_mismatches)
        problems.append(f"record {record.key}: local header disagrees with the central directory ({fields})")
    descriptor = data_descriptor_problem(fh, record)
    if descriptor:
        problems.append(descriptor)
    return problems


def _check_crcs(result: FileResult, fh: BinaryIO, container: Container, jobs: int, progress: Progress | None) -> None:
    result.checksums = container.has_checksums
    if not container.has_checksums:
        result.notes.append("no checksums: written with torch's CRC-32 switched off; record data not verified")
        return
    records = list(container.records.values())
    if is_url(result.path):
        computed = crc_records_stream(fh, records, progress)
    else:
        computed = crc_records(fh.fileno(), records, jobs=jobs, progress=progress)
    for record in records:
        actual = computed[record.key]
        if actual is None:
            _add(result, f"truncated: record {record.key} is short")
        elif actual != record.crc32:
            _add(result, f"record {record.key}: CRC mismatch (stored {record.crc32:08x}, computed {actual:08x})")
    result.records_checked = len(records)
    result.bytes_checked = sum(r.size for r in records)


# --------------------------------------------------------------------------------------- CRC-32


@dataclass(frozen=True)
class _Segment:
    record: int  # index into the records list
    part: int
    offset: int
    size: int


def crc_records(fd: int, records: list[Record], *, jobs: int = 1, progress: Progress | None = None) -> dict[str, int | None]:
    """CRC-32 of each record's bytes by key (None when the file is shorter than the record).

    ``jobs`` > 1 checks segments of large records in parallel threads, each with its own buffer.
    With libdeflate the threads' CRCs take turns on the GIL (~20 GB/s together) while their reads
    run in parallel, which is what two cores need; ISA-L's CRC scales past two threads.
    """
    segment = SEGMENT_BYTES if _crc32_combine is not None else None
    segments = list(_segments(records, segment))
    parts: dict[tuple[int, int], int | None] = {}
    workers = max(1, min(jobs, len(segments)))
    if workers == 1:
        _crc_worker(fd, iter(segments), threading.Lock(), parts, progress)
    else:
        shared = iter(segments)
        lock = threading.Lock()
        threads = [threading.Thread(target=_crc_worker, args=(fd, shared, lock, parts, progress), daemon=True)
                   for _ in range(workers)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {record.key: _join(parts, index, record) for index, record in enumerate(records)}


def _segments(records: list[Record], segment: int | None) -> Iterable[_Segment]:
    for index, record in enumerate(records):
        step = segment or max(record.size, 1)
        for part, start in enumerate(range(0, max(record.size, 1), step)):
            yield _Segment(index, part, record.data_offset + start, min(step, record.size - start))


def _crc_worker(fd: int, segments: Iterable[_Segment], lock: threading.Lock,
                parts: dict[tuple[int, int], int | None], progress: Progress | None) -> None:  # fmt: skip
    """Pull segments from the shared iterator until it is empty; one reused buffer per worker.

    The buffer is an anonymous mapping, so it is page-aligned: ``preadv`` from the page cache
    into a ``bytearray`` (16 bytes past a page boundary) measured 2.3 GB/s at page-aligned file
    offsets against 12 GB/s into an aligned buffer, at any offset.
    """
    with mmap.mmap(-1, CHUNK_BYTES) as buffer:
        view = memoryview(buffer)
        try:
            while True:
                with lock:
                    item = next(segments, None)  # type: ignore[call-overload]
                if item is None:
                    return
                parts[(item.record, item.part)] = crc_range(fd, item.offset, item.size, view, progress)
        finally:
            view.release()


def crc_range(fd: int, offset: int, size: int, view: memoryview, progress: Progress | None = None) -> int | None:
    """CRC-32 of ``size`` bytes at ``offset``, read through ``view``; None if the file ends first."""
    crc = 0
    end = offset + size
    while offset < end:
        want = min(len(view), end - offset)
        got = os.preadv(fd, [view[:want]], offset)
        if got <= 0:
            return None
        crc = _crc32(view[:got], crc)
        offset += got
        if progress is not None:
            progress(got)
    return crc & 0xFFFFFFFF


def _join(parts: dict[tuple[int, int], int | None], index: int, record: Record) -> int | None:
    """Combine the segment CRCs of one record in order (``crc32_combine``)."""
    crc: int | None = None
    for part in itertools.count():
        if (index, part) not in parts:
            return crc if crc is not None else 0
        value = parts[(index, part)]
        if value is None:
            return None
        if crc is None:
            crc = value
        else:
            length = min(SEGMENT_BYTES, record.size - part * SEGMENT_BYTES)
            crc = _crc32_combine(crc, value, length) & 0xFFFFFFFF  # type: ignore[misc]
    return crc  # pragma: no cover - the loop always returns


# ---------------------------------------------------------------------------------- layout checks


def _check_layout(result: FileResult, ckpt: CheckpointFile) -> None:
    """Required keys and step/epoch against the name; only for names of the layout."""
    parsed = parse(result.name, directory=ckpt.format == "dcp")
    if not parsed.is_checkpoint:
        result.notes.append("not a layout name: required keys and name checks skipped")
        return
    if not isinstance(ckpt.root, dict):
        _add(result, f"not a checkpoint dict: the file holds a {type(ckpt.root).__name__}")
        return
    for key in REQUIRED_KEYS:
        if key not in ckpt.root:
            _add(result, f"missing required key {key!r}")
    meta = summarize(ckpt)
    for what, in_name, in_file in (("step", parsed.step, meta.step), ("epoch", parsed.epoch, meta.epoch)):
        if in_name is not None and what in ckpt.root and in_file != in_name:
            shown = in_file if in_file is not None else bounded_repr(ckpt.root.get(what), 60)
            _add(result, f"{what} {shown} in file, {in_name} in name")


# ---------------------------------------------------------------------------------- deep (values)


def _check_values(result: FileResult, ckpt: CheckpointFile) -> None:
    """``torch.load(weights_only=True)`` (memory-mapped for zip files), then NaN/Inf per tensor."""
    import torch

    from .rng import safe_globals

    try:
        with safe_globals():
            root = torch.load(result.path, map_location="cpu", weights_only=True, mmap=ckpt.format == "zip")
    except Exception as exc:  # torch reports damage as many exception types
        _add(result, f"torch.load failed: {_first_line(exc)}")
        return
    for name, tensor in iter_tensors(root, torch.is_tensor):
        nan, inf = count_non_finite(tensor)
        if nan or inf:
            _add(result, f"tensor {name}: {nan} NaN, {inf} Inf")


def count_non_finite(tensor: Any) -> tuple[int, int]:
    """(NaN count, ±Inf count) of a floating or complex tensor, in bounded chunks; (0, 0) otherwise."""
    import torch

    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return 0, 0
    flat = tensor.detach().reshape(-1)
    nan = inf = 0
    for start in range(0, flat.numel(), NAN_SCAN_ELEMENTS):
        chunk = flat[start : start + NAN_SCAN_ELEMENTS]
        if chunk.element_size() == 1:  # float8 kinds lack isnan/isinf on CPU
            chunk = chunk.float()
        nan += int(torch.isnan(chunk).sum())
        inf += int(torch.isinf(chunk).sum())
    return nan, inf


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------------------------- object storage


def _collect_remote(url: str, targets: list[Any], skipped: list[Any]) -> None:
    """A URL names one object or a prefix (every checkpoint below it, like a local directory).

    Sharded (DCP) checkpoints are not read from object storage: they are reported as skipped.
    """
    location = storage.location(url)
    if storage.stat(location).is_dir:
        entries = scan(location)
        wanted = [_worth_checking(e.parsed) and not e.is_directory for e in entries]
        if not any(wanted):
            raise BadInputError(f"no checkpoints in {location} (no file matches the checkpoint names)")
        targets += [e.path for e, want in zip(entries, wanted) if want]
        skipped += [e.path for e, want in zip(entries, wanted) if not want]
    else:
        targets.append(entry_for_file(location).path)


def _remote_result(path: str | storage.RemotePath, level: str) -> FileResult:
    """The verdict to fill for an object in an object store: the same checks as a local file run
    on it through ranged reads (the CRC pass streams every record once; ``quick`` reads only the
    zip directory, the local headers and ``data.pkl``). ``deep`` needs torch on a local file."""
    if level == DEEP:
        raise BadInputError(f"validate --deep is not supported for URLs ({path}): copy the checkpoint to a local path")
    location = storage.location(path)
    if location.size is None:
        location = storage.stat(location).path
    return FileResult(location, level, size_bytes=location.size or 0)  # type: ignore[arg-type]


def _prefetch_descriptors(fh: BinaryIO, container: Container) -> None:
    """On an object store's file, fetch every data descriptor at once (one round trip each otherwise)."""
    prefetch = getattr(fh, "prefetch", None)
    if prefetch is not None:
        prefetch([(r.data_offset + r.size, r.data_offset + r.size + 24) for r in container.records.values() if r.flags & 0x8])


def _open(path: Path) -> BinaryIO:
    """A local file, or an object through ranged reads (:func:`ckptctl.storage.open_object`)."""
    return storage.open_object(path) if is_url(path) else open(path, "rb")  # type: ignore[arg-type]


def crc_records_stream(fh: BinaryIO, records: list[Record], progress: Progress | None = None) -> dict[str, int | None]:
    """CRC-32 of each record, from one sequential pass over a file object in windows of
    :data:`ckptctl.storage.STREAM_BYTES` (None for a record the file ends inside).

    For objects in an object store (no descriptor for ``preadv``): a few large ranged reads for the
    whole file instead of one request per record; the small local headers between the records
    are read along. Same values as :func:`crc_records`.
    """
    ordered = sorted(records, key=lambda r: r.data_offset)
    crcs = {record.key: 0 for record in ordered}
    done = dict.fromkeys(crcs, 0)
    pos = ordered[0].data_offset if ordered else 0
    end = max((r.data_offset + r.size for r in ordered), default=pos)
    first = 0
    fh.seek(pos)
    while pos < end:
        window = memoryview(fh.read(min(storage.STREAM_BYTES, end - pos)))
        if not window:
            break
        while first < len(ordered) and ordered[first].data_offset + ordered[first].size <= pos:
            first += 1
        for record in itertools.islice(ordered, first, None):
            if record.data_offset >= pos + len(window):
                break
            lo, hi = max(record.data_offset, pos), min(record.data_offset + record.size, pos + len(window))
            if lo < hi:
                crcs[record.key] = _crc32(window[lo - pos : hi - pos], crcs[record.key])
                done[record.key] += hi - lo
                if progress is not None:
                    progress(hi - lo)
        pos += len(window)
    return {r.key: crcs[r.key] & 0xFFFFFFFF if done[r.key] == r.size else None for r in records}
