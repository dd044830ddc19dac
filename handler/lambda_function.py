"""The Lambda entry point: ``handler.lambda_function.handler``.

HTTP events (API Gateway REST and HTTP APIs, function URLs, ALB) go through Mangum to the FastAPI
app.  Direct invocations name an action: ``{"action": "trigger-etl", "policy": "quarantine", "force": true}``,
``{"action": "get-run", "run_id": 3}``, ``{"action": "list-runs", "limit": 20, "status": "failed",
"before": 40}``, ``{"action": "get-rejects", "run_id": 3, "limit": 100, "after": 0}``, ``{"action":
"health"}``, ``{"action": "migrate"}``, and the sharded path's ``plan-shards``, ``count-shard`` and
``reduce-shards`` (docs/scale.md); an EventBridge schedule triggers the job.  Anything else is answered with an
UnsupportedEvent error that says what is expected.  Heavy imports (FastAPI, Mangum, pyarrow) happen
on first use, not at cold start.

Every line logged during an invocation carries its request id and the event's kind (http, direct,
schedule, s3), and the run id once there is one (``etl_core.logs``); the first invocation of the
process prints a ColdStart metric (``etl_core.metrics``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from etl_core import logs, metrics
from etl_core.errors import ConfigError, EtlError, InternalError, UnsupportedEvent, redact
from handler.service import get_service, get_settings, unexpected

ACTIONS = ("trigger-etl", "get-run", "list-runs", "get-rejects", "health", "migrate", "plan-shards", "count-shard",
           "reduce-shards")
_http_handler: Any = None
_cold = True

logs.configure()


def is_http_event(event: Any) -> bool:
    return isinstance(event, dict) and (
        "requestContext" in event or "httpMethod" in event or "routeKey" in event
    )


def event_kind(event: Any) -> str:
    """What sent the event: http, schedule (EventBridge), s3 (an S3 notification), or direct."""
    if is_http_event(event):
        return "http"
    if isinstance(event, dict) and event.get("source") == "aws.events":
        return "schedule"
    records = event.get("Records") if isinstance(event, dict) else None
    if isinstance(records, list) and records and isinstance(records[0], dict) \
            and records[0].get("eventSource") == "aws:s3":
        return "s3"
    return "direct"


def handler(event: Any, context: Any) -> Any:
    kind = event_kind(event)
    with logs.bound(kind=kind, **{logs.REQUEST_ID: getattr(context, "aws_request_id", None)}):
        _cold_start()
        try:
            return _http(event, context) if kind == "http" else _direct(event)
        except EtlError as exc:
            if isinstance(exc, InternalError):
                _unexpected(exc)  # caught further in: log its traceback
            _reported(exc)
            raise
        except Exception as exc:  # a bug of ours: an InternalError like any other error, its traceback logged
            raise _reported(_unexpected(exc)) from exc


def _cold_start() -> None:
    """The first invocation of this process prints the ColdStart metric (not when settings are bad:
    that invocation fails with bad_config anyway)."""
    global _cold
    if not _cold:
        return
    _cold = False
    try:
        settings = get_settings().metrics
    except ConfigError:
        return
    metrics.emit(metrics.cold_start_document(settings))


def _reported(exc: EtlError) -> EtlError:
    """The runtime reports errorType (our class name) and errorMessage (this JSON document); our own
    line says it too, with the invocation's context."""
    run_id = exc.details.get("run_id")
    level = logging.WARNING if exc.caller else logging.ERROR  # the caller's mistake, or the data's
    logs.log_event("invocation_failed", level=level, code=exc.code, error_type=type(exc).__name__,
                   reason=exc.message, **({"run_id": run_id} if run_id else {}))
    exc.args = (json.dumps(exc.to_dict(), default=str),)
    return exc


def _unexpected(exc: BaseException) -> InternalError:
    return unexpected(exc)


def _http(event: dict[str, Any], context: Any) -> Any:
    global _http_handler
    if _http_handler is None:
        from mangum import Mangum

        from handler.app import app

        _http_handler = Mangum(app, lifespan="off")
    try:
        return _http_handler(event, context)
    except Exception as exc:  # the app answers its own errors: this is Mangum refusing the event's shape
        raise UnsupportedEvent(
            "cannot route this event: it has requestContext, httpMethod or routeKey, but not the shape of "
            "an API Gateway, function URL or ALB event", reason=redact(f"{type(exc).__name__}: {exc}"),
            example={"action": "trigger-etl", "policy": "strict"}) from exc


