"""SQL text, built by pure functions: names through ``identifier()``, values always as parameters."""

from __future__ import annotations

from pg8000.native import identifier

from etl_core.status import LOADED, RunStatus
from etl_core.tables import USER_FEATURES, Table

FEATURES = USER_FEATURES.name
RUNS = "etl_runs"
REJECTS = "etl_rejects"
STAGING = "user_features__staging"
# the stamp releases before etl_core/store/migrations.py read (a comment on the runs table): migration 1
# still writes it, so that such a release finds the shape it knows; this release reads the history
LEDGER_VERSION = 2
LEDGER_STAMP = f"experiment-etl ledger v{LEDGER_VERSION}"
STATUS_CHECK = "CHECK (status IN (" + ", ".join(f"'{status}'" for status in RunStatus) + "))"


def q(schema: str, table: str) -> str:
    return f"{identifier(schema)}.{identifier(table)}"


def create_tables(schema: str) -> list[str]:
    """Idempotent DDL for the three tables (run while holding the job's lock)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {q(schema, RUNS)} (
            id bigserial PRIMARY KEY,
            started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at timestamptz,
            status text NOT NULL CONSTRAINT etl_runs_status_check {STATUS_CHECK},
            policy text NOT NULL,
            data_dir text NOT NULL,
            files jsonb,
            users_written bigint,
            seconds jsonb,
            error jsonb,
            fingerprint text,
            inputs jsonb,
            same_as bigint
        )""",
        f"""CREATE TABLE IF NOT EXISTS {q(schema, REJECTS)} (
            run_id bigint NOT NULL REFERENCES {q(schema, RUNS)} (id) ON DELETE CASCADE,
            seq bigint NOT NULL,
            file text NOT NULL,
            line bigint,
            column_name text,
            value text,
            rule text NOT NULL,
            raw text,
            PRIMARY KEY (run_id, seq)
        )""",
        features_table(schema, FEATURES, if_not_exists=True, primary_key=True),
    ]


def migrate_runs(schema: str) -> list[str]:
    """Bring a runs table of any earlier version to ledger v2 (idempotent; in one transaction) and stamp it:
    v2 added the runs' fingerprint, inputs and same_as (migration 1 runs this)."""
    table = q(schema, RUNS)
    return [
        f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE",
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS fingerprint text, ADD COLUMN IF NOT EXISTS inputs jsonb, "
        f"ADD COLUMN IF NOT EXISTS same_as bigint, DROP CONSTRAINT IF EXISTS etl_runs_status_check, "
        f"ADD CONSTRAINT etl_runs_status_check {STATUS_CHECK}",
        f"COMMENT ON TABLE {table} IS '{LEDGER_STAMP}'",
    ]


def start_run(schema: str) -> str:
    """Record a new run; return its id and the newest run that published features (its id, fingerprint)."""
    table = q(schema, RUNS)
    loaded = ", ".join(f"'{status}'" for status in LOADED)
    return (f"WITH last AS (SELECT id, fingerprint FROM {table} WHERE status IN ({loaded}) ORDER BY id DESC "
            f"LIMIT 1), made AS (INSERT INTO {table} (status, policy, data_dir) "
            f"VALUES ('{RunStatus.RUNNING}', :policy, :source) "
            "RETURNING id) SELECT made.id, last.id, last.fingerprint FROM made LEFT JOIN last ON true")


def create_table(table: Table, schema: str, name: str | None = None, *, if_not_exists: bool = False,
                 primary_key: bool = False) -> str:
    """``CREATE TABLE`` of ``table`` as described (in ``schema``, as ``name`` or the table's own)."""
    columns = ",\n        ".join(
        f"{identifier(c.name)} {c.sql}{'' if c.nullable else ' NOT NULL'}"
        f"{' PRIMARY KEY' if primary_key and c.name == table.key else ''}" for c in table.columns)
    return (f"CREATE TABLE {'IF NOT EXISTS ' if if_not_exists else ''}{q(schema, name or table.name)} (\n"
            f"        {columns}\n    )")


def features_table(schema: str, table: str, *, if_not_exists: bool = False, primary_key: bool = False) -> str:
    return create_table(USER_FEATURES, schema, table, if_not_exists=if_not_exists, primary_key=primary_key)


FEATURE_COLUMNS = USER_FEATURES.names
REJECT_COLUMNS = ("run_id", "seq", "file", "line", "column_name", "value", "rule", "raw", "raw_sha256")
RUN_COLUMNS = ("id, status, policy, data_dir, started_at, finished_at, files, users_written, seconds, error, "
               "fingerprint, inputs, same_as")


