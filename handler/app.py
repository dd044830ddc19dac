"""The HTTP API (FastAPI).  Error classes become HTTP statuses here and nowhere else, and every
answer of status 400 or more is the same JSON document: ``{"error": {"type", "code", "message", ...}}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from etl_core.errors import (
    BadRequest,
    ConfigError,
    EtlError,
    ForeignKeyConflict,
    InputError,
    InternalError,
    MethodNotAllowed,
    RouteNotFound,
    RunInProgress,
    RunNotFound,
    TransientLoadError,
    shorten,
)
from etl_core.pipeline import Trigger
from handler.service import get_service, unexpected

# First match wins, so subclasses come before their bases.
STATUS: tuple[tuple[type[EtlError], int], ...] = (
    (BadRequest, 400),
    (RunNotFound, 404),
    (RouteNotFound, 404),
    (MethodNotAllowed, 405),
    (RunInProgress, 409),
    (ForeignKeyConflict, 409),
    (InputError, 422),
    (TransientLoadError, 503),
    (ConfigError, 500),
    (EtlError, 500),  # InternalError (internal_error), LoadError (load_failed)
)
SHOWN_PATH = 200  # characters of a request's path repeated in a 404


def status_for(exc: EtlError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def error_body(exc: EtlError) -> dict[str, Any]:
    return {"error": exc.to_dict()}


def answer(exc: EtlError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status_for(exc), content=error_body(exc), headers=headers)


app = FastAPI(title="experiment-etl", version="1.0.0",
              description="Derives per-user experiment features from CSV files into PostgreSQL.")


@app.exception_handler(EtlError)
async def _etl_error(request: Request, exc: EtlError) -> JSONResponse:
    if isinstance(exc, InternalError):
        unexpected(exc)  # a bug of ours, caught further in: its traceback goes to the log
    return answer(exc)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [{"parameter": str(error["loc"][-1]), "in": str(error["loc"][0]), "message": error["msg"]}
                for error in exc.errors()]
    reasons = "; ".join(f"{p['in']} parameter {p['parameter']}: {p['message']}" for p in problems)
    return answer(BadRequest(f"invalid request: {reasons}", parameters=problems))


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own answers (no route, wrong method) in our shape."""
    where = f"{request.method} {shorten(request.url.path, SHOWN_PATH)}"
    if exc.status_code == 404:
        return answer(RouteNotFound(f"no route {where}; the routes are {', '.join(_routes())}"))
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return answer(MethodNotAllowed(f"{where} is not allowed; this route answers {allowed}"), exc.headers)
    body = {"error": {"type": "HTTPException", "code": "http_error", "message": exc.detail}}
    return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug of ours: 500 internal_error, the traceback logged; Starlette then re-raises it (Mangum logs
    it once more and keeps this answer)."""
    return answer(unexpected(exc))


def _routes() -> list[str]:
    return [f"{method} {route.path}" for route in app.routes if isinstance(route, APIRoute)
            for method in sorted(route.methods or ())]


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
