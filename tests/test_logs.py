"""Structured logs: each line one JSON object in the Lambda runtime's format, carrying the request id,
the event's kind and the run id, in worker threads and error reports too."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from etl_core import logs
from etl_core.config import Settings
from etl_core.errors import BadRequest, ContractViolation
from etl_core.service import Service
from etl_core.store.memory import MemoryStore
from handler import lambda_function
from handler.service import set_service
from tests.conftest import ROOT
from tests.helpers import logged, write_files
from tests.test_api import event

pytestmark = pytest.mark.unit


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level("INFO", logger="etl")
    yield caplog


def test_a_line_has_the_event_as_message_its_fields_and_a_level(lines: pytest.LogCaptureFixture) -> None:
    logs.log_event("something", rows=3, file="users.csv")
    logs.log_event("went wrong", level=logging.ERROR, message="m", level_="x", name="n")
    first, second = logged(lines.records)
    assert {k: first[k] for k in ("message", "event", "level", "logger", "rows", "file")} == {
        "message": "something", "event": "something", "level": "INFO", "logger": "etl", "rows": 3,
        "file": "users.csv"}
    assert second["level"] == "ERROR" and (second["message_"], second["name_"]) == ("m", "n")  # never lost


def carried(work: Callable[[str], None]) -> Callable[[str], None]:
    """``work`` with the caller's context, for a thread of its own (which starts with an empty one)."""
    fields = logs.current()

    def with_context(step: str) -> None:
        with logs.bound(**fields):
            work(step)

    return with_context


def test_the_context_follows_the_code_and_is_handed_to_threads_explicitly(lines: pytest.LogCaptureFixture) -> None:
    def work(step: str) -> None:
        logs.log_event("thread_step", step=step)

    with logs.bound(kind="direct", run_id=5, **{logs.REQUEST_ID: "req-9"}):
        logs.log_event("main")
        bare = threading.Thread(target=work, args=("bare",))  # context variables do not follow a thread
        handed = threading.Thread(target=carried(work), args=("carried",))
        for thread in (bare, handed):
            thread.start()
            thread.join()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(carried(work), ["pool-1", "pool-2"]))
    logs.log_event("after")
    found = {line.get("step", line["event"]): line for line in logged(lines.records)}
    for name in ("main", "carried", "pool-1", "pool-2"):
        assert (found[name]["requestId"], found[name]["kind"], found[name]["run_id"]) == ("req-9", "direct", 5), name
    assert "run_id" not in found["bare"] and "run_id" not in found["after"]


def test_in_the_runtimes_text_format_the_fields_are_the_message(lines: pytest.LogCaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_fields_in_message", True)
    with logs.bound(run_id=2):
        logs.log_event("file_read", rows=10)
    [record] = [r for r in lines.records if r.name == "etl"]
    assert json.loads(record.getMessage()) == {"run_id": 2, "event": "file_read", "rows": 10}


# Through the Lambda entry: one request id on every line of one invocation.

def context(request_id: str) -> Any:
    return SimpleNamespace(aws_request_id=request_id, function_name="etl", invoked_function_arn="arn:x",
                           get_remaining_time_in_millis=lambda: 60_000)


@pytest.fixture
def memory_service(tmp_path: Any) -> Iterator[Service]:
    data = write_files(tmp_path / "data", {"users.csv": "user_id,name,email,signup_date\n1,,a@x,2023-01-01\n"
                                                        "2,Bob,b@x,2023-01-01\n3,Cy,c@x,2023-01-01\n"})
    service = Service(Settings.from_env({"DATA_DIR": str(data), "DATA_ROOT": str(tmp_path)}), MemoryStore(),
                      emit=lambda line: None)
    set_service(service)
    yield service
    set_service(None)


def test_other_libraries_lines_carry_the_context_too() -> None:
    """The runtime's handler gets ``with_context``: a line of Mangum's logger, written inside an
    invocation, carries its kind (and run id) in the runtime's JSON format; outside, nothing."""
    from awslambdaric.lambda_runtime_log_utils import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.terminator = ""  # the formatter ends each line itself
    handler.setFormatter(JsonFormatter())
    assert logs.with_context(logs.with_context(handler)).filters == handler.filters[:1]  # once only
    other = logging.getLogger("mangum.http")
    saved = (other.level, other.propagate)
    other.addHandler(handler)
    other.setLevel(logging.INFO)
    other.propagate = False
    try:
        with logs.bound(kind="http", run_id=7):
            other.info("%s %s %s", "GET", "/trigger-etl", 200)
        other.info("outside an invocation")
    finally:
        other.removeHandler(handler)
        other.level, other.propagate = saved
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["message"], inside["logger"]) == ("GET /trigger-etl 200", "mangum.http")
    assert (inside["kind"], inside["run_id"]) == ("http", 7)
    assert "kind" not in outside and "run_id" not in outside


