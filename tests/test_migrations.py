"""The schema's versions: a run applies only the steps it lacks, each once, in a transaction of its
own, recorded in the history; a DBA applies them ahead (``python -m etl_core migrate``, the direct
action); a schema newer than the release is refused, not stamped back; a step waits for its lock at
most DB_LOCK_TIMEOUT_MS and then changes nothing; what readers made on user_features survives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from etl_core import pipeline
from etl_core.config import Settings
from etl_core.errors import SchemaTooNew, TransientLoadError
from etl_core.store import migrations, sql
from etl_core.store.migrations import Migration
from etl_core.store.postgres import PostgresStore
from tests.conftest import ROOT
from tests.helpers import write_files
from tests.test_publish import (
    FOUR_USERS,
    add_what_readers_add,
    assert_what_readers_added_works,
    oid,
    reader_role,
    run_on,
)

__all__ = ["reader_role"]  # the fixture, used by name below


def history(db: Any, schema: str) -> list[tuple[int, str]]:
    return [(v, by) for v, by in db.run(
        f"SELECT version, applied_by FROM {sql.q(schema, migrations.HISTORY)} ORDER BY version")]


def test_a_first_run_records_each_step_once_and_later_runs_apply_none(
        settings: Settings, db: Any, schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pipeline.run(settings, pipeline.Trigger())["status"] == "succeeded"
    assert history(db, schema) == [(m.version, migrations.RELEASE) for m in migrations.MIGRATIONS]

    def no_step(conn: Any, schema: str) -> None:
        raise AssertionError("a schema at this release's version needs no step")

    monkeypatch.setattr(migrations, "MIGRATIONS", tuple(
        Migration(m.version, m.description, no_step) for m in migrations.MIGRATIONS))
    assert pipeline.run(settings, pipeline.Trigger(force=True))["status"] == "succeeded"


def test_a_schema_newer_than_the_release_is_refused_and_left_as_it_is(
        settings: Settings, db: Any, schema: str) -> None:
    pipeline.run(settings, pipeline.Trigger())
    newer = migrations.LATEST + 1
    db.run(f"INSERT INTO {sql.q(schema, migrations.HISTORY)} (version, description, applied_by) "
           f"VALUES ({newer}, 'a later release', 'experiment-etl 9')")
    runs = db.run(f"SELECT count(*) FROM {sql.q(schema, sql.RUNS)}")
    with pytest.raises(SchemaTooNew, match=rf"version {newer}, newer than this release knows") as info:
        pipeline.run(settings, pipeline.Trigger(force=True))
    assert (info.value.code, info.value.details["known_version"]) == ("schema_too_new", migrations.LATEST)
    assert db.run(f"SELECT count(*) FROM {sql.q(schema, sql.RUNS)}") == runs  # not even a run row
    assert history(db, schema)[-1] == (newer, "experiment-etl 9")


def test_a_dba_applies_the_steps_ahead_from_the_command_line(env: dict[str, str], db: Any, schema: str) -> None:
    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "etl_core", "migrate", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=False, env={**os.environ, **env})
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    status = cli("--status")
    assert (status["version"], status["applied"]) == (0, [])
    assert [p["version"] for p in status["pending"]] == [m.version for m in migrations.MIGRATIONS]
    assert not db.run("SELECT 1 FROM pg_namespace WHERE nspname = :s", s=schema)  # --status wrote nothing
    applied = cli()
    assert (applied["version_before"], applied["version"], applied["pending"]) == (0, migrations.LATEST, [])
    assert applied["applied"] == [m.version for m in migrations.MIGRATIONS]
    assert cli()["applied"] == []
    assert len(history(db, schema)) == len(migrations.MIGRATIONS)


def test_the_command_line_names_a_refused_schema_and_fails(env: dict[str, str], db: Any, schema: str) -> None:
    store = PostgresStore(Settings.from_env(env).db, schema)
    try:
        store.migrate()
    finally:
        store.close()
    db.run(f"INSERT INTO {sql.q(schema, migrations.HISTORY)} (version, description, applied_by) "
           f"VALUES ({migrations.LATEST + 5}, 'later', 'later')")
    done = subprocess.run([sys.executable, "-m", "etl_core", "migrate"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **env})
    assert done.returncode == 1 and done.stdout == ""
    assert json.loads(done.stderr)["error"]["code"] == "schema_too_new"


def test_the_direct_action_migrates(env: dict[str, str], db: Any, schema: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from handler import lambda_function
    from tests.test_api import installed

    with installed(Settings.from_env(env)):
        assert lambda_function.handler({"action": "migrate", "apply": False}, None)["pending"]
        result = lambda_function.handler({"action": "migrate"}, None)
    assert result["version"] == migrations.LATEST
    assert len(history(db, schema)) == len(migrations.MIGRATIONS)


def _add_column(conn: Any, schema: str) -> None:
    conn.run(f"ALTER TABLE {sql.q(schema, sql.FEATURES)} ADD COLUMN IF NOT EXISTS mean_run_time double precision")


NEXT = Migration(migrations.LATEST + 1, "user_features.mean_run_time", _add_column)


def test_a_new_step_keeps_what_readers_made_on_the_features_table(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str, database_url: str, reader_role: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    run_on(env, write_files(tmp_path / "first", {}))
    before = oid(db, schema)
    add_what_readers_add(db, schema, reader_role)
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, NEXT))
    monkeypatch.setattr(migrations, "LATEST", NEXT.version)

    second = run_on(env, write_files(tmp_path / "second", FOUR_USERS))  # applies NEXT, then loads

    assert second["status"] == "succeeded" and history(db, schema)[-1][0] == NEXT.version
    assert oid(db, schema) == before
    assert_what_readers_added_works(db, schema, database_url, reader_role)
    assert db.run(f'SELECT count(mean_run_time) FROM "{schema}".user_features') == [[0]]  # loaded around it


def test_a_step_waits_for_its_lock_at_most_the_lock_timeout_and_changes_nothing(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_core.config import db_settings
    from etl_core.store import db as dbmod

    run_on(env, write_files(tmp_path / "first", {}))
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, NEXT))
    monkeypatch.setattr(migrations, "LATEST", NEXT.version)
    reader = dbmod.connect(db_settings({"DATABASE_URL": database_url}))
    try:
        reader.run("BEGIN")
        reader.run(f'SELECT count(*) FROM "{schema}".user_features')  # holds ACCESS SHARE until it ends
        store = PostgresStore(Settings.from_env({**env, "DB_LOCK_TIMEOUT_MS": "300"}).db, schema)
        try:
            with pytest.raises(TransientLoadError, match="55P03"):
                store.migrate()
        finally:
            store.close()
        assert history(db, schema)[-1][0] == migrations.LATEST - 1  # not recorded: rolled back
        assert not db.run("SELECT 1 FROM information_schema.columns WHERE table_schema = :s AND "
                          "table_name = 'user_features' AND column_name = 'mean_run_time'", s=schema)
    finally:
        reader.run("ROLLBACK")
        dbmod.close_quietly(reader)
    assert run_on(env, write_files(tmp_path / "second", FOUR_USERS))["status"] == "succeeded"  # now it applies
    assert history(db, schema)[-1][0] == NEXT.version


def test_step_3_starts_the_history_at_the_last_load_before_the_upgrade(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    """A deployment at version 2 (its features written by replaces, no history) upgraded by its next run:
    the history answers for the last load before the upgrade (the table still holds its rows) and from
    then on, and refuses the earlier runs rather than answer them wrongly."""
    from etl_core.errors import HistoryPurged
    from etl_core.service import Service

    first_data, four = write_files(tmp_path / "first", {}), write_files(tmp_path / "four", FOUR_USERS)
    first, second = run_on(env, first_data), run_on(env, four)
    # back to version 2's shape: no history, no horizon, no function, no change counts
    db.run(f"DROP FUNCTION {sql.q(schema, sql.AS_OF)}(bigint)")
    db.run(f"DROP TABLE {sql.q(schema, sql.HISTORY)}, {sql.q(schema, sql.HORIZON)}")
    db.run(f"ALTER TABLE {sql.q(schema, sql.RUNS)} DROP COLUMN added, DROP COLUMN changed, DROP COLUMN removed, "
           "DROP COLUMN unchanged, DROP COLUMN restored_from")
    db.run(f"DELETE FROM {sql.q(schema, migrations.HISTORY)} WHERE version > 2")

    third = run_on(env, first_data, force=True)  # the upgrade's first run: it migrates, then publishes
    assert [v for v, _ in history(db, schema)] == [m.version for m in migrations.MIGRATIONS]
    assert third["changes"]["changed"] == 3 and third["changes"]["added"] == 0
    service = Service(Settings.from_env(env))
    try:
        assert service.store.history_kept_from() == second["run_id"]
        as_of_second = service.as_of(second["run_id"], limit=10)["features"]
        assert [(r["user_id"], r["total_experiments"]) for r in as_of_second] == [(1, 2), (2, 1), (3, 1), (4, 1)]
        assert len(service.changes(third["run_id"], limit=10)["changes"]) == 4  # Dave removed, three changed
        with pytest.raises(HistoryPurged):
            service.as_of(first["run_id"], limit=10)
        assert service.run_status(first["run_id"])["changes"] is None  # a run from before the counts
        assert service.restore(second["run_id"])["changes"]["added"] == 1  # Dave back
    finally:
        service.close()
