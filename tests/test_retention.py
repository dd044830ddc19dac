"""Personal data kept only as long as configured, against real PostgreSQL: each run purges old rejects
and runs after its outcome is committed, in bounded steps; ETL_REJECTS_KEEP_RAW=false keeps no
rejected row or value anywhere a run writes (etl_rejects, etl_runs.error, the answer), only a hash;
a role without superuser rights does all of it; an older ledger is migrated."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from pg8000.native import identifier

from etl_core.config import RetentionSettings, Settings
from etl_core.errors import ContractViolation
from etl_core.service import Service, Trigger
from etl_core.store import sql
from tests.helpers import logged, write_files

BAD = 7  # users without a name: rejected under quarantine


def quarantine_data(tmp_path: Path, *, bad: int = BAD, tag: str = "") -> Path:
    """Three good users, then ``bad`` without a name (their e-mail addresses are the personal data)."""
    users = "user_id,name,email,signup_date\n" + "".join(
        f"{i},{'' if i > 3 else f'U{i}'},person{i}{tag}@example.org,2023-01-01\n" for i in range(1, bad + 4))
    return write_files(tmp_path / f"q{uuid.uuid4().hex[:6]}", {"users.csv": users})


def service(settings: Settings, data: Path, metrics: list[dict[str, Any]] | None = None, **retention: Any
            ) -> Service:
    settings = dataclasses.replace(settings, data_dir=data, data_root=data, policy="quarantine",
                                   retention=dataclasses.replace(settings.retention, **retention))
    return Service(settings, emit=lambda line: (metrics if metrics is not None else []).append(json.loads(line)))


def age_all(db: Any, schema: str, days: float) -> None:
    db.run(f"UPDATE {identifier(schema)}.etl_runs SET finished_at = finished_at - make_interval(days => :d)",
           d=int(days))


def count(db: Any, schema: str, table: str) -> int:
    return int(db.run(f"SELECT count(*) FROM {identifier(schema)}.{identifier(table)}")[0][0])


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="etl")
    return caplog


def test_a_run_purges_old_rejects_and_runs_and_says_so(settings: Settings, db: Any, schema: str, tmp_path: Path,
                                                       caplog_info: pytest.LogCaptureFixture) -> None:
    metrics: list[dict[str, Any]] = []
    job = service(settings, quarantine_data(tmp_path), metrics)
    try:
        old = [job.trigger(Trigger(force=True))["run_id"] for _ in range(3)]
        age_all(db, schema, 400)
        young = job.trigger(Trigger(force=True))
        # the old runs' rejects go, then the old runs: this run is the last that loaded and confirmed now
        assert young["purged"] == {"rejects": 3 * BAD, "history": 0, "runs": 3, "backlog": False, "failed": False}
        assert [r["run_id"] for r in job.runs(limit=10)["runs"]] == [young["run_id"]]
        assert db.run(f"SELECT DISTINCT run_id FROM {identifier(schema)}.etl_rejects") == [[young["run_id"]]]
        assert old[-1] not in [r["run_id"] for r in job.runs(limit=10)["runs"]]
    finally:
        job.close()
    assert [m["PurgedRejects"] for m in metrics] == [0, 0, 0, 3 * BAD]
    assert [m["PurgedRuns"] for m in metrics] == [0, 0, 0, 3] and {m["PurgeFailed"] for m in metrics} == {0}
    assert [e["rejects"] for e in logged(caplog_info.records, "purged")] == [3 * BAD]


def test_an_unchanged_run_purges_too(settings: Settings, db: Any, schema: str, tmp_path: Path) -> None:
    """An input that never changes must not keep its rejects forever."""
    job = service(settings, quarantine_data(tmp_path))
    try:
        first = job.trigger(Trigger())
        age_all(db, schema, 31)
        again = job.trigger(Trigger())
        assert again["status"] == "unchanged" and again["same_as"] == first["run_id"]
        assert again["purged"]["rejects"] == BAD and count(db, schema, "etl_rejects") == 0
        assert job.run_status(first["run_id"])["rejects"] == 0  # the run itself stays (365 days; the last loaded)
    finally:
        job.close()


def test_a_failed_run_purges_too(settings: Settings, db: Any, schema: str, tmp_path: Path,
                                 caplog_info: pytest.LogCaptureFixture) -> None:
    """A job whose input breaks the contract every day must not keep old rejects forever either."""
    data = quarantine_data(tmp_path)
    job = service(settings, data)
    try:
        job.trigger(Trigger())
        age_all(db, schema, 31)
        with pytest.raises(ContractViolation):
            job.trigger(Trigger(policy="strict", force=True))
    finally:
        job.close()
    assert count(db, schema, "etl_rejects") == 0
    assert [e["rejects"] for e in logged(caplog_info.records, "purged")] == [BAD]


def test_a_backlog_is_purged_in_bounded_steps_over_several_runs(settings: Settings, db: Any, schema: str,
                                                               tmp_path: Path) -> None:
    job = service(settings, quarantine_data(tmp_path, bad=50), step_rows=20, max_steps=2)
    try:
        for _ in range(3):
            job.trigger(Trigger(force=True))
        age_all(db, schema, 31)
        backlog = count(db, schema, "etl_rejects")
        assert backlog == 150
        seen = []
        for _ in range(5):
            summary = job.trigger(Trigger(force=True))
            seen.append(summary["purged"]["rejects"])
            if not summary["purged"]["backlog"]:
                break
        assert seen == [40, 40, 40, 30]  # at most 2 steps of 20 per run, the rest by the next runs
        assert count(db, schema, "etl_rejects") == 4 * 50  # the purging runs' own, young
        old = db.run(f"SELECT count(*) FROM {identifier(schema)}.etl_rejects WHERE run_id <= 3")
        assert old == [[0]]
    finally:
        job.close()


def test_a_failed_purge_does_not_fail_a_published_run(settings: Settings, db: Any, schema: str, tmp_path: Path,
                                                      caplog_info: pytest.LogCaptureFixture) -> None:
    metrics: list[dict[str, Any]] = []
    job = service(settings, quarantine_data(tmp_path), metrics)
    try:
        job.trigger(Trigger())
        age_all(db, schema, 31)
        db.run(f"CREATE FUNCTION {identifier(schema)}.refuse() RETURNS trigger LANGUAGE plpgsql AS "
               "$$BEGIN RAISE EXCEPTION 'no deleting today'; END$$")
        db.run(f"CREATE TRIGGER refuse BEFORE DELETE ON {identifier(schema)}.etl_rejects "
               f"FOR EACH ROW EXECUTE FUNCTION {identifier(schema)}.refuse()")
        summary = job.trigger(Trigger(force=True))
        assert summary["status"] == "partial"
        assert summary["purged"] == {"rejects": 0, "history": 0, "runs": 0, "backlog": True, "failed": True}
        assert job.run_status(summary["run_id"])["status"] == "partial"
        assert count(db, schema, "etl_rejects") == 2 * BAD
        assert metrics[-1]["PurgeFailed"] == 1 and metrics[-1]["RunsPartial"] == 1
        [line] = logged(caplog_info.records, "purge_failed")
        assert "no deleting today" in line["reason"]
        assert job.trigger(Trigger(force=True))["status"] == "partial"  # the connection is still good
    finally:
        job.close()


def test_without_raw_no_rejected_row_or_value_is_kept_only_its_hash(settings: Settings, db: Any, schema: str,
                                                                    tmp_path: Path) -> None:
    data = quarantine_data(tmp_path, tag="-secretive")
    kept = service(settings, data)
    try:
        with_raw = kept.trigger(Trigger(force=True))
    finally:
        kept.close()
    job = service(settings, data, keep_raw=False)
    try:
        summary = job.trigger(Trigger(force=True))
        strict = service(settings, data, keep_raw=False)
        with pytest.raises(ContractViolation) as refused:
            strict.trigger(Trigger(policy="strict", force=True))
        strict.close()
        page = job.rejects(summary["run_id"], limit=100)
    finally:
        job.close()
    table = f"{identifier(schema)}.etl_rejects"
    stored = db.run(f"SELECT line, column_name, rule, value, raw, raw_sha256 FROM {table} WHERE run_id = :r "
                    "ORDER BY seq", r=summary["run_id"])
    assert [(line, column, rule) for line, column, rule, *_ in stored] == [(i + 1, "name", "empty_value")
                                                                           for i in range(4, 4 + BAD)]
    assert {(value, raw) for *_, value, raw, _ in stored} == {(None, None)}
    # the same digest as PostgreSQL's of the row kept by the first run: duplicates still match
    kept_hashes = db.run(f"SELECT encode(sha256(convert_to(raw, 'UTF8')), 'hex') FROM {table} WHERE run_id = :r "
                         "ORDER BY seq", r=with_raw["run_id"])
    assert [digest for *_, digest in stored] == [h for [h] in kept_hashes]
    assert stored[0][-1] == hashlib.sha256(b"4,,person4-secretive@example.org,2023-01-01").hexdigest()
    recorded = json.dumps(db.run(f"SELECT error, files FROM {identifier(schema)}.etl_runs WHERE id > :r",
                                 r=with_raw["run_id"]), default=str)
    answers = json.dumps([summary, page, refused.value.to_dict()], default=str)
    for text in (recorded, answers):
        assert "secretive" not in text
    assert "raw_sha256" in answers and refused.value.details["violations"]["total"] == BAD
    # the answers' models (which FastAPI checks every answer against) know the new fields
    from handler.models import RejectsPage, RunSummary

    assert RunSummary.model_validate(summary).violations.first[0].raw_sha256 == stored[0][-1]
    assert RejectsPage.model_validate(page).rejects[0].raw_sha256 == stored[0][-1]


def test_a_role_without_superuser_rights_purges_its_own_ledger(database_url: str, db: Any, tmp_path: Path) -> None:
    """The job's role owns only its schema (README, Security): enough to create, run, purge and migrate."""
    role, schema = f"etl_r_{uuid.uuid4().hex[:8]}", f"t_{uuid.uuid4().hex[:12]}"
    db.run(f"CREATE ROLE {identifier(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    db.run(f"CREATE SCHEMA {identifier(schema)} AUTHORIZATION {identifier(role)}")
    try:
        url = database_url.replace("postgres@", f"{role}@", 1)
        assert url != database_url, "the test server's URL names no postgres user to replace"
        settings = Settings.from_env({"DATABASE_URL": url, "DB_SCHEMA": schema})
        job = service(settings, quarantine_data(tmp_path))
        try:
            job.trigger(Trigger(force=True))
            job.trigger(Trigger(force=True))
            age_all(db, schema, 400)
            summary = job.trigger(Trigger(force=True))
            assert summary["purged"] == {"rejects": 2 * BAD, "history": 0, "runs": 2, "backlog": False, "failed": False}
            owners = db.run("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = :s", s=schema)
            assert owners == [[role]]
        finally:
            job.close()
    finally:
        db.run(f"DROP SCHEMA {identifier(schema)} CASCADE")
        db.run(f"DROP ROLE {identifier(role)}")


def test_a_schema_before_raw_sha256_gets_it_on_its_first_read_or_run(settings: Settings, db: Any, schema: str,
                                                                      tmp_path: Path) -> None:
    from etl_core.store import migrations

    job = service(settings, quarantine_data(tmp_path))
    try:
        run_id = job.trigger(Trigger(force=True))["run_id"]
        rejects, history = sql.q(schema, sql.REJECTS), sql.q(schema, migrations.HISTORY)
        db.run(f"ALTER TABLE {rejects} DROP COLUMN raw_sha256")  # the schema as migration 1 left it
        db.run(f"DELETE FROM {history} WHERE version > 1")
        job.store.close()
        fresh = service(settings, quarantine_data(tmp_path))  # a new process: it has not seen the ledger
        try:
            page = fresh.rejects(run_id, limit=2)  # a read before any run migrates
            assert [r["raw_sha256"] for r in page["rejects"]] == [None, None]
            assert db.run(f"SELECT max(version) FROM {history}") == [[migrations.LATEST]]
            assert fresh.trigger(Trigger(force=True))["status"] == "partial"
        finally:
            fresh.close()
    finally:
        job.close()


@pytest.mark.unit
@pytest.mark.parametrize(("env", "expected"), [
    ({}, RetentionSettings(rejects_days=30, runs_days=365, keep_raw=True)),
    ({"ETL_REJECTS_RETENTION_DAYS": "7", "ETL_RUNS_RETENTION_DAYS": "90", "ETL_REJECTS_KEEP_RAW": "FALSE"},
     RetentionSettings(rejects_days=7, runs_days=90, keep_raw=False)),
    ({"ETL_REJECTS_RETENTION_DAYS": "", "ETL_REJECTS_KEEP_RAW": ""}, RetentionSettings()),
    ({"ETL_HISTORY_RETENTION_DAYS": "30", "ETL_HISTORY_RETENTION_RUNS": "12"},
     RetentionSettings(history_days=30, history_runs=12)),
    ({"ETL_HISTORY_RETENTION_RUNS": ""}, RetentionSettings(history_days=365, history_runs=None)),
])
def test_retention_settings(env: dict[str, str], expected: RetentionSettings) -> None:
    assert Settings.from_env(env).retention == expected


@pytest.mark.unit
@pytest.mark.parametrize("env", [{"ETL_REJECTS_RETENTION_DAYS": "0"}, {"ETL_RUNS_RETENTION_DAYS": "-1"},
                                 {"ETL_REJECTS_RETENTION_DAYS": "1.5"}, {"ETL_REJECTS_KEEP_RAW": "no"},
                                 {"ETL_RUNS_RETENTION_DAYS": "36501"}, {"ETL_HISTORY_RETENTION_DAYS": "0"},
                                 {"ETL_HISTORY_RETENTION_RUNS": "0"}, {"ETL_HISTORY_RETENTION_RUNS": "x"},
                                 {"ETL_HISTORY_RETENTION_DAYS": "36501"}])
def test_retention_settings_that_make_no_sense_are_refused(env: dict[str, str]) -> None:
    from etl_core.errors import ConfigError

    with pytest.raises(ConfigError, match=next(iter(env))):
        Settings.from_env(env)
