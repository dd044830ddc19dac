"""Publishing keeps the table readers depend on: its OID, views, grants, comment, indexes and
triggers survive every run; readers never wait and never see a half-written table; foreign keys
that other tables hold on it act as declared and never touch a user still in the data; a valid
export cut short is refused unless forced.  All against the real PostgreSQL server."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from etl_core import pipeline
from etl_core.config import Settings, db_settings
from etl_core.errors import ContractViolation, EtlError, ForeignKeyConflict, LoadRefused
from etl_core.store import db as dbmod
from etl_core.store import postgres as postgres_store
from etl_core.store.postgres import PostgresPublication
from tests.containers import report
from tests.helpers import GOOD, features_dump, features_rows, write_files

FOUR_USERS = {
    "users.csv": GOOD["users.csv"] + "4,Dave,dave@example.com,2023-04-01\n",
    "user_experiments.csv": GOOD["user_experiments.csv"] + "4,4,3,5\n5,3,1,7\n",
}


def run_on(env: dict[str, str], data: Path, **trigger: Any) -> dict[str, Any]:
    return pipeline.run(Settings.from_env({**env, "DATA_DIR": str(data)}), pipeline.Trigger(**trigger))


def oid(db: Any, schema: str) -> int:
    [[found]] = db.run("SELECT CAST(CAST(:t AS regclass) AS oid)", t=f'"{schema}".user_features')
    return int(found)


@pytest.fixture
def reader_role(db: Any, schema: str) -> Any:
    """A read-only login role, dropped afterwards."""
    role = f"reader_{schema}"
    db.run(f'CREATE ROLE "{role}" LOGIN')
    yield role
    db.run(f'DROP OWNED BY "{role}"')
    db.run(f'DROP ROLE "{role}"')


def add_what_readers_add(db: Any, schema: str, role: str) -> None:
    s = f'"{schema}"'
    db.run(f"CREATE VIEW {s}.dashboard AS SELECT user_name, total_experiments FROM {s}.user_features")
    db.run(f'GRANT USAGE ON SCHEMA {s} TO "{role}"')
    db.run(f'GRANT SELECT ON {s}.user_features, {s}.dashboard TO "{role}"')
    db.run(f"COMMENT ON TABLE {s}.user_features IS 'per-user features, refreshed by the ETL'")
    db.run(f"CREATE INDEX by_name ON {s}.user_features (user_name)")
    db.run(f"CREATE TABLE {s}.audit (n bigint)")
    db.run(f"CREATE FUNCTION {s}.count_rows() RETURNS trigger LANGUAGE plpgsql AS "
           f"$$ BEGIN INSERT INTO {s}.audit SELECT count(*) FROM {s}.user_features; RETURN NULL; END $$")
    db.run(f"CREATE TRIGGER after_load AFTER INSERT ON {s}.user_features "
           f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.count_rows()")


def assert_what_readers_added_works(db: Any, schema: str, database_url: str, role: str) -> None:
    """add_what_readers_add's view, grant, comment, index and trigger, after a load of FOUR_USERS."""
    assert what_readers_see(database_url, schema, role) == [["Alice", 2], ["Bob", 1], ["Carol", 1], ["Dave", 1]]
    assert db.run("SELECT obj_description(CAST(:t AS regclass), 'pg_class')", t=f'"{schema}".user_features') == [
        ["per-user features, refreshed by the ETL"]]
    assert db.run("SELECT indexname FROM pg_indexes WHERE schemaname = :s AND tablename = 'user_features' "
                  "ORDER BY 1", s=schema) == [["by_name"], ["user_features_pkey"]]
    assert db.run(f'SELECT n FROM "{schema}".audit') == [[4]]  # the reader's trigger ran on the new rows


def what_readers_see(database_url: str, schema: str, role: str) -> list[Any]:
    """The dashboard view's rows, read as the read-only role."""
    conn = dbmod.connect(db_settings({"DATABASE_URL": database_url.replace("postgres@", f"{role}@", 1)}))
    try:
        return conn.run(f'SELECT user_name, total_experiments FROM "{schema}".dashboard ORDER BY user_name')
    finally:
        dbmod.close_quietly(conn)


