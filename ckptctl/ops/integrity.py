"""Validate checkpoint files from outside the training process, at three levels, without running code.

- ``quick``: the container's structure and the safe (allowlisted) unpickle of ``data.pkl``, which
  also cross-checks every storage's byte count against its record.
- ``default``: also the CRC-32 of every record (``data.pkl``, tensor data, the small records),
  local headers and data descriptors against the central directory, the layout's usual keys,
  and the step/epoch in the file against the file name.
- ``deep``: also ``torch.load(weights_only=True, mmap=True)`` and a NaN/Inf scan of every floating
  tensor. Never reached for a file the safe reader refused, so a hostile pickle never runs.

Two verdicts per file, because they call for different actions: the *integrity* ``status`` (is the
file intact and safe to read? valid / invalid (damaged or unreadable) / unsafe / inaccessible) and
content ``findings`` (a usual key missing, step/epoch disagreeing with the name, NaN/Inf at
``deep``). ``restore`` replaces only what fails integrity; a finding never makes a file "invalid"
(the manager writes whatever state dict it is given, so a checkpoint without ``epoch`` is intact).
A file that cannot be opened for lack of permission is ``inaccessible``: not damage, so nothing
replaces it. :func:`validate_targets` reads each inode once: hard links (``latest.pt``,
``rolling_step_N.pt``, ``rolling_last_backup.pt`` of one save) share the first path's verdict.

CRC-32 is streamed with ``os.preadv`` into one reused buffer per worker, so memory stays the same
for a 10 MB and a 500 MB file. Large records are cut into segments that ``jobs`` threads check in
parallel and the parts are joined with ISA-L's ``crc32_combine``. Per byte, validation does what
``cat`` does (a copy out of the page cache) plus a CRC, so it needs a second core to keep up with
``cat``: ``preadv`` releases the GIL, so with libdeflate's CRC (twice ISA-L's speed, but it holds
the GIL) one thread copies while the other checksums. Same polynomial and values as ``zlib.crc32``.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from dataclasses import dataclass, field
import stat as stat_module
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

from ..formats.bounded import bounded_repr
from ..layouts.base import Unit
from ..layouts.catalog import entry_for_file, layout_of, scan, unit_at
from ..formats.container import (Container, Record, data_descriptor_problem, end_record_problems, open_container,
                        sniff_format)  # fmt: skip
from ..errors import BadInputError, CheckpointError, UnsafeCheckpoint
from ..wording import plural
from .usage import is_own
from ..layouts.metadata import summarize
from ..layouts.naming import Kind, ParsedName, parse
from ..formats.reader import CheckpointFile, iter_tensors, read_checkpoint
from ..formats.safe_open import open_regular
from ..formats.dcp import chunk_problems, directory_sizes, looks_like_dcp, read_directory
from ..formats.crc import Progress, crc_records, crc_records_stream
from ..formats import storage
from ..formats.storage import is_url

QUICK = "quick"
DEFAULT = "default"
DEEP = "deep"
LEVELS = (QUICK, DEFAULT, DEEP)
# What a verdict rests on (the "checked" key of every --json status; docs/json.md): "metadata" is the
# safe unpickle only (list, inspect: bytes not verified), "structure" adds the container's structure
# (validate --quick), "crc" every record's CRC-32 (validate), "deep" also torch.load and NaN/Inf.
CHECKED = {QUICK: "structure", DEFAULT: "crc", DEEP: "deep"}
NAN_SCAN_ELEMENTS = 1 << 22  # elements per NaN/Inf chunk: bounds the temporary boolean tensors
USUAL_KEYS = ("step", "epoch", "model")  # what the manager's build_state writes; a missing one is a finding
REQUIRED_KEYS = USUAL_KEYS  # the old name: nothing is required of a checkpoint's content
PICKLE_CRC_MISMATCH = "record data.pkl: CRC mismatch"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pkl")
REMOTE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# Files checked by their own format (safetensors header, plain pickle, JSON), not as torch archives.
BY_FORMAT_SUFFIXES = (".safetensors", ".pkl", ".pickle", ".json")



@dataclass
class FileResult:
    """The verdicts for one file: integrity (``valid`` when nothing in ``problems``) and content
    ``findings``, which never invalidate; ``notes`` say what was (not) checked."""

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
    findings: list[str] = field(default_factory=list)  # content: a usual key missing, name mismatch, NaN/Inf
    inaccessible: bool = False  # the file could not be opened (permission): not damage
    finite: bool | None = None  # deep level: False when a floating tensor holds NaN/Inf; None: not scanned
    same_file_as: str | None = None  # a hard link of a file checked earlier in the run (not read again)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def valid(self) -> bool:
        """Integrity only: intact, safe and readable. Content findings do not count."""
        return not self.problems

    @property
    def status(self) -> str:
        """The integrity verdict: valid / invalid (damaged or unreadable) / unsafe / inaccessible."""
        if self.unsafe:
            return "unsafe"
        if self.inaccessible:
            return "inaccessible"
        return "valid" if self.valid else "invalid"

    @property
    def failed(self) -> bool:
        """What makes ``validate`` exit 1: damage, an unsafe pickle, or NaN/Inf found at ``deep``."""
        return self.status in ("invalid", "unsafe") or self.finite is False

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "valid": self.valid,
            "status": self.status,
            "checked": CHECKED.get(self.level, self.level),
            "problems": list(self.problems),
            "findings": list(self.findings),
            "notes": list(self.notes),
            "finite": self.finite,
            "same_file_as": self.same_file_as,
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
    units: list[dict[str, Any]] = field(default_factory=list)  # per layout checkpoint: see unit_summary

    @property
    def valid(self) -> int:
        return sum(r.valid for r in self.results)

    @property
    def invalid(self) -> int:
        """Files that are not intact, inaccessible ones included (see :attr:`inaccessible`)."""
        return len(self.results) - self.valid

    @property
    def inaccessible(self) -> int:
        return sum(r.inaccessible for r in self.results)

    @property
    def with_findings(self) -> int:
        return sum(bool(r.findings) for r in self.results)

    @property
    def bytes_checked(self) -> int:
        return sum(r.bytes_checked for r in self.results)

    @property
    def exit_code(self) -> int:
        """1 when any file is damaged or unsafe or (``deep``) holds NaN/Inf; else 2 when any file
        could not be read (permission: the check is incomplete); else 0, findings or not."""
        if any(r.failed for r in self.results):
            return 1
        return 2 if self.inaccessible else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "results": [r.to_json() for r in self.results],
            "valid": self.valid,
            "invalid": self.invalid,
            "inaccessible": self.inaccessible,
            "with_findings": self.with_findings,
            "level": self.level,
            "checked": CHECKED.get(self.level, self.level),
            "skipped": [str(p) for p in self.skipped],
            "bytes_checked": self.bytes_checked,
            "seconds": round(self.seconds, 3),
            "units": list(self.units),
            "layout": next((u["layout"] for u in self.units), None),
        }


# ----------------------------------------------------------------------------------------- targets


def collect_targets(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Any], list[Path]]:
    """Things to validate and files skipped. A directory contributes its checkpoint-named files
    and other files with a checkpoint suffix (``.safetensors`` and ``.pkl`` included, checked by
    their format); partial writes (``*.tmp``) and foreign files are skipped. A directory of
    another framework's layout contributes its checkpoints as :class:`~ckptctl.layouts.base.Unit`
    targets (every file of each) and a dangling or looping pointer as an ``invalid`` result; a
    checkpoint directory of such a layout (``run/checkpoint-500``) named alone is one Unit.
    Missing paths and directories with nothing to check are bad input (exit 2).
    """
    targets: list[Any] = []
    skipped: list[Path] = []
    for raw in paths:
        if is_url(raw):
            _collect_remote(str(raw), targets, skipped)
            continue
        path = Path(raw)
        unit = unit_at(path) if path.is_dir() else None
        if unit is not None:
            targets.append(unit.unit)
        elif path.is_dir() and looks_like_dcp(path):  # one sharded checkpoint, named by the user
            targets.append(path)
        elif path.is_dir():
            entries = scan(path, broken_links=True)  # a dangling latest.pt is damage, not nothing
            if layout_of(entries) is not None or any(e.pointer is not None for e in entries):
                targets += _layout_targets(entries)
                if not targets:
                    raise BadInputError(f"no checkpoints in {path} (no file matches the checkpoint names)")
                continue
            chosen = [e.path for e in entries if _worth_checking(e.parsed)]
            if not chosen:
                raise BadInputError(f"no checkpoints in {path} (no file matches the checkpoint names)")
            targets += chosen
            skipped += [e.path for e in entries if not _worth_checking(e.parsed) and not is_own(e)]  # the lock, the demo marker: the tool's own
        else:
            targets.append(entry_for_file(path).path)  # raises BadInputError for missing/unreadable
    return targets, skipped


def _layout_targets(entries: list[Any]) -> list[Any]:
    """The units of a layout's directory, and its broken pointers as verdicts of their own."""
    targets: list[Any] = []
    for entry in entries:
        if entry.unit is not None:
            targets.append(entry.unit)
        elif entry.pointer is not None and entry.broken is not None:
            result = FileResult(entry.path, DEFAULT)
            detail = entry.pointer.detail or f"{entry.broken} pointer to {entry.link}"
            _add(result, f"{entry.broken} pointer: {detail}" if not detail.startswith(entry.broken) else detail)
            targets.append(result)
        elif entry.broken is not None:  # a dead link under ckptctl's name (catalog._stray_broken_links)
            result = FileResult(entry.path, DEFAULT)
            _add(result, f"{entry.broken} symlink to {entry.link}")
            targets.append(result)
    return targets


