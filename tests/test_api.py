"""The Lambda entry with the recorded events in events/: HTTP through Mangum and FastAPI, direct
invocations, and events it cannot route.  Real PostgreSQL behind it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from etl_core.config import Settings
from etl_core.errors import BadRequest, ContractViolation, InternalError, RunNotFound, UnsupportedEvent
from etl_core.service import Service, Trigger
from handler import lambda_function, models
from handler.service import set_service
from tests import helpers
from tests.conftest import ROOT
from tests.helpers import write_files

EVENTS = Path(__file__).resolve().parent.parent / "events"


def event(name: str, *, query: dict[str, str] | None = None, path: str | None = None,
          method: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((EVENTS / name).read_text())
    found = copy.deepcopy(found)
    if query is not None:
        found["queryStringParameters"] = query
        found["rawQueryString"] = urlencode(query)
    if path is not None:
        found["rawPath"] = path
        found["requestContext"]["http"]["path"] = path
    if method is not None:
        found["requestContext"]["http"]["method"] = method
        found["routeKey"] = found["requestContext"]["routeKey"] = "$default"
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


def test_post_trigger_etl_runs_the_job_and_is_not_to_be_cached(service: Service) -> None:
    reply = lambda_function.handler(event("post-trigger-etl.json"), None)
    body = json.loads(reply["body"])
    assert (reply["statusCode"], body["status"], body["users_written"]) == (200, "succeeded", 10)
    assert reply["headers"]["cache-control"] == "no-store"
    status, again = call(event("post-trigger-etl.json", query={"force": "true"}))
    assert (status, again["run_id"], again["status"]) == (200, body["run_id"] + 1, "succeeded")


def _recorded_runs(service: Service) -> list[int]:
    return [run["run_id"] for run in service.runs(limit=1000, status=None, before=None)["runs"]]


def test_post_and_get_carry_the_same_trigger(recorded_triggers: list[Trigger]) -> None:
    query = {"policy": "quarantine", "data": "sub", "force": "Yes"}
    call(event("post-trigger-etl.json", query=query))
    call(event("trigger-etl.json", query=query))
    assert recorded_triggers == [Trigger(policy="quarantine", data="sub", force=True)] * 2


@pytest.mark.parametrize("body", ['{"policy": "quarantine"}', "policy=quarantine", " "])
def test_a_post_trigger_with_a_body_is_400_and_starts_nothing(service: Service, body: str) -> None:
    """The parameters are the query string's: a body would be ignored, and the run would not be the one
    the caller meant."""
    evt = event("post-trigger-etl.json")
    evt["body"] = body
    evt["headers"]["content-type"] = "application/json"
    status, answer = call(evt)
    assert (status, answer["error"]["code"]) == (400, "bad_request"), answer
    assert "query string" in answer["error"]["message"]
    assert _recorded_runs(service) == []


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"])
def test_no_other_method_starts_a_run(service: Service, method: str) -> None:
    """Only POST (and, locally, GET) start a run: a HEAD (what a link checker sends) or a CORS
    preflight's OPTIONS is 405 and records nothing."""
    reply = lambda_function.handler(event("post-trigger-etl.json", method=method), None)
    assert reply["statusCode"] == 405, reply
    assert reply["headers"]["allow"] == "GET, POST"
    assert _recorded_runs(service) == []


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
    from etl_core.inputs import resolve_data_dir
    assert resolve_data_dir(settings, "good") == root / "good"
    with pytest.raises(BadRequest, match="outside"):
        resolve_data_dir(settings, "escape")
    outside = write_files(tmp_path / "outside", {})
    links = write_files(root / "links", {})
    (links / "users.csv").unlink()
    (links / "users.csv").symlink_to(outside / "users.csv")  # the directory is inside, one file is not
    (links / "compounds.csv").unlink()
    (links / "compounds.csv").symlink_to(root / "good" / "compounds.csv")  # a file inside the root: fine
    with pytest.raises(BadRequest, match=r"users\.csv leads outside the data root") as info:
        resolve_data_dir(settings, "links")
    assert str(tmp_path) not in str(info.value.to_dict())
    (links / "users.csv").unlink()
    (links / "users.csv").symlink_to(root / "good" / "users.csv")
    assert resolve_data_dir(settings, "links") == root / "links"


def test_a_contract_violation_is_422_with_the_violations(env: dict[str, str], tmp_path: Path) -> None:
    data = write_files(tmp_path / "bad", {"users.csv": "user_id,name,email,signup_date\n1,,a@x,2023-01-01\n"})
    with installed(Settings.from_env({**env, "DATA_DIR": str(data)})):
        status, body = call(event("trigger-etl.json"))
    assert status == 422
    assert body["error"]["violations"]["first"][0]["rule"] == "empty_value"
    assert body["error"]["violations"]["first"][0]["line"] == 2


