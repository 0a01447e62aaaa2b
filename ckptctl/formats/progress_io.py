"""A read-only file object that reports the bytes read through it, for loads that read a whole file
(``torch.load`` of a legacy checkpoint, which cannot be memory-mapped) and otherwise say nothing.

torch's readers take any object with ``read``/``readinto``/``seek``/``tell``: the zip reader reads
one record per ``readinto`` and the legacy reader one storage per ``readinto``. A storage can be
gigabytes, so :meth:`ProgressReader.readinto` fills a large buffer :data:`READ_CHUNK` bytes at a
time, reporting after each piece: the caller's buffer is filled in place (no second copy, no extra
memory) and progress moves within one large storage. ``fileno`` is not offered, so torch never
bypasses the wrapper with reads of its own on the descriptor.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Callable

READ_CHUNK = 8 << 20  # bytes per report inside one large read

Progress = Callable[[int], None]  # bytes just read


class ProgressReader(io.RawIOBase):
    """``raw`` (an open binary file) read through, calling ``progress(n)`` after every ``n`` bytes read."""

    def __init__(self, raw: BinaryIO, progress: Progress, chunk: int = READ_CHUNK):
        super().__init__()
        self.raw = raw
        self.progress = progress
        self.chunk = max(1, chunk)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            got = self.raw.readinto(view[filled : filled + self.chunk])  # type: ignore[attr-defined]
            if not got:
                break
            filled += got
            self._count(got)
        return filled

    def read(self, size: int | None = -1) -> bytes:
        data = self.raw.read(-1 if size is None else size)  # small reads (pickle opcodes); storages come by readinto
        self._count(len(data))
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def _count(self, nbytes: int) -> None:
        if nbytes:
            self.bytes_read += nbytes
            self.progress(nbytes)
