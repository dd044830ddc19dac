"""The API's documents as pydantic models: what /openapi.json shows, what FastAPI checks every answer
against (a field the model does not know is a bug: 500, not a silent drop), and what callers send:
a trigger's parameters and each direct action's fields, which HTTP and direct invocations both
validate with the same model."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError

from etl_core.config import POLICIES
from etl_core.errors import BadRequest, shorten
from etl_core.status import RunStatus

MAX_PAGE = 1000  # items in one page of runs or rejects
DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
RAW_SHA256 = ("ETL_REJECTS_KEEP_RAW=false: the rejected row's SHA-256 (hex of its UTF-8 text), stored instead "
              "of raw and value")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON's true is not the number 1
        raise ValueError("must be an integer, not a boolean")
    return value


_DIGITS = re.compile(r"0|-?[1-9][0-9]*")


def _digits(value: Any) -> Any:
    """A number sent as text is written one way: ``+1``, `` 1``, ``1_0`` and ``01`` (which int() reads as
    1, 1, 10 and 1) would be other spellings of one run or page for a cache, a log search or the pattern
    of an authorizer."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("must be a whole number in plain digits (no sign, space, '_' or leading zero)")
    return value


Integer = Annotated[int, BeforeValidator(_not_bool), BeforeValidator(_digits)]
PositiveInteger = Annotated[int, Field(ge=1), BeforeValidator(_not_bool), BeforeValidator(_digits)]
RunId = Annotated[int, BeforeValidator(_digits)]  # a path's run id: text, checked as a page's numbers are


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SHOWN_CHARS = 200  # characters of a caller's value repeated in an error
FORCE_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def shown(value: object) -> str:
    """A caller's value as an error repeats it: a string quoted, JSON's other values as JSON, cut short."""
    if isinstance(value, str):
        return repr(shorten(value, SHOWN_CHARS))
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return f"{shorten(json.dumps(value, default=str), SHOWN_CHARS)} ({kind.get(type(value), type(value).__name__)})"


def _policy(value: object) -> str | None:
    if value is None or value == "":
        return None
    if value not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)} (or absent), not {shown(value)}")
    return str(value)


def _data(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"data must be a string, a directory below the data root (or absent), not {shown(value)}")
    return value


def _force(value: object) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in FORCE_VALUES:
        return FORCE_VALUES[value.lower()]
    raise ValueError(f"force must be true or false (also 1/0, yes/no; or absent), not {shown(value)}")


def _dry_run(value: object) -> bool:
    """As ``force``, but an empty value (a bare ``?dry_run``, written as a flag) is refused: read as
    absent it would be false, and the run its caller meant to only compare would write."""
    if value == "":
        raise ValueError("dry_run must be true or false (also 1/0, yes/no); a bare ?dry_run is refused rather "
                         "than read as false, which would load")
    try:
        return _force(value)
    except ValueError as exc:
        raise ValueError(str(exc).replace("force must", "dry_run must", 1)) from None


class TriggerQuery(Strict):
    """What a trigger asks for, from a query string's strings or a direct invocation's JSON values; an
    empty or null value is the same as none (but an empty ``dry_run``: refused)."""

    policy: Annotated[Literal["strict", "quarantine"] | None, BeforeValidator(_policy)] = Field(
        None, description="strict: any violation fails the run; quarantine: bad rows go to etl_rejects. "
                          "Default: ETL_POLICY")
    data: Annotated[str | None, BeforeValidator(_data)] = Field(
        None, description="a directory below DATA_ROOT (or a prefix below DATA_URL) to read instead of the default")
    force: Annotated[bool, BeforeValidator(_force)] = Field(
        False, description="true/false (also 1/0, yes/no): load even what the load guard refuses, and even an "
                           "input that is unchanged since the last load")
    dry_run: Annotated[bool, BeforeValidator(_dry_run)] = Field(
        False, description="true/false (also 1/0, yes/no): do everything but the write (read, contract, features, "
                           "guard, comparison) and answer what a load would change; recorded as dry_run")