def test_the_runs_routes_show_a_failed_runs_violations_without_the_rows_text(env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    """Rejected rows are personal data, behind the rejects route's permission: whoever may read runs
    sees where and which rule, not the name or the e-mail address."""
    data = write_files(tmp_path / "bad", {"users.csv": "user_id,name,email,signup_date\n"
                                                        "1,Alice Liddell,alice@example.org,2023-02-30\n"})
    with installed(Settings.from_env({**env, "DATA_DIR": str(data)})):
        status, failed = call(event("post-trigger-etl.json"))
        run_id = failed["error"]["run_id"]
        _, record = call(event("get-run-1.json", path=f"/runs/{run_id}"))
        _, page = call(event("runs.json"))
        direct = lambda_function.handler({"action": "get-run", "run_id": run_id}, None)
    assert status == 422 and "alice@example.org" in json.dumps(failed)  # the caller who started it
    for shown in (record, page["runs"][0]):
        assert shown["run_id"] == run_id and shown["status"] == "failed"
        first = shown["error"]["violations"]["first"]
        assert first[0] == {"file": "users.csv", "line": 2, "column": "signup_date", "rule": "not_iso_date"}
        assert first and all(set(item) == {"file", "line", "column", "rule"} for item in first), first
        assert shown["error"]["violations"]["total"] == failed["error"]["violations"]["total"]
        assert "alice" not in json.dumps(shown).lower() and "Liddell" not in json.dumps(shown)
    assert "alice@example.org" in json.dumps(direct)  # a direct invocation: a permission on the whole function


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


# One parser for a trigger's values: the query string's strings and a direct invocation's JSON values.

@pytest.mark.parametrize(("given", "expected"), [
    ({}, Trigger()),
    ({"policy": "quarantine", "data": "sub/dir", "force": "true"}, Trigger("quarantine", "sub/dir", True)),
    ({"force": True}, Trigger(force=True)),
    ({"force": False}, Trigger(force=False)),
    *[({"force": word}, Trigger(force=True)) for word in ("true", "TRUE", "1", "yes", "Yes")],
    *[({"force": word}, Trigger(force=False)) for word in ("false", "False", "0", "no", "NO")],
    ({"policy": "", "data": "", "force": ""}, Trigger()),
    ({"policy": None, "data": None, "force": None}, Trigger()),
])
def test_a_trigger_is_parsed_from_strings_or_json_values(given: dict[str, Any], expected: Trigger) -> None:
    assert Trigger(**models.parse(models.TriggerQuery, given).model_dump()) == expected


@pytest.mark.parametrize(("given", "says"), [
    ({"policy": "lenient"}, "policy must be one of strict, quarantine (or absent), not 'lenient'"),
    ({"policy": 1}, "policy must be one of strict, quarantine (or absent), not 1 (a number)"),
    ({"policy": ["strict"]}, "policy must be one of strict, quarantine (or absent), not [\"strict\"] (a list)"),
    ({"data": 123}, "data must be a string, a directory below the data root (or absent), not 123 (a number)"),
    ({"data": {"dir": "x"}}, "data must be a string"),
    ({"force": "maybe"}, "force must be true or false (also 1/0, yes/no; or absent), not 'maybe'"),
    ({"force": 1}, "force must be true or false (also 1/0, yes/no; or absent), not 1 (a number)"),
    ({"force": "on"}, "force must be true or false"),
    ({"polcy": "strict"}, "unknown parameter(s) 'polcy'; the accepted ones are policy, data, force and dry_run"),
])
def test_a_bad_trigger_value_names_the_field_and_what_it_accepts(given: dict[str, Any], says: str) -> None:
    with pytest.raises(BadRequest) as info:
        models.parse(models.TriggerQuery, given)
    assert says in info.value.message


def test_a_long_bad_value_is_repeated_cut_short() -> None:
    with pytest.raises(BadRequest) as info:
        models.parse(models.TriggerQuery, {"policy": "x" * 100_000})
    assert len(info.value.message) < 400 and "(99800 more characters)" in info.value.message


@pytest.fixture
def recorded_triggers(service: Service, monkeypatch: pytest.MonkeyPatch) -> list[Trigger]:
    """The triggers the service receives; the job itself is not run."""
    from etl_core import pipeline

    seen: list[Trigger] = []

    def run(settings: Settings, trigger: Trigger, *, store: Any = None) -> dict[str, Any]:
        seen.append(trigger)
        return {"status": "succeeded"}

    monkeypatch.setattr(pipeline, "run", run)
    return seen


def test_http_and_direct_invocation_carry_the_same_trigger(recorded_triggers: list[Trigger]) -> None:
    call(event("trigger-etl.json", query={"policy": "quarantine", "data": "sub", "force": "Yes"}))
    lambda_function.handler({"action": "trigger-etl", "policy": "quarantine", "data": "sub", "force": True}, None)
    call(event("trigger-etl.json"))
    lambda_function.handler({"action": "trigger-etl"}, None)
    lambda_function.handler({"source": "aws.events", "detail-type": "Scheduled Event"}, None)
    assert recorded_triggers == [Trigger("quarantine", "sub", True)] * 2 + [Trigger()] * 3


@pytest.mark.parametrize(("query", "field"), [
    ({"force": "maybe"}, "force"), ({"policy": "lenient"}, "policy"), ({"forse": "true"}, "forse"),
])
def test_a_bad_trigger_is_400_over_http_and_by_direct_invocation(recorded_triggers: list[Trigger],
                                                                  query: dict[str, str], field: str) -> None:
    status, body = call(event("trigger-etl.json", query=query))
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert field in body["error"]["message"]
    with pytest.raises(BadRequest) as info:
        lambda_function.handler({"action": "trigger-etl", **query}, None)
    # the same answer, the parameter said to be in the event rather than in the query
    assert json.loads(str(info.value)) == json.loads(json.dumps(body["error"]).replace('query', 'event'))
    assert recorded_triggers == []


@pytest.mark.parametrize("data", [123, ["sub"], True])
def test_a_direct_trigger_whose_data_is_not_a_string_is_a_bad_request(service: Service, data: Any) -> None:
    with pytest.raises(BadRequest) as info:
        lambda_function.handler({"action": "trigger-etl", "data": data}, None)
    payload = json.loads(str(info.value))
    assert payload["code"] == "bad_request" and "parameter data: data must be a string" in payload["message"]


# A data value the file system refuses is the caller's mistake (400), and no answer names the server's paths.

@pytest.mark.parametrize(("data", "reason"), [
    ("x" * 300, "file name too long"),
    ("a/" * 3000, "file name too long"),
    ("\x00", "embedded null byte"),
    ("sub\x00dir", "embedded null byte"),
], ids=["component-too-long", "path-too-long", "nul", "nul-inside"])
def test_a_data_value_the_file_system_refuses_is_400_without_the_servers_paths(
        service: Service, settings: Settings, data: str, reason: str) -> None:
    status, body = call(event("trigger-etl.json", query={"data": data}))
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert reason in body["error"]["message"]
    with pytest.raises(BadRequest) as info:
        lambda_function.handler({"action": "trigger-etl", "data": data}, None)
    assert json.loads(str(info.value)) == body["error"]
    for text in (json.dumps(body), str(info.value)):
        assert str(settings.data_root) not in text and str(ROOT) not in text
        assert len(text) < 1000


def test_a_symlink_loop_is_400_without_the_servers_paths(env: dict[str, str], tmp_path: Path) -> None:
    from etl_core.inputs import resolve_data_dir

    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    settings = Settings.from_env({**env, "DATA_ROOT": str(root), "DATA_DIR": str(root)})
    for data in ("a", "a/deeper"):
        with pytest.raises(BadRequest) as info:
            resolve_data_dir(settings, data)
        assert "symbolic link loop" in info.value.message
        assert str(tmp_path) not in json.dumps(info.value.to_dict())
        assert info.value.details == {"data": data}


def test_every_refusal_of_a_data_value_names_only_that_value(env: dict[str, str], tmp_path: Path) -> None:
    from etl_core.inputs import resolve_data_dir

    root = tmp_path / "root"
    write_files(root / "good", {})
    (root / "escape").symlink_to(tmp_path)
    (root / "file").write_text("x")
    settings = Settings.from_env({**env, "DATA_ROOT": str(root), "DATA_DIR": str(root / "good")})
    for data in ("/etc", "../x", "escape", "missing", "file", "good/users.csv", "x" * 300, "\x00"):
        with pytest.raises(BadRequest) as info:
            resolve_data_dir(settings, data)
        assert str(tmp_path) not in json.dumps(info.value.to_dict()), data


# Every answer of status 400 or more is our JSON document, Starlette's and FastAPI's own included.

def test_a_run_id_beyond_postgresqls_bigint_is_404_not_a_database_error(service: Service) -> None:
    call(event("trigger-etl.json"))
    for run_id in ("99999999999999999999", "-99999999999999999999", "9223372036854775808"):
        status, body = call(event("get-run-1.json", path=f"/runs/{run_id}"))
        assert (status, body["error"]["code"]) == (404, "run_not_found"), run_id
    with pytest.raises(RunNotFound):
        lambda_function.handler({"action": "get-run", "run_id": 99999999999999999999}, None)
    status, body = call(event("get-run-1.json", path="/runs/9223372036854775807"))
    assert (status, body["error"]["code"]) == (404, "run_not_found")


@pytest.mark.parametrize("run_id", ["abc", "1.5", "9" * 5000])
def test_a_run_id_that_is_not_an_integer_is_400_naming_the_parameter(service: Service, run_id: str) -> None:
    status, body = call(event("get-run-1.json", path=f"/runs/{run_id}"))
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert body["error"]["message"].startswith("invalid request: path parameter run_id: ")
    assert body["error"]["parameters"][0]["parameter"] == "run_id"
    assert len(reply_text := json.dumps(body)) < 2000, reply_text


def test_an_unknown_route_is_404_json_listing_the_routes(service: Service) -> None:
    status, body = call(event("health.json", path="/nope"))
    assert (status, body["error"]["code"], body["error"]["type"]) == (404, "not_found", "RouteNotFound")
    assert "GET /nope" in body["error"]["message"] and "GET /trigger-etl" in body["error"]["message"]


def test_a_wrong_method_is_405_json_with_allow(service: Service) -> None:
    reply = lambda_function.handler(event("get-run-1.json", method="POST"), None)
    body = json.loads(reply["body"])
    assert (reply["statusCode"], body["error"]["code"]) == (405, "method_not_allowed")
    assert "POST /runs/1" in body["error"]["message"] and body["error"]["message"].endswith("answers GET")
    assert reply["headers"]["allow"] == "GET"


def test_every_error_answer_is_json(service: Service) -> None:
    for evt in (event("health.json", path="/nope"), event("trigger-etl.json", method="DELETE"),
                event("get-run-1.json", path="/runs/abc"), event("trigger-etl.json", query={"data": "x" * 300})):
        reply = lambda_function.handler(evt, None)
        assert reply["statusCode"] >= 400
        assert reply["headers"]["content-type"] == "application/json"
        assert set(json.loads(reply["body"])["error"]) >= {"type", "code", "message"}


def test_a_bug_of_ours_at_the_edge_is_500_internal_error_without_paths_and_logged(
        service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: Service) -> dict[str, Any]:
        raise FileNotFoundError(2, "No such file or directory", "/var/task/secret/settings.json")

    monkeypatch.setattr(Service, "health", broken)
    caplog.set_level("INFO", logger="etl")
    status, body = call(event("health.json"))
    assert (status, body["error"]["type"], body["error"]["code"]) == (500, "InternalError", "internal_error")
    assert body["error"]["message"] == "unexpected FileNotFoundError: [Errno 2] No such file or directory: '<path>'"
    with pytest.raises(InternalError) as info:
        lambda_function.handler({"action": "health"}, None)
    payload = json.loads(str(info.value))  # errorMessage
    assert payload == body["error"]
    assert isinstance(info.value.__cause__, FileNotFoundError)
    logged = helpers.logged(caplog.records, "internal_error")
    assert len(logged) == 2 and {line["level"] for line in logged} == {"ERROR"}
    assert all("/var/task/secret/settings.json" in line["traceback"] and "in broken" in line["traceback"]
               for line in logged)


def test_a_bug_of_ours_in_the_run_is_logged_with_its_traceback(
        service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from etl_core import features

    def broken(*args: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(features, "feature_batches", broken)  # the face, which the run calls
    caplog.set_level("INFO", logger="etl")
    status, body = call(event("trigger-etl.json"))
    assert (status, body["error"]["code"]) == (500, "internal_error")
    with pytest.raises(InternalError) as info:
        lambda_function.handler({"action": "trigger-etl"}, None)
    assert json.loads(str(info.value))["message"] == "unexpected ZeroDivisionError: division by zero"
    logged = helpers.logged(caplog.records, "internal_error")
    assert len(logged) == 2 and all("ZeroDivisionError: division by zero" in e["traceback"] for e in logged)


@pytest.mark.parametrize("bad", [{"requestContext": {}}, {"httpMethod": "GET"}, {"routeKey": "GET /health"},
                                 {"version": "2.0", "requestContext": {"http": {}}}])
def test_an_http_like_event_of_no_known_shape_is_unsupported(bad: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedEvent) as info:
        lambda_function.handler(bad, None)
    assert json.loads(str(info.value))["code"] == "unsupported_event"


# However long a bad line is, the answer stays small: each reported raw row and value is cut.

@pytest.mark.parametrize("trigger", ["trigger-etl.json", "trigger-etl-quarantine.json"])
def test_a_line_of_megabytes_gives_a_small_answer_that_says_it_was_cut(env: dict[str, str], tmp_path: Path,
                                                                        trigger: str) -> None:
    name, date = "N" * 3_000_000, "2023-" + "9" * 2_000_000
    data = write_files(tmp_path / "big", {"users.csv": "user_id,name,email,signup_date\n"
                                                       f"1,Al,a@x,2023-01-01\n2,{name},b@x,{date}\n"
                                                       "3,Cy,c@x,2023-01-01\n"})
    settings = Settings.from_env({**env, "DATA_DIR": str(data), "ETL_BLOCK_SIZE": str(16 << 20)})
    with installed(settings):
        reply = lambda_function.handler(event(trigger), None)
    assert len(reply["body"]) < 100_000
    body = json.loads(reply["body"])
    violations = body["violations"] if reply["statusCode"] == 200 else body["error"]["violations"]
    [row] = [v for v in violations["first"] if v["file"] == "users.csv"]
    assert (row["line"], row["rule"]) == (3, "not_iso_date")
    raw_length = len(f"2,{name},b@x,{date}")
    assert row["raw"] == f"2,{name[:198]}… ({raw_length - 200} more characters)"
    assert row["value"] == f"{date[:200]}… ({len(date) - 200} more characters)"


def test_a_short_reported_row_is_left_as_it_is(env: dict[str, str], tmp_path: Path) -> None:
    data = write_files(tmp_path / "bad", {"users.csv": "user_id,name,email,signup_date\n1,,a@x,2023-01-01\n"})
    with installed(Settings.from_env({**env, "DATA_DIR": str(data)})):
        _, body = call(event("trigger-etl.json"))
    assert body["error"]["violations"]["first"][0]["raw"] == "1,,a@x,2023-01-01"


# Run history, rejects and freshness, over HTTP and by direct invocation.

def quarantined(env: dict[str, str], tmp_path: Path, bad_users: int) -> Settings:
    """Settings whose data has, after three good users, ``bad_users`` users without a name (rejected
    under quarantine; no experiment refers to them)."""
    users = "user_id,name,email,signup_date\n" + "".join(
        f"{i},{'' if i > 3 else f'U{i}'},u{i}@x,2023-01-01\n" for i in range(1, bad_users + 4))
    data = write_files(tmp_path / "q", {"users.csv": users})
    return Settings.from_env({**env, "DATA_DIR": str(data)})


def pages(path: str, cursor: str, first: dict[str, str]) -> list[dict[str, Any]]:
    """Every page of ``path``, following ``next_<cursor>`` (the query parameter ``cursor``)."""
    found, query = [], dict(first)
    while True:
        status, body = call(event("runs.json", path=path, query=query))
        assert status == 200, body
        found.append(body)
        following = body[f"next_{cursor}"]
        if following is None:
            return found
        query = {**query, cursor: str(following)}


def test_runs_page_newest_first_without_gaps_or_repeats(env: dict[str, str], tmp_path: Path) -> None:
    with installed(quarantined(env, tmp_path, 1)):
        forced = {"policy": "quarantine", "force": "true"}  # the same input: without force, 'unchanged'
        ids = [call(event("trigger-etl-quarantine.json", query=forced))[1]["run_id"] for _ in range(3)]
        call(event("trigger-etl.json"))  # strict: failed
        ids.append(ids[-1] + 1)
        ids += [call(event("trigger-etl-quarantine.json", query=forced))[1]["run_id"] for _ in range(3)]
        found = pages("/runs", "before", {"limit": "2"})
        assert [len(p["runs"]) for p in found] == [2, 2, 2, 1]
        assert [r["run_id"] for p in found for r in p["runs"]] == ids[::-1]
        status, body = call(event("runs.json", path="/runs", query={"status": "failed"}))
        assert status == 200 and [(r["run_id"], r["error"]["code"]) for r in body["runs"]] == [
            (ids[3], "contract_violation")]
        direct = lambda_function.handler({"action": "list-runs", "limit": 3, "status": "partial", "before": ids[-1]},
                                         None)
        assert [r["run_id"] for r in direct["runs"]] == [ids[5], ids[4], ids[2]] and direct["next_before"] == ids[2]
        record = call(event("get-run-1.json", path=f"/runs/{ids[0]}"))[1]
        assert record == found[-1]["runs"][0] and record["rejects"] == 1


def test_rejects_page_without_gaps_or_repeats(env: dict[str, str], tmp_path: Path) -> None:
    with installed(quarantined(env, tmp_path, 7)):
        _, summary = call(event("trigger-etl-quarantine.json"))
        run_id = summary["run_id"]
        found = pages(f"/runs/{run_id}/rejects", "after", {"limit": "3"})
        rejects = [r for p in found for r in p["rejects"]]
        assert [len(p["rejects"]) for p in found] == [3, 3, 1]
        assert [r["seq"] for r in rejects] == list(range(1, 8)) and [r["line"] for r in rejects] == list(range(5, 12))
        assert rejects[0] == {"seq": 1, "file": "users.csv", "line": 5, "column": "name", "value": "",
                              "rule": "empty_value", "raw": "4,,u4@x,2023-01-01", "raw_sha256": None}
        direct = lambda_function.handler({"action": "get-rejects", "run_id": run_id, "after": 5}, None)
        assert direct == {"run_id": run_id, "rejects": rejects[5:], "next_after": None}
        status, body = call(event("runs.json", path=f"/runs/{run_id + 1}/rejects"))
        assert (status, body["error"]["code"]) == (404, "run_not_found")
        with pytest.raises(RunNotFound):
            lambda_function.handler({"action": "get-rejects", "run_id": run_id + 1}, None)


@pytest.mark.parametrize(("path", "query", "parameter"), [
    ("/runs", {"limit": "0"}, "limit"), ("/runs", {"limit": "1001"}, "limit"), ("/runs", {"limit": "x"}, "limit"),
    ("/runs", {"status": "done"}, "status"), ("/runs", {"before": "0"}, "before"), ("/runs", {"befor": "3"}, "befor"),
    ("/runs/1/rejects", {"after": "-1"}, "after"), ("/runs/1/rejects", {"limit": "1.5"}, "limit"),
])
def test_bad_paging_parameters_are_400_naming_them(service: Service, path: str, query: dict[str, str],
                                                   parameter: str) -> None:
    status, body = call(event("runs.json", path=path, query=query))
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert body["error"]["parameters"][0]["parameter"] == parameter
    assert body["error"]["message"].startswith(f"invalid request: query parameter {parameter}: ")
    action = {"action": "list-runs"} if path == "/runs" else {"action": "get-rejects", "run_id": 1}
    with pytest.raises(BadRequest) as info:
        lambda_function.handler({**action, **query}, None)
    assert json.loads(str(info.value))["parameters"][0]["parameter"] == parameter


@pytest.mark.parametrize("bad", [{"limit": True}, {"limit": 2.5}, {"before": "x"}, {"status": 1}])
def test_bad_direct_paging_values_are_bad_requests(service: Service, bad: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        lambda_function.handler({"action": "list-runs", **bad}, None)
    payload = json.loads(str(info.value))
    assert payload["parameters"][0] == {"parameter": next(iter(bad)), "in": "event", "message": ANY_TEXT}


class _AnyText:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_TEXT: Any = _AnyText()


def test_health_reports_the_last_confirming_run_and_turns_503_past_the_limit(
        env: dict[str, str], db: Any, schema: str) -> None:
    with installed(Settings.from_env({**env, "ETL_HEALTH_MAX_AGE_SECONDS": "3600"})):
        status, body = call(event("health.json"))
        assert (status, body["error"]["code"]) == (503, "features_stale")  # no run has confirmed anything yet
        assert body["error"]["last_confirmed"] is None and body["error"]["max_age_seconds"] == 3600
        _, summary = call(event("trigger-etl.json"))
        status, body = call(event("health.json"))
        assert status == 200 and body["max_age_seconds"] == 3600
        last = body["last_confirmed"]
        assert (last["run_id"], last["status"]) == (summary["run_id"], "succeeded") and 0 <= last["age_seconds"] < 60
        call(event("trigger-etl.json", query={"data": "../x"}))  # refused: not a run
        db.run(f'UPDATE "{schema}".etl_runs SET finished_at = finished_at - interval \'2 hours\'')
        status, body = call(event("health.json"))
        assert (status, body["error"]["code"], body["error"]["type"]) == (503, "features_stale", "FeaturesStale")
        assert 7200 <= body["error"]["last_confirmed"]["age_seconds"] < 7300
        with pytest.raises(Exception, match="features_stale") as info:
            lambda_function.handler({"action": "health"}, None)
        assert type(info.value).__name__ == "FeaturesStale"


def test_health_without_a_limit_never_judges_the_age(service: Service) -> None:
    status, body = call(event("health.json"))
    assert status == 200 and body["last_confirmed"] is None and body["max_age_seconds"] is None


def test_a_run_that_cannot_reach_the_database_prints_a_failed_metric(env: dict[str, str]) -> None:
    settings = Settings.from_env({**env, "DATABASE_URL": "postgresql://etl:s3cret@127.0.0.1:1/lab",
                                  "DB_CONNECT_ATTEMPTS": "1", "DB_CONNECT_TIMEOUT": "1"})
    printed: list[dict[str, Any]] = []
    service = Service(settings, emit=lambda line: printed.append(json.loads(line)))
    set_service(service)
    try:
        assert call(event("trigger-etl.json"))[0] == 503
    finally:
        set_service(None)
    [doc] = printed
    assert (doc["RunsFailed"], doc["error_code"]) == (1, "database_unavailable") and helpers.emf_problems(doc) == []
    assert "s3cret" not in json.dumps(doc)


def test_every_answer_fits_its_documented_model(env: dict[str, str], tmp_path: Path) -> None:
    """FastAPI checks answers against the models; this also checks direct invocations' answers."""
    from handler import models

    with installed(quarantined(env, tmp_path, 2)):
        summary = lambda_function.handler({"action": "trigger-etl", "policy": "quarantine"}, None)
        models.RunSummary.model_validate(summary)
        models.RunRecord.model_validate(lambda_function.handler({"action": "get-run", "run_id": 1}, None))
        models.RunsPage.model_validate(lambda_function.handler({"action": "list-runs"}, None))
        models.RejectsPage.model_validate(lambda_function.handler({"action": "get-rejects", "run_id": 1}, None))
        models.Health.model_validate(lambda_function.handler({"action": "health"}, None))
        for name in ("runs.json", "rejects-1.json", "health.json", "get-run-1.json"):
            assert call(event(name))[0] == 200, name


def test_a_repeated_trigger_parameter_is_400_not_the_last_value(service: Service) -> None:
    evt = event("trigger-etl.json")
    evt["rawQueryString"] = "force=true&force=false"
    evt["queryStringParameters"] = {"force": "true,false"}
    status, body = call(evt)
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert "more than once: force" in body["error"]["message"]


def test_a_404_lists_every_route_and_the_interactive_docs_are_not_served(service: Service) -> None:
    status, body = call(event("health.json", path="/nope", method="GET"))
    assert status == 404
    for route in ("POST /trigger-etl", "GET /runs/{run_id}/rejects", "GET /health", "GET /openapi.json"):
        assert route in body["error"]["message"], route
    assert call(event("health.json", path="/docs", method="GET"))[0] == 404  # not routed by the template either


# What each run changed, and the features as of a run (issue 24), over HTTP and by direct invocation.

def test_changes_and_features_as_of_a_run_page_without_gaps_and_refuse_a_purged_history(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    first_dir = write_files(tmp_path / "first", {})
    users = ("user_id,name,email,signup_date\n1,Alicia,alice@example.com,2023-01-01\n"
             "2,Bob,bob@example.com,2023-02-01\n3,Carol,carol@example.com,2023-03-01\n"
             "9,Zoe,zoe@example.com,2023-04-01\n")
    second_dir = write_files(tmp_path / "second", {"users.csv": users})
    with installed(Settings.from_env({**env, "DATA_DIR": str(first_dir)})):
        first = call(event("trigger-etl.json"))[1]
    with installed(Settings.from_env({**env, "DATA_DIR": str(second_dir)})):
        second = call(event("trigger-etl.json"))[1]
        # Alice renamed, Zoe added; the average changed (4 users now), so everyone's row changed
        assert second["changes"] == {"added": 1, "changed": 3, "removed": 0, "unchanged": 0}
        found = pages(f"/runs/{second['run_id']}/changes", "after", {"limit": "3"})
        changes = [c for p in found for c in p["changes"]]
        assert [len(p["changes"]) for p in found] == [3, 1]
        assert [(c["user_id"], c["change"]) for c in changes] == [(1, "changed"), (2, "changed"), (3, "changed"),
                                                                  (9, "added")]
        assert (changes[0]["before"]["user_name"], changes[0]["after"]["user_name"]) == ("Alice", "Alicia")
        assert changes[3]["before"] is None and changes[3]["after"]["total_experiments"] == 0

        as_of_first = [r for p in pages(f"/runs/{first['run_id']}/features", "after", {"limit": "2"})
                       for r in p["features"]]
        assert [(r["user_id"], r["user_name"], r["run_id"]) for r in as_of_first] == [
            (1, "Alice", first["run_id"]), (2, "Bob", first["run_id"]), (3, "Carol", first["run_id"])]
        direct = lambda_function.handler({"action": "get-features", "run_id": second["run_id"]}, None)
        assert [r["user_name"] for r in direct["features"]] == ["Alicia", "Bob", "Carol", "Zoe"]
        assert direct["next_after"] is None
        assert lambda_function.handler({"action": "get-changes", "run_id": second["run_id"], "limit": 3,
                                        "after": 3}, None) == {"run_id": second["run_id"], "changes": changes[3:],
                                                               "next_after": None}
        for route in ("changes", "features"):
            status, body = call(event("runs.json", path=f"/runs/{second['run_id'] + 1}/{route}"))
            assert (status, body["error"]["code"]) == (404, "run_not_found")
            status, body = call(event("runs.json", path=f"/runs/1/{route}", query={"after": "-1"}))
            assert (status, body["error"]["parameters"][0]["parameter"]) == (400, "after")
        # the history no longer holds run 1 (as a retention purge, or a run from before the history, leaves it)
        db.run(f'UPDATE "{schema}".etl_history_horizon SET kept_from = :n', n=second["run_id"])
        for route in ("changes", "features"):
            status, body = call(event("runs.json", path=f"/runs/{first['run_id']}/{route}"))
            assert (status, body["error"]["code"]) == (410, "history_purged")
            assert body["error"]["kept_from"] == second["run_id"]
        models_checked = lambda_function.handler({"action": "get-changes", "run_id": second["run_id"]}, None)
        from handler import models

        models.ChangesPage.model_validate(models_checked)
        models.FeaturesPage.model_validate(direct)


# What hostile or careless clients sent (a review's findings): each is answered as documented.

@pytest.mark.parametrize("path", ["/runs/1%2Frejects", "/runs/1%2frejects/", "/runs/1%2Fchanges"])
def test_an_encoded_slash_cannot_reach_another_route_than_the_authorizer_matched(service: Service, path: str) -> None:
    """API Gateway authorises ``GET /runs/{run_id}`` for a read token; decoded, the path would be the
    rejects route (personal data, another permission)."""
    found = event("get-run-1.json", path=path)
    status, body = call(found)
    assert (status, body["error"]["code"]) == (400, "bad_request"), body
    assert "%2F" in body["error"]["message"]


@pytest.mark.parametrize("proto", ["javascript", "HTTPS", ""])
def test_an_unknown_forwarded_scheme_leaves_404_and_405_as_they_are(service: Service, proto: str) -> None:
    for path, method, want in (("/nope", "GET", 404), ("/trigger-etl", "PUT", 405)):
        found = event("get-run-1.json", path=path, method=method)
        found["headers"]["x-forwarded-proto"] = proto
        status, body = call(found)
        assert status == want and body["error"]["code"] in ("not_found", "method_not_allowed"), body


def test_every_answer_says_not_to_cache_it_errors_and_pages_of_personal_data_too(service: Service) -> None:
    for found in (event("get-run-1.json", path="/runs/1/rejects"), event("get-run-1.json", path="/runs/999"),
                  event("get-run-1.json", path="/nope"), event("runs.json")):
        reply = lambda_function.handler(found, None)
        assert reply["headers"]["cache-control"] == "no-store", (found["rawPath"], reply)


def test_get_trigger_refuses_a_body_as_post_does(recorded_triggers: list[Trigger]) -> None:
    found = event("trigger-etl.json", query={"dry_run": "true"})
    found["body"] = '{"policy": "quarantine", "force": true}'
    found["isBase64Encoded"] = False
    status, body = call(found)
    assert (status, body["error"]["code"]) == (400, "bad_request") and "GET /trigger-etl" in body["error"]["message"]
    assert recorded_triggers == []


@pytest.mark.parametrize("key", [None, 7, ["k"]])
def test_an_s3_record_whose_key_is_not_text_is_unsupported(key: Any) -> None:
    with pytest.raises(UnsupportedEvent):
        lambda_function.handler({"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"},
                                                                              "object": {"key": key}}}]}, None)


@pytest.mark.parametrize("route", ["/trigger-etl", "/runs/1/restore"])
def test_a_bare_dry_run_is_refused_not_read_as_a_load(recorded_triggers: list[Trigger], route: str) -> None:
    found = event("post-trigger-etl.json", path=route, method="POST")
    found["rawQueryString"], found["queryStringParameters"] = "dry_run", {"dry_run": ""}
    status, body = call(found)
    assert (status, body["error"]["code"]) == (400, "bad_request") and "bare ?dry_run" in str(body), body
    assert recorded_triggers == []


@pytest.mark.parametrize("route", ["/runs", "/runs/1/rejects", "/health"])
def test_a_parameter_given_twice_is_refused_on_every_route(service: Service, route: str) -> None:
    found = event("get-run-1.json", path=route)
    found["rawQueryString"], found["queryStringParameters"] = "limit=1&limit=1000", {"limit": "1,1000"}
    status, body = call(found)
    assert (status, body["error"]["code"]) == (400, "bad_request") and "more than once: limit" in str(body), body


@pytest.mark.parametrize("spelled", ["+1", "1_0", "%201", "1%20", "01"])
def test_a_run_id_not_written_in_plain_digits_is_400(service: Service, spelled: str) -> None:
    """One run, one path: /runs/+1 and /runs/01 are not other names of /runs/1 that a cache, a log search
    or an authorizer's pattern would treat apart."""
    call(event("trigger-etl.json"))
    for route in ("/runs/{}", "/runs/{}/rejects", "/runs/{}/changes", "/runs/{}/features"):
        status, body = call(event("get-run-1.json", path=route.format(spelled)))
        assert (status, body["error"]["code"]) == (400, "bad_request"), (route, body)
        assert body["error"]["parameters"][0]["parameter"] == "run_id"
        assert "plain digits" in body["error"]["message"], body


@pytest.mark.parametrize(("path", "query"), [
    ("/runs", {"limit": "+5"}), ("/runs", {"before": "1_0"}), ("/runs/1/rejects", {"after": " 1"}),
    ("/runs/1/features", {"limit": "010"}), ("/runs/1/changes", {"after": "-0"}),
])
def test_a_paging_number_not_written_in_plain_digits_is_400(service: Service, path: str,
                                                             query: dict[str, str]) -> None:
    call(event("trigger-etl.json"))
    [parameter] = query
    status, body = call(event("runs.json", path=path, query=query))
    assert (status, body["error"]["code"]) == (400, "bad_request"), body
    assert body["error"]["parameters"][0]["parameter"] == parameter
    assert "plain digits" in body["error"]["message"], body


@pytest.mark.parametrize("route", ["/runs/1", "/health"])
def test_an_unknown_parameter_is_refused_on_every_route(service: Service, route: str) -> None:
    call(event("trigger-etl.json"))
    status, body = call(event("get-run-1.json", path=route, query={"limt": "5"}))
    assert (status, body["error"]["code"]) == (400, "bad_request"), body
    assert "unknown parameter(s) 'limt'" in body["error"]["message"], body
    assert call(event("get-run-1.json", path=route))[0] == 200
