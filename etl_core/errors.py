"""One error tree for the whole job.

Foreign exceptions (pyarrow's ArrowInvalid, pg8000's errors, OSError) are translated into these
exactly once, where they are raised, with ``raise ... from``.  HTTP status codes are not decided
here: the handler maps each class to a status in one place.
"""

from __future__ import annotations

import re
from typing import Any

MAX_MESSAGE = 300  # characters of a foreign exception's text that an InternalError repeats
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/[^\s'\"(),;\[\]]+")


class EtlError(Exception):
    """Base of every error this job raises on purpose."""

    code = "etl_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "code": self.code, "message": self.message, **self.details}


class ConfigError(EtlError):
    """Raise when a setting is missing or malformed."""

    code = "bad_config"


class BadRequest(EtlError):
    """Raise when a trigger asks for something invalid (unknown policy, a data path outside the root)."""

    code = "bad_request"


class UnsupportedEvent(BadRequest):
    """Raise when the Lambda handler receives an event it cannot route."""

    code = "unsupported_event"


class InputError(EtlError):
    """Raise when the input files break the data contract."""

    code = "contract_violation"


class ContractViolation(InputError):
    """Raise in strict mode when one or more rows or files break the data contract."""


class LoadRefused(InputError):
    """Raise when a valid input looks cut short (far fewer users or experiments than the table holds)
    or rejects more rows than allowed: nothing is published unless the trigger forces it."""

    code = "load_refused"


class LoadError(EtlError):
    """Raise when writing to PostgreSQL fails."""

    code = "load_failed"


class ForeignKeyConflict(LoadError):
    """Raise when another table's foreign key on the features table forbids the new rows."""

    code = "foreign_key_conflict"


class TransientLoadError(LoadError):
    """Raise when the failure may go away on retry (connection lost, server restarting, timeouts)."""

    code = "database_unavailable"


class DatabaseUnavailable(TransientLoadError):
    """Raise when no connection to PostgreSQL could be made within the configured attempts."""


class RunInProgress(EtlError):
    """Raise when another run holds the job's lock."""

    code = "run_in_progress"


class RunNotFound(EtlError):
    """Raise when a run id is not in the runs table."""

    code = "run_not_found"


class RouteNotFound(EtlError):
    """Raise when an HTTP request names no route of the API."""

    code = "not_found"


class MethodNotAllowed(EtlError):
    """Raise when an HTTP request uses a method that its route does not answer."""

    code = "method_not_allowed"


class InternalError(EtlError):
    """Raise in place of an exception nobody expected (a bug of ours).  The answer names its type and
    repeats its text without URLs or absolute paths; the traceback belongs in the log."""

    code = "internal_error"

    @classmethod
    def of(cls, exc: BaseException, **details: Any) -> InternalError:
        return cls(f"unexpected {type(exc).__name__}: {redact(str(exc))}", **details)


def redact(text: str) -> str:
    """``text`` without URLs (they may hold a password) or absolute paths (they describe the server),
    cut to MAX_MESSAGE characters."""
    return shorten(_ABSOLUTE_PATH.sub("<path>", _URL.sub("<url>", text)), MAX_MESSAGE)


def shorten(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters followed by how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"
