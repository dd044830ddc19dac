"""Where the input files come from: named objects, read as forward-only byte streams.

Extract reads its inputs only through a ``Source``.  Reading a file again means opening it again;
nothing needs random access, so an object store fits as well as a directory.  ``FileSystemSource``
works on any ``pyarrow.fs`` file system: ``LocalSource`` is a directory on the local one; an S3
source is the same class on ``pyarrow.fs.S3FileSystem`` with ``bucket/prefix`` as its base.

The errors of a source are translated here, in ``translated`` and nowhere else: an object that is
not there (or is a directory) raises ``SourceMissing``, which the header check reports as the
contract's ``missing_file``; any other OS or I/O error raises ``SourceError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from etl_core.errors import (
    SourceChanged,
    SourceError,
    SourceForbidden,
    SourceMissing,
    SourceUnavailable,
    redact,
)

__all__ = [
    "FileSystemSource", "LocalSource", "Pinned", "S3Source", "Source", "SourceChanged", "SourceError",
    "SourceForbidden", "SourceMissing", "SourceUnavailable", "translated",
]


class Source(Protocol):
    """Named input files, each read as a stream from its first byte.  Every method raises
    SourceMissing when there is no file ``name`` and SourceError when it cannot be read."""

    def open(self, name: str) -> pa.NativeFile:
        """A new input stream over the whole of ``name``; the caller closes it."""
        ...

    def size(self, name: str) -> int:
        """The size of ``name`` in bytes."""
        ...

    def identity(self, name: str) -> str:
        """A token that changes whenever ``name`` changes (size and modification time, or ETag)."""
        ...

    def describe(self, name: str) -> dict[str, Any]:
        """What the runs ledger records of ``name``: ``key``, ``size``, what the identity is made of
        (``mtime_ns``; ``etag`` and ``version_id``) and the ``identity`` itself."""
        ...


class FileSystemSource:
    """The files under ``base`` on a ``pyarrow.fs`` file system."""

    def __init__(self, fs: pafs.FileSystem, base: str) -> None:
        self.fs = fs
        self.base = base.rstrip("/")

    def open(self, name: str) -> pa.NativeFile:
        self._info(name)  # a directory opens on some file systems: refuse it here
        with translated(name):
            return self.fs.open_input_stream(self._path(name))

    def open_at(self, name: str, offset: int) -> pa.NativeFile:
        """A file of ``name`` that may seek, at byte ``offset`` (the sharded path reads byte ranges; on S3
        each read is a ranged GET); the caller closes it."""
        self._info(name)
        with translated(name):
            file = self.fs.open_input_file(self._path(name))
            file.seek(offset)
            return file

    def size(self, name: str) -> int:
        return int(self._info(name).size)

    def identity(self, name: str) -> str:
        info = self._info(name)
        return f"{info.size}:{info.mtime_ns}"

    def describe(self, name: str) -> dict[str, Any]:
        """What the runs ledger records of ``name``: its key, size and what its identity is made of."""
        info = self._info(name)
        # the whole path: two directories holding files of the same names, sizes and times are two inputs
        return {"key": self._path(name), "size": int(info.size), "identity": f"{info.size}:{info.mtime_ns}",
                "mtime_ns": info.mtime_ns, "etag": None, "version_id": None}  # the same keys as S3's

    def _path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def _info(self, name: str) -> pafs.FileInfo:
        with translated(name):
            info = self.fs.get_file_info(self._path(name))
        if info.type != pafs.FileType.File:
            raise SourceMissing(f"{name} is not there", file=name)
        return info

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fs.type_name}:{self.base})"


class LocalSource(FileSystemSource):
    """The files of one local directory."""

    def __init__(self, directory: Path | str) -> None:
        super().__init__(pafs.LocalFileSystem(), str(Path(directory).resolve()))


S3_READ_SIZE = 8 << 20  # bytes per ranged GET: the CSV reader's 1 MiB blocks are served from this buffer


class S3Source(FileSystemSource):
    """The objects below ``bucket/prefix`` of an S3 bucket, read as buffered streams: every ranged GET
    fetches ``read_size`` bytes, whatever block size the CSV reader asks for.  An object's identity is
    its size and ETag (S3's ``mtime`` is only the upload's second), read from the HEAD request that
    opening a stream makes; nothing is downloaded to find it."""

    def __init__(self, fs: pafs.FileSystem, base: str, *, read_size: int = S3_READ_SIZE) -> None:
        super().__init__(fs, base)
        self.read_size = read_size

    def open(self, name: str) -> pa.NativeFile:
        with translated(name):
            return self.fs.open_input_stream(self._path(name), buffer_size=self.read_size)

    def size(self, name: str) -> int:
        return int(self.describe(name)["size"])

    def identity(self, name: str) -> str:
        return str(self.describe(name)["identity"])

    def describe(self, name: str) -> dict[str, Any]:
        with translated(name):
            stream = self.fs.open_input_stream(self._path(name))  # a HEAD request; no byte is read
            try:
                meta = stream.metadata()
            finally:
                stream.close()
        size = int(_text(meta.get("Content-Length")) or 0)
        etag = _text(meta.get("ETag"))
        found = {"key": f"s3://{self._path(name)}", "size": int(size), "identity": f"{size}:{etag}",
                 "mtime_ns": None, "etag": etag, "version_id": None}  # the same keys as a local file's
        if meta.get("VersionId"):
            found["version_id"] = _text(meta["VersionId"])
        return found


def s3_source(url: str, *, endpoint: str | None = None, region: str | None = None) -> S3Source:
    """The source of an ``s3://bucket/prefix/`` URL.  ``endpoint`` (``http://host:port``) overrides
    AWS's endpoint, e.g. for a local S3 server (pyarrow does not read AWS_ENDPOINT_URL_S3); credentials
    come from the usual AWS variables or the function's role, through the AWS SDK in pyarrow."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    options: dict[str, Any] = {"region": region} if region else {}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        options.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    fs = pafs.S3FileSystem(connect_timeout=5, request_timeout=30, **options)
    return S3Source(fs, f"{bucket}/{prefix.strip('/')}".rstrip("/"))


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Pinned:
    """One version of each file of ``source``: opening a file again after it changed raises
    ``SourceChanged`` instead of reading another version (``check`` asks the same after the last read)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._seen: dict[str, str] = {}

    def open(self, name: str) -> pa.NativeFile:
        self.check(name)
        return self.source.open(name)

    def open_at(self, name: str, offset: int) -> pa.NativeFile:
        """``open`` at byte ``offset``, of a source that may seek (``FileSystemSource``)."""
        self.check(name)
        return self.source.open_at(name, offset)  # type: ignore[attr-defined]

    def size(self, name: str) -> int:
        return self.source.size(name)

    def identity(self, name: str) -> str:
        if name not in self._seen:
            self._seen[name] = self.source.identity(name)
        return self._seen[name]

    def describe(self, name: str) -> dict[str, Any]:
        """``name`` described, and its identity pinned: the version every later read must see."""
        found = self.source.describe(name)
        self._seen.setdefault(name, found["identity"])
        return found

    def check(self, name: str) -> None:
        """Raise ``SourceChanged`` if ``name`` is no longer the version seen first."""
        now = self.source.identity(name)
        if self._seen.setdefault(name, now) != now:
            raise SourceChanged(f"{name} changed while it was being read; run again", file=name)


@contextmanager
def translated(name: str) -> Iterator[None]:
    """OS and I/O errors (of opening ``name``, or of reading a stream of it) as ``SourceMissing`` /
    ``SourceError``."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise SourceMissing(f"{name} is not there", file=name) from exc
    except OSError as exc:  # pyarrow's I/O errors are OSErrors too (AWS's among them)
        text = str(exc)
        if any(mark in text for mark in _FORBIDDEN):
            raise SourceForbidden(f"the object store refused access to {name}: check the function's "
                                  f"credentials and the bucket's policy ({redact(text)})", file=name) from exc
        if any(mark in text for mark in _UNAVAILABLE):
            raise SourceUnavailable(f"the object store did not answer for {name}; try again later "
                                    f"({redact(text)})", file=name) from exc
        if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
            raise SourceMissing(f"{name} is not there (no such bucket)", file=name) from exc
        raise SourceError(f"cannot read {name}: {redact(text)}", file=name) from exc


# how the AWS SDK in pyarrow words a refusal and a store that does not answer
_FORBIDDEN = ("ACCESS_DENIED", "HTTP status 403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
              "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN")
_UNAVAILABLE = ("NETWORK_CONNECTION", "curlCode", "SERVICE_UNAVAILABLE", "SLOW_DOWN", "REQUEST_TIMEOUT",
                "HTTP status 500", "HTTP status 502", "HTTP status 503", "HTTP status 504", "THROTTLING")

