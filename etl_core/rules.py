"""The data contract's rules for single values, shared by the fast and the diagnostic path."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from etl_core.contract import ARROW_TYPES, Column, FileContract

ID_PATTERN = r"^\+?0*[1-9][0-9]{0,17}$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
NUMBER_PATTERN = r"^\+?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def output_schema(contract: FileContract) -> pa.Schema:
    """The schema of the accepted batches a file yields."""
    return pa.schema([(c.name, _typed(c)) for c in contract.columns])


def _typed(column: Column) -> pa.DataType:
    return pa.list_(pa.int64()) if column.kind == "id_list" else ARROW_TYPES[column.kind]


def parse_ids(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Positive integer ids with at most 18 digits: (int64 values, null where invalid; validity mask)."""
    ok = pc.fill_null(pc.match_substring_regex(text, ID_PATTERN), False)
    values = pc.cast(pc.if_else(ok, text, None), pa.int64())
    return values, ok


def clean(text: pa.Array) -> pa.Array:
    """Trim whitespace; a value still wrapped in quotes (quoted after whitespace, which the CSV
    reader keeps as text) loses them, and its doubled quotes become single."""
    trimmed = pc.utf8_trim_whitespace(text)
    quoted = pc.and_(pc.starts_with(trimmed, '"'), pc.ends_with(trimmed, '"'))
    quoted = pc.and_(quoted, pc.greater_equal(pc.utf8_length(trimmed), 2))
    if not pc.any(quoted).as_py():
        return trimmed
    inner = pc.replace_substring(pc.utf8_slice_codeunits(trimmed, 1, -1), '""', '"')
    return pc.if_else(quoted, inner, trimmed)


def as_text(raw: pa.Array) -> pa.Array:
    """Bytes shown as text: invalid UTF-8 decoded with replacement characters."""
    try:
        return raw.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([v.decode("utf-8", "replace") for v in raw.to_pylist()], pa.string())
