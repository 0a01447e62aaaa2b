"""Where bytes come from: a local path stays a path; a ``scheme://`` URL goes to object storage.

Local paths never reach this module's remote half: :func:`is_url` is a regular expression, and
fsspec (with s3fs for ``s3://``) is imported only when a URL is actually given, so ``ckptctl
--help`` and a local ``list`` import neither.

For a URL the rest of the core works on a :class:`RemotePath` instead of a ``Path``: it has a
``name``, a ``/`` operator and prints as its URL (JSON ``path``/``directory`` fields), but no
``__fspath__``, so no local file call can ever receive one by mistake. Objects are opened as
seekable files that fetch small byte ranges (:data:`BLOCK_BYTES`), so reading a checkpoint's
zip end record, central directory and ``data.pkl`` costs a few KB of a multi-GB object.

Object stores have no directories, hard links, free-space figure or locks: a "directory" is a
prefix (it exists while an object lies below it), every object is its own data, and ``prune``
re-plans from a fresh listing right before deleting instead of taking a lock.

Credentials and endpoints come from the usual places of the fsspec implementation: for s3fs the
AWS environment and config files (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``,
...) and fsspec's ``FSSPEC_S3_<ARG>`` variables (``FSSPEC_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import errno
import io
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Iterator

from ..errors import BadInputError

URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
BLOCK_BYTES = 4096  # read ahead of each small read: a local header with its name, a small data.pkl
STREAM_BYTES = 8 << 20  # one ranged read while streaming a whole object (validate's CRC pass)
PREFETCH_GAP = 4096  # prefetched ranges closer than this are fetched as one
TAIL_BYTES = 16 * 1024  # fetched on open: the zip end records and a small central directory, in one request
EXTRAS = {"s3": "s3", "s3a": "s3"}  # scheme -> the ckptctl extra that installs its fsspec implementation


def is_url(value: object) -> bool:
    """True for ``s3://bucket/prefix`` (any ``scheme://``) and RemotePath; plain paths stay plain."""
    return isinstance(value, RemotePath) or (isinstance(value, str) and URL.match(value) is not None)


@dataclass(frozen=True)
class RemotePath:
    """An object or prefix in an object store. ``size``/``mtime`` are what the listing said."""

    url: str  # "s3://bucket/run/checkpoints/latest.pt", no trailing slash
    fs: Any = field(compare=False, repr=False)
    size: int | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        """The path as the fsspec file system spells it (``bucket/run/checkpoints/latest.pt``)."""
        return self.fs._strip_protocol(self.url)

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(f"{self.url}/{name}", self.fs)

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class ObjectInfo:
    """One listing row. ``identity`` changes when the object is rewritten (ETag, size, mtime)."""

    path: RemotePath
    size: int
    mtime: float
    identity: int
    is_dir: bool = False


def location(value: Any) -> Any:
    """``value`` as the core handles it: a RemotePath for a URL, else a ``pathlib.Path``."""
    if isinstance(value, RemotePath):
        return value
    if is_url(value):
        return remote(value)
    from pathlib import Path

    return Path(value)


def remote(url: str) -> RemotePath:
    """Resolve ``url`` to its fsspec file system (imported here, lazily). BadInputError when it cannot be used."""
    scheme = URL.match(url).group(1).lower()  # type: ignore[union-attr]
    try:
        from fsspec.core import url_to_fs

        fs, _path = url_to_fs(url)
    except ImportError:
        extra = EXTRAS.get(scheme)
        hint = f"pip install 'ckptctl[{extra}]'" if extra else f"install fsspec's {scheme} implementation"
        raise BadInputError(f"{scheme}:// URLs need the {extra or scheme} extra: {hint}") from None
    except ValueError as exc:  # "Protocol not known"
        raise BadInputError(f"unsupported URL {url}: {exc}") from None
    return RemotePath(url.rstrip("/"), fs)


def refuse_url(value: object, command: str) -> None:
    """For the commands that write or load tensors locally (restore, compare, resume-cmd)."""
    if is_url(value):
        raise BadInputError(f"{command} is not supported for URLs ({value}): copy it to a local path first")


