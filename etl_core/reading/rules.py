"""The contract's rules for single values: for each column kind, the rule a bad value breaks and one
definition of what passes, which both read paths consult.

Each kind reads as ``read_as`` on the fast path, where pyarrow's CSV reader has already converted
the column, and ``accept`` checks the typed values; the diagnostic path reads bytes and ``check``
parses the trimmed text.  Both follow from the constants below (the id's digit limit and range,
the date format, the number pattern, the list separator), and tests/test_rules.py feeds the same
rows to both and requires the same verdicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from etl_core import literals
from etl_core.contract import LIST_SEPARATOR, FileContract, Rule

ID_DIGITS = 18  # an id is a positive integer of at most 18 digits (leading zeros aside)
ID_MIN, ID_MAX = 1, 10**ID_DIGITS - 1
ID_PATTERN = rf"^\+?0*[0-9]{{1,{ID_DIGITS}}}$"
DATE_FORMAT = "%Y-%m-%d"  # ISO 8601 calendar dates, which must exist
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
NUMBER_PATTERN = r"^\+?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"  # non-negative decimals: 12, 0.5, 1e3


@dataclasses.dataclass(frozen=True)
class Items:
    """The items of id lists, one entry per item."""

    parents: pa.Array  # the row of each item
    text: pa.Array  # each item, trimmed
    ids: pa.Array  # each item as an id, null where it is not one


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A column of text as the diagnostic path sees it."""

    values: pa.Array  # typed, null where the value breaks a rule
    failures: list[tuple[Rule, pa.Array]]  # each rule some value may break, with a mask of the rows that do
    items: Items | None = None  # id lists only


class KindRule(Protocol):
    """What the contract says about the values of one column kind."""

    @property
    def read_as(self) -> pa.DataType:
        """The type pyarrow's CSV reader converts the column to on the fast path."""
        ...

    @property
    def becomes(self) -> pa.DataType:
        """The type of the accepted values handed on."""
        ...

    def check(self, text: pa.Array) -> Parsed:
        """Diagnostic path: trimmed text -> values and the rows that break each rule."""
        ...

    def accept(self, values: pa.Array) -> pa.Array | None:
        """Fast path: values of ``read_as`` (none null) -> the values handed on, or None if any breaks a rule."""
        ...


@dataclasses.dataclass(frozen=True)
class ValueRule:
    """A kind whose values break one rule: ``parse`` gives (values, null where bad; ok mask)."""

    rule: Rule
    read_as: pa.DataType
    becomes: pa.DataType
    parse: Callable[[pa.Array], tuple[pa.Array, pa.Array]]
    accept: Callable[[pa.Array], pa.Array | None]

    def check(self, text: pa.Array) -> Parsed:
        values, ok = self.parse(text)
        return Parsed(values, [(self.rule, pc.invert(ok))])


# --- id: a positive integer of at most ID_DIGITS digits