def test_views_grants_comment_indexes_and_triggers_survive_and_see_the_new_rows(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str, database_url: str, reader_role: str) -> None:
    run_on(env, write_files(tmp_path / "first", {}))
    before = oid(db, schema)
    add_what_readers_add(db, schema, reader_role)
    assert what_readers_see(database_url, schema, reader_role) == [["Alice", 2], ["Bob", 1], ["Carol", 0]]

    second = run_on(env, write_files(tmp_path / "second", FOUR_USERS))

    assert second["status"] == "succeeded"
    assert oid(db, schema) == before
    assert_what_readers_added_works(db, schema, database_url, reader_role)
    [[run_ids]] = db.run(f'SELECT array_agg(DISTINCT run_id) FROM "{schema}".user_features')
    assert run_ids == [second["run_id"]]


def test_a_run_that_fails_after_writing_leaves_everything_as_it_was(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str, database_url: str, reader_role: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    run_on(env, write_files(tmp_path / "first", {}))
    before_oid, before_rows = oid(db, schema), features_dump(db, schema)
    add_what_readers_add(db, schema, reader_role)

    def failing(*args: Any) -> None:
        raise RuntimeError("boom after the features were written")

    monkeypatch.setattr(PostgresPublication, "store_rejects", failing)
    with pytest.raises(EtlError, match="boom"):
        run_on(env, write_files(tmp_path / "second", FOUR_USERS))
    monkeypatch.undo()
    with pytest.raises(ContractViolation):  # and one that fails in extract
        run_on(env, write_files(tmp_path / "bad", {"users.csv": "user_id,name,email,signup_date\nx,,,\n"}))

    assert (oid(db, schema), features_dump(db, schema)) == (before_oid, before_rows)
    assert what_readers_see(database_url, schema, reader_role) == [["Alice", 2], ["Bob", 1], ["Carol", 0]]
    assert db.run(f'SELECT n FROM "{schema}".audit') == []
    statuses = db.run(f'SELECT status FROM "{schema}".etl_runs ORDER BY id')
    assert statuses == [["succeeded"], ["failed"], ["failed"]]


def test_the_table_is_analyzed_and_holds_the_experiments_the_guard_counts(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    summary = run_on(env, write_files(tmp_path, FOUR_USERS))
    [[analyzed, total]] = db.run(
        f"SELECT (SELECT last_analyze FROM pg_stat_user_tables WHERE schemaname = :s AND relname = 'user_features'),"
        f' (SELECT sum(total_experiments) FROM "{schema}".user_features)', s=schema)
    assert analyzed is not None
    assert total == summary["files"]["user_experiments.csv"]["rows_accepted"] == 5


# --- foreign keys that other tables hold on the features table -------------------------------

def add_referencing_table(db: Any, schema: str, action: str) -> None:
    db.run(f'CREATE TABLE "{schema}".notes (id int PRIMARY KEY, user_id bigint '
           f'REFERENCES "{schema}".user_features (user_id) {action})')
    db.run(f'INSERT INTO "{schema}".notes VALUES (1, 1), (3, 3)')


WITHOUT_CAROL = {
    "users.csv": "user_id,name,email,signup_date\n1,Alice,alice@example.com,2023-01-01\n"
                 "2,Bob,bob@example.com,2023-02-01\n4,Dave,dave@example.com,2023-04-01\n",
    "user_experiments.csv": "experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
                            "1,1,3,10\n2,2,1;3,20\n3,4,2,5\n",
}


def test_a_key_the_new_rows_would_break_fails_the_run_and_changes_nothing(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    run_on(env, write_files(tmp_path / "first", {}))
    add_referencing_table(db, schema, "")  # NO ACTION: Carol (3) must stay
    before = features_dump(db, schema)
    with pytest.raises(ForeignKeyConflict, match=r'notes.*\(user_id\)=\(3\)') as info:
        run_on(env, write_files(tmp_path / "second", WITHOUT_CAROL))
    assert info.value.code == "foreign_key_conflict"
    assert features_dump(db, schema) == before
    assert db.run(f'SELECT id, user_id FROM "{schema}".notes ORDER BY id') == [[1, 1], [3, 3]]
    [[status, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs ORDER BY id DESC LIMIT 1')
    assert (status, error["code"]) == ("failed", "foreign_key_conflict")
    # with Carol still in the data, the run goes through and the referencing rows stay
    assert run_on(env, write_files(tmp_path / "third", FOUR_USERS))["status"] == "succeeded"
    assert db.run(f'SELECT id, user_id FROM "{schema}".notes ORDER BY id') == [[1, 1], [3, 3]]
    assert features_rows(db, schema)[0] == ("Alice", 2, "Compound B", 1.25)


@pytest.mark.parametrize("binary", [True, False], ids=["binary COPY", "CSV COPY"])
@pytest.mark.parametrize(("action", "notes_after"), [
    ("ON DELETE CASCADE", [[1, 1]]),
    ("ON DELETE SET NULL", [[1, 1], [3, None]]),
])
def test_cascade_and_set_null_keys_touch_only_users_that_are_gone(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str, action: str, notes_after: list[Any], binary: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both encoders (CSV is what a features table whose description the binary one does not fit gets)."""
    monkeypatch.setattr(postgres_store, "_BINARY", binary)
    first = run_on(env, write_files(tmp_path / "first", {}))
    add_referencing_table(db, schema, action)
    before = oid(db, schema)
    summary = run_on(env, write_files(tmp_path / "second", WITHOUT_CAROL))
    assert summary["users_written"] == 3
    assert summary["changes"] == {"added": 1, "changed": 1, "removed": 1, "unchanged": 1}
    assert oid(db, schema) == before
    # Alice (1) is still in the data, changed: her note stays; Carol (3) is gone: the key acts as declared
    assert db.run(f'SELECT id, user_id FROM "{schema}".notes ORDER BY id') == notes_after
    rows = db.run(f'SELECT user_id, most_common_compounds, run_id FROM "{schema}".user_features ORDER BY 1')
    # Bob (2) did not change: his row is untouched and still names the run that wrote it
    assert rows == [[1, "Compound C", summary["run_id"]], [2, "Compound A;Compound C", first["run_id"]],
                    [4, "Compound B", summary["run_id"]]]


# --- readers during a run ----------------------------------------------------------------------

class Sampler(threading.Thread):
    """Another session that runs ``SELECT count(*), min(run_id), max(run_id)`` every 10 ms and keeps
    each answer with how long it took."""

    def __init__(self, database_url: str, schema: str) -> None:
        super().__init__(name="reader", daemon=True)
        self.conn = dbmod.connect(db_settings({"DATABASE_URL": database_url}))
        self.query = f'SELECT count(*), min(run_id), max(run_id) FROM "{schema}".user_features'
        self.seen: list[tuple[int, int, int]] = []
        self.waits: list[float] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(0.010):
                started = time.perf_counter()
                [[count, low, high]] = self.conn.run(self.query)
                self.waits.append(time.perf_counter() - started)
                self.seen.append((count, low, high))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            dbmod.close_quietly(self.conn)


def test_readers_never_wait_and_see_the_old_rows_until_the_commit_then_the_new(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str, database_url: str,
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    first = run_on(env, write_files(tmp_path / "first", {}))
    old = (3, first["run_id"], first["run_id"])
    # hold the run's transaction open for a while after its rows are written, so readers meet it
    real = PostgresPublication.replace_features
    written = threading.Event()

    def slow(*args: Any) -> int:
        rows = real(*args)
        written.set()
        time.sleep(0.5)
        return rows

    monkeypatch.setattr(PostgresPublication, "replace_features", slow)
    snapshot = dbmod.connect(db_settings({"DATABASE_URL": database_url}))  # a report in REPEATABLE READ
    snapshot.run("BEGIN ISOLATION LEVEL REPEATABLE READ")
    query = f'SELECT count(*), min(run_id), max(run_id) FROM "{schema}".user_features'
    assert tuple(snapshot.run(query)[0]) == old
    sampler = Sampler(database_url, schema)
    sampler.start()
    try:
        time.sleep(0.1)
        second = run_on(env, write_files(tmp_path / "second", FOUR_USERS))
        assert written.is_set()
        time.sleep(0.1)
        in_snapshot = tuple(snapshot.run(query)[0])
        snapshot.run("COMMIT")
    finally:
        sampler.stop.set()
        sampler.join(10)
        dbmod.close_quietly(snapshot)
    new = (4, second["run_id"], second["run_id"])
    assert sampler.error is None
    assert second["status"] == "succeeded"
    assert in_snapshot == old  # the open REPEATABLE READ transaction kept its view across the commit
    assert set(sampler.seen) == {old, new}  # never empty, never a mix of two runs
    switch = sampler.seen.index(new)
    assert all(s == old for s in sampler.seen[:switch]) and all(s == new for s in sampler.seen[switch:])
    assert switch >= 40  # sampled for the 0.5 s the run held its rows uncommitted: all old
    report(request, "readers during a run", f"{len(sampler.seen)} samples every 10 ms, longest wait "
           f"{max(sampler.waits) * 1000:.1f} ms; {switch} saw the old 3 rows, {len(sampler.seen) - switch} the new "
           "4 rows, none another count; the REPEATABLE READ transaction saw the old rows after the commit")
    assert max(sampler.waits) < 0.100, f"a reader waited {max(sampler.waits) * 1000:.0f} ms"


# --- the load guard -----------------------------------------------------------------------------

def lines(text: str, keep: int) -> str:
    """The header and the first ``keep`` rows: an export cut short on a line boundary."""
    return "".join(text.splitlines(keepends=True)[:keep + 1])


TEN = {name: (Path(__file__).resolve().parent.parent / "data" / name).read_text() for name in GOOD}


@pytest.mark.parametrize("cut", ["experiments", "users and their experiments"])
def test_a_valid_export_cut_short_is_refused_unless_forced(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str, cut: str) -> None:
    run_on(env, write_files(tmp_path / "full", TEN))
    before = features_dump(db, schema)
    short = {"user_experiments.csv": lines(TEN["user_experiments.csv"], 3)}
    if cut != "experiments":
        short["users.csv"] = lines(TEN["users.csv"], 2)
    data = write_files(tmp_path / "short", {**TEN, **short})

    with pytest.raises(LoadRefused, match="cut short") as info:
        run_on(env, data)
    details = info.value.details
    assert (info.value.code, details["reason"], details["min_share"]) == ("load_refused", "shrink", 0.5)
    [[last_run]] = db.run(f'SELECT max(id) FROM "{schema}".etl_runs')
    assert details["run_id"] == last_run  # the answer names the run it recorded as failed
    assert details["current"] == {"users": 10, "experiments": 11}
    assert details["incoming"] == {"users": 10 if cut == "experiments" else 2, "experiments": 3}
    assert features_dump(db, schema) == before
    [[status, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs ORDER BY id DESC LIMIT 1')
    assert (status, error["code"], error["current"]["users"]) == ("failed", "load_refused", 10)

    forced = run_on(env, data, force=True)
    assert forced["status"] == "succeeded"
    [[experiments]] = db.run(f'SELECT sum(total_experiments) FROM "{schema}".user_features')
    assert experiments == 3


def test_the_first_run_ever_is_never_refused(env: dict[str, str], tmp_path: Path, schema: str) -> None:
    data = write_files(tmp_path, {**TEN, "user_experiments.csv": lines(TEN["user_experiments.csv"], 1)})
    assert run_on(env, data)["status"] == "succeeded"


def test_the_least_share_is_a_setting(env: dict[str, str], tmp_path: Path) -> None:
    run_on(env, write_files(tmp_path / "full", TEN))
    short = write_files(tmp_path / "short", {**TEN, "user_experiments.csv": lines(TEN["user_experiments.csv"], 3)})
    assert run_on({**env, "ETL_GUARD_MIN_SHARE": "0.25"}, short)["status"] == "succeeded"  # 3 of 11 > 25%


def test_a_quarantine_run_rejecting_more_than_allowed_is_refused_unless_forced(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    # two of eleven experiment rows name an unknown compound: 2 of 24 rows read (8.3%)
    experiments = TEN["user_experiments.csv"].replace("1,\t1,\t1;2,", "1,\t1,\t1;9,").replace(
        "2,\t1,\t2;3,", "2,\t1,\t2;9,")
    data = write_files(tmp_path, {**TEN, "user_experiments.csv": experiments})
    limited = {**env, "ETL_GUARD_MAX_REJECTED_SHARE": "0.05"}
    with pytest.raises(LoadRefused, match=r"2 of 24 rows \(8\.3%\) were rejected") as info:
        run_on(limited, data, policy="quarantine")
    assert (info.value.details["reason"], info.value.details["rows_rejected"]) == ("rejects", 2)
    assert db.run(f'SELECT count(*) FROM "{schema}".user_features') == [[0]]
    assert run_on({**env, "ETL_GUARD_MAX_REJECTED_SHARE": "0.1"}, data, policy="quarantine")["status"] == "partial"
    assert run_on(limited, data, policy="quarantine", force=True)["status"] == "partial"


def test_the_guard_and_force_over_http_and_by_direct_invocation(env: dict[str, str], tmp_path: Path, db: Any,
                                                                schema: str) -> None:
    import json

    from handler import lambda_function
    from tests.test_api import event, installed

    run_on(env, write_files(tmp_path / "full", TEN))
    short = write_files(tmp_path / "short", {**TEN, "user_experiments.csv": lines(TEN["user_experiments.csv"], 3)})
    with installed(Settings.from_env({**env, "DATA_DIR": str(short)})):
        refused = lambda_function.handler(event("trigger-etl.json"), None)
        with pytest.raises(LoadRefused) as direct:
            lambda_function.handler({"action": "trigger-etl"}, None)
        assert json.loads(str(direct.value))["code"] == "load_refused"
        forced = lambda_function.handler(event("trigger-etl.json", query={"force": "true"}), None)
    body = json.loads(refused["body"])
    assert (refused["statusCode"], body["error"]["code"]) == (422, "load_refused")
    assert body["error"]["incoming"] == {"users": 10, "experiments": 3}
    assert (forced["statusCode"], json.loads(forced["body"])["status"]) == (200, "succeeded")
    [[experiments]] = db.run(f'SELECT sum(total_experiments) FROM "{schema}".user_features')
    assert experiments == 3


@pytest.mark.parametrize("table_autovacuum", [True, False])
def test_dead_rows_are_reclaimed_where_autovacuum_would_not(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str, table_autovacuum: bool) -> None:
    """A run that changes or removes users leaves their old rows dead; with autovacuum off (for the
    server, or for the table) the run vacuums them itself, else it only analyzes and leaves them to
    autovacuum.  A first load leaves no dead row, and neither does a forced reload of the same data
    (nothing changed, nothing written): both are only analyzed."""
    def maintained() -> tuple[Any, Any]:
        [[vacuumed, analyzed]] = db.run(
            "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE schemaname = :s "
            "AND relname = 'user_features'", s=schema)
        return vacuumed, analyzed

    run_on(env, write_files(tmp_path / "first", {}))
    vacuumed, analyzed = maintained()
    assert vacuumed is None and analyzed is not None  # nothing to reclaim yet
    if not table_autovacuum:
        db.run(f'ALTER TABLE "{schema}".user_features SET (autovacuum_enabled = false)')
    changed = write_files(tmp_path / "second", FOUR_USERS)
    assert run_on(env, changed)["changes"]["changed"] == 3
    [[server_autovacuum]] = db.run("SELECT current_setting('autovacuum')::boolean")
    vacuumed, analyzed = maintained()
    assert analyzed is not None
    if server_autovacuum and table_autovacuum:
        assert vacuumed is None  # left to autovacuum: the run did not pay for it
    else:
        assert vacuumed is not None
    again = run_on(env, changed, force=True)
    assert again["changes"] == {"added": 0, "changed": 0, "removed": 0, "unchanged": 4}
    assert maintained()[0] == vacuumed  # no dead row left: no VACUUM


def test_a_small_change_is_neither_analyzed_nor_vacuumed_a_large_one_is(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    """autovacuum's own thresholds: a reload that changed 1 user in 40 leaves the planner's statistics
    and the one dead row as they are; the rows changed since the last ANALYZE add up until they reach
    a tenth of the table.  (autovacuum is off for the table, so the run would be the one to vacuum.)"""
    def users(renamed: int) -> dict[str, str]:
        return {"users.csv": "user_id,name,email,signup_date\n" + "".join(
            f"{i},{'X' if i <= renamed else 'U'}{i},u{i}@x,2023-01-01\n" for i in range(1, 41))}

    def maintained() -> tuple[Any, Any]:
        db.run("SELECT pg_stat_clear_snapshot()")
        [[vacuumed, analyzed]] = db.run(
            "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE schemaname = :s "
            "AND relname = 'user_features'", s=schema)
        return vacuumed, analyzed

    data = write_files(tmp_path / "0", users(0))
    run_on(env, data)
    db.run(f'ALTER TABLE "{schema}".user_features SET (autovacuum_enabled = false)')
    # the first load's inserts reach the statistics view after its ANALYZE (a backend reports them when
    # idle, a second later): the next run still sees them as modified and analyzes once more, then it settles
    time.sleep(1.2)
    assert run_on(env, data, force=True)["changes"]["changed"] == 0
    time.sleep(1.2)
    first = maintained()
    assert first[1] is not None
    for renamed in (1, 2, 3):  # one more user changed each time: 1, 2, 3 rows modified since the ANALYZE
        assert run_on(env, write_files(tmp_path / str(renamed), users(renamed)))["changes"]["changed"] == 1
        time.sleep(1.2)  # the statistics view's lag
        assert maintained() == first
    run_on(env, write_files(tmp_path / "all", users(40)))  # 37 more: past both thresholds
    vacuumed, analyzed = maintained()
    assert vacuumed is not None and analyzed > first[1]
