"""Read the three CSV files under the data contract, as streams of Arrow record batches.

Every file is read twice at most:

* the fast path reads it with pinned types (int64, date32, float64) on all cores and checks the
  typed batches with ``pyarrow.compute``; good data never leaves this path;
* at the first sign of trouble (a conversion error, a row with the wrong number of fields, a value
  that breaks a rule) the file is read again on the diagnostic path: every field as bytes, on one
  thread so that each rejected line's number is known, and every rule checked as a vectorised mask.
  It reports each violation with file, line, column, value and rule, and hands on only the rows
  that pass, which is what the quarantine policy loads.

Accepted rows go to a ``Sink`` batch by batch, so the experiments file is never held whole.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl_core import violations
from etl_core.contract import ARROW_TYPES, LIST_SEPARATOR, Column, FileContract, Rule
from etl_core.source import Pinned, Source, SourceMissing, translated
from etl_core.violations import VIOLATION_SCHEMA, FileProblem

_SPACE_BEFORE_QUOTE = re.compile(r'(?:(?<=,)|^)[ \t]+(?=")')
_ID_RE = r"^\+?0*[1-9][0-9]{0,17}$"
_DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_NUMBER_RE = r"^\+?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


class Sink(Protocol):
    """Where accepted rows go: a collector for small files, the aggregator for experiments."""

    def add(self, batch: pa.RecordBatch) -> None: ...

    def reset(self) -> None: ...


class Collector:
    """A sink that keeps every accepted batch, for the files that are needed whole."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.batches: list[pa.RecordBatch] = []

    def add(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def reset(self) -> None:
        self.batches.clear()

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, schema=self.schema)


class KeySet:
    """The accepted keys of one file, with a fast membership test for whole arrays."""

    def __init__(self, keys: pa.Array) -> None:
        self.keys = keys
        self._range: tuple[int, int] | None = None
        if len(keys):
            bounds = pc.min_max(keys).as_py()
            if bounds["max"] - bounds["min"] + 1 == len(keys):  # keys are unique: a full range
                self._range = (bounds["min"], bounds["max"])

    def contains_all(self, values: pa.Array) -> bool:
        if len(values) == 0:
            return True
        if self._range is not None:
            bounds = pc.min_max(values).as_py()
            return bool(self._range[0] <= bounds["min"] and bounds["max"] <= self._range[1])
        return bool(pc.all(pc.is_in(values, value_set=self.keys)).as_py())


@dataclasses.dataclass(frozen=True)
class References:
    """The accepted keys of users.csv and compounds.csv, which experiments must point to."""

    users: KeySet
    compounds: KeySet

    @classmethod
    def of(cls, user_ids: pa.Array, compound_ids: pa.Array) -> References:
        return cls(KeySet(user_ids), KeySet(compound_ids))


@dataclasses.dataclass
class FileResult:
    """What reading one file gave: counts, and every violation as an Arrow table."""

    contract: FileContract
    rows_read: int = 0
    rows_rejected: int = 0
    extra_columns: tuple[str, ...] = ()
    violations: pa.Table = dataclasses.field(default_factory=VIOLATION_SCHEMA.empty_table)

    @property
    def rows_accepted(self) -> int:
        return self.rows_read - self.rows_rejected


def output_schema(contract: FileContract) -> pa.Schema:
    """The schema of the accepted batches a file yields."""
    return pa.schema([(c.name, _typed(c)) for c in contract.columns])


def _typed(column: Column) -> pa.DataType:
    return pa.list_(pa.int64()) if column.kind == "id_list" else ARROW_TYPES[column.kind]


def read_header(source: Source, contract: FileContract) -> tuple[list[str], tuple[str, ...]]:
    """The header's column names (trimmed, BOM removed) and the extra columns it has."""
    try:
        with source.open(contract.filename) as stream, translated(contract.filename):
            first = _first_line(stream, 1 << 20)
    except SourceMissing:
        raise FileProblem(contract, Rule.MISSING_FILE, value=contract.filename) from None
    if not first.strip():
        raise FileProblem(contract, Rule.EMPTY_FILE, line=1)
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FileProblem(contract, Rule.ENCODING, line=1) from None
    line = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]  # the CSV reader ends a line at \r as well
    try:
        fields = next(csv.reader([line]), [])
    except csv.Error:  # e.g. a NUL byte: read it as plain comma-separated names
        fields = line.split(",")
    names = [n.strip().strip('"') for n in fields]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FileProblem(contract, Rule.DUPLICATE_COLUMN, line=1, column=name)
        seen.add(name)
    for name in contract.column_names:
        if name not in seen:
            raise FileProblem(contract, Rule.MISSING_COLUMN, line=1, column=name)
    extra = tuple(n for n in names if n not in contract.column_names)
    return names, extra


