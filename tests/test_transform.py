"""The pure core: each kernel on tiny arrays (ties, users without experiments, a compound listed twice,
ids that are not a dense range), the features of whole tables, and a property test against a
plain-Python oracle.  The engine that runs the kernels on threads is tested in test_counting.py."""

from __future__ import annotations

import ast
import random
from collections import Counter
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_core.features import kernels as transform
from tests.conftest import ROOT
from tests.features import compute_features

pytestmark = pytest.mark.unit


def users_table(ids: list[int], names: list[str] | None = None) -> pa.Table:
    return pa.table({"user_id": pa.array(ids, pa.int64()), "name": names or [f"user{i}" for i in ids]})


def compounds_table(ids: list[int], names: list[str] | None = None) -> pa.Table:
    return pa.table({"compound_id": pa.array(ids, pa.int64()), "compound_name": names or [f"C{i}" for i in ids]})


def experiments_table(rows: list[tuple[int, list[int]]]) -> pa.Table:
    return pa.table({
        "experiment_id": pa.array(range(1, len(rows) + 1), pa.int64()),
        "user_id": pa.array([u for u, _ in rows], pa.int64()),
        "experiment_compound_ids": pa.array([c for _, c in rows], pa.list_(pa.int64())),
    })


def as_rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


INT64 = pa.int64()


def ints(values: list[int], type: pa.DataType = INT64) -> pa.Array:
    return pa.array(values, type)


def lists(values: list[list[int]]) -> pa.ListArray:
    return pa.array(values, pa.list_(pa.int64()))


def pairs(keys: pa.Array, counts: pa.Array) -> list[tuple[int, int]]:
    """(key, count) in key order: the counting kernels give them in no particular order."""
    return sorted(zip(keys.to_pylist(), counts.to_pylist(), strict=True))


# --- the core is pure: nothing but pyarrow (and dataclasses) is imported


