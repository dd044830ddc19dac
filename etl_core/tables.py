"""The tables the job writes, each described once: every column's name, Arrow type, PostgreSQL type,
whether it may be NULL, the schema version that added it and what it means.  The features' Arrow
schema (``transform``), the DDL and the COPY column lists (``store.sql``), the encoders
(``store.postgres``, ``store.copy_binary``) and the benchmark's mirrored table are made from, or
checked against, these descriptions.  Pure: pyarrow's types only."""

from __future__ import annotations

import dataclasses

import pyarrow as pa


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    arrow: pa.DataType
    sql: str  # as PostgreSQL's format_type() names it
    meaning: str
    nullable: bool = False
    since: int = 1  # the schema version that added the column

    def field(self) -> pa.Field:
        return pa.field(self.name, self.arrow, nullable=self.nullable)


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: str  # the primary key's one column

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def sql_types(self) -> dict[str, str]:
        return {c.name: c.sql for c in self.columns}

    def arrow_schema(self, *, without: tuple[str, ...] = ()) -> pa.Schema:
        return pa.schema([c.field() for c in self.columns if c.name not in without])


USER_FEATURES = Table("user_features", key="user_id", columns=(
    Column("user_id", pa.int64(), "bigint", "the user's id, as in users.csv"),
    Column("user_name", pa.string(), "text", "the user's name, as in users.csv (trimmed)"),
    Column("total_experiments", pa.int64(), "bigint", "how many accepted experiments the user ran"),
    Column("most_common_compounds", pa.string(), "text",
           "the names of the compounds the user's experiments listed most often, all of them when tied, in "
           "compound id order, joined by ';' (NULL: no experiment)", nullable=True),
    Column("most_common_compound_ids", pa.list_(pa.int64()), "bigint[]",
           "the same compounds' ids, in the same order (NULL: no experiment)", nullable=True),
    Column("average_experiments", pa.float64(), "double precision",
           "accepted experiments per accepted user, over the whole load (the same on every row)"),
    Column("run_id", pa.int64(), "bigint",
           "the run (etl_runs.id) that wrote the row as it is: added the user or last changed a value of theirs"),
))
# the columns the store adds to what a run computes (the run's id)
STORE_ADDS = ("run_id",)

# Each version of a user's features that a later run ended (changed or removed the user), with the run that
# made it valid and the run that ended it (SCD type 2).  The versions still valid are user_features' rows
# (their run_id is the run that made them valid): a run writes here only for the users it changes or
# removes, never a copy of the whole table (schema version 3).
USER_FEATURES_HISTORY = Table("user_features_history", key="user_id", columns=(
    *(dataclasses.replace(c, since=3) for c in USER_FEATURES.columns if c.name != "run_id"),
    Column("valid_from", pa.int64(), "bigint", "the run (etl_runs.id) that made this version valid", since=3),
    Column("valid_to", pa.int64(), "bigint",
           "the run that ended it: changed the user's features or removed the user", since=3),
))
# the feature values a change is judged on: every column but the key and the run
COMPARED = tuple(c for c in USER_FEATURES.names if c not in ("user_id", "run_id"))