def _first_line(stream: pa.NativeFile, limit: int) -> bytes:
    """The stream's bytes up to and including the first newline, at most ``limit`` of them."""
    head = b""
    while len(head) < limit:
        chunk = stream.read(min(1 << 16, limit - len(head)))
        end = chunk.find(b"\n") + 1
        if end:
            return head + chunk[:end]
        if not chunk:
            break
        head += chunk
    return head


class _Diagnose(Exception):
    """Raised inside the fast path: something is off, read the file again on the diagnostic path."""


def read_file(
    source: Source,
    contract: FileContract,
    sink: Sink,
    *,
    refs: References | None = None,
    block_size: int = 1 << 20,
    progress: Callable[[int, int], None] | None = None,
) -> FileResult:
    """Read one file of ``source`` into ``sink``; return its counts and violations (never raises for
    bad rows).  Every read of the file sees the version the first one saw, or SourceChanged is raised."""
    source = Pinned(source)
    names, extra = read_header(source, contract)
    result = FileResult(contract, extra_columns=extra)
    with translated(contract.filename):
        try:
            result.rows_read = _fast(source, contract, names, sink, refs, block_size, progress)
        except (_Diagnose, pa.ArrowInvalid):
            sink.reset()
            _diagnose(source, contract, names, sink, refs, block_size, result, progress)
    source.check(contract.filename)
    return result


# --------------------------------------------------------------------------------------------
# Fast path: pinned types, all cores, any doubt raises _Diagnose.


def _fast(source: Source, contract: FileContract, names: list[str], sink: Sink,
          refs: References | None, block_size: int, progress: Callable[[int, int], None] | None) -> int:
    types = {c.name: ARROW_TYPES[c.kind] for c in contract.columns}
    rows = 0
    increasing = _Increasing()
    counted = _Counted()
    with source.open(contract.filename) as raw:
        reader = pacsv.open_csv(
            pa.TransformInputStream(raw, counted),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=block_size),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),  # a bad row raises: diagnose
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=contract.column_names,
                strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            batch = _drop_blank_typed(batch)
            out = _check_typed(batch, contract, refs)
            rows += out.num_rows
            increasing.add(out.column(contract.key))
            sink.add(out)
            if progress:
                progress(rows, counted.bytes)
    # keys that only ever grow are unique, with nothing kept; others take a second look at the file
    if not increasing.holds:
        with source.open(contract.filename) as again:
            if len(_duplicate_keys(again, contract, names, block_size)):
                raise _Diagnose
    return rows


class _Counted:
    """A stream transform that passes the bytes on unchanged and counts them (for progress)."""

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, buf: pa.Buffer) -> pa.Buffer:
        self.bytes += buf.size
        return buf