def test_the_core_imports_pyarrow_only() -> None:
    tree = ast.parse((ROOT / "etl_core" / "features" / "kernels.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # pyarrow._acero: the hash aggregations without pyarrow.acero's import of pyarrow.dataset (and pandas);
    # etl_core.literals: Arrow literals from bytes, and etl_core.tables: the tables' descriptions, pure as well
    assert imported == {"__future__", "dataclasses", "pyarrow", "pyarrow.compute", "pyarrow._acero", "etl_core",
                        "etl_core.literals", "etl_core.tables"}


# --- ranks


def test_dense_range_is_the_bounds_of_ids_that_fill_them_in_any_order() -> None:
    """One detection for the kernels' ranks (sorted ids: their ends) and the readers' key sets (any order)."""
    assert transform.dense_range(ints([6, 4, 5])) == (4, 6)
    assert transform.dense_range(ints([7, 4, 6])) is None
    assert transform.dense_range(ints([4, 5, 6]), ascending=True) == (4, 6)
    assert transform.dense_range(ints([4, 6, 7]), ascending=True) is None
    assert transform.dense_range(ints([])) is None and transform.dense_range(ints([]), ascending=True) is None


def ranks(ids: list[int], asked: list[int | None]) -> list[int | None]:
    """The oracle: each asked id's position among the sorted ids, None where it is not one of them."""
    where = {v: i for i, v in enumerate(sorted(ids))}
    return [None if a is None else where.get(a) for a in asked]


@pytest.mark.parametrize(("ids", "how"), [
    ([6, 4, 5], "range"),  # every id from the lowest to the highest: a subtraction
    ([10, 3, 4, 7, 12], "table"),  # gaps, within TABLE_SPREAD times their number: a table of positions
    ([9, 2, 10**12, -5, 2**40, 2**40 + 7], "buckets"),  # sparse: buckets of their high bits, a few probes
    ([*range(100, 120), *range(10**9, 10**9 + 20)], "search"),  # in clusters (a bucket of 20): a binary search
    ([-(2**62), 2**62], "search"),  # too far apart for buckets' arithmetic
])
def test_an_id_index_ranks_ids_dense_with_gaps_or_sparse_and_knows_the_others(ids: list[int], how: str) -> None:
    index = transform.IdIndex(ints(ids))
    assert index.how == how
    asked = [*ids, min(ids) - 1, max(ids) + 1, None, 8, 11, 2**62, -(2**62)]
    found = index.rank(pa.array(asked, pa.int64()))
    assert found.type == pa.int64() and found.to_pylist() == ranks(ids, asked)
    assert index.positions(ints(ids[::-1])).to_pylist() == ranks(ids, ids[::-1])
    assert index.contains_all(ints(ids[::-1])) and index.contains_all(ints([]))
    assert not index.contains_all(ints([*ids, 11]))
    assert index.missing(pa.array([ids[0], None, 11], pa.int64())).to_pylist() == [False, False, True]
    assert len(index) == len(ids) and index.sorted.to_pylist() == sorted(ids)


def test_an_id_index_of_no_ids_knows_none() -> None:
    index = transform.IdIndex(ints([]))
    assert index.rank(ints([1, 2])).to_pylist() == [None, None]
    assert not index.contains_all(ints([1])) and index.contains_all(ints([]))


@settings(max_examples=200, deadline=None)
@given(ids=st.sets(st.integers(-(2**40), 2**40) | st.integers(0, 60), max_size=40),
       asked=st.lists(st.none() | st.integers(-(2**40), 2**40) | st.integers(-5, 65), max_size=40))
def test_an_id_index_agrees_with_a_dictionary(ids: set[int], asked: list[int | None]) -> None:
    listed = sorted(ids, key=lambda v: (v * 7919) % 101)  # any order in, sorted inside
    index = transform.IdIndex(ints(listed))
    assert index.rank(pa.array(asked, pa.int64())).to_pylist() == ranks(listed, asked)
    known = [a for a in asked if a is not None]
    assert index.contains_all(ints(known)) == all(a in ids for a in known)


# --- a compound listed twice in one list


def test_repeated_in_list_marks_a_compound_seen_earlier_in_the_same_list_only() -> None:
    values = lists([[2, 0, 2], [1, 1], [0]])
    parents = ints([0, 0, 0, 1, 1, 2])
    compounds = ints([2, 0, 2, 1, 1, 0])
    assert transform.repeated_in_list(parents, compounds, values).to_pylist() == [
        False, False, True, False, True, False]


def test_repeated_in_list_of_long_lists_takes_the_hash_path_with_the_same_answer() -> None:
    long = [1] * (transform.MAX_SHIFTS + 2) + [2, 1]
    values = lists([long, [1]])
    parents = ints([0] * len(long) + [1])
    compounds = ints([*long, 1])
    assert transform.repeated_in_list(parents, compounds, values).to_pylist() == (
        [False] + [True] * (transform.MAX_SHIFTS + 1) + [False, True] + [False])


def test_repeated_in_list_of_nothing_is_nothing() -> None:
    assert transform.repeated_in_list(ints([]), ints([]), lists([])).to_pylist() == []
    assert transform.repeated_in_list(ints([0, 1]), ints([3, 3]), lists([[3], [3]])).to_pylist() == [False, False]


# --- the keys of one batch


def index(ids: list[int]) -> transform.IdIndex:
    return transform.IdIndex(ints(ids))


def test_experiment_keys_are_one_per_distinct_compound_then_one_per_experiment() -> None:
    # users 10, 20, 30 are positions 0, 1, 2; compounds 5, 7, 9 indices 0, 1, 2: width 3, stride 4
    keys = transform.experiment_keys(ints([30, 10]), lists([[9, 5, 9], [7]]), index([10, 20, 30]), index([5, 7, 9]))
    assert keys.to_pylist() == [2 * 4 + 2, 2 * 4 + 0, 0 * 4 + 1, 2 * 4 + 3, 0 * 4 + 3]


def test_experiment_keys_are_the_same_for_dense_ids() -> None:
    keys = transform.experiment_keys(ints([103, 101]), lists([[3, 1, 3], [2]]), index([101, 102, 103]),
                                     index([1, 2, 3]))
    assert keys.to_pylist() == [10, 8, 1, 11, 3]


def test_experiment_keys_of_a_long_list_with_repeats() -> None:
    long = [2] * (transform.MAX_SHIFTS + 3) + [1]
    keys = transform.experiment_keys(ints([1]), lists([long]), index([1]), index([1, 2]))
    assert keys.to_pylist() == [1, 0, 2]


def test_experiment_keys_of_huge_ids_stay_small() -> None:
    big = 9_000_000_000_000_000_000
    keys = transform.experiment_keys(ints([big]), lists([[big]]), index([7, big]), index([3, big]))
    assert keys.to_pylist() == [1 * 3 + 1, 1 * 3 + 2]


# --- counting keys


def test_count_keys_counts_each_distinct_key() -> None:
    assert pairs(*transform.count_keys(ints([3, 1, 3, 3], pa.int32()))) == [(1, 1), (3, 3)]
    chunked = pa.chunked_array([ints([2, 2]), ints([2, 5])])
    assert pairs(*transform.count_keys(chunked)) == [(2, 3), (5, 1)]
    assert pairs(*transform.count_keys(ints([]))) == []


@pytest.mark.parametrize(("type_", "top"), [
    (pa.int32(), 7), (pa.int32(), 4095), (pa.int32(), 4096), (pa.int32(), 41_000_000), (pa.int32(), 2**31 - 1),
    (pa.int64(), 2**40 + 3),
])
def test_sort_small_sorts_values_of_one_digit_and_of_several(type_: pa.DataType, top: int) -> None:
    """Each 12-bit digit is sorted in turn, lowest first: a pass that lost the order of the one before
    (an unstable sort), or a digit left out, would show here."""
    rnd = random.Random(top)  # noqa: S311 - test data, not secrets
    values = [rnd.randint(0, top) for _ in range(5000)] + [0, top, top, 4095, 4096]
    assert transform.sort_small(ints(values, type_)).to_pylist() == sorted(values)
    assert transform.sort_small(ints([top], type_)).to_pylist() == [top]


def test_count_keys_gives_each_key_once_ascending_with_its_count() -> None:
    rnd = random.Random(7)  # noqa: S311 - test data, not secrets
    values = [rnd.randrange(0, 1 << 26) for _ in range(3000)]
    values += values[:1000] + values[:10]  # repeats
    keys, counts = transform.count_keys(ints(values, pa.int32()))
    assert keys.to_pylist() == sorted(set(values))
    assert counts.type == pa.int64() and dict(zip(keys.to_pylist(), counts.to_pylist(), strict=True)) == Counter(values)


def test_add_counts_sums_the_counts_of_a_key_in_both() -> None:
    assert pairs(*transform.add_counts(ints([1, 3]), ints([1, 3]), ints([3, 4]), ints([2, 1]))) == [
        (1, 1), (3, 5), (4, 1)]
    assert pairs(*transform.add_counts(ints([]), ints([]), ints([3]), ints([2]))) == [(3, 2)]


# --- one bucket's totals and favourites


def test_user_totals_give_zero_to_users_without_experiments() -> None:
    totals = transform.user_totals(ints([2, 0]), ints([1, 3]), 4)
    assert totals.to_pylist() == [3, 0, 1, 0]
    assert totals.type == pa.int64()


def test_tied_favourites_list_every_top_compound_of_each_user_in_index_order() -> None:
    # stride 4: user 0 has compounds 2 and 0 twice each and 1 once; user 1 nothing; user 2 compound 1
    keys, positions, counts = ints([2, 0, 1, 9], pa.int32()), ints([0, 0, 0, 2], pa.int32()), ints([2, 2, 1, 5])
    per_user, tied = transform.tied_favourites(keys, positions, counts, 3, 4)
    assert per_user.to_pylist() == [2, 0, 1]
    assert tied.to_pylist() == [0, 2, 1]
    assert tied.type == pa.int64()


def test_run_maximum_gives_each_value_the_largest_of_its_run() -> None:
    groups, values = ints([0, 0, 0, 3, 5, 5], pa.int32()), ints([2, 7, 7, 0, 1, 9])
    assert transform.run_maximum(groups, values).to_pylist() == [7, 7, 7, 0, 9, 9]
    assert transform.run_maximum(ints([], pa.int32()), ints([])).to_pylist() == []


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.tuples(st.integers(0, 20), st.integers(0, 6)), st.integers(1, 40), max_size=80),
       st.randoms(use_true_random=False))