def _worth_checking(parsed: ParsedName, *, remote: bool = False) -> bool:
    """A checkpoint name, or a foreign file with a checkpoint suffix. Objects in a store are read
    as torch archives only (no ``.safetensors``/``.pkl`` reader over ranged reads): skipped there."""
    suffixes = REMOTE_SUFFIXES if remote else CHECKPOINT_SUFFIXES
    return parsed.is_checkpoint or (parsed.kind is Kind.OTHER and parsed.name.endswith(suffixes))


# ------------------------------------------------------------------------------------- validation


def validate_paths(
    paths: Iterable[str | os.PathLike[str]], level: str = DEFAULT, *, jobs: int = 1, progress: Progress | None = None
) -> Report:
    """Validate every file named or contained in ``paths``; see the module docstring for levels."""
    _check_level(level)
    started = time.perf_counter()
    targets, skipped = collect_targets(paths)
    results = validate_targets(targets, level, jobs=jobs, progress=progress)
    return Report(level, results, skipped, time.perf_counter() - started)


def planned_bytes(paths: Iterable[Any], level: str) -> int:
    """How many bytes a run will read (the progress total, known before the first read): the file
    sizes, each inode once; twice at ``deep`` (the CRC pass, then the values: ``torch.load`` and the
    NaN/Inf scan); none at ``quick``. :func:`validate_targets` reports exactly this many."""
    return sum(_planned_per_target(list(paths), level))