def _drop_blank_typed(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Blank lines arrive as rows with every field empty: they are ignored."""
    blank = None
    for field, col in zip(batch.schema, batch.columns, strict=True):
        empty = pc.equal(col, "") if pa.types.is_string(field.type) else pc.is_null(col)
        blank = empty if blank is None else pc.and_(blank, empty)
    if blank is None or not pc.any(blank).as_py():
        return batch
    return batch.filter(pc.invert(blank))


def _check_typed(batch: pa.RecordBatch, contract: FileContract, refs: References | None) -> pa.RecordBatch:
    columns = []
    for col in contract.columns:
        values = batch.column(col.name)
        if values.null_count:
            raise _Diagnose
        if col.kind == "id":
            if batch.num_rows and pc.min(values).as_py() <= 0:
                raise _Diagnose
        elif col.kind == "text":
            values = clean(values)
            if batch.num_rows and pc.min(pc.utf8_length(values)).as_py() == 0:
                raise _Diagnose
        elif col.kind == "number":
            if pc.any(pc.invert(pc.and_(pc.is_finite(values), pc.greater_equal(values, 0)))).as_py():
                raise _Diagnose
        elif col.kind == "id_list":
            values = _parse_id_lists(values)
            if refs is not None and not refs.compounds.contains_all(values.values):
                raise _Diagnose
        if refs is not None and col.name == "user_id" and not refs.users.contains_all(values):
            raise _Diagnose
        columns.append(values)
    return pa.RecordBatch.from_arrays(columns, schema=output_schema(contract))


def _parse_id_lists(values: pa.Array) -> pa.ListArray:
    """'1; 2;3' -> [1, 2, 3]; raises _Diagnose for an empty list, an empty item or a bad id."""
    lists = pc.split_pattern(values, LIST_SEPARATOR)
    try:
        ids = pc.cast(lists.values, pa.int64())  # most lists have no spaces: skip the trim
    except pa.ArrowInvalid:
        try:
            ids = pc.cast(pc.utf8_trim_whitespace(lists.values), pa.int64())
        except pa.ArrowInvalid:
            raise _Diagnose from None
    if len(ids) and pc.min(ids).as_py() <= 0:
        raise _Diagnose
    return pa.ListArray.from_arrays(lists.offsets, ids)


class _Increasing:
    """Whether every key so far is greater than the one before it (across batches too)."""

    def __init__(self) -> None:
        self.holds = True
        self._last: int | None = None

    def add(self, keys: pa.Array) -> None:
        if not self.holds or len(keys) == 0:
            return
        first = keys[0].as_py()
        if self._last is not None and first <= self._last:
            self.holds = False
        elif len(keys) > 1 and not pc.all(pc.less(keys[:-1], keys[1:])).as_py():
            self.holds = False
        self._last = keys[-1].as_py()


# --------------------------------------------------------------------------------------------
# Diagnostic path: bytes in, one thread, exact lines, every rule as a mask.


@dataclasses.dataclass
class _Checked:
    """One batch on the diagnostic path: typed columns (null where invalid) and violation tables."""

    typed: dict[str, pa.Array]
    bad: pa.Array  # bool per row
    violations: list[tuple[str, Rule, pa.Array, pa.Array]]  # (column, rule, row indices, values)


def _diagnose(source: Source, contract: FileContract, names: list[str], sink: Sink,
              refs: References | None, block_size: int, result: FileResult,
              progress: Callable[[int, int], None] | None) -> None:
    with source.open(contract.filename) as raw:
        duplicates = _duplicate_keys(pa.TransformInputStream(raw, _Repair(len(names))), contract, names,
                                     block_size)
    with source.open(contract.filename) as raw:
        repair = _Repair(len(names))
        _diagnose_stream(pa.TransformInputStream(raw, repair), contract, names, sink, refs, block_size,
                         result, progress, duplicates, repair.undecodable)


class _Repair:
    """A stream transform for the diagnostic path: pyarrow cannot hand a row with a wrong field count
    to our handler when that row is not UTF-8 either, so each such line is blanked (its line break
    stays, and with it every line number) and remembered in ``undecodable`` as (line, text).  A line
    that is not UTF-8 but has the right field count stays: the diagnostic pass names its column."""

    def __init__(self, fields: int) -> None:
        self.fields = fields
        self.undecodable: list[tuple[int, str]] = []
        self._lines = 0  # lines passed on so far
        self._pending: list[bytes] = []  # the start of an unfinished line

    def __call__(self, buf: pa.Buffer) -> pa.Buffer:
        chunk = buf.to_pybytes()
        end = chunk.rfind(b"\n") + 1 if chunk else 0  # an empty buffer is the end: pass on the rest
        if chunk and not end:
            self._pending.append(chunk)
            return pa.py_buffer(b"")
        data = b"".join([*self._pending, chunk[:end] if chunk else b""])
        self._pending = [chunk[end:]] if chunk else []
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            data = b"\n".join(self._line(self._lines + i + 1, line) for i, line in enumerate(data.split(b"\n")))
        self._lines += data.count(b"\n")
        return pa.py_buffer(data)

    def _line(self, number: int, line: bytes) -> bytes:
        """``line`` (without its \\n) as passed on: blanked, but for a trailing \\r, if it is
        undecodable with the wrong field count."""
        try:
            line.decode("utf-8")
            return line
        except UnicodeDecodeError:
            pass
        body = line.rstrip(b"\r")
        text = body.decode("utf-8", "replace")
        if number == 1 or _field_count(text) == self.fields:
            return line
        self.undecodable.append((number, text))
        return line[len(body):]


def _field_count(text: str) -> int:
    try:
        return len(next(csv.reader([text]), []))
    except csv.Error:
        return -1


def _diagnose_stream(stream: pa.NativeFile, contract: FileContract, names: list[str], sink: Sink,
                     refs: References | None, block_size: int, result: FileResult,
                     progress: Callable[[int, int], None] | None, duplicates: pa.Array,
                     undecodable: list[tuple[int, str]]) -> None:
    found = []
    rows_read = rejected = 0
    for batch, lines, skipped in _raw_batches(stream, contract, names, block_size):
        found.append(violations.rows(contract.filename, Rule.FIELD_COUNT, [n for n, _ in skipped],
                          raws=[text for _, text in skipped]))
        rows_read += len(skipped)
        rejected += len(skipped)
        keep = _not_blank(batch)
        batch, lines = batch.filter(keep), lines.filter(keep)
        checked = _check_raw(batch, contract, refs, duplicates)
        raw = _raw_text(batch)
        for column, rule, where, values in checked.violations:
            found.append(violations.rows(contract.filename, rule, lines.take(where), column=column, values=values,
                              raws=raw.take(where)))
        good = pc.invert(checked.bad)
        rows_read += batch.num_rows
        rejected += batch.num_rows - pc.sum(good).as_py() if batch.num_rows else 0
        accepted = [checked.typed[c.name].filter(good) for c in contract.columns]
        sink.add(pa.RecordBatch.from_arrays(accepted, schema=output_schema(contract)))
        if progress:
            progress(rows_read, 0)
    # the stream is read to its end: every undecodable line is known
    found.append(violations.rows(contract.filename, Rule.ENCODING, [n for n, _ in undecodable],
                                 raws=[text for _, text in undecodable]))
    result.rows_read = rows_read + len(undecodable)
    result.rows_rejected = rejected + len(undecodable)
    if found:
        result.violations = pa.concat_tables(found).sort_by([("line", "ascending")])


def _raw_batches(stream: pa.NativeFile, contract: FileContract, names: list[str], block_size: int
                 ) -> Iterator[tuple[pa.RecordBatch, pa.Array, list[tuple[int, str]]]]:
    """Every column as bytes, with each row's line number and the rows skipped for a bad field count."""
    skipped: list[tuple[int, str]] = []
    skipped_lines: list[int] = []  # sorted line numbers of every skipped row so far

    def skip(row: pacsv.InvalidRow) -> str:
        skipped.append((row.number, row.text))
        return "skip"

    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=False,
                                       block_size=block_size),
        parse_options=pacsv.ParseOptions(invalid_row_handler=skip, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names},
                                             strings_can_be_null=False,
                                             quoted_strings_can_be_null=False),
    )
    start = 0
    for batch in reader:
        new = list(skipped)
        skipped.clear()
        skipped_lines.extend(n for n, _ in new)
        lines = pc.add(pa.array(range(start, start + batch.num_rows), pa.int64()), 2)  # 1: header
        if len(skipped_lines) <= 256:
            # each skipped line pushes every row at or after it down by one
            for line in skipped_lines:
                lines = pc.add(lines, pc.cast(pc.greater_equal(lines, line), pa.int64()))
        else:
            # many: the row lands after the j skipped lines with (skipped_j - j) <= row + 2
            shifted = [s - j for j, s in enumerate(skipped_lines)]
            lines = pa.array([g + 2 + bisect.bisect_right(shifted, g + 2)
                              for g in range(start, start + batch.num_rows)], pa.int64())
        start += batch.num_rows
        recovered, bad = _recover(new, names)
        yield batch, lines, bad
        if recovered is not None:
            yield recovered[0], recovered[1], []


