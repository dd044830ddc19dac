"""Change-only publishing by digests, against a real PostgreSQL (issue 24): a reload sends only the users
whose digest differs, and ends with the table a comparison of every value would give; the digests are
used only where they describe the table, and the same sequences of loads give the same changes as the
in-memory store, which compares every value."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_core.config import Settings, db_settings
from etl_core.features import Digester
from etl_core.service import Service, Trigger
from etl_core.store import Store, postgres
from etl_core.store import db as dbmod
from etl_core.store.memory import MemoryStore
from etl_core.store.postgres import PostgresPublication, PostgresStore
from tests.helpers import features_dump, write_files
from tests.test_history import batch, expected, values

USERS = "user_id,name,email,signup_date\n"
COMPOUNDS = "compound_id,compound_name,compound_structure\n"
EXPERIMENTS = "experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"


def data(tmp_path: Path, name: str, users: dict[int, str], *, compound_b: str = "Compound B") -> Path:
    """Users 1..n with their experiments: user u ran u experiments of compound (u % 3) + 1."""
    experiments, n = [], 0
    for user in sorted(users):
        for _ in range(user % 4):
            n += 1
            experiments.append(f"{n},{user},{user % 3 + 1},10")
    return write_files(tmp_path / name, {
        "users.csv": USERS + "".join(f"{u},{users[u]},u{u}@x,2023-01-01\n" for u in sorted(users)),
        "compounds.csv": COMPOUNDS + f"1,Compound A,C\n2,{compound_b},C\n3,Compound C,C\n",
        "user_experiments.csv": EXPERIMENTS + "\n".join(experiments) + "\n",
    })


@pytest.fixture
def job(env: dict[str, str], tmp_path: Path) -> Iterator[Service]:
    settings = Settings.from_env({**env, "ETL_METRICS_NAMESPACE": "", "ETL_GUARD_MIN_SHARE": "0",
                                  "DATA_DIR": str(data(tmp_path, "first", {u: f"User {u}" for u in range(1, 41)}))})
    service = Service(settings)
    yield service
    service.close()


@pytest.fixture
def publications(monkeypatch: pytest.MonkeyPatch) -> list[PostgresPublication]:
    """Every publication that replaced the features, to read how it compared (``compared_by``, ``sent``)."""
    seen: list[PostgresPublication] = []
    real = PostgresPublication.replace_features

    def kept(self: PostgresPublication, *args: Any) -> int:
        seen.append(self)
        return real(self, *args)

    monkeypatch.setattr(PostgresPublication, "replace_features", kept)
    return seen


def on(service: Service, directory: Path, **trigger: Any) -> dict[str, Any]:
    return Service(dataclasses.replace(service.settings, data_dir=directory), service.store).trigger(Trigger(**trigger))


def reference(env: dict[str, str], directory: Path) -> list[tuple[Any, ...]]:
    """The features a first load of ``directory`` writes (every value compared by nobody): run ids left out."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    settings = Settings.from_env({**env, "DB_SCHEMA": schema, "ETL_METRICS_NAMESPACE": "", "DATA_DIR": str(directory)})
    service = Service(settings)
    conn = dbmod.connect(settings.db)
    try:
        service.trigger(Trigger())
        return features_dump(conn, schema, run_id=False)
    finally:
        service.close()
        conn.run(f'DROP SCHEMA "{schema}" CASCADE')
        dbmod.close_quietly(conn)


def table(service: Service) -> list[tuple[Any, ...]]:
    conn = dbmod.connect(service.settings.db)
    try:
        return features_dump(conn, service.settings.schema, run_id=False)
    finally:
        dbmod.close_quietly(conn)


def test_a_reload_sends_only_the_users_whose_digest_differs(job: Service, env: dict[str, str], tmp_path: Path,
                                                            publications: list[PostgresPublication]) -> None:
    first = job.trigger(Trigger())
    assert (publications[-1].compared_by, first["changes"]["added"]) == ("empty", 40)
    users = {u: f"User {u}" for u in range(1, 41)} | {7: "Seven", 40: "Forty"}  # two renamed
    # two gone (one of them the first user) and two added after the last, each with one experiment: the
    # average (experiments per user, on every row) stays 1.5, so that no other user changes
    del users[1], users[21]
    users |= {45: "New", 49: "Newer"}
    second = data(tmp_path, "second", users)
    loaded = on(job, second)
    assert loaded["changes"] == {"added": 2, "changed": 2, "removed": 2, "unchanged": 36}
    assert (publications[-1].compared_by, publications[-1].sent) == ("digests", 4)
    assert table(job) == reference(env, second)
    again = on(job, data(tmp_path, "third", users | {7: "User 7"}))  # one renamed back
    assert again["changes"] == {"added": 0, "changed": 1, "removed": 0, "unchanged": 39}
    assert [c["user_id"] for c in job.changes(again["run_id"], limit=10)["changes"]] == [7]


