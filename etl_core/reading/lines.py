"""The diagnostic path's view of a file: every physical line judged on its own (docs/contract.md).

A line ends at LF, CRLF or a lone CR, and a value never spans lines, so one line is one row.
``Lines`` is a stream transform that hands pyarrow's CSV reader one line for each line of the file
(so that pyarrow's row numbers are the file's line numbers), and decides itself each line that
pyarrow would read otherwise than the contract says:

* a blank line (nothing but spaces and tabs), the lines before the header and the header itself:
  handed on empty and listed in ``dropped`` (the rows pyarrow makes of them are not rows of the file);
* a line whose quoting pyarrow reads differently (whitespace before a quote, a quote left open,
  doubled quotes), or that holds a NUL byte: split here (``split``) and handed on in a form pyarrow
  reads exactly, every field quoted;
* a line that then has a wrong field count, or a quote left open: handed on empty, listed in
  ``dropped`` and in ``broken`` with its rule (``encoding`` when it is not UTF-8 either).

A block of lines with none of these shapes (the common case) is passed on as it is, looked at once
with a regular expression and a UTF-8 decode; in a block with some, the runs of lines that pyarrow
reads as the dialect does (``_STRICT_RUN``) still are, and only the other lines are split here.
"""

from __future__ import annotations

import bisect
import re

import pyarrow as pa
import pyarrow.csv as pacsv

from etl_core.contract import Rule

QUOTE, DELIMITER = ord('"'), b","
BOM = b"\xef\xbb\xbf"  # allowed at the start of a file
BLANKS = b" \t"  # the whitespace the contract trims: spaces and tabs, nothing else

# a block that has any of these is read line by line: a quote, a NUL byte, a lone CR (pyarrow ends a row
# there too, but the lines are counted here), a blank line
_SUSPECT = re.compile(rb'["\x00]|\r(?!\n)|^[ \t]*\r?\n', re.MULTILINE)
LINE_END = re.compile(rb"\r\n|\r|\n")  # where a line ends, as the CSV reader ends rows
# Lines that pyarrow reads exactly as this dialect does: not blank, every field plain (no quote) or
# quoted from its first byte to the delimiter, no NUL byte, no lone CR.
_FIELD = rb'(?:"[^"\r\n\x00]*(?:""[^"\r\n\x00]*)*"|[^",\r\n\x00]*)'  # the quoted loop unrolled: 4x faster
_STRICT_RUN = re.compile(rb"(?:(?![ \t]*\r?\n)" + _FIELD + rb"(?:," + _FIELD + rb")*\r?\n)*")


def split(line: bytes) -> list[bytes] | None:
    """The fields of one physical line (without its line break), as the contract's dialect reads them,
    or None when a quote is left open.  A field is either unquoted (any bytes but the delimiter; a
    quote inside it is a literal quote), or, after any spaces and tabs, quoted: the bytes up to the
    closing quote, ``""`` standing for one quote, then any bytes up to the delimiter, taken as they are.
    Values are not trimmed here."""
    fields: list[bytes] = []
    at, end = 0, len(line)
    while True:
        start = at
        while start < end and line[start] in BLANKS:
            start += 1
        if start < end and line[start] == QUOTE:
            value = bytearray()
            at = start + 1
            while True:
                close = line.find(b'"', at)
                if close < 0:
                    return None
                value += line[at:close]
                if line[close + 1:close + 2] == b'"':
                    value += b'"'
                    at = close + 2
                    continue
                break
            comma = line.find(DELIMITER, close + 1)
            stop = end if comma < 0 else comma
            value += line[close + 1:stop]
            fields.append(bytes(value))
        else:
            comma = line.find(DELIMITER, at)
            stop = end if comma < 0 else comma
            fields.append(line[at:stop])
        if comma < 0:
            return fields
        at = comma + 1


def is_blank(line: bytes) -> bool:
    """Whether a line (without its line break) holds nothing but spaces and tabs."""
    return not line.strip(BLANKS)


