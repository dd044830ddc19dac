"""polars: lazy scan of the CSV files, the features as one lazy query, written as CSV into memory and
streamed into PostgreSQL with COPY through pg8000 (one transaction, primary key added after the load)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import _common

COPY_CHUNK = 1 << 20


def features(data: Path, run_id: int) -> Any:
    """The features table as a polars DataFrame, in user_id order (one lazy query)."""
    import polars as pl

    users = pl.scan_csv(data / "users.csv", schema_overrides={"user_id": pl.Int64, "name": pl.String})
    compounds = pl.scan_csv(data / "compounds.csv",
                            schema_overrides={"compound_id": pl.Int64, "compound_name": pl.String})
    experiments = pl.scan_csv(data / "user_experiments.csv",
                              schema_overrides={"user_id": pl.Int64, "experiment_compound_ids": pl.String})
    exp = experiments.select(
        "user_id",
        pl.col("experiment_compound_ids").str.split(";").cast(pl.List(pl.Int64)).list.unique().alias("compound_id"),
    )
    per_user = exp.group_by("user_id").agg(pl.len().alias("total_experiments"))
    pairs = exp.explode("compound_id").group_by("user_id", "compound_id").agg(pl.len().alias("n"))
    best = pairs.filter(pl.col("n") == pl.col("n").max().over("user_id"))
    favourites = (
        best.join(compounds.select("compound_id", "compound_name"), on="compound_id", how="left")
        .sort("user_id", "compound_id")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("compound_name").str.join(";").alias("most_common_compounds"),
             pl.col("compound_id").alias("ids"))
    )
    n_experiments = experiments.select(pl.len()).collect().item()
    n_users = users.select(pl.len()).collect().item()
    return (
        users.select("user_id", pl.col("name").alias("user_name"))
        .join(per_user, on="user_id", how="left")
        .join(favourites, on="user_id", how="left")
        .sort("user_id")
        .select(
            "user_id", "user_name",
            pl.col("total_experiments").fill_null(0),
            "most_common_compounds",
            pl.concat_str(pl.lit("{"), pl.col("ids").cast(pl.List(pl.String)).list.join(","), pl.lit("}"))
            .alias("most_common_compound_ids"),
            pl.lit(n_experiments / n_users, pl.Float64).alias("average_experiments"),
            pl.lit(run_id, pl.Int64).alias("run_id"),
        )
        .collect()
    )


def main() -> None:
    opts = _common.args("polars")
    phases = _common.Phases()
    import pg8000.native
    import polars  # noqa: F401 - its import timed here

    phases.mark("import")
    out = features(opts.data, _common.RUN_ID)
    phases.mark("compute")
    buffer = io.BytesIO()
    out.write_csv(buffer, include_header=False, null_value="")
    data = memoryview(buffer.getbuffer())
    phases.mark("write_csv")

    conn = pg8000.native.Connection(**_common.pg_params(opts.database_url), application_name="bench-polars")
    _common.copy_into_new_table(conn, opts.schema, (data[i:i + COPY_CHUNK] for i in range(0, len(data), COPY_CHUNK)))
    phases.mark("copy")
    conn.run(_common.primary_key_sql(opts.schema))
    conn.run("COMMIT")
    conn.close()
    phases.mark("primary_key_commit")
    phases.report("polars", rows=out.height)


if __name__ == "__main__":
    main()
