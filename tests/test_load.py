"""Loading into a real PostgreSQL: idempotent reruns, the runs table, and faults (a killed
connection, a server restart, a lock held elsewhere, two triggers at once, a dead cached connection)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from etl_core import pipeline
from etl_core.config import Settings, db_settings
from etl_core.errors import RunInProgress, TransientLoadError
from etl_core.reading import files as reading
from etl_core.service import Service
from etl_core.store import db as dbmod
from etl_core.store.postgres import PostgresPublication
from tests.conftest import _Throwaway
from tests.helpers import features_dump, features_rows


def test_running_twice_gives_the_same_rows_never_duplicates(settings: Settings, db: Any, schema: str) -> None:
    """The same input again is 'unchanged' and loads nothing; forced, it compares the same rows again and
    writes none: every row still names the run that wrote it."""
    first = pipeline.run(settings, pipeline.Trigger())
    rows_after_first = features_rows(db, schema)
    again = pipeline.run(settings, pipeline.Trigger())
    assert (again["status"], again["same_as"], again["users_written"]) == ("unchanged", first["run_id"], 0)
    second = pipeline.run(settings, pipeline.Trigger(force=True))
    assert second["status"] == "succeeded"
    assert second["changes"] == {"added": 0, "changed": 0, "removed": 0, "unchanged": 10}
    assert features_rows(db, schema) == rows_after_first
    assert len(rows_after_first) == 10
    assert second["run_id"] == first["run_id"] + 2
    [[run_ids]] = db.run(f'SELECT array_agg(DISTINCT run_id) FROM "{schema}".user_features')
    assert run_ids == [first["run_id"]]


def test_each_run_is_recorded(settings: Settings, db: Any, schema: str) -> None:
    summary = pipeline.run(settings, pipeline.Trigger(force=True))
    [[status, files, written, started, finished]] = db.run(
        f'SELECT status, files, users_written, started_at, finished_at FROM "{schema}".etl_runs WHERE id = :id',
        id=summary["run_id"])
    assert status == "succeeded"
    assert written == 10
    [[seconds]] = db.run(f'SELECT seconds FROM "{schema}".etl_runs WHERE id = :id', id=summary["run_id"])
    assert seconds == summary["seconds"]
    assert files["user_experiments.csv"]["rows_read"] == 11
    assert started <= finished


def test_the_summary_reports_rows_per_file_and_time_per_phase(settings: Settings) -> None:
    summary = pipeline.run(settings, pipeline.Trigger(force=True))
    assert {k: v["rows_read"] for k, v in summary["files"].items()} == {
        "users.csv": 10, "compounds.csv": 3, "user_experiments.csv": 11}
    assert summary["users_written"] == 10
    assert set(summary["seconds"]) == {"extract", "transform", "load", "total"}


def after_the_features_are_written(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Call ``action(publication)`` once, when the new features are in the table but not yet committed."""
    real = PostgresPublication.replace_features
    done: list[bool] = []

    def then_act(self: PostgresPublication, features: Any, *rest: Any) -> int:
        written = real(self, features, *rest)
        if not done:
            done.append(True)
            action(self)
        return written

    monkeypatch.setattr(PostgresPublication, "replace_features", then_act)


