"""The tables the job writes, each described once: every column's name, Arrow type, PostgreSQL type,
whether it may be NULL, the schema version that added it and what it means.  The features' Arrow
schema (``transform``), the DDL and the COPY column lists (``store.sql``), the encoders
(``store.postgres``, ``store.copy_binary``) and the benchmark's mirrored table are made from, or
checked against, these descriptions.  A column also says what its DDL needs beyond its type (a default,
a sequence, a CHECK, a foreign key), so that ``store.sql`` makes a table as any schema version had it
(its columns of that version or before).  Pure: pyarrow's types and the run statuses only."""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from etl_core.status import RunStatus


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    arrow: pa.DataType
    sql: str  # as PostgreSQL's format_type() names it
    meaning: str
    nullable: bool = False
    since: int = 1  # the schema version that added the column
    default: str = ""  # the SQL expression a row gets when it names no value ("": none)
    serial: bool = False  # numbered by a sequence of its own (bigserial): its default is the next number
    check: str = ""  # an SQL condition each value meets (the constraint <table>_<column>_check)
    # (table, column) of the same schema whose value this column holds; deleting that row deletes this one
    references: tuple[str, str] | None = None

    def field(self) -> pa.Field:
        return pa.field(self.name, self.arrow, nullable=self.nullable)


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: str  # the primary key's column (or columns, comma-separated)
    purpose: str = ""  # what the table is for and what readers may rely on (docs/tables.md)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def sql_types(self) -> dict[str, str]:
        return {c.name: c.sql for c in self.columns}

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def as_of(self, version: int) -> tuple[Column, ...]:
        """The columns the table had at schema ``version``: those added by it or before, in order."""
        return tuple(c for c in self.columns if c.since <= version)

    def added_by(self, version: int) -> tuple[Column, ...]:
        """The columns schema ``version`` added to the table."""
        return tuple(c for c in self.columns if c.since == version)

    def arrow_schema(self, *, without: tuple[str, ...] = ()) -> pa.Schema:
        return pa.schema([c.field() for c in self.columns if c.name not in without])


USER_FEATURES = Table("user_features", key="user_id", purpose=(
    "The features, one row per accepted user of the last load. This is the table readers use: it is created "
    "once and then only written inside one transaction per load, so its identity (and the views, grants, "
    "comments, indexes and triggers readers add to it) stays, and a reader sees the whole previous load or "
    "the whole new one. Readers may rely on every column below; the challenge's example names "
    "`most_common_compounds` 'common_compound' and `user_id` 'id'."), columns=(
    Column("user_id", pa.int64(), "bigint", "the user's id, as in users.csv"),
    Column("user_name", pa.string(), "text", "the user's name, as in users.csv (trimmed)"),
    Column("total_experiments", pa.int64(), "bigint", "how many accepted experiments the user ran"),
    Column("most_common_compounds", pa.string(), "text",
           "the names of the compounds the user's experiments listed most often, all of them when tied, in "
           "compound id order, joined by ';' (NULL: no experiment)", nullable=True),
    Column("most_common_compound_ids", pa.list_(pa.int64()), "bigint[]",
           "the same compounds' ids, in the same order (NULL: no experiment)", nullable=True),
    Column("average_experiments", pa.float64(), "double precision",
           "accepted experiments per accepted user, over the whole load (the same on every row)"),
    Column("run_id", pa.int64(), "bigint",
           "the run (etl_runs.id) that wrote the row as it is: added the user or last changed a value of theirs"),
))
# the columns the store adds to what a run computes (the run's id)
STORE_ADDS = ("run_id",)

# Each version of a user's features that a later run ended (changed or removed the user), with the run that
# made it valid and the run that ended it (SCD type 2).  The versions still valid are user_features' rows
# (their run_id is the run that made them valid): a run writes here only for the users it changes or
# removes, never a copy of the whole table (schema version 3).  Its columns follow user_features': those
# the features had at version 3 (but run_id), the two runs, then each feature column a later version added,
# as that version's step adds it to both tables.
USER_FEATURES_HISTORY = Table("user_features_history", key="valid_to, user_id", purpose=(
    "Each version of a user's features that a later run ended, with the run that made it valid and the run that "
    "ended it (SCD type 2); the versions still valid are `user_features`' rows. `user_features_as_of(N)` "
    "answers the features as they were after run N, `GET /runs/{run_id}/features` and `/changes` page it "
    "(personal data: behind the rejects permission). Versions older than the history's retention are purged."),
    columns=(
    *(dataclasses.replace(c, since=3) for c in USER_FEATURES.as_of(3) if c.name != "run_id"),
    Column("valid_from", pa.int64(), "bigint", "the run (etl_runs.id) that made this version valid", since=3),
    Column("valid_to", pa.int64(), "bigint",
           "the run that ended it: changed the user's features or removed the user", since=3),
    *(c for c in USER_FEATURES.columns if c.since > 3),
))
# the feature values a change is judged on: every column but the key and the run
COMPARED = tuple(c for c in USER_FEATURES.names if c not in ("user_id", "run_id"))

