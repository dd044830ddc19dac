"""What the retention's purge costs a run: a backlog of old rejects (``--rejects`` rows over ``--runs``
runs, all past their retention) in a fresh schema, then runs' purges one after another, each bounded
by the default step (RetentionSettings: 5000 rows, 20 steps per table) until nothing is left; then
purges that find nothing among as many young rejects (what every run pays once the backlog is gone).
Prints the rows and seconds of each purge.

    .venv/bin/python bench/purge.py [--rejects 300000] [--runs 30] [--database-url URL]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl_core.config import RetentionSettings, db_settings
from etl_core.store import sql
from etl_core.store.db import close_quietly, connect
from etl_core.store.postgres import PostgresStore


def timed_purge(store: PostgresStore) -> tuple[dict[str, Any], float]:
    """One run (failed at once, as a run whose data was bad) and its retention purge: what it purged, in
    how many seconds."""
    with store.run(policy="quarantine", source="bench") as run:
        run.fail({"type": "Bench", "code": "bench", "message": "purge"})
        start = time.perf_counter()
        purged = run.purge(RetentionSettings())
        return purged, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rejects", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    schema = f"bench_purge_{uuid.uuid4().hex[:8]}"
    settings = db_settings({"DATABASE_URL": args.database_url})
    store = PostgresStore(settings, schema)
    admin = connect(settings)
    try:
        with store.run(policy="quarantine", source="bench") as run:  # creates the ledger
            run.fail({"type": "Bench", "code": "bench", "message": "setup"})
        runs, rejects = sql.q(schema, sql.RUNS), sql.q(schema, sql.REJECTS)
        admin.run(f"INSERT INTO {runs} (status, policy, data_dir, finished_at) SELECT 'partial', 'quarantine', "
                  "'bench', clock_timestamp() - interval '60 days' FROM generate_series(1, :n)", n=args.runs)
        admin.run(f"INSERT INTO {rejects} (run_id, seq, file, line, column_name, value, rule, raw) "
                  f"SELECT 2 + (i % :runs), i, 'users.csv', i, 'email', 'someone' || i || '@example.org', "
                  f"'bad_email', i || ',Some One,someone' || i || '@example.org,2023-01-01' "
                  "FROM generate_series(1, :n) i", runs=args.runs, n=args.rejects)
        admin.run(f"VACUUM ANALYZE {rejects}")
        print(f"backlog: {args.rejects} rejects of {args.runs} runs, all 60 days old; "
              f"steps of {RetentionSettings.step_rows} rows, at most {RetentionSettings.max_steps} per table")
        while True:
            purged, spent = timed_purge(store)
            print(f"purge: {purged['rejects']:7d} rejects, {purged['runs']:3d} runs in {spent:6.3f} s"
                  f"{'  (bound reached)' if purged['backlog'] else ''}")
            if not purged["rejects"] and not purged["runs"]:
                break
        # the common case afterwards: as many young rejects, every run's purge finds nothing to delete
        admin.run(f"UPDATE {runs} SET finished_at = clock_timestamp() WHERE id > 1")
        admin.run(f"INSERT INTO {rejects} (run_id, seq, file, line, column_name, value, rule, raw) "
                  f"SELECT 2 + (i % :runs), i, 'users.csv', i, 'email', 'v', 'bad_email', 'r' "
                  "FROM generate_series(1, :n) i", runs=args.runs, n=args.rejects)
        admin.run(f"VACUUM ANALYZE {rejects}")
        for _ in range(3):
            purged, spent = timed_purge(store)
            print(f"purge with {args.rejects} young rejects: {purged['rejects']} rejects, {purged['runs']} runs "
                  f"in {spent:6.3f} s")
    finally:
        store.close()
        admin.run(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        close_quietly(admin)


if __name__ == "__main__":
    main()
