"""The counting engine: any batching and any bucket size give the oracle's answer, running counts stay
within their budget, and the threads live inside the counter's with block and the generator only."""

from __future__ import annotations

import threading
import time
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_core.features import engine as counting
from etl_core.features import kernels as transform
from etl_core.features.engine import ExperimentCounter
from tests.features import compute_features, feature_table
from tests.test_transform import as_rows, compounds_table, data, experiments_table, oracle, users_table

pytestmark = pytest.mark.unit


def threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def batch_of(rows: list[tuple[int, list[int]]]) -> pa.RecordBatch:
    return experiments_table(rows).to_batches()[0]


@settings(max_examples=150, deadline=None)
@given(data(), st.integers(1, 16), st.integers(1, 5), st.integers(1, 10), st.integers(1, 40), st.booleans(),
       st.sampled_from([0, 64]), st.sampled_from([2, 3, counting.COALESCE_SLICES]))
def test_features_match_the_oracle_for_any_data_and_batching(
        dataset: tuple[list[int], list[int], list[tuple[int, list[int]]]], batch: int, bucket_users: int,
        pending_keys: int, stage_at: int, threaded: bool, inline_keys_per_user: int, coalesce: int) -> None:
    # small buckets, a small stage, early counting and slices joined every 2 or 3, so that examples span
    # buckets, stages, joins and merges of running totals; the features on threads (0) or on the caller's
    # thread (64: these examples have fewer keys per user)
    users, compounds, experiments = dataset
    compounds_t = compounds_table(compounds).sort_by("compound_id")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(counting, "COALESCE_SLICES", coalesce)
        counter = ExperimentCounter(pa.array(users, pa.int64()), compounds_t["compound_id"].combine_chunks(),
                                    bucket_users=bucket_users, pending_keys=pending_keys, stage_at=stage_at,
                                    threaded=threaded)
        with counter:
            for part in experiments_table(experiments).to_batches(max_chunksize=batch):
                counter.add(part)
            counts = counter.result()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(counting, "INLINE_KEYS_PER_USER", inline_keys_per_user)
        out = feature_table(users_table(users), compounds_t, counts)
    assert out.to_pylist() == oracle(users, compounds, experiments)


@pytest.mark.parametrize(("experiments_per_user", "on_threads"), [(1, False), (40, True)])
def test_the_features_get_threads_only_where_users_have_many_keys(experiments_per_user: int,
                                                                    on_threads: bool) -> None:
    """Two keys per experiment of one compound: 2 keys per user are worked out between the caller's
    chunks, 80 (more than INLINE_KEYS_PER_USER) on a thread per core."""
    users = list(range(1, 41))
    with ExperimentCounter(pa.array(users, pa.int64()), pa.array([1, 2], pa.int64()), bucket_users=2) as counter:
        counter.add(batch_of([(u, [1]) for u in users for _ in range(experiments_per_user)]))
        counts = counter.result()
    assert counts.keys == 2 * experiments_per_user * len(users)
    batches = counting.feature_batches(users_table(users), compounds_table([1, 2]), counts)
    assert next(batches).to_pylist()[0]["total_experiments"] == experiments_per_user
    assert bool(threads("etl-features")) == on_threads
    assert sum(batch.num_rows for batch in batches) == len(users) - 2
    assert threads("etl-features") == []


def test_reset_forgets_what_was_added() -> None:
    with ExperimentCounter(pa.array([1], pa.int64()), pa.array([1, 2], pa.int64())) as counter:
        counter.add(batch_of([(1, [1])]))
        counter.reset()
        counter.add(batch_of([(1, [2])]))
        counts = counter.result()
    out = feature_table(users_table([1]), compounds_table([1, 2]), counts)
    assert as_rows(out)[0]["most_common_compound_ids"] == [2]
    assert as_rows(out)[0]["total_experiments"] == 1


def test_running_counts_hold_the_distinct_pairs_not_the_whole_file() -> None:
    # 4 users x 3 compounds: at most 12 pairs and 4 experiment totals, whatever the file's length
    rows = [(u, [c, (c % 3) + 1]) for u in (1, 2, 3, 4) for c in (1, 2, 3)]
    with ExperimentCounter(pa.array([1, 2, 3, 4], pa.int64()), pa.array([1, 2, 3], pa.int64()),
                           bucket_users=2, pending_keys=50, stage_at=7) as counter:
        for batch in experiments_table(rows * 500).to_batches(max_chunksize=7):
            counter.add(batch)
        counts = counter.result()
    assert counts.experiments == 6000
    for bucket in counts.buckets:  # 2 users each: 6 pairs and 2 totals at most
        assert bucket.pairs <= 8
        assert bucket.pending_rows < 50
    out = feature_table(users_table([1, 2, 3, 4]), compounds_table([1, 2, 3]), counts)
    assert as_rows(out)[0]["total_experiments"] == 1500
    assert as_rows(out)[0]["most_common_compound_ids"] == [1, 2, 3]


