"""SQL text, built by pure functions: names through ``identifier()``, values always as parameters."""

from __future__ import annotations

from pg8000.native import identifier

FEATURES = "user_features"
RUNS = "etl_runs"
REJECTS = "etl_rejects"
STAGING = "user_features__staging"


def q(schema: str, table: str) -> str:
    return f"{identifier(schema)}.{identifier(table)}"


def create_tables(schema: str) -> list[str]:
    """Idempotent DDL for the three tables (run while holding the job's lock)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {q(schema, RUNS)} (
            id bigserial PRIMARY KEY,
            started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at timestamptz,
            status text NOT NULL CHECK (status IN ('running', 'succeeded', 'partial', 'failed')),
            policy text NOT NULL,
            data_dir text NOT NULL,
            files jsonb,
            users_written bigint,
            seconds jsonb,
            error jsonb
        )""",
        f"""CREATE TABLE IF NOT EXISTS {q(schema, REJECTS)} (
            run_id bigint NOT NULL REFERENCES {q(schema, RUNS)} (id) ON DELETE CASCADE,
            file text NOT NULL,
            line bigint,
            column_name text,
            value text,
            rule text NOT NULL,
            raw text
        )""",
        f"CREATE INDEX IF NOT EXISTS {identifier(REJECTS + '_run_id')} ON {q(schema, REJECTS)} (run_id)",
        features_table(schema, FEATURES, if_not_exists=True, primary_key=True),
    ]


def features_table(schema: str, table: str, *, if_not_exists: bool = False, primary_key: bool = False) -> str:
    return f"""CREATE TABLE {'IF NOT EXISTS ' if if_not_exists else ''}{q(schema, table)} (
        user_id bigint NOT NULL{' PRIMARY KEY' if primary_key else ''},
        user_name text NOT NULL,
        total_experiments bigint NOT NULL,
        most_common_compounds text,
        most_common_compound_ids bigint[],
        average_experiments double precision NOT NULL,
        run_id bigint NOT NULL
    )"""


FEATURE_COLUMNS = (
    "user_id", "user_name", "total_experiments", "most_common_compounds",
    "most_common_compound_ids", "average_experiments", "run_id",
)
REJECT_COLUMNS = ("run_id", "file", "line", "column_name", "value", "rule", "raw")


def copy_in(schema: str, table: str, columns: tuple[str, ...]) -> str:
    cols = ", ".join(identifier(c) for c in columns)
    return f"COPY {q(schema, table)} ({cols}) FROM STDIN WITH (FORMAT csv)"


def swap_in_staging(schema: str) -> list[str]:
    """Replace the features table by the staging table: the caller runs these inside its transaction."""
    return [
        f"ALTER TABLE {q(schema, STAGING)} ADD PRIMARY KEY (user_id)",
        f"DROP TABLE {q(schema, FEATURES)}",
        f"ALTER TABLE {q(schema, STAGING)} RENAME TO {identifier(FEATURES)}",
        f"ALTER INDEX {q(schema, STAGING + '_pkey')} RENAME TO {identifier(FEATURES + '_pkey')}",
    ]


def lock_name(schema: str) -> str:
    """The text whose hash is the advisory lock key: one job at a time per schema."""
    return f"experiment-etl:{schema}"
