"""Ours: the job itself, exactly as the handler sets up the process and calls it (service.start, then
pipeline.run with Settings.from_env)."""

from __future__ import annotations

import sys

import _common

sys.path.insert(0, str(_common.ROOT))


def main() -> None:
    opts = _common.args("ours")
    phases = _common.Phases()
    from etl_core import pipeline, service
    from etl_core.config import Settings

    phases.mark("import")
    settings = Settings.from_env({
        "DATABASE_URL": opts.database_url, "DB_SCHEMA": opts.schema, "DATA_DIR": str(opts.data),
    })
    # force: every timed run is a full load, whatever the schema held before (the load guard would refuse
    # an M run after an L run in the same schema)
    store = service.start(settings).store  # the process set up as the handler sets it up
    summary = pipeline.run(settings, pipeline.Trigger(force=True), store=store)
    phases.mark("run")
    phases.seconds.update({f"run.{k}": v for k, v in summary["seconds"].items()})
    # connect, advisory lock, schema and runs-table bookkeeping: inside pipeline.run, outside its phases
    phases.seconds["run.db_setup"] = round(phases.seconds["run"] - summary["seconds"]["total"], 3)
    phases.report("ours", rows=summary["users_written"], status=summary["status"],
                  violations=summary["violations"]["total"])


if __name__ == "__main__":
    main()