def _planned_per_target(targets: list[Any], level: str) -> list[int]:
    """:func:`planned_bytes` target by target (an inode counted at its first target only)."""
    passes = {QUICK: 0, DEFAULT: 1, DEEP: 2}[level]
    seen: set[tuple[int, int]] = set()
    planned = []
    for target in targets:
        total = 0
        for path in _files_of([target]) if passes else ():
            try:
                if is_url(path):
                    total += path.size or 0  # type: ignore[attr-defined]
                    continue
                info = path.stat()
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
        planned.append(total * passes)
    return planned


class _Budget:
    """One target's share of the progress total: bytes reported by its readers are passed on up to
    ``planned`` (a file that changed size, or read twice, never overshoots), and :meth:`close` reports
    what is left (bytes not read: a skipped or failed check), so the run ends exactly at the total
    and the count never goes back. Called from CRC worker threads, hence the lock."""

    def __init__(self, progress: Progress, planned: int):
        import threading

        self.progress, self.left = progress, planned
        self.lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        with self.lock:
            nbytes = min(nbytes, self.left)
            self.left -= nbytes
        if nbytes > 0:
            self.progress(nbytes)

    def close(self) -> None:
        self(self.left)


def _files_of(targets: Iterable[Any]) -> Iterable[Path]:
    for target in targets:
        if isinstance(target, Unit):
            yield from (Path(f.path) for f in target.files)
            if not target.files and not target.is_directory:
                yield Path(target.path)
        elif not isinstance(target, FileResult):
            yield target


