"""What the comparison implementations share: arguments, the target table, the JSON result line.

Standard library only, so that importing it costs every implementation the same (next to nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

STARTED = time.perf_counter()  # as near to interpreter start as a script can take it
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TABLE = "user_features"
COLUMNS = ("user_id", "user_name", "total_experiments", "most_common_compounds",
           "most_common_compound_ids", "average_experiments", "run_id")
RUN_ID = 1  # the comparison implementations have no runs table: a constant run id


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """One measuring process at a time (run.py, profile_ours.py): two at once on two cores measure nothing."""
    path = ROOT / "bench" / "out" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            print(f"waiting for another benchmark process ({f.read().strip() or 'unknown'}) ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.truncate(0)
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def args(impl: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"benchmark implementation: {impl}")
    parser.add_argument("--data", type=Path, required=True, help="directory with the three CSV files")
    parser.add_argument("--schema", default=f"bench_{impl}")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    return parser.parse_args()


def pg_params(url: str) -> dict[str, Any]:
    """pg8000 connection keywords from a postgresql:// URL (host, port, user, password, database)."""
    parts = urlsplit(url)
    return {
        "host": unquote(parts.hostname or "127.0.0.1"),
        "port": parts.port or 5432,
        "user": unquote(parts.username or "postgres"),
        "password": unquote(parts.password) if parts.password else None,
        "database": unquote(parts.path.lstrip("/")) or "postgres",
    }


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(schema: str) -> list[str]:
    """The same table as etl_core (sql.features_table); the primary key is added after the load."""
    return [
        f"CREATE SCHEMA IF NOT EXISTS {q(schema)}",
        f"DROP TABLE IF EXISTS {q(schema)}.{TABLE}",
        f"""CREATE TABLE {q(schema)}.{TABLE} (
            user_id bigint NOT NULL,
            user_name text NOT NULL,
            total_experiments bigint NOT NULL,
            most_common_compounds text,
            most_common_compound_ids bigint[],
            average_experiments double precision NOT NULL,
            run_id bigint NOT NULL
        )""",
    ]


def copy_sql(schema: str) -> str:
    return f"COPY {q(schema)}.{TABLE} ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)"


def copy_into_new_table(conn: Any, schema: str, csv: Any) -> int:
    """In a transaction of its own, left open: the table made anew, then ``csv`` (a file or an iterable
    of chunks) COPYed into it; the rows the COPY read."""
    conn.run("BEGIN")
    for statement in create_table_sql(schema):
        conn.run(statement)
    conn.run(copy_sql(schema), stream=csv)
    return int(conn.row_count)


def primary_key_sql(schema: str) -> str:
    return f"ALTER TABLE {q(schema)}.{TABLE} ADD PRIMARY KEY (user_id)"


class Phases:
    """Wall-clock seconds per named phase, and the JSON line every implementation ends with."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = STARTED

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now

    def report(self, impl: str, **extra: Any) -> None:
        self.seconds["script_total"] = round(time.perf_counter() - STARTED, 3)
        print(json.dumps({"impl": impl, "phases": self.seconds, **extra}), flush=True)

