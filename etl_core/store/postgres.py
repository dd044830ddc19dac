"""The PostgreSQL store: the one owner of the database.

It opens and reuses the connection, takes the job's advisory lock, keeps the runs ledger
(``etl_runs``, ``etl_rejects``) and publishes the features (``user_features``) in one transaction.
pg8000's errors become ours here and nowhere else (``_translated``).

Publishing keeps the table: it is written only with DML, so its OID, views, grants, comment,
indexes and triggers survive, and readers (who take ACCESS SHARE) never wait for a run (which takes
ROW EXCLUSIVE).  Where other tables hold foreign keys on it, users that stay are updated in place and
only users that are gone are deleted.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl_core import literals
from etl_core.config import DbSettings, RetentionSettings
from etl_core.errors import EtlError, RunInProgress, TransientLoadError
from etl_core.guard import Volume
from etl_core.logs import log_event
from etl_core.store import (
    CONFIRMING,
    LARGEST_ID,
    LOADED,
    PUBLISHED,
    LastLoaded,
    RowDigests,
    RunRecord,
    changes,
    copy_binary,
    db,
    migrations,
    sql,
)
from etl_core.store.db import Connection
from etl_core.tables import USER_FEATURES

# after a publication: ANALYZE once this share of the rows changed since the last one, VACUUM (where
# autovacuum is off) once this share is dead: autovacuum's own defaults (autovacuum_*_scale_factor)
ANALYZE_SHARE, VACUUM_SHARE = 0.1, 0.2
ROWS_PER_CHUNK = 1 << 12  # rows per CopyData message (about 640 kB of features)
DIGEST_ROWS = 1 << 14  # rows whose digests are worked out together as a first load streams
# A reload by digests compares its first LOOK_AHEAD_ROWS rows (four of L's batches) before it sends any:
# where more than REWRITE_SHARE of them (and of the users they skip) differ, every row is rewritten
# (``_replace_all``), else only the users that differ are sent (bench/README.md, round eight)
LOOK_AHEAD_ROWS = 1 << 14
REWRITE_SHARE = 0.5
# While the server moves the table's versions to the history, the rows that follow are worked out
# ahead, up to AHEAD_BYTES of them (at L, all of them)
AHEAD_BYTES = 1 << 28
# binary COPY where its encoder lays out the features table as described (else CSV, which any column list takes)
_BINARY = copy_binary.fits(USER_FEATURES)
_COMMA, _OPEN, _CLOSE, _NOTHING = (literals.scalar(text, pa.string()) for text in (",", "{", "}", ""))
_ADDED, _CHANGED = (literals.scalar(kind, pa.string()) for kind in ("a", "c"))  # the diff's kinds


@contextmanager
def _translated(publication: PostgresPublication | None = None) -> Iterator[None]:
    """The store's statements raise our errors: pg8000's are translated here, once.  An error raised
    while making a publication's COPY rows is not the database's and stays as it is."""
    try:
        yield
    except EtlError:
        raise
    except Exception as exc:
        if publication is not None and publication.raised_by_rows(exc):
            raise
        raise db.translate(exc) from exc


class PostgresStore:
    """Runs and features in one PostgreSQL schema.  One connection is kept for warm invocations and
    checked before each use (a frozen and thawed Lambda may hold a dead one); a request that finds it
    busy gets a private one."""

    def __init__(self, settings: DbSettings, schema: str) -> None:
        self.settings = settings
        self.schema = schema
        self._conn: Connection | None = None
        self._busy = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        if not self._busy.acquire(blocking=False):
            conn = db.connect(self.settings)
            try:
                yield conn
            finally:
                db.close_quietly(conn)
            return
        try:
            if self._conn is None or not db.is_alive(self._conn):
                db.close_quietly(self._conn)
                self._conn = None
                self._conn = db.connect(self.settings)
            try:
                yield self._conn
            except TransientLoadError:
                db.close_quietly(self._conn)
                self._conn = None
                raise
        finally:
            self._busy.release()

    def close(self) -> None:
        """Close the kept connection (tests, embedders; a Lambda process just ends)."""
        with self._busy:
            db.close_quietly(self._conn)
            self._conn = None

    @contextmanager
    def run(self, *, policy: str, source: str) -> Iterator[PostgresRun]:
        with self.connection() as conn:
            with _translated():
                self._lock(conn)
            try:
                with _translated():
                    self._ensure_schema(conn)
                    self._fail_abandoned(conn)
                    [[run_id, last_id, last_fingerprint]] = conn.run(sql.start_run(self.schema), policy=policy,
                                                                     source=source)
                last = None if last_id is None else LastLoaded(int(last_id), last_fingerprint)
                yield PostgresRun(self, conn, int(run_id), last)
            finally:
                try:
                    conn.run("SELECT pg_advisory_unlock(hashtext(:name))", name=sql.lock_name(self.schema))
                except Exception:  # noqa: BLE001,S110 - a dead session has released its lock already
                    pass

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        if not 1 <= run_id <= LARGEST_ID:
            return None
        rows = self._read(sql.get_run(self.schema), id=run_id)
        return _run_record(rows[0]) if rows else None

    def list_runs(self, *, limit: int, status: str | None = None, before: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status
        if before is not None:
            if before <= 1:
                return []
            params["before"] = min(before, LARGEST_ID)
        statement = sql.list_runs(self.schema, status=status is not None, before=before is not None)
        return [_run_record(row) for row in self._read(statement, **params)]

    def rejects(self, run_id: int, *, limit: int, after: int = 0, max_chars: int) -> list[dict[str, Any]]:
        if not 1 <= run_id <= LARGEST_ID or after >= LARGEST_ID:
            return []
        rows = self._read(sql.rejects_page(self.schema), id=run_id, after=max(after, 0), limit=limit,
                          chars=max_chars)
        return [{"seq": seq, "file": file, "line": line, "column": column, "value": value, "rule": rule, "raw": raw,
                 "raw_sha256": digest} for seq, file, line, column, value, rule, raw, digest in rows]

    def history_kept_from(self) -> int:
        rows = self._read(sql.history_horizon(self.schema))
        return int(rows[0][0]) if rows else 0

    def as_of(self, run_id: int, *, limit: int, after: int = 0) -> list[dict[str, Any]]:
        if not 1 <= run_id <= LARGEST_ID or after >= LARGEST_ID:
            return []
        rows = self._read(sql.as_of_page(self.schema), run=run_id, after=max(after, 0), limit=limit)
        return [dict(zip(sql.FEATURE_COLUMNS, row, strict=True)) for row in rows]

    def changes(self, run_id: int, *, limit: int, after: int = 0) -> list[dict[str, Any]]:
        if not 1 <= run_id <= LARGEST_ID or after >= LARGEST_ID:
            return []
        rows = self._read(sql.changes_page(self.schema), run=run_id, after=max(after, 0), limit=limit)
        return [_change(user_id, before, after_) for user_id, before, after_ in rows]

    def last_confirmed(self) -> dict[str, Any] | None:
        rows = self._read(sql.last_confirmed(self.schema, CONFIRMING))
        if not rows:
            return None
        run_id, status, finished, age = rows[0]
        return {"run_id": run_id, "status": status, "finished_at": finished.isoformat(),
                "age_seconds": round(float(age), 3)}

    def _read(self, statement: str, **params: Any) -> list[list[Any]]:
        """A read of the runs' tables: none yet (no table or schema) reads as no rows; the tables of a
        deployment from before versions were recorded are migrated first."""
        with self.connection() as conn, _translated():
            for attempt in range(2):
                try:
                    return conn.run(statement, **params)
                except Exception as exc:
                    code = db.sqlstate(exc)
                    if code in ("42P01", "3F000"):  # no runs table (or schema) yet
                        return []
                    if code != "42703" or attempt:  # 42703: undefined column (seq; the ledger's v2 columns)
                        raise
                    self._ensure_schema(conn)
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        with self.connection() as conn, _translated():
            rows = conn.run("SHOW server_version")
        return {"status": "ok", "database": db.describe(self.settings), "server_version": rows[0][0] if rows else None}

    def missing_grants(self) -> list[tuple[str, bool]]:
        """What the role lacks (``sql.missing_grants``), each with whether a run needs it: empty when it
        has it all."""
        statement, params = sql.missing_grants(self.schema)
        with self.connection() as conn, _translated():
            return [(str(lacking), bool(needed)) for lacking, needed in conn.run(statement, **params)]

    def _lock(self, conn: Connection) -> None:
        [[got]] = conn.run("SELECT pg_try_advisory_lock(hashtext(:name))", name=sql.lock_name(self.schema))
        if got:
            return
        running = None
        try:
            rows = conn.run(f"SELECT max(id) FROM {sql.q(self.schema, sql.RUNS)} WHERE status = 'running'")
            running = rows[0][0] if rows else None
        except Exception:  # noqa: BLE001,S110 - the runs table may not exist yet; the refusal stands anyway
            pass
        raise RunInProgress("another run holds the ETL lock; try again when it has finished", running_run_id=running)

    def _ensure_schema(self, conn: Connection) -> None:
        """One query when the schema is this release's; else the steps it lacks, each in a transaction
        of its own (``migrations``); SchemaTooNew when it is newer than this release."""
        for step in migrations.pending(self._version(conn)):
            migrations.apply_one(conn, self.schema, step, self._version)

    def _version(self, conn: Connection) -> int:
        try:
            [[found]] = conn.run(migrations.version_query(self.schema))
        except Exception as exc:
            if db.sqlstate(exc) in ("42P01", "3F000"):  # no history (or schema) yet
                return 0
            raise
        return int(found or 0)

    def migrate(self, *, apply: bool = True) -> dict[str, Any]:
        """Apply every step the schema lacks now (a DBA's command ahead of a deploy): the version before
        and after, the steps applied and those still pending."""
        with self.connection() as conn, _translated():
            before = self._version(conn)
            steps = migrations.pending(before)
            applied = [step.version for step in steps if apply
                       and migrations.apply_one(conn, self.schema, step, self._version)]
            after = self._version(conn)
            return {"schema": self.schema, "version_before": before, "version": after, "applied": applied,
                    "pending": [{"version": s.version, "description": s.description} for s in steps
                                if s.version > after],
                    "latest": migrations.LATEST}

    def _fail_abandoned(self, conn: Connection) -> None:
        """Runs still 'running' while we hold the lock were cut off (their connection died)."""
        conn.run(sql.fail_abandoned(self.schema), error=json.dumps({
            "type": "Abandoned", "code": "abandoned",
            "message": "the run stopped before it finished (connection or process lost)"}))


class PostgresRun(RunRecord):
    def __init__(self, store: PostgresStore, conn: Connection, run_id: int, last_loaded: LastLoaded | None) -> None:
        super().__init__(run_id, last_loaded)
        self._store = store
        self._conn = conn
        self._left_dead: int | None = None  # rows the committed publication left dead (None: not known)
        self._written: int | None = None  # rows it inserted, updated or deleted (None: not known)

    def unchanged(self, *, same_as: int, seconds: Any) -> None:
        with _translated():
            # as the trigger answers it: no file read, no user written
            _finish(self._conn, self._schema, self.run_id, status="unchanged", files={}, users_written=0,
                    seconds=seconds, same_as=same_as,
                    **self._inputs)

    @property
    def _schema(self) -> str:
        return self._store.schema

    @contextmanager
    def publishing(self) -> Iterator[PostgresPublication]:
        """Commit when the block ends, else roll all of it back and raise.  An error raised while
        making a COPY's rows is raised as it is; mid-COPY the protocol cannot go on, so the session is
        closed, which rolls back on the server."""
        publication = PostgresPublication(self._conn, self._schema, self.run_id, self._inputs)
        with _translated():
            self._conn.run("BEGIN")
        try:
            yield publication
            with _translated():
                self._conn.run("COMMIT")
            self._left_dead = publication.left_dead
            changes = publication.changes
            self._written = None if changes is None else changes["added"] + changes["changed"] + changes["removed"]
        except BaseException as exc:
            if publication.raised_by_rows(exc):
                db.close_quietly(self._conn)
            else:
                _rollback(self._conn)
            raise

    def fail(self, error: dict[str, Any]) -> None:
        """Mark the run failed; if our connection is gone, try a fresh one; else the next run will."""
        for attempt in range(2):
            conn = self._conn if attempt == 0 else None
            try:
                conn = conn or db.connect(self._store.settings)
                _finish(conn, self._schema, self.run_id, status="failed", error=error, **self._inputs)
                return
            except Exception:  # noqa: BLE001,S112 - the next run marks abandoned runs failed
                continue
            finally:
                if attempt == 1:
                    db.close_quietly(conn)

    def analyze(self) -> None:
        """ANALYZE when the rows changed since the last one (this publication's writes included: the
        statistics view may not count them yet) reach ANALYZE_SHARE of the table, or it never was; and
        VACUUM too where autovacuum is off (for the server or this table) and the dead rows reach
        VACUUM_SHARE, since nothing else would reclaim them: autovacuum's own default thresholds, so
        that a reload that changed 1% of the users does not pay for a pass over the whole table.
        Neither blocks readers or writers (SHARE UPDATE EXCLUSIVE), and both run after the commit."""
        table = sql.q(self._schema, sql.FEATURES)
        with _translated():
            [[autovacuum, live, dead, modified, analyzed, owned]] = self._conn.run(sql.maintenance_state(), table=table)
            if not owned:  # the server would skip both with a warning the driver drops: say so once here
                log_event("maintenance_skipped", level=logging.WARNING, table=table, autovacuum=bool(autovacuum),
                          reason="the job's role does not own the table, and only its owner may ANALYZE or VACUUM "
                                 "it: autovacuum must look after it (docs/security.md)")
                return
            rows = max(int(live or 0), 1)
            written, left_dead = self._written, self._left_dead
            stale = written is None or analyzed is None or int(modified or 0) + written >= ANALYZE_SHARE * rows
            reclaim = not autovacuum and (left_dead is None or (
                left_dead > 0 and int(dead or 0) + left_dead >= VACUUM_SHARE * rows))
            if reclaim:
                self._conn.run(f"VACUUM (ANALYZE) {table}")
            elif stale:
                self._conn.run(f"ANALYZE {table}")

    def purge(self, retention: RetentionSettings) -> dict[str, Any]:
        """Delete what is older than the retention allows, rejects first, each table in at most
        ``max_steps`` statements of at most ``step_rows`` rows, each its own transaction (row locks only:
        readers never wait).  ``backlog``: the bound stopped it, the next run goes on."""
        purged: dict[str, Any] = {"rejects": 0, "history": 0, "runs": 0, "backlog": False}
        with _translated():
            [[kept]] = self._conn.run(sql.history_target(self._schema, PUBLISHED), days=retention.history_days,
                                      runs=retention.history_runs or 0)
            if kept is not None:  # first the horizon, in its own statement: no answer relies on what goes next
                self._conn.run(sql.raise_horizon(self._schema), kept=int(kept))
            [[ended]] = self._conn.run(sql.versions_ended(self._schema, PUBLISHED), id=self.run_id)
        steps: tuple[tuple[str, str, dict[str, Any], int], ...] = (
                 (sql.purge_rejects(self._schema), "rejects", {"days": retention.rejects_days}, retention.max_steps),
                 (sql.purge_history(self._schema), "history", {"kept": int(kept or 0)},
                  retention.history_steps(int(ended))),
                 (sql.purge_runs(self._schema, LOADED, CONFIRMING), "runs", {"days": retention.runs_days},
                  retention.max_steps))
        with _translated():
            for statement, key, params, most in steps:
                for _ in range(most):
                    self._conn.run(statement, step=retention.step_rows, **params)
                    purged[key] += max(self._conn.row_count, 0)
                    if self._conn.row_count < retention.step_rows:
                        break
                else:
                    purged["backlog"] = True
        return purged

    def record_seconds(self, seconds: Any) -> None:
        with _translated():
            self._conn.run(f"UPDATE {sql.q(self._schema, sql.RUNS)} SET seconds = CAST(:seconds AS jsonb) "
                           "WHERE id = :id", seconds=_json(seconds), id=self.run_id)


class PostgresPublication:
    def __init__(self, conn: Connection, schema: str, run_id: int, inputs: dict[str, Any]) -> None:
        self._inputs = inputs
        self._conn = conn
        self._schema = schema
        self._run_id = run_id
        self._streams: list[_Stream] = []
        self._rejects = 0  # stored so far: the next one's seq is this + 1
        self._held: int | None = None  # rows the table held before, once volume() counted them (a forced run: never)
        self.left_dead: int | None = None  # rows replace_features deleted or updated (None: not known)
        self.changes: dict[str, int] | None = None  # added, changed, removed, unchanged: once replaced
        self._sample: int | None = None  # previewing (a dry run): the diff's users to keep as a sample
        # how replace_features found the changes: "empty" (a first load), "digests" (only the users whose
        # digest differed were sent: ``sent`` of them, and the users gone) or "values" (every row sent)
        self.compared_by: str | None = None
        self.sent: int | None = None
        # how it wrote them: "changes" (only the users that differ), "all" (most differed: every row
        # rewritten, the unchanged put back) or "copy" (into an empty table)
        self.wrote: str | None = None
        self.sample: list[dict[str, Any]] | None = None

    def raised_by_rows(self, exc: BaseException) -> bool:
        return any(exc is stream.error for stream in self._streams)

    def lock(self) -> None:
        with _translated():
            self._conn.run(sql.lock_features(self._schema))

    def volume(self) -> Volume:
        self.lock()
        with _translated():
            [[users, experiments]] = self._conn.run(sql.features_volume(self._schema))
        self._held = int(users)
        return Volume(users=int(users), experiments=int(experiments))

    def preview(self, sample: int) -> None:
        self._sample = sample

    def replace_features(self, features: Iterable[pa.RecordBatch], digester: RowDigests | None = None) -> int:
        """Make the table hold these rows, writing only what differs.  Into an empty table the rows go
        straight in.  Else, where the last publication stored its users' digests (and this run counted
        the table: not a forced one), only the users whose digest differs go to a temporary table, and
        the users the rows no longer have to another (``_send_changed``); without stored digests every
        row goes to the temporary table.  One join then finds the users added, changed and removed, and
        the statements that follow write only those (``_apply``).  With a ``digester`` the rows' digests
        are stored for the next reload.  The rows go in binary COPY (the server parses it in about two
        thirds of CSV's time), unless the table's columns no longer have the types binary COPY sends
        (into the temporary table, of our types, always binary)."""
        rows = [0]

        def counted(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                rows[0] += batch.num_rows
                yield batch

        digests = _Digests(digester)
        with _translated(self), digests:
            [[empty]] = self._conn.run(sql.is_empty(self._schema))
            if empty and self._sample is None:
                binary = self._binary_fits()
                self._copy(sql.copy_in(self._schema, sql.FEATURES, sql.FEATURE_COLUMNS, binary=binary),
                           _chunks(digests.beside(counted(features)), self._run_id, binary=binary))
                self.changes = {"added": rows[0], "changed": 0, "removed": 0, "unchanged": 0}
                self.left_dead = 0
                self.compared_by, self.sent, self.wrote = "empty", rows[0], "copy"
                self._store_digests(digests, rows[0])
                return rows[0]
            previous = self._previous(digester)
            self._staging()
            if previous is not None:
                batches = iter(self._rows(counted(features)))  # read ahead of any COPY: its errors are ours
                head = _head(batches, LOOK_AHEAD_ROWS)
                self.compared_by = "digests"
                if self._sample is None and self._rewrite_all(head, previous, digests) and not self._referenced():
                    self._replace_all(digests.compared(itertools.chain(head, batches), previous), rows)
                    self._store_digests(digests, rows[0])
                    return rows[0]
                self._send_changed(digests.compared(itertools.chain(head, batches), previous))
            else:
                self._copy(sql.copy_in("pg_temp", sql.STAGING, sql.FEATURE_COLUMNS, binary=_BINARY),
                           _chunks(digests.beside(counted(features)), self._run_id, binary=_BINARY))
                self._conn.run(sql.classify(self._schema))
                self.compared_by, self.sent = "values", rows[0]
            self._apply(rows[0])
            self.wrote = "changes"
            self._store_digests(digests, rows[0])
        return rows[0]

    def _previous(self, digester: RowDigests | None) -> changes.Previous | None:
        """The last publication's digests, where they can be trusted to describe the table: stored by the
        newest run that published, by this algorithm, for as many users as the table holds now (counted
        by ``volume()``; a forced run counts nothing and compares every value)."""
        if digester is None or self._held is None:
            return None
        out = io.BytesIO()
        self._conn.run(sql.last_digests(self._schema, PUBLISHED, algorithm=digester.algorithm, users=self._held),
                       stream=out)
        blob = copy_binary.single_field(out.getbuffer().tobytes())
        if blob is None:
            return None
        stored = pa.ipc.open_stream(blob).read_all()
        return changes.Previous(stored["user_id"].combine_chunks(), stored["digest"].combine_chunks())

    def _rows(self, batches: Iterable[pa.RecordBatch]) -> _Stream:
        """``batches``, an error raised while making them remembered as the rows' (not the database's)."""
        self._streams.append(stream := _Stream(batches))
        return stream

    def _rewrite_all(self, head: list[pa.RecordBatch], previous: changes.Previous, digests: _Digests) -> bool:
        """Whether most of the first rows differ from the last load (REWRITE_SHARE), so that most of the
        table is likely to: then rewriting all of it costs less than finding and writing the changes."""
        assert digests.digester is not None
        share = changes.share_differing(previous, [b["user_id"] for b in head],
                                        [digests.digester.rows(b) for b in head])
        return share > REWRITE_SHARE

    def _binary_fits(self) -> bool:
        """Whether the table's columns still have the types binary COPY sends (else the rows go as CSV)."""
        types = self._conn.run(sql.column_types(), table=sql.q(self._schema, sql.FEATURES))
        return _BINARY and dict(types) == sql.BINARY_FEATURE_TYPES

    def _referenced(self) -> bool:
        return bool(self._conn.run(sql.referencing_keys(), table=sql.q(self._schema, sql.FEATURES)))

    def _replace_all(self, batches: Iterator[tuple[pa.RecordBatch | None, changes.Changes]], rows: list[int]) -> None:
        """Where most users changed: every version the table holds to the history and out of the table
        (two statements over the whole table, no join), every row COPYed in as a first load's are, and
        then the users whose digest did not change put back as they were (stamped with their own run,
        their version out of the history again): a cost in the unchanged users, few where this is chosen.
        Ends as ``_send_changed`` and ``_apply`` would: the same table, history and counts."""
        found = {"added": 0, "changed": 0, "removed": 0}
        kept: list[pa.Array] = []
        with ThreadPoolExecutor(1, thread_name_prefix="etl-history") as pool:
            ending = pool.submit(self._end_every_version)
            ahead = _ahead(batches, until=ending, most=AHEAD_BYTES)
            held = ending.result()

        def every() -> Iterator[pa.RecordBatch]:
            for batch, change in itertools.chain(ahead, batches):
                found["added"] += change.added
                found["changed"] += change.changed
                found["removed"] += len(change.removed)
                if batch is not None and batch.num_rows:
                    if change.added + change.changed < batch.num_rows:
                        kept.append(batch["user_id"].filter(pc.invert(change.send)))
                    yield batch

        binary = self._binary_fits()
        self._copy(sql.copy_in(self._schema, sql.FEATURES, sql.FEATURE_COLUMNS, binary=binary),
                   _chunks(every(), self._run_id, binary=binary))
        unchanged = sum(len(ids) for ids in kept)
        if unchanged:
            self._conn.run(sql.create_unchanged())
            self._copy(sql.copy_in("pg_temp", sql.UNCHANGED, ("user_id",)),
                       _csv_chunks([pa.table({"user_id": pa.chunked_array(kept, pa.int64())})]))
            self._conn.run(f"ANALYZE {sql.q('pg_temp', sql.UNCHANGED)}")
            self._join_by_key(unchanged, rows[0])
            self._conn.run(sql.restamp_unchanged(self._schema), run=self._run_id)
            self._conn.run(sql.unend_unchanged(self._schema), run=self._run_id)
        self.changes = {**found, "unchanged": unchanged}
        self.left_dead = held + unchanged
        self.sent, self.wrote = rows[0], "all"

    def _end_every_version(self) -> int:
        """Every version the table holds to the history, ended by this run, and out of the table: the
        rows it held."""
        self._conn.run(sql.end_every_version(self._schema), run=self._run_id)
        self._conn.run(sql.delete_every_row(self._schema))
        return max(self._conn.row_count, 0)

    def _send_changed(self, batches: Iterator[tuple[pa.RecordBatch | None, changes.Changes]]) -> None:
        """COPY the rows whose digest differs into the temporary table, and what they are (added, changed)
        with the users gone (removed) into the diff's: the comparison is the digests', not the server's."""
        ids: list[pa.Array] = []
        kinds: list[pa.Array] = []
        gone: list[pa.Array] = []

        def changed() -> Iterator[pa.RecordBatch]:
            for whole, change in batches:
                gone.append(change.removed)
                if whole is not None and whole.num_rows:
                    batch = whole.filter(change.send)
                    if not batch.num_rows:
                        continue
                    ids.append(batch["user_id"])
                    kinds.append(pc.if_else(change.new.filter(change.send), _ADDED, _CHANGED))
                    yield batch

        self._copy(sql.copy_in("pg_temp", sql.STAGING, sql.FEATURE_COLUMNS, binary=_BINARY),
                   _chunks(changed(), self._run_id, binary=_BINARY))
        removed = pa.chunked_array(gone, pa.int64())
        self.sent = sum(len(i) for i in ids)
        diff = pa.table({"user_id": pa.chunked_array([*ids, removed], pa.int64()),
                         "kind": pa.chunked_array([*kinds, literals.repeat("r", pa.string(), len(removed))],
                                                  pa.string())})
        self._conn.run(sql.create_diff())
        if diff.num_rows:
            self._copy(sql.copy_in("pg_temp", sql.DIFF, ("user_id", "kind")), _csv_chunks([diff]))

    def _store_digests(self, digests: _Digests, rows: int) -> None:
        """Keep this load's digests for the next reload (never a dry run's: the table stays as it was)."""
        if self._sample is not None or digests.digester is None:
            return
        stored = digests.table()
        if stored.num_rows != rows:  # not every row was digested: store none rather than a wrong set
            return
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, stored.schema) as writer:
            writer.write_table(stored)
        self._conn.run(sql.drop_digests(self._schema))
        self._copy(sql.store_digests(self._schema), copy_binary.one_blob_row(
            self._run_id, int(digests.digester.algorithm), rows, sink.getvalue().to_pybytes()))

    def restore_features(self, of: int) -> int:
        with _translated():
            self._staging()
            self._conn.run(sql.fill_staging_as_of(self._schema), run=self._run_id, of=of)
            rows = max(self._conn.row_count, 0)
            self._conn.run(sql.classify(self._schema))
            self._apply(rows)
        return rows

    def volume_as_of(self, of: int) -> Volume:
        with _translated():
            [[users, experiments]] = self._conn.run(sql.volume_as_of(self._schema), of=of)
        return Volume(users=int(users), experiments=int(experiments))

    def _staging(self) -> None:
        for setting in sql.PUBLISH_SETTINGS:
            self._conn.run(setting)
        self._conn.run(sql.create_staging())  # our column types; the statements convert

    def _join_by_key(self, users: int, rows: int) -> None:
        """Let the statements that follow find ``users`` users by the key, if they are few of ``rows``."""
        for setting in sql.join_by_key(users <= rows * sql.SMALL_SHARE):
            self._conn.run(setting)

    def _apply(self, rows: int) -> None:
        """With the diff made (by ``sql.classify``, or from the digests), unless previewing, write what
        differs: the ended versions to the history, then delete the removed users, update the changed
        ones, insert the added."""
        self._conn.run(f"ANALYZE {sql.q('pg_temp', sql.STAGING)}")
        self._conn.run(f"ANALYZE {sql.q('pg_temp', sql.DIFF)}")  # its size decides how the statements join
        found = {kind: int(n) for kind, n in self._conn.run(sql.count_diff())}
        counts = {"added": found.get("a", 0), "changed": found.get("c", 0), "removed": found.get("r", 0)}
        self._join_by_key(sum(counts.values()), max(rows, self._held or 0))
        self.changes = {**counts, "unchanged": rows - counts["added"] - counts["changed"]}
        if self._sample is not None:
            self.sample = [_change(user_id, before, after) for user_id, before, after in
                           self._conn.run(sql.diff_sample(self._schema), limit=self._sample)]
            self.left_dead = 0
            return
        if counts["changed"] or counts["removed"]:
            self._conn.run(sql.keep_ended(self._schema), run=self._run_id)
        table = sql.q(self._schema, sql.FEATURES)
        if counts["changed"] > rows // 2 and not self._conn.run(sql.referencing_keys(), table=table):
            # most users changed and no key references them: delete and insert again, as a replace would
            self._conn.run(sql.delete_changed_and_removed(self._schema))
            self._conn.run(sql.insert_added_and_changed(self._schema), run=self._run_id)
            self.left_dead = counts["changed"] + counts["removed"]
            return
        for key, statement in (("removed", sql.delete_removed), ("changed", sql.update_changed),
                               ("added", sql.insert_added)):
            if counts[key]:
                self._conn.run(statement(self._schema), run=self._run_id)
        self.left_dead = counts["changed"] + counts["removed"]

    def store_rejects(self, rejects: pa.Table) -> None:
        if rejects.num_rows:
            with _translated(self):
                self._copy(sql.copy_in(self._schema, sql.REJECTS, sql.REJECT_COLUMNS),
                           _csv_chunks([_reject_rows(rejects, self._run_id, first=self._rejects + 1)]))
            self._rejects += rejects.num_rows

    def finish(self, *, status: str, files: Any, users_written: int, seconds: Any,
               restored_from: int | None = None) -> None:
        with _translated():
            _finish(self._conn, self._schema, self._run_id, status=status, files=files,
                    users_written=users_written, seconds=seconds, changes=self.changes,
                    restored_from=restored_from, **self._inputs)

    def _copy(self, statement: str, chunks: Iterable[memoryview]) -> None:
        self._conn.run(statement, stream=self._rows(chunks))


