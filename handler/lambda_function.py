"""The Lambda entry point: ``handler.lambda_function.handler``.

HTTP events (API Gateway REST and HTTP APIs, function URLs, ALB) go through Mangum to the FastAPI
app.  Direct invocations name an action: ``{"action": "trigger-etl", "policy": "quarantine", "force": true}``,
``{"action": "get-run", "run_id": 3}``, ``{"action": "list-runs", "limit": 20, "status": "failed",
"before": 40}``, ``{"action": "get-rejects", "run_id": 3, "limit": 100, "after": 0}``, ``{"action":
"get-changes", "run_id": 3}``, ``{"action": "get-features", "run_id": 3, "after": 0}``, ``{"action":
"restore", "run_id": 3, "dry_run": true}``, ``{"action":
"health"}``, ``{"action": "migrate"}``, and the sharded path's ``plan-shards``, ``count-shard`` and
``reduce-shards`` (docs/scale.md) (``ACTIONS``; each one's fields are checked by its model in
handler/models.py); an EventBridge schedule triggers the job.  Anything else is answered with an
UnsupportedEvent error that says what is expected.  Heavy imports (FastAPI, Mangum, pyarrow) happen
on first use, not at cold start.

Every line logged during an invocation carries its request id and the event's kind (http, direct,
schedule, s3), and the run id once there is one (``etl_core.logs``); the first invocation of the
process prints a ColdStart metric (``etl_core.metrics``).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from etl_core import logs, metrics
from etl_core.errors import ConfigError, EtlError, InternalError, UnsupportedEvent, redact
from handler.service import get_service, get_settings, unexpected

# each direct action, with an example of its fields (handler.models holds the model that checks them)
ACTIONS: dict[str, dict[str, Any]] = {
    "trigger-etl": {"policy": "quarantine", "force": True},
    "get-run": {"run_id": 1},
    "list-runs": {"limit": 20, "status": "failed", "before": 40},
    "get-rejects": {"run_id": 1, "limit": 100, "after": 0},
    "get-changes": {"run_id": 1, "limit": 100, "after": 0},
    "get-features": {"run_id": 1, "limit": 100, "after": 0},
    "restore": {"run_id": 1, "force": False, "dry_run": True},
    "health": {},
    "migrate": {"apply": False},
    # the sharded path's three steps, sent by the state machine (docs/scale.md)
    "plan-shards": {"batch": "execution-name", "shards": 8},
    "count-shard": {"batch": "execution-name", "shard": 0, "shards": 8, "first_byte": 57, "end_byte": 1048633,
                    "identity": "335544320:1796000000000000000"},
    "reduce-shards": {"batch": "execution-name", "force": False},
}
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
    if isinstance(action, str) and action in ACTIONS:
        return _act(action, _fields(event))
    shown = sorted(event)[:10] if isinstance(event, dict) else type(event).__name__
    raise UnsupportedEvent(
        "cannot route this event: expected an HTTP event (API Gateway, function URL, ALB), an "
        "EventBridge schedule, an S3 notification (of a set's _manifest.json), or a direct invocation with "
        f"\"action\" one of {', '.join(ACTIONS)}",
        received=shown,
        example={"action": "trigger-etl", "policy": "strict"},
    )


@functools.cache
def _actions() -> dict[str, tuple[Any, Callable[[Any, Any], dict[str, Any]]]]:
    """Each direct action's model (handler.models: its fields, checked as HTTP checks a route's) and the
    service's method it calls; made on first use (pydantic is not imported at cold start)."""
    from etl_core.service import Trigger
    from handler import models

    return {
        "trigger-etl": (models.TriggerQuery, lambda service, q: service.trigger(Trigger(**q.model_dump()))),
        "get-run": (models.RunRef, lambda service, q: service.run_status(q.run_id)),
        "list-runs": (models.RunsQuery, lambda service, q: service.runs(limit=q.limit, status=q.status,
                                                                          before=q.before)),
        "get-rejects": (models.RejectsAction, lambda service, q: service.rejects(q.run_id, limit=q.limit,
                                                                                after=q.after)),
        "get-changes": (models.UsersAction, lambda service, q: service.changes(q.run_id, limit=q.limit,
                                                                              after=q.after)),
        "get-features": (models.UsersAction, lambda service, q: service.as_of(q.run_id, limit=q.limit,
                                                                             after=q.after)),
        "restore": (models.RestoreAction, lambda service, q: service.restore(q.run_id, force=q.force,
                                                                            dry_run=q.dry_run)),
        "health": (models.NoFields, lambda service, q: service.health()),
        "migrate": (models.MigrateAction, lambda service, q: service.migrate(apply=q.apply)),
        "plan-shards": (models.ShardPlan, lambda service, q: service.plan_shards(q.batch, q.shards)),
        "count-shard": (models.ShardEvent, lambda service, q: service.count_shard(q.model_dump())),
        "reduce-shards": (models.ShardReduce, lambda service, q: service.reduce_shards(q.batch, force=q.force)),
    }


def _act(action: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A direct action: its fields checked by its model, then the service's method.  An action about a
    run needs its integer run_id, or the event is not one it can route."""
    from pydantic import ValidationError

    from handler import models

    model, call = _actions()[action]
    try:
        query = model.model_validate(fields)
    except ValidationError as exc:
        if any(error["loc"][:1] == ("run_id",) for error in exc.errors()):
            raise UnsupportedEvent(f"{action} needs an integer run_id",
                                   example={"action": action, **ACTIONS[action]}) from None
        raise models.invalid(models.problems(exc.errors(), "event", model)) from None
    return call(get_service(), query)


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
            bucket, key = record["s3"]["bucket"]["name"], record["s3"]["object"]["key"]
            if not isinstance(bucket, str) or not isinstance(key, str):
                raise TypeError("not text")
            objects.append((bucket, unquote_plus(key)))
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
