"""Whether a file's keys are unique, told as its batches pass (etl_core/reading/keys.py): against a
plain-Python count, for keys in order, in no order, close together or spread out, in batches of any
size."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_core.reading import keys

pytestmark = pytest.mark.unit


def passed(values: list[int], rows: int) -> keys.Unique:
    unique = keys.Unique()
    for start in range(0, len(values), rows):
        unique.add(pa.array(values[start:start + rows], pa.int64()))
    return unique


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.integers(1, 60) | st.integers(1, 10**15), max_size=60), rows=st.integers(1, 20))
def test_the_keys_that_repeat_are_found_whenever_they_can_be_without_a_second_look(values: list[int],
                                                                                  rows: int) -> None:
    unique = passed(values, rows)
    repeated = sorted(v for v, n in Counter(values).items() if n > 1)
    if unique.known:
        assert sorted(unique.duplicates().to_pylist()) == repeated
    else:  # in order for more than EARLY_BATCHES batches, then not: only a second look can tell
        assert len(values) > keys.EARLY_BATCHES * rows and not unique.increasing.holds


@pytest.mark.parametrize("spread", [1, 3, 10**9], ids=["a range", "with gaps", "sparse"])
def test_keys_in_no_order_are_kept_and_a_repeat_far_apart_is_found(spread: int) -> None:
    values = [v * spread for v in [*range(500, 0, -1), *range(501, 1001)]]
    assert passed(values, 64).duplicates().to_pylist() == []
    assert passed([*values, 7 * spread], 64).duplicates().to_pylist() == [7 * spread]


def test_keys_that_only_grow_keep_nothing_past_the_first_batches() -> None:
    unique = passed(list(range(1, 10_001)), 100)
    assert unique.known and unique.increasing.holds and unique.duplicates().to_pylist() == []
    late = passed([*range(1, 10_001), 5], 100)
    assert not late.known  # the caller reads the key column again (keys.duplicate_keys)
