"""The counting engine: the kernels of ``transform`` run on threads, over buckets, within a memory budget.

``ExperimentCounter`` is the extract step's sink for the experiments.  It keeps only running counts,
made on a thread of its own (``etl-counts``) while the caller reads and checks the next batch; its
``with`` block is its lifetime, and leaving the block always stops the thread::

    with counting.ExperimentCounter(user_ids, compound_ids) as counter:
        extract.read_file(path, EXPERIMENTS, counter, refs=refs)
        counts = counter.result()
    for batch in counting.feature_batches(users, compounds, counts):
        ...

Each batch's keys (``transform.experiment_keys``) are split into buckets of consecutive user positions,
so that the tables that count them stay small enough for the CPU's caches.  Keys wait in their bucket
(4 bytes each) until all buckets together hold more than a budget (PENDING_KEYS); then the buckets
with the most are counted into their running totals (8 bytes a distinct (user, compound) pair): beyond
the budget, memory follows the distinct pairs, not the length of the file.  At the
end ``feature_batches`` works out each bucket's rows, on a thread per core (``etl-features``) ahead of
the caller where users have many keys, else on the caller's thread, and hands them on in user order,
one batch per bucket.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from etl_core import literals
from etl_core.features import kernels as transform

# user positions per bucket: 25 buckets at 100k users, so that both cores share them; fewer beyond
# 524,287 compounds, so that a bucket's keys fit in 32 bits
BUCKET_USERS = 1 << 12
# Keys wait in their buckets until all of them hold more than PENDING_KEYS (2^28 keys, 1 GiB as int32);
# then the buckets with the most pending keys are counted, largest first, until half the budget is left
# (a bucket with fewer pending keys than counted pairs is left: merging would cost more than it frees).
# Counting sooner would cost time and, while most pairs are new, memory too: a counted pair takes 8
# bytes (transform.pack_counts), a pending key 4.  So memory is bounded by 1 GiB of pending keys plus
# 12 bytes a distinct pair (8 counted, at most 4 pending), plus a fixed budget (bench/README.md, round
# six).  At 4L (130M keys) and 8L (260M) no bucket is counted before the end of the file.  A share of
# the budget per bucket (round three) had the busiest buckets of 8L counted mid-read, and merged by a
# hash aggregation at the end: 3.3x 4L's time for 2x the data.
PENDING_KEYS = 1 << 28
# With this many keys per user or fewer, feature_batches works each bucket out on the caller's thread,
# between the COPY's chunks: a bucket then takes about as long as the server takes to parse its rows,
# and threads beside the caller would only take the core the server needs (M, 40 keys per user: COPY
# 0.22-0.25 s against 0.25-0.27 s with two threads; L: the same 2.5 s either way).  With more, the
# features are the slower side and get a thread per core (4L, 160 keys per user: 5.5-6.3 s against
# 7.7-8.0 s on the caller's thread).
INLINE_KEYS_PER_USER = 64
# A count is packed with its key in 64 bits (transform.pack_counts): a bucket takes at most this many keys
MAX_BUCKET_KEYS = (1 << transform.COUNT_BITS) - 1
# Batches' keys wait in a stage of STAGE_KEYS keys and are then sorted into the buckets together: a 1 MiB
# block gives some 130k keys, 270 a bucket at 8L, and slices that small cost more in Python and allocator
# overhead than their keys took (at 8L, 928k slices pending: 2.36 GB peak RSS against 1.65 GB staged,
# bench/README.md, round six).  The stage is a fixed 2^18 keys (2 MiB of int64), not a share per
# bucket: a stage of 2M keys (4,096 a bucket at 8L) was sorted and taken apart out of the caches, and
# the counting thread's flushes cost 3.8-7.4x per key what they cost at 4L (py-spy, issue 25).
# A bucket's small slices are joined into one every COALESCE_SLICES, so that it holds a few large
# arrays however many batches come (each key is copied once more, at most).
# A file whose batches times buckets stays under STAGE_FROM_SLICES is not staged at all: at L (some 320
# batches of 245 buckets, 80k slices) staging cost the extract 0.3-0.5 s and saved nothing; 8L (1.3M
# slices) and past are staged.  Up to 32 buckets (M and below) the file is under it too.
STAGE_KEYS = 1 << 18
COALESCE_SLICES = 32
STAGE_FROM_SLICES = 500_000


class Bucket:
    """The keys of one range of user positions: counted (key, n) so far, packed (``transform.pack_counts``,
    8 bytes a pair), and keys not counted yet (4 or 8 bytes each)."""

    def __init__(self, key_type: pa.DataType) -> None:
        self.key_type = key_type
        self.packed = literals.empty(pa.int64())  # ascending, each key once
        self.pending: list[pa.Array] = []
        self.pending_rows = 0
        self._loose = 0  # the slices at the end of pending added since they were last joined
        self.rows = 0  # every key added: no count of this bucket can be larger
        self.taken = False

    @property
    def pairs(self) -> int:
        """The distinct keys counted so far."""
        return len(self.packed)

    def add(self, keys: pa.Array) -> None:
        if self.rows + len(keys) > MAX_BUCKET_KEYS:
            raise OverflowError(f"more than {MAX_BUCKET_KEYS:,} keys for one range of users: a count would "
                                f"not fit in {transform.COUNT_BITS} bits")
        self.pending.append(pa.concat_arrays([keys]))  # a copy: the batch's buffer is not kept alive
        self.pending_rows += len(keys)
        self.rows += len(keys)
        self._loose += 1
        if self._loose == COALESCE_SLICES:
            self.pending[-COALESCE_SLICES:] = [pa.concat_arrays(self.pending[-COALESCE_SLICES:])]
            self._loose = 0

    def compact(self) -> None:
        """Count the pending keys into the running totals."""
        if not self.pending:
            return
        pending, self.pending, self.pending_rows, self._loose = self.pending, [], 0, 0
        keys, counts = transform.count_keys(pa.chunked_array(pending, self.key_type))
        del pending  # freed before the merge below
        self.packed = transform.merge_counts(self.packed, transform.pack_counts(keys, counts))

    def take(self) -> tuple[pa.Array, pa.Array]:
        """Every key with its count, keys ascending; the bucket lets go of them (its memory is freed with
        the caller's)."""
        if self.taken:
            raise RuntimeError("these counts have been used already")
        self.taken = True
        pending, self.pending, self.pending_rows, self._loose = self.pending, [], 0, 0
        if not self.pairs:  # never counted before (L, 4L): the pending keys' counts as they come
            keys, counts = transform.count_keys(pa.chunked_array(pending, self.key_type))
            return keys, counts
        self.pending = pending
        self.compact()
        packed, self.packed = self.packed, literals.empty(pa.int64())
        return transform.unpack_counts(packed, self.key_type)


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

    def bucket_size(self, b: int) -> int:
        """How many users bucket ``b`` holds."""
        return min(self.bucket_users, len(self.user_ids) - b * self.bucket_users)

    @property
    def keys(self) -> int:
        """The keys the features are still to be worked out from: every bucket's pending keys and
        counted pairs."""
        return sum(bucket.pending_rows + bucket.pairs for bucket in self.buckets)


class CountingFailed(Exception):
    """The counting thread failed (a bug, or memory): not a problem of the input file."""


class ExperimentCounter:
    """Running counts over batches of accepted experiments (a sink for the extract step), made on a
    thread of its own inside the counter's ``with`` block.

    ``user_ids`` are the accepted users, ``compound_ids`` the accepted compounds (arrays in any order, or
    the ``IdIndex`` of each that the reader checks references with).  A compound
    listed twice in one experiment counts once for that experiment.  The counting thread starts when
    the block is entered and is fed through a short queue, so that it uses the second core while the
    caller reads and checks the next batch.  ``add``, ``reset`` and ``result`` work inside the block
    only; leaving it stops the thread, dropping what is still queued when there was no result.  With
    ``threaded=False`` (a file of one batch, where there is nothing to overlap) each batch is counted
    at once on the caller's thread, and no thread is started.  ``batches``, how many batches the file
    will give where the caller knows it, decides whether their keys are staged (STAGE_FROM_SLICES).
    """

    def __init__(self, user_ids: pa.Array | transform.IdIndex, compound_ids: pa.Array | transform.IdIndex, *,
                 bucket_users: int = BUCKET_USERS, pending_keys: int | None = None, stage_at: int | None = None,
                 threaded: bool = True, batches: int | None = None) -> None:
        # indexed once (or given indexed, as the reader's checks have them): a batch's ranks cost what it holds
        self._user_index = user_ids if isinstance(user_ids, transform.IdIndex) else transform.IdIndex(user_ids)
        self._compound_index = (compound_ids if isinstance(compound_ids, transform.IdIndex)
                                else transform.IdIndex(compound_ids))
        self.user_ids = self._user_index.sorted
        self.compound_ids = self._compound_index.sorted
        self.width = len(compound_ids)
        self.stride = self.width + 1
        self.bucket_users = max(1, min(bucket_users, (2**31 - 1) // self.stride))
        self._key_type = pa.int32() if self.bucket_users * self.stride <= 2**31 - 1 else pa.int64()
        self._bucket_count = -(-len(self.user_ids) // self.bucket_users)
        self._budget = pending_keys or PENDING_KEYS
        self._pending = 0  # pending keys in all buckets
        few_slices = batches is not None and batches * self._bucket_count < STAGE_FROM_SLICES
        self._stage_at = stage_at or (1 if few_slices else STAGE_KEYS)
        self._staged: list[pa.Array] = []
        self._staged_rows = 0
        self.experiments = 0
        self._buckets: tuple[Bucket, ...] = ()
        self._threaded = threaded
        self._worker: _Worker | _Inline | None = None
        self._entered = False
        self._exited = False

    def __enter__(self) -> ExperimentCounter:
        if self._entered:
            raise RuntimeError("a counter counts in one with block only")
        self._entered = True
        self._start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._exited = True
        if self._worker is not None:
            self._worker.close()

    def add(self, batch: pa.RecordBatch) -> None:
        worker = self._open()
        if batch.num_rows == 0:
            return
        self.experiments += batch.num_rows
        worker.put((batch.column("user_id"), batch.column("experiment_compound_ids")))

    def reset(self) -> None:
        """Forget every batch added (the extract step reads the file again)."""
        self._open().close()
        self._start()

    def result(self) -> Counts:
        """The counts, once the counting thread has counted every batch added."""
        worker = self._open()
        worker.finish()
        worker.last(self._flush)  # the stage's last keys, once the thread has stopped
        return Counts(self.experiments, self.user_ids, self._buckets, self.bucket_users, self.width)

    def _start(self) -> None:
        self.experiments = 0
        self._staged, self._staged_rows = [], 0
        self._buckets = tuple(Bucket(self._key_type) for _ in range(self._bucket_count))
        self._pending = 0
        self._worker = _Worker(self._partition) if self._threaded else _Inline(self._partition)

    def _open(self) -> _Worker | _Inline:
        if self._worker is None or self._exited:
            raise RuntimeError("a counter counts inside its with block only")
        return self._worker

    def _partition(self, item: tuple[pa.Array, pa.ListArray]) -> None:
        """One batch's keys onto the stage, and the stage into the buckets once full (on the counting
        thread)."""
        users, lists = item
        keys = transform.experiment_keys(users, lists, self._user_index, self._compound_index)
        self._staged.append(keys)
        self._staged_rows += len(keys)
        if self._staged_rows >= self._stage_at:
            self._flush()

    def _flush(self) -> None:
        """The staged keys, each into the bucket of its user."""
        if not self._staged:
            return
        staged, self._staged, self._staged_rows = self._staged, [], 0
        keys = pa.concat_arrays(staged) if len(staged) > 1 else staged[0]
        del staged
        span = literals.scalar(self.bucket_users * self.stride, pa.int64())
        bucket = pc.divide(keys, span)  # integer division: keys are non-negative
        local = pc.subtract(keys, pc.multiply(bucket, span)).cast(self._key_type)
        bucket = bucket.cast(pa.int32())  # narrower before the takes: a sixth less time than int64 for both
        order = pc.array_sort_indices(bucket)  # a counting sort while there are at most 4,096 buckets
        local, bucket = local.take(order), bucket.take(order)
        runs = pc.run_end_encode(bucket)
        start = 0
        for end, index in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
            self._buckets[index].add(local.slice(start, end - start))
            start = end
        self._pending += len(local)
        if self._pending > self._budget:
            self._relieve()

    def _relieve(self) -> None:
        """Count the buckets with the most pending keys until half the budget is left, skipping those
        with fewer pending keys than counted pairs."""
        for bucket in sorted(self._buckets, key=lambda b: b.pending_rows, reverse=True):
            if self._pending <= self._budget // 2:
                break
            if bucket.pending_rows and bucket.pending_rows >= bucket.pairs:
                self._pending -= bucket.pending_rows
                bucket.compact()


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

    def last(self, work: Callable[[], None]) -> None:
        """After ``finish``: one more piece of work, on the caller's thread, its failure reported as the
        thread's would be."""
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported as the thread's own failure
            self._error = exc
        self._raise_error()

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


class _Inline:
    """``_Worker``'s promises on the caller's thread: each item is worked on when it is put."""

    def __init__(self, work: Callable[[Any], None]) -> None:
        self._work = work
        self._stopped = False

    def put(self, item: Any) -> None:
        if self._stopped:
            raise RuntimeError("the counter has stopped: nothing more can be added")
        try:
            self._work(item)
        except Exception as exc:  # its own class, as on the thread: not a problem of the input file
            self._stopped = True
            raise CountingFailed(f"the counting failed: {type(exc).__name__}: {exc}") from exc

    def finish(self) -> None:
        self._stopped = True

    def close(self) -> None:
        self._stopped = True

    def last(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:
            raise CountingFailed(f"the counting failed: {type(exc).__name__}: {exc}") from exc


def feature_batches(users: pa.Table, compounds: pa.Table, counts: Counts) -> Generator[pa.RecordBatch, None, None]:
    """One row per user of ``users`` (the users counted), by user id: totals, the tied most common
    compounds, the average; one batch per bucket, in order.  ``compounds`` must be sorted by
    compound_id (the order ties are listed in).

    A caller that sends each batch on (the COPY) overlaps with the work on the next.  Where users
    have more than INLINE_KEYS_PER_USER keys, the buckets are worked out on a thread per core, ahead
    of the caller; else each when the caller asks for it.  This uses ``counts`` up: each bucket's
    memory is freed as soon as its users are done.  Closing the generator early drops the buckets
    not started yet and waits for the ones being worked out."""
    if users.num_rows != len(counts.user_ids):
        raise ValueError(f"{users.num_rows} users, but {len(counts.user_ids)} were counted")
    users = transform.by_user_id(users)
    names = compounds["compound_name"].combine_chunks()
    compound_ids = compounds["compound_id"].combine_chunks()
    average = transform.average(counts.experiments, users.num_rows)

    def one(b: int) -> transform.Favourites:
        keys, n = counts.buckets[b].take()
        return transform.favourites(keys, n, counts.bucket_size(b), counts.stride)

    threads = min(len(counts.buckets), os.cpu_count() or 1)
    if counts.keys <= INLINE_KEYS_PER_USER * len(counts.user_ids):
        threads = 1  # the caller's consumer (the server's COPY) is the slower: threads would only compete
    if threads <= 1:  # one bucket (or one core, or few keys per user): no thread to start
        for b in range(len(counts.buckets)):
            mine = users.slice(b * counts.bucket_users, counts.bucket_size(b))
            yield transform.feature_batch(mine, one(b), names, compound_ids, average)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="etl-features")
    try:
        futures = [pool.submit(one, b) for b in range(len(counts.buckets))]
        for b, future in enumerate(futures):
            mine = users.slice(b * counts.bucket_users, counts.bucket_size(b))
            yield transform.feature_batch(mine, future.result(), names, compound_ids, average)
    finally:  # also when the caller stops early: buckets not started yet are dropped
        pool.shutdown(wait=True, cancel_futures=True)
