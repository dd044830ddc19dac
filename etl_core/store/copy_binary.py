"""The features in PostgreSQL's binary COPY format, laid out by pgpq (Arrow to binary COPY).  Pure: no I/O.

A row of the features table is 7 fields, in the order of ``LAYOUT``, which must be the table's as
``tables.USER_FEATURES`` describes it (``fits``; the store falls back to CSV COPY where it is not,
and a quick test fails until ``LAYOUT`` names the new columns too, once tests/test_copy_binary.py,
which loads the rows with the COPY statement of that column list, has shown that the server reads
them back).  Each field is its length (int32, -1 for NULL) then its bytes, big-endian; pgpq lays
each one out from its Arrow type, in Rust: int64 as bigint, string as text, float64 as double
precision, list<int64> as bigint[] (one dimension, lower bound 1, elements of type int8).  The
run's id is a column of its own, the one value repeated.

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

# the columns whose binary form the tests have checked against the server: name, type, whether NULL may occur
LAYOUT = (("user_id", "bigint", False), ("user_name", "text", False), ("total_experiments", "bigint", False),
          ("most_common_compounds", "text", True), ("most_common_compound_ids", "bigint[]", True),
          ("average_experiments", "double precision", False), ("run_id", "bigint", False))


def fits(table: Table) -> bool:
    """Whether ``table``'s columns are the ones this encoder lays out, in its order."""
    return tuple((c.name, c.sql, c.nullable) for c in table.columns) == LAYOUT


HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")  # no flags, no extension
TRAILER = (-1).to_bytes(2, "big", signed=True)

_SCHEMA = USER_FEATURES.arrow_schema()  # the features, then the run's id
_I64 = pa.int64()


def rows(features: pa.RecordBatch, run_id: int) -> memoryview:
    """The rows of ``features`` (transform.FEATURES_SCHEMA) in binary COPY's tuple format, one after
    the other."""
    if not features.num_rows:
        return memoryview(b"")
    batch = pa.RecordBatch.from_arrays([*features.columns, literals.repeat(run_id, _I64, features.num_rows)],
                                       schema=_SCHEMA)
    encoder = ArrowToPostgresBinaryEncoder(_SCHEMA)  # made per chunk: it keeps what it was given until finish
    encoder.write_header()
    data = encoder.write_batch(batch) + encoder.finish()
    return memoryview(data)[:-len(TRAILER)]
