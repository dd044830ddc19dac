"""The store's contract, held by both stores: the real PostgreSQL one and the in-memory fake that the
quick tier runs the pipeline on.  The same tests run against each, so the fake cannot drift."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from etl_core.config import RetentionSettings
from etl_core.errors import LoadError, RunInProgress
from etl_core.features.kernels import FEATURES_SCHEMA
from etl_core.guard import Volume
from etl_core.reading.extract import VIOLATION_SCHEMA
from etl_core.store import Store
from etl_core.store.memory import MemoryStore
from etl_core.store.postgres import PostgresStore


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit), "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    settings = request.getfixturevalue("settings")
    made = PostgresStore(settings.db, settings.schema)
    yield made
    made.close()


def features_of(store: Store) -> list[tuple[int, int, int]]:
    """(user_id, total_experiments, run_id) of every row, by user."""
    if isinstance(store, MemoryStore):
        rows = [] if store.features is None else store.features.select(
            ["user_id", "total_experiments", "run_id"]).to_pylist()
        return sorted((r["user_id"], r["total_experiments"], r["run_id"]) for r in rows)
    assert isinstance(store, PostgresStore)
    with store.connection() as conn:
        table = f'"{store.schema}".user_features'
        return [tuple(r) for r in conn.run(f"SELECT user_id, total_experiments, run_id FROM {table} ORDER BY 1")]


def features(*users: tuple[int, int]) -> list[pa.RecordBatch]:
    """Feature rows for (user_id, total_experiments) pairs."""
    ids, totals = [u for u, _ in users], [t for _, t in users]
    return pa.table({
        "user_id": ids, "user_name": [f"user {u}" for u in ids], "total_experiments": totals,
        "most_common_compounds": [None] * len(ids), "most_common_compound_ids": [None] * len(ids),
        "average_experiments": [1.0] * len(ids)}, schema=FEATURES_SCHEMA).to_batches()


def rejects(n: int) -> pa.Table:
    return pa.table({"file": ["users.csv"] * n, "line": list(range(2, n + 2)), "column": ["name"] * n,
                     "value": [""] * n, "rule": ["empty_value"] * n, "raw": ["1,,x,2023-01-01"] * n},
                    schema=VIOLATION_SCHEMA)


def publish(store: Store, *users: tuple[int, int], bad_rows: int = 0) -> int:
    with store.run(policy="quarantine", source="here") as run, run.publishing() as publication:
        written = publication.replace_features(features(*users))
        publication.store_rejects(rejects(bad_rows))
        publication.finish(status="partial" if bad_rows else "succeeded", files={"users.csv": {"rows_read": 3}},
                           users_written=written, seconds={"load": 0.1})
    return run.run_id


def test_a_publication_commits_features_rejects_and_the_run_together(store: Store) -> None:
    run_id = publish(store, (1, 2), (2, 0), bad_rows=2)
    assert features_of(store) == [(1, 2, run_id), (2, 0, run_id)]
    record = store.get_run(run_id)
    assert record is not None
    assert {k: record[k] for k in ("run_id", "status", "policy", "data_dir", "users_written", "rejects")} == {
        "run_id": run_id, "status": "partial", "policy": "quarantine", "data_dir": "here",
        "users_written": 2, "rejects": 2}
    assert record["files"] == {"users.csv": {"rows_read": 3}} and record["seconds"] == {"load": 0.1}
    assert record["started_at"] <= record["finished_at"]


def test_the_next_publication_replaces_every_row_and_volume_counts_them(store: Store) -> None:
    publish(store, (1, 2), (2, 1), (3, 4))
    with store.run(policy="strict", source="here") as run, run.publishing() as publication:
        assert publication.volume() == Volume(users=3, experiments=7)
        publication.replace_features(features((2, 5), (4, 1)))
        publication.finish(status="succeeded", files={}, users_written=2, seconds={})
    assert features_of(store) == [(2, 5, run.run_id), (4, 1, run.run_id)]


def test_lock_keeps_new_foreign_keys_off_the_table_until_the_commit(store: Store) -> None:
    """What a forced run takes instead of volume(), which counts: the same lock, and no count."""
    publish(store, (1, 2))
    with store.run(policy="strict", source="here") as run, run.publishing() as publication:
        publication.lock()
        if isinstance(store, PostgresStore):
            with store.connection() as other:
                held = other.run("SELECT mode FROM pg_locks WHERE granted AND relation = "
                                 "CAST(:t AS regclass)", t=f'"{store.schema}".user_features')
            assert ["RowExclusiveLock"] == [mode for [mode] in held]
        publication.replace_features(features((1, 3)))
        publication.finish(status="succeeded", files={}, users_written=1, seconds={})
    assert features_of(store) == [(1, 3, run.run_id)]


def test_an_empty_store_holds_no_volume(store: Store) -> None:
    with store.run(policy="strict", source="here") as run, run.publishing() as publication:
        assert publication.volume() == Volume(users=0, experiments=0)
        publication.finish(status="succeeded", files={}, users_written=0, seconds={})


def test_an_error_inside_a_publication_changes_nothing_and_the_run_can_be_failed(store: Store) -> None:
    first = publish(store, (1, 2))
    with store.run(policy="strict", source="here") as run:
        with pytest.raises(RuntimeError, match="boom"), run.publishing() as publication:
            publication.replace_features(features((7, 7)))
            publication.finish(status="succeeded", files={}, users_written=1, seconds={})
            raise RuntimeError("boom")
        assert features_of(store) == [(1, 2, first)]
        assert store.get_run(run.run_id)["status"] == "running"  # type: ignore[index]
        run.fail({"code": "internal_error", "message": "boom"})
    record = store.get_run(run.run_id)
    assert record is not None and (record["status"], record["error"]["code"]) == ("failed", "internal_error")


def test_duplicate_users_are_a_load_error_and_change_nothing(store: Store) -> None:
    first = publish(store, (1, 2))
    with store.run(policy="strict", source="here") as run:
        with pytest.raises(LoadError, match="23505"), run.publishing() as publication:
            publication.replace_features(features((5, 1), (5, 2)))
    assert features_of(store) == [(1, 2, first)]


def test_a_second_run_while_one_holds_the_lock_is_refused_naming_it(store: Store) -> None:
    with store.run(policy="strict", source="here") as run:
        other = store if isinstance(store, MemoryStore) else PostgresStore(store.settings, store.schema)  # type: ignore[attr-defined]
        try:
            with pytest.raises(RunInProgress) as refused, other.run(policy="strict", source="there"):
                pass
        finally:
            if other is not store:
                other.close()
    assert refused.value.details["running_run_id"] == run.run_id
    with store.run(policy="strict", source="here"):  # released at the end of the block
        pass


def test_a_run_left_running_is_marked_abandoned_by_the_next(store: Store) -> None:
    with store.run(policy="strict", source="here") as cut_off:
        pass  # never finished nor failed: what a process killed mid-run leaves
    with store.run(policy="strict", source="here") as run:
        assert run.run_id == cut_off.run_id + 1
    record = store.get_run(cut_off.run_id)
    assert record is not None and (record["status"], record["error"]["code"]) == ("failed", "abandoned")


@pytest.mark.parametrize("run_id", [0, -1, 424242, 2**63, 99999999999999999999])
def test_an_unknown_run_is_none(store: Store, run_id: int) -> None:
    publish(store, (1, 1))
    assert store.get_run(run_id) is None


def test_a_store_that_never_ran_knows_no_run_and_is_healthy(store: Store) -> None:
    assert store.get_run(1) is None
    assert store.health()["status"] == "ok"


def test_seconds_can_be_recorded_after_the_publication(store: Store) -> None:
    with store.run(policy="strict", source="here") as run:
        with run.publishing() as publication:
            publication.finish(status="succeeded", files={}, users_written=0, seconds={"load": 1.0})
        run.analyze()
        run.record_seconds({"load": 1.5, "total": 2.0})
    record = store.get_run(run.run_id)
    assert record is not None and record["seconds"] == {"load": 1.5, "total": 2.0}


# Run history, rejects and freshness: what /runs, /runs/{id}/rejects and /health read.

def finished_run(store: Store, status: str, *, bad_rows: int = 0) -> int:
    """A run that ends with ``status`` (failed: recorded as failed, nothing published)."""
    with store.run(policy="quarantine", source="here") as run:
        if status == "failed":
            run.fail({"type": "ContractViolation", "code": "contract_violation", "message": "bad"})
            return run.run_id
        with run.publishing() as publication:
            publication.replace_features(features((1, 1)))
            publication.store_rejects(rejects(bad_rows))
            publication.finish(status=status, files={}, users_written=1, seconds={})
    return run.run_id


def test_runs_are_listed_newest_first_and_filtered(store: Store) -> None:
    ids = [finished_run(store, status) for status in ("succeeded", "failed", "partial", "failed", "succeeded")]
    listed = store.list_runs(limit=10)
    assert [r["run_id"] for r in listed] == ids[::-1]
    assert listed[0] == store.get_run(ids[-1])
    assert [r["run_id"] for r in store.list_runs(limit=10, status="failed")] == [ids[3], ids[1]]
    assert [r["run_id"] for r in store.list_runs(limit=2, before=ids[3])] == [ids[2], ids[1]]
    assert [r["run_id"] for r in store.list_runs(limit=10, status="succeeded", before=ids[4])] == [ids[0]]
    assert store.list_runs(limit=10, before=ids[0]) == []
    assert store.list_runs(limit=10, status="running") == []
    assert store.list_runs(limit=10, before=2**70)[0]["run_id"] == ids[-1]


def test_a_store_that_never_ran_lists_nothing(store: Store) -> None:
    assert store.list_runs(limit=5) == []
    assert store.rejects(1, limit=5, max_chars=200) == []
    assert store.last_confirmed() is None


def test_rejects_are_numbered_in_stored_order_and_paged_by_seq(store: Store) -> None:
    first = finished_run(store, "partial", bad_rows=5)
    second = finished_run(store, "partial", bad_rows=3)
    page = store.rejects(first, limit=2, max_chars=200)
    assert page == [{"seq": 1, "file": "users.csv", "line": 2, "column": "name", "value": "", "rule": "empty_value",
                     "raw": "1,,x,2023-01-01", "raw_sha256": None}, {**page[0], "seq": 2, "line": 3}]
    assert [r["line"] for r in store.rejects(first, limit=10, after=2, max_chars=200)] == [4, 5, 6]
    assert [r["seq"] for r in store.rejects(second, limit=10, max_chars=200)] == [1, 2, 3]
    assert store.rejects(first, limit=10, after=5, max_chars=200) == []
    assert store.get_run(first)["rejects"] == 5  # type: ignore[index]


def test_a_long_rejected_text_is_cut_as_answers_cut_it(store: Store) -> None:
    from etl_core.errors import shorten

    long = "x" * 1000 + "é"
    bad = pa.table({"file": ["users.csv"], "line": [2], "column": ["name"], "value": [long], "rule": ["empty_value"],
                    "raw": [None]}, schema=VIOLATION_SCHEMA)
    with store.run(policy="quarantine", source="here") as run, run.publishing() as publication:
        publication.store_rejects(bad)
        publication.finish(status="partial", files={}, users_written=0, seconds={})
    [row] = store.rejects(run.run_id, limit=1, max_chars=200)
    assert row["value"] == shorten(long, 200) and row["raw"] is None
    assert store.rejects(run.run_id, limit=1, max_chars=2000)[0]["value"] == long


def test_the_last_confirming_run_and_its_age(store: Store) -> None:
    assert store.last_confirmed() is None
    confirmed = finished_run(store, "partial", bad_rows=1)
    finished_run(store, "failed")
    last = store.last_confirmed()
    assert last is not None
    assert (last["run_id"], last["status"]) == (confirmed, "partial")
    assert last["finished_at"] == store.get_run(confirmed)["finished_at"]  # type: ignore[index]
    assert 0 <= last["age_seconds"] < 60
    newer = finished_run(store, "succeeded")
    assert store.last_confirmed()["run_id"] == newer  # type: ignore[index]


def test_a_rejects_table_from_before_numbering_is_numbered_on_first_use(settings: Any, db: Any) -> None:
    """Deployments made before rejects had a seq: the first read (or run) numbers each run's rows in
    stored order, and pages them like any other."""
    from etl_core.store import migrations, sql

    made = PostgresStore(settings.db, settings.schema)
    try:
        publish(made, (1, 1))  # creates the tables
        table = sql.q(settings.schema, sql.REJECTS)
        db.run(f"DROP TABLE {table}")
        db.run(f"DROP TABLE {sql.q(settings.schema, migrations.HISTORY)}")  # they predate the history too
        db.run(f"CREATE TABLE {table} (run_id bigint NOT NULL, file text NOT NULL, line bigint, column_name text, "
               "value text, rule text NOT NULL, raw text)")
        db.run(f"CREATE INDEX etl_rejects_run_id ON {table} (run_id)")
        for line in (7, 3, 5):
            db.run(f"INSERT INTO {table} VALUES (1, 'users.csv', :line, 'name', '', 'empty_value', 'r')", line=line)
        assert made.get_run(1)["rejects"] == 3  # type: ignore[index]
        assert [(r["seq"], r["line"]) for r in made.rejects(1, limit=10, max_chars=200)] == [(1, 7), (2, 3), (3, 5)]
        indexes = {name for [name] in db.run("SELECT indexname FROM pg_indexes WHERE schemaname = :s "
                                             "AND tablename = 'etl_rejects'", s=settings.schema)}
        assert indexes == {"etl_rejects_pkey"}
        second = publish(made, (1, 1), bad_rows=2)  # a run after the upgrade numbers its own from 1
        assert [r["seq"] for r in made.rejects(second, limit=10, max_chars=200)] == [1, 2]
    finally:
        made.close()


def age(store: Store, run_id: int, days: float) -> None:
    """Make run ``run_id`` look finished ``days`` days ago (by the store's clock)."""
    if isinstance(store, MemoryStore):
        when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)
        store.runs[run_id]["finished_at"] = when.isoformat()
        return
    assert isinstance(store, PostgresStore)
    with store.connection() as conn:
        conn.run(f'UPDATE "{store.schema}".etl_runs SET finished_at = clock_timestamp() - make_interval(secs => :s) '
                 "WHERE id = :id", s=days * 86400, id=run_id)


