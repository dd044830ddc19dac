"""One error tree for the whole job.

Foreign exceptions (pyarrow's ArrowInvalid, pg8000's errors, OSError) are translated into these
exactly once, where they are raised, with ``raise ... from``.  HTTP status codes are not decided
here: the handler maps each class to a status in one place.
"""

from __future__ import annotations

from typing import Any


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
