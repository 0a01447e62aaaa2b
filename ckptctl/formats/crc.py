"""CRC-32 of a zip archive's records, streamed with bounded memory and in parallel threads.

Used by ``validate`` (every record's bytes against the central directory's CRC) and by the durable
writer (a file is verified before it is renamed into place). The work is bounded by the file's
size (:func:`check_crc_budget`): a record list that claims more bytes than the file holds is a
verdict, never a long computation.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable

from ..errors import UnreadableCheckpoint
from . import storage
from .container import Record, size_of

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


CHUNK_BYTES = 1 << 20  # one preadv; small enough to stay in the CPU cache for the CRC that follows
# The unit of parallel work inside one record. While one thread checks the last segment of a file
# the others wait (up to one segment of work per file): splitting bench/bench_validate.py's files
# between two threads, that wait is 4.5% of their time with 32 MiB segments and none with 8 MiB.
# But smaller segments interleave the threads' reads of one file more finely, and from a cold page
# cache 8 MiB segments read ~13% slower than 32 MiB (1.13 against 1.30 GB/s, median of 6 here).
SEGMENT_BYTES = 32 << 20

Progress = Callable[[int], None]  # bytes just checked; may be called from worker threads


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
    check_crc_budget(records, os.fstat(fd).st_size)
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


def check_crc_budget(records: list[Record], file_size: int) -> None:
    """Refuse a plan that checksums more bytes than the file holds.

    Records of a well-formed archive are disjoint, so their sizes add up to less than the file;
    overlapping ones (refused as ambiguous by the container, but this is the hard bound) once made
    a 33 MB file cost 640 GiB of CRC work.
    """
    planned = sum(record.size for record in records)
    if planned > file_size:
        raise UnreadableCheckpoint(f"records claim {planned} bytes, more than the file's {file_size}: not checksummed")


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


def crc_records_stream(fh: BinaryIO, records: list[Record], progress: Progress | None = None) -> dict[str, int | None]:
    """CRC-32 of each record, from one sequential pass over a file object in windows of
    :data:`ckptctl.formats.storage.STREAM_BYTES` (None for a record the file ends inside).

    For objects in an object store (no descriptor for ``preadv``): a few large ranged reads for the
    whole file instead of one request per record; the small local headers between the records
    are read along. Same values as :func:`crc_records`.
    """
    check_crc_budget(records, size_of(fh))
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
