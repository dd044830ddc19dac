"""Each user's features as one 64-bit digest, and what changed since the last load by comparing digests.

A reload sends the database only the users whose digest differs from the one the last load stored
(``etl_core/store/changes.py``), instead of every user for the server to compare.  Pure:
``pyarrow.compute`` only, no threads, no I/O.

The digest of a row is tabulation hashing (as Zobrist's): every byte of a text, at its position in
the text, and every item of a list, at its place in the list, stands for a pseudo-random 64-bit
number; a value's digest is the sum of its parts' numbers (modulo 2**64, summed with cumulative sums,
so a million texts are a handful of kernels), and a row's digest mixes its columns' digests with the
SplitMix64 finalizer.  Equal rows always have equal digests; two rows that differ have the same one
with a probability of about 2**-64 (a row whose digest matches by chance would keep its old values:
``force`` compares every value on the server instead).  The numbers come from a fixed formula, so a
digest stored by one process is compared by another; ``ALGORITHM`` names it, and a stored digest of
another algorithm is not compared at all.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pyarrow as pa
import pyarrow.compute as pc

from etl_core import literals
from etl_core.features.kernels import IdIndex
from etl_core.tables import USER_FEATURES

ALGORITHM = 1  # bump whenever a digest of the same row would come out different
# the names of the compounds tied for a user's top count follow from their ids and the compounds' names:
# digested once per load (``Digester``), not once per user
DERIVED = ("most_common_compounds",)
COLUMNS = tuple(c for c in USER_FEATURES.names if c not in ("user_id", "run_id", *DERIVED))
_U64 = pa.uint64()
_I32 = pa.int32()
_RUNS = pa.run_end_encoded(_I32, _I32)
_POSITIONS = 256  # the byte table's positions; later bytes reuse them with an odd factor per block of 256
_NULL = 0x6A09E667F3BCC909  # the digest of a NULL value (an empty text or list sums to 0)
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # SplitMix64's multipliers
_GOLDEN = 0x9E3779B97F4A7C15


@cache
def _u64(value: int) -> pa.Scalar:
    return literals.scalar(value, _U64)


@cache
def _i32(value: int) -> pa.Scalar:
    return literals.scalar(value, _I32)


def mix(values: pa.Array) -> pa.Array:
    """SplitMix64's finalizer, element-wise (uint64 arithmetic wraps): a bijection that spreads every
    input bit over the output."""
    z = pc.multiply(pc.bit_wise_xor(values, pc.shift_right(values, _u64(30))), _u64(_M1))
    z = pc.multiply(pc.bit_wise_xor(z, pc.shift_right(z, _u64(27))), _u64(_M2))
    return pc.bit_wise_xor(z, pc.shift_right(z, _u64(31)))


@cache
def _byte_table() -> pa.Array:
    """The number each (position, byte) stands for: entry ``position * 256 + byte``."""
    return mix(pc.add(pc.cast(literals.arange(_POSITIONS * 256, pa.int64()), _U64), _u64(_GOLDEN)))


def _segment_sums(parts: pa.Array, offsets: pa.Array) -> pa.Array:
    """Per row, the sum of ``parts[offsets[i]:offsets[i + 1]]`` (``offsets`` from 0, int32).

    From the running sum: a row's last running sum, minus its first, plus its first part.  (A zero put
    in front of the running sums would spare the third take, but copies all of them once more: at L
    the names' 14M bytes, 0.25 s of a first load's 4.7 s.)"""
    n = len(offsets) - 1
    if not len(parts):
        return literals.repeat(0, pa.int64(), n).cast(_U64)
    sums = pc.cumulative_sum(parts)
    firsts, ends = offsets.slice(0, n), offsets.slice(1, n)
    lengths = pc.subtract(ends, firsts)
    empty = n and pc.min(lengths).as_py() == 0
    if empty:  # an empty row: any index in range, its sum set to 0 below
        last = _i32(len(parts) - 1)
        firsts, ends = pc.min_element_wise(firsts, last), pc.max_element_wise(ends, _i32(1))
    sums = pc.add(pc.subtract(pc.take(sums, pc.subtract(ends, _i32(1))), pc.take(sums, firsts)),
                  pc.take(parts, firsts))
    return pc.if_else(pc.equal(lengths, _i32(0)), _u64(0), sums) if empty else sums


_COUNTING: list[pa.Array] = []  # 0, 1, 2, ... as long as the longest batch asked for: sliced, never made again


def _counting(n: int) -> pa.Array:
    if not _COUNTING or len(_COUNTING[0]) < n:
        _COUNTING[:] = [literals.arange(max(n, 1 << 16, 2 * len(_COUNTING[0]) if _COUNTING else 0), _I32)]
    return _COUNTING[0].slice(0, n)


def _starts(offsets: pa.Array, items: int, scale: int = 1) -> pa.Array:
    """Each item's row's first item, times ``scale``, for rows laid out by ``offsets`` (from 0, int32)."""
    n = len(offsets) - 1
    firsts = offsets.slice(0, n) if scale == 1 else pc.multiply(offsets.slice(0, n), _i32(scale))
    lengths = pc.subtract(offsets.slice(1, n), offsets.slice(0, n))
    if n and pc.min(lengths).as_py() > 0:  # runs of equal starts: one decoding pass
        # (from_buffers, not RunEndEncodedArray.from_arrays, which looks for pandas; children from offset 0)
        runs = pa.Array.from_buffers(_RUNS, offsets[n].as_py(), [None],
                                     children=[pa.concat_arrays([offsets.slice(1, n)]), pa.concat_arrays([firsts])])
        return pc.run_end_decode(runs)
    rows = pc.list_parent_indices(pa.ListArray.from_arrays(offsets, pa.nulls(items, pa.null())))
    return pc.take(firsts, rows)


def _positions(offsets: pa.Array, items: int) -> pa.Array:
    """Each item's place within its row (0, 1, ...) for rows laid out by ``offsets`` (from 0, int32)."""
    return pc.subtract(_counting(items), _starts(offsets, items))


