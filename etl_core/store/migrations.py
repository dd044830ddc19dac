"""The database schema's versions: an ordered list of steps, each applied once, in a transaction of
its own, and recorded in ``etl_schema_migrations`` (version, what it did, when, by which release).

A run reads the newest recorded version (one query) and applies only the steps it lacks; a DBA can
apply them ahead of a deploy (``python -m etl_core migrate``, or the direct action ``migrate``).  A
schema newer than this release knows is refused (``SchemaTooNew``): an older release never writes to,
or re-stamps, tables it does not understand.  Each step's statements wait for a lock at most the
session's ``lock_timeout`` (``DB_LOCK_TIMEOUT_MS``), so readers queue behind a step for at most that
long plus the step's own time; a step that cannot get its lock fails (503), changes nothing, and is
tried again by the next run or command.

Version 1 is the schema as it was before versions were recorded: it creates the three tables, or
brings an earlier deployment's to that shape (the runs table's v2 columns and statuses, the rejects'
numbering), and is safe to apply to any of them.  A new step is appended here, never edited in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pg8000.native import identifier

from etl_core.errors import SchemaTooNew
from etl_core.store import sql

HISTORY = "etl_schema_migrations"
RELEASE = "experiment-etl 1.0.0"  # what the history records as having applied a step


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Any, str], None]  # (connection, schema): runs the step's statements


def _ledger_and_features(conn: Any, schema: str) -> None:
    for statement in sql.create_tables(schema):
        conn.run(statement)
    rejects = sql.q(schema, sql.REJECTS)
    if not conn.run(sql.has_column(rejects, "seq"), table=rejects):
        conn.run(sql.lock_rejects(schema))
        for statement in sql.number_rejects(schema):
            conn.run(statement)
    for statement in sql.migrate_runs(schema):
        conn.run(statement)


def _rejects_hash(conn: Any, schema: str) -> None:
    conn.run(sql.add_rejects_hash(schema))


def _history(conn: Any, schema: str) -> None:
    conn.run(sql.add_change_counts(schema))
    for statement in sql.create_history(schema, 3):
        conn.run(statement)
SHARDS = "etl_shards"
SHARD_COUNTS = "etl_shard_counts"


def _shard_staging(conn: Any, schema: str) -> None:
    """The sharded path's staging (etl_core/shards.py, docs/scale.md): each shard's partial counts and
    what it read.  UNLOGGED: a crash empties them, and the reduce then finds shards missing and refuses;
    the map counts them again."""
    conn.run(f"""CREATE UNLOGGED TABLE IF NOT EXISTS {sql.q(schema, SHARDS)} (
            batch text NOT NULL,
            shard integer NOT NULL,
            shards integer NOT NULL,
            identity text NOT NULL,
            first_byte bigint NOT NULL,
            end_byte bigint NOT NULL,
            rows_read bigint NOT NULL,
            rows_rejected bigint NOT NULL,
            experiments bigint NOT NULL,
            first_experiment_id bigint,
            last_experiment_id bigint,
            increasing boolean NOT NULL,
            violations jsonb NOT NULL,
            counted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (batch, shard)
        )""")
    conn.run(f"""CREATE UNLOGGED TABLE IF NOT EXISTS {sql.q(schema, SHARD_COUNTS)} (
            batch text NOT NULL,
            shard integer NOT NULL,
            user_id bigint NOT NULL,
            compound_id bigint,
            n bigint NOT NULL
        )""")
    conn.run(f"CREATE INDEX IF NOT EXISTS {identifier(SHARD_COUNTS + '_batch')} "
             f"ON {sql.q(schema, SHARD_COUNTS)} (batch, shard)")


def _digests(conn: Any, schema: str) -> None:
    for statement in sql.create_digests(schema):
        conn.run(statement)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "etl_runs, etl_rejects and user_features, or an earlier deployment's brought to their shape",
              _ledger_and_features),
    Migration(2, "etl_rejects.raw_sha256: a rejected row's hash, kept in place of its text with "
                 "ETL_REJECTS_KEEP_RAW=false", _rejects_hash),
    Migration(3, "user_features_history (each ended version of a user's features, SCD type 2), "
                 "etl_history_horizon, the function user_features_as_of(run), etl_runs.added, changed, "
                 "removed, unchanged and restored_from, and the statuses restored and dry_run", _history),
    Migration(4, "etl_shards and etl_shard_counts: the sharded path's partial counts (docs/scale.md)",
              _shard_staging),
    Migration(5, "etl_feature_digests: each user's digest as the newest publication left the features, so "
                 "that a reload sends only the users whose digest differs (docs/publishing.md)", _digests),
)
LATEST = MIGRATIONS[-1].version


def history_table(schema: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {sql.q(schema, HISTORY)} (
            version integer PRIMARY KEY,
            description text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            applied_by text NOT NULL
        )"""


def version_query(schema: str) -> str:
    """The newest applied version (NULL: none); fails with 42P01 where there is no history yet."""
    return f"SELECT max(version) FROM {sql.q(schema, HISTORY)}"


def lock_name(schema: str) -> str:
    return f"experiment-etl migrate {schema}"


def pending(version: int) -> tuple[Migration, ...]:
    """The steps a schema at ``version`` lacks, in order; SchemaTooNew past the newest one known."""
    if version > LATEST:
        raise SchemaTooNew(
            f"the database's schema is at version {version}, newer than this release knows ({LATEST}): deploy "
            "the release that migrated it; nothing was written", schema_version=version, known_version=LATEST)
    return tuple(m for m in MIGRATIONS if m.version > version)


def apply_one(conn: Any, schema: str, step: Migration, read_version: Callable[[Any], int]) -> bool:
    """Apply ``step`` in a transaction of its own, unless another process applied it meanwhile; True
    if this call applied it."""
    conn.run("BEGIN")
    try:
        conn.run("SELECT pg_advisory_xact_lock(hashtext(:name))", name=lock_name(schema))
        if not conn.run("SELECT 1 FROM pg_namespace WHERE nspname = :name", name=schema):
            conn.run(f"CREATE SCHEMA {identifier(schema)}")  # needs CREATE on the database: only when missing
        conn.run(history_table(schema))
        now = read_version(conn)
        pending(now)  # a newer release may have moved on meanwhile
        if now >= step.version:
            conn.run("COMMIT")
            return False
        step.apply(conn, schema)
        conn.run(f"INSERT INTO {sql.q(schema, HISTORY)} (version, description, applied_by) VALUES (:v, :d, :by)",
                 v=step.version, d=step.description, by=RELEASE)
        conn.run("COMMIT")
        return True
    except BaseException:
        try:
            conn.run("ROLLBACK")
        except Exception:  # noqa: BLE001,S110 - a dead connection has rolled back on the server already
            pass
        raise