_TIMESTAMP = pa.timestamp("us", tz="UTC")

ETL_RUNS = Table("etl_runs", key="id", purpose=(
    "The ledger: one row per run, written when the run starts and finished with its outcome (in the same "
    "transaction as the features it published). `GET /runs` and `GET /runs/{run_id}` read it. Readers may "
    "rely on `id`, `status`, `started_at`, `finished_at`, `users_written` and `same_as`; `files`, `seconds`, "
    "`error` and `inputs` are JSON whose members may grow. Rows older than `ETL_RUNS_RETENTION_DAYS` are "
    "purged (docs/operating.md)."), columns=(
    Column("id", pa.int64(), "bigint", "the run's id, increasing", serial=True),
    Column("started_at", _TIMESTAMP, "timestamp with time zone", "when the run started (the server's clock)",
           default="clock_timestamp()"),
    Column("finished_at", _TIMESTAMP, "timestamp with time zone", "when it finished; NULL while running",
           nullable=True),
    Column("status", pa.string(), "text",
           "running, succeeded, partial, failed, unchanged, restored or dry_run (etl_core/status.py)",
           check="status IN (" + ", ".join(f"'{status}'" for status in RunStatus) + ")"),
    Column("policy", pa.string(), "text", "strict or quarantine"),
    Column("data_dir", pa.string(), "text", "where it read: a directory, or an s3:// prefix"),
    Column("files", pa.string(), "jsonb", "per file: rows_read, rows_accepted, rows_rejected, extra_columns",
           nullable=True),
    Column("users_written", pa.int64(), "bigint", "rows written to user_features (0 when unchanged)",
           nullable=True),
    Column("seconds", pa.string(), "jsonb", "time per phase: extract, transform, load, total", nullable=True),
    Column("error", pa.string(), "jsonb", "a failed run's error, as the API answered it", nullable=True),
    Column("fingerprint", pa.string(), "text", "what decides whether a later trigger is unchanged", nullable=True,
           since=1),
    Column("inputs", pa.string(), "jsonb", "each input file's key, size and identity as the run found it",
           nullable=True),
    Column("same_as", pa.int64(), "bigint", "an unchanged run: the run that loaded the same input",
           nullable=True),
    *(Column(name, pa.int64(), "bigint", f"users the run {what}", nullable=True, since=3) for name, what in (
        ("added", "added to user_features"), ("changed", "changed in user_features"),
        ("removed", "removed from user_features"), ("unchanged", "left as they were (a dry run: would have)"))),
    Column("restored_from", pa.int64(), "bigint", "a restore: the run whose features it published again",
           nullable=True, since=3),
))

ETL_REJECTS = Table("etl_rejects", key="run_id, seq", purpose=(
    "The rows a quarantine run rejected, one row per broken rule, for `GET /runs/{run_id}/rejects` (personal "
    "data: behind its own permission). Kept `ETL_REJECTS_RETENTION_DAYS`; with `ETL_REJECTS_KEEP_RAW=false` "
    "`value` and `raw` are NULL and `raw_sha256` holds the row's hash. A run's rows go with the run."), columns=(
    Column("run_id", pa.int64(), "bigint", "the run (etl_runs.id) that rejected the row",
           references=(ETL_RUNS.name, "id")),
    Column("seq", pa.int64(), "bigint", "the reject's number within its run: 1, 2, ..."),
    Column("file", pa.string(), "text", "the input file"),
    Column("line", pa.int64(), "bigint", "the 1-based line of the file; NULL for a problem of the whole file",
           nullable=True),
    Column("column_name", pa.string(), "text", "the column whose rule the row broke; NULL: the whole row",
           nullable=True),
    Column("value", pa.string(), "text", "the offending value (NUL bytes shown as \\x00)", nullable=True),
    Column("rule", pa.string(), "text", "the rule code (docs/contract.md)"),
    Column("raw", pa.string(), "text", "the line as read", nullable=True),
    Column("raw_sha256", pa.string(), "text", "the line's SHA-256 (hex, of its UTF-8 text) where `raw` is not kept",
           nullable=True, since=2),
))

HISTORY_HORIZON = Table("etl_history_horizon", key="one", purpose=(
    "One row: the oldest run the history still answers for (`/runs/{run_id}/features`, `/changes`, restore); "
    "older ones are answered 410 `history_purged`. Raised by the history's retention before it purges."),
    columns=(
    Column("one", pa.bool_(), "boolean", "always true: the table holds one row", since=3),
    Column("kept_from", pa.int64(), "bigint", "the oldest run the history answers for", since=3),
))