def _parse_ids(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    shaped = pc.fill_null(pc.match_substring_regex(text, ID_PATTERN), False)
    values = pc.cast(pc.if_else(shaped, pc.utf8_ltrim(text, "+"), None), pa.int64())  # the cast takes no '+'
    ok = pc.fill_null(_ids_in_range(values), False)
    return pc.if_else(ok, values, None), ok


def _ids_in_range(values: pa.Array) -> pa.Array:
    return pc.and_(pc.greater_equal(values, ID_MIN), pc.less_equal(values, ID_MAX))


def _accept_ids(values: pa.Array) -> pa.Array | None:
    if len(values) == 0:
        return values
    bounds = pc.min_max(values).as_py()
    return values if ID_MIN <= bounds["min"] and bounds["max"] <= ID_MAX else None


# --- text: not empty once trimmed, no NUL byte


BLANKS = " \t"  # what is trimmed around every value: spaces and tabs (not NBSP, not other Unicode spaces)
_NUL = "\x00"


def clean(text: pa.Array) -> pa.Array:
    """Trim the spaces and tabs around each value (byte-wise: neither is part of a multi-byte character)."""
    return pc.ascii_trim(text, BLANKS)


class TextRule:
    """Text breaks ``empty_value`` when it is empty once trimmed, ``nul_byte`` when it holds a NUL byte
    (PostgreSQL stores no NUL in text)."""

    read_as = pa.string()
    becomes = pa.string()

    def check(self, text: pa.Array) -> Parsed:
        nul = pc.match_substring(text, _NUL)
        empty = pc.equal(pc.binary_length(text), 0)
        ok = pc.and_(pc.invert(nul), pc.invert(empty))
        return Parsed(pc.if_else(ok, text, None), [(Rule.EMPTY_VALUE, empty), (Rule.NUL_BYTE, nul)])

    def accept(self, values: pa.Array) -> pa.Array | None:
        """The fast path's values are taken only when each is text as written: not empty once trimmed,
        not starting with a quote once trimmed (a quoted field after whitespace, which pyarrow's reader
        keeps as text, or doubled quotes), and with no NUL byte or line break (a quote left open, which
        pyarrow's reader runs on across lines).  Any doubt goes to the diagnostic path."""
        trimmed = clean(values)
        if len(values) == 0:
            return trimmed
        if pc.min(pc.binary_length(trimmed)).as_py() == 0 or pc.any(pc.starts_with(trimmed, '"')).as_py():
            return None
        return None if odd_bytes(values) else trimmed


def odd_bytes(values: pa.Array) -> bool:
    """Whether any value of a string or binary array holds a NUL byte, a CR or an LF (one look at its
    data buffer, which may hold the bytes of neighbouring rows of the same file as well)."""
    data = values.buffers()[2]
    if data is None:
        return False
    raw = data.to_pybytes()
    return raw.find(b"\x00") >= 0 or raw.find(b"\n") >= 0 or raw.find(b"\r") >= 0


# --- date: DATE_FORMAT, and the day exists


def _parse_dates(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    shaped = pc.match_substring_regex(text, DATE_PATTERN)
    parsed = pc.strptime(pc.if_else(shaped, text, None), format=DATE_FORMAT, unit="s", error_is_null=True)
    # strptime rolls 2023-02-30 over to March: a real date prints back as it was written
    ok = pc.fill_null(pc.equal(pc.strftime(parsed, format=DATE_FORMAT), text), False)
    days = pc.cast(parsed, pa.date32())
    ok = pc.and_(ok, pc.fill_null(pc.greater_equal(days.view(pa.int32()), _FIRST_DAY), False))
    return pc.if_else(ok, days, None), ok


# 0001-01-01 in days since 1970-01-01: year 0000 is no calendar year (nor one Python's datetime has)
_FIRST_DAY = literals.scalar(-719162, pa.int32())


def _accept_dates(values: pa.Array) -> pa.Array | None:
    # pyarrow's date32 reader takes exactly the ISO dates that exist, and year 0000
    if len(values) and pc.min(values.view(pa.int32())).as_py() < _FIRST_DAY.as_py():
        return None
    return values


# --- number: NUMBER_PATTERN, and finite


def _parse_numbers(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    shaped = pc.fill_null(pc.match_substring_regex(text, NUMBER_PATTERN), False)
    values = pc.cast(pc.if_else(shaped, text, None), pa.float64())
    ok = pc.fill_null(pc.is_finite(values), False)
    return pc.if_else(ok, values, None), ok


_FINITE_BITS = 0x7FF0000000000000  # the bits of +inf: every finite non-negative double's are fewer


def _accept_numbers(values: pa.Array) -> pa.Array | None:
    # The pattern has no minus sign, but pyarrow reads -0 as -0.0, which compares equal to 0: the sign
    # bit tells.  Seen as int64, a non-negative double's bits have no sign bit and order as the
    # doubles do, so one min_max says whether all are non-negative (-0.0 included) and finite.
    if len(values) == 0:
        return values
    bits = pc.min_max(values.view(pa.int64())).as_py()
    return values if bits["min"] >= 0 and bits["max"] < _FINITE_BITS else None


ID = ValueRule(Rule.NOT_POSITIVE_INTEGER, pa.int64(), pa.int64(), _parse_ids, _accept_ids)
TEXT = TextRule()
DATE = ValueRule(Rule.NOT_ISO_DATE, pa.date32(), pa.date32(), _parse_dates, _accept_dates)
NUMBER = ValueRule(Rule.NOT_NON_NEGATIVE_NUMBER, pa.float64(), pa.float64(), _parse_numbers, _accept_numbers)


# --- id list: ids separated by LIST_SEPARATOR, whitespace around items allowed; no empty list or item


class IdListRule:
    """An id list breaks ``empty_list``, ``empty_list_item`` or, for an item that is not an id,
    the id's rule."""

    read_as = pa.string()
    becomes = pa.list_(pa.int64())

    def check(self, text: pa.Array) -> Parsed:
        empty_list = pc.equal(pc.utf8_length(text), 0)
        lists = pc.split_pattern(text, LIST_SEPARATOR)
        parents = pc.list_parent_indices(lists)
        items = clean(pc.list_flatten(lists))
        ids, ok = ID.parse(items)
        empty_item = pc.equal(pc.utf8_length(items), 0)
        n = len(text)
        empty_item_rows = rows_where(parents, pc.and_(empty_item, pc.invert(empty_list.take(parents))), n)
        bad_item_rows = rows_where(parents, pc.and_(pc.invert(ok), pc.invert(empty_item)), n)
        row_ok = pc.and_(pc.invert(rows_where(parents, pc.invert(ok), n)), pc.invert(empty_list))
        lists = pa.ListArray.from_arrays(lists.offsets, pc.fill_null(ids, 0))
        return Parsed(
            pc.if_else(row_ok, lists, pa.scalar(None, lists.type)),
            [(Rule.EMPTY_LIST, empty_list), (Rule.EMPTY_LIST_ITEM, empty_item_rows),
             (ID.rule, bad_item_rows)],
            Items(parents, items, ids),
        )

    def accept(self, values: pa.Array) -> pa.Array | None:
        lists = pc.split_pattern(values, LIST_SEPARATOR)
        try:
            ids = pc.cast(lists.values, pa.int64())  # most lists have no spaces: skip the trim
        except pa.ArrowInvalid:
            try:
                ids = pc.cast(clean(lists.values), pa.int64())
            except pa.ArrowInvalid:  # an empty list or item, or an item that is no integer
                return None
        if ID.accept(ids) is None:
            return None
        return pa.ListArray.from_arrays(lists.offsets, ids)


def rows_where(parents: pa.Array, item_mask: pa.Array, n: int) -> pa.Array:
    """Row mask: True for each of the ``n`` rows that has at least one item where ``item_mask`` holds."""
    hit = pc.unique(parents.filter(item_mask))
    return pc.is_in(literals.arange(n, pa.int64()), value_set=hit.cast(pa.int64()))


RULES: dict[str, KindRule] = {"id": ID, "text": TEXT, "date": DATE, "number": NUMBER, "id_list": IdListRule()}


def output_schema(contract: FileContract) -> pa.Schema:
    """The schema of the accepted batches a file yields."""
    return pa.schema([(c.name, RULES[c.kind].becomes) for c in contract.columns])


Add = Callable[[pa.RecordBatch], None]  # where either read path hands its accepted batches: a sink's add


def as_text(raw: pa.Array) -> pa.Array:
    """Bytes shown as text: invalid UTF-8 decoded with replacement characters."""
    try:
        return raw.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([v.decode("utf-8", "replace") for v in raw.to_pylist()], pa.string())
