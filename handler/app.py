"""The HTTP API (FastAPI).  Error classes become HTTP statuses here and nowhere else, and every
answer of status 400 or more is the same JSON document: ``{"error": {"type", "code", "message", ...}}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, create_model
from starlette.exceptions import HTTPException

from etl_core.errors import (
    BadRequest,
    ConfigError,
    ContractViolation,
    EtlError,
    FeaturesStale,
    ForeignKeyConflict,
    HistoryPurged,
    InternalError,
    LoadError,
    LoadRefused,
    ManifestError,
    MethodNotAllowed,
    RouteNotFound,
    RunInProgress,
    RunNotFound,
    SchemaTooNew,
    SourceChanged,
    SourceError,
    SourceForbidden,
    SourceUnavailable,
    TransientLoadError,
    shorten,
)
from etl_core.logs import log_event
from etl_core.service import Trigger
from handler.models import (
    ChangesPage,
    FeaturesPage,
    Health,
    NoQuery,
    RejectsPage,
    RejectsQuery,
    RestoreQuery,
    RunId,
    RunRecord,
    RunsPage,
    RunsQuery,
    RunSummary,
    Strict,
    TriggerQuery,
    UsersQuery,
    invalid,
    problems,
)
from handler.service import get_service, unexpected

SHOWN_PATH = 200  # characters of a request's path repeated in a 404
# the model of each route's query string, whose fields an unknown parameter's error lists
QUERY_MODELS: dict[str, type[Strict]] = {"/trigger-etl": TriggerQuery, "/runs": RunsQuery,
                                         "/runs/{run_id}/rejects": RejectsQuery,
                                         "/runs/{run_id}/changes": UsersQuery, "/runs/{run_id}/features": UsersQuery,
                                         "/runs/{run_id}/restore": RestoreQuery,
                                         "/runs/{run_id}": NoQuery, "/health": NoQuery}


def status_for(exc: EtlError | type[EtlError]) -> int:
    """The HTTP status that answers ``exc`` (or that class): the one its class declares."""
    return exc.http_status


def error_body(exc: EtlError) -> dict[str, Any]:
    return {"error": exc.to_dict()}


def answer(exc: EtlError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    status = status_for(exc)
    run_id = exc.details.get("run_id")
    log_event("request_failed", level=logging.ERROR if status >= 500 else logging.WARNING, status=status,
              code=exc.code, reason=exc.message, **({"run_id": run_id} if run_id else {}))
    return JSONResponse(status_code=status, content=error_body(exc), headers=headers)


# The errors each route answers with (besides 404 not_found and 405 method_not_allowed, which answer
# requests that reach no route): the OpenAPI document lists them by status, as each class declares it.
SERVER_ERRORS = (TransientLoadError, LoadError, ConfigError, SchemaTooNew, InternalError)
ROUTE_ERRORS: dict[str, tuple[type[EtlError], ...]] = {
    "/trigger-etl": (BadRequest, RunInProgress, ForeignKeyConflict, SourceChanged, ContractViolation, ManifestError,
                     LoadRefused, SourceUnavailable, SourceForbidden, SourceError, *SERVER_ERRORS),
    "/runs": (BadRequest, *SERVER_ERRORS),
    "/runs/{run_id}": (BadRequest, RunNotFound, *SERVER_ERRORS),
    "/runs/{run_id}/rejects": (BadRequest, RunNotFound, *SERVER_ERRORS),
    "/runs/{run_id}/changes": (BadRequest, RunNotFound, RunInProgress, HistoryPurged, *SERVER_ERRORS),
    "/runs/{run_id}/features": (BadRequest, RunNotFound, RunInProgress, HistoryPurged, *SERVER_ERRORS),
    "/runs/{run_id}/restore": (BadRequest, RunNotFound, HistoryPurged, RunInProgress, ForeignKeyConflict, LoadRefused,
                               *SERVER_ERRORS),
    "/health": (FeaturesStale, *SERVER_ERRORS),
}


def _error_model(status: int, codes: list[str]) -> type[BaseModel]:
    """``{"error": {...}}`` whose code is one of ``codes``."""
    from handler.models import ErrorDetail

    detail = create_model(f"ErrorDetail{status}", __base__=ErrorDetail,
                          code=(Literal[tuple(codes)], ...))
    return create_model(f"Error{status}", error=(detail, ...))


def _codes_by_status(classes: tuple[type[EtlError], ...]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for cls in classes:
        codes = found.setdefault(status_for(cls), [])
        if cls.code not in codes:
            codes.append(cls.code)
    return found


_ALL_CODES = _codes_by_status(tuple(cls for classes in ROUTE_ERRORS.values() for cls in classes))
_ERROR_MODELS = {status: _error_model(status, codes) for status, codes in sorted(_ALL_CODES.items())}


def errors(path: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: each status it can answer with, its codes, the error model."""
    return {status: {"model": _ERROR_MODELS[status], "description": "code: " + ", ".join(codes)}
            for status, codes in sorted(_codes_by_status(ROUTE_ERRORS[path]).items())}


