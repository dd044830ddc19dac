"""Writes to PostgreSQL: the runs table, and the features replaced inside one transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pg8000.native import identifier

from etl_core import sql
from etl_core.db import Connection, translate
from etl_core.errors import EtlError, RunInProgress
from etl_core.guard import Volume

ROWS_PER_CHUNK = 1 << 12  # rows per CopyData message (about 640 kB of features)


def ensure_schema(conn: Connection, schema: str) -> None:
    # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists:
    # look first, so that a role with rights on its schema only (README, Security) is enough
    if not conn.run("SELECT 1 FROM pg_namespace WHERE nspname = :name", name=schema):
        conn.run(f"CREATE SCHEMA {identifier(schema)}")
    for statement in sql.create_tables(schema):
        conn.run(statement)


def acquire_lock(conn: Connection, schema: str) -> None:
    """Take the job's session-level advisory lock, or raise RunInProgress naming the running run."""
    [[got]] = conn.run("SELECT pg_try_advisory_lock(hashtext(:name))", name=sql.lock_name(schema))
    if got:
        return
    running = None
    try:
        rows = conn.run(f"SELECT max(id) FROM {sql.q(schema, sql.RUNS)} WHERE status = 'running'")
        running = rows[0][0] if rows else None
    except Exception:  # noqa: BLE001,S110 - the runs table may not exist yet; the refusal stands anyway
        pass
    raise RunInProgress("another run holds the ETL lock; try again when it has finished", running_run_id=running)


def release_lock(conn: Connection, schema: str) -> None:
    conn.run("SELECT pg_advisory_unlock(hashtext(:name))", name=sql.lock_name(schema))


def fail_abandoned_runs(conn: Connection, schema: str) -> None:
    """Runs still 'running' while we hold the lock were cut off (their connection died): mark them."""
    conn.run(
        f"UPDATE {sql.q(schema, sql.RUNS)} SET status = 'failed', finished_at = clock_timestamp(), "
        "error = CAST(:error AS jsonb) WHERE status = 'running'",
        error=json.dumps({"type": "Abandoned", "code": "abandoned",
                          "message": "the run stopped before it finished (connection or process lost)"}),
    )


def start_run(conn: Connection, schema: str, *, policy: str, data_dir: str) -> int:
    [[run_id]] = conn.run(
        f"INSERT INTO {sql.q(schema, sql.RUNS)} (status, policy, data_dir) VALUES ('running', :policy, :dir) "
        "RETURNING id",
        policy=policy, dir=data_dir,
    )
    return int(run_id)


def finish_run(conn: Connection, schema: str, run_id: int, *, status: str, files: Any = None,
               users_written: int | None = None, seconds: Any = None, error: Any = None) -> None:
    conn.run(
        f"UPDATE {sql.q(schema, sql.RUNS)} SET status = :status, finished_at = clock_timestamp(), "
        "files = CAST(:files AS jsonb), users_written = :written, seconds = CAST(:seconds AS jsonb), "
        "error = CAST(:error AS jsonb) WHERE id = :id",
        status=status, files=_json(files), written=users_written, seconds=_json(seconds),
        error=_json(error), id=run_id,
    )


def record_seconds(conn: Connection, schema: str, run_id: int, seconds: Any) -> None:
    conn.run(f"UPDATE {sql.q(schema, sql.RUNS)} SET seconds = CAST(:seconds AS jsonb) WHERE id = :id",
             seconds=_json(seconds), id=run_id)


def get_run(conn: Connection, schema: str, run_id: int) -> dict[str, Any] | None:
    try:
        rows = conn.run(
            f"SELECT id, status, policy, data_dir, started_at, finished_at, files, users_written, seconds, error, "
            f"(SELECT count(*) FROM {sql.q(schema, sql.REJECTS)} r WHERE r.run_id = runs.id) "
            f"FROM {sql.q(schema, sql.RUNS)} runs WHERE id = :id",
            id=run_id,
        )
    except Exception as exc:
        err = translate(exc)
        if err.details.get("sqlstate") in ("42P01", "3F000"):  # no runs table (or schema) yet
            return None
        raise err from exc
    if not rows:
        return None
    (id_, status, policy, data_dir, started, finished, files, written, seconds, error, rejects) = rows[0]
    return {
        "run_id": id_, "status": status, "policy": policy, "data_dir": data_dir,
        "started_at": started.isoformat() if started else None,
        "finished_at": finished.isoformat() if finished else None,
        "files": files, "users_written": written, "seconds": seconds, "error": error, "rejects": rejects,
    }


