"""pandas + SQLAlchemy: the usual quick solution.  read_csv, split/explode, groupby, then
DataFrame.to_sql with its default method (INSERTs through the driver, here pg8000) in chunks."""

from __future__ import annotations

import _common

CHUNKSIZE = 10_000


def main() -> None:
    opts = _common.args("pandas")
    phases = _common.Phases()
    import pandas as pd
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    phases.mark("import")
    users = pd.read_csv(opts.data / "users.csv", usecols=["user_id", "name"], dtype={"user_id": "int64"})
    compounds = pd.read_csv(opts.data / "compounds.csv", usecols=["compound_id", "compound_name"],
                            dtype={"compound_id": "int64"})
    experiments = pd.read_csv(opts.data / "user_experiments.csv", usecols=["experiment_id", "user_id",
                              "experiment_compound_ids"], dtype={"experiment_compound_ids": "str"})
    phases.mark("read_csv")

    per_user = experiments.groupby("user_id").size().rename("total_experiments")
    items = experiments.assign(compound_id=experiments["experiment_compound_ids"].str.split(";"))
    items = items[["experiment_id", "user_id", "compound_id"]].explode("compound_id")
    items["compound_id"] = items["compound_id"].astype("int64")
    items = items.drop_duplicates(["experiment_id", "compound_id"])  # a repeat in one experiment counts once
    pairs = items.groupby(["user_id", "compound_id"]).size().rename("n").reset_index()
    best = pairs[pairs["n"] == pairs.groupby("user_id")["n"].transform("max")]
    best = best.sort_values(["user_id", "compound_id"]).merge(compounds, on="compound_id", how="left")
    favourites = best.groupby("user_id", sort=False).agg(
        most_common_compounds=("compound_name", ";".join),
        most_common_compound_ids=("compound_id", list),
    )
    out = users.rename(columns={"name": "user_name"}).join(per_user, on="user_id").join(favourites, on="user_id")
    out = out.sort_values("user_id")
    out["total_experiments"] = out["total_experiments"].fillna(0).astype("int64")
    out["average_experiments"] = len(experiments) / len(users)
    out["run_id"] = _common.RUN_ID
    out = out[list(_common.COLUMNS)]
    # NaN (users without experiments) must reach the database as NULL
    out = out.astype({"most_common_compounds": object, "most_common_compound_ids": object})
    out = out.where(out.notna(), None)
    phases.mark("transform")

    engine = sa.create_engine(opts.database_url.replace("postgresql://", "postgresql+pg8000://", 1))
    with engine.begin() as conn:
        for statement in _common.create_table_sql(opts.schema):
            conn.exec_driver_sql(statement)
        out.to_sql(_common.TABLE, conn, schema=opts.schema, if_exists="append", index=False,
                   chunksize=CHUNKSIZE, dtype={"most_common_compound_ids": postgresql.ARRAY(sa.BigInteger)})
        phases.mark("to_sql")
        conn.exec_driver_sql(_common.primary_key_sql(opts.schema))
    engine.dispose()
    phases.mark("primary_key_commit")
    phases.report("pandas", rows=len(out))


if __name__ == "__main__":
    main()
