"""The source seam: extract reads its files only through a Source, whose errors are translated in one
place, and every read of one file during a run sees the same version of it."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from etl_core.contract import COMPOUNDS, Rule
from etl_core.reading import extract
from etl_core.sources.source import FileSystemSource, LocalSource, Pinned, SourceChanged, SourceError, SourceMissing

GOOD = b"compound_id,compound_name,compound_structure\n1,A,X\n2,B,Y\n"
BAD_ROW = b"compound_id,compound_name,compound_structure\n1,A,X\n0,B,Y\n"  # sends the file to the diagnostic path


def test_a_local_source_reads_a_directory(tmp_path: Path) -> None:
    (tmp_path / "compounds.csv").write_bytes(GOOD)
    source = LocalSource(tmp_path)
    with source.open("compounds.csv") as stream:
        assert stream.read() == GOOD
    assert source.size("compounds.csv") == len(GOOD)


def test_identity_changes_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "compounds.csv"
    path.write_bytes(GOOD)
    source = LocalSource(tmp_path)
    first = source.identity("compounds.csv")
    assert source.identity("compounds.csv") == first
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same size, touched
    assert source.identity("compounds.csv") != first


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()], ids=["absent", "a-directory"])
def test_a_file_that_is_not_there_is_missing(tmp_path: Path, make: Any) -> None:
    make(tmp_path / "compounds.csv")
    source = LocalSource(tmp_path)
    for call in (source.open, source.size, source.identity):
        with pytest.raises(SourceMissing):
            call("compounds.csv")
    with pytest.raises(extract.FileProblem) as info:
        extract.read_header(source, COMPOUNDS)
    assert info.value.violation["rule"] == Rule.MISSING_FILE.value
    assert info.value.violation["value"] == "compounds.csv"


class _Refusing:
    """A file system on which every file is there but cannot be read."""

    type_name = "refusing"

    def __init__(self, error: OSError) -> None:
        self.error = error

    def get_file_info(self, path: str) -> pafs.FileInfo:
        return pafs.FileInfo(path, pafs.FileType.File, size=len(GOOD), mtime_ns=1)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        raise self.error


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError("connection reset")])
def test_other_errors_of_the_source_are_source_errors(error: OSError) -> None:
    source = FileSystemSource(_Refusing(error), "bucket/prefix")  # type: ignore[arg-type]
    with pytest.raises(SourceError) as info:
        source.open("compounds.csv")
    assert not isinstance(info.value, SourceMissing)
    assert info.value.details == {"file": "compounds.csv"}
    assert "compounds.csv" in info.value.message


class _Breaking:
    """A file object that fails after its first bytes, like a connection lost in the middle of a file."""

    def __init__(self) -> None:
        self.given = False

    def read(self, n: int = -1) -> bytes:
        if self.given:
            raise ConnectionResetError(104, "Connection reset by peer")
        self.given = True
        return GOOD[:60]

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


class _BreakingSource:
    def open(self, name: str) -> pa.NativeFile:
        return pa.PythonFile(_Breaking(), mode="r")

    def size(self, name: str) -> int:
        return len(GOOD)

    def identity(self, name: str) -> str:
        return "1"


def test_an_error_in_the_middle_of_a_read_is_a_source_error() -> None:
    sink = extract.Collector(extract.output_schema(COMPOUNDS))
    with pytest.raises(SourceError, match=r"compounds\.csv"):
        extract.read_file(_BreakingSource(), COMPOUNDS, sink)


class _Changing(LocalSource):
    """A directory whose compounds.csv is rewritten just before it is opened for the ``at``-th time."""

    def __init__(self, directory: Path, at: int) -> None:
        super().__init__(directory)
        self.directory = directory
        self.at = at
        self.opened = 0

    def open(self, name: str) -> pa.NativeFile:
        self.opened += 1
        if self.opened == self.at:
            (self.directory / name).write_bytes(BAD_ROW + b"3,C,Z\n")
        return super().open(name)


@pytest.mark.parametrize("at", [2, 3])  # 1: the header; 2: the fast path; 3: the diagnostic path
def test_a_file_that_changes_between_two_reads_fails_the_read(tmp_path: Path, at: int) -> None:
    (tmp_path / "compounds.csv").write_bytes(BAD_ROW)
    sink = extract.Collector(extract.output_schema(COMPOUNDS))
    with pytest.raises(SourceChanged):
        extract.read_file(_Changing(tmp_path, at), COMPOUNDS, sink)


class _Counting(LocalSource):
    """A directory that counts how often each file is opened."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.opened = 0

    def open(self, name: str) -> pa.NativeFile:
        self.opened += 1
        return super().open(name)


@pytest.mark.parametrize(("rows", "opened"), [
    ("1,A,X\n2,B,Y\n", 2),  # the header, the fast path
    ("2,A,X\n1,B,Y\n", 2),  # keys in no order from the first batch: kept as they pass, not read again
    ("2,A,X\n2,B,Y\n", 3),  # ... and the diagnostic path, which uses the duplicates the fast path found
    ("1,A,X\n0,B,Y\n", 4),  # the header, the fast path, the keys, the diagnostic path
])
def test_a_file_is_read_whole_at_most_three_times(tmp_path: Path, rows: str, opened: int) -> None:
    (tmp_path / "compounds.csv").write_text("compound_id,compound_name,compound_structure\n" + rows)
    source = _Counting(tmp_path)
    extract.read_file(source, COMPOUNDS, extract.Collector(extract.output_schema(COMPOUNDS)))
    assert source.opened == opened


def test_pinned_passes_an_unchanged_file(tmp_path: Path) -> None:
    (tmp_path / "compounds.csv").write_bytes(GOOD)
    pinned = Pinned(LocalSource(tmp_path))
    for _ in range(3):
        with pinned.open("compounds.csv") as stream:
            assert stream.read() == GOOD
    pinned.check("compounds.csv")


EXTRACT_MODULES = ["extract.py", "header.py", "fast.py", "diagnose.py", "lines.py", "keys.py", "rules.py",
                   "violations.py"]


@pytest.mark.parametrize("module", EXTRACT_MODULES)
def test_extract_does_not_touch_the_file_system_itself(module: str) -> None:
    """Everything extract reads comes through a Source: no open(), no stat(), no OSFile or memory_map,
    no path handed to pyarrow's CSV reader, no temporary files."""
    tree = ast.parse((Path(__file__).resolve().parent.parent / "etl_core" / "reading" / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open", f"{module}:{node.lineno} calls open()"
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"stat", "OSFile", "memory_map", "input_stream"}, (
                f"{module}:{node.lineno} uses .{node.attr}")
            if node.attr in ("open_csv", "read_csv"):  # handed a stream of the Source's, never a path
                call = next(c for c in ast.walk(tree) if isinstance(c, ast.Call) and c.func is node)
                assert isinstance(call.args[0], ast.Name) and call.args[0].id == "stream", (
                    f"{module}:{node.lineno} hands {ast.unparse(call.args[0])} to {node.attr}")
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = {a.name for a in node.names} | {getattr(node, "module", None) or ""}
            assert not names & {"os", "pathlib", "tempfile", "shutil", "io"}, f"{module}:{node.lineno} imports {names}"
