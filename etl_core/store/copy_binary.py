"""The features in PostgreSQL's binary COPY format, made with pyarrow kernels.  Pure: no I/O.

A row of the features table is 7 fields, in the order of ``LAYOUT``, which must be the table's as
``tables.USER_FEATURES`` describes it (``fits``; the store falls back to CSV COPY where it is not,
and a quick test fails until this module lays the new columns out too; tests/test_copy_binary.py
loads the rows with the COPY statement of that column list), each its length (int32, -1 for NULL) then its bytes,
big-endian.  Most of a row is fixed-width: the field count, four 8-byte numbers and their lengths,
the lengths of the two texts and the array's header.  Those bytes are gathered for a whole chunk of
rows by one ``take`` over the columns' own little-endian bytes, with an index that reads each value's
bytes backwards (made once per chunk size, then kept); the texts and the array's elements go in
between, and one ``binary_join_element_wise`` lays each row out:

    count | user_id | name length | name | total | compounds length | compounds | array | average | run_id

The array (bigint[]) is its length, a header (one dimension, no nulls, elements of type int8, the
dimension's length, lower bound 1), then every element as length 8 and its bytes: the elements of a
chunk are made by one ``take`` too, with an index that only grows (kept: 48 bytes per element of the
largest chunk seen).
"""

from __future__ import annotations

import functools
import sys

import pyarrow as pa
import pyarrow.compute as pc

from etl_core import literals
from etl_core.tables import Table

if sys.byteorder != "little":  # the gathers below read values' bytes as the machine stores them
    raise ImportError("binary COPY is made for little-endian machines only")

# the columns this encoder lays out: name, type, whether NULL may occur
LAYOUT = (("user_id", "bigint", False), ("user_name", "text", False), ("total_experiments", "bigint", False),
          ("most_common_compounds", "text", True), ("most_common_compound_ids", "bigint[]", True),
          ("average_experiments", "double precision", False), ("run_id", "bigint", False))


def fits(table: Table) -> bool:
    """Whether ``table``'s columns are the ones this encoder lays out, in its order."""
    return tuple((c.name, c.sql, c.nullable) for c in table.columns) == LAYOUT


HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")  # no flags, no extension
TRAILER = (-1).to_bytes(2, "big", signed=True)

_I32 = pa.int32()
_BINARY = pa.binary()
_TWELVE = literals.scalar(12, _I32)


def _u8(data: bytes) -> pa.Array:
    return pa.Array.from_buffers(pa.uint8(), len(data), [None, pa.py_buffer(data)])


def _binary_scalar(data: bytes) -> pa.Scalar:
    offsets = pa.py_buffer((0).to_bytes(4, "little") + len(data).to_bytes(4, "little"))
    return pa.Array.from_buffers(_BINARY, 1, [None, offsets, pa.py_buffer(data)])[0]


def _be(*numbers: int) -> bytes:
    return b"".join(n.to_bytes(4, "big") for n in numbers)


_EMPTY = _binary_scalar(b"")
_NULL_ARRAY = _binary_scalar((-1).to_bytes(4, "big", signed=True))  # a NULL field: its length -1 only
_LEN8 = _u8(_be(8))  # the element gather's source starts with it

# The constants a row's fixed parts take bytes from, in the gather's source one after the other (then
# the run_id's 8 bytes, different for each run): where each starts
_CONSTANT_BYTES = {
    "count": (7).to_bytes(2, "big"),  # fields per row
    "len8": _be(8),
    "array_head": _be(1, 0, 20),  # one dimension, no nulls, elements of type int8 (oid 20)
    "lower_bound": _be(1),
}
_CONSTANTS = b"".join(_CONSTANT_BYTES.values())
_AT = {name: _CONSTANTS.index(data) for name, data in _CONSTANT_BYTES.items()}  # the first such bytes will do
_AT["run_id"] = len(_CONSTANTS)

# the chunk's fixed-width columns, in the order their bytes follow the constants in the gather's source
_COLUMNS = (("user_id", 8), ("total_experiments", 8), ("average_experiments", 8), ("name_length", 4),
            ("compounds_length", 4), ("array_size", 4), ("array_length", 4))

# Each fixed part of a row, byte by byte: a constant's bytes, or a column's value (big-endian)
_PARTS: tuple[tuple[tuple[str, int], ...], ...] = (
    (("count", 2), ("len8", 4), ("user_id", 8), ("name_length", 4)),  # then the name
    (("len8", 4), ("total_experiments", 8), ("compounds_length", 4)),  # then the compounds
    (("array_size", 4), ("array_head", 12), ("array_length", 4), ("lower_bound", 4)),  # then the elements
    (("len8", 4), ("average_experiments", 8), ("len8", 4), ("run_id", 8)),
)


def _gather_index(starts: list[int], steps: list[int], rows: int) -> pa.Array:
    """For ``rows`` rows of ``len(starts)`` bytes each, row-major: byte j of row i is read from
    ``starts[j] + steps[j] * i``."""
    width = len(starts)
    position = literals.arange(rows * width, _I32)
    row = pc.divide(position, literals.scalar(width, _I32))  # integer division
    byte = pc.subtract(position, pc.multiply(row, literals.scalar(width, _I32)))
    start = pc.take(literals.array(starts, _I32), byte)
    step = pc.take(literals.array(steps, _I32), byte)
    return pc.add(start, pc.multiply(step, row))


