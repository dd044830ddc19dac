"""The Lambda entry with the recorded events in events/: HTTP through Mangum and FastAPI, direct
invocations, and events it cannot route.  Real PostgreSQL behind it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from etl_core.config import Settings
from etl_core.errors import BadRequest, ContractViolation, UnsupportedEvent
from etl_core.pipeline import Service
from handler import lambda_function
from handler.service import set_service
from tests.helpers import write_files

EVENTS = Path(__file__).resolve().parent.parent / "events"


def event(name: str, *, query: dict[str, str] | None = None, path: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((EVENTS / name).read_text())
    found = copy.deepcopy(found)
    if query is not None:
        found["queryStringParameters"] = query
        found["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
    if path is not None:
        found["rawPath"] = path
        found["requestContext"]["http"]["path"] = path
    return found


@contextmanager
def installed(settings: Settings) -> Iterator[Service]:
    """The handler's process-wide service, built from these settings for the duration."""
    service = Service(settings)
    set_service(service)
    try:
        yield service
    finally:
        service.close()
        set_service(None)


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    with installed(settings) as service:
        yield service


def call(evt: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    reply = lambda_function.handler(evt, None)
    return reply["statusCode"], json.loads(reply["body"])


def test_get_trigger_etl_runs_the_job_and_returns_the_summary(service: Service) -> None:
    status, body = call(event("trigger-etl.json"))
    assert status == 200
    assert body["status"] == "succeeded"
    assert body["users_written"] == 10
    assert body["files"]["users.csv"]["rows_read"] == 10


def test_runs_id_returns_the_recorded_run(service: Service) -> None:
    _, summary = call(event("trigger-etl.json"))
    status, body = call(event("get-run-1.json", path=f"/runs/{summary['run_id']}"))
    assert status == 200
    assert (body["run_id"], body["status"], body["users_written"]) == (summary["run_id"], "succeeded", 10)


def test_an_unknown_run_is_404(service: Service) -> None:
    call(event("trigger-etl.json"))
    status, body = call(event("get-run-1.json", path="/runs/424242"))
    assert (status, body["error"]["code"]) == (404, "run_not_found")


def test_health_checks_the_database(service: Service) -> None:
    status, body = call(event("health.json"))
    assert status == 200
    assert body["status"] == "ok" and body["server_version"]


def test_a_bad_policy_is_400_naming_the_choices(service: Service) -> None:
    status, body = call(event("trigger-etl.json", query={"policy": "lenient"}))
    assert status == 400
    assert "strict, quarantine" in body["error"]["message"]


@pytest.mark.parametrize("data", ["../etc", "/etc", "sub/../../x"])
def test_a_data_path_outside_the_root_is_400(service: Service, data: str) -> None:
    status, body = call(event("trigger-etl.json", query={"data": data}))
    assert (status, body["error"]["code"]) == (400, "bad_request")


def test_a_symlink_leading_out_of_the_root_is_400(env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_files(root / "good", {})
    (root / "escape").symlink_to(tmp_path)
    settings = Settings.from_env({**env, "DATA_ROOT": str(root), "DATA_DIR": str(root / "good")})
    from etl_core.pipeline import resolve_data_dir
    assert resolve_data_dir(settings, "good") == root / "good"
    with pytest.raises(BadRequest, match="outside"):
        resolve_data_dir(settings, "escape")


def test_a_contract_violation_is_422_with_the_violations(env: dict[str, str], tmp_path: Path) -> None:
    data = write_files(tmp_path / "bad", {"users.csv": "user_id,name,email,signup_date\n1,,a@x,2023-01-01\n"})
    with installed(Settings.from_env({**env, "DATA_DIR": str(data)})):
        status, body = call(event("trigger-etl.json"))
    assert status == 422
    assert body["error"]["violations"]["first"][0]["rule"] == "empty_value"
    assert body["error"]["violations"]["first"][0]["line"] == 2


def test_quarantine_through_the_query_string(env: dict[str, str], tmp_path: Path) -> None:
    data = write_files(tmp_path / "bad", {"users.csv": "user_id,name,email,signup_date\n1,,a@x,2023-01-01\n"
                                                      "2,Bob,b@x,2023-01-01\n3,Cy,c@x,2023-01-01\n"})
    with installed(Settings.from_env({**env, "DATA_DIR": str(data)})):
        status, body = call(event("trigger-etl-quarantine.json"))
    assert status == 200
    assert body["status"] == "partial"
    assert body["files"]["users.csv"]["rows_rejected"] == 1


def test_a_direct_invocation_returns_the_summary(service: Service) -> None:
    reply = lambda_function.handler(json.loads((EVENTS / "direct-trigger.json").read_text()), None)
    assert reply["status"] == "succeeded"


def test_a_failed_direct_invocation_raises_with_a_json_error_message(env: dict[str, str], tmp_path: Path) -> None:
    data = write_files(tmp_path / "bad", {"compounds.csv": None})
    with installed(Settings.from_env({**env, "DATA_DIR": str(data)})), pytest.raises(ContractViolation) as info:
        lambda_function.handler({"action": "trigger-etl"}, None)
    payload = json.loads(str(info.value))  # what the runtime puts in errorMessage
    assert payload["violations"]["first"][0]["rule"] == "missing_file"


@pytest.mark.parametrize("bad", [
    json.loads((EVENTS / "bad-event.json").read_text()), {"action": "explode"}, [1, 2], "trigger", None,
    {"action": "get-run", "run_id": "7"},
])
def test_an_event_it_cannot_route_gets_a_clear_error(bad: Any) -> None:
    with pytest.raises(UnsupportedEvent) as info:
        lambda_function.handler(bad, None)
    payload = json.loads(str(info.value))
    assert payload["code"] == "unsupported_event"
    assert "example" in payload


def test_a_trigger_while_another_run_holds_the_lock_is_409(service: Service, settings: Settings,
                                                            database_url: str) -> None:
    from etl_core.config import db_settings
    from etl_core.store import db as dbmod
    from etl_core.store import sql

    call(event("trigger-etl.json"))
    other = dbmod.connect(db_settings({"DATABASE_URL": database_url}))
    try:
        other.run("SELECT pg_advisory_lock(hashtext(:name))", name=sql.lock_name(settings.schema))
        status, body = call(event("trigger-etl.json"))
    finally:
        dbmod.close_quietly(other)
    assert (status, body["error"]["code"]) == (409, "run_in_progress")


def test_an_unreachable_database_is_503_without_the_password(env: dict[str, str]) -> None:
    with installed(Settings.from_env({**env, "DATABASE_URL": "postgresql://etl:s3cret@127.0.0.1:1/lab",
                                      "DB_CONNECT_ATTEMPTS": "1", "DB_CONNECT_TIMEOUT": "1"})):
        status, body = call(event("health.json"))
        trigger_status, _ = call(event("trigger-etl.json"))
    assert (status, trigger_status) == (503, 503)
    assert body["error"]["code"] == "database_unavailable"
    assert "127.0.0.1:1" in body["error"]["message"] and "s3cret" not in json.dumps(body)