def copy_in(schema: str, table: str, columns: tuple[str, ...], *, binary: bool = False) -> str:
    cols = ", ".join(identifier(c) for c in columns)
    return f"COPY {q(schema, table)} ({cols}) FROM STDIN WITH (FORMAT {'binary' if binary else 'csv'})"


# The types binary COPY sends the features as (the features table's own): a table whose columns were
# given other types since is loaded with CSV, which the server converts from
BINARY_FEATURE_TYPES = USER_FEATURES.sql_types()


def column_types() -> str:
    """Each column of ``:table`` (a quoted name) with its type."""
    return ("SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 AND NOT attisdropped")


def lock_features(schema: str) -> str:
    """The lock every DML statement of the publish takes anyway, taken first: readers (ACCESS SHARE)
    never wait for it, and nobody can add a foreign key to the table until the run commits."""
    return f"LOCK TABLE {q(schema, FEATURES)} IN ROW EXCLUSIVE MODE"


def features_volume(schema: str) -> str:
    """The users and experiments the table holds now: what the load guard compares a new load with."""
    return f"SELECT count(*), coalesce(sum(total_experiments), 0) FROM {q(schema, FEATURES)}"


def referencing_keys() -> str:
    """The foreign keys other tables hold on the features table (``:table`` is its quoted name)."""
    return ("SELECT conname, conrelid::regclass::text, confdeltype FROM pg_constraint "
            "WHERE contype = 'f' AND confrelid = CAST(:table AS regclass) ORDER BY conname")


def delete_all(schema: str) -> str:
    return f"DELETE FROM {q(schema, FEATURES)}"


def create_staging() -> str:
    """A temporary table for the new rows, gone at the end of the transaction."""
    return features_table("pg_temp", STAGING) + " ON COMMIT DROP"


def delete_missing(schema: str) -> str:
    """Delete the users the new rows no longer have (a key held on them acts as it was declared)."""
    return (f"DELETE FROM {q(schema, FEATURES)} f WHERE NOT EXISTS "
            f"(SELECT 1 FROM {q('pg_temp', STAGING)} s WHERE s.user_id = f.user_id)")


def upsert_staging(schema: str) -> str:
    """Insert the new users and update the others in place: a row that stays is never deleted."""
    cols = ", ".join(identifier(c) for c in FEATURE_COLUMNS)
    updates = ", ".join(f"{identifier(c)} = EXCLUDED.{identifier(c)}" for c in FEATURE_COLUMNS if c != "user_id")
    return (f"INSERT INTO {q(schema, FEATURES)} ({cols}) SELECT {cols} FROM {q('pg_temp', STAGING)} "
            f"ON CONFLICT (user_id) DO UPDATE SET {updates}")


def fail_abandoned(schema: str) -> str:
    return (f"UPDATE {q(schema, RUNS)} SET status = '{RunStatus.FAILED}', finished_at = clock_timestamp(), "
            f"error = CAST(:error AS jsonb) WHERE status = '{RunStatus.RUNNING}'")


def finish_run(schema: str) -> str:
    return (f"UPDATE {q(schema, RUNS)} SET status = :status, finished_at = clock_timestamp(), "
            "files = CAST(:files AS jsonb), users_written = :written, seconds = CAST(:seconds AS jsonb), "
            "error = CAST(:error AS jsonb), fingerprint = :fingerprint, inputs = CAST(:inputs AS jsonb), "
            "same_as = :same_as WHERE id = :id")


def _rejects_count(schema: str) -> str:
    """A run's number of rejects: its highest seq (they are numbered 1, 2, ...), one index probe."""
    return f"(SELECT coalesce(max(r.seq), 0) FROM {q(schema, REJECTS)} r WHERE r.run_id = runs.id)"


def get_run(schema: str) -> str:
    """One run's record and its number of rejects (``:id``)."""
    return f"SELECT {RUN_COLUMNS}, {_rejects_count(schema)} FROM {q(schema, RUNS)} runs WHERE id = :id"