def test_every_line_of_an_http_invocation_carries_its_request_id_kind_and_run(
        memory_service: Service, lines: pytest.LogCaptureFixture) -> None:
    reply = lambda_function.handler(event("trigger-etl.json", query={"policy": "quarantine"}), context("req-http"))
    assert reply["statusCode"] == 200
    reply = lambda_function.handler(event("trigger-etl.json"), context("req-http-2"))  # strict: 422
    assert reply["statusCode"] == 422
    found = logged(lines.records)
    first = [line for line in found if line["requestId"] == "req-http"]
    second = [line for line in found if line["requestId"] == "req-http-2"]
    assert len(first) + len(second) == len(found)
    assert [line["event"] for line in first] == ["run_started", "file_read", "file_read", "file_read", "run_finished"]
    assert {line["kind"] for line in found} == {"http"} and {line["run_id"] for line in first} == {1}
    assert [line["event"] for line in second][-2:] == ["run_failed", "request_failed"]
    assert {line["run_id"] for line in second} == {2}
    assert (second[-1]["level"], second[-1]["status"], second[-1]["code"]) == ("WARNING", 422, "contract_violation")


def test_a_failed_direct_invocation_says_so_with_its_request_id(memory_service: Service,
                                                                lines: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ContractViolation):
        lambda_function.handler({"action": "trigger-etl"}, context("req-direct"))
    with pytest.raises(BadRequest):
        lambda_function.handler({"action": "list-runs", "limit": 0}, context("req-bad"))
    found = logged(lines.records)
    assert {line["requestId"] for line in found} == {"req-direct", "req-bad"}
    failed = [line for line in found if line["event"] == "invocation_failed"]
    assert [(f["requestId"], f["kind"], f["code"], f["level"]) for f in failed] == [
        ("req-direct", "direct", "contract_violation", "WARNING"), ("req-bad", "direct", "bad_request", "WARNING")]
    assert failed[0]["run_id"] == 1


def test_a_bug_is_an_error_line_with_its_traceback_and_request_id(memory_service: Service,
                                                                  lines: pytest.LogCaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_core import guard

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(guard, "check_volume", broken)
    reply = lambda_function.handler(event("trigger-etl-quarantine.json"), context("req-bug"))
    assert reply["statusCode"] == 500
    found = logged(lines.records)
    assert {line["requestId"] for line in found} == {"req-bug"} and {line["kind"] for line in found} == {"http"}
    [bug] = [line for line in found if line["event"] == "internal_error"]
    assert bug["level"] == "ERROR" and "ZeroDivisionError: a bug" in bug["traceback"] and bug["run_id"] == 1
    assert [line["event"] for line in found if line["level"] == "ERROR"] == [
        "run_failed", "internal_error", "request_failed"]


def test_the_schedule_kind(memory_service: Service, lines: pytest.LogCaptureFixture) -> None:
    memory_service.settings = Settings.from_env({"DATA_DIR": str(ROOT / "data")})
    lambda_function.handler({"source": "aws.events", "detail-type": "Scheduled Event"}, context("req-cron"))
    assert {(line["kind"], line["requestId"]) for line in logged(lines.records)} == {("schedule", "req-cron")}


@pytest.mark.parametrize(("evt", "kind"), [
    ({"Records": [{"eventSource": "aws:s3"}]}, "s3"), ({"source": "aws.events"}, "schedule"),
    ({"action": "health"}, "direct"), ({"routeKey": "GET /health"}, "http"), ([1], "direct"), (None, "direct"),
])
def test_event_kinds(evt: Any, kind: str) -> None:
    assert lambda_function.event_kind(evt) == kind