# /openapi.json is served (and routed by the template); the interactive /docs and /redoc pages are not:
# they load scripts from a CDN, and the deployed API would not route them
app = FastAPI(title="experiment-etl", version="1.0.0", docs_url=None, redoc_url=None,
              description="Derives per-user experiment features from CSV files into PostgreSQL.")


def _raw_paths(scope: Mapping[str, Any]) -> list[str]:
    """The request's path as the client sent it, before any decoding: the ASGI server's ``raw_path``, and
    behind Mangum (which decodes the path and gives none) the event's own."""
    raw = scope.get("raw_path")
    paths = [raw.decode("latin-1")] if isinstance(raw, bytes) else []
    event = scope.get("aws.event")
    if isinstance(event, Mapping):
        context = event.get("requestContext")
        http = context.get("http") if isinstance(context, Mapping) else None
        inner = http.get("path") if isinstance(http, Mapping) else None
        paths += [found for found in (event.get("rawPath"), event.get("path"), inner) if isinstance(found, str)]
    return paths


@app.middleware("http")
async def _every_answer(request: Request, call_next: Any) -> Any:
    """Three rules for every route. A path with an encoded ``/`` (``/runs/1%2Frejects``) is refused: decoded,
    it would reach another route than the one the API's authorizer matched and allowed (``/runs/{run_id}``).
    A parameter given twice is refused. And no answer is kept by a cache: several carry names and
    rejected rows (personal data)."""
    try:
        if any("%2f" in path.lower() for path in _raw_paths(request.scope)):
            raise BadRequest("a path may not hold an encoded '/' (%2F): each route's parts are separated by "
                             "plain '/'")
        _single_values(request)  # on every route: ?limit=1&limit=1000 is not decided by its last value
    except BadRequest as exc:
        response = answer(exc)
    else:
        response = await call_next(request)
    response.headers["Cache-Control"] = "no-store"
    return response


@app.exception_handler(EtlError)
async def _etl_error(request: Request, exc: EtlError) -> JSONResponse:
    if isinstance(exc, InternalError):
        unexpected(exc)  # a bug of ours, caught further in: its traceback goes to the log
    return answer(exc)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    route = request.scope.get("route")
    model = QUERY_MODELS.get(route.path) if isinstance(route, APIRoute) else None
    return answer(invalid(problems(list(exc.errors()), model=model)))


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own answers (no route, wrong method) in our shape."""
    path = request.scope["path"]  # not request.url: a forwarded scheme it does not know would fail it
    where = f"{request.method} {shorten(path, SHOWN_PATH)}"
    if exc.status_code == 404:
        return answer(RouteNotFound(f"no route {where}; the routes are {', '.join(_routes())}"))
    if exc.status_code == 405:
        allowed = ", ".join(_methods_of(path)) or (exc.headers or {}).get("Allow", "")
        return answer(MethodNotAllowed(f"{where} is not allowed; this route answers {allowed}"),
                      {**(exc.headers or {}), "Allow": allowed})
    body = {"error": {"type": "HTTPException", "code": "http_error", "message": exc.detail}}
    return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug of ours: 500 internal_error, the traceback logged; Starlette then re-raises it (Mangum logs
    it once more and keeps this answer)."""
    return answer(unexpected(exc))