def _canonical(fields: list[bytes]) -> bytes:
    return b",".join(b'"' + f.replace(b'"', b'""') + b'"' for f in fields)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Lines:
    """``raw`` as pyarrow's reader should see it, for a file of ``fields`` columns; read ``stream``
    with ``skip_rows=1`` on one thread.  Once it is read to its end, ``broken`` holds (line, rule,
    text) of each line rejected whole, and ``dropped`` every line whose row pyarrow makes is no row."""

    def __init__(self, raw: pa.NativeFile, fields: int) -> None:
        self.fields = fields
        self.broken: list[tuple[int, Rule, str]] = []
        self.dropped: list[int] = []  # sorted
        self.stream = pa.TransformInputStream(raw, self._transform)
        self._lines = 0  # lines passed on so far
        self._pending = b""  # the start of an unfinished line
        self._header = False  # whether the header line has been passed

    def _transform(self, buf: pa.Buffer) -> pa.Buffer:
        """Pass on the complete lines read so far (and at the end, signalled by an empty buffer, the rest)."""
        chunk = buf.to_pybytes()
        data = self._pending + chunk
        if chunk:
            # a CR at the very end may be the first half of a CRLF: keep it for the next chunk
            end = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
            self._pending, data = data[end:], data[:end]
        else:
            self._pending = b""
            if data and data[-1:] not in (b"\n", b"\r"):
                data += b"\n"
        if not data:
            return pa.py_buffer(b"")
        if not (self._header and _utf8(data)):  # pyarrow hands no row that is not UTF-8 to a handler
            return pa.py_buffer(self._each_line(data))
        if not _SUSPECT.search(data):
            self._lines += data.count(b"\n")
            return pa.py_buffer(data)
        return pa.py_buffer(self._runs(data))

    def _runs(self, data: bytes) -> bytes:
        """``data`` (UTF-8, after the header) with each run of lines that pyarrow reads as this dialect
        does passed on as it is (one regular expression), and each other line decided here."""
        out = []
        at, end = 0, len(data)
        while at < end:
            stop = _STRICT_RUN.match(data, at).end()  # type: ignore[union-attr]  # it matches, if only ''
            if stop > at:
                out.append(data[at:stop])
                self._lines += data.count(b"\n", at, stop)
                at = stop
                continue
            stop = data.find(b"\n", at) + 1 or end  # one line up to its LF: it may hold lone CRs
            out.append(self._each_line(data[at:stop]))
            at = stop
        return b"".join(out)

    def _each_line(self, data: bytes) -> bytes:
        lines = LINE_END.split(data)
        lines.pop()  # data ends with a line break: nothing after it
        out = []
        for line in lines:
            self._lines += 1
            out.append(self._line(self._lines, line))
        out.append(b"")
        return b"\n".join(out)

    def _line(self, number: int, line: bytes) -> bytes:
        """The line as handed on to pyarrow."""
        if number == 1 and line.startswith(BOM):
            line = line[len(BOM):]
        if is_blank(line) or not self._header:
            self._header = self._header or not is_blank(line)
            self.dropped.append(number)
            return b""
        plain = b'"' not in line and b"\x00" not in line
        fields = split(line)
        if fields is None or len(fields) != self.fields:
            rule = Rule.FIELD_COUNT if _utf8(line) else Rule.ENCODING
            self.broken.append((number, rule, show(line)))
            self.dropped.append(number)
            return b""
        return line if plain else _canonical(fields)

    def dropped_between(self, first: int, last: int) -> list[int]:
        """The dropped lines from ``first`` to ``last``."""
        return self.dropped[bisect.bisect_left(self.dropped, first):bisect.bisect_right(self.dropped, last)]


def skip(row: pacsv.InvalidRow) -> str:
    """pyarrow's handler for a row with a wrong field count (``invalid_row_handler``) wherever the rows are
    read as bytes (the diagnostic read, the duplicate keys' pass): skip it."""
    return "skip"


class SkippedRows:
    """``skip``, remembering each skipped row's line and text: for a read on one thread (pyarrow numbers
    the rows only there), which reports them and numbers the rows after them."""

    def __init__(self) -> None:
        self.new: list[tuple[int, str]] = []  # since the last take()
        self.lines: list[int] = []  # every skipped line so far, sorted

    def __call__(self, row: pacsv.InvalidRow) -> str:
        self.new.append((row.number, row.text))
        bisect.insort(self.lines, row.number)
        return skip(row)

    def take(self) -> list[tuple[int, str]]:
        new, self.new = self.new, []
        return new


def show(raw: bytes) -> str:
    """Bytes as text for a report: invalid UTF-8 as replacement characters (NUL bytes are escaped where
    reports are made: etl_core/reading/violations.py)."""
    return raw.decode("utf-8", "replace")
