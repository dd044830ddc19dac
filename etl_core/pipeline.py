"""The job: extract, transform, load, in that order; the only module that knows all three."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from etl_core import extract, guard, load, transform
from etl_core.config import POLICIES, Settings
from etl_core.contract import COMPOUNDS, EXPERIMENTS, FILES, USERS, FileContract, Rule
from etl_core.db import Connection, close_quietly, connect, translate
from etl_core.errors import BadRequest, ContractViolation, EtlError
from etl_core.guard import Volume
from etl_core.source import LocalSource, Source

log = logging.getLogger("etl")
PROGRESS_EVERY = 5.0  # seconds between progress lines of one file
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Trigger:
    """What one trigger asks for: the policy, and optionally a data directory under DATA_ROOT."""

    policy: str | None = None
    data: str | None = None
    force: bool = False


def resolve_data_dir(settings: Settings, data: str | None) -> Path:
    """The directory to read: the default, or ``data`` relative to the root; nothing outside the root."""
    if not data:
        return settings.data_dir
    candidate = Path(data)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise BadRequest("data must be a relative path below the data root, without '..'", data=data)
    resolved = (settings.data_root / candidate).resolve()  # follows symlinks
    if not resolved.is_relative_to(settings.data_root):
        raise BadRequest("data leads outside the data root", data=data)
    if not resolved.is_dir():
        raise BadRequest("data is not a directory below the data root", data=data)
    return resolved


def run(settings: Settings, trigger: Trigger, *, conn: Connection | None = None) -> dict[str, Any]:
    """Run the job once; returns the summary, raises an EtlError (recorded in the runs table)."""
    policy = trigger.policy or settings.policy
    if policy not in POLICIES:
        raise BadRequest(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    data_dir = resolve_data_dir(settings, trigger.data)
    schema = settings.schema
    own = conn is None
    conn = conn or connect(settings.db)
    try:
        _guard(load.acquire_lock, conn, schema)
        try:
            _guard(load.ensure_schema, conn, schema)
            _guard(load.fail_abandoned_runs, conn, schema)
            run_id = _guard(load.start_run, conn, schema, policy=policy, data_dir=str(data_dir))
            try:
                return _run(settings, conn, run_id, policy, data_dir, force=trigger.force)
            except EtlError as exc:
                _record_failure(settings, conn, run_id, exc)
                raise
            except Exception as exc:  # a bug of ours: still recorded, and still an answer with a body
                error = EtlError(f"unexpected {type(exc).__name__}: {exc}", run_id=run_id)
                _record_failure(settings, conn, run_id, error)
                raise error from exc
        finally:
            try:
                load.release_lock(conn, schema)
            except Exception:  # noqa: BLE001,S110 - a dead session has released its lock already
                pass
    finally:
        if own:
            close_quietly(conn)


def _run(settings: Settings, conn: Connection, run_id: int, policy: str, data_dir: Path, *,
         force: bool) -> dict[str, Any]:
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    log_event("run_started", run_id=run_id, policy=policy, data_dir=str(data_dir))

    with _phase(seconds, "extract"):
        source = LocalSource(data_dir)
        _check_headers(source)
        users_sink = extract.Collector(extract.output_schema(USERS))
        compounds_sink = extract.Collector(extract.output_schema(COMPOUNDS))
        users = _read(settings, source, USERS, users_sink, run_id)
        compounds = _read(settings, source, COMPOUNDS, compounds_sink, run_id)
        users_table = users_sink.table()
        compounds_table = compounds_sink.table().sort_by("compound_id")
        refs = extract.References.of(users_table["user_id"].combine_chunks(),
                                     compounds_table["compound_id"].combine_chunks())
        counter = transform.ExperimentCounts(refs.users.keys, refs.compounds.keys)
        try:
            experiments = _read(settings, source, EXPERIMENTS, counter, run_id, refs=refs)
            counts = counter.result()  # the counting thread finishes with the file
        finally:
            counter.close()
    results = [users, compounds, experiments]
    violations = pa.concat_tables([r.violations for r in results])
    files = {r.contract.filename: {
        "rows_read": r.rows_read, "rows_accepted": r.rows_accepted, "rows_rejected": r.rows_rejected,
        "extra_columns": list(r.extra_columns)} for r in results}
    for header_only in (r for r in (users, compounds) if r.rows_read == 0):
        violations = pa.concat_tables([violations, _file_violation(header_only.contract.filename, Rule.NO_ROWS)])
    if violations.num_rows and policy == "strict":
        raise ContractViolation(
            f"the input breaks the data contract in {violations.num_rows} place(s); nothing was loaded",
            run_id=run_id, files=files, violations=_report(violations, settings.max_reported),
        )
    if users_table.num_rows == 0:
        raise ContractViolation("no user row was accepted; nothing was loaded", run_id=run_id, files=files,
                                violations=_report(violations, settings.max_reported))

    status = "partial" if violations.num_rows else "succeeded"
    if not force:
        guard.check_rejects(rows_read=sum(r.rows_read for r in results),
                            rows_rejected=sum(r.rows_rejected for r in results),
                            max_share=settings.max_rejected_share)
    incoming = Volume(users=users_table.num_rows, experiments=experiments.rows_accepted)
    # the features stream into the COPY bucket by bucket: the server parses while we compute, and
    # 'transform' counts the time the COPY waited for them (it is part of 'load')
    waited = [0.0]
    features = _timed(transform.feature_batches(users_table, compounds_table, counts), waited)
    try:
        with _phase(seconds, "load"):
            with load.transaction(conn) as tx:
                current = load.lock_features(tx, settings.schema)
                if not force:
                    guard.check_volume(current, incoming, min_share=settings.min_share)
                written = load.replace_features(tx, settings.schema, run_id, features)
                load.store_rejects(tx, settings.schema, run_id, violations)
                seconds_so_far = dict(seconds, total=round(time.perf_counter() - started, 3))
                load.finish_run(tx.conn, settings.schema, run_id, status=status, files=files,
                                users_written=written, seconds=seconds_so_far)
            _after_commit(load.analyze, conn, settings.schema, run_id=run_id, what="analyze the features table")
    finally:
        features.close()  # a failed COPY leaves no bucket being worked out
    seconds["transform"] = round(waited[0], 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    # the load phase's time too; the run itself is committed already, so this may not fail it
    _after_commit(load.record_seconds, conn, settings.schema, run_id, seconds, run_id=run_id,
                  what="record the load time")
    summary = {
        "run_id": run_id, "status": status, "policy": policy, "files": files,
        "users_written": written, "violations": _report(violations, settings.max_reported),
        "seconds": seconds,
    }
    log_event("run_finished", run_id=run_id, status=status, users_written=written, seconds=seconds)
    return summary


def _after_commit(step: Callable[..., Any], *args: Any, run_id: int, what: str) -> None:
    """A step after the run's commit: its failure is logged, never the run's."""
    try:
        step(*args)
    except Exception as exc:  # noqa: BLE001
        log_event("warning", run_id=run_id, message=f"could not {what}: {translate(exc).message}")


def _check_headers(source: Source) -> None:
    """Every file-level problem (missing, empty, bad header) of all three files, before any row is read."""
    problems = []
    for contract in FILES:
        try:
            extract.read_header(source, contract)
        except extract.FileProblem as problem:
            problems.append(problem.table)
    if problems:
        table = pa.concat_tables(problems)
        raise ContractViolation(
            f"{len(problems)} input file(s) cannot be read under the data contract; nothing was loaded",
            violations=_report(table, len(problems)),
        )


def _file_violation(filename: str, rule: Rule) -> pa.Table:
    return pa.Table.from_pylist([{"file": filename, "line": None, "column": None, "value": None,
                                  "rule": rule.value, "raw": None}], schema=extract.VIOLATION_SCHEMA)


def _read(settings: Settings, source: Source, contract: FileContract, sink: extract.Sink, run_id: int,
          refs: extract.References | None = None) -> extract.FileResult:
    size = source.size(contract.filename)
    last = [time.monotonic()]

    def progress(rows: int, offset: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            log_event("progress", run_id=run_id, file=contract.filename, rows=rows,
                      mb=round(offset / 1e6, 1), mb_total=round(size / 1e6, 1))

    result = extract.read_file(source, contract, sink, refs=refs, block_size=settings.block_size, progress=progress)
    log_event("file_read", run_id=run_id, file=contract.filename, rows=result.rows_read,
              rejected=result.rows_rejected, mb=round(size / 1e6, 1))
    return result


def _report(violations: pa.Table, limit: int) -> dict[str, Any]:
    first = violations.slice(0, limit).to_pylist()
    return {"total": violations.num_rows, "first": first}


def _record_failure(settings: Settings, conn: Connection, run_id: int, exc: EtlError) -> None:
    """Mark the run failed; if our connection is gone, try a fresh one; else the next run will."""
    error = exc.to_dict()
    for attempt in range(2):
        target = conn if attempt == 0 else None
        try:
            target = target or connect(settings.db)
            load.finish_run(target, settings.schema, run_id, status="failed", error=error)
            return
        except Exception:  # noqa: BLE001,S112 - the next run marks abandoned runs failed
            continue
        finally:
            if attempt == 1:
                close_quietly(target)


def _guard(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except EtlError:
        raise
    except Exception as exc:
        raise translate(exc) from exc


def _timed(items: Generator[T, None, None], spent: list[float]) -> Generator[T, None, None]:
    """The items of ``items``, adding the time spent waiting for each to ``spent[0]``; closing this
    closes ``items``."""
    try:
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                spent[0] += time.perf_counter() - start
            yield item
    finally:
        items.close()


@contextmanager
def _phase(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = round(time.perf_counter() - start, 3)


def log_event(event: str, **fields: Any) -> None:
    """One structured log line (JSON), which CloudWatch and the emulator print as they are."""
    log.info(json.dumps({"event": event, **fields}, default=str))

