"""Metrics in CloudWatch's Embedded Metric Format (EMF): one JSON document per run on stdout.

CloudWatch Logs turns such a line into metrics by itself (no API call, no agent, no dependency).  It
is printed raw, not through the logger, whose JSON would nest it in ``message``.  Every document has
the namespace and the one dimension set of the settings (``ETL_METRICS_NAMESPACE``,
``ETL_METRICS_DIMENSIONS``); the request id, the event's kind and the run id ride along as plain
members, for CloudWatch Logs Insights, not as dimensions (each value would be a metric of its own).

A run's document counts its status (``RunsSucceeded``, ``RunsPartial``, ``RunsFailed``, ``RunsUnchanged``,
``RunsRestored``, ``RunsDryRun``: one of them 1,
the others 0, so that a sum over any period counts runs), the rows read, accepted and rejected (in
all and per file), the users written, the phases' durations, and what the retention's purge deleted
(``PurgedRejects``, ``PurgedHistory``, ``PurgedRuns``, ``PurgeFailed``).  The first invocation of a process
prints a ``ColdStart`` document.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from etl_core import logs
from etl_core.config import MetricsSettings
from etl_core.status import FINISHED

COUNT, SECONDS = "Count", "Seconds"
ROWS = ("rows_read", "rows_accepted", "rows_rejected")
Emit = Callable[[str], None]


def print_line(line: str) -> None:
    """The default sink: one line on stdout, flushed (a frozen Lambda would keep it in the buffer)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_document(settings: MetricsSettings, *, status: str, run_id: int | None = None,
                 files: Mapping[str, Mapping[str, Any]] | None = None, users_written: int | None = None,
                 seconds: Mapping[str, float] | None = None, error_code: str | None = None,
                 config_error: bool = False, purged: Mapping[str, Any] | None = None,
                 now: float | None = None) -> dict[str, Any] | None:
    """The document of one run, or None when metrics are off.  ``files`` and ``seconds`` are the run
    summary's (a failed run has those it got to, if any); ``config_error``: it failed for the operator's
    settings (bad_config), not for the data or the service."""
    values: dict[str, tuple[float, str]] = {f"Runs{_camel(s)}": (int(s == status), COUNT) for s in FINISHED}
    values["ConfigErrors"] = (int(config_error), COUNT)
    if files:
        for column in ROWS:
            name = _camel(column)
            values[name] = (sum(int(f.get(column) or 0) for f in files.values()), COUNT)
            for filename, counts in files.items():
                values[f"{name}.{filename.rsplit('.', 1)[0]}"] = (int(counts.get(column) or 0), COUNT)
    if users_written is not None:
        values["UsersWritten"] = (users_written, COUNT)
    for phase, spent in (seconds or {}).items():
        values[f"{phase.capitalize()}Duration"] = (float(spent), SECONDS)
    if purged is not None:  # the retention's purge after the run
        values["PurgedRejects"] = (int(purged.get("rejects") or 0), COUNT)
        values["PurgedRuns"] = (int(purged.get("runs") or 0), COUNT)
        values["PurgedHistory"] = (int(purged.get("history") or 0), COUNT)
        values["PurgeFailed"] = (int(bool(purged.get("failed"))), COUNT)
    properties = {"event": "run_metrics", "run_id": run_id, "status": status, "error_code": error_code}
    return document(settings, values, properties, now=now)


def cold_start_document(settings: MetricsSettings, *, now: float | None = None) -> dict[str, Any] | None:
    return document(settings, {"ColdStart": (1, COUNT)}, {"event": "cold_start"}, now=now)


def document(settings: MetricsSettings, values: Mapping[str, tuple[float, str]], properties: Mapping[str, Any],
             *, now: float | None = None) -> dict[str, Any] | None:
    """An EMF document: the metrics' values (with their units), the dimensions' values, and the
    context's and ``properties``' members (None left out).  None when metrics are off."""
    if settings.namespace is None:
        return None
    context = logs.current()
    extra = {"requestId": context.pop(logs.REQUEST_ID, None), **context, **properties}
    dimensions = dict(settings.dimensions)
    taken = set(values) | set(dimensions)
    directive = {
        "Namespace": settings.namespace,
        "Dimensions": [list(dimensions)],
        "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
    }
    return {
        "_aws": {"Timestamp": int((time.time() if now is None else now) * 1000), "CloudWatchMetrics": [directive]},
        **{key: value for key, value in extra.items() if value is not None and key not in taken},
        **dimensions,
        **{name: value for name, (value, _) in values.items()},
    }


def emit(doc: dict[str, Any] | None, sink: Emit = print_line) -> None:
    """Print ``doc`` as one line; a failure to print is logged, never raised (metrics must not fail a run)."""
    if doc is None:
        return
    try:
        sink(json.dumps(doc, separators=(",", ":"), default=str))
    except Exception as exc:  # noqa: BLE001
        logs.log_event("metrics_not_printed", level=logging.WARNING, reason=f"{type(exc).__name__}: {exc}")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