def test_tied_favourites_are_the_same_from_keys_in_order_or_not(pairs: dict[tuple[int, int], int],
                                                                rng: random.Random) -> None:
    """count_keys gives keys ascending (a running maximum per user); add_counts does not (a hash
    aggregation, then a sort): both give each user's top compounds, ascending."""
    stride, users = 8, 21
    rows = sorted((user * stride + compound, user, n) for (user, compound), n in pairs.items())
    want_per_user = [0] * users
    want_tied = []
    for user in range(users):
        mine = [(key % stride, n) for key, u, n in rows if u == user]
        top = max((n for _, n in mine), default=None)
        tied = sorted(compound for compound, n in mine if n == top)
        want_per_user[user] = len(tied)
        want_tied += tied
    for order in (rows, rng.sample(rows, len(rows))):
        keys, positions, counts = (ints([row[i] for row in order], pa.int32() if i < 2 else pa.int64())
                                   for i in range(3))
        per_user, tied = transform.tied_favourites(keys, positions, counts, users, stride)
        assert (per_user.to_pylist(), tied.to_pylist()) == (want_per_user, want_tied)


def test_favourites_split_experiment_keys_from_pair_keys() -> None:
    keys = ints([2, 11, 0, 3, 1, 9], pa.int32())  # 3 and 11: the experiments of users 0 and 2
    fav = transform.favourites(keys, ints([2, 5, 2, 3, 1, 5]), 3, 4)
    assert (fav.totals.to_pylist(), fav.tied_per_user.to_pylist(), fav.tied.to_pylist()) == (
        [3, 0, 5], [2, 0, 1], [0, 2, 1])