def test_a_renamed_compound_sends_and_changes_only_the_users_that_name_it(
        job: Service, env: dict[str, str], tmp_path: Path, publications: list[PostgresPublication]) -> None:
    job.trigger(Trigger())
    renamed = data(tmp_path, "renamed", {u: f"User {u}" for u in range(1, 41)}, compound_b="Compound Bee")
    loaded = on(job, renamed)
    # users whose favourite is compound 2 (u % 3 == 1) and who ran an experiment (u % 4 != 0)
    naming = [u for u in range(1, 41) if u % 3 == 1 and u % 4]
    assert loaded["changes"]["changed"] == len(naming)
    assert (publications[-1].compared_by, publications[-1].sent) == ("digests", len(naming))
    assert table(job) == reference(env, renamed)


def test_digests_that_may_not_describe_the_table_are_not_used(job: Service, env: dict[str, str], tmp_path: Path,
                                                               publications: list[PostgresPublication]) -> None:
    schema = job.settings.schema
    first = job.trigger(Trigger())
    renamed = data(tmp_path, "renamed", {u: f"User {u}" for u in range(1, 41)} | {3: "Three"})
    on(job, renamed)
    assert publications[-1].compared_by == "digests"

    # after a restore (which stores none): every value compared, and the digests stored again
    job.restore(first["run_id"])
    again = data(tmp_path, "again", {u: f"User {u}" for u in range(1, 41)} | {3: "Drei"})
    on(job, again)
    assert publications[-1].compared_by == "values"
    assert table(job) == reference(env, again)

    conn = dbmod.connect(job.settings.db)
    try:
        # a user deleted by hand: the table no longer holds as many users as the digests
        conn.run(f'DELETE FROM "{schema}".user_features WHERE user_id = 5')
        on(job, data(tmp_path, "a", {u: f"User {u}" for u in range(1, 41)} | {4: "Four"}))
        assert publications[-1].compared_by == "values"
        assert table(job) == reference(env, tmp_path / "a")

        # the cache emptied (an UNLOGGED table after a crash)
        conn.run(f'DELETE FROM "{schema}".etl_feature_digests')
        on(job, data(tmp_path, "b", {u: f"User {u}" for u in range(1, 41)} | {4: "Vier"}))
        assert publications[-1].compared_by == "values"

        # a value edited by hand, the count unchanged: the digests still say 'as loaded', so the edit stays
        # until the user's features change or a forced run compares every value (docs/publishing.md)
        conn.run(f"UPDATE \"{schema}\".user_features SET user_name = 'edited' WHERE user_id = 9")
        on(job, data(tmp_path, "c", {u: f"User {u}" for u in range(1, 41)} | {4: "Quatre"}))
        assert publications[-1].compared_by == "digests"
        assert conn.run(f'SELECT user_name FROM "{schema}".user_features WHERE user_id = 9') == [["edited"]]
        forced = on(job, tmp_path / "c", force=True)
        assert publications[-1].compared_by == "values"
        assert forced["changes"]["changed"] == 1
        assert table(job) == reference(env, tmp_path / "c")
    finally:
        dbmod.close_quietly(conn)


def test_a_dry_run_compares_by_digests_and_stores_none(job: Service, tmp_path: Path,
                                                       publications: list[PostgresPublication]) -> None:
    job.trigger(Trigger())
    renamed = data(tmp_path, "renamed", {u: f"User {u}" for u in range(1, 41)} | {3: "Three", 8: "Eight"})
    conn = dbmod.connect(job.settings.db)
    stored = f'SELECT run_id, digests FROM "{job.settings.schema}".etl_feature_digests'
    try:
        before = conn.run(stored)
        dry = on(job, renamed, dry_run=True)
        assert (publications[-1].compared_by, dry["changes"]["changed"]) == ("digests", 2)
        assert [s["user_id"] for s in dry["sample"]] == [3, 8]
        assert conn.run(stored) == before
        assert on(job, renamed)["changes"] == dry["changes"]
        assert publications[-1].compared_by == "digests"
        assert conn.run(stored) != before
    finally:
        dbmod.close_quietly(conn)