class Transaction:
    """The statements of one transaction; a COPY remembers an error raised while making its rows
    (the database's errors come later, from pg8000, and are not that one)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._streams: list[_Stream] = []

    def run(self, statement: str, **params: Any) -> list[list[Any]]:
        return self.conn.run(statement, **params)

    def copy(self, statement: str, chunks: Iterable[memoryview]) -> None:
        self._streams.append(stream := _Stream(chunks))
        self.conn.run(statement, stream=stream)

    def raised_by_rows(self, exc: BaseException) -> bool:
        return any(exc is stream.error for stream in self._streams)


@contextmanager
def transaction(conn: Connection) -> Iterator[Transaction]:
    """Commit when the block ends, else roll all of it back and raise: an error of the database as
    one of ours, an error raised while making a COPY's rows as it is (mid-COPY the protocol cannot
    go on, so the session is closed, which rolls back on the server)."""
    tx = Transaction(conn)
    conn.run("BEGIN")
    try:
        yield tx
        conn.run("COMMIT")
    except BaseException as exc:
        ours = tx.raised_by_rows(exc)
        if ours:
            _close(conn)
        else:
            _rollback(conn)
        if ours or isinstance(exc, EtlError) or not isinstance(exc, Exception):
            raise
        raise translate(exc) from exc


def lock_features(tx: Transaction, schema: str) -> Volume:
    """Lock the features table against new foreign keys (not against readers); what it holds now."""
    tx.run(sql.lock_features(schema))
    [[users, experiments]] = tx.run(sql.features_volume(schema))
    return Volume(users=int(users), experiments=int(experiments))


def replace_features(tx: Transaction, schema: str, run_id: int, features: Iterable[pa.RecordBatch]) -> int:
    """Make the features table hold exactly ``features``, keeping the table itself (its OID, views,
    grants, comment, indexes and triggers); return the rows written.  Plain DML under MVCC: readers
    see the old rows until the commit and never wait.  Where other tables hold foreign keys on it,
    users that stay are updated in place and only users that are gone are deleted."""
    rows = [0]

    def counted(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
        for batch in batches:
            rows[0] += batch.num_rows
            yield _features_rows(batch, run_id)

    chunks = _csv_chunks(counted(features))
    if tx.run(sql.referencing_keys(), table=sql.q(schema, sql.FEATURES)):
        tx.run(sql.create_staging())
        tx.copy(sql.copy_in("pg_temp", sql.STAGING, sql.FEATURE_COLUMNS), chunks)
        tx.run(sql.delete_missing(schema))
        tx.run(sql.upsert_staging(schema))
    else:
        tx.run(sql.delete_all(schema))
        tx.copy(sql.copy_in(schema, sql.FEATURES, sql.FEATURE_COLUMNS), chunks)
    return rows[0]


def store_rejects(tx: Transaction, schema: str, run_id: int, rejects: pa.Table) -> None:
    if rejects.num_rows:
        tx.copy(sql.copy_in(schema, sql.REJECTS, sql.REJECT_COLUMNS), _csv_chunks([_reject_rows(rejects, run_id)]))


def analyze(conn: Connection, schema: str) -> None:
    """Fresh planner statistics for the features table (after the commit: it blocks no reader)."""
    conn.run(sql.analyze(schema))


class _Stream:
    """A COPY's data, remembering an error raised while making it."""

    def __init__(self, chunks: Iterable[memoryview]) -> None:
        self._chunks = chunks
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[memoryview]:
        try:
            yield from self._chunks
        except BaseException as exc:
            self.error = exc
            raise


def _close(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001,S110 - the server ends the session either way
        pass


def _rollback(conn: Connection) -> None:
    try:
        conn.run("ROLLBACK")
    except Exception:  # noqa: BLE001,S110 - a dead connection has rolled back on the server already
        pass


def _features_rows(features: pa.RecordBatch, run_id: int) -> pa.Table:
    ids = features["most_common_compound_ids"]
    # bigint[] in COPY's text form: {1,2}; NULL stays NULL
    as_text = pc.binary_join(pc.cast(ids, pa.list_(pa.string())), ",")
    array_literal = pc.binary_join_element_wise("{", as_text, "}", "")
    return pa.table({
        "user_id": features["user_id"],
        "user_name": features["user_name"],
        "total_experiments": features["total_experiments"],
        "most_common_compounds": features["most_common_compounds"],
        "most_common_compound_ids": array_literal,
        "average_experiments": features["average_experiments"],
        "run_id": pa.repeat(pa.scalar(run_id, pa.int64()), features.num_rows),
    })


def _reject_rows(rejects: pa.Table, run_id: int) -> pa.Table:
    return pa.table({
        "run_id": pa.repeat(pa.scalar(run_id, pa.int64()), rejects.num_rows),
        "file": rejects["file"],
        "line": rejects["line"],
        "column_name": rejects["column"],
        "value": rejects["value"],
        "rule": rejects["rule"],
        "raw": rejects["raw"],
    })


def _csv_chunks(tables: Iterable[pa.Table]) -> Iterator[memoryview]:
    """The tables as PostgreSQL CSV (strings quoted, NULL unquoted-empty), ROWS_PER_CHUNK rows at a
    time, each made only when the previous one is sent: the server parses one while we format the next."""
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    for table in tables:
        for batch in table.to_batches(max_chunksize=ROWS_PER_CHUNK):
            if batch.num_rows:  # pyarrow 26 writes 8 KiB of NUL bytes for an empty batch
                sink = pa.BufferOutputStream()
                pacsv.write_csv(batch, sink, write_options=options)
                yield memoryview(sink.getvalue())


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)
