"""The sharded path's staging in PostgreSQL (etl_core/shards.py, docs/scale.md): each shard's partial
counts and what it read, replaced in one transaction; the reduce's SQL; the batch dropped once published.
The tables are migration step 2's (``etl_core.store.migrations``)."""

from __future__ import annotations

import io
import json
from typing import Any

from pg8000.native import literal

from etl_core.config import DbSettings
from etl_core.store import db as dbmod
from etl_core.store.migrations import SHARD_COUNTS, SHARDS
from etl_core.store.sql import q
from etl_core.tables import ETL_SHARD_COUNTS

SHARD_COLUMNS = ("shard", "shards", "identity", "first_byte", "end_byte", "rows_read", "rows_rejected",
                 "experiments", "first_experiment_id", "last_experiment_id", "increasing", "violations")


def replace_shard(settings: DbSettings, schema: str, batch: str, record: dict[str, Any], counts_csv: bytes) -> None:
    """One shard's partial counts (CSV rows of etl_shard_counts' columns, as etl_core/tables.py describes
    them: batch, shard, user_id, compound_id, n) and its record (SHARD_COLUMNS), in place of any earlier
    count of the same shard, in one transaction."""
    conn = dbmod.connect(settings)
    try:
        conn.run("BEGIN")
        for table in (SHARD_COUNTS, SHARDS):
            conn.run(f"DELETE FROM {q(schema, table)} WHERE batch = :b AND shard = :s", b=batch, s=record["shard"])
        conn.run(f"COPY {q(schema, SHARD_COUNTS)} ({', '.join(ETL_SHARD_COUNTS.names)}) FROM STDIN "
                 "WITH (FORMAT csv)", stream=[counts_csv])
        names = ", ".join(SHARD_COLUMNS)
        values = ", ".join(f"CAST(:{c} AS jsonb)" if c == "violations" else f":{c}" for c in SHARD_COLUMNS)
        conn.run(f"INSERT INTO {q(schema, SHARDS)} (batch, {names}) VALUES (:batch, {values})", batch=batch,
                 **{**record, "violations": json.dumps(record["violations"], default=str)})
        conn.run("COMMIT")
    finally:
        dbmod.close_quietly(conn)


def shard_records(settings: DbSettings, schema: str, batch: str) -> list[dict[str, Any]]:
    """The batch's shard records, by shard."""
    conn = dbmod.connect(settings)
    try:
        rows = conn.run(f"SELECT {', '.join(SHARD_COLUMNS)} FROM {q(schema, SHARDS)} WHERE batch = :b ORDER BY shard",
                        b=batch)
    finally:
        dbmod.close_quietly(conn)
    return [dict(zip(SHARD_COLUMNS, row, strict=True)) for row in rows]


def reduce_sql(schema: str, batch: str) -> str:
    """The features of a batch, one CSV row per user of the reduce's users table, by user id: the partial
    counts summed per (user, compound), each user's largest sum, the compounds tied at it (by compound id,
    their names joined with ';'), the user's experiments.  COPY takes no parameters: the batch is quoted."""
    counts = q(schema, SHARD_COUNTS)
    b = literal(batch)
    return f"""COPY (
        WITH pairs AS (
            SELECT user_id, compound_id, sum(n) AS n FROM {counts}
            WHERE batch = {b} AND compound_id IS NOT NULL GROUP BY user_id, compound_id
        ), totals AS (
            SELECT user_id, sum(n) AS total FROM {counts}
            WHERE batch = {b} AND compound_id IS NULL GROUP BY user_id
        ), ranked AS (
            SELECT user_id, compound_id, n, max(n) OVER (PARTITION BY user_id) AS top FROM pairs
        ), ties AS (
            SELECT r.user_id, string_agg(c.name, ';' ORDER BY r.compound_id) AS names,
                   string_agg(r.compound_id::text, ';' ORDER BY r.compound_id) AS ids
            FROM ranked r JOIN etl_reduce_compounds c USING (compound_id)
            WHERE r.n = r.top GROUP BY r.user_id
        )
        SELECT u.user_id, u.name, coalesce(t.total, 0), ties.names, ties.ids
        FROM etl_reduce_users u LEFT JOIN totals t USING (user_id) LEFT JOIN ties USING (user_id)
        ORDER BY u.user_id
    ) TO STDOUT WITH (FORMAT csv)"""


def reduced(settings: DbSettings, schema: str, batch: str, users_csv: bytes, compounds_csv: bytes) -> bytes:
    """The batch's features as CSV rows (user_id, name, experiments, tied names, tied ids joined by ';'),
    for the users (user_id, name) and compounds (compound_id, name) given as CSV rows."""
    conn = dbmod.connect(settings)
    try:
        conn.run("CREATE TEMP TABLE etl_reduce_users (user_id bigint, name text)")
        conn.run("CREATE TEMP TABLE etl_reduce_compounds (compound_id bigint, name text)")
        conn.run("COPY etl_reduce_users FROM STDIN WITH (FORMAT csv)", stream=[users_csv])
        conn.run("COPY etl_reduce_compounds FROM STDIN WITH (FORMAT csv)", stream=[compounds_csv])
        out = io.BytesIO()
        conn.run(reduce_sql(schema, batch), stream=out)
    finally:
        dbmod.close_quietly(conn)  # the temporary tables go with the session
    return out.getvalue()


def drop_batch(settings: DbSettings, schema: str, batch: str) -> None:
    """The batch's staging rows: once published, and when a batch of its name is planned again."""
    conn = dbmod.connect(settings)
    try:
        for table in (SHARD_COUNTS, SHARDS):
            conn.run(f"DELETE FROM {q(schema, table)} WHERE batch = :b", b=batch)
    finally:
        dbmod.close_quietly(conn)