def _direct(event: Any) -> dict[str, Any]:
    from etl_core.service import Trigger

    if isinstance(event, dict) and event.get("source") == "aws.events":
        return get_service().trigger(Trigger())
    if event_kind(event) == "s3":
        return _s3(event["Records"])
    action = event.get("action") if isinstance(event, dict) else None
    if action == "trigger-etl":
        fields = {key: value for key, value in event.items() if key != "action"}
        return get_service().trigger(Trigger.parse(**fields))
    if action == "get-run":
        run_id = event.get("run_id")
        if not isinstance(run_id, int) or isinstance(run_id, bool):
            raise UnsupportedEvent("get-run needs an integer run_id", example={"action": "get-run", "run_id": 1})
        return get_service().run_status(run_id)
    if action == "list-runs":
        from handler.models import RunsQuery, parse

        query = parse(RunsQuery, _fields(event))
        return get_service().runs(limit=query.limit, status=query.status, before=query.before)
    if action == "get-rejects":
        from handler.models import RejectsQuery, parse

        fields = _fields(event)
        run_id = fields.pop("run_id", None)
        if not isinstance(run_id, int) or isinstance(run_id, bool):
            raise UnsupportedEvent("get-rejects needs an integer run_id",
                                   example={"action": "get-rejects", "run_id": 1, "limit": 100, "after": 0})
        rejects = parse(RejectsQuery, fields)
        return get_service().rejects(run_id, limit=rejects.limit, after=rejects.after)
    if action == "health":
        return get_service().health()
    if action == "migrate":
        return get_service().migrate(apply=event.get("apply", True) is not False)
    # the sharded path's three steps, sent by the state machine (docs/scale.md)
    if action == "plan-shards":
        return get_service().plan_shards(event.get("batch"), event.get("shards"))
    if action == "count-shard":
        return get_service().count_shard(event)
    if action == "reduce-shards":
        return get_service().reduce_shards(event.get("batch"), force=event.get("force") is True)
    shown = sorted(event)[:10] if isinstance(event, dict) else type(event).__name__
    raise UnsupportedEvent(
        "cannot route this event: expected an HTTP event (API Gateway, function URL, ALB), an "
        "EventBridge schedule, an S3 notification (of a set's _manifest.json), or a direct invocation with "
        f"\"action\" one of {', '.join(ACTIONS)}",
        received=shown,
        example={"action": "trigger-etl", "policy": "strict"},
    )


def _s3(records: list[Any]) -> dict[str, Any]:
    """An S3 notification: each distinct set whose manifest was written is run once, in order; objects
    that are not a manifest start nothing (their set is not complete until its manifest is written).
    Keys arrive URL-encoded ('+' for a space, %xx).  A run that meets another one in progress raises
    RunInProgress, a function error: Lambda retries the asynchronous event, and the retry finds the set
    unchanged or loads the newer one."""
    from urllib.parse import unquote_plus

    from etl_core.service import MANIFEST, Trigger

    objects = []
    for record in records:
        try:
            objects.append((record["s3"]["bucket"]["name"], unquote_plus(record["s3"]["object"]["key"])))
        except (KeyError, TypeError):
            raise UnsupportedEvent("an S3 notification record without s3.bucket.name and s3.object.key",
                                   example={"Records": [{"eventSource": "aws:s3", "s3": {
                                       "bucket": {"name": "lab-exports"},
                                       "object": {"key": "exports/" + MANIFEST}}}]}) from None
    manifests = list(dict.fromkeys(o for o in objects if o[1].rpartition("/")[2] == MANIFEST))
    if not manifests:
        logs.log_event("s3_event_ignored", objects=[f"s3://{b}/{k}" for b, k in objects][:10])
        return {"status": "ignored", "reason": f"no {MANIFEST} among the objects: a set starts a run only "
                "once its manifest is written", "objects": [f"s3://{b}/{k}" for b, k in objects][:10]}
    settings = get_settings()
    triggers = [Trigger.of_object(settings, bucket, key) for bucket, key in manifests]
    summaries = [get_service().trigger(trigger) for trigger in dict.fromkeys(triggers)]
    return summaries[0] if len(summaries) == 1 else {"runs": summaries}


def _fields(event: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key != "action"}
