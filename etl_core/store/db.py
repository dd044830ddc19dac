"""The PostgreSQL edge: connecting (bounded retries, timeouts) and translating pg8000's errors once.

pg8000 has no type hints, so the rest of the code talks to the small ``Connection`` protocol below.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from typing import Any, Protocol

from etl_core.config import DbSettings
from etl_core.errors import (
    ConfigError,
    DatabaseUnavailable,
    EtlError,
    ForeignKeyConflict,
    InternalError,
    LoadError,
    TransientLoadError,
)

# SQLSTATE classes and codes that may go away on their own: connection trouble, the server shutting
# down or starting, timeouts, lock trouble, serialization failures.
_TRANSIENT_PREFIXES = ("08", "53", "57P", "40")
_TRANSIENT_CODES = {"55P03", "57014"}  # lock_not_available, query_canceled (statement_timeout)
_FOREIGN_KEY_VIOLATION = "23503"
# pg8000 raises InterfaceError both for a lost or unreachable server (with these messages, or with the
# OSError as its cause) and for a call it cannot make (a missing parameter, no password to offer):
# only the first kind may go away on retry
_CONNECTION_LOST = ("network error", "communication error", "connection is closed", "Can't create a connection")


class Connection(Protocol):
    def run(self, sql: str, stream: Iterable[bytes | memoryview] | None = None, **params: Any) -> list[list[Any]]:
        ...

    def close(self) -> None: ...

    @property
    def row_count(self) -> int:
        """Rows the last statement affected (-1: not known)."""
        ...


def connect(settings: DbSettings, *, sleep: Any = time.sleep) -> Connection:
    """Open a connection, retrying transient failures ``connect_attempts`` times in all."""
    import pg8000.native  # lazily: not needed to answer an event that never touches the database

    last: Exception | None = None
    for attempt in range(settings.connect_attempts):
        if attempt:
            sleep(settings.retry_delay * 2 ** (attempt - 1))
        try:
            conn = pg8000.native.Connection(
                user=settings.user,
                password=settings.password,
                host=settings.host,
                port=settings.port,
                database=settings.database,
                unix_sock=settings.unix_sock,
                timeout=settings.connect_timeout,
                application_name="experiment-etl",
                startup_params={
                    "statement_timeout": str(settings.statement_timeout_ms),
                    "lock_timeout": str(settings.lock_timeout_ms),
                },
            )
            # the connect timeout also bounds every socket read; a long COPY or swap is bounded by
            # statement_timeout instead
            conn._usock.settimeout(None if not settings.statement_timeout_ms
                                   else settings.statement_timeout_ms / 1000 + settings.connect_timeout)
            if conn._usock.family in (socket.AF_INET, socket.AF_INET6):
                # pg8000 writes a COPY's last CopyData and its CopyDone separately: with Nagle's
                # algorithm the second waits for the server's delayed ACK, 40 ms on every COPY
                conn._usock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn
        except Exception as exc:
            err = translate(exc)
            if isinstance(err, InternalError) and _is_interface_error(exc):
                # the server asks for what our settings cannot give (a password, an auth method)
                raise ConfigError(f"cannot connect to PostgreSQL at {settings.describe()}: {exc}",
                                  database=settings.describe()) from exc
            if not isinstance(err, TransientLoadError):
                raise err from exc
            last = exc
    raise DatabaseUnavailable(
        f"cannot reach PostgreSQL at {settings.describe()} after {settings.connect_attempts} attempts: "
        f"{_reason(last)}",
        database=settings.describe(),
        attempts=settings.connect_attempts,
    ) from last


def is_alive(conn: Connection) -> bool:
    """True when the connection still answers (a frozen Lambda may have kept a dead one)."""
    try:
        conn.run("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means: replace it
        return False


def close_quietly(conn: Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # noqa: BLE001,S110 - the connection is being thrown away anyway
        pass


def sqlstate(exc: BaseException) -> str | None:
    """pg8000's DatabaseError carries the server's fields as a dict in ``args[0]``; 'C' is SQLSTATE."""
    if exc.args and isinstance(exc.args[0], dict):
        code = exc.args[0].get("C")
        return str(code) if code else None
    return None


def translate(exc: BaseException) -> EtlError:
    """Map a foreign exception from the database edge to our tree: the connection's failures are
    transient, the server's errors transient or not by SQLSTATE, anything else is a bug of ours."""
    if isinstance(exc, EtlError):
        return exc
    code = sqlstate(exc)
    if code is None and connection_lost(exc):
        return TransientLoadError(f"lost or could not open the database connection: {_reason(exc)}")
    if code is None:  # not the database's answer and not the connection's: a bug of ours
        return InternalError.of(exc)
    message = exc.args[0].get("M", "") if isinstance(exc.args[0], dict) else str(exc)
    if code.startswith(_TRANSIENT_PREFIXES) or code in _TRANSIENT_CODES:
        return TransientLoadError(f"database error {code}: {message}", sqlstate=code)
    if code == _FOREIGN_KEY_VIOLATION:
        detail = exc.args[0].get("D", "")
        return ForeignKeyConflict(f"another table's foreign key forbids the new rows; nothing was changed: "
                                  f"{message}. {detail}".rstrip(" ."), sqlstate=code)
    return LoadError(f"database error {code}: {message}", sqlstate=code)


def connection_lost(exc: BaseException) -> bool:
    """True for the failures of the connection itself: socket errors and timeouts (OSError, which
    pg8000 lets through when a read fails at once) and pg8000's InterfaceError for them."""
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError (socket.timeout) included
        return True
    return _is_interface_error(exc) and (isinstance(exc.__cause__, OSError)
                                         or str(exc).startswith(_CONNECTION_LOST))


def _is_interface_error(exc: BaseException) -> bool:
    from pg8000.exceptions import InterfaceError  # lazily, as in connect()

    return isinstance(exc, InterfaceError)


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    code = sqlstate(exc)
    if code is not None:
        return f"{code} {exc.args[0].get('M', '')}"
    return f"{type(exc).__name__}: {exc}"
