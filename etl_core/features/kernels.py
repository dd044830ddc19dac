"""The features, as pure functions of Arrow arrays and tables, with ``pyarrow.compute`` only.

No threads, no files, no database, no settings, no logging: the same arrays in give the same arrays
out.  ``counting.py`` runs these kernels batch by batch and bucket by bucket, on threads, with a memory
budget (``tests/features.py`` runs them one after the other, for tables already in memory).

Each user gets a position (its rank among the sorted user ids) and each compound an index (its rank
among the sorted compound ids).  With ``width`` compounds and ``stride = width + 1``, every experiment
gives one key per distinct compound it lists, ``position * stride + index``, and one more,
``position * stride + width``, that counts the experiment itself (``experiment_keys``).  Counted keys
(``count_keys``, sorted by ``sort_small``, and ``add_counts``) give each user's total of experiments
(``user_totals``) and the compounds tied for its top count (``tied_favourites``); ``favourites`` does
both for the keys of a range of users, and ``feature_batch`` turns them into those users' rows of the
features table.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow._acero import AggregateNodeOptions, Declaration, TableSourceNodeOptions

from etl_core import literals
from etl_core.literals import scalar
from etl_core.tables import STORE_ADDS, USER_FEATURES

LIST_JOINER = ";"
_JOINER = scalar(LIST_JOINER, pa.string())
MAX_SHIFTS = 8  # lists longer than this are deduplicated with a hash instead of shifted compares

FEATURES_SCHEMA = USER_FEATURES.arrow_schema(without=STORE_ADDS)  # what a run computes


def dense_range(ids: pa.Array, *, ascending: bool = False) -> tuple[int, int] | None:
    """(lowest, highest) when the distinct ``ids`` are every integer from the lowest to the highest, else
    None (and for no ids): an id's rank is then ``id - lowest``, and it is one of them when it lies in
    between.  ``ascending``: the ids are sorted, so their ends are their bounds (no pass over them)."""
    if not len(ids):
        return None
    if ascending:
        lowest, highest = ids[0].as_py(), ids[-1].as_py()
    else:
        bounds = pc.min_max(ids).as_py()
        lowest, highest = bounds["min"], bounds["max"]
    return (int(lowest), int(highest)) if highest - lowest + 1 == len(ids) else None


# An IdIndex of ids that spread over at most this many times their number keeps a table of positions by
# id (4 bytes a slot where ids are missing: a million users with gaps, a few MB); wider, it searches
TABLE_SPREAD = 4
# Sparser ids are found through buckets of their high bits, about two a user (4 bytes each), each id
# compared with the few sorted ids of its bucket, one probe for all at a time; where a bucket holds more
# than MAX_PROBES ids (ids in clusters), by a binary search instead
MAX_PROBES = 8
_NO_RANK = pa.nulls(1, pa.int64())[0]  # (not pa.scalar(None): literals.py)


class IdIndex:
    """Where ids stand among a set of distinct ids (a file's accepted keys), built once and asked batch
    by batch in time that follows the batch, not the set (``pc.index_in`` and ``pc.is_in`` build a hash
    table of the whole set on each call: at L with sparse user ids, 90 ms a batch, 21 s of 23).

    Ids that fill a range are ranked by subtraction; ids within TABLE_SPREAD times their number of each
    other by a table of positions (``pc.inverse_permutation``) and one ``take``; sparser ids by buckets
    of their high bits and a few probes (2.4 ms for 31k ids among a million spread over 10^12); ids in
    clusters by a binary search of the sorted ids (``pc.search_sorted``: 6.6 ms)."""

    def __init__(self, ids: pa.Array) -> None:
        self.sorted = ids if ascending(ids) else ids.take(pc.array_sort_indices(ids))
        self._range = dense_range(self.sorted, ascending=True)
        self._low = self.sorted[0].as_py() if len(self.sorted) else 0
        self._high = self.sorted[-1].as_py() if len(self.sorted) else -1
        span = self._high - self._low + 1
        self._table: pa.Array | None = None
        self._starts: pa.Array | None = None
        if self._range is None and 0 < span <= TABLE_SPREAD * len(self.sorted):
            self._table = pc.inverse_permutation(pc.subtract(self.sorted, scalar(self._low, pa.int64())),
                                                 max_index=span - 1, output_type=pa.int32())
        elif self._range is None and 0 < span < 1 << 62:
            self._bucket(span)

    def _bucket(self, span: int) -> None:
        """Buckets of 2^shift ids from the lowest, about two a user: where each starts among the sorted
        ids, kept if none holds more than MAX_PROBES ids."""
        self._shift = max(0, span.bit_length() - (2 * len(self.sorted)).bit_length())
        buckets = ((span - 1) >> self._shift) + 1
        bounds = pc.shift_left(literals.arange(buckets + 1, pa.int64()), scalar(self._shift, pa.int64()))
        offsets = pc.subtract(self.sorted, scalar(self._low, pa.int64()))
        starts = pc.search_sorted(offsets, bounds).cast(pa.int32())
        self._probes = pc.max(pc.pairwise_diff(starts)).as_py() or 0
        if self._probes <= MAX_PROBES:
            self._starts = starts

    def __len__(self) -> int:
        return len(self.sorted)

    @property
    def how(self) -> str:
        """How it ranks: "range" (by subtraction), "table" (of positions), "buckets" or "search" (binary)."""
        if self._range is not None:
            return "range"
        return "table" if self._table is not None else "buckets" if self._starts is not None else "search"

    def rank(self, ids: pa.Array) -> pa.Array:
        """Each id's position among the sorted ids (int64), null for an id not among them (or null)."""
        if not len(self.sorted):
            return pa.nulls(len(ids), pa.int64())
        low = scalar(self._low, pa.int64())
        inside = pc.and_(pc.greater_equal(ids, low), pc.less_equal(ids, scalar(self._high, pa.int64())))
        if self._range is not None:
            return pc.if_else(inside, pc.subtract(ids, low), _NO_RANK)
        if self._table is not None:
            at = pc.if_else(inside, pc.subtract(ids, low), _NO_RANK)
            return self._table.take(at).cast(pa.int64())
        if self._starts is not None:
            return self._probe(ids, pc.if_else(inside, pc.subtract(ids, low), _NO_RANK))
        at = pc.min_element_wise(pc.search_sorted(self.sorted, ids).cast(pa.int64()),
                                 scalar(len(self.sorted) - 1, pa.int64()))
        return pc.if_else(pc.equal(self.sorted.take(at), ids), at, _NO_RANK)

    def positions(self, ids: pa.Array) -> pa.Array:
        """``rank`` for ids that are all among the set (a file's checked references): no bounds to check
        where the ids fill a range or a table (at L, a tenth of a second less for the compounds)."""
        low = scalar(self._low, pa.int64())
        if self._range is not None:
            return pc.subtract(ids, low)
        if self._table is not None:
            return self._table.take(pc.subtract(ids, low)).cast(pa.int64())
        return self.rank(ids)

    def _probe(self, ids: pa.Array, offsets: pa.Array) -> pa.Array:
        """Each id compared with the sorted ids of its bucket, the first of them for all ids, then the
        second, ...: the position where they are equal (null: none, or outside the ids' bounds)."""
        assert self._starts is not None
        bucket = pc.shift_right(offsets, scalar(self._shift, pa.int64()))
        at = self._starts.take(bucket).cast(pa.int64())
        end = self._starts.take(pc.add(bucket, scalar(1, pa.int64()))).cast(pa.int64())
        last = scalar(len(self.sorted) - 1, pa.int64())
        found = pa.nulls(len(ids), pa.int64())
        for _ in range(self._probes):
            hit = pc.and_(pc.less(at, end), pc.equal(self.sorted.take(pc.min_element_wise(at, last)), ids))
            found = pc.if_else(hit, at, found)
            at = pc.add(at, scalar(1, pa.int64()))
        return found

    def contains_all(self, ids: pa.Array) -> bool:
        """Whether every id (none null) is one of the set."""
        if not len(ids):
            return True
        if self._range is not None:
            bounds = pc.min_max(ids).as_py()
            return bool(self._range[0] <= bounds["min"] and bounds["max"] <= self._range[1])
        return self.rank(ids).null_count == 0

    def missing(self, ids: pa.Array) -> pa.Array:
        """Per id: True where it is not null and not one of the set."""
        return pc.and_(pc.is_valid(ids), pc.is_null(self.rank(ids)))


def repeated_in_list(parents: pa.Array, compounds: pa.Array, lists: pa.Array) -> pa.Array:
    """True for each list item whose compound already appeared earlier in the same list.

    ``parents`` is the list each item belongs to (``pc.list_parent_indices(lists)``), ``compounds``
    the flattened items."""
    n = len(compounds)
    longest = pc.max(pc.list_value_length(lists)).as_py() or 0
    if n == 0 or longest <= 1:
        return literals.repeat(False, pa.bool_(), n)
    if longest <= MAX_SHIFTS:
        repeated = literals.repeat(False, pa.bool_(), n)
        for shift in range(1, longest):
            same = pc.and_(pc.equal(parents[shift:], parents[:-shift]),
                           pc.equal(compounds[shift:], compounds[:-shift]))
            repeated = pc.or_(repeated, pa.concat_arrays([literals.repeat(False, pa.bool_(), shift), same]))
        return repeated
    # Long lists: an item is a repeat unless it is the first of its (row, compound) pair.
    position = literals.arange(n, pa.int64())
    table = pa.table({"row": parents, "compound": compounds, "position": position})
    first = group_by(table, ["row", "compound"], [("position", "hash_min")])
    return pc.invert(pc.is_in(position, value_set=first["position_min"]))


def experiment_keys(users: pa.Array, lists: pa.ListArray, user_ids: IdIndex, compound_ids: IdIndex) -> pa.Array:
    """The int64 keys of one batch of experiments (``users[i]`` listed ``lists[i]``): first
    ``position * stride + index`` for each distinct compound of each experiment, in list order, then
    ``position * stride + width`` for each experiment.  ``user_ids`` and ``compound_ids`` hold every id
    of the batch; ``width = len(compound_ids)``, ``stride = width + 1``.  A compound listed twice in one
    experiment gives one key."""
    width = len(compound_ids)
    positions = user_ids.positions(users)
    parents = pc.list_parent_indices(lists)
    compounds = compound_ids.positions(pc.list_flatten(lists))
    firsts = pc.invert(repeated_in_list(parents, compounds, lists))
    base = pc.multiply(positions, scalar(width + 1, pa.int64()))
    return pa.concat_arrays([
        pc.add(base.take(parents.filter(firsts)), compounds.filter(firsts)),
        pc.add(base, scalar(width, pa.int64())),
    ])


def count_keys(keys: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """Each distinct key once, ascending, and how often it occurs (int64).  The keys are not negative.

    Sorted rather than hashed: ``sort_small`` and one run-length encoding took a bucket's 163k keys
    in 3.2 ms where a hash aggregation took 8 ms."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks else literals.empty(keys.type)
    runs = pc.run_end_encode(sort_small(keys))
    ends = pa.concat_arrays([literals.array([0], pa.int64()), runs.run_ends.cast(pa.int64())])
    return runs.values, pc.pairwise_diff(ends)[1:]


RADIX_BITS = 12  # pyarrow sorts integers that span at most 2^12 values with a counting sort (O(n))
_DIGIT = {width: scalar((1 << RADIX_BITS) - 1, pa.int64() if width == 64 else pa.int32()) for width in (32, 64)}


def sort_small(values: pa.Array, *, low_bit: int = 0) -> pa.Array:
    """``values`` (int32 or int64, none negative, no nulls) in ascending order: a radix sort, 12 bits
    at a time from the lowest, each digit by pyarrow's stable counting sort.  A bucket's keys span 26
    bits at L (three passes), 22 at M (two); pyarrow's own sort of them, a comparison sort, took four to
    five times as long as the three passes.  With ``low_bit`` the bits below it are not looked at:
    values equal above it keep their order (``merge_counts`` sorts packed pairs by their key so)."""
    if len(values) < 2:
        return values
    top = pc.max(values).as_py()
    digit = _DIGIT[values.type.bit_width]
    shift = low_bit
    if top >> shift == 0:
        return values
    while True:
        if shift == 0 and top <= digit.as_py():
            part = values  # one digit: its own counting sort
        else:
            part = pc.bit_wise_and(pc.shift_right(values, scalar(shift, values.type)), digit)
        values = values.take(pc.array_sort_indices(part))
        shift += RADIX_BITS
        if top >> shift == 0:
            return values


COUNT_BITS = 32  # a packed pair: key << COUNT_BITS | count
_COUNT_MASK = scalar((1 << COUNT_BITS) - 1, pa.int64())
_COUNT_SHIFT = scalar(COUNT_BITS, pa.int64())


def pack_counts(keys: pa.Array, counts: pa.Array) -> pa.Array:
    """Counted keys as one int64 each, ``key << 32 | count`` (8 bytes a pair where a key and an int64
    count take 12): ascending keys give ascending packed values.  Keys below 2^31, counts below 2^32;
    a larger count raises rather than spills into the key."""
    if len(counts) and pc.max(counts).as_py() > _COUNT_MASK.as_py():
        raise OverflowError(f"a count of {pc.max(counts).as_py()} does not fit in {COUNT_BITS} bits")
    return pc.bit_wise_or(pc.shift_left(keys.cast(pa.int64()), _COUNT_SHIFT), counts.cast(pa.int64()))


def unpack_counts(packed: pa.Array, key_type: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """``pack_counts`` undone: the keys (as ``key_type``) and their counts (int64)."""
    return pc.shift_right(packed, _COUNT_SHIFT).cast(key_type), pc.bit_wise_and(packed, _COUNT_MASK)


def merge_counts(packed: pa.Array, more: pa.Array) -> pa.Array:
    """Two sets of packed (key, count), each ascending with each key once, as one: ascending, each key
    once, the counts of a key in both summed.  A radix sort on the keys' bits only (counting sorts,
    O(n)), then one sum per run of equal keys from a running total: no hash table, and the result
    stays in the order ``tied_favourites`` reads fastest."""
    if not len(packed):
        return more
    if not len(more):
        return packed
    both = sort_small(pa.concat_arrays([packed, more]), low_bit=COUNT_BITS)
    keys = pc.shift_right(both, _COUNT_SHIFT)
    runs = pc.run_end_encode(keys)
    if len(runs.values) == len(both):  # no key in both
        return both
    total = pc.cumulative_sum(pc.bit_wise_and(both, _COUNT_MASK))
    last = pc.subtract(runs.run_ends.cast(pa.int64()), scalar(1, pa.int64()))
    ends = pa.concat_arrays([literals.array([0], pa.int64()), total.take(last)])
    return pack_counts(runs.values, pc.pairwise_diff(ends)[1:])


def add_counts(keys: pa.Array, counts: pa.Array, more_keys: pa.Array,
               more_counts: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Two sets of (key, count) as one: the counts of a key in both are summed; in no particular order."""
    if not len(keys):
        return more_keys, more_counts
    both = pa.table({"k": pa.chunked_array([keys, more_keys]), "n": pa.chunked_array([counts, more_counts])})
    summed = group_by(both, ["k"], [("n", "hash_sum")])
    return _array(summed.column("k")), _array(summed.column("n_sum"))


def group_by(table: pa.Table, keys: list[str], aggregates: list[tuple[str, str]]) -> pa.Table:
    """``table.group_by(keys, use_threads=False).aggregate(...)`` with hash_ functions, each result named
    ``<column>_<function without hash_>``.  Straight to Acero's ``pyarrow._acero``: ``pyarrow.acero``
    imports ``pyarrow.dataset`` (0.1 s), and that imports pandas where pandas is installed."""
    specs = [([column], function, None, f"{column}_{function.removeprefix('hash_')}")
             for column, function in aggregates]
    return Declaration.from_sequence([
        Declaration("table_source", TableSourceNodeOptions(table)),
        Declaration("aggregate", AggregateNodeOptions(specs, keys=keys)),
    ]).to_table(use_threads=False)


def _array(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


@dataclasses.dataclass(frozen=True)
class Favourites:
    """A range of users, in position order: experiments, and the compounds tied for the top."""

    totals: pa.Array  # int64 per user
    tied_per_user: pa.Array  # int64 per user: how many compounds tie (0: no experiment)
    tied: pa.Array  # int64 compound indices, user after user, ascending within a user


def user_totals(positions: pa.Array, counts: pa.Array, users: int) -> pa.Array:
    """Experiments per user position ``0 .. users - 1`` (int64, 0 for a user without any), from the
    counted experiment keys: the position of each, and its count."""
    return pc.fill_null(pc.scatter(counts, positions, max_index=users - 1), scalar(0, counts.type)).cast(pa.int64())


def tied_favourites(keys: pa.Array, positions: pa.Array, counts: pa.Array, users: int,
                    stride: int) -> tuple[pa.Array, pa.Array]:
    """The compounds tied for each user's top count, from the counted (user, compound) keys: each key
    (``position * stride + index``), its position (``key // stride``, which the caller has already)
    and its count.  Returns how many compounds tie for each position ``0 .. users - 1`` (0: none) and
    their indices, user after user, ascending within a user (both int64)."""
    if ascending(keys):  # as count_keys gives them: each user's keys are one run
        tied = keys.filter(pc.equal(counts, run_maximum(positions, counts)))  # still ascending
    else:  # counts merged by add_counts: a hash aggregation for the maximum, then a sort
        best = group_by(pa.table({"user": positions, "n": counts}), ["user"], [("n", "hash_max")])
        top = pc.scatter(best["n_max"].combine_chunks(), best["user"].combine_chunks(), max_index=users - 1)
        tied = sort_small(keys.filter(pc.equal(counts, top.take(positions))))  # by user, then compound index
    stride_ = scalar(stride, tied.type)
    tied_user = pc.divide(tied, stride_)
    runs = pc.run_end_encode(tied_user)
    ends = pa.concat_arrays([literals.array([0], pa.int64()), runs.run_ends.cast(pa.int64())])
    lengths = pc.pairwise_diff(ends)[1:]
    per_user = pc.fill_null(pc.scatter(lengths, runs.values, max_index=users - 1), scalar(0, pa.int64()))
    return per_user, pc.subtract(tied, pc.multiply(tied_user, stride_)).cast(pa.int64())


def ascending(values: pa.Array) -> bool:
    """Whether each value is greater than the one before it."""
    return len(values) < 2 or bool(pc.all(pc.less(values[:-1], values[1:])).as_py())


def run_maximum(groups: pa.Array, values: pa.Array) -> pa.Array:
    """For each value, the largest value of its group, where ``groups`` (integers, not negative) come
    in runs, one run per group, and ``values`` are not negative: a running maximum of ``group * span +
    value`` (a later group's values out-weigh every earlier one's), read at the end of each run; past
    int64 it raises rather than wraps.  A bucket's keys at M: 0.8 ms, against 1.4 ms for a hash
    aggregation and the sort it needs after."""
    if not len(values):
        return values
    span = scalar(pc.max(values).as_py() + 1, pa.int64())
    running = pc.cumulative_max(pc.add_checked(pc.multiply_checked(groups, span), values.cast(pa.int64())))
    runs = pc.run_end_encode(groups)
    last = pc.subtract(runs.run_ends.cast(pa.int64()), scalar(1, pa.int64()))
    best = pc.subtract(running.take(last), pc.multiply(runs.values, span)).cast(values.type)
    # from_buffers, not RunEndEncodedArray.from_arrays, which imports pandas where it is installed
    encoded = pa.Array.from_buffers(pa.run_end_encoded(runs.run_ends.type, best.type), len(values), [None],
                                    children=[runs.run_ends, best])
    return pc.run_end_decode(encoded)


def favourites(keys: pa.Array, counts: pa.Array, users: int, stride: int) -> Favourites:
    """Totals and tied favourites of ``users`` consecutive users, from their counted keys (each
    key's position counted from the first of them)."""
    stride_ = scalar(stride, keys.type)
    user = pc.divide(keys, stride_)
    compound = pc.subtract(keys, pc.multiply(user, stride_))
    experiment = pc.equal(compound, scalar(stride - 1, keys.type))
    totals = user_totals(user.filter(experiment), counts.filter(experiment), users)
    pair = pc.invert(experiment)
    per_user, tied = tied_favourites(keys.filter(pair), user.filter(pair), counts.filter(pair), users, stride)
    return Favourites(totals, per_user, tied)


def by_user_id(users: pa.Table) -> pa.Table:
    """``users`` sorted by user_id (the same table when it is already)."""
    ids = users["user_id"].combine_chunks()
    if not ascending(ids):
        return users.sort_by("user_id")
    return users


def average(experiments: int, users: int) -> pa.Scalar:
    """Experiments per user, over all users (0.0 without users)."""
    return scalar(experiments / users if users else 0.0, pa.float64())


def feature_batch(users: pa.Table, favourites: Favourites, names: pa.Array, compound_ids: pa.Array,
                  average: pa.Scalar) -> pa.RecordBatch:
    """The rows of ``users`` (user_id, name; in position order) with their ``favourites``; ``names``
    and ``compound_ids`` are the compounds' by index, ``average`` is the same on every row."""
    per_user = favourites.tied_per_user
    offsets = pa.concat_arrays([literals.array([0], pa.int64()), pc.cumulative_sum(per_user)]).cast(pa.int32())
    none = pc.equal(per_user, scalar(0, per_user.type))
    return pa.RecordBatch.from_arrays([
        users["user_id"].combine_chunks(),
        users["name"].combine_chunks(),
        favourites.totals,
        pc.binary_join(pa.ListArray.from_arrays(offsets, names.take(favourites.tied), mask=none), _JOINER),
        pa.ListArray.from_arrays(offsets, compound_ids.take(favourites.tied), mask=none),
        pa.repeat(average, users.num_rows),
    ], schema=FEATURES_SCHEMA)
