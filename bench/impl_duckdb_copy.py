"""DuckDB, plain: what a user would write.  The same SQL as impl_duckdb.py, written to a CSV file by
DuckDB, then a plain COPY into a table (no primary key, nothing else), committed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import _common


def main() -> None:
    opts = _common.args("duckdb_copy")
    phases = _common.Phases()
    import duckdb
    import pg8000.native
    from impl_duckdb import read_small_tables, write_features_csv

    phases.mark("import")
    data: Path = opts.data
    db = duckdb.connect()
    read_small_tables(db, data)
    with tempfile.TemporaryDirectory(prefix="bench-duckdb-copy-") as tmp:
        out = Path(tmp) / "features.csv"
        write_features_csv(db, data, out)
        db.close()
        phases.mark("compute_and_write_csv")
        conn = pg8000.native.Connection(**_common.pg_params(opts.database_url), application_name="bench-duckdb-copy")
        with open(out, "rb") as f:
            rows = _common.copy_into_new_table(conn, opts.schema, f)
        conn.run("COMMIT")
        conn.close()
        phases.mark("copy_commit")
    phases.report("duckdb_copy", rows=rows)


if __name__ == "__main__":
    main()
