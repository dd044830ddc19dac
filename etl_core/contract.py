"""The data contract: what each input file must look like, in one place.

The README's "Data contract" section describes these same rules; a test checks that every rule
below is named there.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Literal

Kind = Literal["id", "text", "date", "number", "id_list"]  # what each kind allows: etl_core/reading/rules.py

LIST_SEPARATOR = ";"
# The contract's version, part of every run's input fingerprint: bump it with any change to a rule or to
# how features are computed, and the next trigger reloads data that is otherwise unchanged.
VERSION = 2  # 2: the dialect of docs/contract.md (one row per line; spaces and tabs trimmed, nothing else)


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    kind: Kind


@dataclasses.dataclass(frozen=True)
class FileContract:
    name: str
    columns: tuple[Column, ...]
    key: str

    @property
    def filename(self) -> str:
        return f"{self.name}.csv"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


USERS = FileContract(
    "users",
    (Column("user_id", "id"), Column("name", "text"), Column("email", "text"), Column("signup_date", "date")),
    key="user_id",
)
COMPOUNDS = FileContract(
    "compounds",
    (Column("compound_id", "id"), Column("compound_name", "text"), Column("compound_structure", "text")),
    key="compound_id",
)
EXPERIMENTS = FileContract(
    "user_experiments",
    (
        Column("experiment_id", "id"),
        Column("user_id", "id"),
        Column("experiment_compound_ids", "id_list"),
        Column("experiment_run_time", "number"),
    ),
    key="experiment_id",
)
FILES = (USERS, COMPOUNDS, EXPERIMENTS)


class Rule(StrEnum):
    """Every way an input can break the contract; the value is what reports and rejects show."""

    MISSING_FILE = "missing_file"
    EMPTY_FILE = "empty_file"
    NO_ROWS = "no_rows"
    ENCODING = "encoding"
    MISSING_COLUMN = "missing_column"
    DUPLICATE_COLUMN = "duplicate_column"
    FIELD_COUNT = "field_count"
    NOT_POSITIVE_INTEGER = "not_positive_integer"
    EMPTY_VALUE = "empty_value"
    NUL_BYTE = "nul_byte"
    NOT_ISO_DATE = "not_iso_date"
    NOT_NON_NEGATIVE_NUMBER = "not_non_negative_number"
    EMPTY_LIST = "empty_list"
    EMPTY_LIST_ITEM = "empty_list_item"
    DUPLICATE_KEY = "duplicate_key"
    UNKNOWN_USER = "unknown_user"
    UNKNOWN_COMPOUND = "unknown_compound"


RULE_TEXT: dict[Rule, str] = {
    Rule.MISSING_FILE: "the file does not exist",
    Rule.EMPTY_FILE: "the file is empty or has nothing but blank lines (not even a header)",
    Rule.NO_ROWS: "users.csv and compounds.csv need at least one data row",
    Rule.ENCODING: "the file is not valid UTF-8",
    Rule.MISSING_COLUMN: "a required column is not in the header",
    Rule.DUPLICATE_COLUMN: "a column of the contract appears twice in the header",
    Rule.FIELD_COUNT: "a line has more or fewer fields than the header, or leaves a quote open (or is cut short)",
    Rule.NOT_POSITIVE_INTEGER: "an id (or an item of an id list) is not a positive integer of at most 18 digits",
    Rule.EMPTY_VALUE: "a text field is empty",
    Rule.NUL_BYTE: "a text field holds a NUL byte (0x00), which PostgreSQL cannot store",
    Rule.NOT_ISO_DATE: "a date is not an ISO 8601 calendar date (YYYY-MM-DD) from 0001-01-01 on",
    Rule.NOT_NON_NEGATIVE_NUMBER: "a run time is not a non-negative decimal number",
    Rule.EMPTY_LIST: "an experiment lists no compound",
    Rule.EMPTY_LIST_ITEM: "a compound list has an empty item, such as 1;;2 or a trailing ;",
    Rule.DUPLICATE_KEY: "the key (user_id, compound_id, experiment_id) is not unique: every row sharing it is rejected",
    Rule.UNKNOWN_USER: "an experiment's user_id is not an accepted row of users.csv",
    Rule.UNKNOWN_COMPOUND: "a compound id in an experiment's list is not an accepted row of compounds.csv",
}
