"""What replacing a full table costs, and what readers see meanwhile: the second load of one data set.

    python bench/publish.py --scale L                      # this checkout
    python bench/publish.py --scale L --code /tmp/old      # another checkout's etl_core (e.g. the old swap)
    python bench/publish.py --scale L --hold-reader        # and a REPEATABLE READ reader open across the commit

A fresh schema gets a first load (the table was empty), then a second load of the same files, which
replaces every row.  Meanwhile one session looks up a user by key every 10 ms and records how long
each lookup took (a lookup takes well under a millisecond: the rest is waiting for a lock).  Printed:
both loads' seconds and phases, the table's size and dead rows after the second, and the readers'
longest wait.  Run bench/generate.py --scale L first (or bench/run.py, which generates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _common

BENCH = Path(__file__).resolve().parent


class Reader(threading.Thread):
    def __init__(self, url: str, schema: str, *, hold: bool) -> None:
        super().__init__(daemon=True)
        import pg8000.native

        self.conn = pg8000.native.Connection(**_common.pg_params(url), application_name="bench-reader")
        self.held = pg8000.native.Connection(**_common.pg_params(url), application_name="bench-held") if hold else None
        self.table = f'"{schema}".user_features'
        self.waits: list[float] = []
        self.run_ids: list[int] = []
        self.stop = threading.Event()
        self.error: str | None = None

    def open_snapshot(self) -> int | None:
        if self.held is None:
            return None
        self.held.run("BEGIN ISOLATION LEVEL REPEATABLE READ")
        return int(self.held.run(f"SELECT run_id FROM {self.table} WHERE user_id = 1")[0][0])

    def close_snapshot(self) -> int | None:
        if self.held is None:
            return None
        seen = int(self.held.run(f"SELECT run_id FROM {self.table} WHERE user_id = 1")[0][0])
        self.held.run("COMMIT")
        return seen

    def run(self) -> None:
        try:
            while not self.stop.wait(0.010):
                started = time.perf_counter()
                [[run_id]] = self.conn.run(f"SELECT run_id FROM {self.table} WHERE user_id = 1")
                self.waits.append(time.perf_counter() - started)
                self.run_ids.append(run_id)
        except Exception as exc:  # noqa: BLE001 - reported
            self.error = f"{type(exc).__name__}: {exc}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="L")
    parser.add_argument("--code", type=Path, default=_common.ROOT, help="checkout whose etl_core is measured")
    parser.add_argument("--hold-reader", action="store_true",
                        help="also hold a REPEATABLE READ transaction open across the second load's commit")
    parser.add_argument("--database-url", default=_common.DEFAULT_URL)
    opts = parser.parse_args()
    sys.path.insert(0, str(opts.code.resolve()))
    from etl_core import pipeline
    from etl_core.config import Settings

    data = BENCH / "out" / opts.scale
    schema = "bench_publish"
    import pg8000.native

    admin = pg8000.native.Connection(**_common.pg_params(opts.database_url), application_name="bench-publish")
    admin.run(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    settings = Settings.from_env({"DATABASE_URL": opts.database_url, "DB_SCHEMA": schema, "DATA_DIR": str(data)})
    # the same files twice: force the second load (a checkout that knows 'unchanged' would skip it)
    known = {f.name for f in dataclasses.fields(pipeline.Trigger)}
    full_load = pipeline.Trigger(**({"force": True} if "force" in known else {}))
    with _common.exclusive():
        first = pipeline.run(settings, pipeline.Trigger())
        reader = Reader(opts.database_url, schema, hold=opts.hold_reader)
        before = reader.open_snapshot()
        reader.start()
        time.sleep(0.2)
        started = time.perf_counter()
        try:
            second: dict[str, Any] = pipeline.run(settings, full_load)
        except Exception as exc:  # noqa: BLE001 - the old swap fails behind a held reader: report it
            second = {"error": f"{type(exc).__name__}: {exc}"[:300], "seconds": {}}
        wall = time.perf_counter() - started
        time.sleep(0.2)
        reader.stop.set()
        reader.join()
        after = reader.close_snapshot()
    [[size, heap, dead, live]] = admin.run(
        "SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid), s.n_dead_tup, s.n_live_tup "
        "FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = CAST(:t AS regclass)",
        t=f'"{schema}".user_features')
    admin.run(f'DROP SCHEMA "{schema}" CASCADE')
    admin.close()
    print(json.dumps({
        "code": str(opts.code), "scale": opts.scale,
        "first": {"seconds": first["seconds"], "users": first["users_written"]},
        "second": {"wall": round(wall, 3), "seconds": second["seconds"], "error": second.get("error")},
        "table_mb": round(size / 1e6, 1), "heap_mb": round(heap / 1e6, 1), "dead_rows": dead, "live_rows": live,
        "reader": {"samples": len(reader.waits), "longest_wait_ms": round(max(reader.waits, default=0) * 1000, 1),
                   "run_ids_seen": sorted(set(reader.run_ids)), "error": reader.error},
        "held_reader_saw": None if before is None else {"before": before, "after_commit": after},
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
