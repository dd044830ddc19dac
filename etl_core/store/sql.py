"""SQL text, built by pure functions: names through ``identifier()``, values always as parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pg8000.native import identifier

from etl_core.status import LOADED, PUBLISHED, RunStatus
from etl_core.tables import (
    COMPARED,
    ETL_REJECTS,
    ETL_RUNS,
    FEATURE_DIGESTS,
    USER_FEATURES,
    USER_FEATURES_HISTORY,
    Column,
    Table,
)

FEATURES = USER_FEATURES.name
RUNS = ETL_RUNS.name
REJECTS = ETL_REJECTS.name
STAGING = "user_features__staging"
DIFF = "user_features__diff"
UNCHANGED = "user_features__unchanged"
DIGESTS = FEATURE_DIGESTS.name
HISTORY = USER_FEATURES_HISTORY.name
HORIZON = "etl_history_horizon"  # one row: the oldest run whose features the history can still give
AS_OF = "user_features_as_of"  # the SQL function: the features as they were after a run
CHANGE_COUNTS = ("added", "changed", "removed", "unchanged")  # etl_runs' columns, from schema version 3
# the stamp releases before etl_core/store/migrations.py read (a comment on the runs table): migration 1
# still writes it, so that such a release finds the shape it knows; this release reads the history
LEDGER_VERSION = 2
LEDGER_STAMP = f"experiment-etl ledger v{LEDGER_VERSION}"
STATUS_CHECK = f"CHECK ({ETL_RUNS.column('status').check})"
# the runs' columns ledger v2 added (migration 1 adds them to a ledger v1 table)
LEDGER_V2 = ("fingerprint", "inputs", "same_as")


def q(schema: str, table: str) -> str:
    return f"{identifier(schema)}.{identifier(table)}"


def create_tables(schema: str) -> list[str]:
    """Idempotent DDL for the three tables as schema version 1 had them (migration 1 runs it, holding
    the job's lock): the columns later versions added are added by their own steps."""
    return [create_table(table, schema, if_not_exists=True, primary_key=True, version=1)
            for table in (ETL_RUNS, ETL_REJECTS, USER_FEATURES)]


def _restate_status_check() -> str:
    """The ALTER TABLE clauses that give the runs' status the CHECK of this release's statuses."""
    name = identifier(check_name(RUNS, "status"))
    return f"DROP CONSTRAINT IF EXISTS {name}, ADD CONSTRAINT {name} {STATUS_CHECK}"


def migrate_runs(schema: str) -> list[str]:
    """Bring a runs table of any earlier version to ledger v2 (idempotent; in one transaction) and stamp it:
    v2 added the runs' fingerprint, inputs and same_as (migration 1 runs this)."""
    table = q(schema, RUNS)
    added = [ETL_RUNS.column(name) for name in LEDGER_V2]
    return [
        f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE",
        f"ALTER TABLE {table} {_add_columns(schema, RUNS, added)}, {_restate_status_check()}",
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


_SERIAL = {"smallint": "smallserial", "integer": "serial", "bigint": "bigserial"}


def check_name(table: str, column: str) -> str:
    """The name of a column's CHECK constraint: the one PostgreSQL gives it by default."""
    return f"{table}_{column}_check"


def column_definition(column: Column, schema: str, table: str) -> str:
    """``column`` as CREATE TABLE and ADD COLUMN declare it, in table ``table`` of ``schema``: its type (a
    serial one's with its sequence), NOT NULL, its default, its CHECK and its foreign key."""
    parts = [identifier(column.name), _SERIAL[column.sql] if column.serial else column.sql]
    if not column.nullable:
        parts.append("NOT NULL")
    if column.default:
        parts.append(f"DEFAULT {column.default}")
    if column.check:
        parts.append(f"CONSTRAINT {identifier(check_name(table, column.name))} CHECK ({column.check})")
    if column.references:
        referenced, key = column.references
        parts.append(f"REFERENCES {q(schema, referenced)} ({identifier(key)}) ON DELETE CASCADE")
    return " ".join(parts)


def _add_columns(schema: str, table: str, columns: Iterable[Column]) -> str:
    return ", ".join(f"ADD COLUMN IF NOT EXISTS {column_definition(c, schema, table)}" for c in columns)


def add_columns(table: Table, schema: str, version: int) -> str:
    """Idempotent ``ALTER TABLE`` that adds to ``table`` the columns schema ``version`` added."""
    return f"ALTER TABLE {q(schema, table.name)} {_add_columns(schema, table.name, table.added_by(version))}"


def create_table(table: Table, schema: str, name: str | None = None, *, if_not_exists: bool = False,
                 primary_key: bool = False, version: int | None = None) -> str:
    """``CREATE TABLE`` of ``table`` as described (in ``schema``, as ``name`` or the table's own), as schema
    ``version`` had it (its columns added by then; None: every column); with ``primary_key``, its key
    (one column: declared on the column; more: together, after the columns)."""
    name = name or table.name
    key = tuple(k.strip() for k in table.key.split(",")) if primary_key else ()
    columns = ",\n        ".join(
        [column_definition(c, schema, name) + (" PRIMARY KEY" if key == (c.name,) else "")
         for c in (table.columns if version is None else table.as_of(version))]
        + ([f"PRIMARY KEY ({', '.join(identifier(k) for k in key)})"] if len(key) > 1 else []))
    return (f"CREATE TABLE {'IF NOT EXISTS ' if if_not_exists else ''}{q(schema, name)} (\n"
            f"        {columns}\n    )")


def features_table(schema: str, table: str, *, if_not_exists: bool = False, primary_key: bool = False) -> str:
    return create_table(USER_FEATURES, schema, table, if_not_exists=if_not_exists, primary_key=primary_key)


FEATURE_COLUMNS = USER_FEATURES.names
REJECT_COLUMNS = ETL_REJECTS.names
RUN_COLUMNS = ("id, status, policy, data_dir, started_at, finished_at, files, users_written, seconds, error, "
               "fingerprint, inputs, same_as, " + ", ".join(CHANGE_COUNTS) + ", restored_from")


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


# the publication's transaction: its hash joins of a million rows in memory rather than in batches on
# disk, and no JIT compilation (it costs more than it saves on these few statements)
PUBLISH_SETTINGS = ("SET LOCAL work_mem = '256MB'", "SET LOCAL jit = off")


def is_empty(schema: str) -> str:
    return f"SELECT NOT EXISTS (SELECT 1 FROM {q(schema, FEATURES)})"


def create_staging() -> str:
    """A temporary table for the new rows, gone at the end of the transaction (its key: a duplicate user
    fails the COPY, 23505, as it would in the table itself; and the statements that follow find a
    user's new row by it)."""
    return features_table("pg_temp", STAGING, primary_key=True) + " ON COMMIT DROP"


# A publication that writes few users finds each in the table by its key: the planner, left to itself,
# scans the whole table into a hash join (at L, 0.15-0.3 s per statement against 0.02-0.06 s for ten
# thousand key lookups).  Under SMALL_SHARE of the table's rows, its statements run without hash and merge
# joins; above it, with them (a scan costs less than that many lookups).
SMALL_SHARE = 1 / 16


def join_by_key(few: bool) -> tuple[str, ...]:
    value = "off" if few else "on"
    return (f"SET LOCAL enable_hashjoin = {value}", f"SET LOCAL enable_mergejoin = {value}")


def _differs(old: str, new: str) -> str:
    """Whether any feature value of row ``old`` differs from row ``new`` (NULLs compare as values)."""
    return (f"({', '.join(f'{old}.{identifier(c)}' for c in COMPARED)}) IS DISTINCT FROM "
            f"({', '.join(f'{new}.{identifier(c)}' for c in COMPARED)})")


_VALUES = tuple(c for c in FEATURE_COLUMNS if c != "run_id")  # the features' columns but run_id, by name
_HISTORY_COLUMNS = ", ".join(identifier(c) for c in USER_FEATURES_HISTORY.names)


def classify(schema: str) -> str:
    """One pass over the new rows and the table (a hash join by user_id): the users added (``a``: only
    in the new rows), removed (``r``: only in the table) and changed (``c``: any value differs), into
    a temporary table, gone at the end of the transaction.  Unchanged users are not in it."""
    return (f"CREATE TEMPORARY TABLE {identifier(DIFF)} ON COMMIT DROP AS "
            "SELECT coalesce(s.user_id, f.user_id) AS user_id, "
            "CASE WHEN f.user_id IS NULL THEN 'a' WHEN s.user_id IS NULL THEN 'r' ELSE 'c' END AS kind "
            f"FROM {q('pg_temp', STAGING)} s FULL JOIN {q(schema, FEATURES)} f ON f.user_id = s.user_id "
            f"WHERE f.user_id IS NULL OR s.user_id IS NULL OR {_differs('f', 's')}")


def create_diff() -> str:
    """The temporary table of the users a run changes (``kind``: a added, c changed, r removed), where the
    job works them out itself (from the digests) rather than by ``classify``."""
    return f"CREATE TEMPORARY TABLE {identifier(DIFF)} (user_id bigint PRIMARY KEY, kind text NOT NULL) ON COMMIT DROP"


def create_digests(schema: str) -> list[str]:
    """The digests' table (schema step 5): UNLOGGED, as a cache is (a crash empties it, and the next
    reload compares every value on the server instead); the digests stored as they are (they do not
    compress)."""
    return [create_table(FEATURE_DIGESTS, schema, if_not_exists=True, primary_key=True)
            .replace("CREATE TABLE", "CREATE UNLOGGED TABLE", 1),
            f"ALTER TABLE {q(schema, DIGESTS)} ALTER COLUMN digests SET STORAGE EXTERNAL"]


def last_digests(schema: str, published: tuple[str, ...], *, algorithm: int, users: int) -> str:
    """The stored digests, as binary COPY of one bytea, if they are those of the newest run that published
    features (a restore, or a publication that stored none, leaves older ones, which no longer count), of
    ``algorithm`` and for ``users`` users (integers written in: COPY takes no parameters)."""
    listed = ", ".join(f"'{status}'" for status in published)
    return (f"COPY (SELECT digests FROM {q(schema, DIGESTS)} WHERE run_id = (SELECT max(id) FROM "
            f"{q(schema, RUNS)} WHERE status IN ({listed})) AND algorithm = {int(algorithm)} AND users = {int(users)}) "
            "TO STDOUT (FORMAT binary)")


def drop_digests(schema: str) -> str:
    return f"DELETE FROM {q(schema, DIGESTS)}"


def store_digests(schema: str) -> str:
    return f"COPY {q(schema, DIGESTS)} (run_id, algorithm, users, digests) FROM STDIN (FORMAT binary)"


def count_diff() -> str:
    return f"SELECT kind, count(*) FROM {q('pg_temp', DIFF)} GROUP BY kind"


_ENDED, _WRITTEN = "<> 'a'", "<> 'r'"  # the kinds whose version ends (changed, removed), whose row is written


def _in_diff(column: str, kinds: str) -> str:
    """``column`` is one of the users the diff holds with a kind of ``kinds`` (a semi-join: the rows of
    the table it filters keep their order, and none is joined twice)."""
    return f"{column} IN (SELECT d.user_id FROM {q('pg_temp', DIFF)} d WHERE d.kind {kinds})"


def _end_versions(schema: str, where: str = "") -> str:
    """The table's versions (those ``where`` picks, else all) into the history, ended by ``:run``."""
    source = {"valid_from": "f.run_id", "valid_to": "CAST(:run AS bigint)"}  # each other column: the row's own
    values = ", ".join(source.get(c, f"f.{identifier(c)}") for c in USER_FEATURES_HISTORY.names)
    return (f"INSERT INTO {q(schema, HISTORY)} ({_HISTORY_COLUMNS}) SELECT {values} "
            f"FROM {q(schema, FEATURES)} f{f' WHERE {where}' if where else ''}")


def keep_ended(schema: str) -> str:
    """The version each changed or removed user has now goes to the history, ended by ``:run``."""
    return _end_versions(schema, _in_diff("f.user_id", _ENDED))


def end_every_version(schema: str) -> str:
    """Every version the table holds goes to the history, ended by ``:run``: the first step of a
    publication that rewrites the whole table (``replace_all``); the users that turn out unchanged are
    put back by ``restamp_unchanged`` and ``unend_unchanged``."""
    return _end_versions(schema)


def delete_every_row(schema: str) -> str:
    return f"DELETE FROM {q(schema, FEATURES)}"


def create_unchanged() -> str:
    """The users a publication that rewrote the whole table found unchanged (by their digests)."""
    return f"CREATE TEMPORARY TABLE {identifier(UNCHANGED)} (user_id bigint PRIMARY KEY) ON COMMIT DROP"


def restamp_unchanged(schema: str) -> str:
    """The unchanged users' rows, rewritten by ``:run``, stamped again with the run that made their
    version valid (kept by ``end_every_version`` in the history)."""
    return (f"UPDATE {q(schema, FEATURES)} f SET run_id = h.valid_from FROM {q('pg_temp', UNCHANGED)} u "
            f"JOIN {q(schema, HISTORY)} h ON h.valid_to = :run AND h.user_id = u.user_id "
            "WHERE f.user_id = u.user_id")


def unend_unchanged(schema: str) -> str:
    """The unchanged users' versions out of the history again: ``:run`` did not end them."""
    return (f"DELETE FROM {q(schema, HISTORY)} h USING {q('pg_temp', UNCHANGED)} u "
            "WHERE h.valid_to = :run AND h.user_id = u.user_id")


def delete_changed_and_removed(schema: str) -> str:
    """Where most users changed and no other table references the features: delete every user that
    changed or is gone, so that the changed ones go back in by ``insert_added_and_changed`` (cheaper
    than updating most of a table).  (One statement that deletes and moves the rows to the history,
    ``WITH ended AS (DELETE ... RETURNING ...) INSERT ...``, was measured slower at L.)"""
    return f"DELETE FROM {q(schema, FEATURES)} f WHERE {_in_diff('f.user_id', _ENDED)}"


def delete_removed(schema: str) -> str:
    """Delete the users the new rows no longer have (a key held on them acts as it was declared)."""
    return (f"DELETE FROM {q(schema, FEATURES)} f USING {q('pg_temp', DIFF)} d "
            "WHERE f.user_id = d.user_id AND d.kind = 'r'")


def insert_added_and_changed(schema: str) -> str:
    cols = ", ".join(identifier(c) for c in FEATURE_COLUMNS)
    values = ", ".join(f"s.{identifier(c)}" if c != "run_id" else "CAST(:run AS bigint)" for c in FEATURE_COLUMNS)
    return (f"INSERT INTO {q(schema, FEATURES)} ({cols}) SELECT {values} FROM {q('pg_temp', STAGING)} s "
            f"WHERE {_in_diff('s.user_id', _WRITTEN)}")


def update_changed(schema: str) -> str:
    """Update in place the users any of whose values differ, stamped with ``:run``: the row keeps its
    identity, and keys held on it never act."""
    sets = ", ".join(f"{identifier(c)} = s.{identifier(c)}" for c in COMPARED)
    return (f"UPDATE {q(schema, FEATURES)} f SET {sets}, run_id = :run FROM {q('pg_temp', DIFF)} d "
            f"JOIN {q('pg_temp', STAGING)} s ON s.user_id = d.user_id WHERE f.user_id = d.user_id AND d.kind = 'c'")


def insert_added(schema: str) -> str:
    """Insert the users the table does not have yet, stamped with ``:run``."""
    cols = ", ".join(identifier(c) for c in FEATURE_COLUMNS)
    values = ", ".join(f"s.{identifier(c)}" if c != "run_id" else "CAST(:run AS bigint)" for c in FEATURE_COLUMNS)
    return (f"INSERT INTO {q(schema, FEATURES)} ({cols}) SELECT {values} FROM {q('pg_temp', DIFF)} d "
            f"JOIN {q('pg_temp', STAGING)} s ON s.user_id = d.user_id WHERE d.kind = 'a'")


def create_history(schema: str, version: int) -> list[str]:
    """The history table (each ended version, keyed by the run that ended it and the user: a run's
    versions are appended together, in user order, to one end of the one index), the horizon, and the
    as-of function, as schema ``version`` has them (the step that adds them)."""
    return [
        create_table(USER_FEATURES_HISTORY, schema, if_not_exists=True, primary_key=True, version=version),
        f"CREATE TABLE IF NOT EXISTS {q(schema, HORIZON)} (one boolean PRIMARY KEY DEFAULT true CHECK (one), "
        "kept_from bigint NOT NULL)",
        # the history starts with the table as the last load left it: earlier runs' versions were not kept
        f"INSERT INTO {q(schema, HORIZON)} (kept_from) SELECT coalesce(max(id), 0) FROM {q(schema, RUNS)} "
        f"WHERE status IN ({', '.join(repr(str(s)) for s in LOADED)}) ON CONFLICT DO NOTHING",
        as_of_function(schema, version),
    ]


def as_of_function(schema: str, version: int) -> str:
    """``user_features_as_of(run)``: the features as they were when run ``run`` finished (every column
    user_features has at schema ``version``; ``run_id`` the run that made each row valid).  The versions
    valid then are the rows made valid at or before it and not ended by then: the table's rows stamped
    no later than ``run``, and the history's versions valid across it.  A plain SQL function: the
    planner inlines it, so that ``WHERE user_id > x ORDER BY user_id LIMIT n`` over it reads by the keys."""
    columns = USER_FEATURES.as_of(version)
    cols = ", ".join(identifier(c.name) for c in columns)
    versions = ", ".join("valid_from" if c.name == "run_id" else identifier(c.name) for c in columns)
    types = ", ".join(f"{identifier(c.name)} {c.sql}" for c in columns)
    return (f"CREATE OR REPLACE FUNCTION {q(schema, AS_OF)}(run bigint) RETURNS TABLE ({types}) "
            f"LANGUAGE sql STABLE AS $$ SELECT {cols} FROM {q(schema, FEATURES)} WHERE run_id <= run "
            f"UNION ALL SELECT {versions} FROM {q(schema, HISTORY)} WHERE valid_from <= run "
            "AND valid_to > run $$")


def add_rejects_hash(schema: str) -> str:
    """The rejects' v2 column: a rejected row's hash, kept in place of its text."""
    return add_columns(ETL_REJECTS, schema, 2)


def add_change_counts(schema: str) -> str:
    """The ledger's v3 columns (the changes' counts, the run a restore restored) and statuses."""
    return f"{add_columns(ETL_RUNS, schema, 3)}, {_restate_status_check()}"


def fill_staging_as_of(schema: str) -> str:
    """The features as of run ``:of`` into the temporary table, as a load's rows would be (``:run``)."""
    cols = ", ".join(identifier(c) for c in FEATURE_COLUMNS)
    values = ", ".join("CAST(:run AS bigint)" if c == "run_id" else identifier(c) for c in FEATURE_COLUMNS)
    return (f"INSERT INTO {q('pg_temp', STAGING)} ({cols}) SELECT {values} "
            f"FROM {q(schema, AS_OF)}(:of)")


def volume_as_of(schema: str) -> str:
    """The users and experiments the features as of run ``:of`` hold: a restore's side of the guard."""
    return f"SELECT count(*), coalesce(sum(total_experiments), 0) FROM {q(schema, AS_OF)}(:of)"


def diff_sample(schema: str) -> str:
    """The first ``:limit`` users the diff found, by id, with their values before and after (JSON)."""
    def values(alias: str) -> str:
        pairs = ", ".join(f"'{c}', {alias}.{identifier(c)}" for c in COMPARED)
        return f"CASE WHEN {alias}.user_id IS NULL THEN NULL ELSE jsonb_build_object({pairs}) END"
    return (f"SELECT d.user_id, {values('f')}, {values('s')} FROM {q('pg_temp', DIFF)} d "
            f"LEFT JOIN {q(schema, FEATURES)} f ON f.user_id = d.user_id "
            f"LEFT JOIN {q('pg_temp', STAGING)} s ON s.user_id = d.user_id ORDER BY d.user_id LIMIT :limit")


def as_of_page(schema: str) -> str:
    """The features as of run ``:run``, ``:limit`` users after user ``:after``, by user id."""
    cols = ", ".join(identifier(c) for c in FEATURE_COLUMNS)
    return (f"SELECT {cols} FROM {q(schema, AS_OF)}(:run) WHERE user_id > :after ORDER BY user_id "
            "LIMIT :limit")


def history_horizon(schema: str) -> str:
    return f"SELECT kept_from FROM {q(schema, HORIZON)}"


def changes_page(schema: str) -> str:
    """What run ``:run`` changed, ``:limit`` users after user ``:after``: each user's version before
    the run (the history's version it ended) and after it (the version it made valid: in the table, or
    in the history if a later run ended it), as JSON objects; NULL where there was none."""
    features, history = q(schema, FEATURES), q(schema, HISTORY)
    kept = ", ".join(identifier(c) for c in _VALUES)
    return (f"WITH before AS (SELECT {kept} FROM {history} WHERE valid_to = :run AND user_id > :after "
            f"ORDER BY user_id LIMIT :limit), "
            f"after AS (SELECT * FROM (SELECT {kept} FROM {features} WHERE run_id = :run AND user_id > :after "
            f"UNION ALL SELECT {kept} FROM {history} WHERE valid_from = :run AND user_id > :after) a "
            "ORDER BY user_id LIMIT :limit) "
            "SELECT coalesce(b.user_id, a.user_id) AS user_id, to_jsonb(b) - 'user_id', to_jsonb(a) - 'user_id' "
            "FROM before b FULL JOIN after a ON a.user_id = b.user_id ORDER BY 1 LIMIT :limit")


def fail_abandoned(schema: str) -> str:
    return (f"UPDATE {q(schema, RUNS)} SET status = '{RunStatus.FAILED}', finished_at = clock_timestamp(), "
            f"error = CAST(:error AS jsonb) WHERE status = '{RunStatus.RUNNING}'")


def finish_run(schema: str) -> str:
    return (f"UPDATE {q(schema, RUNS)} SET status = :status, finished_at = clock_timestamp(), "
            "files = CAST(:files AS jsonb), users_written = :written, seconds = CAST(:seconds AS jsonb), "
            "error = CAST(:error AS jsonb), fingerprint = :fingerprint, inputs = CAST(:inputs AS jsonb), "
            "same_as = :same_as, " + ", ".join(f"{c} = :{c}" for c in CHANGE_COUNTS)
            + ", restored_from = :restored_from WHERE id = :id")


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
    by their own retention first: deleting a run never cascades to an unbounded number of rows), nor a
    run that published features the history still answers for (from etl_history_horizon.kept_from on:
    the history's retention decides first)."""
    runs, rejects = q(schema, RUNS), q(schema, REJECTS)
    kept = ["(SELECT max(id) FROM " + runs + " WHERE status IN (" + ", ".join(f"'{s}'" for s in statuses) + "))"
            for statuses in (loaded, confirming)]
    return (f"DELETE FROM {runs} WHERE id IN (SELECT r.id FROM {runs} r WHERE {_older_than('days')} "
            f"AND NOT (r.id >= (SELECT kept_from FROM {q(schema, HORIZON)}) AND r.status IN ("
            + ", ".join(f"'{s}'" for s in PUBLISHED) + ")) "
            + "".join(f"AND r.id IS DISTINCT FROM {last} " for last in kept)
            + f"AND NOT EXISTS (SELECT 1 FROM {rejects} j WHERE j.run_id = r.id) ORDER BY r.id LIMIT :step)")


def history_target(schema: str, published: tuple[str, ...]) -> str:
    """The oldest run the history must still answer for: the oldest run that finished within ``:days``
    days, or later the ``:runs``-th newest run that published (0: no bound by runs), never later than
    the newest run that published (the table itself answers for it)."""
    runs = q(schema, RUNS)
    listed = ", ".join(f"'{status}'" for status in published)
    last = f"(SELECT max(id) FROM {runs} WHERE status IN ({listed}))"
    return (f"SELECT least(greatest(coalesce((SELECT min(id) FROM {runs} WHERE finished_at >= clock_timestamp() "
            f"- make_interval(days => CAST(:days AS integer))), {last}), coalesce((SELECT id FROM {runs} "
            f"WHERE status IN ({listed}) AND :runs > 0 ORDER BY id DESC OFFSET greatest(:runs - 1, 0) LIMIT 1), 0)), "
            f"{last})")


def versions_ended(schema: str, published: tuple[str, ...]) -> str:
    """The versions run ``:id`` ended (its changed and removed users), if it published (a dry run ends none)."""
    listed = ", ".join(f"'{status}'" for status in published)
    return (f"SELECT coalesce(sum(coalesce(changed, 0) + coalesce(removed, 0)), 0) FROM {q(schema, RUNS)} "
            f"WHERE id = :id AND status IN ({listed})")


def raise_horizon(schema: str) -> str:
    return f"UPDATE {q(schema, HORIZON)} SET kept_from = :kept WHERE kept_from < :kept"


def purge_history(schema: str) -> str:
    """Delete at most ``:step`` versions that ended before run ``:kept`` (the as-of of any run from
    ``:kept`` on, and its changes, need none of them), by the key: oldest first."""
    table = q(schema, HISTORY)
    return (f"DELETE FROM {table} WHERE (valid_to, user_id) IN (SELECT valid_to, user_id FROM {table} "
            "WHERE valid_to < :kept ORDER BY valid_to, user_id LIMIT :step)")


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


def maintenance_state() -> str:
    """For the table ``:table``: whether autovacuum looks after it, and its live rows, dead rows, rows
    modified since its last ANALYZE and when that was (the statistics view: it may lag a second behind);
    whether the connected role may ANALYZE and VACUUM it (its owner, or a member of the owner's role)."""
    return ("SELECT current_setting('autovacuum')::boolean AND NOT coalesce("
            "'autovacuum_enabled=false' = ANY (c.reloptions), false), s.n_live_tup, s.n_dead_tup, "
            "s.n_mod_since_analyze, coalesce(s.last_analyze, s.last_autoanalyze), pg_has_role(c.relowner, 'USAGE') "
            "FROM pg_class c "
            "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = CAST(:table AS regclass)")


# What the job's role must be allowed on each table once the schema is migrated (docs/security.md): runs,
# reloads, restores, dry runs, the sharded path and the retention's purge use no other privilege
RUNTIME_GRANTS = (
    ("etl_schema_migrations", "SELECT"),
    (RUNS, "SELECT, INSERT, UPDATE, DELETE"),
    (FEATURES, "SELECT, INSERT, UPDATE, DELETE"),
    (REJECTS, "SELECT, INSERT, DELETE"),
    (HISTORY, "SELECT, INSERT, DELETE"),
    (DIGESTS, "SELECT, INSERT, DELETE"),
    (HORIZON, "SELECT, UPDATE"),
    ("etl_shards", "SELECT, INSERT, DELETE"),
    ("etl_shard_counts", "SELECT, INSERT, DELETE"),
)


def missing_grants(schema: str) -> tuple[str, dict[str, Any]]:
    """What the connected role lacks of what a run needs, one row each: TEMPORARY on the database (a
    reload's temporary tables), USAGE on ``schema`` (if it exists), the sequence of run ids and each
    table's privileges of RUNTIME_GRANTS (those that exist); and the ownership of the features, without
    which the ANALYZE and VACUUM after a load are skipped (only the owner may run them).  The statement
    and its parameters (every name a value, none written into the text)."""
    pairs = [(q(schema, table), privilege.strip()) for table, privileges in RUNTIME_GRANTS
             for privilege in privileges.split(",")]
    statement = (
        "SELECT 'TEMPORARY on database ' || current_database(), true "
        "WHERE NOT has_database_privilege(current_database(), 'TEMPORARY') "
        "UNION ALL SELECT 'USAGE on schema ' || n.nspname, true FROM pg_namespace n WHERE n.nspname = :schema "
        "AND NOT has_schema_privilege(n.oid, 'USAGE') "
        "UNION ALL SELECT 'USAGE on sequence ' || :sequence, true WHERE to_regclass(:sequence) IS NOT NULL "
        "AND NOT has_sequence_privilege(:sequence, 'USAGE') "
        "UNION ALL SELECT x.p || ' on ' || x.t, true FROM unnest(CAST(:tables AS text[]), CAST(:privileges AS text[])) "
        "AS x(t, p) WHERE to_regclass(x.t) IS NOT NULL AND NOT has_table_privilege(x.t, x.p) "
        "UNION ALL SELECT 'ownership of ' || :features || ' (ANALYZE and VACUUM after a load are skipped without it)', "
        "false "
        "FROM pg_class c WHERE c.oid = to_regclass(:features) AND NOT pg_has_role(c.relowner, 'USAGE')")
    # each row: what is lacking, and whether a run needs it (the ownership is only the maintenance's)
    return statement, {"schema": schema, "sequence": q(schema, RUNS + "_id_seq"), "features": q(schema, FEATURES),
                       "tables": [t for t, _ in pairs], "privileges": [p for _, p in pairs]}


def lock_name(schema: str) -> str:
    """The text whose hash is the advisory lock key: one job at a time per schema."""
    return f"experiment-etl:{schema}"