@functools.lru_cache(maxsize=8)
def _fixed_index(rows: int) -> tuple[pa.Array, tuple[tuple[int, pa.Buffer], ...]]:
    """The gather index of a chunk of ``rows`` rows (all fixed parts, one after the other, each
    row-major), and each part's width with the offsets of its rows."""
    column_at, at = {}, len(_CONSTANTS) + 8  # + the run_id
    for name, width in _COLUMNS:
        column_at[name] = at
        at += width * rows
    indexes, widths = [], []
    for part in _PARTS:
        starts, steps = [], []
        for name, size in part:
            if name in column_at:  # a value, its last byte first
                starts += [column_at[name] + size - 1 - k for k in range(size)]
                steps += [size] * size
            else:
                starts += range(_AT[name], _AT[name] + size)
                steps += [0] * size
        indexes.append(_gather_index(starts, steps, rows))
        width = len(starts)
        widths.append((width, pc.multiply(literals.arange(rows + 1, _I32), literals.scalar(width, _I32)).buffers()[1]))
    return pa.concat_arrays(indexes), tuple(widths)


class _ElementIndex:
    """The element gather's index: element e's 12 bytes are the length 8 (source bytes 0-3), then its
    value's 8 bytes backwards (source bytes 4 + 8e ... 4 + 8e + 7).  Grown by doubling, kept."""

    def __init__(self) -> None:
        self._index = literals.empty(_I32)

    def __call__(self, elements: int) -> pa.Array:
        index = self._index  # read once: another thread may put a grown one in its place meanwhile
        if len(index) < 12 * elements:
            capacity = max(elements, 2 * len(index) // 12, 1 << 12)
            index = _gather_index([0, 1, 2, 3] + [4 + 7 - k for k in range(8)], [0] * 4 + [8] * 8, capacity)
            if len(index) > len(self._index):
                self._index = index
        return index.slice(0, 12 * elements)


_element_index = _ElementIndex()


def _bytes_of(values: pa.Array, width: int) -> pa.Array:
    """A fixed-width array without nulls as its bytes (uint8, as stored), without a copy."""
    data = values.buffers()[1].slice(values.offset * width, len(values) * width)
    return pa.Array.from_buffers(pa.uint8(), len(values) * width, [None, data])


def _binary_of(data: pa.Buffer, rows: int, offsets: pa.Buffer) -> pa.Array:
    """``rows`` binary values laid end to end in ``data``, where ``offsets`` (int32) say."""
    return pa.Array.from_buffers(_BINARY, rows, [None, offsets, data])


def _elements(ids: pa.Array, lengths: pa.Array) -> pa.Array:
    """Each row's array elements (length 8 and value, for each); none for a NULL list (its length is 0)."""
    flat = pc.list_flatten(ids)
    if not len(flat):
        return pa.repeat(_EMPTY, len(ids))
    data = pc.take(pa.concat_arrays([_LEN8, _bytes_of(flat, 8)]), _element_index(len(flat))).buffers()[1]
    offsets = pa.concat_arrays([literals.array([0], _I32), pc.cumulative_sum(pc.multiply(lengths, _TWELVE))])
    return _binary_of(data, len(ids), offsets.buffers()[1])


def rows(features: pa.RecordBatch, run_id: int) -> memoryview:
    """The rows of ``features`` (transform.FEATURES_SCHEMA) in binary COPY's tuple format, one after
    the other."""
    n = features.num_rows
    names = features["user_name"].cast(_BINARY)
    compounds = features["most_common_compounds"].cast(_BINARY)
    ids = features["most_common_compound_ids"]
    lengths = pc.fill_null(pc.list_value_length(ids), literals.scalar(0, _I32))
    columns = {
        "user_id": features["user_id"],
        "total_experiments": features["total_experiments"],
        "average_experiments": features["average_experiments"],
        "name_length": pc.binary_length(names),
        "compounds_length": pc.fill_null(pc.binary_length(compounds), literals.scalar(-1, _I32)),
        "array_size": pc.add(pc.multiply(lengths, _TWELVE), literals.scalar(20, _I32)),
        "array_length": lengths,
    }
    source = pa.concat_arrays([_u8(_CONSTANTS + run_id.to_bytes(8, "big", signed=True))]
                              + [_bytes_of(columns[name], width) for name, width in _COLUMNS])
    index, widths = _fixed_index(n)
    gathered = pc.take(source, index).buffers()[1]
    parts, at = [], 0
    for width, offsets in widths:
        parts.append(_binary_of(gathered.slice(at, width * n), n, offsets))
        at += width * n
    if ids.null_count:  # a NULL array is its length -1 only
        parts[2] = pc.if_else(pc.is_null(ids), _NULL_ARRAY, parts[2])
    elements = _elements(ids, lengths)
    joined = pc.binary_join_element_wise(parts[0], names, parts[1], compounds, parts[2], elements, parts[3], _EMPTY,
                                         null_handling="replace", null_replacement="")
    _, offsets, data = joined.buffers()
    ends = pa.Array.from_buffers(_I32, n + 1, [None, offsets], offset=joined.offset)
    start, end = ends[0].as_py(), ends[n].as_py()
    return memoryview(data.slice(start, end - start))
