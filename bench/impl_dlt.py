"""dlt, plain: what a data engineer would write with dlt's PostgreSQL destination.  The features from
the same SQL as impl_duckdb.py, fetched from DuckDB as an Arrow table and handed to
``pipeline.run(..., write_disposition="replace")`` with the csv loader file format (dlt writes the
Arrow table as CSV and loads it by COPY; its default, insert_values, turns every row into Python
objects and SQL literals).  dlt has no array type for PostgreSQL, so the ids arrive as their array
literal in a text column (``{1,3}``) and one ``ALTER TABLE ... TYPE bigint[]`` afterwards makes the
column ours.  dlt's text columns are ``varchar`` (unbounded: the same values as ``text``).  No primary
key, as in the other plain peers.  Everything else is dlt's default (it gzips the CSV file it writes).

What dlt adds next to our table: its own tables in the same schema (``_dlt_loads``, ``_dlt_version``,
``_dlt_pipeline_state``), and its working files in a pipelines directory (a temporary one here, so
that each run starts as a fresh process in a container would: it restores its state from the
destination).  An Arrow table gets no ``_dlt_id`` / ``_dlt_load_id`` columns by default.  Telemetry is
switched off (it would send each run to dlthub).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _common

# the columns our table allows to be empty: the others are declared NOT NULL in the Arrow schema
# handed to dlt, from which dlt takes each column's type and nullability
NULLABLE = ("most_common_compounds", "most_common_compound_ids")


def main() -> None:
    opts = _common.args("dlt")
    phases = _common.Phases()
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    import duckdb
    import pyarrow as pa
    from impl_duckdb import FEATURES_SQL, read_small_tables

    phases.mark("import")
    data: Path = opts.data
    db = duckdb.connect()
    read_small_tables(db, data)
    query = FEATURES_SQL.replace(":experiments", "$experiments").replace(":run_id", "$run_id")
    features = db.sql(query, params={"experiments": str(data / "user_experiments.csv"),
                                     "run_id": _common.RUN_ID}).to_arrow_table()
    db.close()
    features = features.cast(pa.schema([f.with_nullable(f.name in NULLABLE) for f in features.schema]))
    phases.mark("compute")
    params = _common.pg_params(opts.database_url)
    # dlt asks for a password even where the server trusts the connection
    credentials = {"host": params["host"], "port": params["port"], "username": params["user"],
                   "password": params["password"] or "", "database": params["database"]}
    with tempfile.TemporaryDirectory(prefix="bench-dlt-") as tmp:
        pipeline = dlt.pipeline(pipeline_name="bench_dlt", pipelines_dir=tmp,
                                destination=dlt.destinations.postgres(credentials=credentials),
                                dataset_name=opts.schema)
        pipeline.run(features, table_name=_common.TABLE, write_disposition="replace",
                     loader_file_format="csv")
        phases.mark("run")
        # dlt's own steps from its trace; run.other: the pipeline's setup, its state restored from
        # the destination, and what lies between the steps
        for step in pipeline.last_trace.steps:
            if step.step != "run":
                phases.seconds[f"run.{step.step}"] = round((step.finished_at - step.started_at).total_seconds(), 3)
        phases.seconds["run.other"] = round(phases.seconds["run"] - sum(
            v for k, v in phases.seconds.items() if k.startswith("run.")), 3)
        with pipeline.sql_client() as client:
            table = client.make_qualified_table_name(_common.TABLE)
            client.execute_sql(f"ALTER TABLE {table} ALTER COLUMN most_common_compound_ids TYPE bigint[] "
                               f"USING most_common_compound_ids::bigint[]")
        phases.mark("ids_to_array")
    phases.report("dlt", rows=features.num_rows)


if __name__ == "__main__":
    main()