def purge(store: Store, **retention: Any) -> dict[str, Any]:
    """The purge a new run makes once its outcome is recorded."""
    with store.run(policy="quarantine", source="here") as run:
        run.fail({"type": "T", "code": "c", "message": "m"})
        return run.purge(RetentionSettings(**retention))


def test_old_rejects_go_young_ones_stay_and_a_run_goes_once_its_rejects_are_gone(store: Store) -> None:
    old = finished_run(store, "partial", bad_rows=3)
    young = finished_run(store, "partial", bad_rows=2)
    age(store, old, 30.01)
    age(store, young, 29.9)
    assert purge(store, rejects_days=30, runs_days=365) == {"rejects": 3, "history": 0, "runs": 0, "backlog": False}
    assert store.rejects(old, limit=10, max_chars=9) == [] and store.get_run(old)["rejects"] == 0  # type: ignore[index]
    assert [r["seq"] for r in store.rejects(young, limit=10, max_chars=9)] == [1, 2]
    # rejects first, then the runs: one older than its own retention goes once its rejects are gone (and
    # the history no longer answers for it: a run that published is kept while the history keeps its features)
    assert purge(store, rejects_days=30, runs_days=30)["runs"] == 0
    assert purge(store, rejects_days=30, runs_days=30, history_days=30) == {
        "rejects": 0, "history": 0, "runs": 1, "backlog": False}
    assert store.get_run(old) is None and store.get_run(young) is not None
    assert [r["seq"] for r in store.rejects(young, limit=10, max_chars=9)] == [1, 2]