def _recover(rows: list[tuple[int, str]], names: list[str]
             ) -> tuple[tuple[pa.RecordBatch, pa.Array] | None, list[tuple[int, str]]]:
    """Rows pyarrow split wrongly because a quoted field follows whitespace (`1,\t"Bob, Jr.",...`):
    parsed again allowing whitespace before the quote; those with the right field count are kept."""
    good: list[tuple[int, list[str]]] = []
    bad = []
    for number, text in rows:
        try:
            fields = next(csv.reader([_SPACE_BEFORE_QUOTE.sub("", text)]), [])
        except csv.Error:
            fields = []
        if len(fields) == len(names):
            good.append((number, fields))
        else:
            bad.append((number, text))
    if not good:
        return None, bad
    columns = [pa.array([f[i].encode() for _, f in good], pa.binary()) for i in range(len(names))]
    batch = pa.RecordBatch.from_arrays(columns, names=names)
    return (batch, pa.array([n for n, _ in good], pa.int64())), bad


def _not_blank(batch: pa.RecordBatch) -> pa.Array:
    blank = pa.array([True] * batch.num_rows) if batch.num_columns == 0 else None
    for col in batch.columns:
        empty = pc.equal(pc.binary_length(col), 0)
        blank = empty if blank is None else pc.and_(blank, empty)
    return pc.invert(blank)