class RestoreQuery(Strict):
    """What a restore asks for: whether to override the load guard, whether only to compare."""

    force: Annotated[bool, BeforeValidator(_force)] = Field(
        False, description="true/false (also 1/0, yes/no): restore even what the load guard refuses")
    dry_run: Annotated[bool, BeforeValidator(_dry_run)] = Field(
        False, description="true/false (also 1/0, yes/no): only compare, and answer what the restore would change")


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
    history: int = Field(0, description="versions of users' features that ended before the history's horizon "
                                        "(ETL_HISTORY_RETENTION_DAYS, ETL_HISTORY_RETENTION_RUNS)")
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


class FeatureValues(Strict):
    """A user's feature values (user_features' columns but the key and the run)."""

    user_name: str
    total_experiments: int
    most_common_compounds: str | None
    most_common_compound_ids: list[int] | None
    average_experiments: float


class Change(Strict):
    user_id: int
    change: Literal["added", "changed", "removed"]
    before: FeatureValues | None = Field(description="the user's features before the run; null: added")
    after: FeatureValues | None = Field(description="the user's features the run wrote; null: removed")


class Changes(Strict):
    """What a publication changed: the users it added, changed (any value differs), removed, and left as
    they were (their rows untouched, still naming the run that wrote them)."""

    added: int
    changed: int
    removed: int
    unchanged: int


CHANGES = "the users the run added, changed, removed and left unchanged (null: it published nothing)"


class RunSummary(Strict):
    """What a trigger answers when the run published its features, or found the input unchanged."""

    run_id: int
    status: Literal["succeeded", "partial", "unchanged", "restored", "dry_run"] = Field(
        description="partial: some rows were rejected (quarantine); unchanged: the input is the one run "
                    "same_as loaded, nothing was loaded (force=true loads anyway); restored: the features as "
                    "of run restored_from were published; dry_run: nothing was written, changes says what would be")
    policy: Literal["strict", "quarantine"]
    files: dict[str, FileCounts] = Field(description="per file; empty when unchanged")
    users_written: int = Field(description="the users the table holds after the run")
    changes: Changes | None = Field(None, description=CHANGES)
    violations: Violations
    seconds: dict[str, float] = Field(description="time per phase: extract, transform, load, total")
    same_as: int | None = Field(None, description="unchanged: the run that loaded this input")
    fingerprint: str | None = Field(None, description=FINGERPRINT)
    inputs: dict[str, InputObject | None] | None = Field(None, description=INPUTS)
    purged: Purged | None = Field(None, description="what the retention's purge deleted after this run")
    restored_from: int | None = Field(None, description="a restore: the run whose features it published")
    sample: list[Change] | None = Field(
        None, description="a dry run: the first 20 users (by id) it would add, change or remove, before and after")


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
    changes: Changes | None = Field(None, description=CHANGES)
    seconds: dict[str, float] | None
    error: ErrorDetail | None
    rejects: int = Field(description="rejected rows stored in etl_rejects: GET /runs/{run_id}/rejects")
    fingerprint: str | None = Field(None, description=FINGERPRINT)
    inputs: dict[str, InputObject | None] | None = Field(None, description=INPUTS)
    same_as: int | None = Field(None, description="unchanged: the run that loaded this input")
    restored_from: int | None = Field(None, description="a restore: the run whose features it published")


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


class ChangesPage(Strict):
    run_id: int
    changes: list[Change] = Field(description="by user id")
    next_after: int | None = Field(description="pass as after= for the next page; null: this is the last")


class FeatureRow(FeatureValues):
    user_id: int
    run_id: int = Field(description="the run that wrote the row as it was then")


class FeaturesPage(Strict):
    run_id: int = Field(description="the features as they were when this run finished")
    features: list[FeatureRow] = Field(description="by user id")
    next_after: int | None = Field(description="pass as after= for the next page; null: this is the last")


