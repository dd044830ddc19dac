"""Remembering every load (issue 24): restoring an earlier run, dry runs, and the property that the history
answers each run's features as the run left them; both stores (the in-memory one in the quick tier)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_core.config import Settings
from etl_core.errors import HistoryPurged, LoadRefused, RunNotFound
from etl_core.features import FEATURES_SCHEMA
from etl_core.service import Service, Trigger
from etl_core.store import Store
from etl_core.store.memory import MemoryStore
from etl_core.store.postgres import PostgresStore
from etl_core.tables import COMPARED
from tests.helpers import write_files

USERS = "user_id,name,email,signup_date\n"
RENAMED = {"users.csv": USERS + "1,Alicia,a@x,2023-01-01\n2,Bob,b@x,2023-02-01\n3,Carol,c@x,2023-03-01\n"}


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit), "postgres"])
def job(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    base = {"DATA_DIR": str(write_files(tmp_path / "first", {})), "ETL_METRICS_NAMESPACE": ""}
    if request.param == "memory":
        service = Service(Settings.from_env(base), MemoryStore())
    else:
        env = request.getfixturevalue("env")
        service = Service(Settings.from_env({**env, **base}))
    yield service
    service.close()


def on(service: Service, data: Path) -> Service:
    """The same store, reading ``data``."""
    import dataclasses

    return Service(dataclasses.replace(service.settings, data_dir=data), service.store)


def values(service: Service, run_id: int) -> list[tuple[Any, ...]]:
    """The features as of ``run_id``, without the run that wrote each row."""
    rows = service.as_of(run_id, limit=1000)["features"]
    return [(r["user_id"], *(r[c] for c in COMPARED)) for r in rows]


def test_a_restore_puts_back_the_features_of_a_run_and_stands_until_a_new_input(job: Service,
                                                                                 tmp_path: Path) -> None:
    good = job.trigger(Trigger())
    renamed = on(job, write_files(tmp_path / "renamed", RENAMED))
    bad = renamed.trigger(Trigger())
    assert bad["changes"]["changed"] == 1  # Alice renamed

    restored = job.restore(good["run_id"])
    assert (restored["status"], restored["restored_from"]) == ("restored", good["run_id"])
    assert restored["changes"] == {"added": 0, "changed": 1, "removed": 0, "unchanged": 2}
    assert values(job, restored["run_id"]) == values(job, good["run_id"]) != values(job, bad["run_id"])
    record = job.run_status(restored["run_id"])
    assert (record["status"], record["restored_from"], record["changes"]) == (
        "restored", good["run_id"], restored["changes"])
    assert [c["user_id"] for c in job.changes(restored["run_id"], limit=10)["changes"]] == [1]

    # the input the bad run loaded is still 'unchanged': the restore is not undone by the next schedule
    again = renamed.trigger(Trigger())
    assert (again["status"], again["same_as"]) == ("unchanged", bad["run_id"])
    # restoring again changes nothing; a dry run of the restored run's input neither
    assert job.restore(good["run_id"])["changes"] == {"added": 0, "changed": 0, "removed": 0, "unchanged": 3}
    dry = job.trigger(Trigger(force=True, dry_run=True))
    assert (dry["status"], dry["changes"], dry["sample"]) == (
        "dry_run", {"added": 0, "changed": 0, "removed": 0, "unchanged": 3}, [])
    assert job.store.last_confirmed()["run_id"] > bad["run_id"]  # type: ignore[index]


def test_a_restore_is_refused_for_an_unknown_run_a_purged_history_and_by_the_guard(
        job: Service, tmp_path: Path) -> None:
    with pytest.raises(RunNotFound):
        job.restore(1)
    first = job.trigger(Trigger())
    many = USERS + "".join(f"{i},U{i},u{i}@x,2023-01-01\n" for i in range(1, 21))
    grown = on(job, write_files(tmp_path / "grown", {"users.csv": many})).trigger(Trigger())
    before = values(job, grown["run_id"])
    with pytest.raises(LoadRefused):  # 3 users where the table holds 20: the guard stands for restores too
        job.restore(first["run_id"])
    assert values(job, grown["run_id"]) == before
    refused = job.store.list_runs(limit=1)[0]
    assert (refused["status"], refused["error"]["code"]) == ("failed", "load_refused")
    assert job.restore(first["run_id"], force=True)["changes"]["removed"] == 17

    if isinstance(job.store, MemoryStore):
        job.store.kept_from = grown["run_id"]
    else:
        assert isinstance(job.store, PostgresStore)
        with job.store.connection() as conn:
            conn.run(f'UPDATE "{job.store.schema}".etl_history_horizon SET kept_from = :n', n=grown["run_id"])
    with pytest.raises(HistoryPurged) as info:
        job.restore(first["run_id"])
    assert (info.value.code, info.value.http_status, info.value.details["kept_from"]) == (
        "history_purged", 410, grown["run_id"])


def test_a_dry_run_answers_what_would_change_and_writes_nothing(job: Service, tmp_path: Path) -> None:
    first = job.trigger(Trigger(dry_run=True))  # into an empty table: everyone would be added
    assert (first["status"], first["users_written"]) == ("dry_run", 0)
    assert first["changes"] == {"added": 3, "changed": 0, "removed": 0, "unchanged": 0}
    assert [c["change"] for c in first["sample"]] == ["added"] * 3
    assert job.store.last_confirmed() is None and values(job, first["run_id"]) == []

    loaded = job.trigger(Trigger())  # the dry run did not count as a load: this one loads
    assert loaded["status"] == "succeeded"
    renamed = on(job, write_files(tmp_path / "renamed", RENAMED))
    dry = renamed.trigger(Trigger(dry_run=True))
    assert dry["changes"] == {"added": 0, "changed": 1, "removed": 0, "unchanged": 2}
    [change] = dry["sample"]
    assert (change["user_id"], change["before"]["user_name"], change["after"]["user_name"]) == (1, "Alice", "Alicia")
    assert values(job, dry["run_id"]) == values(job, loaded["run_id"])  # nothing was written
    assert job.changes(dry["run_id"], limit=10)["changes"] == []
    record = job.run_status(dry["run_id"])
    assert (record["status"], record["changes"]) == ("dry_run", dry["changes"])
    # the dry run never moves what 'unchanged' compares with: the same input still loads
    assert job.trigger(Trigger())["status"] == "unchanged"
    assert renamed.trigger(Trigger())["status"] == "succeeded"


# The property: for any sequence of loads, the features as of each run are the ones it loaded, and a
# restore of any run leaves nothing to change against that run's features.

def batch(users: dict[int, tuple[str, int]]) -> list[pa.RecordBatch]:
    ids = sorted(users)
    return pa.table({
        "user_id": ids, "user_name": [users[u][0] for u in ids], "total_experiments": [users[u][1] for u in ids],
        "most_common_compounds": [None if users[u][1] % 3 == 0 else f"C{users[u][1]}" for u in ids],
        "most_common_compound_ids": [None if users[u][1] % 3 == 0 else [users[u][1]] for u in ids],
        "average_experiments": [1.5] * len(ids)}, schema=FEATURES_SCHEMA).to_batches()


def expected(users: dict[int, tuple[str, int]]) -> list[tuple[Any, ...]]:
    table = pa.Table.from_batches(batch(users))
    return [(r["user_id"], *(r[c] for c in COMPARED)) for r in table.to_pylist()]


def publish(store: Store, users: dict[int, tuple[str, int]]) -> int:
    with store.run(policy="strict", source="here") as run, run.publishing() as publication:
        written = publication.replace_features(batch(users))
        publication.finish(status="succeeded", files={}, users_written=written, seconds={})
    return run.run_id


loads = st.lists(st.dictionaries(st.integers(1, 12), st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 4)),
                                 min_size=1, max_size=8), min_size=1, max_size=6)


def check_history(store: Store, sequence: list[dict[int, tuple[str, int]]], restore_index: int) -> None:
    service = Service(Settings.from_env({"ETL_METRICS_NAMESPACE": "", "ETL_GUARD_MIN_SHARE": "0"}), store)
    runs = [publish(store, users) for users in sequence]
    for run_id, users in zip(runs, sequence, strict=True):
        assert values(service, run_id) == expected(users), run_id
    target = runs[restore_index % len(runs)]
    restored = service.restore(target)
    assert values(service, restored["run_id"]) == values(service, target)
    dry = service.restore(target, dry_run=True)
    assert (dry["changes"]["added"], dry["changes"]["changed"], dry["changes"]["removed"], dry["sample"]) == (
        0, 0, 0, [])
    for run_id, users in zip(runs, sequence, strict=True):  # the restore rewrote none of the past
        assert values(service, run_id) == expected(users)


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(sequence=loads, restore_index=st.integers(0, 5))
def test_as_of_each_run_is_what_it_loaded_and_a_restore_leaves_nothing_to_change_in_memory(
        sequence: list[dict[int, tuple[str, int]]], restore_index: int) -> None:
    check_history(MemoryStore(), sequence, restore_index)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=loads, restore_index=st.integers(0, 5))
def test_as_of_each_run_is_what_it_loaded_and_a_restore_leaves_nothing_to_change_in_postgres(
        database_url: str, sequence: list[dict[int, tuple[str, int]]], restore_index: int) -> None:
    import uuid

    from etl_core.config import db_settings
    from etl_core.store import db as dbmod

    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(db_settings({"DATABASE_URL": database_url}), schema)
    try:
        check_history(store, sequence, restore_index)
    finally:
        store.close()
        conn = dbmod.connect(db_settings({"DATABASE_URL": database_url}))
        try:
            conn.run(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            dbmod.close_quietly(conn)


def test_a_run_that_ends_more_versions_than_the_bound_purges_twice_its_own(job: Service) -> None:
    """Every user changing (as when the average moves) ends a version per user each run: a purge bounded
    only by max_steps * step_rows would fall further behind the retention with every such run."""
    from etl_core.config import RetentionSettings

    store, users = job.store, range(1, 7)
    bound = RetentionSettings(history_runs=1, step_rows=1, max_steps=1)

    def publish_and_purge(n: int) -> dict[str, Any]:
        with store.run(policy="strict", source="here") as run:
            with run.publishing() as publication:
                written = publication.replace_features(batch({u: ("a", n) for u in users}))
                publication.finish(status="succeeded", files={}, users_written=written, seconds={})
            return run.purge(bound)

    first = publish_and_purge(0)
    assert first["history"] == 0  # a first load ends nothing
    assert publish_and_purge(1)["history"] == 0  # its six versions are the ones the last run's as-of needs
    for n in (2, 3):  # each ends six and may purge twelve: the six the run before it ended, all that is due
        purged = publish_and_purge(n)
        assert (purged["history"], purged["backlog"]) == (6, False)  # six in, six out: no growth
    with store.run(policy="strict", source="here") as run:  # a run that ended nothing: the plain bound
        run.fail({"type": "T", "code": "c", "message": "m"})
        assert run.purge(RetentionSettings(history_runs=1, history_days=0, step_rows=1, max_steps=1))["history"] <= 1


def test_the_history_purge_may_run_twice_the_steps_of_the_versions_a_run_ended() -> None:
    from etl_core.config import RetentionSettings

    bound = RetentionSettings(step_rows=5_000, max_steps=20)
    assert [bound.history_steps(n) for n in (0, -1, 50_000, 50_001, 1_000_000)] == [20, 20, 20, 21, 400]


def test_the_history_is_kept_for_the_last_runs_or_days_and_refused_before(job: Service) -> None:
    from etl_core.config import RetentionSettings

    store = job.store
    runs = [publish(store, {1: ("a", n), 2: ("b", 0)}) for n in range(5)]  # user 1 changes each time
    assert store.history_kept_from() == 0

    def purge(**retention: Any) -> dict[str, Any]:
        with store.run(policy="strict", source="here") as run:
            run.fail({"type": "T", "code": "c", "message": "m"})
            return run.purge(RetentionSettings(**retention))

    assert purge(history_runs=10)["history"] == 0  # five runs published: all kept
    purged = purge(history_runs=2, step_rows=1, max_steps=1)  # bounded: one version per step, one step
    assert (purged["history"], purged["backlog"], store.history_kept_from()) == (1, True, runs[3])
    assert purge(history_runs=2)["history"] == 1  # the other version that ended before runs[3]
    with pytest.raises(HistoryPurged):
        job.as_of(runs[2], limit=10)
    with pytest.raises(HistoryPurged):
        job.restore(runs[2])
    assert [r["total_experiments"] for r in job.as_of(runs[3], limit=10)["features"]] == [3, 0]
    [change] = job.changes(runs[3], limit=10)["changes"]  # its "before" ended at runs[3] itself: still kept
    assert (change["before"]["total_experiments"], change["after"]["total_experiments"]) == (2, 3)
    assert job.run_status(runs[0])["status"] == "succeeded"  # the ledger keeps its runs by its own retention
    # never past the newest run that published: the table itself answers for it
    assert purge(history_runs=1, history_days=1)["history"] == 1
    assert store.history_kept_from() == runs[4]
    assert [r["total_experiments"] for r in job.as_of(runs[4], limit=10)["features"]] == [4, 0]


def test_the_features_and_changes_of_a_run_still_running_are_refused_until_it_finishes(job: Service) -> None:
    from etl_core.errors import RunInProgress

    store = job.store
    publish(store, {1: ("a", 1)})
    with store.run(policy="strict", source="here") as run, run.publishing() as publication:
        for ask in (job.as_of, job.changes):  # the last run's table would pass for this one's
            with pytest.raises(RunInProgress, match=f"run {run.run_id} is still running"):
                ask(run.run_id, limit=10)
        written = publication.replace_features(batch({1: ("b", 1)}))
        publication.finish(status="succeeded", files={}, users_written=written, seconds={})
    [change] = job.changes(run.run_id, limit=10)["changes"]
    assert (change["before"]["user_name"], change["after"]["user_name"]) == ("a", "b")