ETL_SHARDS = Table("etl_shards", key="batch, shard", purpose=(
    "The sharded path's staging (docs/scale.md): what each counted shard of a batch read. UNLOGGED: a "
    "crash empties it, and the reduce then refuses; not for readers."), columns=(
    Column("batch", pa.string(), "text", "the Step Functions execution's name", since=4),
    Column("shard", pa.int32(), "integer", "the shard's number in its batch", since=4),
    Column("shards", pa.int32(), "integer", "how many shards the batch has", since=4),
    Column("identity", pa.string(), "text",
           "the identities of the three files the shard read (user_experiments.csv, users.csv, compounds.csv)",
           since=4),
    Column("first_byte", pa.int64(), "bigint", "where its byte range starts", since=4),
    Column("end_byte", pa.int64(), "bigint", "where it ends", since=4),
    Column("rows_read", pa.int64(), "bigint", "rows read", since=4),
    Column("rows_rejected", pa.int64(), "bigint", "rows rejected", since=4),
    Column("experiments", pa.int64(), "bigint", "experiments accepted", since=4),
    Column("first_experiment_id", pa.int64(), "bigint", "its first experiment id", nullable=True, since=4),
    Column("last_experiment_id", pa.int64(), "bigint", "its last experiment id", nullable=True, since=4),
    Column("increasing", pa.bool_(), "boolean", "whether its experiment ids increase", since=4),
    Column("violations", pa.string(), "jsonb", "its first violations", since=4),
    Column("counted_at", _TIMESTAMP, "timestamp with time zone", "when it was counted", since=4),
))

ETL_SHARD_COUNTS = Table("etl_shard_counts", key="(none)", purpose=(
    "The sharded path's partial counts: per shard, each (user, compound) pair's count, and each user's "
    "experiments (compound NULL); summed by the reduce in SQL. UNLOGGED; not for readers."), columns=(
    Column("batch", pa.string(), "text", "the batch", since=4),
    Column("shard", pa.int32(), "integer", "the shard", since=4),
    Column("user_id", pa.int64(), "bigint", "the user", since=4),
    Column("compound_id", pa.int64(), "bigint", "the compound; NULL: the user's experiments", nullable=True,
           since=4),
    Column("n", pa.int64(), "bigint", "the count", since=4),
))

FEATURE_DIGESTS = Table("etl_feature_digests", key="run_id", purpose=(
    "One row: each user's digest (etl_core/features/digests.py) as the newest publication left the features, "
    "so that a reload sends the database only the users whose digest differs. UNLOGGED, a cache: when it is "
    "empty, or stored by an older run than the newest that published (a restore stores none), the next load "
    "compares every value on the server and stores it again; not for readers."), columns=(
    Column("run_id", pa.int64(), "bigint", "the run whose features these are", since=5),
    Column("algorithm", pa.int32(), "integer", "the digest's version: another one is not compared", since=5),
    Column("users", pa.int64(), "bigint", "how many users", since=5),
    Column("digests", pa.binary(), "bytea", "an Arrow IPC stream: user_id (ascending) and digest (uint64)", since=5),
))

SCHEMA_MIGRATIONS = Table("etl_schema_migrations", key="version", purpose=(
    "The schema's versions this database has: one row per step applied (etl_core/store/migrations.py). A "
    "release refuses a schema newer than it knows."), columns=(
    Column("version", pa.int32(), "integer", "the step's number"),
    Column("description", pa.string(), "text", "what the step did"),
    Column("applied_at", _TIMESTAMP, "timestamp with time zone", "when"),
    Column("applied_by", pa.string(), "text", "the release that applied it"),
))

# every table the job writes, in the order docs/tables.md lists them
TABLES = (USER_FEATURES, USER_FEATURES_HISTORY, ETL_RUNS, ETL_REJECTS, HISTORY_HORIZON, ETL_SHARDS, ETL_SHARD_COUNTS,
          FEATURE_DIGESTS, SCHEMA_MIGRATIONS)


def markdown() -> str:
    """docs/tables.md."""
    out = ["# The tables the job writes", "",
           "Every table in `DB_SCHEMA` (default `public`; `./build.sh --local` uses a schema of its own,",
           "`experiment_etl`). This page is made from `etl_core/tables.py` by `python -m etl_core tables`; a",
           "test holds it, and the tables in a database migrated to this release, to those descriptions."]
    for table in TABLES:
        out += ["", f"## `{table.name}`", "", table.purpose, "", f"Primary key: `{table.key}`.", "",
                "| column | type | NULL | since | meaning |", "|---|---|---|---|---|"]
        out += [f"| `{c.name}` | {c.sql} | {'yes' if c.nullable else 'no'} | {c.since} | {c.meaning} |"
                for c in table.columns]
    return "\n".join(out) + "\n"
