"""The features in PostgreSQL's binary COPY format, laid out by pgpq (Arrow to binary COPY).  Pure: no I/O.

A row is the features table's columns as ``tables.USER_FEATURES`` describes them, in that order:
each column's Arrow type must be one pgpq lays out as its PostgreSQL type, among ``BINARY_FORMS``,
the pairs tests/test_copy_binary.py has loaded into the server and read back (``fits``; where a
column is of another pair, the store loads with CSV COPY instead).  Each field is its length (int32,
-1 for NULL) then its bytes, big-endian; pgpq lays each one out from its Arrow type, in Rust: int64
as bigint, string as text, float64 as double precision, list<int64> as bigint[] (one dimension,
lower bound 1, elements of type int8).  The
run's id is a column of its own, the one value repeated, wherever the table has it.

Until issue 26 this module was an encoder of our own, made of pyarrow gathers; bench/libraries.py
keeps it as the reference (from git) and shows pgpq's bytes to be the same, byte for byte, at the
corners and at M and L, and pgpq faster at both (bench/README.md, "Libraries against what is
written by hand").
"""

from __future__ import annotations

import pyarrow as pa
from pgpq import ArrowToPostgresBinaryEncoder

from etl_core import literals
from etl_core.tables import USER_FEATURES, Table

# the Arrow types pgpq lays out as these PostgreSQL types, NULLs included, as the tests have checked against
# the server
BINARY_FORMS = frozenset({(pa.int64(), "bigint"), (pa.string(), "text"), (pa.float64(), "double precision"),
                          (pa.list_(pa.int64()), "bigint[]")})


def fits(table: Table) -> bool:
    """Whether every column of ``table`` is of a pair this encoder lays out (in the table's order)."""
    return all((c.arrow, c.sql) in BINARY_FORMS for c in table.columns)


HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")  # no flags, no extension
TRAILER = (-1).to_bytes(2, "big", signed=True)

_SCHEMA = USER_FEATURES.arrow_schema()  # the table's columns: the features' and the run's id, each found by name
_I64 = pa.int64()


def rows(features: pa.RecordBatch, run_id: int) -> memoryview:
    """The rows of ``features`` (transform.FEATURES_SCHEMA) in binary COPY's tuple format, one after
    the other."""
    if not features.num_rows:
        return memoryview(b"")
    run = literals.repeat(run_id, _I64, features.num_rows)
    batch = pa.RecordBatch.from_arrays([run if f.name == "run_id" else features.column(f.name) for f in _SCHEMA],
                                       schema=_SCHEMA)
    encoder = ArrowToPostgresBinaryEncoder(_SCHEMA)  # made per chunk: it keeps what it was given until finish
    encoder.write_header()
    data = encoder.write_batch(batch) + encoder.finish()
    return memoryview(data)[:-len(TRAILER)]


def one_blob_row(run_id: int, algorithm: int, users: int, blob: bytes) -> list[memoryview]:
    """One row of (bigint, integer, bigint, bytea) in binary COPY, header and trailer included: the
    digests' row (etl_feature_digests), sent as it is rather than as hex text."""
    parts = [HEADER, (4).to_bytes(2, "big"),
             (8).to_bytes(4, "big"), run_id.to_bytes(8, "big", signed=True),
             (4).to_bytes(4, "big"), algorithm.to_bytes(4, "big", signed=True),
             (8).to_bytes(4, "big"), users.to_bytes(8, "big", signed=True),
             len(blob).to_bytes(4, "big"), blob, TRAILER]
    return [memoryview(part) for part in parts]


def single_field(data: bytes) -> bytes | None:
    """The one field of the one row of a binary ``COPY ... TO STDOUT`` (None: no row, or NULL)."""
    if not data.startswith(HEADER[:11]):
        raise ValueError("not binary COPY data")
    extension = int.from_bytes(data[15:19], "big")
    at = 19 + extension
    if int.from_bytes(data[at:at + 2], "big", signed=True) != 1:  # the trailer (-1): no row
        return None
    length = int.from_bytes(data[at + 2:at + 6], "big", signed=True)
    return None if length < 0 else data[at + 6:at + 6 + length]
