"""One run of the job, top to bottom: decide the input's identity, read the three files, judge them,
publish the features in one transaction, answer.  The only module that knows extract, the features
and the store together."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pyarrow as pa

from etl_core import capacity, counting, guard, logs
from etl_core.config import POLICIES, Settings
from etl_core.errors import BadRequest, ContractViolation, EtlError, InternalError
from etl_core.inputs import Location, identify, resolve_location
from etl_core.logs import log_event
from etl_core.reading import Extracted, read_all
from etl_core.source import Pinned
from etl_core.store import Run as StoreRun
from etl_core.store import Store
from etl_core.trigger import Trigger
from etl_core.violations import report

T = TypeVar("T")


def run(settings: Settings, trigger: Trigger, *, store: Store | None = None) -> dict[str, Any]:
    """Run the job once; returns the summary, raises an EtlError (recorded in the runs table)."""
    policy = trigger.policy or settings.policy
    if policy not in POLICIES:
        raise BadRequest(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    location = resolve_location(settings, trigger.data)
    own = store is None
    store = store or postgres_store(settings)
    try:
        with store.run(policy=policy, source=location.where) as ledger, logs.bound(run_id=ledger.run_id):
            try:
                return _run(settings, ledger, policy, location, force=trigger.force)
            except EtlError as exc:
                exc.details.setdefault("run_id", ledger.run_id)  # the answer names the run it recorded
                _failed(exc)
                ledger.fail(exc.to_dict())
                raise
            except Exception as exc:  # a bug of ours: still recorded, and still an answer with a body
                error = InternalError.of(exc, run_id=ledger.run_id)
                _failed(error)
                ledger.fail(error.to_dict())
                raise error from exc
    finally:
        if own:
            store.close()


def _failed(error: EtlError) -> None:
    """The run's last line: why it failed (the answer's own line, and a bug's traceback, come from the edge)."""
    level = logging.ERROR if isinstance(error, InternalError) else logging.WARNING
    log_event("run_failed", level=level, code=error.code, error_type=type(error).__name__, reason=error.message)


def postgres_store(settings: Settings) -> Store:
    from etl_core.store.postgres import PostgresStore  # not imported by a run against another store

    return PostgresStore(settings.db, settings.schema)


class _Stopwatch:
    """Seconds spent waiting on an iterator's items (the COPY waiting for the features)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timed(self, items: Generator[T, None, None]) -> Generator[T, None, None]:
        """The items of ``items``, counting the time each took to come; closing this closes ``items``."""
        try:
            while True:
                start = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self.seconds += time.perf_counter() - start
                yield item
        finally:
            items.close()


def _run(settings: Settings, ledger: StoreRun, policy: str, location: Location, *, force: bool) -> dict[str, Any]:
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    log_event("run_started", run_id=ledger.run_id, policy=policy, data_dir=location.where,
              memory_pool=pa.default_memory_pool().backend_name)
    with _phase(seconds, "extract"):
        # the input's identity is decided before a byte of it is read, and every read must see it
        source = Pinned(location.source)
        found, inputs = identify(ledger, location, source, policy)
        last = ledger.last_loaded
        if not force and last is not None and last.fingerprint == found:
            return _unchanged(ledger, policy, last.run_id, found, inputs, started)
        limit = capacity.limit_bytes(settings.memory_limit_mb)
        watch = capacity.Watch(limit) if limit is not None else None
        extracted = read_all(settings, source, ledger.run_id, watch)
    violations = extracted.violations
    status = _verdict(settings, extracted, violations, policy, ledger.run_id, force=force)
    written, waited = _publish(settings, ledger, extracted, violations, status, force=force,
                               seconds=seconds, started=started, watch=watch)
    seconds["transform"] = round(waited, 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    # the load phase's time too; the run itself is committed already, so this may not fail it
    _after_commit(ledger.record_seconds, seconds, run_id=ledger.run_id, what="record the load time")
    files = extracted.files
    log_event("run_finished", run_id=ledger.run_id, status=status, users_written=written, seconds=seconds,
              files=files, rejects=violations.num_rows)
    return {
        "run_id": ledger.run_id, "status": status, "policy": policy, "files": files,
        "users_written": written, "violations": report(violations, settings.max_reported),
        "seconds": seconds, "same_as": None, "fingerprint": found, "inputs": inputs,
    }


def _verdict(settings: Settings, extracted: Extracted, violations: pa.Table, policy: str, run_id: int, *,
             force: bool) -> str:
    """The run's status if it may publish; else the ContractViolation or LoadRefused that stops it."""
    def refuse(message: str) -> ContractViolation:
        return ContractViolation(message, run_id=run_id, files=extracted.files,
                                 violations=report(violations, settings.max_reported))

    if violations.num_rows and policy == "strict":
        raise refuse(f"the input breaks the data contract in {violations.num_rows} place(s); nothing was loaded")
    if extracted.users.num_rows == 0:
        raise refuse("no user row was accepted; nothing was loaded")
    if not force:
        guard.check_rejects(rows_read=sum(r.rows_read for r in extracted.results),
                            rows_rejected=sum(r.rows_rejected for r in extracted.results),
                            max_share=settings.max_rejected_share)
    return "partial" if violations.num_rows else "succeeded"


