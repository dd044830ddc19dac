"""What the diagnostic path does to rows that pyarrow's CSV reader cannot hand over as they are.

* Lines that are not UTF-8 and have a wrong field count: pyarrow cannot pass such a row to an
  invalid-row handler, so ``Repaired`` blanks each of them in the stream as it is read (keeping its
  line break, so that every line number stays) and remembers it.
* Rows that pyarrow split wrongly because a quoted field follows whitespace (``1,\\t"Bob, Jr.",...``):
  ``recover`` parses them again, allowing whitespace before the quote.
"""

from __future__ import annotations

import csv
import re

import pyarrow as pa

_SPACE_BEFORE_QUOTE = re.compile(r'(?:(?<=,)|^)[ \t]+(?=")')


class Repaired:
    """A stream of ``raw`` with each line that is not UTF-8 and has a wrong field count blanked; those
    lines are in ``undecodable`` as (line, text) once the stream is read.  A line that is not UTF-8
    but has the right field count stays: the diagnostic path names its column."""

    def __init__(self, raw: pa.NativeFile, fields: int) -> None:
        self.fields = fields
        self.undecodable: list[tuple[int, str]] = []
        self.stream = pa.TransformInputStream(raw, self._transform)
        self._lines = 0  # lines passed on so far
        self._pending: list[bytes] = []  # the start of an unfinished line

    def _transform(self, buf: pa.Buffer) -> pa.Buffer:
        """Pass on the complete lines read so far (and at the end, signalled by an empty buffer, the rest)."""
        chunk = buf.to_pybytes()
        end = chunk.rfind(b"\n") + 1 if chunk else 0
        if chunk and not end:
            self._pending.append(chunk)
            return pa.py_buffer(b"")
        data = b"".join([*self._pending, chunk[:end]])
        self._pending = [chunk[end:]]
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            data = b"\n".join(self._line(self._lines + i, line) for i, line in enumerate(data.split(b"\n"), 1))
        self._lines += data.count(b"\n")
        return pa.py_buffer(data)

    def _line(self, number: int, line: bytes) -> bytes:
        """``line`` (without its \\n) as passed on: only its trailing \\r if it is not UTF-8 and has a
        wrong field count (the header, line 1, always stays)."""
        try:
            line.decode("utf-8")
            return line
        except UnicodeDecodeError:
            pass
        body = line.rstrip(b"\r")
        text = body.decode("utf-8", "replace")
        if number == 1 or _field_count(text) == self.fields:
            return line
        self.undecodable.append((number, text))
        return line[len(body):]


def recover(rows: list[tuple[int, str]], fields: int) -> tuple[list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """Rows (line, text) with a wrong field count, parsed again allowing whitespace before a quote:
    (line, fields) of those that now have ``fields`` fields, and (line, text) of the others."""
    good: list[tuple[int, list[str]]] = []
    bad: list[tuple[int, str]] = []
    for number, text in rows:
        try:
            parsed = next(csv.reader([_SPACE_BEFORE_QUOTE.sub("", text)]), [])
        except csv.Error:
            parsed = []
        if len(parsed) == fields:
            good.append((number, parsed))
        else:
            bad.append((number, text))
    return good, bad


def _field_count(text: str) -> int:
    try:
        return len(next(csv.reader([text]), []))
    except csv.Error:
        return -1