def validate_targets(paths: Iterable[Any], level: str = DEFAULT, *, jobs: int = 1, progress: Progress | None = None,
                     unit_summaries: list[dict[str, Any]] | None = None) -> list[FileResult]:  # fmt: skip
    """One verdict per path, in order, reading each inode once.

    A later path naming a file already checked (a hard link or a symlink to it, same st_dev and
    st_ino) gets that file's integrity verdict, noted as ``same file as <first>``; only its name
    checks (step/epoch against *its* name) run again, on the pickle already read.

    A :class:`~ckptctl.layouts.base.Unit` among the targets contributes one verdict per file (see
    :func:`validate_unit`) and, into ``unit_summaries``, its :func:`unit_summary`; a
    :class:`FileResult` (a broken pointer found while collecting) is passed through.
    """
    _check_level(level)
    paths = list(paths)
    budgets = _planned_per_target(paths, level) if progress is not None else [0] * len(paths)
    first: dict[tuple[int, int], tuple[FileResult, CheckpointFile | None]] = {}
    results: list[FileResult] = []
    for path, planned in zip(paths, budgets):
        budget = _Budget(progress, planned) if progress is not None else None
        _validate_target(path, level, jobs, budget, first, results, unit_summaries)
        if budget is not None:
            budget.close()
    return results


def _validate_target(path: Any, level: str, jobs: int, progress: Progress | None,
                     first: dict[tuple[int, int], tuple[FileResult, CheckpointFile | None]],
                     results: list[FileResult], unit_summaries: list[dict[str, Any]] | None) -> None:  # fmt: skip
    """One target of :func:`validate_targets` into ``results``."""
    if isinstance(path, FileResult):
        results.append(path)
        return
    if isinstance(path, Unit):
        unit_results = validate_unit(path, level, jobs=jobs, progress=progress)
        results += unit_results
        if unit_summaries is not None:
            unit_summaries.append(unit_summary(path, unit_results))
        return
    key = _inode(path)
    if key is not None and key in first:
        base, ckpt = first[key]
        result = _same_file(base, Path(path))  # type: ignore[arg-type]
    elif _by_format(path):
        result, ckpt = validate_unit_file(path, level, jobs=jobs, progress=progress), None
    else:
        result, ckpt = _check_file(path, level, jobs, progress)
        if key is not None:
            first[key] = (dataclasses.replace(result, problems=list(result.problems), notes=list(result.notes),
                                              findings=list(result.findings)), ckpt)  # fmt: skip
    if ckpt is not None and level != QUICK:
        _check_layout(result, ckpt)
    results.append(result)


def validate_file(path: str | os.PathLike[str], level: str = DEFAULT, *, jobs: int = 1,
                  progress: Progress | None = None) -> FileResult:  # fmt: skip
    """One file's verdict. Never raises for a damaged or hostile file: every finding is a problem."""
    return validate_targets([path], level, jobs=jobs, progress=progress)[0]


def _by_format(path: Any) -> bool:
    """A local file whose name says it is not a torch archive to begin with (``model.safetensors``)."""
    return not is_url(path) and Path(path).name.lower().endswith(BY_FORMAT_SUFFIXES) and not Path(path).is_dir()


