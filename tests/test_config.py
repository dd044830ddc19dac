"""Settings from a mapping: libpq URIs (TCP and Unix socket), PG* variables, and clear errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from etl_core.config import REPO_DATA_DIR, Settings, db_settings
from etl_core.errors import ConfigError
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert (settings.db.host, settings.db.port, settings.db.user, settings.db.database) == (
        "127.0.0.1", 5432, "postgres", "postgres")
    assert settings.db.password is None
    assert settings.data_dir == REPO_DATA_DIR
    assert settings.data_root == REPO_DATA_DIR
    assert (settings.schema, settings.policy) == ("public", "strict")
    assert (settings.min_share, settings.max_rejected_share) == (0.5, None)


def test_a_tcp_url() -> None:
    db = db_settings({"DATABASE_URL": "postgresql://etl:p%40ss@db.example:6543/lab?connect_timeout=2"})
    assert (db.user, db.password, db.host, db.port, db.database) == ("etl", "p@ss", "db.example", 6543, "lab")
    assert db.unix_sock is None
    assert db.connect_timeout == 2.0


def test_a_unix_socket_url_in_libpq_form() -> None:
    db = db_settings({"DATABASE_URL": "postgresql://postgres@/test?host=/var/run/postgresql"})
    assert db.unix_sock == "/var/run/postgresql/.s.PGSQL.5432"
    assert db.database == "test"


def test_pg_variables_when_there_is_no_url() -> None:
    db = db_settings({"PGHOST": "/run/pg", "PGPORT": "5544", "PGUSER": "u", "PGDATABASE": "d", "PGPASSWORD": "x"})
    assert (db.unix_sock, db.user, db.database, db.password) == ("/run/pg/.s.PGSQL.5544", "u", "d", "x")


def test_the_password_never_shows() -> None:
    db = db_settings({"DATABASE_URL": "postgresql://etl:s3cret@db:5432/lab"})
    assert "s3cret" not in db.describe() and "s3cret" not in repr(db)


@pytest.mark.parametrize(("env", "message"), [
    ({"DATABASE_URL": "mysql://x@y/z"}, "postgresql://"),
    ({"DATABASE_URL": "postgresql://x@y:port/z"}, "port"),
    ({"ETL_POLICY": "lenient"}, "strict, quarantine"),
    ({"DB_CONNECT_ATTEMPTS": "0"}, "at least 1"),
    ({"DB_CONNECT_TIMEOUT": "soon"}, "must be a number"),
    ({"ETL_BLOCK_SIZE": "12x"}, "must be an integer"),
    ({"ETL_GUARD_MIN_SHARE": "1.5"}, "ETL_GUARD_MIN_SHARE must be between 0 and 1"),
    ({"ETL_GUARD_MAX_REJECTED_SHARE": "a tenth"}, "must be a number between 0 and 1"),
])
def test_bad_settings_say_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_paths_are_resolved(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATA_DIR": str(tmp_path / "a" / ".." / "b"), "DATA_ROOT": str(tmp_path)})
    assert settings.data_dir == tmp_path / "b"
    assert settings.data_root == tmp_path


def test_tls_settings_from_the_url_query(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA bundle\n")  # only its existence is checked here; the TLS tests load real ones
    db = db_settings({"DATABASE_URL": f"postgresql://etl@db.example/lab?sslmode=verify-full&sslrootcert={ca}"})
    assert (db.sslmode, db.sslrootcert) == ("verify-full", str(ca))


def test_tls_settings_from_pg_variables_without_a_url(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("a CA bundle\n")
    db = db_settings({"PGHOST": "db.example", "PGSSLMODE": "verify-ca", "PGSSLROOTCERT": str(tmp_path / "ca.pem")})
    assert (db.sslmode, db.sslrootcert) == ("verify-ca", str(tmp_path / "ca.pem"))


def test_the_url_wins_and_pg_variables_fill_what_it_lacks(tmp_path: Path) -> None:
    """As in libpq: a connection string's parameter wins over the PG* variable, which fills a gap."""
    (tmp_path / "ca.pem").write_text("a CA bundle\n")
    env = {"PGSSLMODE": "disable", "PGSSLROOTCERT": str(tmp_path / "ca.pem")}
    assert db_settings({**env, "DATABASE_URL": "postgresql://etl@db/lab?sslmode=require"}).sslmode == "require"
    from_env = db_settings({**env, "DATABASE_URL": "postgresql://etl@db/lab"})
    assert (from_env.sslmode, from_env.sslrootcert) == ("disable", str(tmp_path / "ca.pem"))


def test_tls_defaults_are_libpqs() -> None:
    """prefer by default; sslrootcert=system makes verify-full the default (libpq 16)."""
    assert (db_settings({}).sslmode, db_settings({}).sslrootcert) == ("prefer", None)
    assert db_settings({"DATABASE_URL": "postgresql://etl@db/lab"}).sslmode == "prefer"
    system = db_settings({"DATABASE_URL": "postgresql://etl@db/lab?sslrootcert=system"})
    assert (system.sslmode, system.sslrootcert) == ("verify-full", "system")


@pytest.mark.parametrize(("env", "message"), [
    ({"PGSSLMODE": "allow"}, "PGSSLMODE must be one of disable, prefer, require, verify-ca, verify-full, not 'allow'"),
    ({"DATABASE_URL": "postgresql://etl@db/lab?sslmode=verify_full"},
     "DATABASE_URL's sslmode must be one of disable, prefer, require, verify-ca, verify-full, not 'verify_full'"),
    ({"PGSSLMODE": "require", "PGSSLROOTCERT": "system"}, "PGSSLROOTCERT=system needs sslmode=verify-full"),
    ({"PGSSLROOTCERT": "/nowhere/rds-ca.pem"}, "PGSSLROOTCERT names no file: /nowhere/rds-ca.pem"),
    ({"DATABASE_URL": "postgresql://etl@db/lab?sslmode=verify-full&sslrootcert=/nowhere/ca.pem"},
     "DATABASE_URL's sslrootcert names no file: /nowhere/ca.pem"),
])
def test_bad_tls_settings_say_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_arrow_allocator_is_jemalloc_unless_named() -> None:
    assert Settings.from_env({}).memory_pool == "jemalloc"
    assert Settings.from_env({"ARROW_DEFAULT_MEMORY_POOL": ""}).memory_pool == "jemalloc"
    assert Settings.from_env({"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}).memory_pool == "mimalloc"
    with pytest.raises(ConfigError, match="ARROW_DEFAULT_MEMORY_POOL must be one of jemalloc, mimalloc, system, "
                                          "not 'tcmalloc'"):
        Settings.from_env({"ARROW_DEFAULT_MEMORY_POOL": "tcmalloc"})


# --- the settings' reference: every variable the code reads is documented, and nothing else -------------

class _Recording(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


def test_the_reference_documents_every_variable_the_settings_read_and_no_other() -> None:
    from etl_core import settings_reference

    asked: set[str] = set()
    for env in ({}, {"DATABASE_URL": "postgresql://u@h/d"}, {"DATA_URL": "s3://b/p/", "ETL_METRICS_DIMENSIONS": "A=b"},
                {"DB_SECRET_ID": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"}):
        recording = _Recording(env)
        Settings.from_env(recording)
        asked |= recording.asked
    assert asked == settings_reference.names()


def test_docs_configuration_is_the_reference() -> None:
    from etl_core import settings_reference

    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == settings_reference.markdown(), (
        "docs/configuration.md is made by: python -m etl_core settings > docs/configuration.md")
