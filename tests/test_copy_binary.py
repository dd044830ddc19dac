"""The binary COPY form of the features, read back by the server: PostgreSQL's own parser is the oracle.

Each example is loaded with binary COPY into a temporary table of the features' types and must come
back value for value: NULL texts and arrays, empty lists, texts of any Unicode, ids of any size,
sliced batches (an array's offset is not 0), one row and many.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_core.features import kernels as transform
from etl_core.store import copy_binary, sql

INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
FLOAT = st.floats(allow_nan=False, allow_infinity=True, width=64)
ROW = st.tuples(INT64, TEXT, INT64, st.none() | TEXT, st.none() | st.lists(INT64, max_size=30), FLOAT)


@pytest.fixture
def temp_table(db: Any) -> str:
    db.run(sql.features_table("pg_temp", "binary_form"))
    return "pg_temp.binary_form"


def copied(db: Any, table: str, batch: pa.RecordBatch, run_id: int) -> list[tuple[Any, ...]]:
    """``batch`` sent as binary COPY (in two chunks when it has two rows or more), read back."""
    db.run(f"TRUNCATE {table}")
    half = batch.num_rows // 2
    chunks = [copy_binary.HEADER, *(copy_binary.rows(part, run_id) for part in (batch.slice(0, half),
              batch.slice(half)) if part.num_rows), copy_binary.TRAILER]
    db.run(sql.copy_in("pg_temp", "binary_form", sql.FEATURE_COLUMNS, binary=True), stream=chunks)
    rows = db.run(f"SELECT {', '.join(sql.FEATURE_COLUMNS)} FROM {table} ORDER BY ctid")
    return [tuple(row) for row in rows]


def batch_of(rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(transform.FEATURES_SCHEMA)
    return pa.RecordBatch.from_arrays([pa.array(list(c), f.type) for c, f in zip(columns, transform.FEATURES_SCHEMA,
                                                                                   strict=True)],
                                      schema=transform.FEATURES_SCHEMA)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=25), before=st.integers(0, 3), run_id=st.integers(1, 2**62))
def test_every_value_comes_back_as_it_was_sent(db: Any, temp_table: str, rows: list[tuple[Any, ...]], before: int,
                                               run_id: int) -> None:
    # rows in front that are sliced away: the batch's arrays start at an offset
    padding = [(0, "pad", 0, None, [1, 2], 0.0)] * before
    batch = batch_of(padding + rows).slice(before)
    expected = [(*row, run_id) for row in rows]
    assert copied(db, temp_table, batch, run_id) == expected


def test_a_chunk_of_thousands_of_rows_and_a_long_list(db: Any, temp_table: str) -> None:
    rows = [(i, f"user {i} ✓", i * 3, None if i % 7 == 0 else f"c{i}", None if i % 7 == 0 else [i, -i],
             i / 3) for i in range(1, 5000)]
    rows[123] = (124, "many ties", 1, "a;b", list(range(100_000)), 1.0)
    assert copied(db, temp_table, batch_of(rows), 9) == [(*row, 9) for row in rows]


def test_a_batch_of_no_rows_is_no_bytes() -> None:
    assert bytes(copy_binary.rows(batch_of([]), 1)) == b""


@pytest.mark.unit
def test_the_encoder_lays_out_the_features_table_as_described() -> None:
    """The encoder lays out whatever the table's description says, as long as each column is of a type
    pair the tests have checked against the server; a column of another pair turns the binary path off
    (the load then uses CSV COPY): this test says so."""
    from etl_core.tables import USER_FEATURES, Column

    assert copy_binary.fits(USER_FEATURES), (
        "a column of etl_core/tables.py USER_FEATURES is of a type pair outside copy_binary.BINARY_FORMS: loads "
        "fall back to CSV COPY; check the pair against the server here and add it")
    grown = dataclasses.replace(USER_FEATURES, columns=(
        *USER_FEATURES.columns, Column("mean_run_time", pa.float64(), "double precision", "", nullable=True)))
    assert copy_binary.fits(grown)  # a nullable double: a pair already checked
    odd = dataclasses.replace(USER_FEATURES, columns=(*USER_FEATURES.columns,
                                                      Column("flag", pa.bool_(), "boolean", "")))
    assert not copy_binary.fits(odd)


@pytest.mark.unit
def test_pgpq_frames_a_stream_as_the_store_does() -> None:
    """The store sends its own header and trailer around the rows, and ``rows`` cuts pgpq's trailer
    off each chunk by its length: both must be pgpq's own (an upgrade that changes them fails here)."""
    from pgpq import ArrowToPostgresBinaryEncoder

    from etl_core.tables import USER_FEATURES

    encoder = ArrowToPostgresBinaryEncoder(USER_FEATURES.arrow_schema())
    assert encoder.write_header() == copy_binary.HEADER
    assert encoder.finish() == copy_binary.TRAILER
    one = bytes(copy_binary.rows(batch_of([(1, "a", 2, None, None, 0.5)]), 3))
    assert one.startswith((7).to_bytes(2, "big")) and one.endswith((3).to_bytes(8, "big"))


@pytest.mark.parametrize(("arrow", "sql", "values"), [
    (pa.int64(), "bigint", [1, None, -(2**63), 2**63 - 1]),
    (pa.string(), "text", ["a", None, "", "ünï ✓"]),
    (pa.float64(), "double precision", [0.5, None, -0.0, float("inf")]),
    (pa.list_(pa.int64()), "bigint[]", [[1, 2], None, [], [2**62]]),
])
def test_every_binary_form_reads_back_with_its_nulls(db: Any, arrow: pa.DataType, sql: str, values: list[Any]) -> None:
    """Each pair in copy_binary.BINARY_FORMS, NULLs included, as the server reads pgpq's bytes."""
    from pgpq import ArrowToPostgresBinaryEncoder

    assert (arrow, sql) in copy_binary.BINARY_FORMS
    schema = pa.schema([pa.field("v", arrow, nullable=True)])
    encoder = ArrowToPostgresBinaryEncoder(schema)
    data = encoder.write_header() + encoder.write_batch(pa.record_batch([pa.array(values, arrow)], schema=schema))
    data += encoder.finish()
    db.run(f"CREATE TEMPORARY TABLE binary_form_{abs(hash(sql))} (v {sql})")
    db.run(f"COPY binary_form_{abs(hash(sql))} (v) FROM STDIN WITH (FORMAT binary)", stream=[bytes(data)])
    assert [row[0] for row in db.run(f"SELECT v FROM binary_form_{abs(hash(sql))} ORDER BY ctid")] == values