def _inode(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a local regular file (symlinks followed); None for anything else."""
    if is_url(path):
        return None
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino) if stat_module.S_ISREG(info.st_mode) else None


def _same_file(base: FileResult, path: Path) -> FileResult:
    """The verdict of ``base`` for another name of the same inode, not read again."""
    return dataclasses.replace(
        base, path=path, problems=list(base.problems), findings=list(base.findings),
        notes=[f"same file as {base.name} (one inode, checked once)", *base.notes],
        same_file_as=base.name, bytes_checked=0,
    )  # fmt: skip


def _check_file(path: str | os.PathLike[str], level: str, jobs: int,
                progress: Progress | None) -> tuple[FileResult, CheckpointFile | None]:  # fmt: skip
    """Integrity (and, at ``deep``, values) of one file; the name checks are the caller's."""
    if is_url(path):
        result = _remote_result(path, level)  # type: ignore[arg-type]
    else:
        result = FileResult(Path(path), level)
        if result.path.is_dir():
            return _validate_directory(result), None
        if not _opens(result):
            return result, None
    if level != QUICK:
        _check_container(result, jobs, progress)
        if any(p.startswith(PICKLE_CRC_MISMATCH) for p in result.problems):
            # Damaged pickle bytes are not unpickled at all: a flipped memo index alone can make
            # the C unpickler allocate gigabytes before it fails.
            result.notes.append("data.pkl fails its CRC-32: not unpickled")
            return result, None
    ckpt = _safe_read(result)
    if ckpt is not None and level == DEEP and result.valid:
        _check_values(result, ckpt, progress)
    return result, ckpt


def _opens(result: FileResult) -> bool:
    """Stat and open the file once, so that a permission problem is reported as exactly that
    (``inaccessible``, one line) and a looping symlink as damage, before any reader tries it."""
    try:
        result.size_bytes = result.path.stat().st_size
        open_regular(result.path).close()
    except CheckpointError as exc:  # a FIFO, device or directory where a file should be
        _add(result, exc.reason)
        return False
    except PermissionError:
        result.inaccessible = True
        _add(result, "permission denied: the file cannot be opened for reading (not damage)")
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _add(result, "a symlink loop: the name points at itself through links")
        elif exc.errno == errno.ENOENT and result.path.is_symlink():
            _add(result, f"a dangling symlink to {os.readlink(result.path)}: nothing behind it")
        else:
            _add(result, f"cannot open: {exc.strerror or exc}")
        return False
    return True


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


def _safe_read(result: FileResult, reader: Callable[[Path], CheckpointFile] | None = None) -> CheckpointFile | None:
    """The allowlisted unpickle (and storage-size cross-check); its refusal is the verdict."""
    try:
        ckpt = (reader or read_checkpoint)(result.path)
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
    except UnsafeCheckpoint:  # an ambiguous archive: the safe reader gives the verdict next, no CRC work
        pass
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


# ---------------------------------------------------------------------------------- layout checks


def _check_layout(result: FileResult, ckpt: CheckpointFile) -> None:
    """Content findings for names of the layout: a usual key missing, step/epoch against the name.

    Findings, not problems: the manager saves whatever dict it is given (no ``epoch``, no
    ``optimizer``...), and such a file is intact. Run per name, so each hard link gets its own.
    """
    parsed = parse(result.name, directory=ckpt.format == "dcp")
    if not parsed.is_checkpoint:
        result.notes.append("not a layout name: usual keys and name checks skipped")
        return
    if not isinstance(ckpt.root, dict):
        _find(result, f"not a checkpoint dict: the file holds a {type(ckpt.root).__name__}")
        return
    for key in USUAL_KEYS:
        if key not in ckpt.root:
            _find(result, f"missing key {key!r}")
    meta = summarize(ckpt)
    for what, in_name, in_file in (("step", parsed.step, meta.step), ("epoch", parsed.epoch, meta.epoch)):
        if in_name is not None and what in ckpt.root and in_file != in_name:
            shown = in_file if in_file is not None else bounded_repr(ckpt.root.get(what), 60)
            _find(result, f"{what} {shown} in file, {in_name} in name")


def _find(result: FileResult, finding: str) -> None:
    if finding not in result.findings:
        result.findings.append(finding)


# ---------------------------------------------------------------------------------- deep (values)


BOOKKEEPING_KEYS = ("callbacks",)  # top-level keys whose tensors are not model/optimizer values


def _check_values(result: FileResult, ckpt: CheckpointFile, progress: Progress | None = None) -> None:
    """``torch.load(weights_only=True)`` (memory-mapped for zip files), then NaN/Inf per tensor.

    The model's and the optimizer's tensors (everything but :data:`BOOKKEEPING_KEYS`): Lightning
    keeps ``kth_value = tensor(inf)`` in its ``callbacks`` state on purpose (the top-k is not full
    yet), and ``EarlyStopping`` a ``best_score`` of ``inf``; those are not damaged values. Known
    framework classes (``TrainingArguments``, DeepSpeed's ZeRO state) load as the same inert
    records the safe reader builds (:func:`ckptctl.formats.torch_load.safe_globals`).

    ``progress(n)`` follows the bytes as they are read. A zip file is memory-mapped: ``torch.load``
    reads only ``data.pkl`` (milliseconds) and the storages' bytes come off the disk as the scan
    touches them, so each scanned chunk is reported. A legacy file cannot be mapped and is read
    whole by ``torch.load``, through a :class:`~ckptctl.formats.progress_io.ProgressReader`.
    """
    import torch

    from ..formats.torch_load import safe_globals

    mmap = ckpt.format == "zip"
    try:
        with safe_globals():
            if mmap or progress is None:
                root = torch.load(result.path, map_location="cpu", weights_only=True, mmap=mmap)
            else:
                from ..formats.progress_io import ProgressReader

                with open_regular(result.path) as fh:
                    root = torch.load(ProgressReader(fh, progress), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports damage as many exception types
        _add(result, f"torch.load failed: {_first_line(exc)}")
        return
    result.finite = True
    scanned = progress if mmap else None
    for name, tensor in _value_tensors(root, torch.is_tensor):
        nan, inf = count_non_finite(tensor, scanned)
        if nan or inf:
            result.finite = False  # the file is intact; its values are not (validate exits 1)
            _find(result, f"tensor {name}: {nan} NaN, {inf} Inf")


def _value_tensors(root: Any, is_tensor: Callable[[Any], bool]) -> Iterable[tuple[str, Any]]:
    """Every tensor of ``root`` with its dotted name, except those under :data:`BOOKKEEPING_KEYS`."""
    if not isinstance(root, dict):
        yield from iter_tensors(root, is_tensor)
        return
    for key, value in root.items():
        if type(key) is str and key in BOOKKEEPING_KEYS:
            continue
        prefix = key if type(key) is str else bounded_repr(key, 200)
        for name, tensor in iter_tensors(value, is_tensor):
            yield (f"{prefix}.{name}" if name else prefix), tensor


def count_non_finite(tensor: Any, progress: Progress | None = None) -> tuple[int, int]:
    """(NaN count, ±Inf count) of a floating or complex tensor, in bounded chunks; (0, 0) otherwise.
    ``progress(n)`` gets each scanned chunk's bytes (nothing for a tensor that is not scanned)."""
    import torch

    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return 0, 0
    flat = tensor.detach().reshape(-1)
    nan = inf = 0
    for start in range(0, flat.numel(), NAN_SCAN_ELEMENTS):
        chunk = flat[start : start + NAN_SCAN_ELEMENTS]
        nbytes = chunk.numel() * chunk.element_size()
        if chunk.element_size() == 1:  # float8 kinds lack isnan/isinf on CPU
            chunk = chunk.float()
        nan += int(torch.isnan(chunk).sum())
        inf += int(torch.isinf(chunk).sum())
        if progress is not None:
            progress(nbytes)
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
        wanted = [_worth_checking(e.parsed, remote=True) and not e.is_directory for e in entries]
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
    """A local file, or an object through ranged reads (:func:`ckptctl.formats.storage.open_object`)."""
    return storage.open_object(path) if is_url(path) else open_regular(path)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ layout units
#
# A checkpoint of another framework's layout (layouts.base.Unit) is validated file by file, each
# by its format, never by its name's grammar: a torch zip or legacy file (``.pt``, ``.bin``, a
# ``.pkl`` written by torch.save) gets the checks above; a ``.safetensors`` file its bounded
# header and a data section that ends exactly at the end of the file; a sharded ``*.index.json``
# every shard it names; other JSON a bounded parse; a plain pickle the restricted unpickler's
# verdict (unsafe globals named, nothing run); a DCP directory unit the DCP checks. A required
# file the layout found missing is a result of its own (``missing: optimizer.pt``).

MAX_JSON_BYTES = 64 * 1024 * 1024  # a larger JSON file is not parsed (noted, not a problem)
MAX_PLAIN_PICKLE_BYTES = 512 * 1024 * 1024  # a larger plain pickle is scanned for globals only
MAX_INDEX_SHARDS = 100_000  # shard names one ``*.index.json`` may list


def validate_unit(unit: Any, level: str = DEFAULT, *, jobs: int = 1, progress: Progress | None = None) -> list[FileResult]:
    """One :class:`FileResult` per file of ``unit`` (a :class:`ckptctl.layouts.base.Unit`), plus one
    ``invalid`` result per required file the layout found missing (``missing: <name>``).

    A DCP directory unit is one result (the directory's DCP checks), like ``validate`` of a DCP
    directory today. Never raises for a damaged or hostile file.
    """
    _check_level(level)
    results: list[FileResult] = []
    directory = Path(unit.path)
    if unit.is_directory and (looks_like_dcp(directory) or _dcp_with_extras(directory)):
        result, _ckpt = _check_file(directory, level, jobs, progress)
        result.notes = [note for note in result.notes if not note.startswith("not a layout name")]
        results.append(result)
        inside = {directory / n for n in _dcp_names(directory)}
        paths = [Path(f.path) for f in unit.files if Path(f.path) not in inside and Path(f.path) != directory]
    else:
        paths = [Path(f.path) for f in unit.files] or ([] if unit.is_directory else [directory])
    first: dict[tuple[int, int], FileResult] = {}
    for path in paths:
        key = _inode(path)
        if key is not None and key in first:
            results.append(_same_file(first[key], path))
            continue
        result = validate_unit_file(path, level, jobs=jobs, progress=progress, content=_content_of(unit, path))
        if key is not None:
            first[key] = result
        results.append(result)
    base = directory if unit.is_directory else directory.parent
    for name in unit.missing:
        results.append(FileResult(base / name, level, problems=[f"missing: {name}"]))
    return results


def unit_verdict(unit: Any, level: str = DEFAULT) -> str | None:
    """None when ``unit`` is complete and every file intact and safe; else one line saying why
    not: ``incomplete: missing optimizer.pt`` or ``model.safetensors: truncated: ...``."""
    if not unit.complete:
        missing = ", ".join(unit.missing) if unit.missing else "a required file"
        return f"incomplete: missing {missing}"
    for result in validate_unit(unit, level):
        if result.failed or result.inaccessible:
            problem = result.problems[0] if result.problems else (result.findings[0] if result.findings else result.status)
            return f"{result.name}: {problem}"
    return None


def unit_summary(unit: Any, results: list[FileResult]) -> dict[str, Any]:
    """The per-unit line of ``validate --json``: name, layout, completeness, and the verdict."""
    failed = [r for r in results if r.failed]
    verdict = "valid"
    if any(r.unsafe for r in results):
        verdict = "unsafe"
    elif failed:
        verdict = "invalid"
    elif any(r.inaccessible for r in results):
        verdict = "inaccessible"
    return {
        "name": unit.name,
        "path": str(unit.path),
        "layout": unit.layout,
        "step": unit.step,
        "complete": unit.complete,
        "missing": list(unit.missing),
        "status": verdict,
        "files": len(results),
        "failed": [r.name for r in failed],
        "notes": list(unit.notes),
    }


def _dcp_with_extras(directory: Path) -> bool:
    """A layout's directory unit whose own top level is a DCP checkpoint plus files of its own
    (Lightning's FSDP sharded save: ``.metadata``, ``__0_0.distcp`` and ``meta.pt``): the DCP part
    is checked as one, each other file by its format."""
    from ..formats.dcp import METADATA_FILE

    return os.path.isfile(directory / METADATA_FILE) and not os.path.islink(directory / METADATA_FILE)


def _dcp_names(directory: Path) -> list[str]:
    from ..formats.dcp import METADATA_FILE, SHARD_SUFFIX

    try:
        return [n for n in os.listdir(directory) if n == METADATA_FILE or n.endswith(SHARD_SUFFIX)]
    except OSError:
        return []


def _content_of(unit: Any, path: Path) -> str:
    for unit_file in unit.files:
        if Path(unit_file.path) == path:
            return unit_file.content
    return "other"


def validate_unit_file(path: str | os.PathLike[str], level: str = DEFAULT, *, jobs: int = 1,
                       progress: Progress | None = None, content: str = "weights") -> FileResult:  # fmt: skip
    """One file of a unit, checked by its format (see the comment above :func:`validate_unit`).

    ``content`` is the unit's word for it (weights / optimizer / other): values (``deep``) are
    scanned in weights and optimizer files only, not in bookkeeping (RNG states, training args).
    """
    path = Path(path)
    result = FileResult(path, level)
    if path.is_dir():
        if looks_like_dcp(path):
            return _check_file(path, level, jobs, progress)[0]
        _add(result, "is a directory")
        return result
    if not _opens(result):
        return result
    name = path.name.lower()
    if name.endswith(".safetensors"):
        _check_safetensors(result)
    elif name.endswith(".index.json"):
        _check_index(result)
    elif name.endswith(".json"):
        _load_json(result)
    else:
        fmt = _sniff(path)
        if fmt == "zip" or (fmt == "legacy" and not _plain_pickle(path)):
            deep = level if level != DEEP or content != "other" else DEFAULT
            result, _ckpt = _check_file(path, deep, jobs, progress)
            result.level = level
            if deep != level:
                result.notes.append("deep: values not scanned (bookkeeping, not model or optimizer tensors)")
        elif fmt == "legacy":
            _check_plain_pickle(result)
        else:
            result.format = "other"
            result.notes.append("not a checkpoint format: present and readable, contents not checked")
    return result


def _sniff(path: Path) -> str:
    try:
        with open_regular(path) as fh:
            return sniff_format(fh)
    except (OSError, CheckpointError):
        return "unknown"


def _plain_pickle(path: Path) -> bool:
    """A pickle that is not torch's legacy format, whose stream starts with the pickled magic
    number (PROTO 2, LONG1 of 10 bytes: torch.save's ``_use_new_zipfile_serialization=False``)."""
    try:
        with open_regular(path) as fh:
            head = fh.read(4)
    except (OSError, CheckpointError):
        return False
    return head != b"\x80\x02\x8a\x0a"


def _check_plain_pickle(result: FileResult) -> None:
    """A pickle that is not a torch checkpoint: the restricted unpickler's verdict, nothing run."""
    from ..formats.pickle_scan import unsafe_globals
    from ..formats.unpickler import safe_loads

    result.format = "pickle"
    if result.size_bytes > MAX_PLAIN_PICKLE_BYTES:
        with open_regular(result.path) as fh:
            names = unsafe_globals(fh, result.size_bytes, "legacy")
        if names:
            result.unsafe = True
            _add(result, f"unsafe: {UnsafeCheckpoint(names).reason}")
        result.notes.append(f"plain pickle over {MAX_PLAIN_PICKLE_BYTES} bytes: scanned for globals, not unpickled")
        return
    try:
        with open_regular(result.path) as fh:
            data = fh.read(MAX_PLAIN_PICKLE_BYTES + 1)
        safe_loads(data)
    except UnsafeCheckpoint as exc:
        result.unsafe = True
        _add(result, f"unsafe: {exc.reason}")
    except CheckpointError as exc:
        with open_regular(result.path) as fh:
            names = unsafe_globals(fh, result.size_bytes, "legacy")
        if names:
            result.unsafe = True
            _add(result, f"unsafe: {UnsafeCheckpoint(names).reason}")
        else:
            _add(result, exc.reason)
    except OSError as exc:
        _add(result, f"read error: {exc.strerror or exc}")
    else:
        result.notes.append("plain pickle (not a torch archive): no checksums to verify")


def _check_safetensors(result: FileResult) -> None:
    """The bounded header (offsets tiling the data region) and a data region that ends exactly
    at the end of the file: a truncated file or one with trailing bytes is damage."""
    from ..formats.safetensors import read_safetensors_header

    result.format = "safetensors"
    try:
        header = read_safetensors_header(result.path)
    except CheckpointError as exc:
        _add(result, exc.reason)
        return
    except OSError as exc:
        _add(result, f"read error: {exc.strerror or exc}")
        return
    end = header.data_offset + header.data_length
    if end < result.size_bytes:  # read_safetensors_header refuses this too; kept for a reader that may not
        _add(result, f"corrupt safetensors: {result.size_bytes - end} bytes after the last tensor")
    elif end > result.size_bytes:
        _add(result, f"truncated: tensors need {end} bytes, file has {result.size_bytes}")
    result.checksums = False
    result.notes.append(f"safetensors: {plural(len(header.tensors), 'tensor')}, header checked; no checksums to verify")
    if result.level == DEEP:
        result.notes.append("deep: safetensors values not scanned")


def _load_json(result: FileResult) -> Any:
    """The file's JSON (bounded size); None with a problem (not JSON) or a note (too large)."""
    import json

    result.format = "json"
    if result.size_bytes > MAX_JSON_BYTES:
        result.notes.append(f"JSON over {MAX_JSON_BYTES // (1024 * 1024)} MiB: not parsed")
        return None
    try:
        with open_regular(result.path) as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        _add(result, f"not JSON: {_first_line(exc)[:120]}")
    except OSError as exc:
        _add(result, f"read error: {exc.strerror or exc}")
    except CheckpointError as exc:
        _add(result, exc.reason)
    return None


def _check_index(result: FileResult) -> None:
    """A sharded weights index (``model.safetensors.index.json``): every shard it names is present."""
    doc = _load_json(result)
    if doc is None:
        return
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        _add(result, "index without a weight_map")
        return
    shards = set()
    for value in weight_map.values():
        if not isinstance(value, str):
            _add(result, "weight_map names a shard that is not a string")
            return
        shards.add(value)
        if len(shards) > MAX_INDEX_SHARDS:
            _add(result, f"index names more than {MAX_INDEX_SHARDS} shards")
            return
    for shard in sorted(shards):
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            _add(result, f"names a shard outside its directory: {bounded_repr(shard, 80)}")
            continue
        if not (result.path.parent / shard).is_file():
            _add(result, f"missing shard: {bounded_repr(shard, 80)}")
    result.notes.append(f"index of {len(shards)} shard(s)")
