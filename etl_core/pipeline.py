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

from etl_core import capacity, features, guard, logs
from etl_core.config import POLICIES, Settings
from etl_core.errors import BadRequest, ContractViolation, EtlError, InternalError, LoadError
from etl_core.inputs import Location, identify, resolve_location
from etl_core.logs import log_event
from etl_core.reading import Extracted, read_all, report, without_raw
from etl_core.sources import Pinned
from etl_core.store import Run as StoreRun
from etl_core.store import Store
from etl_core.trigger import Trigger

T = TypeVar("T")


DRY_RUN_SAMPLE = 20  # changed users a dry run shows, with their values before and after


def run(settings: Settings, trigger: Trigger, *, store: Store | None = None) -> dict[str, Any]:
    """Run the job once; returns the summary, raises an EtlError (recorded in the runs table)."""
    policy = trigger.policy or settings.policy
    if policy not in POLICIES:
        raise BadRequest(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    location = resolve_location(settings, trigger.data)
    return _recorded(settings, store, policy, location.where,
                     lambda ledger: _run(settings, ledger, policy, location, force=trigger.force,
                                         dry_run=trigger.dry_run))


def restore(settings: Settings, of: int, *, force: bool = False, dry_run: bool = False,
            store: Store | None = None) -> dict[str, Any]:
    """A run that publishes the features as they were when run ``of`` finished, through the same
    comparison, guard and publication as a load (the caller has checked that the history holds them)."""
    return _recorded(settings, store, settings.policy, f"restore of run {of}",
                     lambda ledger: _restore(settings, ledger, of, force=force, dry_run=dry_run))


def _recorded(settings: Settings, store: Store | None, policy: str, source: str,
              body: Callable[[StoreRun], dict[str, Any]]) -> dict[str, Any]:
    """``body`` as a run in the ledger: its failure recorded (and the retention's purge done)."""
    own = store is None
    store = store or postgres_store(settings)
    try:
        with store.run(policy=policy, source=source) as ledger, logs.bound(run_id=ledger.run_id):
            try:
                return body(ledger)
            except EtlError as exc:
                exc.details.setdefault("run_id", ledger.run_id)  # the answer names the run it recorded
                _failed(exc)
                ledger.fail(exc.to_dict())
                if not isinstance(exc, LoadError):  # the database answers: its old data may still go
                    _purge(settings, ledger)
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


def _run(settings: Settings, ledger: StoreRun, policy: str, location: Location, *, force: bool,
         dry_run: bool) -> dict[str, Any]:
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    log_event("run_started", run_id=ledger.run_id, policy=policy, data_dir=location.where,
              memory_pool=pa.default_memory_pool().backend_name)
    with _phase(seconds, "extract"):
        # the input's identity is decided before a byte of it is read, and every read must see it
        source = Pinned(location.source)
        found, inputs = identify(ledger, location, source, policy)
        last = ledger.last_loaded
        if not force and not dry_run and last is not None and last.fingerprint == found:
            return _unchanged(settings, ledger, policy, last.run_id, found, inputs, started)
        limit = capacity.limit_bytes(settings.memory_limit_mb)
        watch = capacity.Watch(limit) if limit is not None else None
        extracted = read_all(settings, source, ledger.run_id, watch)
    violations = extracted.violations if settings.retention.keep_raw else without_raw(extracted.violations)
    status = _verdict(settings, extracted, violations, policy, ledger.run_id, force=force)
    if dry_run:
        status = "dry_run"
    written, changes, sample, waited = _publish(settings, ledger, extracted, violations, status, force=force,
                                               seconds=seconds, started=started, watch=watch)
    seconds["transform"] = round(waited, 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    # the load phase's time too; the run itself is committed already, so this may not fail it
    _after_commit(ledger.record_seconds, seconds, run_id=ledger.run_id, what="record the load time")
    files = extracted.files
    purged = _purge(settings, ledger)
    log_event("run_finished", run_id=ledger.run_id, status=status, users_written=written, changes=changes,
              seconds=seconds, files=files, rejects=violations.num_rows, purged=purged)
    return {
        "run_id": ledger.run_id, "status": status, "policy": policy, "files": files,
        "users_written": written, "changes": changes, "violations": report(violations, settings.max_reported),
        "seconds": seconds, "same_as": None, "fingerprint": found, "inputs": inputs, "purged": purged,
        **({"sample": sample} if sample is not None else {}),
    }


def _restore(settings: Settings, ledger: StoreRun, of: int, *, force: bool, dry_run: bool) -> dict[str, Any]:
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    log_event("restore_started", run_id=ledger.run_id, restored_from=of, dry_run=dry_run)
    status = "dry_run" if dry_run else "restored"
    with _phase(seconds, "load"):
        with ledger.publishing() as publication:
            restored = publication.volume_as_of(of)
            if not restored.users:
                raise BadRequest(f"the features as of run {of} hold no user: nothing to restore", restored_from=of)
            if force:
                publication.lock()
            else:
                guard.check_volume(publication.volume(), restored, min_share=settings.min_share)
            if dry_run:
                publication.preview(DRY_RUN_SAMPLE)
            rows = publication.restore_features(of)
            written = 0 if dry_run else rows
            publication.finish(status=status, files={}, users_written=written, restored_from=of,
                               seconds=dict(seconds, total=round(time.perf_counter() - started, 3)))
        if not dry_run:
            _after_commit(ledger.analyze, run_id=ledger.run_id, what="analyze the features table")
    seconds["total"] = round(time.perf_counter() - started, 3)
    _after_commit(ledger.record_seconds, seconds, run_id=ledger.run_id, what="record the load time")
    purged = _purge(settings, ledger)
    log_event("run_finished", run_id=ledger.run_id, status=status, users_written=written,
              changes=publication.changes, restored_from=of, seconds=seconds, purged=purged)
    return {
        "run_id": ledger.run_id, "status": status, "policy": settings.policy, "files": {},
        "users_written": written, "changes": publication.changes, "violations": {"total": 0, "first": []},
        "seconds": seconds, "same_as": None, "fingerprint": None, "inputs": None, "purged": purged,
        "restored_from": of, **({"sample": publication.sample} if dry_run else {}),
    }


def _purge(settings: Settings, ledger: StoreRun) -> dict[str, Any]:
    """The retention's purge, once the run's outcome is committed (etl_core.config.RetentionSettings): what
    it deleted, or ``failed`` (logged; the run's outcome stands)."""
    try:
        purged = ledger.purge(settings.retention)
    except Exception as exc:  # noqa: BLE001 - after the commit: never the run's failure
        reason = exc.message if isinstance(exc, EtlError) else f"{type(exc).__name__}: {exc}"
        log_event("purge_failed", level=logging.WARNING, run_id=ledger.run_id, reason=reason)
        return {"rejects": 0, "history": 0, "runs": 0, "backlog": True, "failed": True}
    if purged["rejects"] or purged["runs"] or purged.get("history"):
        log_event("purged", run_id=ledger.run_id, **purged)
    return {**purged, "failed": False}


def _verdict(settings: Settings, extracted: Extracted, violations: pa.Table, policy: str, run_id: int, *,
             force: bool) -> str:
    """The run's status if it may publish; else the ContractViolation or LoadRefused that stops it."""
    def refuse(message: str) -> ContractViolation:
        return ContractViolation(message, run_id=run_id, files=extracted.files,
                                 violations=report(violations, settings.max_reported))

    if violations.num_rows and policy == "strict":
        raise refuse(f"the input breaks the data contract in {violations.num_rows} place(s); nothing was loaded")
    if extracted.header_only:  # a file's problem: it fails the run in quarantine too
        raise refuse(f"{', '.join(extracted.header_only)} has no data row; nothing was loaded")
    if extracted.users.num_rows == 0:
        raise refuse("no user row was accepted; nothing was loaded")
    if not force:
        guard.check_rejects(rows_read=sum(r.rows_read for r in extracted.results),
                            rows_rejected=sum(r.rows_rejected for r in extracted.results),
                            max_share=settings.max_rejected_share)
    return "partial" if violations.num_rows else "succeeded"


def _publish(settings: Settings, ledger: StoreRun, extracted: Extracted, violations: pa.Table, status: str, *,
             force: bool, seconds: dict[str, float], started: float,
             watch: capacity.Watch | None = None) -> tuple[int, dict[str, int] | None, list[dict[str, Any]] | None,
                                                         float]:
    """Replace the features and finish the run in one transaction; the rows written, the users added,
    changed, removed and left unchanged, and the seconds the
    COPY waited for the features (they stream into it bucket by bucket: the server parses while we
    compute, so that 'transform' time is part of 'load')."""
    stopwatch = _Stopwatch()
    batches = stopwatch.timed(_watched(features.feature_batches(extracted.users, extracted.compounds,
                                                                extracted.counts), watch))
    try:
        with _phase(seconds, "load"):
            with ledger.publishing() as publication:
                if force:  # no guard: nothing to count (a scan of the whole table)
                    publication.lock()  # against new foreign keys, as volume() would
                else:
                    guard.check_volume(publication.volume(), extracted.volume, min_share=settings.min_share)
                digester = features.Digester(extracted.compounds)
                if status == "dry_run":  # everything but the write: no features, no rejects stored
                    publication.preview(DRY_RUN_SAMPLE)
                    publication.replace_features(batches, digester)
                    written = 0
                else:
                    written = publication.replace_features(batches, digester)
                    publication.store_rejects(violations)
                publication.finish(status=status, files=extracted.files, users_written=written,
                                   seconds=dict(seconds, total=round(time.perf_counter() - started, 3)))
            if status != "dry_run":
                _after_commit(ledger.analyze, run_id=ledger.run_id, what="analyze the features table")
    finally:
        batches.close()  # a failed COPY leaves no bucket being worked out
    return written, publication.changes, publication.sample, stopwatch.seconds


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


def _unchanged(settings: Settings, ledger: StoreRun, policy: str, same_as: int, found: str,
               inputs: dict[str, Any], started: float) -> dict[str, Any]:
    """The input is the one run ``same_as`` loaded: record that, and load nothing (but purge: a daily run
    of an input that never changes must still let old rejects go)."""
    seconds = {"total": round(time.perf_counter() - started, 3)}
    ledger.unchanged(same_as=same_as, seconds=seconds)
    log_event("run_unchanged", run_id=ledger.run_id, same_as=same_as, fingerprint=found)
    return {"run_id": ledger.run_id, "status": "unchanged", "policy": policy, "files": {}, "users_written": 0,
            "changes": None,
            "violations": {"total": 0, "first": []}, "seconds": seconds, "same_as": same_as,
            "fingerprint": found, "inputs": inputs, "purged": _purge(settings, ledger)}


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
