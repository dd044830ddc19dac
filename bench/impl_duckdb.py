"""DuckDB: the features in one SQL query over the CSV files, written to a CSV file by DuckDB, then
streamed into PostgreSQL with COPY through pg8000 (one transaction, primary key added after the load)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import _common

FEATURES_SQL = """
WITH exp AS (
    SELECT user_id,
           list_distinct(CAST(string_split(experiment_compound_ids, ';') AS BIGINT[])) AS ids
    FROM read_csv(:experiments, header = true, quote = '"', escape = '"',
                  columns = {'experiment_id': 'BIGINT', 'user_id': 'BIGINT',
                             'experiment_compound_ids': 'VARCHAR', 'experiment_run_time': 'DOUBLE'})
),
per_user AS (SELECT user_id, count(*) AS total FROM exp GROUP BY user_id),
pairs AS (
    SELECT user_id, compound_id, count(*) AS n
    FROM (SELECT user_id, unnest(ids) AS compound_id FROM exp)
    GROUP BY user_id, compound_id
),
best AS (SELECT user_id, compound_id FROM pairs QUALIFY n = max(n) OVER (PARTITION BY user_id)),
favourites AS (
    SELECT b.user_id,
           string_agg(c.compound_name, ';' ORDER BY b.compound_id) AS names,
           '{' || string_agg(CAST(b.compound_id AS VARCHAR), ',' ORDER BY b.compound_id) || '}' AS ids
    FROM best b JOIN compounds c ON c.compound_id = b.compound_id
    GROUP BY b.user_id
),
total AS (SELECT count(*) AS experiments FROM exp)
SELECT u.user_id, u.name AS user_name, coalesce(p.total, 0) AS total_experiments,
       f.names AS most_common_compounds, f.ids AS most_common_compound_ids,
       CAST((SELECT experiments FROM total) AS DOUBLE) / (SELECT count(*) FROM users) AS average_experiments,
       CAST(:run_id AS BIGINT) AS run_id
FROM users u LEFT JOIN per_user p USING (user_id) LEFT JOIN favourites f USING (user_id)
"""


def read_small_tables(db: Any, data: Path) -> None:
    """users and compounds as DuckDB tables, typed as the contract says."""
    db.execute("""CREATE TABLE users AS SELECT user_id, name FROM read_csv(?, header = true, quote = '"',
                  escape = '"', columns = {'user_id': 'BIGINT', 'name': 'VARCHAR', 'email': 'VARCHAR',
                  'signup_date': 'DATE'})""", [str(data / "users.csv")])
    db.execute("""CREATE TABLE compounds AS SELECT compound_id, compound_name FROM read_csv(?, header = true,
                  quote = '"', escape = '"', columns = {'compound_id': 'BIGINT', 'compound_name': 'VARCHAR',
                  'compound_structure': 'VARCHAR'})""", [str(data / "compounds.csv")])


def write_features_csv(db: Any, data: Path, out: Path) -> None:
    """The features query over the experiments file, written by DuckDB as CSV to ``out``."""
    query = FEATURES_SQL.replace(":experiments", "$experiments").replace(":run_id", "$run_id")
    db.execute(f"COPY ({query}) TO '{out}' (FORMAT csv, HEADER false)",
               {"experiments": str(data / "user_experiments.csv"), "run_id": _common.RUN_ID})


def main() -> None:
    opts = _common.args("duckdb")
    phases = _common.Phases()
    import duckdb
    import pg8000.native

    phases.mark("import")
    data: Path = opts.data
    db = duckdb.connect()
    read_small_tables(db, data)
    phases.mark("read_small")
    with tempfile.TemporaryDirectory(prefix="bench-duckdb-") as tmp:
        out = Path(tmp) / "features.csv"
        write_features_csv(db, data, out)
        phases.mark("compute_and_write_csv")
        db.close()
        conn = pg8000.native.Connection(**_common.pg_params(opts.database_url), application_name="bench-duckdb")
        with open(out, "rb") as f:
            _common.copy_into_new_table(conn, opts.schema, f)
        phases.mark("copy")
        conn.run(_common.primary_key_sql(opts.schema))
        conn.run("COMMIT")
        [[rows]] = conn.run(f"SELECT count(*) FROM {_common.q(opts.schema)}.{_common.TABLE}")
        conn.close()
        phases.mark("primary_key_commit")
    phases.report("duckdb", rows=rows)


if __name__ == "__main__":
    main()
