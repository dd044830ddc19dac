"""The Lambda entry point: ``handler.lambda_function.handler``.

HTTP events (API Gateway REST and HTTP APIs, function URLs, ALB) go through Mangum to the FastAPI
app.  Direct invocations name an action: ``{"action": "trigger-etl", "policy": "quarantine", "force": true}``,
``{"action": "get-run", "run_id": 3}``, ``{"action": "health"}``; an EventBridge schedule triggers
the job.  Anything else is answered with an UnsupportedEvent error that says what is expected.
Heavy imports (FastAPI, Mangum, pyarrow) happen on first use, not at cold start.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from etl_core.errors import EtlError, InternalError, UnsupportedEvent, redact

ACTIONS = ("trigger-etl", "get-run", "health")
_http_handler: Any = None


def _configure_logging() -> None:
    logger = logging.getLogger("etl")
    logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not logger.handlers:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(stream)


_configure_logging()


def is_http_event(event: Any) -> bool:
    return isinstance(event, dict) and (
        "requestContext" in event or "httpMethod" in event or "routeKey" in event
    )


def handler(event: Any, context: Any) -> Any:
    try:
        return _http(event, context) if is_http_event(event) else _direct(event)
    except EtlError as exc:
        if isinstance(exc, InternalError):
            _unexpected(exc)  # caught further in: log its traceback
        _reported(exc)
        raise
    except Exception as exc:  # a bug of ours: an InternalError like any other error, its traceback logged
        raise _reported(_unexpected(exc)) from exc


def _reported(exc: EtlError) -> EtlError:
    """The runtime reports errorType (our class name) and errorMessage (this JSON document)."""
    exc.args = (json.dumps(exc.to_dict(), default=str),)
    return exc


def _unexpected(exc: BaseException) -> InternalError:
    from handler.service import unexpected

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
    from etl_core.pipeline import Trigger
    from handler.service import get_service

    if isinstance(event, dict) and event.get("source") == "aws.events":
        return get_service().trigger(Trigger())
    action = event.get("action") if isinstance(event, dict) else None
    if action == "trigger-etl":
        fields = {key: value for key, value in event.items() if key != "action"}
        return get_service().trigger(Trigger.parse(**fields))
    if action == "get-run":
        run_id = event.get("run_id")
        if not isinstance(run_id, int) or isinstance(run_id, bool):
            raise UnsupportedEvent("get-run needs an integer run_id", example={"action": "get-run", "run_id": 1})
        return get_service().run_status(run_id)
    if action == "health":
        return get_service().health()
    shown = sorted(event)[:10] if isinstance(event, dict) else type(event).__name__
    raise UnsupportedEvent(
        "cannot route this event: expected an HTTP event (API Gateway, function URL, ALB), an "
        f"EventBridge schedule, or a direct invocation with \"action\" one of {', '.join(ACTIONS)}",
        received=shown,
        example={"action": "trigger-etl", "policy": "strict"},
    )