@contextmanager
def _errors(url: str, what: str = "directory") -> Iterator[None]:
    """Every failure of the object store as one BadInputError line (bucket, prefix, credentials, network)."""
    try:
        yield
    except BadInputError:
        raise
    except FileNotFoundError as exc:
        detail = _reason(exc)
        known = detail in (url, url.split("://", 1)[-1]) or detail == "FileNotFoundError"
        raise BadInputError(f"no such {what}: {url}" + ("" if known else f" ({detail})")) from None
    except PermissionError as exc:
        raise BadInputError(f"permission denied: {url} ({_reason(exc)})") from None
    except Exception as exc:  # botocore's NoCredentialsError, EndpointConnectionError, ClientError, ...
        raise BadInputError(f"cannot read {url}: {type(exc).__name__}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def listdir(directory: RemotePath) -> list[ObjectInfo]:
    """The objects and sub-prefixes directly below ``directory`` (one listing, never cached)."""
    with _errors(directory.url):
        rows = directory.fs.ls(directory.key, detail=True, refresh=True)
    prefix = directory.key.rstrip("/") + "/"
    if not any(row["name"].startswith(prefix) for row in rows):
        raise BadInputError(f"not a directory: {directory} (give the prefix that holds the checkpoints)")
    return [_info(directory / row["name"][len(prefix) :], row) for row in rows if row["name"].startswith(prefix)]


def stat(path: RemotePath) -> ObjectInfo:
    """What the store says about one object or prefix (BadInputError when it has neither)."""
    with _errors(path.url, "file"):
        row = path.fs.info(path.key, refresh=True)
    return _info(path, row)


def directory_size(path: RemotePath) -> int:
    """Bytes of the objects directly below a prefix (a sharded checkpoint's shard files)."""
    return sum(row.size for row in listdir(path) if not row.is_dir)


def _info(path: RemotePath, row: dict[str, Any]) -> ObjectInfo:
    is_dir = row.get("type") == "directory"
    size = int(row.get("size") or 0)
    mtime = _mtime(row)
    tag = str(row.get("ETag") or row.get("etag") or row.get("md5Hash") or "")
    import hashlib  # objects only: a local listing needs neither hashlib nor bisect from this module

    digest = hashlib.blake2b(f"{path.url}\0{size}\0{mtime}\0{tag}".encode(), digest_size=8).digest()
    identity = int.from_bytes(digest, "big") >> 1  # a positive "inode": unique per object version
    return ObjectInfo(RemotePath(path.url, path.fs, None if is_dir else size), size, mtime, identity, is_dir)


def _mtime(row: dict[str, Any]) -> float:
    """Seconds since the epoch from whichever field the implementation fills (s3fs: LastModified)."""
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = row.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def open_object(path: RemotePath, *, block: int = BLOCK_BYTES) -> BinaryIO:
    """A seekable binary file whose reads fetch byte ranges of ``block`` bytes (plus what was asked).

    The readahead cache serves the next small read from the last range, which is how zipfile
    and the container reader walk a file: the end record, the central directory, a local header
    and the ``data.pkl`` right behind it. s3fs's default (5 MB blocks) would fetch whole small
    objects. ``size`` from the listing saves a HEAD request per object; the last
    :data:`TAIL_BYTES` are fetched at once (zipfile reads them backwards in small pieces).
    """
    options: dict[str, Any] = {"block_size": block, "cache_type": "readahead"}
    if path.size is not None:
        options["size"] = path.size
    with _errors(path.url, "file"):
        fh = ObjectFile(path.fs.open(path.key, "rb", **options))
    try:  # zipfile reads the end record, the zip64 locator and record, then the directory: one request
        fh.prefetch([(max(0, fh.size - TAIL_BYTES), fh.size)])
    except Exception:
        fh.close()
        raise
    return fh  # type: ignore[return-value]


class ObjectFile(io.IOBase):
    """An object as a seekable binary file: reads go to fsspec's ranged file unless they fall in a
    part fetched beforehand by :meth:`prefetch`.

    ``prefetch`` is how hundreds of small scattered reads (every record's local header, every data
    descriptor) cost a few concurrent requests instead of one round trip each.
    """

    def __init__(self, inner: Any):
        self._inner = inner
        self._pos = 0
        self._starts: list[int] = []
        self._parts: list[bytes] = []

    @property
    def size(self) -> int:
        return self._inner.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = self._inner.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            import bisect

            index = bisect.bisect_right(self._starts, self._pos) - 1
            if index >= 0 and self._pos + size <= self._starts[index] + len(self._parts[index]):
                at = self._pos - self._starts[index]
                self._pos += size
                return self._parts[index][at : at + size]
        self._inner.seek(self._pos)
        data = self._inner.read(size)
        self._pos += len(data)
        return data

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch these (start, end) byte ranges now, nearby ones merged, concurrently where the
        file system can; a range that fails is simply read later, when asked for."""
        from fsspec.utils import merge_offset_ranges

        size = self.size
        wanted = sorted((start, min(end, size)) for start, end in ranges if 0 <= start < min(end, size))
        if not wanted:
            return
        paths, starts, ends = merge_offset_ranges([self._inner.path] * len(wanted), [w[0] for w in wanted],
                                                  [w[1] for w in wanted], max_gap=PREFETCH_GAP, sort=False)  # fmt: skip
        blobs = self._inner.fs.cat_ranges(paths, starts, ends, on_error="return")
        parts = dict(zip(self._starts, self._parts))
        parts.update((start, blob) for start, blob in zip(starts, blobs) if isinstance(blob, bytes))
        self._starts, self._parts = sorted(parts), [parts[start] for start in sorted(parts)]

    def close(self) -> None:
        self._inner.close()
        super().close()


def delete(path: RemotePath, *, recursive: bool = False) -> None:
    """Delete an object (a sharded checkpoint's prefix with ``recursive``); OSError as a local unlink would raise."""
    try:
        path.fs.rm(path.key, recursive=recursive)
    except FileNotFoundError:
        raise
    except PermissionError as exc:
        raise OSError(errno.EACCES, _reason(exc)) from None
    except OSError:
        raise
    except Exception as exc:  # botocore's ClientError and friends
        raise OSError(errno.EIO, f"{type(exc).__name__}: {_reason(exc)}") from None