def test_features_use_the_counts_up() -> None:
    with ExperimentCounter(pa.array([1], pa.int64()), pa.array([1], pa.int64())) as counter:
        counter.add(batch_of([(1, [1])]))
        counts = counter.result()
    feature_table(users_table([1]), compounds_table([1]), counts)
    with pytest.raises(RuntimeError, match="used already"):  # a second call would see empty buckets
        feature_table(users_table([1]), compounds_table([1]), counts)


def test_a_failure_of_the_counting_thread_is_its_own_error_and_ends_the_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # an ArrowInvalid from the counting thread must not look like a CSV problem to the extract step
    def broken(self: ExperimentCounter, item: Any) -> None:
        raise pa.ArrowInvalid("a bug in counting")

    monkeypatch.setattr(ExperimentCounter, "_partition", broken)
    with ExperimentCounter(pa.array([1], pa.int64()), pa.array([1], pa.int64())) as counter:
        counter.add(batch_of([(1, [1])]))
        with pytest.raises(counting.CountingFailed, match="ArrowInvalid: a bug in counting"):
            counter.result()
        with pytest.raises(RuntimeError, match="has stopped"):  # not a put onto a queue nobody reads
            counter.add(batch_of([(1, [1])]))


def test_unthreaded_counting_starts_no_thread_and_fails_with_its_own_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with ExperimentCounter(pa.array([1, 2], pa.int64()), pa.array([1, 2], pa.int64()), threaded=False) as counter:
        counter.add(batch_of([(1, [1, 2]), (2, [2])]))
        assert threads("etl-counts") == []
        counts = counter.result()
    out = feature_table(users_table([1, 2]), compounds_table([1, 2]), counts)  # one bucket: no pool either
    assert threads("etl-features") == []
    assert [r["most_common_compound_ids"] for r in as_rows(out)] == [[1, 2], [2]]

    def broken(self: ExperimentCounter, item: Any) -> None:
        raise pa.ArrowInvalid("a bug in counting")

    monkeypatch.setattr(ExperimentCounter, "_partition", broken)
    with ExperimentCounter(pa.array([1], pa.int64()), pa.array([1], pa.int64()), threaded=False) as counter:
        with pytest.raises(counting.CountingFailed, match="ArrowInvalid: a bug in counting"):
            counter.add(batch_of([(1, [1])]))
        with pytest.raises(RuntimeError, match="has stopped"):
            counter.add(batch_of([(1, [1])]))


def test_pending_keys_are_counted_once_all_buckets_hold_more_than_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 buckets, a budget of 16 pending keys: past it, buckets are counted, most pending first, until 8
    # are left, except those holding fewer pending keys than counted pairs (at most 4: 3 pairs and the
    # total), so pending keys stay below 8 * 4, never the file; the stage goes to the buckets at 8 keys
    monkeypatch.setattr(counting, "PENDING_KEYS", 16)
    monkeypatch.setattr(counting, "STAGE_KEYS", 8)
    users = list(range(1, 9))
    rows = [(u, [c]) for u in users for c in (1, 2, 3)]
    with ExperimentCounter(pa.array(users, pa.int64()), pa.array([1, 2, 3], pa.int64()), bucket_users=1) as counter:
        for batch in experiments_table(rows * 200).to_batches(max_chunksize=5):
            counter.add(batch)
        counts = counter.result()
    assert sum(bucket.pending_rows for bucket in counts.buckets) < 8 * 4
    assert all(bucket.pairs <= 4 for bucket in counts.buckets)
    out = feature_table(users_table(users), compounds_table([1, 2, 3]), counts)
    assert [row["total_experiments"] for row in as_rows(out)] == [600] * 8


def test_within_the_budget_nothing_is_counted_before_the_end_and_past_it_the_busiest_bucket_first() -> None:
    users = list(range(1, 5))
    busy = [(1, [1, 2])] * 30 + [(u, [1]) for u in users]  # user 1's bucket: 92 keys, the others 2
    for budget, counted in ((1000, []), (60, [0])):
        with ExperimentCounter(pa.array(users, pa.int64()), pa.array([1, 2], pa.int64()), bucket_users=1,
                               pending_keys=budget, stage_at=1000) as counter:
            counter.add(experiments_table(busy).to_batches()[0])
            counts = counter.result()
        assert [b for b, bucket in enumerate(counts.buckets) if bucket.pairs] == counted
        assert sum(bucket.pending_rows for bucket in counts.buckets) == 98 - 92 * len(counted)