def test_the_runs_unchanged_health_and_rejects_need_are_kept_however_old(store: Store) -> None:
    loaded = finished_run(store, "succeeded")  # the last that loaded: 'unchanged' compares with it
    confirmed = finished_run(store, "unchanged")  # the last that confirmed: /health reports it
    failed = finished_run(store, "failed")
    for run_id in (loaded, confirmed, failed):
        age(store, run_id, 400)
    assert purge(store, runs_days=365)["runs"] == 1  # the failed run; not the purging run itself (young)
    assert store.get_run(failed) is None
    assert {loaded, confirmed} <= {r["run_id"] for r in store.list_runs(limit=10)}
    with store.run(policy="quarantine", source="here") as run:
        assert run.last_loaded is not None and run.last_loaded.run_id == loaded
    assert store.last_confirmed()["run_id"] == confirmed  # type: ignore[index]
    kept = finished_run(store, "partial", bad_rows=1)
    newer = finished_run(store, "succeeded")
    age(store, kept, 400)
    assert purge(store, runs_days=365, rejects_days=500)["runs"] == 2  # loaded and confirmed are old news now
    assert store.get_run(kept) is not None and store.get_run(newer) is not None


def test_a_backlog_larger_than_a_step_is_purged_a_bounded_part_per_run(store: Store) -> None:
    runs = [finished_run(store, "partial", bad_rows=4) for _ in range(3)]
    for run_id in runs:
        age(store, run_id, 31)
    bounded = {"step_rows": 3, "max_steps": 2, "runs_days": 3650}
    assert purge(store, **bounded) == {"rejects": 6, "history": 0, "runs": 0, "backlog": True}
    assert sum(store.get_run(r)["rejects"] > 0 for r in runs) >= 1  # type: ignore[index]
    # the last step was full: there may be more (there is not, as the next run finds)
    assert purge(store, **bounded) == {"rejects": 6, "history": 0, "runs": 0, "backlog": True}
    assert purge(store, **bounded) == {"rejects": 0, "history": 0, "runs": 0, "backlog": False}
    assert all(store.rejects(r, limit=10, max_chars=9) == [] for r in runs)