# The property: for any sequence of loads, comparing by digests gives each run the changes that comparing
# every value gives (the in-memory store), whichever way the publication writes them (only the users that
# differ, or every row with the unchanged put back, on a look-ahead of any length that may mislead), and
# the features as of each run are the ones it loaded.

loads = st.lists(st.dictionaries(st.integers(1, 30), st.tuples(st.sampled_from(["a", "b", "ab"]), st.integers(0, 4)),
                                 min_size=1, max_size=20), min_size=2, max_size=6)
NO_COMPOUNDS = pa.table({"compound_id": pa.array([], pa.int64()), "compound_name": pa.array([], pa.string())})


def publish(store: Store, users: dict[int, tuple[str, int]],
            rows: int = 1 << 20) -> tuple[int, dict[str, int] | None, PostgresPublication | Any]:
    """One load of ``users``, in batches of ``rows`` rows."""
    batches = pa.Table.from_batches(batch(users)).to_batches(max_chunksize=rows)
    with store.run(policy="strict", source="here") as run, run.publishing() as publication:
        publication.volume()  # as a run that is not forced counts the table first
        written = publication.replace_features(iter(batches), Digester(NO_COMPOUNDS))
        publication.finish(status="succeeded", files={}, users_written=written, seconds={})
    return run.run_id, publication.changes, publication


def listed(service: Service, run_id: int) -> list[dict[str, Any]]:
    return service.changes(run_id, limit=100)["changes"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=loads, rows=st.integers(1, 8), look_ahead=st.integers(1, 12))
