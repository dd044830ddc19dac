"""The features, as a pure function of Arrow tables: ties, users without experiments, repeats, and the
oracle and data that test_counting.py checks the counting engine against."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

from etl_core import transform
from etl_core.transform import compute_features


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