def _publish(settings: Settings, ledger: StoreRun, extracted: Extracted, violations: pa.Table, status: str, *,
             force: bool, seconds: dict[str, float], started: float,
             watch: capacity.Watch | None = None) -> tuple[int, float]:
    """Replace the features and finish the run in one transaction; the rows written, and the seconds the
    COPY waited for the features (they stream into it bucket by bucket: the server parses while we
    compute, so that 'transform' time is part of 'load')."""
    stopwatch = _Stopwatch()
    features = stopwatch.timed(_watched(counting.feature_batches(extracted.users, extracted.compounds,
                                                                 extracted.counts), watch))
    try:
        with _phase(seconds, "load"):
            with ledger.publishing() as publication:
                if force:  # no guard: nothing to count (a scan of the whole table)
                    publication.lock()  # against new foreign keys, as volume() would
                else:
                    guard.check_volume(publication.volume(), extracted.volume, min_share=settings.min_share)
                written = publication.replace_features(features)
                publication.store_rejects(violations)
                publication.finish(status=status, files=extracted.files, users_written=written,
                                   seconds=dict(seconds, total=round(time.perf_counter() - started, 3)))
            _after_commit(ledger.analyze, run_id=ledger.run_id, what="analyze the features table")
    finally:
        features.close()  # a failed COPY leaves no bucket being worked out
    return written, stopwatch.seconds


def _watched(batches: Generator[pa.RecordBatch, None, None],
             watch: capacity.Watch | None) -> Generator[pa.RecordBatch, None, None]:
    """``batches``, the memory checked after each (the COPY is then rolled back, not killed mid-way)."""
    if watch is None:
        yield from batches
        return
    written = 0
    try:
        for batch in batches:
            written += batch.num_rows
            watch.check(f"after the features of {written:,} users")
            yield batch
    finally:
        batches.close()


def _unchanged(ledger: StoreRun, policy: str, same_as: int, found: str, inputs: dict[str, Any],
               started: float) -> dict[str, Any]:
    """The input is the one run ``same_as`` loaded: record that, and load nothing."""
    seconds = {"total": round(time.perf_counter() - started, 3)}
    ledger.unchanged(same_as=same_as, seconds=seconds)
    log_event("run_unchanged", run_id=ledger.run_id, same_as=same_as, fingerprint=found)
    return {"run_id": ledger.run_id, "status": "unchanged", "policy": policy, "files": {}, "users_written": 0,
            "violations": {"total": 0, "first": []}, "seconds": seconds, "same_as": same_as,
            "fingerprint": found, "inputs": inputs}


def _after_commit(step: Callable[..., Any], *args: Any, run_id: int, what: str) -> None:
    """A step after the run's commit: its failure is logged, never the run's."""
    try:
        step(*args)
    except Exception as exc:  # noqa: BLE001
        reason = exc.message if isinstance(exc, EtlError) else f"{type(exc).__name__}: {exc}"
        log_event("after_commit_failed", level=logging.WARNING, run_id=run_id, reason=f"could not {what}: {reason}")


@contextmanager
def _phase(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = round(time.perf_counter() - start, 3)
