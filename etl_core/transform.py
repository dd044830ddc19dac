"""The features, from Arrow tables to an Arrow table, with ``pyarrow.compute`` only.

Pure: no files, no database, no environment, no logging.  Experiments arrive batch by batch
(``ExperimentCounts`` is a sink of the extract step) and only running counts are kept: experiments
per user, and experiments per (user, compound) under one int64 key ``user * width + compound``.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc

LIST_JOINER = ";"
MAX_SHIFTS = 8  # lists longer than this are deduplicated with a hash instead of shifted compares

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


@dataclasses.dataclass(frozen=True)
class Counts:
    """The aggregates the features are made from."""

    experiments: int
    per_user: pa.Table  # user_id, experiments
    per_pair: pa.Table  # key (user position * width + compound index), user_id, n
    width: int  # compound index = key % width, an index into the sorted compound ids


class ExperimentCounts:
    """Running counts over batches of accepted experiments (a sink for the extract step).

    ``user_ids`` are the accepted users, ``compound_ids`` the accepted compounds, sorted.
    A compound listed twice in one experiment counts once for that experiment.
    """

    def __init__(self, user_ids: pa.Array, compound_ids: pa.Array) -> None:
        self.compound_ids = compound_ids
        self.width = max(len(compound_ids), 1)
        bounds = pc.min_max(compound_ids).as_py() if len(compound_ids) else {"min": 0, "max": -1}
        self._compound_offset = bounds["min"] if bounds["max"] - bounds["min"] + 1 == len(compound_ids) else None
        max_user = pc.max(user_ids).as_py() if len(user_ids) else 0
        # user * width + compound must fit in int64; else users are renumbered 0..n-1 first.
        self._dense_users = user_ids if max_user >= (2**63 - 1) // self.width - 1 else None
        self.reset()

    def reset(self) -> None:
        self.experiments = 0
        if hasattr(self, "_pairs"):
            self.close()
        self._pairs = _RunningCounts()
        self._users = _RunningCounts()

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        users = batch.column("user_id")
        lists = batch.column("experiment_compound_ids")
        self.experiments += batch.num_rows
        self._users.add(users)

        parents = pc.list_parent_indices(lists)
        compounds = self._compound_index(pc.list_flatten(lists))
        if self._dense_users is not None:
            users = pc.index_in(users, value_set=self._dense_users)
        keys = pc.add(pc.multiply(users.take(parents), self.width), compounds)
        self._pairs.add(keys.filter(pc.invert(_repeated_in_list(parents, compounds, lists, self.width))))

    def close(self) -> None:
        """Stop the counting threads without a result (a run that ends early must call this)."""
        self._pairs.close()
        self._users.close()

    def _compound_index(self, ids: pa.Array) -> pa.Array:
        if self._compound_offset is not None:
            return pc.subtract(ids, self._compound_offset)
        return pc.index_in(ids, value_set=self.compound_ids)

    def result(self) -> Counts:
        users_k, users_n = self._users.result()
        pairs_k, pairs_n = self._pairs.result()
        user = pc.divide(pairs_k, self.width)  # integer division: keys are non-negative
        if self._dense_users is not None:
            user = self._dense_users.take(user)
        return Counts(
            experiments=self.experiments,
            per_user=pa.table({"user_id": users_k, "experiments": users_n}),
            per_pair=pa.table({"key": pairs_k, "user_id": user, "n": pairs_n}),
            width=self.width,
        )


class _RunningCounts:
    """How often each int64 key occurred, over arrays added one by one.

    One streaming hash aggregation (Acero) runs on a thread of its own and takes the arrays from a
    short queue, so it counts on the second core while the caller reads and checks the next batch;
    memory holds the distinct keys, not the arrays.  ``close()`` stops it without a result.
    """

    _SCHEMA = pa.schema([("k", pa.int64())])

    def __init__(self) -> None:
        self._queue: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=2)
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._count, name="etl-counts", daemon=True)
        self._thread.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while (batch := self._queue.get()) is not None:
            yield batch

    def _count(self) -> None:
        reader = pa.RecordBatchReader.from_batches(self._SCHEMA, self._batches())
        plan = acero.Declaration.from_sequence([
            acero.Declaration("record_batch_reader_source", acero.RecordBatchReaderSourceNodeOptions(reader)),
            acero.Declaration("aggregate", acero.AggregateNodeOptions([("k", "hash_count", None, "n")], keys=["k"])),
        ])
        try:
            self._outcome["table"] = plan.to_table(use_threads=False)
        except Exception as exc:  # noqa: BLE001 - handed to the caller of result()
            self._outcome["error"] = exc
            while self._queue.get() is not None:  # drain, so that no add() blocks forever
                pass

    def add(self, keys: pa.Array) -> None:
        if len(keys):
            self._queue.put(pa.record_batch([keys], schema=self._SCHEMA))

    def result(self) -> tuple[pa.Array, pa.Array]:
        self.close()
        if "error" in self._outcome:
            raise self._outcome["error"]
        table = self._outcome["table"]
        return table["k"].combine_chunks(), table["n"].combine_chunks()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _repeated_in_list(parents: pa.Array, compounds: pa.Array, lists: pa.Array, width: int) -> pa.Array:
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
    pair = pc.add(pc.multiply(parents.cast(pa.int64()), width), compounds)
    position = pa.array(range(n), pa.int64())
    first = pa.table({"pair": pair, "position": position}).group_by("pair", use_threads=False).aggregate(
        [("position", "min")])
    return pc.invert(pc.is_in(position, value_set=first["position_min"]))


def features(users: pa.Table, compounds: pa.Table, counts: Counts) -> pa.Table:
    """One row per user of ``users``: totals, the tied most common compounds, the average.

    ``compounds`` must be sorted by compound_id (the order ties are listed in).
    """
    pairs = counts.per_pair
    best = pairs.group_by("user_id").aggregate([("n", "max")])
    top = _per_row(best["user_id"].combine_chunks(), best["n_max"].combine_chunks(),
                   pairs["user_id"].combine_chunks())
    tied = pairs.filter(pc.equal(pairs["n"], top))
    # one int64 sort: by key is by user, then compound_id (each user's rows come together)
    key = tied["key"].combine_chunks()
    order = pc.array_sort_indices(key)
    key = key.take(order)
    runs = pc.run_end_encode(tied["user_id"].combine_chunks().take(order))
    offsets = pa.concat_arrays([pa.array([0], pa.int32()), runs.run_ends.cast(pa.int32())])
    index = pc.subtract(key, pc.multiply(pc.divide(key, counts.width), counts.width))
    names = pa.ListArray.from_arrays(offsets, compounds["compound_name"].take(index).combine_chunks())
    ids = pa.ListArray.from_arrays(offsets, compounds["compound_id"].take(index).combine_chunks())
    # hash joins carry no list columns: join the row number of each user's favourites instead
    favourites = pa.table({"user_id": runs.values, "favourite": pa.array(range(len(runs.values)), pa.int64())})

    out = pa.table({"user_id": users["user_id"], "user_name": users["name"]})
    out = out.join(counts.per_user, "user_id").join(favourites, "user_id")
    out = out.sort_by("user_id")
    favourite = out["favourite"].combine_chunks()
    average = counts.experiments / users.num_rows if users.num_rows else 0.0
    return pa.table({
        "user_id": out["user_id"],
        "user_name": out["user_name"],
        "total_experiments": pc.fill_null(out["experiments"], 0),
        "most_common_compounds": pc.binary_join(names, LIST_JOINER).take(favourite),
        "most_common_compound_ids": ids.take(favourite),
        "average_experiments": pa.repeat(pa.scalar(average, pa.float64()), out.num_rows),
    }, schema=FEATURES_SCHEMA)


def _per_row(keys: pa.Array, values: pa.Array, wanted: pa.Array) -> pa.Array:
    """values[i] where keys[i] == wanted[j], for each j (keys unique): through a dense array when the
    keys nearly fill their range, as user ids usually do, else through a hash lookup."""
    if len(keys) == 0:
        return pa.nulls(len(wanted), values.type)
    bounds = pc.min_max(keys).as_py()
    span = bounds["max"] - bounds["min"] + 1
    if span > 4 * len(keys):
        return values.take(pc.index_in(wanted, value_set=keys))
    dense = pc.scatter(values, pc.subtract(keys, bounds["min"]), max_index=span - 1)
    return dense.take(pc.subtract(wanted, bounds["min"]))


def compute_features(users: pa.Table, compounds: pa.Table, experiments: pa.Table) -> pa.Table:
    """All of it at once, for tables already in memory (tests, small inputs)."""
    compounds = compounds.sort_by("compound_id")
    counter = ExperimentCounts(users["user_id"].combine_chunks(), compounds["compound_id"].combine_chunks())
    for batch in experiments.to_batches():
        counter.add(batch)
    return features(users, compounds, counter.result())