def test_favourites_of_users_without_any_key() -> None:
    fav = transform.favourites(ints([], pa.int32()), ints([]), 2, 4)
    assert (fav.totals.to_pylist(), fav.tied_per_user.to_pylist(), fav.tied.to_pylist()) == ([0, 0], [0, 0], [])


# --- one bucket's rows


def test_feature_batch_gives_each_user_its_row() -> None:
    fav = transform.Favourites(ints([3, 0, 5]), ints([2, 0, 1]), ints([0, 2, 1]))
    batch = transform.feature_batch(users_table([10, 20, 30], ["a", "b", "c"]), fav, pa.array(["X", "Y", "Z"]),
                                    ints([5, 7, 9]), transform.average(8, 3))
    assert batch.schema == transform.FEATURES_SCHEMA
    assert batch.to_pylist() == [
        {"user_id": 10, "user_name": "a", "total_experiments": 3, "most_common_compounds": "X;Z",
         "most_common_compound_ids": [5, 9], "average_experiments": 8 / 3},
        {"user_id": 20, "user_name": "b", "total_experiments": 0, "most_common_compounds": None,
         "most_common_compound_ids": None, "average_experiments": 8 / 3},
        {"user_id": 30, "user_name": "c", "total_experiments": 5, "most_common_compounds": "Y",
         "most_common_compound_ids": [7], "average_experiments": 8 / 3},
    ]


def test_by_user_id_sorts_only_when_needed() -> None:
    assert transform.by_user_id(users_table([3, 1, 2]))["user_id"].to_pylist() == [1, 2, 3]
    ordered = users_table([1, 5, 9])
    assert transform.by_user_id(ordered) is ordered


def test_average_is_experiments_per_user_and_zero_without_users() -> None:
    assert transform.average(4, 3).as_py() == 4 / 3
    assert transform.average(0, 0).as_py() == 0.0


# --- whole tables


def test_ties_list_every_top_compound_in_compound_id_order() -> None:
    out = compute_features(users_table([1]), compounds_table([30, 10, 20], ["Z", "X", "Y"]),
                           experiments_table([(1, [30, 20]), (1, [20, 30, 10])]))
    row = as_rows(out)[0]
    assert row["most_common_compounds"] == "Y;Z"
    assert row["most_common_compound_ids"] == [20, 30]
    assert row["total_experiments"] == 2


def test_user_without_experiments_gets_zero_and_null_favourites() -> None:
    out = compute_features(users_table([1, 2]), compounds_table([1]), experiments_table([(1, [1])]))
    assert as_rows(out)[1] == {
        "user_id": 2, "user_name": "user2", "total_experiments": 0,
        "most_common_compounds": None, "most_common_compound_ids": None, "average_experiments": 0.5,
    }


def test_average_is_all_experiments_over_all_users_on_every_row() -> None:
    out = compute_features(users_table([1, 2, 3]), compounds_table([1]),
                           experiments_table([(1, [1]), (1, [1]), (3, [1]), (3, [1])]))
    assert out["average_experiments"].to_pylist() == [4 / 3] * 3


def test_compound_repeated_within_one_experiment_counts_once() -> None:
    out = compute_features(users_table([1]), compounds_table([1, 2]),
                           experiments_table([(1, [1, 1, 1]), (1, [2])]))
    assert as_rows(out)[0]["most_common_compounds"] == "C1;C2"


def test_long_lists_use_the_hash_path_and_still_count_repeats_once() -> None:
    long_list = [5] * (transform.MAX_SHIFTS + 3) + [6]
    out = compute_features(users_table([1]), compounds_table([5, 6]),
                           experiments_table([(1, long_list), (1, [6])]))
    assert as_rows(out)[0]["most_common_compound_ids"] == [6]


def test_rows_come_out_in_user_id_order_whatever_the_input_order() -> None:
    out = compute_features(users_table([3, 1, 2]), compounds_table([1]), experiments_table([(2, [1])]))
    assert out["user_id"].to_pylist() == [1, 2, 3]