def list_runs(schema: str, *, status: bool, before: bool) -> str:
    """Run records newest first, ``:limit`` of them; ``:status`` and ``:before`` (an id) if asked for."""
    where = [condition for condition, wanted in (("status = :status", status), ("id < :before", before)) if wanted]
    return (f"SELECT {RUN_COLUMNS}, {_rejects_count(schema)} FROM {q(schema, RUNS)} runs "
            f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC LIMIT :limit")


def _cut(column: str) -> str:
    """``column``'s text cut as ``errors.shorten`` cuts it, at ``:chars`` characters."""
    return (f"CASE WHEN length({column}) > :chars THEN left({column}, :chars) || '… (' || "
            f"(length({column}) - :chars) || ' more characters)' ELSE {column} END")


def rejects_page(schema: str) -> str:
    """A run's rejects (``:id``) after seq ``:after``, ``:limit`` of them, long texts cut."""
    return (f"SELECT seq, file, line, column_name, {_cut('value')}, rule, {_cut('raw')}, raw_sha256 "
            f"FROM {q(schema, REJECTS)} WHERE run_id = :id AND seq > :after ORDER BY seq LIMIT :limit")


def _older_than(days_param: str) -> str:
    """A run that finished more than ``days_param`` (a parameter's name) days ago, by the server's clock."""
    return f"finished_at < clock_timestamp() - make_interval(days => CAST(:{days_param} AS integer))"


def purge_rejects(schema: str) -> str:
    """Delete at most ``:step`` rejects of runs that finished more than ``:days`` days ago: one bounded
    statement, by the key (each row found by the index, never a scan of the young rows)."""
    rejects, runs = q(schema, REJECTS), q(schema, RUNS)
    return (f"DELETE FROM {rejects} r USING (SELECT x.run_id, x.seq FROM {rejects} x WHERE x.run_id IN "
            f"(SELECT id FROM {runs} WHERE {_older_than('days')}) LIMIT :step) old "
            "WHERE r.run_id = old.run_id AND r.seq = old.seq")


def purge_runs(schema: str, loaded: tuple[str, ...], confirming: tuple[str, ...]) -> str:
    """Delete at most ``:step`` runs that finished more than ``:days`` days ago, oldest first, except the
    last that loaded (its fingerprint decides 'unchanged'; the features name it), the last that
    confirmed the features (/health reports it), and any run that still has rejects (they are purged
    by their own retention first: deleting a run never cascades to an unbounded number of rows)."""
    runs, rejects = q(schema, RUNS), q(schema, REJECTS)
    kept = ["(SELECT max(id) FROM " + runs + " WHERE status IN (" + ", ".join(f"'{s}'" for s in statuses) + "))"
            for statuses in (loaded, confirming)]
    return (f"DELETE FROM {runs} WHERE id IN (SELECT r.id FROM {runs} r WHERE {_older_than('days')} "
            + "".join(f"AND r.id IS DISTINCT FROM {last} " for last in kept)
            + f"AND NOT EXISTS (SELECT 1 FROM {rejects} j WHERE j.run_id = r.id) ORDER BY r.id LIMIT :step)")


def last_confirmed(schema: str, statuses: tuple[str, ...]) -> str:
    """The newest run with one of ``statuses`` (literals of ours, not input), its age by the server's clock."""
    listed = ", ".join(f"'{status}'" for status in statuses)
    return (f"SELECT id, status, finished_at, extract(epoch FROM clock_timestamp() - finished_at)::float8 "
            f"FROM {q(schema, RUNS)} WHERE status IN ({listed}) ORDER BY id DESC LIMIT 1")


def has_column(table: str, column: str) -> str:
    """Whether ``:table`` (a quoted name) has a column ``column`` (a literal of ours)."""
    return (f"SELECT 1 FROM pg_attribute WHERE attrelid = CAST(:table AS regclass) AND attname = '{column}' "
            "AND NOT attisdropped")


def lock_rejects(schema: str) -> str:
    return f"LOCK TABLE {q(schema, REJECTS)} IN ACCESS EXCLUSIVE MODE"


def number_rejects(schema: str) -> list[str]:
    """Give a rejects table made before rejects were numbered its seq column: each run's rows in the
    order they are stored, then the key.  Run in one transaction, after ``lock_rejects``."""
    table = q(schema, REJECTS)
    return [
        f"ALTER TABLE {table} ADD COLUMN seq bigint",
        f"UPDATE {table} r SET seq = o.seq FROM (SELECT ctid AS at, row_number() OVER "
        f"(PARTITION BY run_id ORDER BY ctid) AS seq FROM {table}) o WHERE r.ctid = o.at",
        f"ALTER TABLE {table} ALTER COLUMN seq SET NOT NULL",
        f"ALTER TABLE {table} ADD PRIMARY KEY (run_id, seq)",
        f"DROP INDEX IF EXISTS {q(schema, REJECTS + '_run_id')}",  # the key's index serves run_id alone too
    ]


def autovacuum_on() -> str:
    """Whether autovacuum looks after the table ``:table``: on for the server, not off for the table."""
    return ("SELECT current_setting('autovacuum')::boolean AND NOT coalesce("
            "'autovacuum_enabled=false' = ANY (reloptions), false) FROM pg_class WHERE oid = CAST(:table AS regclass)")


def lock_name(schema: str) -> str:
    """The text whose hash is the advisory lock key: one job at a time per schema."""
    return f"experiment-etl:{schema}"