def test_digests_give_every_run_the_changes_a_comparison_of_every_value_gives(
        database_url: str, sequence: list[dict[int, tuple[str, int]]], rows: int, look_ahead: int) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(db_settings({"DATABASE_URL": database_url}), schema)
    memory = MemoryStore()
    service = Service(Settings.from_env({"ETL_METRICS_NAMESPACE": ""}), store)
    in_memory = Service(Settings.from_env({"ETL_METRICS_NAMESPACE": ""}), memory)
    runs: list[tuple[int, dict[int, tuple[str, int]]]] = []
    try:
        with mock.patch.object(postgres, "LOOK_AHEAD_ROWS", look_ahead):
            for i, users in enumerate(sequence):
                run_id, found, publication = publish(store, users, rows)
                assert publication.compared_by == ("empty" if i == 0 else "digests")
                memory_run, memory_found, _ = publish(memory, users)
                assert found == memory_found
                assert listed(service, run_id) == listed(in_memory, memory_run)
                runs.append((run_id, users))
                for earlier, loaded in runs:  # no later load rewrites the past
                    assert values(service, earlier) == expected(loaded), (earlier, publication.wrote)
    finally:
        store.close()
        conn = dbmod.connect(db_settings({"DATABASE_URL": database_url}))
        try:
            conn.run(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            dbmod.close_quietly(conn)


def stamps(service: Service) -> dict[int, int]:
    """Each user's run_id in the table."""
    conn = dbmod.connect(service.settings.db)
    try:
        return dict(conn.run(f'SELECT user_id, run_id FROM "{service.settings.schema}".user_features'))
    finally:
        dbmod.close_quietly(conn)


def test_a_reload_where_most_users_changed_rewrites_the_table_and_puts_the_unchanged_back(
        job: Service, env: dict[str, str], tmp_path: Path, publications: list[PostgresPublication]) -> None:
    first = job.trigger(Trigger())
    users = {u: f"User {u}" for u in range(1, 41)} | {u: f"Renamed {u}" for u in range(2, 31)}
    del users[1], users[21]  # gone, and two added with one experiment each: the average stays 1.5
    users |= {45: "New", 49: "Newer"}
    second = data(tmp_path, "second", users)
    loaded = on(job, second)
    assert loaded["changes"] == {"added": 2, "changed": 28, "removed": 2, "unchanged": 10}
    assert (publications[-1].compared_by, publications[-1].wrote) == ("digests", "all")
    assert table(job) == reference(env, second)
    run_ids = stamps(job)
    assert {u: run_ids[u] for u in range(31, 41)} == dict.fromkeys(range(31, 41), first["run_id"])
    assert {run_ids[u] for u in (*range(2, 21), *range(22, 31), 45, 49)} == {loaded["run_id"]}
    listed_changes = listed(job, loaded["run_id"])
    assert [(c["user_id"], c["change"]) for c in listed_changes] == sorted(
        [(1, "removed"), (21, "removed"), (45, "added"), (49, "added")]
        + [(u, "changed") for u in (*range(2, 21), *range(22, 31))])
    first_values = job.as_of(first["run_id"], limit=100)["features"]
    assert [f["user_name"] for f in first_values] == [f"User {u}" for u in range(1, 41)]
    again = on(job, second)  # the same input again: nothing read, nothing written
    assert again["status"] == "unchanged"


def test_most_users_changed_but_a_key_held_on_the_table_changes_only_them(
        job: Service, env: dict[str, str], tmp_path: Path, publications: list[PostgresPublication]) -> None:
    job.trigger(Trigger())
    schema = job.settings.schema
    conn = dbmod.connect(job.settings.db)
    try:
        conn.run(f'CREATE TABLE "{schema}".notes (user_id bigint REFERENCES "{schema}".user_features '
                 "ON DELETE CASCADE, note text)")
        conn.run(f"INSERT INTO \"{schema}\".notes VALUES (40, 'kept')")
        renamed = data(tmp_path, "renamed", {u: f"User {u}" for u in range(1, 41)} | {u: f"R{u}" for u in range(1, 31)})
        loaded = on(job, renamed)
        assert loaded["changes"] == {"added": 0, "changed": 30, "removed": 0, "unchanged": 10}
        assert publications[-1].wrote == "changes"
        assert conn.run(f'SELECT user_id, note FROM "{schema}".notes') == [[40, "kept"]]
        assert table(job) == reference(env, renamed)
    finally:
        dbmod.close_quietly(conn)


@pytest.mark.parametrize("after", [0, 1], ids=["in the first rows", "while the history is written"])
def test_features_that_fail_while_read_ahead_leave_the_table_and_its_history(
        job: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """A reload by digests reads its first rows before any COPY (to choose how to write them), and reads
    ahead while the history is written: our error there is raised as ours (not the database's, which
    reads as 'retry later'), the table and the history stay as they were, the run is recorded failed."""
    from etl_core import features as counting
    from etl_core.errors import EtlError

    job.trigger(Trigger())
    before, history = table(job), f'SELECT count(*) FROM "{job.settings.schema}".user_features_history'
    real = counting.feature_batches

    def failing(*args: Any) -> Any:
        batches = real(*args)
        try:
            for _ in range(after):
                yield next(batches)
            raise OSError("boom while reading ahead")  # not the connection's, though an OSError
        finally:
            batches.close()

    monkeypatch.setattr(counting, "feature_batches", failing)
    if after:  # the first batch decides (every user renamed: rewrite all); the next fails while read ahead
        ending, read_ahead = PostgresPublication._end_every_version, postgres._ahead
        calls: list[int] = []

        def slow_ending(self: PostgresPublication) -> int:
            time.sleep(0.5)
            return ending(self)

        def ahead(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return read_ahead(*args, **kwargs)

        monkeypatch.setattr(postgres, "LOOK_AHEAD_ROWS", 1)
        monkeypatch.setattr(PostgresPublication, "_end_every_version", slow_ending)
        monkeypatch.setattr(postgres, "_ahead", ahead)
    renamed = data(tmp_path, "renamed", {u: f"R{u}" for u in range(1, 41)})
    with pytest.raises(EtlError, match="unexpected OSError: boom") as caught:
        on(job, renamed)
    assert table(job) == before
    assert not after or calls == [1]
    conn = dbmod.connect(job.settings.db)
    try:
        assert conn.run(history) == [[0]]
        [[status]] = conn.run(f'SELECT status FROM "{job.settings.schema}".etl_runs WHERE id = :id',
                              id=caught.value.details["run_id"])
        assert status == "failed"
    finally:
        dbmod.close_quietly(conn)
    monkeypatch.undo()
    assert on(job, renamed)["changes"]["changed"] == 40
