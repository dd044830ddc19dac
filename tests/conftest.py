"""Shared fixtures: a real PostgreSQL server, one fresh schema per test, settings built from a dict.

The server is, in order: TEST_DATABASE_URL if set; the local server on 127.0.0.1:5432 (database
``test``, as on the project's machines); or a throwaway cluster started here with initdb/pg_ctl in a
temporary directory, so a machine without a running server passes too.  Nothing is ever skipped for
want of a database.  Under CI=true any skipped test fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from glob import glob
from pathlib import Path

import pytest

from etl_core.config import Settings, db_settings
from etl_core.store.db import close_quietly, connect
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DATA = ROOT / "tests" / "data" / "challenge"  # the challenge's CSV files, byte for byte (CRLF)
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _reachable(url: str) -> bool:
    try:
        conn = connect(db_settings({"DATABASE_URL": url, "DB_CONNECT_ATTEMPTS": "1", "DB_CONNECT_TIMEOUT": "2"}))
    except Exception:  # noqa: BLE001 - any failure: try the next option
        return False
    close_quietly(conn)
    return True


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"no PostgreSQL server reachable and no {name} to start one (install postgresql)")
    return found


class _Throwaway:
    """A private PostgreSQL cluster in a temporary directory (as the postgres user when we are root).
    With a ``password``, TCP logins need one (``scram-sha-256``), and the superuser's is that password:
    a wrong password really fails, unlike on a trust server."""

    def __init__(self, password: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="etl-pg-"))
        self.port = free_port()
        self.password = password
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def start(self, *options: str) -> str:
        """Start the cluster; ``options`` are more server settings, ``name=value`` (no spaces)."""
        data = self.dir / "data"
        auth = ["-A", "trust"]
        if self.password is not None:
            pwfile = self.dir / "pw"
            pwfile.write_text(self.password + "\n")
            if self.prefix:
                shutil.chown(pwfile, "postgres")
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        subprocess.run([*self.prefix, _pg_bin("initdb"), "-D", str(data), *auth, "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True)
        more = "".join(f" -c {option}" for option in options)
        subprocess.run([*self.prefix, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w",
                        "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off{more}",
                        "start"], check=True, capture_output=True)
        login = "postgres" if self.password is None else f"postgres:{self.password}"
        url = f"postgresql://{login}@127.0.0.1:{self.port}/postgres"
        conn = connect(db_settings({"DATABASE_URL": url}))
        conn.run("CREATE DATABASE test")
        close_quietly(conn)
        return f"postgresql://{login}@127.0.0.1:{self.port}/test"

    def stop(self) -> None:
        subprocess.run([*self.prefix, _pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def throwaway_server(*, password: str | None = None) -> Iterator[str]:
    """A throwaway cluster's URL (database ``test``) for the block; the cluster is gone after it.  With
    a ``password``: TCP logins are checked (scram-sha-256), the URL carries the superuser's."""
    server = _Throwaway(password)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A URL of a reachable PostgreSQL database that tests may create schemas in."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        if not _reachable(url):
            raise RuntimeError(f"TEST_DATABASE_URL is set but the server does not answer: {url}")
        yield url
        return
    if _reachable(LOCAL_URL):
        yield LOCAL_URL
        return
    with throwaway_server() as url:
        yield url


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    """A fresh schema name for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    conn = connect(db_settings({"DATABASE_URL": database_url}))
    try:
        conn.run(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        close_quietly(conn)


@pytest.fixture
def env(database_url: str, schema: str, tmp_path: Path) -> dict[str, str]:
    """The environment a deployment would give the function: our server, our schema, our data."""
    return {"DATABASE_URL": database_url, "DB_SCHEMA": schema, "DATA_DIR": str(ROOT / "data"),
            "DB_LOCK_TIMEOUT_MS": "2000"}


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
def db(database_url: str) -> Iterator[object]:
    """A plain connection for assertions."""
    conn = connect(db_settings({"DATABASE_URL": database_url}))
    try:
        yield conn
    finally:
        close_quietly(conn)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        if reporter:
            reporter.write_line(f"CI=true and {skipped} test(s) were skipped: in CI a skip is a failure", red=True)
        session.exitstatus = 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The quick tier promises no service: a unit test that asks for the database is a mistake."""
    for item in items:
        if item.get_closest_marker("unit") and "database_url" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses the database")