def _duplicate_keys(stream: pa.NativeFile, contract: FileContract, names: list[str], block_size: int
                    ) -> pa.Array:
    """The key values that occur more than once in the file (a first pass over the key column)."""
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=block_size),
        parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip", ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={contract.key: pa.binary()},
                                             include_columns=[contract.key],
                                             strings_can_be_null=False),
    )
    keys = []
    for batch in reader:
        ids, ok = _ids(_text(batch.column(0)))
        keys.append(ids.filter(ok))
    if not keys:
        return pa.array([], pa.int64())
    counts = pc.value_counts(pa.concat_arrays(keys))
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1))


def _check_raw(batch: pa.RecordBatch, contract: FileContract, refs: References | None,
               duplicates: pa.Array) -> _Checked:
    n = batch.num_rows
    bad = pa.array([False] * n, pa.bool_())
    typed: dict[str, pa.Array] = {}
    violations: list[tuple[str, Rule, pa.Array, pa.Array]] = []

    def flag(column: str, rule: Rule, mask: pa.Array, values: pa.Array) -> None:
        nonlocal bad
        mask = pc.fill_null(mask, True)
        rows = pc.indices_nonzero(mask)
        if len(rows):
            violations.append((column, rule, rows, values.take(rows)))
            bad = pc.or_(bad, mask)

    for col in contract.columns:
        raw = batch.column(col.name)
        text, text_ok = _utf8(raw)
        flag(col.name, Rule.ENCODING, pc.invert(text_ok), _text(raw))
        trimmed = clean(text)
        if col.kind == "id":
            values, ok = _ids(trimmed)
            flag(col.name, Rule.NOT_POSITIVE_INTEGER, pc.and_(text_ok, pc.invert(ok)), text)
        elif col.kind == "text":
            values = trimmed
            flag(col.name, Rule.EMPTY_VALUE, pc.and_(text_ok, pc.equal(pc.utf8_length(trimmed), 0)), text)
        elif col.kind == "date":
            shaped = pc.match_substring_regex(trimmed, _DATE_RE)
            parsed = pc.strptime(pc.if_else(shaped, trimmed, None), format="%Y-%m-%d", unit="s",
                                 error_is_null=True)
            # strptime rolls 2023-02-30 over to March: a real date prints back as it was written
            real = pc.fill_null(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), trimmed), False)
            values = pc.if_else(real, pc.cast(parsed, pa.date32()), None)
            flag(col.name, Rule.NOT_ISO_DATE, pc.and_(text_ok, pc.invert(real)), text)
        elif col.kind == "number":
            ok = pc.match_substring_regex(trimmed, _NUMBER_RE)
            values = pc.cast(pc.if_else(ok, trimmed, None), pa.float64())
            ok = pc.and_(ok, pc.is_finite(values))
            flag(col.name, Rule.NOT_NON_NEGATIVE_NUMBER, pc.and_(text_ok, pc.invert(ok)), text)
        else:
            values = _check_id_list(col.name, trimmed, text_ok, text, refs, flag)
        typed[col.name] = values
        if col.name == contract.key:
            flag(col.name, Rule.DUPLICATE_KEY, pc.is_in(values, value_set=duplicates), text)
        if refs is not None and col.name == "user_id":
            unknown = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=refs.users.keys)))
            flag(col.name, Rule.UNKNOWN_USER, unknown, text)
    return _Checked(typed, bad, violations)