class _Digests:
    """A load's digests, worked out beside the rows: in line as the rows stream to the COPY, or, where
    they decide which rows to send, on a thread one batch ahead of the comparison.  A context: leaving
    it waits for the thread."""

    def __init__(self, digester: RowDigests | None) -> None:
        self.digester = digester
        self._ids: list[pa.Array] = []
        self._digests: list[Any] = []  # arrays, or futures of them
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> _Digests:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def beside(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``batches`` as they are, their digests worked out as they pass, on the caller's thread (on a
        thread of their own they cost a first load at L 0.6-0.7 s instead of 0.45 s: both cores are busy
        with the features and the server's COPY already, and the caller waits for the GIL), some
        ``DIGEST_ROWS`` rows at a time: a batch is a bucket's users (4,096 at L), and L's million rows
        took 0.24 s digested batch by batch, 0.16 s four batches at a time (larger groups gained nothing
        more: their arrays leave the caches).  Rows whose digests were not worked out
        (a COPY that stopped early) leave the load's digests incomplete, and then none are stored."""
        if self.digester is None:
            yield from batches
            return
        group: list[pa.RecordBatch] = []
        rows = 0
        for batch in batches:
            group.append(batch)
            rows += batch.num_rows
            if rows >= DIGEST_ROWS:
                self._digest(group)
                group, rows = [], 0
            yield batch
        if group:
            self._digest(group)

    def _digest(self, batches: list[pa.RecordBatch]) -> None:
        assert self.digester is not None
        self._ids.extend(batch["user_id"] for batch in batches)
        self._digests.append(self.digester.rows(pa.Table.from_batches(batches)))

    def compared(self, batches: Iterable[pa.RecordBatch],
                 previous: changes.Previous) -> Iterator[tuple[pa.RecordBatch | None, changes.Changes]]:
        """Per batch: the batch and how it compares with ``previous`` (which rows differ, which are new,
        the users of ``previous`` it skipped); at the end, no batch and the users after the last one."""
        assert self.digester is not None
        self._pool = self._pool or ThreadPoolExecutor(1, thread_name_prefix="etl-digests")
        ahead: collections.deque[tuple[pa.RecordBatch, Future[pa.Array]]] = collections.deque()

        def compare() -> tuple[pa.RecordBatch, changes.Changes]:
            batch, digests = ahead.popleft()
            return batch, previous.compare(batch["user_id"], digests.result())

        for batch in batches:  # a batch's digests on the thread while the next batch's features are worked out
            ahead.append((batch, self._pool.submit(self.digester.rows, batch)))
            self._ids.append(batch["user_id"])
            self._digests.append(ahead[-1][1])
            if len(ahead) > 1:
                yield compare()
        while ahead:
            yield compare()
        rest = previous.rest()
        yield None, changes.Changes(literals.empty(pa.bool_()), literals.empty(pa.bool_()), rest, 0, 0)

    def table(self) -> pa.Table:
        digests = [d.result() if isinstance(d, Future) else d for d in self._digests]
        return changes.digest_table(self._ids, digests)


class _Stream:
    """A COPY's data (or the rows it is made of), remembering an error raised while making it (the
    database's errors come later, from pg8000, and are not this one)."""

    def __init__(self, chunks: Iterable[Any]) -> None:
        self._chunks = chunks
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._chunks
        except BaseException as exc:
            self.error = exc
            raise


def _finish(conn: Connection, schema: str, run_id: int, *, status: str, files: Any = None,
            users_written: int | None = None, seconds: Any = None, error: Any = None,
            fingerprint: str | None = None, inputs: Any = None, same_as: int | None = None,
            changes: dict[str, int] | None = None, restored_from: int | None = None) -> None:
    counts: dict[str, Any] = {key: (changes or {}).get(key) for key in sql.CHANGE_COUNTS}
    conn.run(sql.finish_run(schema), status=status, files=_json(files), written=users_written,
             seconds=_json(seconds), error=_json(error), fingerprint=fingerprint, inputs=_json(inputs),
             same_as=same_as, id=run_id, restored_from=restored_from, **counts)


def _run_record(row: list[Any]) -> dict[str, Any]:
    (id_, status, policy, data_dir, started, finished, files, written, seconds, error, fingerprint, inputs, same_as,
     added, changed, removed, unchanged, restored_from, rejects) = row
    return {
        "run_id": id_, "status": status, "policy": policy, "data_dir": data_dir,
        "started_at": started.isoformat() if started else None,
        "finished_at": finished.isoformat() if finished else None,
        "files": files, "users_written": written, "seconds": seconds, "error": error, "rejects": rejects,
        "fingerprint": fingerprint, "inputs": inputs, "same_as": same_as,
        "changes": None if added is None else {"added": added, "changed": changed, "removed": removed,
                                               "unchanged": unchanged},
        "restored_from": restored_from,
    }


def _change(user_id: int, before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """One user's change: added (nothing before), removed (nothing after) or changed."""
    change = "added" if before is None else "removed" if after is None else "changed"
    return {"user_id": user_id, "change": change, "before": before, "after": after}


def _rollback(conn: Connection) -> None:
    try:
        conn.run("ROLLBACK")
    except Exception:  # noqa: BLE001,S110 - a dead connection has rolled back on the server already
        pass


def _features_rows(features: pa.RecordBatch, run_id: int) -> pa.Table:
    """The features' columns as CSV COPY reads them, in the table's order; the run's id added."""
    return pa.table({c.name: literals.repeat(run_id, pa.int64(), features.num_rows) if c.name == "run_id" else
                     _as_csv(features[c.name]) for c in USER_FEATURES.columns})


def _as_csv(values: pa.Array) -> pa.Array:
    """A column as CSV COPY reads it: a list in PostgreSQL's array text form ({1,2}; NULL stays NULL),
    anything else as it is."""
    if not pa.types.is_list(values.type):
        return values
    as_text = pc.binary_join(pc.cast(values, pa.list_(pa.string())), _COMMA)
    return pc.binary_join_element_wise(_OPEN, as_text, _CLOSE, _NOTHING)


def _reject_rows(rejects: pa.Table, run_id: int, *, first: int) -> pa.Table:
    return pa.table({
        "run_id": literals.repeat(run_id, pa.int64(), rejects.num_rows),
        "seq": pc.add(literals.arange(rejects.num_rows, pa.int64()), literals.scalar(first, pa.int64())),
        "file": rejects["file"],
        "line": rejects["line"],
        "column_name": rejects["column"],
        "value": rejects["value"],
        "rule": rejects["rule"],
        "raw": rejects["raw"],
        "raw_sha256": (rejects["raw_sha256"] if "raw_sha256" in rejects.column_names
                       else pa.nulls(rejects.num_rows, pa.string())),
    })


def _chunks(batches: Iterable[pa.RecordBatch], run_id: int, *, binary: bool) -> Iterator[memoryview]:
    """The features as COPY data, binary or CSV (the run's id added)."""
    if binary:
        return _binary_chunks(batches, run_id)
    return _csv_chunks(_features_rows(batch, run_id) for batch in batches)


def _binary_chunks(batches: Iterable[pa.RecordBatch], run_id: int) -> Iterator[memoryview]:
    """Binary COPY data, ROWS_PER_CHUNK rows at a time, each made only when the previous one is sent."""
    yield memoryview(copy_binary.HEADER)
    for features in batches:
        for start in range(0, features.num_rows, ROWS_PER_CHUNK):
            yield copy_binary.rows(features.slice(start, ROWS_PER_CHUNK), run_id)
    yield memoryview(copy_binary.TRAILER)


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


def _head(batches: Iterator[pa.RecordBatch], rows: int) -> list[pa.RecordBatch]:
    """The first batches of ``batches``, at least ``rows`` rows of them where there are that many."""
    head: list[pa.RecordBatch] = []
    taken = 0
    for batch in batches:
        head.append(batch)
        taken += batch.num_rows
        if taken >= rows:
            break
    return head


def _ahead(items: Iterator[tuple[pa.RecordBatch | None, Any]], *, until: Future[Any],
           most: int) -> list[tuple[pa.RecordBatch | None, Any]]:
    """Items of ``items`` worked out ahead while ``until`` runs, at most ``most`` bytes of their batches."""
    ahead: list[tuple[pa.RecordBatch | None, Any]] = []
    size = 0
    while not until.done() and size < most:
        item = next(items, None)
        if item is None:
            break
        ahead.append(item)
        size += item[0].nbytes if item[0] is not None else 0
    return ahead
