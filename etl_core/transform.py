"""The features, from Arrow tables to an Arrow table, with ``pyarrow.compute`` only.

No files, no database, no settings, no logging: the same tables in give the same table out (threads
only share the work).  Experiments arrive batch by batch
(``ExperimentCounts`` is a sink of the extract step) and only running counts are kept.

Each user gets a position (its rank among the sorted user ids) and each compound an index (its rank
among the sorted compound ids).  Every experiment gives one key per distinct compound it lists,
``position * stride + index``, and one more, ``position * stride + width``, that counts the experiment
itself.  Keys are split into buckets of consecutive user positions, so that the hash tables that count
them stay small enough for the CPU's caches, and a bucket's pending keys are counted into its running
totals once they pass its share of a budget (PENDING_KEYS): beyond that, memory follows the distinct
(user, compound) pairs, not the length of the file.  At the end each bucket gives its users' rows on
its own, in user order, so that the buckets only need to be put one after the other.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

LIST_JOINER = ";"
MAX_SHIFTS = 8  # lists longer than this are deduplicated with a hash instead of shifted compares
# user positions per bucket: 25 buckets at 100k users, so that both cores share them; fewer beyond
# 524,287 compounds, so that a bucket's keys fit in 32 bits
BUCKET_USERS = 1 << 12
# Keys wait in their bucket until there are more of them than twice the bucket's counted pairs and
# than the bucket's share of PENDING_KEYS (2^27 keys, 512 MiB as int32, across all buckets); then they
# are counted.  Counting sooner would cost time and, while most pairs are new, memory too: a counted
# pair takes 12 bytes, a pending key 4.
PENDING_KEYS = 1 << 27

FEATURES_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("user_name", pa.string(), nullable=False),
        pa.field("total_experiments", pa.int64(), nullable=False),
        pa.field("most_common_compounds", pa.string()),
        pa.field("most_common_compound_ids", pa.list_(pa.int64())),
        pa.field("average_experiments", pa.float64(), nullable=False),
    ]
)


class Bucket:
    """The keys of one range of user positions: counted (key, n) so far, and keys not counted yet."""

    def __init__(self, key_type: pa.DataType, compact_at: int) -> None:
        self.key_type = key_type
        self.compact_at = compact_at
        self.keys = pa.array([], key_type)
        self.counts = pa.array([], pa.int64())
        self.pending: list[pa.Array] = []
        self.pending_rows = 0
        self.taken = False

    def add(self, keys: pa.Array) -> None:
        self.pending.append(pa.concat_arrays([keys]))  # a copy: the batch's buffer is not kept alive
        self.pending_rows += len(keys)
        if self.pending_rows >= max(self.compact_at, 2 * len(self.keys)):
            self.compact()

    def compact(self) -> None:
        """Count the pending keys into the running totals."""
        if not self.pending:
            return
        pending, self.pending, self.pending_rows = self.pending, [], 0
        counted = pa.table({"k": pa.chunked_array(pending, self.key_type)}).group_by(
            "k", use_threads=False).aggregate([("k", "count")])
        del pending  # freed before the merge below
        if len(self.keys):
            both = pa.concat_tables([
                pa.table({"k": self.keys, "n": self.counts}),
                counted.rename_columns(["k", "n"]),
            ])
            counted = both.group_by("k", use_threads=False).aggregate([("n", "sum")])
        self.keys = counted.column(0).combine_chunks()
        self.counts = counted.column(1).combine_chunks()

    def take(self) -> tuple[pa.Array, pa.Array]:
        """Every key with its count; the bucket lets go of them (its memory is freed with the caller's)."""
        if self.taken:
            raise RuntimeError("these counts have been used already")
        self.compact()
        keys, counts = self.keys, self.counts
        self.keys, self.counts, self.taken = pa.array([], self.key_type), pa.array([], pa.int64()), True
        return keys, counts


@dataclasses.dataclass(frozen=True)
class Counts:
    """The aggregates the features are made from."""

    experiments: int
    user_ids: pa.Array  # sorted: the user at position p is user_ids[p]
    buckets: tuple[Bucket, ...]  # bucket b holds positions b * bucket_users ...
    bucket_users: int
    width: int  # compound index ``width`` counts the experiment itself

    @property
    def stride(self) -> int:
        """A bucket's key is (position - first position) * stride + compound index."""
        return self.width + 1


class ExperimentCounts:
    """Running counts over batches of accepted experiments (a sink for the extract step).

    ``user_ids`` are the accepted users, ``compound_ids`` the accepted compounds, sorted.
    A compound listed twice in one experiment counts once for that experiment.  The counting runs
    on a thread of its own, fed through a short queue, so that it uses the second core while the
    caller reads and checks the next batch.  ``close()`` stops it without a result, dropping what is
    still queued.
    """

    def __init__(self, user_ids: pa.Array, compound_ids: pa.Array, *, bucket_users: int = BUCKET_USERS,
                 compact_at: int | None = None) -> None:
        self.user_ids = user_ids.take(pc.array_sort_indices(user_ids))
        self.compound_ids = compound_ids
        self.width = len(compound_ids)
        self.stride = self.width + 1
        self._user_offset = _offset_if_range(self.user_ids)
        self._compound_offset = _offset_if_range(compound_ids)
        self.bucket_users = max(1, min(bucket_users, (2**31 - 1) // self.stride))
        self._key_type = pa.int32() if self.bucket_users * self.stride <= 2**31 - 1 else pa.int64()
        self._bucket_count = -(-len(self.user_ids) // self.bucket_users)
        self._compact_at = compact_at or max(1, PENDING_KEYS // max(self._bucket_count, 1))
        self.reset()

    def reset(self) -> None:
        if hasattr(self, "_worker"):
            self.close()
        self.experiments = 0
        self._buckets = tuple(Bucket(self._key_type, self._compact_at) for _ in range(self._bucket_count))
        self._worker = _Worker(self._partition)

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.experiments += batch.num_rows
        self._worker.put((batch.column("user_id"), batch.column("experiment_compound_ids")))

    def close(self) -> None:
        """Stop the counting thread without a result (a run that ends early must call this)."""
        self._worker.close()

    def result(self) -> Counts:
        self._worker.finish()
        return Counts(self.experiments, self.user_ids, self._buckets, self.bucket_users, self.width)

    def _partition(self, item: tuple[pa.Array, pa.ListArray]) -> None:
        """One batch's keys, each into the bucket of its user (on the counting thread)."""
        users, lists = item
        positions = _rank(users, self.user_ids, self._user_offset)
        parents = pc.list_parent_indices(lists)
        compounds = _rank(pc.list_flatten(lists), self.compound_ids, self._compound_offset)
        firsts = pc.invert(_repeated_in_list(parents, compounds, lists))
        base = pc.multiply(positions, self.stride)
        keys = pa.concat_arrays([
            pc.add(base.take(parents.filter(firsts)), compounds.filter(firsts)),
            pc.add(base, self.width),
        ])
        span = self.bucket_users * self.stride
        bucket = pc.divide(keys, span)  # integer division: keys are non-negative
        order = pc.array_sort_indices(bucket)
        bucket = bucket.take(order)
        local = pc.subtract(keys.take(order), pc.multiply(bucket, span)).cast(self._key_type)
        runs = pc.run_end_encode(bucket)
        start = 0
        for end, index in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
            self._buckets[index].add(local.slice(start, end - start))
            start = end


class CountingFailed(Exception):
    """The counting thread failed (a bug, or memory): not a problem of the input file."""


class _Worker:
    """Calls ``work`` on each item put, in order, on a thread of its own."""

    _DONE = object()

    def __init__(self, work: Callable[[Any], None]) -> None:
        self._work = work
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._stopped = False
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="etl-counts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._DONE:
            if self._error is None and not self._cancelled:
                try:
                    self._work(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller of put() or finish()
                    self._error = exc

    def put(self, item: Any) -> None:
        if self._stopped:
            raise RuntimeError("the counting thread has stopped: nothing more can be added")
        self._raise_error()
        self._queue.put(item)

    def finish(self) -> None:
        """Wait until every item put has been worked on."""
        self._stop()
        self._raise_error()

    def close(self) -> None:
        """Stop without working on the items still queued."""
        self._cancelled = True
        self._stop()

    def _stop(self) -> None:
        self._stopped = True
        if self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()

    def _raise_error(self) -> None:
        # its own class: an ArrowInvalid from here must not pass for a CSV problem (that re-reads the file)
        if self._error is not None:
            raise CountingFailed(f"the counting thread failed: {type(self._error).__name__}: {self._error}") \
                from self._error


def _offset_if_range(sorted_ids: pa.Array) -> int | None:
    """The first id when the sorted ids fill a range (rank = id - first), else None."""
    if len(sorted_ids) and sorted_ids[-1].as_py() - sorted_ids[0].as_py() + 1 == len(sorted_ids):
        return int(sorted_ids[0].as_py())
    return None


def _rank(ids: pa.Array, sorted_ids: pa.Array, offset: int | None) -> pa.Array:
    """Each id's position among ``sorted_ids`` (every id is one of them)."""
    if offset is not None:
        return pc.subtract(ids, offset)
    return pc.index_in(ids, value_set=sorted_ids).cast(pa.int64())


def _repeated_in_list(parents: pa.Array, compounds: pa.Array, lists: pa.Array) -> pa.Array:
    """True for each list item whose compound already appeared earlier in the same list."""
    n = len(compounds)
    longest = pc.max(pc.list_value_length(lists)).as_py() or 0
    if n == 0 or longest <= 1:
        return pa.array([False] * n, pa.bool_())
    if longest <= MAX_SHIFTS:
        repeated = pa.array([False] * n, pa.bool_())
        for shift in range(1, longest):
            same = pc.and_(pc.equal(parents[shift:], parents[:-shift]),
                           pc.equal(compounds[shift:], compounds[:-shift]))
            repeated = pc.or_(repeated, pa.concat_arrays([pa.array([False] * shift, pa.bool_()), same]))
        return repeated
    # Long lists: an item is a repeat unless it is the first of its (row, compound) pair.
    position = pa.array(range(n), pa.int64())
    table = pa.table({"row": parents, "compound": compounds, "position": position})
    first = table.group_by(["row", "compound"], use_threads=False).aggregate([("position", "min")])
    return pc.invert(pc.is_in(position, value_set=first["position_min"]))


@dataclasses.dataclass(frozen=True)
class _Favourites:
    """One bucket's users, in position order: experiments, and the compounds tied for the top."""

    totals: pa.Array  # int64 per user
    tied_per_user: pa.Array  # int64 per user: how many compounds tie (0: no experiment)
    tied: pa.Array  # compound indices, user after user, ascending within a user


def _favourites(bucket: Bucket, users: int, stride: int, width: int) -> _Favourites:
    keys, counts = bucket.take()
    user = pc.divide(keys, stride)
    compound = pc.subtract(keys, pc.multiply(user, stride))
    experiment = pc.equal(compound, width)
    totals = pc.fill_null(pc.scatter(counts.filter(experiment), user.filter(experiment), max_index=users - 1), 0)

    pair = pc.invert(experiment)
    keys, user, counts = keys.filter(pair), user.filter(pair), counts.filter(pair)
    best = pa.table({"user": user, "n": counts}).group_by("user", use_threads=False).aggregate([("n", "max")])
    top = pc.scatter(best["n_max"].combine_chunks(), best["user"].combine_chunks(), max_index=users - 1)
    tied = keys.filter(pc.equal(counts, top.take(user)))
    tied = tied.take(pc.array_sort_indices(tied))  # by user, then compound index
    tied_user = pc.divide(tied, stride)
    runs = pc.run_end_encode(tied_user)
    ends = pa.concat_arrays([pa.array([0], pa.int64()), runs.run_ends.cast(pa.int64())])
    lengths = pc.pairwise_diff(ends)[1:]
    per_user = pc.fill_null(pc.scatter(lengths, runs.values, max_index=users - 1), 0)
    return _Favourites(totals.cast(pa.int64()), per_user,
                       pc.subtract(tied, pc.multiply(tied_user, stride)).cast(pa.int64()))


def feature_batches(users: pa.Table, compounds: pa.Table, counts: Counts) -> Generator[pa.RecordBatch, None, None]:
    """One row per user of ``users`` (the users counted), by user id: totals, the tied most common
    compounds, the average; one batch per bucket, in order.  ``compounds`` must be sorted by
    compound_id (the order ties are listed in).

    The buckets are worked out on a thread per core, ahead of the caller, so that a caller that
    sends each batch on (the COPY) overlaps with them.  This uses ``counts`` up: each bucket's
    memory is freed as soon as its users are done."""
    if users.num_rows != len(counts.user_ids):
        raise ValueError(f"{users.num_rows} users, but {len(counts.user_ids)} were counted")
    ids = users["user_id"].combine_chunks()
    if len(ids) > 1 and not pc.all(pc.less(ids[:-1], ids[1:])).as_py():
        users = users.sort_by("user_id")
    names = compounds["compound_name"].combine_chunks()
    compound_ids = compounds["compound_id"].combine_chunks()
    average = pa.scalar(counts.experiments / users.num_rows if users.num_rows else 0.0, pa.float64())

    def one(b: int) -> _Favourites:
        return _favourites(counts.buckets[b], _bucket_size(counts, b), counts.stride, counts.width)

    pool = ThreadPoolExecutor(max(1, min(len(counts.buckets), os.cpu_count() or 1)),
                              thread_name_prefix="etl-features")
    try:
        futures = [pool.submit(one, b) for b in range(len(counts.buckets))]
        for b, future in enumerate(futures):
            mine = users.slice(b * counts.bucket_users, _bucket_size(counts, b))
            yield _feature_batch(mine, future.result(), names, compound_ids, average)
    finally:  # also when the caller stops early: buckets not started yet are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def _bucket_size(counts: Counts, b: int) -> int:
    return min(counts.bucket_users, len(counts.user_ids) - b * counts.bucket_users)


def _feature_batch(users: pa.Table, favourites: _Favourites, names: pa.Array, compound_ids: pa.Array,
                   average: pa.Scalar) -> pa.RecordBatch:
    per_user = favourites.tied_per_user
    offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(per_user)]).cast(pa.int32())
    none = pc.equal(per_user, 0)
    return pa.RecordBatch.from_arrays([
        users["user_id"].combine_chunks(),
        users["name"].combine_chunks(),
        favourites.totals,
        pc.binary_join(pa.ListArray.from_arrays(offsets, names.take(favourites.tied), mask=none), LIST_JOINER),
        pa.ListArray.from_arrays(offsets, compound_ids.take(favourites.tied), mask=none),
        pa.repeat(average, users.num_rows),
    ], schema=FEATURES_SCHEMA)


def features(users: pa.Table, compounds: pa.Table, counts: Counts) -> pa.Table:
    """``feature_batches`` as one table."""
    return pa.Table.from_batches(list(feature_batches(users, compounds, counts)), schema=FEATURES_SCHEMA)


def compute_features(users: pa.Table, compounds: pa.Table, experiments: pa.Table) -> pa.Table:
    """All of it at once, for tables already in memory (tests, small inputs)."""
    compounds = compounds.sort_by("compound_id")
    counter = ExperimentCounts(users["user_id"].combine_chunks(), compounds["compound_id"].combine_chunks())
    try:
        for batch in experiments.to_batches():
            counter.add(batch)
        return features(users, compounds, counter.result())
    finally:
        counter.close()