def kill_before_the_commit(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    """A second connection terminates the loading connection after its COPY, before its commit."""
    def kill(publication: PostgresPublication) -> None:
        [[victim]] = publication._conn.run("SELECT pg_backend_pid()")
        killer = dbmod.connect(db_settings({"DATABASE_URL": database_url}))
        try:
            assert killer.run("SELECT pg_terminate_backend(:pid)", pid=victim) == [[True]]
        finally:
            dbmod.close_quietly(killer)

    after_the_features_are_written(monkeypatch, kill)


def test_a_connection_killed_before_the_commit_leaves_the_old_table(
        settings: Settings, db: Any, schema: str, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.run(settings, pipeline.Trigger(force=True))
    before = features_dump(db, schema)
    kill_before_the_commit(monkeypatch, database_url)
    with pytest.raises(TransientLoadError):
        pipeline.run(settings, pipeline.Trigger(force=True))
    monkeypatch.undo()

    assert features_dump(db, schema) == before
    [[status, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs ORDER BY id DESC LIMIT 1')
    assert (status, error["code"]) == ("failed", "database_unavailable")
    assert pipeline.run(settings, pipeline.Trigger(force=True))["status"] == "succeeded"


@pytest.fixture
def private_server() -> Any:
    """A cluster of our own, which this test may restart."""
    server = _Throwaway()
    url = server.start()
    yield server, url
    server.stop()


def test_a_server_restart_during_the_load_rolls_back_and_the_next_run_succeeds(
        private_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server, url = private_server
    settings = Settings.from_env({"DATABASE_URL": url, "DB_CONNECT_ATTEMPTS": "5"})
    pipeline.run(settings, pipeline.Trigger(force=True))
    check = dbmod.connect(settings.db)
    before = features_dump(check, "public")
    dbmod.close_quietly(check)

    def restart(publication: Any) -> None:
        import subprocess

        from tests.conftest import _pg_bin
        subprocess.run([*server.prefix, _pg_bin("pg_ctl"), "-D", str(server.dir / "data"), "-l",
                        str(server.dir / "log"), "-m", "fast", "-w", "restart"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    after_the_features_are_written(monkeypatch, restart)
    with pytest.raises(TransientLoadError):
        pipeline.run(settings, pipeline.Trigger(force=True))
    monkeypatch.undo()

    check = dbmod.connect(settings.db)
    try:
        assert features_dump(check, "public") == before
        [[status]] = check.run("SELECT status FROM etl_runs ORDER BY id DESC LIMIT 1")
        assert status == "failed"
    finally:
        dbmod.close_quietly(check)
    assert pipeline.run(settings, pipeline.Trigger(force=True))["status"] == "succeeded"


def test_a_run_cut_off_before_it_finished_is_marked_failed_by_the_next(settings: Settings, db: Any,
                                                                       schema: str) -> None:
    pipeline.run(settings, pipeline.Trigger(force=True))
    # what a Lambda killed at its timeout leaves behind: a 'running' row nobody will finish
    [[stale]] = db.run(f"INSERT INTO \"{schema}\".etl_runs (status, policy, data_dir) "
                       "VALUES ('running', 'strict', 'x') RETURNING id")
    pipeline.run(settings, pipeline.Trigger(force=True))
    [[status, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs WHERE id = :id', id=stale)
    assert (status, error["code"]) == ("failed", "abandoned")


def test_a_second_trigger_while_one_runs_is_refused_with_the_running_id(
        settings: Settings, db: Any, schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.run(settings, pipeline.Trigger(force=True))  # tables exist
    staged, release = threading.Event(), threading.Event()

    def wait(publication: Any) -> None:
        staged.set()
        assert release.wait(30)

    after_the_features_are_written(monkeypatch, wait)
    outcome: dict[str, Any] = {}
    first = threading.Thread(target=lambda: outcome.update(first=pipeline.run(settings, pipeline.Trigger(force=True))))
    first.start()
    try:
        assert staged.wait(30)
        with pytest.raises(RunInProgress) as refused:
            pipeline.run(settings, pipeline.Trigger(force=True))
    finally:
        release.set()
        first.join(30)
    assert outcome["first"]["status"] == "succeeded"
    assert refused.value.details["running_run_id"] == outcome["first"]["run_id"]
    assert len(features_rows(db, schema)) == 10


def test_a_lock_held_elsewhere_times_out_and_leaves_the_old_table(
        settings: Settings, db: Any, schema: str, database_url: str) -> None:
    pipeline.run(settings, pipeline.Trigger(force=True))
    before = features_dump(db, schema)
    blocker = dbmod.connect(db_settings({"DATABASE_URL": database_url}))
    try:
        blocker.run("BEGIN")
        # what CREATE INDEX takes: it blocks writers (a report query's ACCESS SHARE does not)
        blocker.run(f'LOCK TABLE "{schema}".user_features IN SHARE MODE')
        started = time.monotonic()
        with pytest.raises(TransientLoadError, match="55P03"):
            pipeline.run(settings, pipeline.Trigger(force=True))
        assert time.monotonic() - started < 30
    finally:
        blocker.run("ROLLBACK")
        dbmod.close_quietly(blocker)
    assert features_dump(db, schema) == before


@pytest.mark.parametrize("where", ["transform", "binary", "csv"])
def test_a_failure_of_ours_in_the_middle_of_the_copy_loses_nothing(
        settings: Settings, db: Any, schema: str, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The features stream into the COPY; then our own code fails: the transform after one batch was
    sent, or the formatting of the COPY's rows (binary; CSV where the table's types have changed).
    The error raised is ours (not a database error, which would read as 'retry later'), the old
    features stay, the run is recorded as failed, no thread is left computing, and the next run works."""
    from etl_core import features as counting  # the face, which the run calls
    from etl_core.errors import EtlError

    pipeline.run(settings, pipeline.Trigger(force=True))
    before = features_dump(db, schema)
    real = counting.feature_batches

    def failing_transform(*args: Any) -> Any:
        batches = real(*args)
        try:
            yield next(batches)
            raise RuntimeError("boom after the first batch")
        finally:
            batches.close()

    def failing_csv(*args: Any) -> Any:
        raise RuntimeError("boom while formatting")

    if where == "transform":
        monkeypatch.setattr(counting, "feature_batches", failing_transform)
    else:
        from etl_core.store import copy_binary, postgres
        if where == "csv":  # a column of another type than ours: the rows go as CSV (into an empty table; a
            # table with rows gets them through a temporary table of our own types, in binary)
            db.run(f'ALTER TABLE "{schema}".user_features ALTER COLUMN user_name TYPE varchar(200)')
            db.run(f'DELETE FROM "{schema}".user_features')
            before = features_dump(db, schema)
        monkeypatch.setattr(*(copy_binary, "rows") if where == "binary" else (postgres, "_features_rows"), failing_csv)
    with pytest.raises(EtlError, match="unexpected RuntimeError: boom") as caught:
        pipeline.run(settings, pipeline.Trigger(force=True))
    assert features_dump(db, schema) == before
    [[status, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs WHERE id = :id',
                               id=caught.value.details["run_id"])
    assert status == "failed" and "boom" in error["message"]
    assert [t.name for t in threading.enumerate() if t.name.startswith(("etl-features", "etl-counts"))] == []
    monkeypatch.undo()
    assert pipeline.run(settings, pipeline.Trigger(force=True))["status"] == "succeeded"


def test_a_table_whose_column_types_changed_is_loaded_with_csv(settings: Settings, db: Any, schema: str) -> None:
    """Binary COPY sends the table's own types; where a column was given another type since (which
    the store allows: it never recreates the table), the rows go as CSV and come out the same."""
    pipeline.run(settings, pipeline.Trigger())
    before = features_dump(db, schema, run_id=False)
    db.run(f'ALTER TABLE "{schema}".user_features ALTER COLUMN user_name TYPE varchar(200), '
           "ALTER COLUMN total_experiments TYPE integer")
    assert pipeline.run(settings, pipeline.Trigger(force=True))["status"] == "succeeded"
    assert features_dump(db, schema, run_id=False) == before


def test_a_dead_cached_connection_is_replaced(settings: Settings, database_url: str) -> None:
    service = Service(settings)
    try:
        service.trigger(pipeline.Trigger(force=True))
        with service.store.connection() as conn:
            [[pid]] = conn.run("SELECT pg_backend_pid()")
        killer = dbmod.connect(db_settings({"DATABASE_URL": database_url}))
        killer.run("SELECT pg_terminate_backend(:pid)", pid=pid)
        dbmod.close_quietly(killer)
        assert service.trigger(pipeline.Trigger(force=True))["status"] == "succeeded"
        with service.store.connection() as conn:
            assert conn.run("SELECT pg_backend_pid()") != [[pid]]
    finally:
        service.close()


def test_an_unreachable_database_says_where_and_how_often(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://etl:s3cret@127.0.0.1:1/lab",
                                  "DB_CONNECT_ATTEMPTS": "2", "DB_CONNECT_TIMEOUT": "1"})
    with pytest.raises(dbmod.DatabaseUnavailable, match=r"etl@127\.0\.0\.1:1/lab after 2 attempts") as info:
        dbmod.connect(settings.db, sleep=lambda s: None)
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(info.value.to_dict())


def test_the_least_privileges_in_the_readme_are_enough(database_url: str, schema: str, db: Any) -> None:
    """CONNECT on the database, USAGE and CREATE on the schema: nothing more (README, Security)."""
    role = f"etl_min_{schema}"
    [[database]] = db.run("SELECT current_database()")
    db.run(f'CREATE ROLE "{role}" LOGIN')
    try:
        db.run(f'CREATE SCHEMA "{schema}"')
        db.run(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
        db.run(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"')
        url = database_url.replace("postgres@", f"{role}@", 1)
        settings = Settings.from_env({"DATABASE_URL": url, "DB_SCHEMA": schema})
        assert settings.db.user == role
        pipeline.run(settings, pipeline.Trigger(force=True))
        assert pipeline.run(settings, pipeline.Trigger(force=True))["status"] == "succeeded"
        assert len(features_rows(db, schema)) == 10
    finally:
        db.run(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        db.run(f'REVOKE ALL ON DATABASE "{database}" FROM "{role}"')
        db.run(f'DROP ROLE "{role}"')


def test_a_runtime_role_that_owns_nothing_runs_with_the_documented_grants_and_check_names_what_it_lacks(
        database_url: str, schema: str, db: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A DBA migrates as the owner; the job runs as a role granted docs/security.md's list, nothing more:
    loads, a reload that changes a user, ANALYZE skipped with a warning (only the owner may), and
    ``check`` says what a role lacks, which a run reports as the operator's setting (bad_config)."""
    from etl_core.errors import ConfigError
    from etl_core.store import sql
    from tests.helpers import GOOD, logged, write_files

    role = f"etl_rt_{schema}"
    [[database]] = db.run("SELECT current_database()")
    owner = Settings.from_env({"DATABASE_URL": database_url, "DB_SCHEMA": schema})
    migrating = Service(owner)
    try:
        migrating.migrate()
    finally:
        migrating.close()
    db.run(f'CREATE ROLE "{role}" LOGIN')
    try:
        db.run(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO "{role}"')
        db.run(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        db.run(f'GRANT USAGE ON SEQUENCE "{schema}".etl_runs_id_seq TO "{role}"')
        for table, privileges in sql.RUNTIME_GRANTS:
            db.run(f'GRANT {privileges} ON "{schema}"."{table}" TO "{role}"')
        url = database_url.replace("postgres@", f"{role}@", 1)
        data = write_files(tmp_path / "data", GOOD)
        runtime = Settings.from_env({"DATABASE_URL": url, "DB_SCHEMA": schema, "DATA_DIR": str(data),
                                     "ETL_METRICS_NAMESPACE": ""})
        service = Service(runtime)
        try:
            [privileges] = [c for c in service.check()["checks"] if c["check"] == "privileges"]
            assert privileges["ok"] and "ownership of" in privileges["detail"], privileges
            assert pipeline.run(runtime, pipeline.Trigger())["status"] == "succeeded"
            (data / "users.csv").write_text(GOOD["users.csv"].replace("Alice", "Alicia"), encoding="utf-8")
            caplog.set_level("INFO", logger="etl")
            summary = pipeline.run(runtime, pipeline.Trigger())
            assert (summary["status"], summary["changes"]["changed"]) == ("succeeded", 1), summary
            assert "maintenance_skipped" in [e["event"] for e in logged(caplog.records)]
            db.run(f'REVOKE DELETE ON "{schema}".etl_rejects FROM "{role}"')
            db.run(f'REVOKE SELECT ON "{schema}".etl_runs FROM "{role}"')
            [privileges] = [c for c in service.check()["checks"] if c["check"] == "privileges"]
            assert not privileges["ok"] and privileges["code"] == "bad_config"
            assert f'DELETE on "{schema}"."etl_rejects"' in privileges["detail"], privileges
            with pytest.raises(ConfigError, match="lacks a privilege"):
                pipeline.run(runtime, pipeline.Trigger(force=True))
        finally:
            service.close()
    finally:
        db.run(f'DROP OWNED BY "{role}"')
        db.run(f'REVOKE ALL ON DATABASE "{database}" FROM "{role}"')
        db.run(f'DROP ROLE "{role}"')


def test_the_run_logs_each_phase_as_json_lines(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from tests.helpers import logged

    caplog.set_level("INFO", logger="etl")
    pipeline.run(settings, pipeline.Trigger(force=True))
    events = logged(caplog.records)
    assert [e["event"] for e in events] == ["run_started", "file_read", "file_read", "file_read", "run_finished"]
    assert [e["message"] for e in events] == [e["event"] for e in events]
    assert {e["level"] for e in events} == {"INFO"} and {e["run_id"] for e in events} == {events[0]["run_id"]}
    assert {e["file"]: e["rows"] for e in events if e["event"] == "file_read"} == {
        "users.csv": 10, "compounds.csv": 3, "user_experiments.csv": 11}
    assert all("mb" in e for e in events if e["event"] == "file_read")


def test_an_unexpected_error_is_recorded_and_answered(settings: Settings, db: Any, schema: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_core import features as counting  # the face, which the run calls
    from etl_core.errors import InternalError

    def broken(*args: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(counting, "feature_batches", broken)
    with pytest.raises(InternalError, match="unexpected ZeroDivisionError: a bug"):
        pipeline.run(settings, pipeline.Trigger(force=True))
    [[status, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs ORDER BY id DESC LIMIT 1')
    assert (status, error["code"]) == ("failed", "internal_error")


def test_long_files_log_progress_with_rows_and_megabytes(env: dict[str, str], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import logged, write_files

    experiments = "experiment_id,user_id,experiment_compound_ids,experiment_run_time\n" + "".join(
        f"{i},{1 + i % 3},1;2;3,{i % 97}.25\n" for i in range(1, 20_001))  # about 400 kB
    data = write_files(tmp_path, {"user_experiments.csv": experiments})
    settings = Settings.from_env({**env, "DATA_DIR": str(data), "ETL_BLOCK_SIZE": str(1 << 16)})
    monkeypatch.setattr(reading, "PROGRESS_EVERY", 0.0)  # a line per batch instead of every 5 s
    caplog.set_level("INFO", logger="etl")
    pipeline.run(settings, pipeline.Trigger(force=True))
    lines = [p for p in logged(caplog.records, "progress") if p["file"] == "user_experiments.csv"]
    assert len(lines) >= 3
    assert [p["rows"] for p in lines] == sorted(p["rows"] for p in lines)
    assert lines[-1]["rows"] <= 20_000 and lines[-1]["mb_total"] > 0.3


def test_no_counting_thread_outlives_a_run(env: dict[str, str], tmp_path: Path) -> None:
    from etl_core.errors import ContractViolation
    from tests.helpers import write_files

    def counting_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "etl-counts"]

    pipeline.run(Settings.from_env(env), pipeline.Trigger(force=True))
    assert counting_threads() == []
    bad = write_files(tmp_path, {"user_experiments.csv": "experiment_id,user_id,experiment_compound_ids,"
                                                         "experiment_run_time\n1,1,1;9,10\n"})
    with pytest.raises(ContractViolation):
        pipeline.run(Settings.from_env({**env, "DATA_DIR": str(bad)}), pipeline.Trigger(force=True))
    assert counting_threads() == []


def network_error() -> Exception:
    from pg8000.exceptions import InterfaceError

    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except OSError as exc:
            raise InterfaceError("network error") from exc
    except InterfaceError as exc:
        return exc


@pytest.mark.parametrize("make", [
    network_error, lambda: ConnectionResetError(104, "Connection reset by peer"), lambda: TimeoutError("timed out"),
    lambda: __import__("socket").timeout("timed out"), lambda: BrokenPipeError(32, "Broken pipe"),
    lambda: __import__("pg8000").exceptions.InterfaceError("connection is closed"),
], ids=["InterfaceError-from-OSError", "ConnectionResetError", "TimeoutError", "socket.timeout", "BrokenPipeError",
        "connection-is-closed"])
def test_only_the_connections_own_failures_are_transient(make: Any) -> None:
    assert isinstance(dbmod.translate(make()), TransientLoadError)


@pytest.mark.parametrize("exc", [
    ZeroDivisionError("division by zero"), TypeError("unsupported operand"), KeyError("user_id"),
    AttributeError("'NoneType' object has no attribute 'run'"),
    __import__("pg8000").exceptions.InterfaceError(
        "There's a placeholder 'id' in the query, but no matching keyword argument."),
], ids=["ZeroDivisionError", "TypeError", "KeyError", "AttributeError", "InterfaceError-missing-parameter"])
def test_any_other_failure_without_a_sqlstate_is_a_bug_of_ours(exc: Exception) -> None:
    from etl_core.errors import InternalError

    translated = dbmod.translate(exc)
    assert type(translated) is InternalError and translated.code == "internal_error"
    assert translated.message.startswith(f"unexpected {type(exc).__name__}: ")


def test_real_dead_connections_and_a_real_misuse_are_told_apart(settings: Settings, database_url: str) -> None:
    """What pg8000 1.31 raises: InterfaceError('network error') for a terminated backend (no cause),
    the bare TimeoutError of the socket when a read times out, InterfaceError('connection is closed')
    after close(); and InterfaceError for a call of ours it cannot make."""
    from etl_core.errors import InternalError

    def failure(conn: Any, statement: str, **params: Any) -> Exception:
        with pytest.raises(Exception) as caught:
            conn.run(statement, **params)
        return caught.value

    conn = dbmod.connect(settings.db)
    try:
        misuse = failure(conn, "SELECT :wanted", given=1)
        assert isinstance(dbmod.translate(misuse), InternalError), repr(misuse)
        [[pid]] = conn.run("SELECT pg_backend_pid()")
        killer = dbmod.connect(db_settings({"DATABASE_URL": database_url}))
        killer.run("SELECT pg_terminate_backend(:pid)", pid=pid)
        dbmod.close_quietly(killer)
        terminated = failure(conn, "SELECT 1")
        assert isinstance(dbmod.translate(terminated), TransientLoadError), repr(terminated)
    finally:
        dbmod.close_quietly(conn)
    closed = failure(conn, "SELECT 1")
    assert isinstance(dbmod.translate(closed), TransientLoadError), repr(closed)

    slow = dbmod.connect(settings.db)
    try:
        slow._usock.settimeout(0.2)  # pg8000's socket: a read now times out long before pg_sleep ends
        timed_out = failure(slow, "SELECT pg_sleep(2)")
        assert isinstance(timed_out, TimeoutError)
        assert isinstance(dbmod.translate(timed_out), TransientLoadError)
    finally:
        dbmod.close_quietly(slow)


def test_a_server_that_asks_for_what_the_settings_lack_is_bad_config_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import pg8000.native
    from pg8000.exceptions import InterfaceError

    from etl_core.errors import ConfigError

    attempts = []

    def asking(**kwargs: Any) -> Any:
        attempts.append(kwargs)
        raise InterfaceError("server requesting password authentication, but no password was provided")

    monkeypatch.setattr(pg8000.native, "Connection", asking)
    settings = Settings.from_env({"DATABASE_URL": "postgresql://etl@db.example:5432/lab", "DB_CONNECT_ATTEMPTS": "3"})
    with pytest.raises(ConfigError, match=r"etl@db\.example:5432/lab: server requesting password") as info:
        dbmod.connect(settings.db, sleep=lambda s: None)
    assert info.value.code == "bad_config" and len(attempts) == 1  # retrying would not help


def test_a_bug_of_ours_in_the_load_is_500_internal_error_not_503(settings: Settings, db: Any, schema: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, any exception without a SQLSTATE read as a lost connection: 'retry later' for a bug."""
    import json

    from handler import lambda_function
    from tests.test_api import event, installed

    pipeline.run(settings, pipeline.Trigger(force=True))
    before = features_dump(db, schema)

    def broken(schema: str) -> list[str]:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    from etl_core.store import sql
    monkeypatch.setattr(sql, "classify", broken)
    with installed(settings):
        reply = lambda_function.handler(event("trigger-etl.json", query={"force": "true"}), None)
    body = json.loads(reply["body"])
    assert (reply["statusCode"], body["error"]["code"]) == (500, "internal_error")
    assert body["error"]["message"] == "unexpected TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    assert features_dump(db, schema) == before
    [[status, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs ORDER BY id DESC LIMIT 1')
    assert (status, error["code"]) == ("failed", "internal_error")


def test_tcp_connections_send_at_once(settings: Settings) -> None:
    """Without TCP_NODELAY every COPY waited about 40 ms for the server's delayed ACK (a warm run of the
    challenge's data took 60 ms instead of 15)."""
    import socket

    conn = dbmod.connect(settings.db)
    try:
        assert conn._usock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        dbmod.close_quietly(conn)
