"""The header check: a file's first line must name every column of its contract, once."""

from __future__ import annotations

import csv
import re

import pyarrow as pa

from etl_core.contract import FileContract, Rule
from etl_core.source import Source, SourceMissing, translated
from etl_core.violations import FileProblem

HEADER_LIMIT = 1 << 20  # bytes: a longer first line is read cut


def read_header(source: Source, contract: FileContract) -> tuple[list[str], tuple[str, ...]]:
    """The header's column names (trimmed, BOM removed) and the extra columns it has; raises
    FileProblem when the file is missing or empty, or its header is not UTF-8 or lacks a column."""
    try:
        with source.open(contract.filename) as stream, translated(contract.filename):
            first = _first_line(stream, HEADER_LIMIT)
    except SourceMissing:
        raise FileProblem(contract, Rule.MISSING_FILE, value=contract.filename) from None
    if not first.strip():
        raise FileProblem(contract, Rule.EMPTY_FILE, line=1)
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FileProblem(contract, Rule.ENCODING, line=1) from None
    names = _names(re.split(r"\r\n|\r|\n", text, maxsplit=1)[0])  # the CSV reader ends a line at \r as well
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FileProblem(contract, Rule.DUPLICATE_COLUMN, line=1, column=name)
        seen.add(name)
    for name in contract.column_names:
        if name not in seen:
            raise FileProblem(contract, Rule.MISSING_COLUMN, line=1, column=name)
    extra = tuple(n for n in names if n not in contract.column_names)
    return names, extra


def _names(line: str) -> list[str]:
    try:
        fields = next(csv.reader([line]), [])
    except csv.Error:  # e.g. a NUL byte: read it as plain comma-separated names
        fields = line.split(",")
    return [n.strip().strip('"') for n in fields]


def _first_line(stream: pa.NativeFile, limit: int) -> bytes:
    """The stream's bytes up to and including the first newline, at most ``limit`` of them."""
    head = b""
    while len(head) < limit:
        chunk = stream.read(min(1 << 16, limit - len(head)))
        end = chunk.find(b"\n") + 1
        if end:
            return head + chunk[:end]
        if not chunk:
            break
        head += chunk
    return head