def _methods_of(path: str) -> list[str]:
    """Every method some route of this path answers (Starlette's own Allow names only the first route's)."""
    return sorted({method for route in app.routes if isinstance(route, APIRoute) and route.path_regex.match(path)
                   for method in route.methods or ()})


def _routes() -> list[str]:
    """Every route and method the app answers (the OpenAPI document's own route too)."""
    return [f"{method} {getattr(route, 'path', '')}" for route in app.routes
            for method in sorted(getattr(route, "methods", None) or ()) if method != "HEAD"]


async def _empty_body(request: Request) -> None:
    """A trigger's parameters are its query string: a body (``{"policy": "quarantine"}``) would be
    ignored and the run would go ahead with other settings than the caller meant, so it is refused."""
    if await request.body():
        raise BadRequest(f"{request.method} /trigger-etl takes its parameters in the query string "
                         "(?policy=...&data=...&force=...); send no body")


def _trigger(query: TriggerQuery) -> dict[str, Any]:
    """(No-store and parameters given once: ``_every_answer``, for every route.)"""
    return get_service().trigger(Trigger(**query.model_dump()))


@app.post("/trigger-etl", response_model=RunSummary, responses=errors("/trigger-etl"),
          dependencies=[Depends(_empty_body)])
def trigger_etl(query: Annotated[TriggerQuery, Query()]) -> dict[str, Any]:
    """Run the ETL job now and return its summary.

    ``policy``: strict (any violation fails the run) or quarantine (bad rows go to etl_rejects).
    ``data``: a directory below DATA_ROOT to read instead of DATA_DIR.
    ``force``: true/false (also 1/0, yes/no): load even what the load guard refuses or an unchanged input.
    The parameters go in the query string; the body stays empty.
    """
    return _trigger(query)


@app.get("/trigger-etl", response_model=RunSummary, responses=errors("/trigger-etl"),
         dependencies=[Depends(_empty_body)])
def trigger_etl_by_get(query: Annotated[TriggerQuery, Query()]) -> dict[str, Any]:
    """The same as ``POST /trigger-etl``, for the challenge's ``curl .../trigger-etl`` against the
    emulator and SAM local.  The deployed API routes it only with ``AllowGetTrigger=true``: a crawler
    or a link preview that follows a URL must not start a write."""
    return _trigger(query)


ROW_TEXT = ("value", "raw")  # a violation's members that repeat the input: names, e-mail addresses


def without_rows(record: dict[str, Any]) -> dict[str, Any]:
    """A run's record as the runs routes show it: the violations its error lists keep their file, line,
    column and rule but not the row's text, which is personal data and the rejects permission's (those
    who may read runs need not see it; a direct invocation, a permission on the whole function, still
    does)."""
    error = record.get("error")
    if not isinstance(error, dict):
        return record
    violations = error.get("violations")
    first = violations.get("first") if isinstance(violations, dict) else None
    if not isinstance(violations, dict) or not isinstance(first, list):
        return record
    shown = [{k: v for k, v in item.items() if k not in ROW_TEXT} if isinstance(item, dict) else item
             for item in first]
    return {**record, "error": {**error, "violations": {**violations, "first": shown}}}


@app.get("/runs", response_model=RunsPage, responses=errors("/runs"))
def list_runs(query: Annotated[RunsQuery, Query()]) -> dict[str, Any]:
    """Recorded runs, newest first, a page at a time: pass ``next_before`` as ``before`` for the next.
    A failed run's violations are listed without their rows' text (``value``, ``raw``)."""
    page = get_service().runs(limit=query.limit, status=query.status, before=query.before)
    return {**page, "runs": [without_rows(record) for record in page["runs"]]}


