"""The load guard's decisions on counts alone (no database)."""

from __future__ import annotations

import pytest

from etl_core.errors import LoadRefused
from etl_core.guard import Volume, check_rejects, check_volume

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("incoming", "refused"), [
    (Volume(users=50, experiments=500), False),  # exactly half of each: allowed
    (Volume(users=49, experiments=900), True),
    (Volume(users=100, experiments=499), True),
    (Volume(users=2000, experiments=5000), False),  # growth is never refused
])
def test_a_load_under_the_least_share_of_users_or_experiments_is_refused(incoming: Volume, refused: bool) -> None:
    current = Volume(users=100, experiments=1000)
    if refused:
        with pytest.raises(LoadRefused, match="looks cut short") as info:
            check_volume(current, incoming, min_share=0.5)
        assert info.value.details["current"] == {"users": 100, "experiments": 1000}
    else:
        check_volume(current, incoming, min_share=0.5)


def test_an_empty_table_never_refuses_and_a_zero_share_turns_the_check_off() -> None:
    check_volume(Volume(users=0, experiments=0), Volume(users=1, experiments=0), min_share=0.5)
    check_volume(Volume(users=10, experiments=0), Volume(users=9, experiments=0), min_share=0.5)
    check_volume(Volume(users=100, experiments=100), Volume(users=1, experiments=1), min_share=0.0)


def test_the_message_names_the_shrinking_count_and_the_override() -> None:
    with pytest.raises(LoadRefused, match=r"holds 0\.1% \(1 of 1000\) of the table's experiments .* force=true"):
        check_volume(Volume(users=10, experiments=1000), Volume(users=10, experiments=1), min_share=0.5)


def test_the_rejected_share_has_no_bound_by_default_and_refuses_above_one() -> None:
    check_rejects(rows_read=10, rows_rejected=9, max_share=None)
    check_rejects(rows_read=10, rows_rejected=1, max_share=0.1)
    check_rejects(rows_read=0, rows_rejected=0, max_share=0.0)
    with pytest.raises(LoadRefused, match=r"2 of 10 rows \(20\.0%\) were rejected, more than the 10\.0%"):
        check_rejects(rows_read=10, rows_rejected=2, max_share=0.1)
