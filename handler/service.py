"""What the API and the Lambda entry do, without knowing about HTTP: one instance per process.

It holds the settings (read once) and one database connection that warm invocations reuse; the
connection is checked before each use, since a frozen and thawed Lambda may hold a dead one.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from etl_core import db, load, pipeline
from etl_core.config import Settings
from etl_core.errors import InternalError, RunNotFound, TransientLoadError

RUN_IDS = range(-(2**63), 2**63)  # etl_runs.id is a bigint: any other number is no run (and 22003 if asked)


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: db.Connection | None = None
        self._busy = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[db.Connection]:
        """The cached connection, replaced if dead; a private one if another request is using it."""
        if not self._busy.acquire(blocking=False):
            conn = db.connect(self.settings.db)
            try:
                yield conn
            finally:
                db.close_quietly(conn)
            return
        try:
            if self._conn is None or not db.is_alive(self._conn):
                db.close_quietly(self._conn)
                self._conn = None
                self._conn = db.connect(self.settings.db)
            try:
                yield self._conn
            except TransientLoadError:
                db.close_quietly(self._conn)
                self._conn = None
                raise
        finally:
            self._busy.release()

    def close(self) -> None:
        """Close the cached connection (tests, embedders; a Lambda process just ends)."""
        with self._busy:
            db.close_quietly(self._conn)
            self._conn = None

    def trigger(self, trigger: pipeline.Trigger) -> dict[str, Any]:
        with self.connection() as conn:
            return pipeline.run(self.settings, trigger, conn=conn)

    def run_status(self, run_id: int) -> dict[str, Any]:
        if run_id not in RUN_IDS:
            raise RunNotFound("there is no such run: run ids are PostgreSQL bigints (at most 2^63 - 1)")
        with self.connection() as conn:
            found = load.get_run(conn, self.settings.schema, run_id)
        if found is None:
            raise RunNotFound(f"there is no run {run_id}", run_id=run_id)
        return found

    def health(self) -> dict[str, Any]:
        with self.connection() as conn:
            rows = conn.run("SHOW server_version")
        version = rows[0][0] if rows else None
        return {"status": "ok", "database": self.settings.db.describe(), "server_version": version}


def unexpected(exc: BaseException) -> InternalError:
    """What an error nobody expected becomes at the edge: an InternalError (``exc`` itself if it is
    one), its traceback, causes included, logged to the 'etl' logger as one JSON line."""
    error = exc if isinstance(exc, InternalError) else InternalError.of(exc)
    pipeline.log_event("internal_error", error=error.to_dict(), traceback="".join(traceback.format_exception(exc)))
    return error


_service: Service | None = None
_service_lock = threading.Lock()


def get_service() -> Service:
    """The process's service, built from the environment on first use (not at import)."""
    global _service
    with _service_lock:
        if _service is None:
            _service = Service(Settings.from_env(os.environ))
        return _service


def set_service(service: Service | None) -> None:
    """Tests and embedders install their own service (settings from a dict, another schema)."""
    global _service
    with _service_lock:
        _service = service
