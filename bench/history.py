"""What a reload costs when few users changed, and what the history weighs: one checkout, one process.

    python bench/generate.py --scale L --changed 0.01 && python bench/generate.py --scale L --changed 1
    python bench/history.py --scale L                       # this checkout
    python bench/history.py --scale L --code /work/main     # another checkout (today's replace), to compare

In a fresh schema: a first load of <scale>; a reload of <scale>-changed1 (1% of the users renamed);
with --reloads N (default 10) more 1% reloads, alternating the two sets (each changes the same 1%),
after which the history's size is compared with the table's; then a reload of <scale>-changed100
(every user renamed).  Printed as one JSON document: each load's seconds and phases, the users it
added/changed/removed, the rows it inserted, updated and deleted (pg_stat_user_tables: each update
or delete leaves a dead row), the table's and the history's sizes, and the process's peak RSS.
Interleave rounds of two checkouts yourself (see bench/README.md); compare ratios, not seconds,
on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import _common

BENCH = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="L")
    parser.add_argument("--code", type=Path, default=_common.ROOT, help="checkout whose etl_core is measured")
    parser.add_argument("--reloads", type=int, default=10, help="1%% reloads before the history is weighed")
    parser.add_argument("--database-url", default=_common.DEFAULT_URL)
    parser.add_argument("--schema", default="bench_history")
    opts = parser.parse_args()
    sys.path.insert(0, str(opts.code.resolve()))
    import pg8000.native

    from etl_core import pipeline
    from etl_core.config import Settings

    admin = pg8000.native.Connection(**_common.pg_params(opts.database_url), application_name="bench-history")
    admin.run(f'DROP SCHEMA IF EXISTS "{opts.schema}" CASCADE')
    table = f'"{opts.schema}".user_features'
    history = f'"{opts.schema}".user_features_history'

    def tuples() -> tuple[int, int, int]:
        admin.run("SELECT pg_stat_clear_snapshot()")
        rows = admin.run("SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relid = "
                         "CAST(:t AS regclass)", t=table)
        return tuple(rows[0]) if rows else (0, 0, 0)  # type: ignore[return-value]

    def size(name: str) -> int | None:
        rows = admin.run("SELECT pg_total_relation_size(CAST(:t AS regclass))", t=name) if admin.run(
            "SELECT to_regclass(:t)", t=name)[0][0] else []
        return int(rows[0][0]) if rows else None

    def load(name: str) -> dict[str, Any]:
        settings = Settings.from_env({"DATABASE_URL": opts.database_url, "DB_SCHEMA": opts.schema,
                                      "DATA_DIR": str(BENCH / "out" / name)})
        before = tuples() if size(table) is not None else (0, 0, 0)
        started = time.perf_counter()
        summary = pipeline.run(settings, pipeline.Trigger())
        wall = time.perf_counter() - started
        time.sleep(0.6)  # the statistics collector's reports reach pg_stat_user_tables within 500 ms
        after = tuples()
        return {"data": name, "wall": round(wall, 3), "seconds": summary["seconds"], "status": summary["status"],
                "changes": summary.get("changes"),
                "inserted": after[0] - before[0], "updated": after[1] - before[1], "deleted": after[2] - before[2]}

    with _common.exclusive():
        loads = [load(opts.scale), load(f"{opts.scale}-changed1")]
        for i in range(opts.reloads - 1):
            loads.append(load(opts.scale if i % 2 == 0 else f"{opts.scale}-changed1"))
        weighed = {"table_bytes": size(table), "history_bytes": size(history)}
        loads.append(load(f"{opts.scale}-changed100"))
    [[live]] = admin.run(f"SELECT count(*) FROM {table}")
    admin.run(f'DROP SCHEMA "{opts.schema}" CASCADE')
    admin.close()
    one_percent = [entry for entry in loads[1:-1]]
    print(json.dumps({
        "code": str(opts.code), "scale": opts.scale, "live_rows": live,
        "first": loads[0], "reload_1pct": loads[1], "all_changed": loads[-1],
        "reloads_1pct_wall": [entry["wall"] for entry in one_percent],
        "reloads_1pct_load": [entry["seconds"].get("load") for entry in one_percent],
        "after_reloads": {**weighed, "history_to_table": None if not weighed["history_bytes"] or not
                          weighed["table_bytes"] else round(weighed["history_bytes"] / weighed["table_bytes"], 3)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
