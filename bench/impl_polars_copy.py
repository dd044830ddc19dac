"""polars, plain: what a user would write.  The same lazy query as impl_polars.py, written as CSV into
memory, then a plain COPY into a table (no primary key, nothing else), committed."""

from __future__ import annotations

import io

import _common


def main() -> None:
    opts = _common.args("polars_copy")
    phases = _common.Phases()
    import pg8000.native
    import polars  # noqa: F401 - its import timed here
    from impl_polars import COPY_CHUNK, features

    phases.mark("import")
    out = features(opts.data, _common.RUN_ID)
    buffer = io.BytesIO()
    out.write_csv(buffer, include_header=False, null_value="")
    data = memoryview(buffer.getbuffer())
    phases.mark("compute_and_write_csv")
    conn = pg8000.native.Connection(**_common.pg_params(opts.database_url), application_name="bench-polars-copy")
    _common.copy_into_new_table(conn, opts.schema,
                                (data[i:i + COPY_CHUNK] for i in range(0, len(data), COPY_CHUNK)))
    conn.run("COMMIT")
    conn.close()
    phases.mark("copy_commit")
    phases.report("polars_copy", rows=out.height)


if __name__ == "__main__":
    main()
