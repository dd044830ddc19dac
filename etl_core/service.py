"""What the API and the Lambda entry ask of the job, without knowing HTTP: trigger a run, read the
ledger (runs, rejects), and health.  The handler reaches the job only through this module."""

from __future__ import annotations

import time
from typing import Any

from etl_core import memory, metrics, pipeline
from etl_core.config import Settings
from etl_core.errors import (
    BadRequest,
    ConfigError,
    EtlError,
    FeaturesStale,
    HistoryPurged,
    InternalError,
    RunInProgress,
    RunNotFound,
)
from etl_core.inputs import describe, resolve_location
from etl_core.reading import REPORTED_CHARS
from etl_core.sources import MANIFEST, Pinned
from etl_core.status import RunStatus
from etl_core.store import Store
from etl_core.trigger import Trigger

__all__ = ["MANIFEST", "Service", "Trigger", "start"]


class Service:
    """What the API and the Lambda entry ask of the job, without knowing HTTP: one per process.  It
    holds the settings (read once) and the store (which keeps its connection for warm invocations);
    each trigger that becomes a run prints its metrics (``etl_core.metrics``) to ``emit``."""

    def __init__(self, settings: Settings, store: Store | None = None, *,
                 emit: metrics.Emit = metrics.print_line) -> None:
        self.settings = settings
        self.store = store or pipeline.postgres_store(settings)
        self.emit = emit

    def trigger(self, trigger: Trigger) -> dict[str, Any]:
        """Run the job; one metrics document for the run, failed runs included (also those that never
        reached the database), but not for a refused trigger (bad request, another run in progress)."""
        started = time.perf_counter()
        try:
            summary = pipeline.run(self.settings, trigger, store=self.store)
        except (BadRequest, RunInProgress):
            raise
        except Exception as exc:
            error = exc if isinstance(exc, EtlError) else InternalError.of(exc)
            self._metrics(status="failed", run_id=error.details.get("run_id"), files=error.details.get("files"),
                          seconds={"total": round(time.perf_counter() - started, 3)}, error_code=error.code,
                          config_error=isinstance(error, ConfigError))
            raise
        self._metrics(status=summary["status"], run_id=summary.get("run_id"), files=summary.get("files"),
                      users_written=summary.get("users_written"), seconds=summary.get("seconds"),
                      purged=summary.get("purged"))
        return summary

    def restore(self, run_id: int, *, force: bool = False, dry_run: bool = False) -> dict[str, Any]:
        """A run that publishes the features as they were when run ``run_id`` finished (RunNotFound,
        HistoryPurged where the history no longer holds them); its metrics as a trigger's."""
        self._kept(run_id)
        started = time.perf_counter()
        try:
            summary = pipeline.restore(self.settings, run_id, force=force, dry_run=dry_run, store=self.store)
        except (BadRequest, RunInProgress):
            raise
        except Exception as exc:
            error = exc if isinstance(exc, EtlError) else InternalError.of(exc)
            self._metrics(status="failed", run_id=error.details.get("run_id"),
                          seconds={"total": round(time.perf_counter() - started, 3)}, error_code=error.code)
            raise
        self._metrics(status=summary["status"], run_id=summary.get("run_id"),
                      users_written=summary.get("users_written"), seconds=summary.get("seconds"),
                      purged=summary.get("purged"))
        return summary

    def _metrics(self, **run: Any) -> None:
        metrics.emit(metrics.run_document(self.settings.metrics, **run), self.emit)

    def run_status(self, run_id: int) -> dict[str, Any]:
        found = self.store.get_run(run_id)
        if found is None:
            raise RunNotFound(f"there is no run {run_id}", run_id=run_id)
        return found

    def runs(self, *, limit: int, status: str | None = None, before: int | None = None) -> dict[str, Any]:
        """A page of run records, newest first; ``next_before`` continues it (None: no more)."""
        found = self.store.list_runs(limit=limit + 1, status=status, before=before)
        page = found[:limit]
        return {"runs": page, "next_before": page[-1]["run_id"] if len(found) > limit else None}

    def rejects(self, run_id: int, *, limit: int, after: int = 0) -> dict[str, Any]:
        """A page of a run's rejects in stored order; ``next_after`` continues it (None: no more)."""
        self.run_status(run_id)  # RunNotFound
        found = self.store.rejects(run_id, limit=limit + 1, after=after, max_chars=REPORTED_CHARS)
        page = found[:limit]
        return {"run_id": run_id, "rejects": page, "next_after": page[-1]["seq"] if len(found) > limit else None}

    def changes(self, run_id: int, *, limit: int, after: int = 0) -> dict[str, Any]:
        """A page of the users a run added, changed or removed, by user id, with their features before and
        after it; ``next_after`` continues it (None: no more).  HistoryPurged where the history no longer
        holds the run's versions."""
        self._kept(run_id)
        found = self.store.changes(run_id, limit=limit + 1, after=after)
        page = found[:limit]
        return {"run_id": run_id, "changes": page, "next_after": page[-1]["user_id"] if len(found) > limit else None}

    def as_of(self, run_id: int, *, limit: int, after: int = 0) -> dict[str, Any]:
        """A page of the features as they were when run ``run_id`` finished, by user id; ``next_after``
        continues it (None: no more).  HistoryPurged where the history no longer holds them."""
        self._kept(run_id)
        found = self.store.as_of(run_id, limit=limit + 1, after=after)
        page = found[:limit]
        return {"run_id": run_id, "features": page, "next_after": page[-1]["user_id"] if len(found) > limit else None}

    def _kept(self, run_id: int) -> dict[str, Any]:
        """The run's record, if it finished and the history still holds the features as it left them:
        else RunNotFound, or HistoryPurged."""
        record = self.run_status(run_id)
        if record.get("status") == RunStatus.RUNNING:  # what it changes, and the features as of it: not known yet
            raise RunInProgress(f"run {run_id} is still running: its features and changes are known once it "
                                "has finished; ask again then", running_run_id=run_id)
        kept_from = self.store.history_kept_from()
        if run_id < kept_from:
            raise HistoryPurged(f"the history no longer holds the features as of run {run_id}: it keeps them "
                                f"from run {kept_from} on (ETL_HISTORY_RETENTION_RUNS, ETL_HISTORY_RETENTION_DAYS, "
                                "or a run from before the history began)", run_id=run_id, kept_from=kept_from)
        return record

    def health(self) -> dict[str, Any]:
        """The database answers, and the last run that confirmed the features and its age; past
        ``health_max_age`` seconds (when set), FeaturesStale."""
        found = self.store.health()
        last = self.store.last_confirmed()
        limit = self.settings.health_max_age
        if limit is not None and (last is None or last["age_seconds"] > limit):
            what = ("no run has confirmed the features yet" if last is None else
                    f"the last run that confirmed the features (run {last['run_id']}) finished "
                    f"{last['age_seconds']:.0f} s ago")
            raise FeaturesStale(f"{what}; at most {limit:g} s are allowed (ETL_HEALTH_MAX_AGE_SECONDS)",
                                last_confirmed=last, max_age_seconds=limit)
        return {**found, "last_confirmed": last, "max_age_seconds": limit}

    def migrate(self, *, apply: bool = True) -> dict[str, Any]:
        """Bring the database's schema to this release's version now (what a run would do first); with
        ``apply=False`` only say which steps are pending."""
        return self.store.migrate(apply=apply)

    def check(self) -> dict[str, Any]:
        """What a run would need, checked without running: the database answers (and its schema is one this
        release can use), and the data location holds the three files.  Each check's outcome; ``ok`` when
        all passed.  What an operator runs before starting the function (``python -m etl_core check``)."""
        checks = []
        try:
            health = self.store.health()
            schema = self.store.migrate(apply=False)
            pending = [step["version"] for step in schema["pending"]]
            checks.append({"check": "database", "ok": True, "detail": f"{health['database']} answers "
                           f"(PostgreSQL {health['server_version']}); schema version {schema['version']}"
                           + (f", steps {pending} to apply on the first run" if pending else "")})
        except EtlError as exc:
            checks.append({"check": "database", "ok": False, "code": exc.code, "detail": exc.message})
        else:
            try:
                lacking = self.store.missing_grants()
                needed = any(need for _, need in lacking)
                named = "; ".join(what for what, _ in lacking)
                checks.append({"check": "privileges", "ok": not needed, **({"code": "bad_config"} if needed else {}),
                               "detail": f"the role lacks {named} (docs/security.md)" if lacking
                               else "the role has every privilege a run needs"})
            except EtlError as exc:
                checks.append({"check": "privileges", "ok": False, "code": exc.code, "detail": exc.message})
        try:
            location = resolve_location(self.settings, None)
            try:
                location.check()
            except ConfigError as exc:  # the operator's own command: the path helps
                exc.message = f"{location.where}: {exc.message}"
                raise
            missing = [name for name, found in describe(Pinned(location.source)).items() if found is None]
            checks.append({"check": "data", "ok": not missing, "detail": location.where + (
                f": missing {', '.join(missing)}" if missing else ": the three files are there")})
        except EtlError as exc:
            checks.append({"check": "data", "ok": False, "code": exc.code, "detail": exc.message})
        return {"ok": all(c["ok"] for c in checks), "checks": checks}

    def plan_shards(self, batch: Any, shards: Any) -> dict[str, Any]:
        """The sharded path's first step (docs/scale.md): the schema brought to this release (the staging
        tables), then one count-shard event per line-aligned byte range of the experiments file."""
        from etl_core import shards as sharded

        self.store.migrate(apply=True)
        planned = sharded.plan(self.settings, batch, shards)
        sharded.forget(self.settings, planned["batch"])  # what an earlier plan of this name left: not this batch's
        return planned

    def count_shard(self, event: dict[str, Any]) -> dict[str, Any]:
        """One Map item: a shard counted into the staging table."""
        from etl_core import shards as sharded

        return sharded.count(self.settings, event)

    def reduce_shards(self, batch: Any, *, force: bool = False) -> dict[str, Any]:
        """The last step: a run that sums the batch's shards in SQL and publishes them; metrics as a run's."""
        from etl_core import shards as sharded

        started = time.perf_counter()
        try:
            summary = sharded.reduce(self.settings, batch, force=force, store=self.store)
        except (BadRequest, RunInProgress):
            raise
        except Exception as exc:
            error = exc if isinstance(exc, EtlError) else InternalError.of(exc)
            self._metrics(status="failed", run_id=error.details.get("run_id"), files=error.details.get("files"),
                          seconds={"total": round(time.perf_counter() - started, 3)}, error_code=error.code)
            raise
        self._metrics(status=summary["status"], run_id=summary.get("run_id"), files=summary.get("files"),
                      users_written=summary.get("users_written"), seconds=summary.get("seconds"))
        return summary

    def close(self) -> None:
        self.store.close()


def start(settings: Settings) -> Service:
    """The process's one service, and the process set up for runs (once, at the edge, never inside a
    run): Arrow's allocator as the settings name it, before the first buffer is made; then, with the
    modules a run needs imported, what is alive is left out of the collector's walks
    (``etl_core.memory``)."""
    memory.use(settings.memory_pool)
    service = Service(settings)
    memory.settle()
    return service
