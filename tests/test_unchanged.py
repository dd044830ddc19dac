"""Each change of the input is loaded once: a trigger whose input fingerprint equals the last load's
answers 'unchanged', names that run, is recorded, and loads nothing; ``force`` loads anyway.  The
ledger of an earlier deployment is migrated (new columns, the 'unchanged' status) and stamped, and a
stamped ledger costs one catalog query per run instead of the DDL."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from etl_core import inputs, pipeline
from etl_core.config import Settings
from etl_core.store.memory import MemoryStore
from etl_core.store.postgres import PostgresStore
from tests.conftest import REFERENCE_DATA


def data_copy(tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(REFERENCE_DATA, target)
    return target


def touch(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))  # same bytes, a new write


@pytest.mark.unit
def test_the_same_input_again_is_unchanged_and_names_the_run_that_loaded_it(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATA_DIR": str(data_copy(tmp_path))})
    store = MemoryStore()
    first = pipeline.run(settings, pipeline.Trigger(), store=store)
    loaded = store.features
    again = pipeline.run(settings, pipeline.Trigger(), store=store)
    assert (again["status"], again["same_as"], again["users_written"]) == ("unchanged", first["run_id"], 0)
    assert again["fingerprint"] == first["fingerprint"]
    assert store.features is loaded  # nothing was published
    record = store.get_run(again["run_id"])
    assert record is not None
    assert (record["status"], record["same_as"], record["fingerprint"]) == ("unchanged", first["run_id"],
                                                                            first["fingerprint"])
    assert record["inputs"]["users.csv"]["size"] == (tmp_path / "data" / "users.csv").stat().st_size
    assert store.last_confirmed()["run_id"] == again["run_id"]  # type: ignore[index]
    third = pipeline.run(settings, pipeline.Trigger(), store=store)
    assert third["same_as"] == first["run_id"]  # the load, not the unchanged run


@pytest.mark.unit
@pytest.mark.parametrize("change", ["touch", "policy", "force", "contract"])
def test_a_change_of_input_policy_or_contract_loads_and_force_loads_anyway(
        tmp_path: Path, change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = data_copy(tmp_path)
    settings = Settings.from_env({"DATA_DIR": str(data)})
    store = MemoryStore()
    first = pipeline.run(settings, pipeline.Trigger(), store=store)
    trigger = pipeline.Trigger()
    if change == "touch":
        touch(data / "user_experiments.csv")
    elif change == "policy":
        trigger = pipeline.Trigger(policy="quarantine")
    elif change == "force":
        trigger = pipeline.Trigger(force=True)
    else:
        monkeypatch.setattr(inputs, "CONTRACT_VERSION", 10_000)  # a fix to the rules
    second = pipeline.run(settings, trigger, store=store)
    assert second["status"] == "succeeded" and second["users_written"] == 10
    assert (second["fingerprint"] == first["fingerprint"]) is (change == "force")


@pytest.mark.unit
def test_a_failed_run_does_not_count_and_a_missing_file_is_never_unchanged(tmp_path: Path) -> None:
    data = data_copy(tmp_path)
    settings = Settings.from_env({"DATA_DIR": str(data)})
    store = MemoryStore()
    first = pipeline.run(settings, pipeline.Trigger(), store=store)
    moved = (data / "users.csv").read_bytes()
    (data / "users.csv").unlink()
    with pytest.raises(pipeline.ContractViolation):
        pipeline.run(settings, pipeline.Trigger(), store=store)
    failed = store.runs[max(store.runs)]
    assert failed["status"] == "failed" and failed["inputs"]["users.csv"] is None and failed["fingerprint"]
    (data / "users.csv").write_bytes(moved)
    touch(data / "users.csv")
    assert pipeline.run(settings, pipeline.Trigger(), store=store)["status"] == "succeeded"
    assert first["status"] == "succeeded"


OLD_RUNS = """CREATE TABLE {table} (
    id bigserial PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    status text NOT NULL CHECK (status IN ('running', 'succeeded', 'partial', 'failed')),
    policy text NOT NULL,
    data_dir text NOT NULL,
    files jsonb,
    users_written bigint,
    seconds jsonb,
    error jsonb
)"""


def test_an_old_ledger_is_migrated_then_stamped_and_not_migrated_again(
        settings: Settings, db: Any, schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_core.store import sql

    table = sql.q(schema, sql.RUNS)
    db.run(f'CREATE SCHEMA "{schema}"')
    db.run(OLD_RUNS.format(table=table))
    db.run(f"INSERT INTO {table} (status, policy, data_dir, finished_at) VALUES ('succeeded', 'strict', 'x', now())")
    first = pipeline.run(settings, pipeline.Trigger())
    assert first["run_id"] == 2 and first["status"] == "succeeded"
    [[comment]] = db.run("SELECT obj_description(CAST(:t AS regclass), 'pg_class')", t=table)
    assert comment == sql.LEDGER_STAMP

    def no_ddl(schema: str) -> list[str]:
        raise AssertionError("a stamped ledger needs no DDL")

    monkeypatch.setattr(sql, "create_tables", no_ddl)
    monkeypatch.setattr(sql, "migrate_runs", no_ddl)
    again = pipeline.run(settings, pipeline.Trigger())
    assert (again["status"], again["same_as"]) == ("unchanged", 2)
    store = PostgresStore(settings.db, settings.schema)
    try:
        old, loaded, unchanged = (store.get_run(i) for i in (1, 2, 3))
        assert old is not None and old["fingerprint"] is None and old["status"] == "succeeded"
        assert loaded is not None and loaded["inputs"]["users.csv"]["key"] == str(settings.data_dir / "users.csv")
        assert unchanged is not None and (unchanged["status"], unchanged["same_as"]) == ("unchanged", 2)
        assert unchanged["fingerprint"] == loaded["fingerprint"]
        assert store.last_confirmed()["run_id"] == 3  # type: ignore[index]
        assert [r["run_id"] for r in store.list_runs(limit=5, status="unchanged")] == [3]
    finally:
        store.close()


def test_reading_an_old_ledger_before_any_run_migrates_it(settings: Settings, db: Any, schema: str) -> None:
    from etl_core.store import sql

    table = sql.q(schema, sql.RUNS)
    db.run(f'CREATE SCHEMA "{schema}"')
    db.run(OLD_RUNS.format(table=table))
    db.run(f"INSERT INTO {table} (status, policy, data_dir) VALUES ('failed', 'strict', 'x')")
    store = PostgresStore(settings.db, settings.schema)
    try:
        found = store.get_run(1)
        assert found is not None and found["status"] == "failed" and found["same_as"] is None
    finally:
        store.close()


def test_over_http_the_second_trigger_answers_unchanged_and_the_runs_list_shows_it(settings: Settings) -> None:
    import json

    from handler import lambda_function
    from tests.test_api import event, installed

    with installed(settings):
        first = json.loads(lambda_function.handler(event("trigger-etl.json"), None)["body"])
        reply = lambda_function.handler(event("trigger-etl.json"), None)
        listed = json.loads(lambda_function.handler(event("runs.json", path="/runs",
                                                          query={"status": "unchanged"}), None)["body"])
    body = json.loads(reply["body"])
    assert reply["statusCode"] == 200
    assert (body["status"], body["same_as"], body["users_written"]) == ("unchanged", first["run_id"], 0)
    assert set(body["inputs"]) == {"users.csv", "compounds.csv", "user_experiments.csv"}
    assert [r["run_id"] for r in listed["runs"]] == [body["run_id"]]


@pytest.mark.unit
def test_another_directory_with_files_of_the_same_names_sizes_and_times_is_loaded(tmp_path: Path) -> None:
    """A copy kept with its times (cp -p, rsync -a, tar) but with other contents is another input."""
    first = data_copy(tmp_path)
    second = tmp_path / "other"
    shutil.copytree(first, second)
    users = second / "users.csv"
    stat = users.stat()
    users.write_bytes(users.read_bytes().replace(b"Alice", b"Zelda"))  # same size
    os.utime(users, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    settings = Settings.from_env({"DATA_ROOT": str(tmp_path), "DATA_DIR": str(first)})
    store = MemoryStore()
    pipeline.run(settings, pipeline.Trigger(data="data"), store=store)
    summary = pipeline.run(settings, pipeline.Trigger(data="other"), store=store)
    assert summary["status"] == "succeeded"
    assert store.features is not None and "Zelda" in store.features["user_name"].to_pylist()


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_an_unchanged_runs_record_says_what_its_trigger_answered(kind: str, tmp_path: Path, request: Any) -> None:
    """files {} and users_written 0, from the trigger and from /runs/{id} alike (not null, null)."""
    if kind == "memory":
        settings, store = Settings.from_env({"DATA_DIR": str(data_copy(tmp_path))}), MemoryStore()
    else:
        env = request.getfixturevalue("env")
        settings = Settings.from_env({**env, "DATA_DIR": str(data_copy(tmp_path))})
        store = PostgresStore(settings.db, settings.schema)
    try:
        pipeline.run(settings, pipeline.Trigger(), store=store)
        again = pipeline.run(settings, pipeline.Trigger(), store=store)
        record = store.get_run(again["run_id"])
        assert record is not None and record["status"] == "unchanged"
        assert (record["files"], record["users_written"]) == (again["files"], again["users_written"]) == ({}, 0)
    finally:
        store.close()