def _from_zero(offsets: pa.Array) -> pa.Array:
    return pc.subtract(offsets, offsets[0]) if offsets[0].as_py() else offsets


def text_digests(values: pa.Array) -> pa.Array:
    """Each text's digest (utf8 or binary with 32-bit offsets; NULL has its own)."""
    n = len(values)
    raw = pa.Array.from_buffers(_I32, n + 1, [None, values.buffers()[1]], offset=values.offset)
    first = raw[0].as_py()
    offsets = _from_zero(raw)
    total = offsets[n].as_py() if n else 0
    data = pa.Array.from_buffers(pa.uint8(), total, [None, values.buffers()[2]], offset=first)
    if not total:
        return _with_nulls(literals.repeat(0, pa.int64(), n).cast(_U64), values)
    longest = pc.max(pc.subtract(offsets.slice(1, n), offsets.slice(0, n))).as_py()
    if longest <= _POSITIONS:  # the usual case: (position * 256 + byte) in three passes
        index = pc.add(pc.subtract(pc.shift_left(_counting(total), _i32(8)), _starts(offsets, total, 256)),
                       pc.cast(data, _I32))
        parts = pc.take(_byte_table(), index)
    else:  # a long text: each block of 256 bytes its own odd factor
        positions = _positions(offsets, total)
        index = pc.bit_wise_or(pc.shift_left(pc.bit_wise_and(positions, _i32(_POSITIONS - 1)), _i32(8)),
                               pc.cast(data, _I32))
        block = pc.cast(pc.shift_right(positions, _i32(8)), _U64)
        parts = pc.multiply(pc.take(_byte_table(), index), pc.add(pc.multiply(block, _u64(2)), _u64(1)))
    return _with_nulls(_segment_sums(parts, offsets), values)


def list_digests(values: pa.Array, items_digests: Callable[[pa.Array], pa.Array] | None = None) -> pa.Array:
    """Each list's digest (a list of 64-bit integers, in order; NULL has its own); with ``items_digests``,
    also each item's digest by it (what the item stands for: a compound's name)."""
    n = len(values)
    offsets = _from_zero(pc.cast(values.offsets, _I32))
    total = offsets[n].as_py() if n else 0
    items = pc.cast(values.values.slice(values.offsets[0].as_py(), total), pa.int64()) \
        if total else literals.empty(pa.int64())
    places = pc.cast(_positions(offsets, total), _U64)
    parts = mix(pc.add(items.view(_U64), pc.multiply(pc.add(places, _u64(1)), _u64(_GOLDEN))))
    if items_digests is not None:
        parts = pc.add(parts, pc.multiply(items_digests(items), _u64(_odd(0))))
    return _with_nulls(_segment_sums(parts, offsets), values)


def number_digests(values: pa.Array) -> pa.Array:
    """Each 64-bit number's bits (an integer's or a float's) as uint64; NULL has its own."""
    bits = values.view(_U64) if values.type.bit_width == 64 else pc.cast(values, pa.int64()).view(_U64)
    return _with_nulls(bits, values)


def _with_nulls(digests: pa.Array, values: pa.Array) -> pa.Array:
    return pc.if_else(values.is_valid(), digests, _u64(_NULL)) if values.null_count else digests


def _odd(i: int) -> int:
    """The ``i``-th column's weight: an odd 64-bit number (SplitMix64 of ``i``), so that multiplying by it
    loses nothing."""
    z = (i * _GOLDEN) % (1 << 64)
    z = ((z ^ (z >> 30)) * _M1) % (1 << 64)
    z = ((z ^ (z >> 27)) * _M2) % (1 << 64)
    return (z ^ (z >> 31)) | 1


def row_digests(features: pa.RecordBatch | pa.Table,
                names: Callable[[pa.Array], pa.Array] | None = None) -> pa.Array:
    """Each row's digest over the features' values (every column but the user's id, the run's and the
    ``DERIVED`` ones; with ``names``, each listed compound's name digest by it): the columns' digests,
    each times its own odd weight, summed and mixed."""
    row: pa.Array | None = None
    for i, name in enumerate(COLUMNS, start=1):
        column = features[name]
        values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if pa.types.is_string(values.type) or pa.types.is_binary(values.type):
            digests = text_digests(values)
        elif pa.types.is_list(values.type):
            digests = list_digests(values, names)
        else:
            digests = number_digests(values)
        term = pc.multiply(digests, _u64(_odd(i)))
        row = term if row is None else pc.add(row, term)
    assert row is not None
    return mix(row)


class Digester:
    """The digests of one load's rows: each row's own values and the names of the compounds it lists
    (from which its ``most_common_compounds`` follows), so that a renamed compound changes the digest
    of the users that list it, and of no other."""

    algorithm = ALGORITHM

    def __init__(self, compounds: pa.Table) -> None:
        compounds = compounds.sort_by("compound_id")
        self._ids = compounds["compound_id"].combine_chunks()
        self._names = mix(text_digests(compounds["compound_name"].combine_chunks()))
        self._index = IdIndex(self._ids)

    def _name_digests(self, ids: pa.Array) -> pa.Array:
        at = self._index.rank(ids)
        return pc.fill_null(pc.take(self._names, at), _u64(_NULL))  # (an id not among the compounds: none)

    def rows(self, features: pa.RecordBatch | pa.Table) -> pa.Array:
        return row_digests(features, self._name_digests)