class LastConfirmed(Strict):
    run_id: int
    status: str = Field(description="succeeded, partial, unchanged or restored")
    finished_at: DateTime
    age_seconds: float = Field(description="seconds since it finished, by the database's clock")


class Health(Strict):
    status: Literal["ok"]
    database: str = Field(description="where the store is, without password")
    server_version: str | None
    last_confirmed: LastConfirmed | None = Field(
        description="the last run that confirmed the features table; null: none has yet")
    max_age_seconds: float | None = Field(description="ETL_HEALTH_MAX_AGE_SECONDS: older is 503 features_stale")


class NoQuery(Strict):
    """The query string of a route that takes no parameter: any one is unknown (a misspelt one is not
    silently ignored)."""


class RunsQuery(Strict):
    limit: Integer = Field(50, ge=1, le=MAX_PAGE, description="runs in the page")
    status: RunStatus | None = Field(None, description="only runs with this status")
    before: PositiveInteger | None = Field(
        None, description="only runs with a smaller id: the previous page's next_before")


class RejectsQuery(Strict):
    limit: Integer = Field(100, ge=1, le=MAX_PAGE, description="rejects in the page")
    after: Integer = Field(0, ge=0, description="only rejects with a larger seq: the previous page's next_after")


class UsersQuery(Strict):
    limit: Integer = Field(100, ge=1, le=MAX_PAGE, description="users in the page")
    after: Integer = Field(0, ge=0, description="only users with a larger id: the previous page's next_after")


# Each direct action's fields (besides "action"), checked as HTTP checks a route's parameters

class RunRef(Strict):
    run_id: StrictInt


class RejectsAction(RejectsQuery):
    run_id: StrictInt


class UsersAction(UsersQuery):
    run_id: StrictInt


class RestoreAction(RestoreQuery):
    run_id: StrictInt


class NoFields(Strict):
    pass


class ShardPlan(Strict):
    batch: str = Field(description="the Step Functions execution's name: the shards' batch")
    shards: StrictInt = Field(description="how many byte ranges of the experiments file, 1 to 10,000")


class ShardEvent(BaseModel):
    """One Map item, as plan-shards made it: checked by etl_core.shards (``Shard.parse``), which made it."""

    model_config = ConfigDict(extra="allow")


class ShardReduce(Strict):
    batch: str
    force: bool = False


class MigrateAction(Strict):
    apply: bool = Field(True, description="false: only list the steps still to apply")


def problems(errors: list[Any], where: str | None = None, model: type[Strict] | None = None) -> list[dict[str, str]]:
    """pydantic's (or FastAPI's) validation errors as the ``parameters`` of a BadRequest: our own
    validators' messages as they wrote them, an unknown parameter named as such (with the accepted
    ones, where the model is known)."""
    found = []
    for error in errors:
        location = [str(part) for part in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown parameter(s) {shown(location[-1] if location else '')}"
            if model is not None:
                message += f"; {accepted(list(model.model_fields))}"
        found.append({"parameter": location[-1] if location else "", "in": where or location[0],
                      "message": message})
    return found


def invalid(found: list[dict[str, str]]) -> BadRequest:
    reasons = "; ".join(f"{p['in']} parameter {p['parameter']}: {p['message']}" for p in found)
    return BadRequest(f"invalid request: {reasons}", parameters=found)


def accepted(names: list[str]) -> str:
    if not names:
        return "it takes none"
    if len(names) == 1:
        return f"the accepted one is {names[0]}"
    return f"the accepted ones are {', '.join(names[:-1])} and {names[-1]}"


def parse(model: type[Strict], fields: dict[str, Any]) -> Any:
    """A direct invocation's fields as ``model``; BadRequest as HTTP answers it (``in``: event)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise invalid(problems(exc.errors(), "event", model)) from None
