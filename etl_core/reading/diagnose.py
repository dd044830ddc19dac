"""The diagnostic path: a file read again as bytes on one thread, every rule checked as a mask.

It reports each violation with file, line, column, value and rule, and hands on only the rows
that pass, which is what the quarantine policy loads.  Reading on one thread is what makes each
row's line known: pyarrow numbers the rows it skips for a wrong field count, and every other row's
line follows from its position and those.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl_core import literals
from etl_core.contract import LIST_SEPARATOR, Column, FileContract, Rule
from etl_core.reading import keys, rules, violations
from etl_core.reading.lines import Lines, SkippedRows
from etl_core.sources import Source


@dataclasses.dataclass
class Outcome:
    """What the diagnostic read of one file gave."""

    rows_read: int
    rows_rejected: int
    violations: pa.Table


def read(source: Source, contract: FileContract, names: list[str], add: rules.Add, refs: keys.References | None,
         block_size: int, progress: Callable[[int, int], None] | None, duplicates: pa.Array | None = None
         ) -> Outcome:
    """Read the file into ``add`` (accepted rows only); return its counts and every violation.  The
    keys that occur twice are looked up first, in a pass of their own, unless ``duplicates`` has them."""
    if duplicates is None:
        with source.open(contract.filename) as raw:
            duplicates = keys.duplicate_keys(Lines(raw, len(names)).stream, contract.key, names, block_size)
    found: list[pa.Table] = []
    rows_read = rejected = 0
    with source.open(contract.filename) as raw:
        physical = Lines(raw, len(names))
        for piece in _pieces(physical, names, block_size):
            found.append(_rows(contract, Rule.FIELD_COUNT, piece.broken))
            accepted, report = _check(piece.batch, piece.lines, contract, refs, duplicates)
            add(accepted)
            found.append(report)
            rows_read += len(piece.broken) + piece.batch.num_rows
            rejected += len(piece.broken) + piece.batch.num_rows - accepted.num_rows
            if progress:
                progress(rows_read, 0)
    # the stream is read to its end: every line rejected whole is known
    for rule in (Rule.FIELD_COUNT, Rule.ENCODING):
        found.append(_rows(contract, rule, [(n, text) for n, r, text in physical.broken if r is rule]))
    rows_read += len(physical.broken)
    rejected += len(physical.broken)
    return Outcome(rows_read, rejected, pa.concat_tables(found).sort_by([("line", "ascending")]))


def _rows(contract: FileContract, rule: Rule, broken: list[tuple[int, str]]) -> pa.Table:
    """Violations of a whole row: (line, text) each."""
    return violations.rows(contract.filename, rule, [n for n, _ in broken], raws=[text for _, text in broken])


# --------------------------------------------------------------------------------------------
# The rows, as bytes, with their lines.


@dataclasses.dataclass
class _Piece:
    batch: pa.RecordBatch  # every column as bytes
    lines: pa.Array  # the line of each row
    broken: list[tuple[int, str]]  # (line, text) of rows pyarrow found a wrong field count in, since the last piece


def _pieces(physical: Lines, names: list[str], block_size: int) -> Iterator[_Piece]:
    """The file's rows as they come, without the rows pyarrow makes of lines that are none (blank lines,
    the header, lines ``physical`` rejected whole)."""
    skipped = SkippedRows()
    stream = physical.stream
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=False, block_size=block_size),
        parse_options=pacsv.ParseOptions(invalid_row_handler=skipped, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names},
                                             strings_can_be_null=False, quoted_strings_can_be_null=False),
    )
    first = 0  # rows returned before this batch
    for batch in reader:
        numbers = line_numbers(first, batch.num_rows, skipped.lines)
        first += batch.num_rows
        if len(numbers):
            dropped = physical.dropped_between(numbers[0].as_py(), numbers[-1].as_py())
            if dropped:
                keep = pc.invert(pc.is_in(numbers, value_set=pa.array(dropped, pa.int64())))
                batch, numbers = batch.filter(keep), numbers.filter(keep)
        yield _Piece(batch, numbers, skipped.take())
    # rows skipped after the last batch, or in a file that has no other rows
    empty = pa.RecordBatch.from_arrays([pa.array([], pa.binary())] * len(names), names=names)
    yield _Piece(empty, pa.array([], pa.int64()), skipped.take())


def line_numbers(first: int, n: int, skipped: list[int]) -> pa.Array:
    """The lines of the ``n`` rows that pyarrow returned from the ``first``-th on (0-based), when it
    skipped the rows on the lines ``skipped`` (sorted).  Row g would be on line g + 2 (the header
    is line 1); each skipped line before it pushes it down one: it lies after the j-th skipped line
    exactly when ``skipped[j] - j <= g + 2``."""
    shifted = [s - j for j, s in enumerate(skipped)]
    pieces = []
    g, end = first, first + n
    while g < end:
        k = bisect.bisect_right(shifted, g + 2)  # the skipped lines before row g
        stop = end if k == len(shifted) else min(end, shifted[k] - 2)  # rows up to the next one
        pieces.append(pc.add(pa.array(range(g, stop), pa.int64()), 2 + k))
        g = stop
    return pa.concat_arrays(pieces) if pieces else pa.array([], pa.int64())


# --------------------------------------------------------------------------------------------
# Every rule as a mask.


class _Findings:
    """The violations found in one batch, column by column, and which rows break any rule."""

    def __init__(self, rows: int) -> None:
        self.bad = pa.repeat(pa.scalar(False), rows)
        self.found: list[tuple[str, Rule, pa.Array, pa.Array]] = []  # (column, rule, row indices, values)

    def flag(self, column: str, rule: Rule, mask: pa.Array, values: pa.Array) -> None:
        """The rows where ``mask`` holds (or is null) break ``rule``; ``values`` are what to show."""
        mask = pc.fill_null(mask, True)
        where = pc.indices_nonzero(mask)
        if len(where):
            self.found.append((column, rule, where, values.take(where)))
            self.bad = pc.or_(self.bad, mask)

    def report(self, contract: FileContract, lines: pa.Array, batch: pa.RecordBatch) -> pa.Table:
        raws = _raw_text(batch) if self.found else None
        tables = [violations.rows(contract.filename, rule, lines.take(where), column=column, values=values,
                                  raws=raws.take(where) if raws is not None else None)
                  for column, rule, where, values in self.found]
        return pa.concat_tables(tables) if tables else violations.VIOLATION_SCHEMA.empty_table()


def _check(batch: pa.RecordBatch, lines: pa.Array, contract: FileContract, refs: keys.References | None,
           duplicates: pa.Array) -> tuple[pa.RecordBatch, pa.Table]:
    """The rows of ``batch`` that pass every rule (typed), and a violation for each rule a row breaks."""
    found = _Findings(batch.num_rows)
    typed = [_check_column(col, batch.column(col.name), contract, refs, duplicates, found)
             for col in contract.columns]
    good = pc.invert(found.bad)
    accepted = pa.RecordBatch.from_arrays([values.filter(good) for values in typed],
                                          schema=rules.output_schema(contract))
    return accepted, found.report(contract, lines, batch)


def _check_column(col: Column, raw: pa.Array, contract: FileContract, refs: keys.References | None,
                  duplicates: pa.Array, found: _Findings) -> pa.Array:
    """The column's values (null where invalid), flagging every rule they break."""
    text, decoded = _utf8(raw)
    found.flag(col.name, Rule.ENCODING, pc.invert(decoded), rules.as_text(raw))
    parsed = rules.RULES[col.kind].check(rules.clean(text))
    for rule, mask in parsed.failures:
        found.flag(col.name, rule, pc.and_(decoded, mask), text)
    if refs is not None and parsed.items is not None:
        _flag_unknown_compounds(col.name, parsed.items, refs, found)
    if col.name == contract.key:
        found.flag(col.name, Rule.DUPLICATE_KEY, pc.is_in(parsed.values, value_set=duplicates), text)
    if refs is not None and col.name == "user_id":
        found.flag(col.name, Rule.UNKNOWN_USER, refs.users.missing(parsed.values), text)
    return parsed.values


