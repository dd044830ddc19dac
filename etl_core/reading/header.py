"""The header check: a file's first line that is not blank must name every column of its contract, once."""

from __future__ import annotations

import pyarrow as pa

from etl_core.contract import FileContract, Rule
from etl_core.reading import lines
from etl_core.reading.violations import FileProblem, visible
from etl_core.sources import Source, SourceMissing, translated

HEADER_LIMIT = 1 << 20  # bytes: a longer first line is read cut


def read_header(source: Source, contract: FileContract) -> tuple[list[str], tuple[str, ...]]:
    """The header's column names (trimmed, BOM removed) and the extra columns it has; raises
    FileProblem when the file is missing or has nothing but blank lines, or its header is not UTF-8 or
    lacks a column.  Blank lines (nothing but spaces and tabs) before the header are passed over."""
    try:
        with source.open(contract.filename) as stream, translated(contract.filename):
            found = _header_line(stream, HEADER_LIMIT)
    except SourceMissing:
        raise FileProblem(contract, Rule.MISSING_FILE, value=contract.filename) from None
    if found is None:
        raise FileProblem(contract, Rule.EMPTY_FILE, line=1)
    number, first = found
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        raise FileProblem(contract, Rule.ENCODING, line=number) from None
    names = _names(text)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FileProblem(contract, Rule.DUPLICATE_COLUMN, line=number, column=name)
        seen.add(name)
    for name in contract.column_names:
        if name not in seen:
            raise FileProblem(contract, Rule.MISSING_COLUMN, line=number, column=name)
    extra = tuple(str(visible(n)) for n in names if n not in contract.column_names)  # shown as reports show text
    return names, extra


def header_end(stream: pa.NativeFile, limit: int = HEADER_LIMIT) -> int:
    """The offset just past the line break that ends the stream's header (its first line that is not
    blank, after a BOM and blank lines of any of the three line endings), looking at most ``limit``
    bytes far; the bytes read if no such line ends within them (the file holds no rows)."""
    head, ended = b"", False
    while not ended:
        chunk = stream.read(min(1 << 16, limit - len(head))) if len(head) < limit else b""
        head += chunk
        ended = not chunk
        start = len(lines.BOM) if head.startswith(lines.BOM) else 0
        for found in lines.LINE_END.finditer(head, start):
            if not ended and found.end() == len(head) and found.group() == b"\r":
                break  # a CR at the end of what was read may be the first half of a CRLF
            if not lines.is_blank(head[start:found.start()]):
                return found.end()
            start = found.end()
    return len(head)


def _names(line: str) -> list[str]:
    """The header's names, split and trimmed as every line is (docs/contract.md); a quote left open runs
    to the end of the line."""
    raw = line.encode("utf-8")
    fields = lines.split(raw) or lines.split(raw + b'"') or []
    return [f.strip(lines.BLANKS).decode("utf-8") for f in fields]


def _header_line(stream: pa.NativeFile, limit: int) -> tuple[int, bytes] | None:
    """(line number, bytes without the line break) of the stream's first line that is not blank, looking
    at most ``limit`` bytes far (a longer line is cut there); None if there is none."""
    head = b""
    while len(head) < limit:
        chunk = stream.read(min(1 << 16, limit - len(head)))
        head += chunk
        found = _first_not_blank(head, ended=not chunk)
        if found is not None or not chunk:
            return found
    return _first_not_blank(head, ended=True)  # the last line cut at the limit


def _first_not_blank(head: bytes, *, ended: bool) -> tuple[int, bytes] | None:
    """(line number, bytes) of the first line of ``head`` that is not blank (a BOM before it passed over);
    the bytes after the last line break count as a line only when ``ended``."""
    body = head[len(lines.BOM):] if head.startswith(lines.BOM) else head
    pieces = lines.LINE_END.split(body)
    for number, line in enumerate(pieces if ended else pieces[:-1], 1):
        if not lines.is_blank(line):
            return number, line
    return None
