"""The header check: a file's first line that is not blank must name every column of its contract, once."""

from __future__ import annotations

import pyarrow as pa

from etl_core.contract import FileContract, Rule
from etl_core.reading import lines
from etl_core.reading.violations import FileProblem, visible
from etl_core.sources import Source, SourceMissing, translated

HEADER_LIMIT = 256 << 20  # bytes looked at for the header (blank lines before it included): the longest line read


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
    for name in names:  # a column of the contract twice: which one is it? (others are ignored, repeated or not)
        if name in contract.column_names and names.count(name) > 1:
            raise FileProblem(contract, Rule.DUPLICATE_COLUMN, line=number, column=name)
    for name in contract.column_names:
        if name not in names:
            raise FileProblem(contract, Rule.MISSING_COLUMN, line=number, column=name)
    extra = tuple(str(visible(n)) for n in names if n not in contract.column_names)  # shown as reports show text
    names = _apart(names)
    return names, extra


def _apart(names: list[str]) -> list[str]:
    """The names the readers give the columns: the header's, except that a name an ignored column
    repeats (a spreadsheet's empty trailing columns: ``,,``) is made unique with its position, so that
    pyarrow can tell the columns apart.  Nothing reports an ignored column by name, and the contract's
    columns, each there once, keep theirs."""
    out: list[str] = []
    for at, name in enumerate(names):
        while name in out:
            name = f"{name}\x00{at}"
        out.append(name)
    return out


def header_end(stream: pa.NativeFile, limit: int = HEADER_LIMIT) -> int:
    """The offset just past the line break that ends the stream's header (its first line that is not
    blank, after a BOM and blank lines of any of the three line endings), looking at most ``limit``
    bytes far; the bytes read if no such line ends within them (the file holds no rows)."""
    found = _scan(stream, limit)
    return stream.tell() if found is None else found[2]


def _names(line: str) -> list[str]:
    """The header's names, split and trimmed as every line is (docs/contract.md); a quote left open runs
    to the end of the line."""
    raw = line.encode("utf-8")
    fields = lines.split(raw) or lines.split(raw + b'"') or []
    return [f.strip(lines.BLANKS).decode("utf-8") for f in fields]


def _header_line(stream: pa.NativeFile, limit: int) -> tuple[int, bytes] | None:
    """(line number, bytes without the line break) of the stream's first line that is not blank, looking
    at most ``limit`` bytes far (a longer line is cut there); None if there is none."""
    found = _scan(stream, limit)
    return None if found is None else (found[0], found[1])


def _scan(stream: pa.NativeFile, limit: int) -> tuple[int, bytes, int] | None:
    """(line number, the line without its break, the offset just past the break) of the stream's first
    line that is not blank (a BOM before it passed over); None if there is none within ``limit`` bytes.
    Read a chunk at a time, each byte looked at once (megabytes of blank lines, or a header of
    megabytes, cost their length, not its square); the blank lines behind are let go."""
    buffer, base = bytearray(), 0  # the bytes kept, and the stream's offset of the first of them
    number, line_start, scanned = 1, 0, 0  # the current line's number and start; where breaks are still to find
    bom_checked, ended = False, False
    while True:
        chunk = stream.read(min(1 << 16, limit - base - len(buffer))) if base + len(buffer) < limit else b""
        ended = not chunk
        buffer += chunk
        if not bom_checked:
            if len(buffer) < len(lines.BOM) and not ended:
                continue
            if buffer.startswith(lines.BOM):
                line_start = scanned = len(lines.BOM)
            bom_checked = True
        for found in lines.LINE_END.finditer(buffer, scanned):
            if not ended and found.end() == len(buffer) and found.group() == b"\r":
                break  # a CR at the end of what was read may be the first half of a CRLF
            line = bytes(buffer[line_start:found.start()])
            if not lines.is_blank(line):
                return number, line, base + found.end()
            number, line_start = number + 1, found.end()
        if ended:
            rest = bytes(buffer[line_start:])  # the last line, without a break (or cut at the limit)
            return (number, rest, base + len(buffer)) if rest and not lines.is_blank(rest) else None
        scanned = max(line_start, len(buffer) - 1)  # a CR left at the end is looked at again
        if line_start >= 1 << 16:  # the blank lines behind are done with
            del buffer[:line_start]
            base, scanned, line_start = base + line_start, scanned - line_start, 0