def _flag_unknown_compounds(name: str, items: rules.Items, refs: keys.References, found: _Findings) -> None:
    """One violation per row that lists an id that is not an accepted compound; its value lists them."""
    unknown = refs.compounds.missing(items.ids)
    if not pc.any(unknown).as_py():
        return
    n = len(found.bad)
    rows = rules.rows_where(items.parents, unknown, n)
    table = pa.table({"row": items.parents.filter(unknown).cast(pa.int64()), "item": items.text.filter(unknown)})
    grouped = table.group_by("row", use_threads=False).aggregate([("item", "list")])
    joined = pc.binary_join(grouped["item_list"], LIST_SEPARATOR)
    index = pc.index_in(literals.arange(n, pa.int64()), value_set=grouped["row"])
    shown = pc.if_else(pc.is_valid(index), joined.take(pc.fill_null(index, 0)), pa.nulls(n, pa.string()))
    found.flag(name, Rule.UNKNOWN_COMPOUND, rows, shown)


def _utf8(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(string array with invalid UTF-8 values replaced by '', validity mask)."""
    try:
        return raw.cast(pa.string()), pa.repeat(pa.scalar(True), len(raw))
    except pa.ArrowInvalid:
        pass
    # Error path only: find which values are not UTF-8.
    ok = []
    for value in raw.to_pylist():
        try:
            value.decode("utf-8")
            ok.append(True)
        except UnicodeDecodeError:
            ok.append(False)
    mask = pa.array(ok, pa.bool_())
    return pc.if_else(mask, raw, b"").cast(pa.string()), mask


def _raw_text(batch: pa.RecordBatch) -> pa.Array:
    """Each row written as a CSV line again (a field quoted when it holds a comma or a quote): the row as
    the file had it, near enough for a reject, and read back as the same fields."""
    if batch.num_columns == 0:
        return pa.repeat(pa.scalar(""), batch.num_rows)
    fields = []
    for col in batch.columns:
        text = rules.as_text(col)
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
        fields.append(pc.if_else(pc.match_substring_regex(text, '[,"]'), quoted, text))
    return pc.binary_join_element_wise(*fields, ",")