def test_huge_user_ids_are_renumbered_instead_of_overflowing_the_pair_key() -> None:
    big = 9_000_000_000_000_000_000
    out = compute_features(users_table([big, 7]), compounds_table([1, 2, 3]),
                           experiments_table([(big, [3]), (7, [1, 2])]))
    assert as_rows(out)[1]["most_common_compound_ids"] == [3]
    assert as_rows(out)[0]["most_common_compound_ids"] == [1, 2]


def test_output_schema_is_fixed() -> None:
    out = compute_features(users_table([1]), compounds_table([1]), experiments_table([]))
    assert out.schema == transform.FEATURES_SCHEMA


def test_no_users_give_no_rows() -> None:
    out = compute_features(users_table([]), compounds_table([1]), experiments_table([]))
    assert (out.num_rows, out.schema) == (0, transform.FEATURES_SCHEMA)


# --- property: any data, any batching, same answer as a plain-Python oracle


def oracle(users: list[int], compounds: list[int], experiments: list[tuple[int, list[int]]]) -> list[dict[str, Any]]:
    out = []
    for user in sorted(users):
        mine = [set(c) for u, c in experiments if u == user]
        counts = Counter(c for cs in mine for c in cs)
        top = max(counts.values(), default=0)
        ids = sorted(c for c, n in counts.items() if n == top) if counts else None
        out.append({
            "user_id": user, "user_name": f"user{user}", "total_experiments": len(mine),
            "most_common_compounds": ";".join(f"C{c}" for c in ids) if ids else None,
            "most_common_compound_ids": ids,
            "average_experiments": len(experiments) / len(users),
        })
    return out


@st.composite
def data(draw: Any) -> tuple[list[int], list[int], list[tuple[int, list[int]]]]:
    """Users, compounds (each a dense range or not) and experiments that list them."""
    if draw(st.booleans()):  # ids filling a range take the dense lookups
        first = draw(st.integers(1, 10**6))
        users = list(range(first, first + draw(st.integers(1, 12))))
    else:
        users = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=12, unique=True))
    contiguous = draw(st.booleans())
    if contiguous:
        start = draw(st.integers(1, 50))
        compounds = list(range(start, start + draw(st.integers(1, 8))))
    else:
        compounds = draw(st.lists(st.integers(1, 10**9), min_size=1, max_size=8, unique=True))
    experiments = draw(st.lists(
        st.tuples(st.sampled_from(users),
                  st.lists(st.sampled_from(compounds), min_size=1, max_size=transform.MAX_SHIFTS + 4)),
        max_size=40,
    ))
    return users, compounds, experiments


@settings(max_examples=150, deadline=None)
@given(data(), st.integers(1, 16))
def test_compute_features_matches_the_oracle_for_any_data_and_batching(
        dataset: tuple[list[int], list[int], list[tuple[int, list[int]]]], batch: int) -> None:
    users, compounds, experiments = dataset
    table = experiments_table(experiments)
    batches = pa.Table.from_batches(table.to_batches(max_chunksize=batch), schema=table.schema)
    out = compute_features(users_table(users), compounds_table(compounds), batches)
    assert out.to_pylist() == oracle(users, compounds, experiments)


# --- literals: made from bytes, equal to pyarrow's own conversions


@pytest.mark.parametrize(("values", "type_"), [
    ([1, -2, 2**62], pa.int64()), ([0, 5], pa.int32()), ([-3], pa.int8()), ([0.5, 1e300, -0.0], pa.float64()),
    ([True, False, True] * 5, pa.bool_()), (["", "a", "é;\""], pa.string()),
])
def test_literals_equal_pyarrows_conversions(values: list[object], type_: pa.DataType) -> None:
    from etl_core import literals

    made = literals.array(values, type_)  # type: ignore[arg-type]
    made.validate(full=True)
    assert made.equals(pa.array(values, type_))
    assert literals.scalar(values[0], type_).equals(pa.scalar(values[0], type_))  # type: ignore[arg-type]
    assert literals.repeat(values[0], type_, 3).equals(pa.array([values[0]] * 3, type_))  # type: ignore[arg-type]
    assert literals.empty(type_).equals(pa.array([], type_))


@pytest.mark.parametrize("type_", [pa.int32(), pa.int64()])
@pytest.mark.parametrize("n", [0, 1, 5000])
def test_arange_counts_from_zero(n: int, type_: pa.DataType) -> None:
    from etl_core import literals

    made = literals.arange(n, type_)
    assert made.type == type_ and made.to_pylist() == list(range(n))