@app.get("/runs/{run_id}", response_model=RunRecord, responses=errors("/runs/{run_id}"))
def get_run(run_id: RunId, query: Annotated[NoQuery, Query()]) -> dict[str, Any]:
    """One run's record: status, rows per file, time per phase, error (its violations without their rows'
    text: ``value`` and ``raw`` are personal data, behind the rejects route's permission)."""
    return without_rows(get_service().run_status(run_id))


@app.get("/runs/{run_id}/rejects", response_model=RejectsPage, responses=errors("/runs/{run_id}/rejects"))
def get_rejects(run_id: RunId, query: Annotated[RejectsQuery, Query()]) -> dict[str, Any]:
    """The rows a run rejected (quarantine), in stored order, a page at a time: pass ``next_after``
    as ``after`` for the next."""
    return get_service().rejects(run_id, limit=query.limit, after=query.after)


@app.get("/runs/{run_id}/changes", response_model=ChangesPage, responses=errors("/runs/{run_id}/changes"))
def get_changes(run_id: RunId, query: Annotated[UsersQuery, Query()]) -> dict[str, Any]:
    """The users a run added, changed or removed, by user id, each with its features before and after the
    run, a page at a time: pass ``next_after`` as ``after`` for the next.  Users' names are personal
    data: this route is the rejects' audience's (docs/security.md)."""
    return get_service().changes(run_id, limit=query.limit, after=query.after)


@app.get("/runs/{run_id}/features", response_model=FeaturesPage, responses=errors("/runs/{run_id}/features"))
def get_features_as_of(run_id: RunId, query: Annotated[UsersQuery, Query()]) -> dict[str, Any]:
    """The features as they were when the run finished (what ``user_features_as_of(run_id)`` answers in
    SQL), by user id, a page at a time: pass ``next_after`` as ``after`` for the next.  410
    history_purged where the history no longer holds them."""
    return get_service().as_of(run_id, limit=query.limit, after=query.after)


async def _no_body(request: Request) -> None:
    if await request.body():
        raise BadRequest(f"POST {request.scope['path']} takes its parameters in the query string "
                         "(?force=...&dry_run=...); send no body")


@app.post("/runs/{run_id}/restore", response_model=RunSummary, responses=errors("/runs/{run_id}/restore"),
          dependencies=[Depends(_no_body)])
def restore_run(run_id: RunId, query: Annotated[RestoreQuery, Query()]) -> dict[str, Any]:
    """Publish the features as they were when run ``run_id`` finished: a new run (status ``restored``,
    ``restored_from``) through the same comparison, load guard and publication as a load.
    ``force``: restore even what the load guard refuses; ``dry_run``: only compare, and answer what would
    change.  410 history_purged where the history no longer holds that run's features."""
    return get_service().restore(run_id, force=query.force, dry_run=query.dry_run)


@app.get("/health", response_model=Health, responses=errors("/health"))
def health(query: Annotated[NoQuery, Query()]) -> dict[str, Any]:
    """PostgreSQL answers, and the features are fresh: the last run that confirmed them and its age
    (503 features_stale past ETL_HEALTH_MAX_AGE_SECONDS, when set)."""
    return get_service().health()


def _openapi() -> dict[str, Any]:
    """FastAPI's document without its default 422 (HTTPValidationError): invalid parameters are our
    400 bad_request, documented per route."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                default = operation.get("responses", {}).get("422", {})
                if "HTTPValidationError" in str(default):
                    del operation["responses"]["422"]
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = document
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


def _single_values(request: Request) -> None:
    """The query string's parameters, each given once: a repeated one (``?force=true&force=false``)
    is refused rather than decided by its last value."""
    repeated = sorted({key for key, _ in request.query_params.multi_items()
                       if len(request.query_params.getlist(key)) > 1})
    if repeated:
        raise BadRequest(f"parameter(s) given more than once: {', '.join(repeated)}; give each once")