def test_the_engine_gives_what_the_pure_core_gives() -> None:
    users, compounds = users_table([5, 3, 9, 1]), compounds_table([20, 10, 30])
    experiments = experiments_table([(3, [10, 20, 10]), (9, [30]), (3, [20]), (1, [30, 10]), (9, [30, 20])])
    compound_ids = compounds.sort_by("compound_id")["compound_id"].combine_chunks()
    with ExperimentCounter(users["user_id"].combine_chunks(), compound_ids, bucket_users=3) as counter:
        for batch in experiments.to_batches(max_chunksize=2):
            counter.add(batch)
        counts = counter.result()
    out = feature_table(users, compounds.sort_by("compound_id"), counts)
    assert out.to_pylist() == compute_features(users, compounds, experiments).to_pylist()


# --- the threads' lifetimes


def test_the_counting_thread_lives_inside_the_with_block_only() -> None:
    counter = ExperimentCounter(pa.array([1], pa.int64()), pa.array([1], pa.int64()))
    assert threads("etl-counts") == []  # made, not entered: no thread
    with pytest.raises(RuntimeError, match="inside its with block"):
        counter.add(batch_of([(1, [1])]))
    with counter:
        assert threads("etl-counts") == ["etl-counts"]
        counter.add(batch_of([(1, [1])]))
        counter.reset()  # the thread that was counting stops; a fresh one starts
        assert threads("etl-counts") == ["etl-counts"]
    assert threads("etl-counts") == []  # left without a result
    for late in (lambda: counter.add(batch_of([(1, [1])])), counter.reset, counter.result):
        with pytest.raises(RuntimeError, match="inside its with block"):
            late()
    with pytest.raises(RuntimeError, match="one with block"), counter:
        pass


def test_leaving_the_block_by_an_error_stops_the_thread_and_drops_its_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    going = threading.Event()
    seen: list[int] = []

    def slow(self: ExperimentCounter, item: Any) -> None:
        going.wait(5)
        seen.append(len(item[0]))

    monkeypatch.setattr(ExperimentCounter, "_partition", slow)
    release = threading.Timer(0.5, going.set)  # once the block has been left
    with pytest.raises(KeyError), ExperimentCounter(pa.array([1], pa.int64()), pa.array([1], pa.int64())) as counter:
        for _ in range(3):  # one being counted, two queued
            counter.add(batch_of([(1, [1])]))
        release.start()
        raise KeyError("the extract step failed")
    assert threads("etl-counts") == []
    assert seen == [1]  # the two queued batches were dropped


def test_closing_the_feature_batches_early_stops_their_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    real = transform.favourites

    def slow(*args: Any) -> transform.Favourites:
        time.sleep(0.05)
        return real(*args)

    monkeypatch.setattr(transform, "favourites", slow)
    monkeypatch.setattr(counting, "INLINE_KEYS_PER_USER", 0)  # threads, whatever the keys per user
    users = list(range(1, 41))
    with ExperimentCounter(pa.array(users, pa.int64()), pa.array([1, 2], pa.int64()), bucket_users=2) as counter:
        counter.add(batch_of([(u, [1 + u % 2]) for u in users]))
        counts = counter.result()
    batches = counting.feature_batches(users_table(users), compounds_table([1, 2]), counts)
    assert next(batches).to_pylist()[0]["most_common_compound_ids"] == [2]
    assert threads("etl-features")
    batches.close()
    assert threads("etl-features") == []
    assert sum(bucket.taken for bucket in counts.buckets) < len(counts.buckets) // 2  # the queued ones never ran


@pytest.mark.parametrize("spread", [1, 3, 1_000_003], ids=["a range", "with gaps", "sparse"])
def test_the_ids_are_indexed_once_per_file_not_once_per_batch(monkeypatch: pytest.MonkeyPatch, spread: int) -> None:
    """A batch's ranks cost what the batch holds: the index of the users (and of the compounds) is built
    when the counter is, never again per batch (a hash set of every user per batch made L with sparse
    ids take 23 s to extract instead of 2.5 s)."""
    built: list[str] = []
    real = transform.IdIndex

    class Counted(real):  # type: ignore[misc,valid-type]
        def __init__(self, ids: pa.Array) -> None:
            super().__init__(ids)
            built.append(self.how)

    monkeypatch.setattr(transform, "IdIndex", Counted)
    users = [u * spread for u in range(1, 41)]
    compounds = compounds_table([1, 2, 3]).sort_by("compound_id")
    rows = [(users[i % 40], [i % 3 + 1]) for i in range(400)]
    with ExperimentCounter(pa.array(users, pa.int64()), compounds["compound_id"].combine_chunks(),
                           bucket_users=8) as counter:
        for part in experiments_table(rows).to_batches(max_chunksize=7):
            counter.add(part)
        counts = counter.result()
    assert built == [{1: "range", 3: "table"}.get(spread, "buckets"), "range"]
    out = feature_table(users_table(users), compounds, counts)
    assert out.to_pylist() == oracle(users, [1, 2, 3], rows)
