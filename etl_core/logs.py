"""Structured logs: every line is one JSON object, in the Lambda runtime's own format.

Under awslambdaric with ``AWS_LAMBDA_LOG_FORMAT=JSON`` (the template's ``LoggingConfig``, the image's
default, ``build.sh --local``) the runtime's handler on the root logger writes each record as one
JSON line (``timestamp``, ``level``, ``message``, ``logger``, ``requestId``: it reads the request id
from a process-wide variable, so every thread's lines carry it) and merges the record's ``extra``
fields into it.  ``log_event`` passes the event's name as the message and, as fields, the
invocation's context (``kind``, ``run_id`` once known) and the event's own fields.  Outside the
runtime (uvicorn, tests) ``configure`` gives our logger the runtime's formatter, so the lines look
the same; in the runtime's text format the fields become the message, as JSON, so none is lost.

The context lives in a context variable: asyncio tasks and the worker threads that Starlette starts
for FastAPI's endpoints get a copy of it, but a thread started with ``threading`` or an executor does
not: hand it over explicitly with ``current`` and ``bound``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

LOGGER = logging.getLogger("etl")
REQUEST_ID = "aws_request_id"  # the record attribute the runtime's formatter writes as "requestId"
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("etl_log_context", default=_EMPTY)
# a field may not overwrite a LogRecord attribute (logging refuses) nor a key the runtime's formatter
# writes itself (it would drop the field): such a field gets a trailing underscore
_TAKEN = (frozenset(logging.makeLogRecord({}).__dict__) - {REQUEST_ID}) | {
    "message", "asctime", "timestamp", "level", "logger", "stackTrace", "errorType", "errorMessage",
    "requestId", "location", "tenantId"}
_fields_in_message = False
P = ParamSpec("P")
T = TypeVar("T")


def configure() -> None:
    """Once, when the handler module is imported (after the runtime set up the root logger)."""
    global _fields_in_message
    if not os.environ.get("AWS_LAMBDA_LOG_LEVEL"):  # else the runtime has set the root logger's level
        LOGGER.setLevel(logging.INFO)
    runtime = sys.modules.get("awslambdaric.bootstrap")
    if runtime is not None and logging.getLogger().handlers:
        _fields_in_message = os.environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() != "JSON"
        for handler in logging.getLogger().handlers:
            with_context(handler)
        return
    if not logging.getLogger().handlers and not LOGGER.handlers:
        from awslambdaric.lambda_runtime_log_utils import JsonFormatter  # the runtime's own format

        stream = logging.StreamHandler(sys.stderr)
        stream.terminator = ""  # the formatter ends each line itself
        stream.setFormatter(JsonFormatter())
        LOGGER.addHandler(stream)


class _Context(logging.Filter):
    """Gives every record the context's fields it does not have yet: the lines of other libraries'
    loggers (Mangum's access line, ``GET /trigger-etl 200``) then carry ``kind`` (and ``run_id``,
    when they are written inside the run) as ours do."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _CONTEXT.get().items():
            if name not in record.__dict__:
                setattr(record, name, value)
        return True


_WITH_CONTEXT = _Context()


def with_context(handler: logging.Handler) -> logging.Handler:
    """``handler`` writing the context's fields into every line it gets (once: a second call adds nothing)."""
    handler.addFilter(_WITH_CONTEXT)
    return handler


def current() -> dict[str, Any]:
    """The context's fields, to hand over to another thread."""
    return dict(_CONTEXT.get())


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Every line logged in the block (in this thread, and in tasks and copies of its context) carries
    these fields too; None removes a field."""
    merged = {key: value for key, value in {**_CONTEXT.get(), **fields}.items() if value is not None}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def log_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """One line: ``event`` is its message; the context's and these fields are its members."""
    if not LOGGER.isEnabledFor(level):
        return
    extra = {**_CONTEXT.get(), "event": event}
    for name, value in fields.items():
        extra[f"{name}_" if name in _TAKEN else name] = value
    if _fields_in_message:
        shown = {key: value for key, value in extra.items() if key != REQUEST_ID}
        LOGGER.log(level, json.dumps(shown, default=str), extra=extra)
    else:
        LOGGER.log(level, event, extra=extra)
