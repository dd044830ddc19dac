"""Each user's digest, and the comparison of a load's digests with the last load's (issue 24's change-only
publishing without sending the unchanged users): equal rows always digest alike, any change of a
compared value changes the digest, and the comparison finds exactly the users added, changed and removed."""

from __future__ import annotations

import itertools
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_core.features import FEATURES_SCHEMA, Digester
from etl_core.features import digests as digests_module
from etl_core.store.changes import Previous, digest_table

pytestmark = pytest.mark.unit

COMPOUNDS = pa.table({"compound_id": pa.array([1, 2, 3], pa.int64()),
                      "compound_name": pa.array(["Aspirin", "Caffeine", "Taxol"])})


def features(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Feature rows with defaults for what a test does not name."""
    full = [{"user_id": i + 1, "user_name": "Alice", "total_experiments": 2, "most_common_compounds": "Aspirin",
             "most_common_compound_ids": [1], "average_experiments": 1.5, **row} for i, row in enumerate(rows)]
    return pa.RecordBatch.from_pylist(full, schema=FEATURES_SCHEMA)


def digest(**row: Any) -> int:
    return Digester(COMPOUNDS).rows(features([row]))[0].as_py()


@pytest.mark.parametrize(("before", "after"), [
    ({"user_name": "Alice"}, {"user_name": "Alicia"}),
    ({"user_name": "ab"}, {"user_name": "ba"}),  # the same bytes elsewhere
    ({"user_name": "Alice"}, {"user_name": "Alice "}),
    ({"user_name": ""}, {"user_name": "\u00a0"}),
    ({"user_name": "x" * 300 + "ab" + "y" * 254 + "ba"}, {"user_name": "x" * 300 + "bb" + "y" * 254 + "aa"}),
    ({"user_name": "a" + "z" * 255 + "b"}, {"user_name": "b" + "z" * 255 + "a"}),  # bytes 256 apart swapped
    ({"total_experiments": 2}, {"total_experiments": 3}),
    ({"total_experiments": 1 << 40}, {"total_experiments": 1}),
    ({"most_common_compound_ids": [1, 2]}, {"most_common_compound_ids": [2, 1]}),
    ({"most_common_compound_ids": [1, 2]}, {"most_common_compound_ids": [1]}),
    ({"most_common_compound_ids": None}, {"most_common_compound_ids": []}),
    ({"most_common_compound_ids": [1, 2], "total_experiments": 2},
     {"most_common_compound_ids": [1], "total_experiments": 3}),
    ({"average_experiments": 1.5}, {"average_experiments": 1.5000000000000002}),
])
def test_any_change_of_a_compared_value_changes_the_digest(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert digest(**before) != digest(**after)


def test_a_row_digests_alike_wherever_it_sits_in_a_batch() -> None:
    rows = [{"user_name": name, "most_common_compound_ids": ids}
            for name, ids in [("Zoë", [1]), ("", None), ("Bob", [1, 3]), ("x" * 600, [2]), ("Ærin", [])]]
    batch = features(rows)
    whole = Digester(COMPOUNDS).rows(batch).to_pylist()
    for start in range(len(rows)):
        for length in range(1, len(rows) - start + 1):
            assert Digester(COMPOUNDS).rows(batch.slice(start, length)).to_pylist() == whole[start:start + length]


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=8), start=st.integers(0, 2))
def test_a_texts_digest_is_the_sum_of_the_numbers_its_bytes_stand_for_at_their_places(
        texts: list[str | None], start: int) -> None:
    """The oracle in plain Python for texts up to 256 bytes: empty texts and slices at any offset included."""
    table = digests_module._byte_table().to_pylist()
    values = pa.array(["pad", "", *texts], pa.string()).slice(start)
    expected = [digests_module._NULL if text is None else
                sum(table[i * 256 + b] for i, b in enumerate(text.encode())) % (1 << 64)
                for text in values.to_pylist()]
    assert digests_module.text_digests(values).to_pylist() == expected


def test_an_empty_batch_has_no_digests() -> None:
    assert len(Digester(COMPOUNDS).rows(features([]))) == 0


@pytest.mark.parametrize("ids", [[1, 2, 3], [10, 20, 30]])  # a range of ids, and not
def test_a_renamed_compound_changes_the_digest_of_the_users_that_list_it_and_no_other(ids: list[int]) -> None:
    compounds = pa.table({"compound_id": pa.array(ids, pa.int64()),
                          "compound_name": pa.array(["Aspirin", "Caffeine", "Taxol"])})
    renamed = compounds.set_column(1, "compound_name", pa.array(["Aspirin", "Coffee", "Taxol"]))
    batch = features([{"most_common_compound_ids": [ids[0], ids[1]]}, {"most_common_compound_ids": [ids[2]]},
                      {"most_common_compound_ids": None, "most_common_compounds": None},
                      {"most_common_compound_ids": [ids[1]]}])
    assert Digester(compounds.take([2, 0, 1])).rows(batch) == Digester(compounds).rows(batch)
    assert pc.not_equal(Digester(renamed).rows(batch), Digester(compounds).rows(batch)).to_pylist() == [
        True, False, False, True]


def test_the_digest_of_a_row_is_the_same_in_every_release_that_stores_this_algorithm() -> None:
    """Digests stored by one release are compared by the next: a change of the formula must come with a
    new ALGORITHM (then stored digests are not compared), and this pinned value with it."""
    assert digests_module.ALGORITHM == 1
    assert digest(user_name="Zoë", total_experiments=7, most_common_compound_ids=[1, 3]) == 14485087981377068881


rows = st.fixed_dictionaries({
    "user_name": st.text(max_size=12),
    "total_experiments": st.integers(0, 5),
    "most_common_compound_ids": st.one_of(st.none(), st.lists(st.integers(1, 3), max_size=3)),
    "average_experiments": st.sampled_from([0.5, 1.5, 2.0]),
})


@settings(max_examples=300, deadline=None)
@given(a=rows, b=rows)
def test_two_rows_digest_alike_exactly_when_their_compared_values_are_equal(a: dict[str, Any],
                                                                             b: dict[str, Any]) -> None:
    assert (digest(**a) == digest(**b)) == (a == b)


def table_of(users: dict[int, int]) -> tuple[pa.Array, pa.Array]:
    ids = sorted(users)
    return pa.array(ids, pa.int64()), pa.array([users[u] for u in ids], pa.uint64())


states = st.dictionaries(st.integers(1, 40), st.integers(0, 3), max_size=25)


@settings(max_examples=300, deadline=None)
@given(old=states, new=states, cuts=st.lists(st.integers(0, 25), max_size=4))
def test_the_comparison_finds_exactly_the_users_added_changed_and_removed(old: dict[int, int], new: dict[int, int],
                                                                          cuts: list[int]) -> None:
    previous = Previous(*table_of(old))
    ids, digests = table_of(new)
    sent: list[int] = []
    removed: list[int] = []
    added = changed = 0
    bounds = sorted({0, len(ids), *(c for c in cuts if c <= len(ids))})
    for start, end in itertools.pairwise(bounds):  # the load's rows in batches, as the engine sends them
        found = previous.compare(ids.slice(start, end - start), digests.slice(start, end - start))
        sent += ids.slice(start, end - start).filter(found.send).to_pylist()
        removed += found.removed.to_pylist()
        added += found.added
        changed += found.changed
    removed += previous.rest().to_pylist()
    assert sorted(sent) == sorted(u for u in new if old.get(u) != new[u])
    assert removed == sorted(set(old) - set(new))
    assert (added, changed) == (len(set(new) - set(old)), sum(1 for u in new if u in old and old[u] != new[u]))


def test_the_comparison_refuses_rows_out_of_order() -> None:
    previous = Previous(*table_of({1: 0, 2: 0, 3: 0}))
    with pytest.raises(ValueError, match="ascending"):
        previous.compare(pa.array([2, 1], pa.int64()), pa.array([0, 0], pa.uint64()))
    previous = Previous(*table_of({1: 0, 2: 0, 3: 0}))
    previous.compare(pa.array([2], pa.int64()), pa.array([0], pa.uint64()))
    with pytest.raises(ValueError, match="ascending"):
        previous.compare(pa.array([2], pa.int64()), pa.array([0], pa.uint64()))


def test_a_loads_digests_are_one_table_in_user_order() -> None:
    stored = digest_table([pa.array([1, 2], pa.int64()), pa.array([5], pa.int64())],
                          [pa.array([9, 8], pa.uint64()), pa.array([7], pa.uint64())])
    assert stored.to_pydict() == {"user_id": [1, 2, 5], "digest": [9, 8, 7]}


@pytest.mark.parametrize("group", [1, 3, 5, 100])
def test_a_first_loads_digests_are_each_rows_however_the_batches_are_grouped(
        group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_core.store import postgres

    monkeypatch.setattr(postgres, "DIGEST_ROWS", group)
    whole = features([{"user_name": f"U{i}" * (i % 4), "most_common_compound_ids": [1 + i % 3] * (i % 3)}
                      for i in range(11)])
    batches = [whole.slice(start, length) for start, length in [(0, 2), (2, 1), (3, 4), (7, 4)]]
    digester = Digester(COMPOUNDS)
    digests = postgres._Digests(digester)
    assert [b.num_rows for b in digests.beside(batches)] == [2, 1, 4, 4]  # the rows pass as they came
    stored = digests.table()
    assert stored["user_id"].to_pylist() == list(range(1, 12))
    assert stored["digest"].to_pylist() == digester.rows(whole).to_pylist()
    cut = postgres._Digests(digester)
    list(itertools.islice(cut.beside(batches), 3))  # a COPY that stopped after three batches
    assert cut.table()["digest"].to_pylist() == digester.rows(whole).to_pylist()[:len(cut.table())]
    assert len(cut.table()) == {1: 7, 3: 7, 5: 7, 100: 0}[group]  # only what was digested: fewer than were sent
