"""Where a load's publication spends its time, statement by statement: loads run one after the other in
one fresh schema, each of pg8000's calls that took longer than a threshold printed with its seconds.

    python bench/statements.py L L-changed100        # a first load of L, then a reload where every user changed
    python bench/statements.py L L-changed1 --min 0.01

The data directories are under bench/out/ (bench/generate.py).  In-process, this checkout's etl_core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _common

BENCH = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", help="directories under bench/out/, loaded in this order")
    parser.add_argument("--min", type=float, default=0.05, help="print calls that took at least this many seconds")
    parser.add_argument("--database-url", default=_common.DEFAULT_URL)
    parser.add_argument("--schema", default="bench_statements")
    parser.add_argument("--force", action="store_true", help="load unchanged files too (every value compared)")
    opts = parser.parse_args()
    sys.path.insert(0, str(_common.ROOT))
    import pg8000.native

    from etl_core import pipeline
    from etl_core.config import Settings

    admin = pg8000.native.Connection(**_common.pg_params(opts.database_url), application_name="bench-statements")
    admin.run(f'DROP SCHEMA IF EXISTS "{opts.schema}" CASCADE')
    calls: list[tuple[float, str]] = []
    run = pg8000.native.Connection.run

    def timed(self: Any, statement: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return run(self, statement, *args, **kwargs)
        finally:
            seconds = time.perf_counter() - started
            if seconds >= opts.min:
                calls.append((seconds, " ".join(statement.split())[:120]))

    pg8000.native.Connection.run = timed
    with _common.exclusive():
        for name in opts.data:
            settings = Settings.from_env({"DATABASE_URL": opts.database_url, "DB_SCHEMA": opts.schema,
                                          "DATA_DIR": str(BENCH / "out" / name)})
            calls.clear()
            started = time.perf_counter()
            summary = pipeline.run(settings, pipeline.Trigger(force=opts.force))
            print(f"{name}: {time.perf_counter() - started:.2f} s, phases {summary['seconds']}, "
                  f"changes {summary.get('changes')}")
            for seconds, statement in calls:
                print(f"  {seconds:6.2f} s  {statement}")
    pg8000.native.Connection.run = run
    admin.run(f'DROP SCHEMA "{opts.schema}" CASCADE')
    admin.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
