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
from typing import Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from etl_core.errors import EtlError


class SourceError(EtlError):
    """Raise when an input file cannot be read (permissions, I/O errors, a store that does not answer)."""

    code = "source_unreadable"


class SourceMissing(SourceError):
    """Raise when an input file is not there (or is not a file)."""

    code = "source_missing"


class SourceChanged(SourceError):
    """Raise when an input file changed between two reads of one run."""

    code = "source_changed"


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
        """A token that changes whenever ``name`` changes (size and modification time)."""
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

    def size(self, name: str) -> int:
        return int(self._info(name).size)

    def identity(self, name: str) -> str:
        info = self._info(name)
        return f"{info.size}:{info.mtime_ns}"

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


class Pinned:
    """One version of each file of ``source``: opening a file again after it changed raises
    ``SourceChanged`` instead of reading another version (``check`` asks the same after the last read)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._seen: dict[str, str] = {}

    def open(self, name: str) -> pa.NativeFile:
        self.check(name)
        return self.source.open(name)

    def size(self, name: str) -> int:
        return self.source.size(name)

    def identity(self, name: str) -> str:
        if name not in self._seen:
            self._seen[name] = self.source.identity(name)
        return self._seen[name]

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
    except OSError as exc:  # pyarrow's I/O errors are OSErrors too
        raise SourceError(f"cannot read {name}: {exc}", file=name) from exc

