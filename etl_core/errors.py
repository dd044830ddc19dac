"""One error tree for the whole job.

Foreign exceptions are translated into these, with ``raise ... from``, at the edge that meets them:
pg8000's in the store (``etl_core.store``), the file system's in the source (``etl_core.sources.source``),
the CSV reader's in extract.  Whatever else escapes is a bug, answered as ``InternalError``.  Each
class says, once, which HTTP status answers it and whether the caller (or the caller's data) is at
fault; the handler derives its answers, its OpenAPI document and its log levels from them.
"""

from __future__ import annotations

import re
from typing import Any

MAX_MESSAGE = 300  # characters of a foreign exception's text that an InternalError repeats
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/[^\s'\"(),;\[\]]+")


class EtlError(Exception):
    """Base of every error this job raises on purpose.  Each class has a ``code`` that answers carry,
    the ``http_status`` that answers it and whether the ``caller`` is at fault (a warning in the log,
    not an error), given as ``class X(EtlError, code="...", http_status=4xx, caller=True)``; what a
    class does not give it keeps from its parent."""

    code = "etl_error"
    http_status = 500
    caller = False  # True: the caller's request or data is wrong, not the service

    def __init_subclass__(cls, *, code: str | None = None, http_status: int | None = None, caller: bool | None = None,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if http_status is not None:
            cls.http_status = http_status
        if caller is not None:
            cls.caller = caller

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "code": self.code, "message": self.message, **self.details}


class ConfigError(EtlError, code="bad_config"):
    """Raise when a setting is missing or malformed."""


class SchemaTooNew(ConfigError, code="schema_too_new"):
    """Raise when the database's schema is of a version newer than this release knows: deploy the
    newer release (or restore the database); nothing is written."""


class BadRequest(EtlError, code="bad_request", http_status=400, caller=True):
    """Raise when a trigger asks for something invalid (unknown policy, a data path outside the root)."""


class UnsupportedEvent(BadRequest, code="unsupported_event"):
    """Raise when the Lambda handler receives an event it cannot route."""


class InputError(EtlError, code="contract_violation", http_status=422, caller=True):
    """Raise when the input files break the data contract."""


class ContractViolation(InputError):
    """Raise in strict mode when one or more rows or files break the data contract."""


class LoadRefused(InputError, code="load_refused"):
    """Raise when a valid input looks cut short (far fewer users or experiments than the table holds)
    or rejects more rows than allowed: nothing is published unless the trigger forces it."""


class LoadError(EtlError, code="load_failed"):
    """Raise when writing to PostgreSQL fails."""


class ForeignKeyConflict(LoadError, code="foreign_key_conflict", http_status=409, caller=True):
    """Raise when another table's foreign key on the features table forbids the new rows."""


class TransientLoadError(LoadError, code="database_unavailable", http_status=503):
    """Raise when the failure may go away on retry (connection lost, server restarting, timeouts)."""


class DatabaseUnavailable(TransientLoadError):
    """Raise when no connection to PostgreSQL could be made within the configured attempts."""


class SecretUnavailable(TransientLoadError):
    """Raise when Secrets Manager does not answer (endpoint down, timeouts, throttling, its own errors):
    without the password there is no connection, and a retry may succeed."""


class SecretError(ConfigError):
    """Raise when the database's secret (DB_SECRET_ID) cannot be used: it is not there, the role may not
    read or decrypt it, it holds no password, or the server refuses its login even when read again.
    The message names the secret, never its value."""


class SourceError(EtlError, code="source_unreadable"):
    """Raise when an input object cannot be read (I/O errors, an object that is not what it should be);
    the message names the object, never the server's paths."""


class SourceMissing(SourceError, code="source_missing", http_status=422, caller=True):
    """Raise when an input object is not there (or is not a file)."""


class SourceChanged(SourceError, code="source_changed", http_status=409, caller=True):
    """Raise when an input object changed while a run was reading it: nothing is loaded; run again."""


class SourceUnavailable(SourceError, code="source_unavailable", http_status=503):
    """Raise when the object store does not answer (endpoint down, timeouts, throttling): a retry may
    succeed, so it is answered 503."""


class SourceForbidden(SourceUnavailable, code="source_forbidden"):
    """Raise when the object store refuses the job's credentials: an operator must fix the role or keys."""


class ManifestError(InputError, code="bad_manifest"):
    """Raise when an S3 prefix's manifest is unreadable or does not name exactly the three files
    (a missing manifest is the contract's missing_file)."""


class InputTooLarge(EtlError, code="input_too_large", http_status=507):
    """Raise when the input would need more memory than the function may use: up front, from the files'
    sizes, or while the experiments are counted, before the kernel would stop the process.  Not the
    data's fault, and not one a retry mends: more memory, or the sharded path (docs/scale.md)."""


class ShardsIncomplete(EtlError, code="shards_incomplete", http_status=409, caller=True):
    """Raise when the sharded path's reduce finds a batch's shards missing, doubled, or counted from
    another version of the experiments file: count the missing ones (or the whole batch) again; nothing
    is published (docs/scale.md)."""


class RunInProgress(EtlError, code="run_in_progress", http_status=409, caller=True):
    """Raise when another run holds the job's lock."""


class RunNotFound(EtlError, code="run_not_found", http_status=404, caller=True):
    """Raise when a run id is not in the runs table."""


class HistoryPurged(EtlError, code="history_purged", http_status=410, caller=True):
    """Raise when the features as of a run are asked for (to read, or to restore) but the history no
    longer holds them: the run is older than the history's horizon (its retention, or a run from before
    the history began)."""


class FeaturesStale(EtlError, code="features_stale", http_status=503):
    """Raise when /health finds that no run has confirmed the features within the allowed age
    (ETL_HEALTH_MAX_AGE_SECONDS)."""


class RouteNotFound(EtlError, code="not_found", http_status=404, caller=True):
    """Raise when an HTTP request names no route of the API."""


class MethodNotAllowed(EtlError, code="method_not_allowed", http_status=405, caller=True):
    """Raise when an HTTP request uses a method that its route does not answer."""


class InternalError(EtlError, code="internal_error"):
    """Raise in place of an exception nobody expected (a bug of ours).  The answer names its type and
    repeats its text without URLs or absolute paths; the traceback belongs in the log."""

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
