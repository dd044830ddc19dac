"""Violation rows: the one place they are built, and the error that carries a whole file's problem.

Every report of the extract step (file, line, column, value, rule, raw row) is a table of
``VIOLATION_SCHEMA`` made by ``rows``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from etl_core.contract import FileContract, Rule
from etl_core.errors import shorten

VIOLATION_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("line", pa.int64()),
        ("column", pa.string()),
        ("value", pa.string()),
        ("rule", pa.string()),
        ("raw", pa.string()),
    ]
)

REPORTED_CHARS = 200  # characters of a reported row's raw text and value; the rest is counted, not sent

Lines: TypeAlias = "pa.Array | Sequence[int | None]"
Texts: TypeAlias = "pa.Array | Sequence[str | None]"


def rows(filename: str, rule: Rule, lines: Lines, *, column: str | None = None,
         values: Texts | None = None, raws: Texts | None = None) -> pa.Table:
    """One violation of ``rule`` per entry of ``lines``, all in ``filename`` and ``column``; ``values``
    and ``raws`` (the offending value, the row as read) line up with ``lines``, or are all null."""
    n = len(lines)
    return pa.table({
        "file": pa.repeat(pa.scalar(filename, pa.string()), n),
        "line": pa.array(lines, pa.int64()),
        "column": pa.repeat(pa.scalar(visible(column), pa.string()), n),
        "value": pa.nulls(n, pa.string()) if values is None else _visible(pa.array(values, pa.string())),
        "rule": pa.repeat(pa.scalar(rule.value, pa.string()), n),
        "raw": pa.nulls(n, pa.string()) if raws is None else _visible(pa.array(raws, pa.string())),
    }, schema=VIOLATION_SCHEMA)


NUL_SHOWN = "\\x00"  # how a NUL byte appears in a report: PostgreSQL stores none in text or jsonb


def visible(text: str | None) -> str | None:
    """``text`` as a report shows it: each NUL byte written as the four characters ``\\x00``."""
    return None if text is None else text.replace("\x00", NUL_SHOWN)


def _visible(texts: pa.Array) -> pa.Array:
    return pc.replace_substring(texts, "\x00", NUL_SHOWN)


def without_raw(violations: pa.Table) -> pa.Table:
    """The violations without the rows they rejected and the offending values (ETL_REJECTS_KEEP_RAW=false):
    file, line, column and rule stay, and ``raw_sha256`` holds each row's SHA-256 (hex, of its UTF-8
    text; null where there was no row), so that the same bad row can still be recognised.  PostgreSQL
    gives the same digest of a row that was kept: ``encode(sha256(convert_to(raw, 'UTF8')), 'hex')``."""
    # hashlib has no vector form and Arrow no SHA-256 kernel: one call per rejected row (rejects only)
    digests = [None if raw is None else hashlib.sha256(raw.encode()).hexdigest()
               for raw in violations["raw"].to_pylist()]
    n = violations.num_rows
    return (violations.set_column(violations.schema.get_field_index("value"), "value", pa.nulls(n, pa.string()))
            .set_column(violations.schema.get_field_index("raw"), "raw", pa.nulls(n, pa.string()))
            .append_column("raw_sha256", pa.array(digests, pa.string())))


class FileProblem(Exception):
    """Raise when a whole file is unusable (missing, empty, bad header); carries its one violation."""

    def __init__(self, contract: FileContract, rule: Rule, *, line: int | None = None,
                 column: str | None = None, value: str | None = None) -> None:
        super().__init__(f"{contract.filename}: {rule.value}")
        self.table = rows(contract.filename, rule, [line], column=column, values=[value])

    @property
    def violation(self) -> dict[str, object]:
        """The violation as a dict (the keys of ``VIOLATION_SCHEMA``)."""
        row: dict[str, object] = self.table.to_pylist()[0]
        return row


def report(violations: pa.Table, limit: int) -> dict[str, Any]:
    """The total and the first ``limit`` violations, each row's raw text and value cut to REPORTED_CHARS
    characters (a line may be megabytes long; an answer must stay small)."""
    first = [{**row, "raw": _cut(row["raw"]), "value": _cut(row["value"])}
             for row in violations.slice(0, limit).to_pylist()]
    return {"total": violations.num_rows, "first": first}


def _cut(text: str | None) -> str | None:
    return None if text is None else shorten(text, REPORTED_CHARS)