def test_rejects_stored_without_raw_answer_only_their_hash(store: Store) -> None:
    from etl_core.reading.violations import without_raw

    with store.run(policy="quarantine", source="here") as run, run.publishing() as publication:
        publication.replace_features(features((1, 1)))
        publication.store_rejects(without_raw(rejects(2)))
        publication.finish(status="partial", files={}, users_written=1, seconds={})
    found = store.rejects(run.run_id, limit=10, max_chars=200)
    digest = hashlib.sha256(b"1,,x,2023-01-01").hexdigest()
    assert found == [{"seq": seq, "file": "users.csv", "line": seq + 1, "column": "name", "value": None,
                      "rule": "empty_value", "raw": None, "raw_sha256": digest} for seq in (1, 2)]


# Change-only publishing and the features' history (issue 24): both stores.

def named(*users: tuple[int, int, str]) -> list[pa.RecordBatch]:
    """Feature rows for (user_id, total_experiments, user_name) triples."""
    ids = [u for u, _, _ in users]
    return pa.table({
        "user_id": ids, "user_name": [n for _, _, n in users], "total_experiments": [t for _, t, _ in users],
        "most_common_compounds": [None] * len(ids), "most_common_compound_ids": [None] * len(ids),
        "average_experiments": [1.0] * len(ids)}, schema=FEATURES_SCHEMA).to_batches()


