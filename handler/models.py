"""The API's documents as pydantic models: what /openapi.json shows, what FastAPI checks every answer
against (a field the model does not know is a bug: 500, not a silent drop), and the paging
parameters that HTTP and direct invocations both validate."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from etl_core.errors import BadRequest

RunStatus = Literal["running", "succeeded", "partial", "failed", "unchanged"]  # etl_core.store.RUN_STATUSES
MAX_PAGE = 1000  # items in one page of runs or rejects
DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
RAW_SHA256 = ("ETL_REJECTS_KEEP_RAW=false: the rejected row's SHA-256 (hex of its UTF-8 text), stored instead "
              "of raw and value")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON's true is not the number 1
        raise ValueError("must be an integer, not a boolean")
    return value


Integer = Annotated[int, BeforeValidator(_not_bool)]
PositiveInteger = Annotated[int, Field(ge=1), BeforeValidator(_not_bool)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileCounts(Strict):
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    extra_columns: list[str] = Field(description="columns of the file that the contract does not know")


class Violation(Strict):
    file: str
    line: int | None = Field(description="1-based line of the file; none for a problem of the whole file")
    column: str | None
    value: str | None = Field(description="the offending value, cut to 200 characters")
    rule: str = Field(description="the rule code (README, Data contract)")
    raw: str | None = Field(description="the line as read, cut to 200 characters")
    raw_sha256: str | None = Field(None, description=RAW_SHA256)


class Purged(Strict):
    """What the run's purge deleted (ETL_REJECTS_RETENTION_DAYS, ETL_RUNS_RETENTION_DAYS)."""

    rejects: int
    runs: int
    backlog: bool = Field(description="the purge stopped at its bound: the next run goes on")
    failed: bool = Field(description="the purge failed (logged as purge_failed); the run's outcome stands")


class Violations(Strict):
    total: int
    first: list[Violation] = Field(description="the first ETL_MAX_REPORTED_VIOLATIONS violations")


class InputObject(Strict):
    """One input file as the run found it before reading it: what its fingerprint is made of."""

    key: str = Field(description="the file's name, or the object's s3:// URL")
    size: int
    identity: str = Field(description="size and mtime_ns (a local file) or size and ETag (S3)")
    mtime_ns: int | None = None
    etag: str | None = None
    version_id: str | None = Field(None, description="the object's version, where the bucket is versioned")


FINGERPRINT = "what decides whether a trigger loads: the inputs' identities, the policy, the contract's version"
INPUTS = "each input file as found before the run read it (null: not there)"


class RunSummary(Strict):
    """What a trigger answers when the run published its features, or found the input unchanged."""

    run_id: int
    status: Literal["succeeded", "partial", "unchanged"] = Field(
        description="partial: some rows were rejected (quarantine); unchanged: the input is the one run "
                    "same_as loaded, nothing was loaded (force=true loads anyway)")
    policy: Literal["strict", "quarantine"]
    files: dict[str, FileCounts] = Field(description="per file; empty when unchanged")
    users_written: int
    violations: Violations
    seconds: dict[str, float] = Field(description="time per phase: extract, transform, load, total")
    same_as: int | None = Field(None, description="unchanged: the run that loaded this input")
    fingerprint: str | None = Field(None, description=FINGERPRINT)
    inputs: dict[str, InputObject | None] | None = Field(None, description=INPUTS)
    purged: Purged | None = Field(None, description="what the retention's purge deleted after this run")


class ErrorDetail(BaseModel):
    """An error as answers, the runs table and direct invocations carry it; more members by code."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="the error's class, e.g. ContractViolation")
    code: str
    message: str


class RunRecord(Strict):
    """One run as etl_runs records it."""

    run_id: int
    status: RunStatus
    policy: str
    data_dir: str
    started_at: DateTime
    finished_at: DateTime | None
    files: dict[str, FileCounts] | None
    users_written: int | None
    seconds: dict[str, float] | None
    error: ErrorDetail | None
    rejects: int = Field(description="rejected rows stored in etl_rejects: GET /runs/{run_id}/rejects")
    fingerprint: str | None = Field(None, description=FINGERPRINT)
    inputs: dict[str, InputObject | None] | None = Field(None, description=INPUTS)
    same_as: int | None = Field(None, description="unchanged: the run that loaded this input")


class RunsPage(Strict):
    runs: list[RunRecord] = Field(description="newest first")
    next_before: int | None = Field(description="pass as before= for the next page; null: this is the last")


class Reject(Strict):
    seq: int = Field(description="the reject's number in its run: 1, 2, ...")
    file: str
    line: int | None
    column: str | None
    value: str | None = Field(description="cut to 200 characters")
    rule: str
    raw: str | None = Field(description="cut to 200 characters")
    raw_sha256: str | None = Field(None, description=RAW_SHA256)


class RejectsPage(Strict):
    run_id: int
    rejects: list[Reject] = Field(description="in the order the run stored them")
    next_after: int | None = Field(description="pass as after= for the next page; null: this is the last")


class LastConfirmed(Strict):
    run_id: int
    status: str = Field(description="succeeded, partial (or unchanged)")
    finished_at: DateTime
    age_seconds: float = Field(description="seconds since it finished, by the database's clock")


class Health(Strict):
    status: Literal["ok"]
    database: str = Field(description="where the store is, without password")
    server_version: str | None
    last_confirmed: LastConfirmed | None = Field(
        description="the last run that confirmed the features table; null: none has yet")
    max_age_seconds: float | None = Field(description="ETL_HEALTH_MAX_AGE_SECONDS: older is 503 features_stale")


class RunsQuery(Strict):
    limit: Integer = Field(50, ge=1, le=MAX_PAGE, description="runs in the page")
    status: RunStatus | None = Field(None, description="only runs with this status")
    before: PositiveInteger | None = Field(
        None, description="only runs with a smaller id: the previous page's next_before")


class RejectsQuery(Strict):
    limit: Integer = Field(100, ge=1, le=MAX_PAGE, description="rejects in the page")
    after: Integer = Field(0, ge=0, description="only rejects with a larger seq: the previous page's next_after")


def problems(errors: list[Any], where: str | None = None) -> list[dict[str, str]]:
    """pydantic's (or FastAPI's) validation errors as the ``parameters`` of a BadRequest."""
    found = []
    for error in errors:
        location = [str(part) for part in error["loc"]]
        found.append({"parameter": location[-1] if location else "", "in": where or location[0],
                      "message": error["msg"]})
    return found


def invalid(found: list[dict[str, str]]) -> BadRequest:
    reasons = "; ".join(f"{p['in']} parameter {p['parameter']}: {p['message']}" for p in found)
    return BadRequest(f"invalid request: {reasons}", parameters=found)


def parse(model: type[Strict], fields: dict[str, Any]) -> Any:
    """A direct invocation's fields as ``model``; BadRequest as HTTP answers it (``in``: event)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise invalid(problems(exc.errors(), "event")) from None
