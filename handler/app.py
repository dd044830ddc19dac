"""The HTTP API (FastAPI).  Error classes become HTTP statuses here and nowhere else."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from etl_core.errors import (
    BadRequest,
    ConfigError,
    EtlError,
    InputError,
    RunInProgress,
    RunNotFound,
    TransientLoadError,
)
from etl_core.pipeline import Trigger
from handler.service import get_service

# First match wins, so subclasses come before their bases.
STATUS: tuple[tuple[type[EtlError], int], ...] = (
    (BadRequest, 400),
    (RunNotFound, 404),
    (RunInProgress, 409),
    (InputError, 422),
    (TransientLoadError, 503),
    (ConfigError, 500),
    (EtlError, 500),
)


def status_for(exc: EtlError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def error_body(exc: EtlError) -> dict[str, Any]:
    return {"error": exc.to_dict()}


app = FastAPI(title="experiment-etl", version="1.0.0",
              description="Derives per-user experiment features from CSV files into PostgreSQL.")


@app.exception_handler(EtlError)
async def _etl_error(request: Request, exc: EtlError) -> JSONResponse:
    return JSONResponse(status_code=status_for(exc), content=error_body(exc))


@app.get("/trigger-etl")
def trigger_etl(request: Request, policy: str | None = None, data: str | None = None,
                force: str | None = None) -> dict[str, Any]:
    """Run the ETL job now and return its summary.

    ``policy``: strict (any violation fails the run) or quarantine (bad rows go to etl_rejects).
    ``data``: a directory below DATA_ROOT to read instead of DATA_DIR.
    ``force``: true/false (also 1/0, yes/no): override the load guard.
    """
    # every query parameter, so that a misspelt one is refused rather than ignored
    return get_service().trigger(Trigger.parse(**request.query_params))


@app.get("/runs/{run_id}")
def get_run(run_id: int) -> dict[str, Any]:
    """One run's record: status, rows per file, time per phase, error."""
    return get_service().run_status(run_id)


@app.get("/health")
def health() -> dict[str, Any]:
    """Checks that PostgreSQL answers."""
    return get_service().health()