def load(store: Store, batches: list[pa.RecordBatch]) -> tuple[int, dict[str, int] | None]:
    with store.run(policy="strict", source="here") as run, run.publishing() as publication:
        written = publication.replace_features(batches)
        publication.finish(status="succeeded", files={}, users_written=written, seconds={})
    return run.run_id, publication.changes


def test_only_added_changed_and_removed_users_are_written_and_counted(store: Store) -> None:
    first, counts = load(store, features((1, 1), (2, 2), (3, 3)))
    assert counts == {"added": 3, "changed": 0, "removed": 0, "unchanged": 0}
    second, counts = load(store, features((1, 1), (2, 5), (4, 4)))
    assert counts == {"added": 1, "changed": 1, "removed": 1, "unchanged": 1}
    # the unchanged row still names the run that wrote it
    assert features_of(store) == [(1, 1, first), (2, 5, second), (4, 4, second)]
    record = store.get_run(second)
    assert record is not None and record["changes"] == counts and record["users_written"] == 3
    third, counts = load(store, features((1, 1), (2, 5), (4, 4)))
    assert counts == {"added": 0, "changed": 0, "removed": 0, "unchanged": 3}
    assert features_of(store) == [(1, 1, first), (2, 5, second), (4, 4, second)]
    assert store.changes(third, limit=10) == []