def _check_id_list(name: str, trimmed: pa.Array, text_ok: pa.Array, text: pa.Array,
                   refs: References | None, flag: Callable[[str, Rule, pa.Array, pa.Array], None]) -> pa.Array:
    n = len(trimmed)
    empty_list = pc.equal(pc.utf8_length(trimmed), 0)
    flag(name, Rule.EMPTY_LIST, pc.and_(text_ok, empty_list), text)
    lists = pc.split_pattern(trimmed, LIST_SEPARATOR)
    parents = pc.list_parent_indices(lists)
    items = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    ids, ok = _ids(items)
    empty_item = pc.equal(pc.utf8_length(items), 0)
    empty_item_rows = _rows_where(parents, pc.and_(empty_item, pc.invert(empty_list.take(parents))), n)
    flag(name, Rule.EMPTY_LIST_ITEM, empty_item_rows, text)
    bad_item = pc.and_(pc.invert(ok), pc.invert(empty_item))
    flag(name, Rule.NOT_POSITIVE_INTEGER, pc.and_(text_ok, _rows_where(parents, bad_item, n)), text)
    if refs is not None:
        unknown = pc.and_(ok, pc.invert(pc.is_in(ids, value_set=refs.compounds.keys)))
        if pc.any(unknown).as_py():
            # one violation per row; its value lists that row's unknown ids
            flag(name, Rule.UNKNOWN_COMPOUND, _rows_where(parents, unknown, n),
                 _per_row_join(parents, items, unknown, n))
    row_ok = pc.invert(_rows_where(parents, pc.invert(ok), n))
    row_ok = pc.and_(row_ok, pc.and_(text_ok, pc.invert(empty_list)))
    offsets = lists.offsets
    values = pa.ListArray.from_arrays(offsets, pc.fill_null(ids, 0))
    return pc.if_else(row_ok, values, pa.scalar(None, values.type))


def _rows_where(parents: pa.Array, item_mask: pa.Array, n: int) -> pa.Array:
    """Row mask: True for each row that has at least one item where ``item_mask`` holds."""
    hit = pc.unique(parents.filter(item_mask))
    return pc.is_in(pa.array(range(n), pa.int64()), value_set=hit.cast(pa.int64()))


def _per_row_join(parents: pa.Array, items: pa.Array, mask: pa.Array, n: int) -> pa.Array:
    """For each row, its items where ``mask`` holds, joined with ';' (the offending ids)."""
    rows = parents.filter(mask)
    picked = items.filter(mask)
    table = pa.table({"row": rows.cast(pa.int64()), "item": picked})
    grouped = table.group_by("row", use_threads=False).aggregate([("item", "list")])
    joined = pc.binary_join(grouped["item_list"], LIST_SEPARATOR)
    out = pa.nulls(n, pa.string())
    index = pc.index_in(pa.array(range(n), pa.int64()), value_set=grouped["row"])
    return pc.if_else(pc.is_valid(index), joined.take(pc.fill_null(index, 0)), out)


def _ids(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Positive integer ids with at most 18 digits: (int64 values, null where invalid; validity mask)."""
    ok = pc.fill_null(pc.match_substring_regex(text, _ID_RE), False)
    values = pc.cast(pc.if_else(ok, text, None), pa.int64())
    return values, ok


def _utf8(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(string array with invalid UTF-8 values replaced by '', validity mask)."""
    try:
        return raw.cast(pa.string()), pa.array([True] * len(raw), pa.bool_())
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
    cleaned = pc.if_else(mask, raw, b"").cast(pa.string())
    return cleaned, mask


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


def _text(raw: pa.Array) -> pa.Array:
    """Bytes shown as text: invalid UTF-8 decoded with replacement characters (for reports only)."""
    try:
        return raw.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([v.decode("utf-8", "replace") for v in raw.to_pylist()], pa.string())


def _raw_text(batch: pa.RecordBatch) -> pa.Array:
    """Each row's fields joined with ',' again: the row as the file had it, near enough for a reject."""
    if batch.num_columns == 0:
        return pa.array([""] * batch.num_rows, pa.string())
    return _text(pc.binary_join_element_wise(*batch.columns, b","))