def test_a_null_becoming_a_value_and_back_is_a_change(store: Store) -> None:
    """IS DISTINCT FROM, not =: a NULL compared with a value is a difference, two NULLs are not."""
    base = features((1, 1))[0]
    with_ids = base.set_column(4, "most_common_compound_ids", pa.array([[3, 1]], pa.list_(pa.int64())))
    load(store, [base])
    assert load(store, [with_ids])[1] == {"added": 0, "changed": 1, "removed": 0, "unchanged": 0}
    assert load(store, [with_ids])[1] == {"added": 0, "changed": 0, "removed": 0, "unchanged": 1}
    reordered = base.set_column(4, "most_common_compound_ids", pa.array([[1, 3]], pa.list_(pa.int64())))
    assert load(store, [reordered])[1] == {"added": 0, "changed": 1, "removed": 0, "unchanged": 0}
    assert load(store, [base])[1] == {"added": 0, "changed": 1, "removed": 0, "unchanged": 0}


def test_changes_name_each_user_with_before_and_after(store: Store) -> None:
    first, _ = load(store, named((1, 1, "Ann"), (2, 2, "Bo"), (3, 3, "Cy")))
    second, _ = load(store, named((1, 1, "Ann"), (2, 2, "Bob"), (4, 4, "Di")))
    third, _ = load(store, named((1, 1, "Ann"), (2, 2, "Bobby"), (4, 4, "Di")))

    def values(name: str, total: int) -> dict[str, Any]:
        return {"user_name": name, "total_experiments": total, "most_common_compounds": None,
                "most_common_compound_ids": None, "average_experiments": 1.0}

    assert store.changes(second, limit=10) == [
        {"user_id": 2, "change": "changed", "before": values("Bo", 2), "after": values("Bob", 2)},
        {"user_id": 3, "change": "removed", "before": values("Cy", 3), "after": None},
        {"user_id": 4, "change": "added", "before": None, "after": values("Di", 4)},
    ]  # Bob's "after" of run 2 is in the history now (run 3 ended it): still answered
    assert [c["user_id"] for c in store.changes(first, limit=10)] == [1, 2, 3]
    assert [c["change"] for c in store.changes(first, limit=10)] == ["added"] * 3
    assert store.changes(second, limit=2, after=2) == store.changes(second, limit=10)[1:3]
    assert store.changes(third, limit=10) == [
        {"user_id": 2, "change": "changed", "before": values("Bob", 2), "after": values("Bobby", 2)}]
    assert store.changes(424242, limit=10) == []


def test_the_features_as_of_each_run_are_those_it_left(store: Store) -> None:
    first, _ = load(store, features((1, 1), (2, 2), (3, 3)))
    failed = finished_run_failed(store)
    second, _ = load(store, features((1, 1), (2, 5), (4, 4)))
    third, _ = load(store, features((2, 6), (4, 4), (5, 5)))

    def as_of(run_id: int, **page: int) -> list[tuple[int, int, int]]:
        return [(r["user_id"], r["total_experiments"], r["run_id"])
                for r in store.as_of(run_id, limit=page.get("limit", 100), after=page.get("after", 0))]

    assert as_of(first) == [(1, 1, first), (2, 2, first), (3, 3, first)]
    assert as_of(failed) == as_of(first)  # a failed run left the features as they were
    assert as_of(second) == [(1, 1, first), (2, 5, second), (4, 4, second)]
    assert as_of(third) == [(2, 6, third), (4, 4, second), (5, 5, third)] == features_of(store)
    assert as_of(second, limit=2, after=1) == [(2, 5, second), (4, 4, second)]
    assert as_of(second, limit=2, after=4) == []
    assert store.history_kept_from() == 0


def finished_run_failed(store: Store) -> int:
    with store.run(policy="strict", source="here") as run:
        run.fail({"type": "ContractViolation", "code": "contract_violation", "message": "bad"})
    return run.run_id


def test_a_publication_rolled_back_leaves_no_history(store: Store) -> None:
    first, _ = load(store, features((1, 1), (2, 2)))
    with store.run(policy="strict", source="here") as run:
        with pytest.raises(RuntimeError, match="boom"), run.publishing() as publication:
            publication.replace_features(features((1, 9)))
            raise RuntimeError("boom")
        run.fail({"code": "internal_error", "message": "boom"})
    assert store.changes(run.run_id, limit=10) == []
    assert store.as_of(run.run_id, limit=10) == store.as_of(first, limit=10)
    assert store.get_run(run.run_id)["changes"] is None  # type: ignore[index]
