"""The PostgreSQL edge: connecting (bounded retries, timeouts, TLS as libpq's sslmode says) and
translating pg8000's errors once.

pg8000 has no type hints, so the rest of the code talks to the small ``Connection`` protocol below.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from etl_core.config import DbSettings
from etl_core.errors import (
    ConfigError,
    DatabaseUnavailable,
    EtlError,
    ForeignKeyConflict,
    InternalError,
    LoadError,
    SecretError,
    TransientLoadError,
)

if TYPE_CHECKING:
    import ssl

# SQLSTATE classes and codes that may go away on their own: connection trouble, the server shutting
# down or starting, timeouts, lock trouble, serialization failures.
_TRANSIENT_PREFIXES = ("08", "53", "57P", "40")
_TRANSIENT_CODES = {"55P03", "57014"}  # lock_not_available, query_canceled (statement_timeout)
_FOREIGN_KEY_VIOLATION = "23503"
_INSUFFICIENT_PRIVILEGE = "42501"
# pg8000 raises InterfaceError both for a lost or unreachable server (with these messages, or with the
# OSError as its cause) and for a call it cannot make (a missing parameter, no password to offer):
# only the first kind may go away on retry
_CONNECTION_LOST = ("network error", "communication error", "connection is closed", "Can't create a connection")
# what pg8000 raises when it asked for TLS with a context of ours and the server answered 'N'
_REFUSES_TLS = "Server refuses SSL"
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the certificate is good but
# does not name the host (a DNS name or an IP address) the connection was made to
_NAME_MISMATCH = (62, 64)


class Connection(Protocol):
    def run(self, sql: str, stream: Iterable[bytes | memoryview] | None = None, **params: Any) -> list[list[Any]]:
        ...

    def close(self) -> None: ...

    @property
    def row_count(self) -> int:
        """Rows the last statement affected (-1: not known)."""
        ...


# what the server answers a login our settings got wrong: the operator's mistake, named as such
_REFUSED_LOGIN = {
    "3D000": "the database it names does not exist: check the database in DATABASE_URL (or PGDATABASE)",
    "28000": "it refuses the role: check the user in DATABASE_URL (or PGUSER), that the role exists and may log "
             "in, and the server's pg_hba.conf",
    "28P01": "it refuses the password: check the password in DATABASE_URL (or PGPASSWORD, or the secret "
             "DB_SECRET_ID names)",
}


def connect(settings: DbSettings, *, sleep: Any = time.sleep) -> Connection:
    """Open a connection, retrying transient failures ``connect_attempts`` times in all.  With a secret
    (DB_SECRET_ID), with the login it holds: kept from its first read; when the server refuses it, the
    secret is read once more and, if it changed (a rotation), the connect is tried once more with it.
    A login the server refuses (no such database or role, a wrong password) is bad configuration."""
    try:
        return _login(settings, sleep)
    except LoadError as exc:
        code = exc.details.get("sqlstate")
        if code not in _REFUSED_LOGIN:
            raise
        raise ConfigError(f"PostgreSQL at {settings.describe()} refuses the connection: {_REFUSED_LOGIN[code]} "
                          f"({exc.message})", database=settings.describe(), sqlstate=code) from exc


def _login(settings: DbSettings, sleep: Any) -> Connection:
    if settings.secret is None:
        return _connect(settings, sleep)
    from etl_core.store import secret  # botocore: only when a secret is set

    kept = secret.login(settings)
    conn, refused = _try_login(kept.applied(settings), sleep, secret.AUTH_FAILED)
    if conn is not None:
        return conn
    assert refused is not None
    code = refused.details.get("sqlstate")
    fresh = secret.login(settings, refused=code)
    name = settings.secret.secret_id
    if fresh == kept:
        raise SecretError(f"PostgreSQL at {kept.applied(settings).describe()} refuses the login of the secret {name} "
                          f"({code}), and the secret has not changed since it was read: {refused.message}",
                          secret=name, sqlstate=code) from refused
    conn, again = _try_login(fresh.applied(settings), sleep, secret.AUTH_FAILED)
    if conn is not None:
        return conn
    assert again is not None
    code = again.details.get("sqlstate")
    raise SecretError(f"PostgreSQL at {fresh.applied(settings).describe()} refuses the login of the secret "
                      f"{name} ({code}), also as read again after a first refusal: {again.message}",
                      secret=name, sqlstate=code) from again


def _try_login(settings: DbSettings, sleep: Any,
               refusals: Any) -> tuple[Connection | None, LoadError | None]:
    """A connection, or the LoadError of a login the server refused with one of ``refusals`` (SQLSTATEs);
    any other failure is raised."""
    try:
        return _connect(settings, sleep), None
    except LoadError as exc:
        if exc.details.get("sqlstate") not in refusals:
            raise
        return None, exc


def describe(settings: DbSettings) -> str:
    """Where the job connects, without the password: with a secret, as its login (once read) says."""
    if settings.secret is None:
        return settings.describe()
    from etl_core.store import secret

    return secret.kept(settings).describe()


def _connect(settings: DbSettings, sleep: Any) -> Connection:
    tls = _tls_context(settings)
    last: Exception | None = None
    for attempt in range(settings.connect_attempts):
        if attempt:
            sleep(settings.retry_delay * 2 ** (attempt - 1))
        try:
            conn = _open(settings, tls)
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
            _raise_if_tls_failed(exc, settings)
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


def _open(settings: DbSettings, tls: ssl.SSLContext | bool) -> Any:
    """One connection attempt (pg8000's Connection); ``tls`` False: no SSLRequest at all; a context:
    TLS, or pg8000 raises InterfaceError when the server refuses it, and then sslmode=prefer asks
    once more without TLS (pg8000 has closed the first socket)."""
    try:
        return _pg8000_connection(settings, tls)
    except Exception as exc:
        if tls is False or settings.sslmode != "prefer" or not _refuses_tls(exc):
            raise
    return _pg8000_connection(settings, False)


def _pg8000_connection(settings: DbSettings, tls: ssl.SSLContext | bool) -> Any:
    import pg8000.native  # lazily: not needed to answer an event that never touches the database

    return pg8000.native.Connection(
        user=settings.user,
        password=settings.password,
        host=settings.host,
        port=settings.port,
        database=settings.database,
        unix_sock=settings.unix_sock,
        timeout=settings.connect_timeout,
        ssl_context=tls,
        application_name="experiment-etl",
        startup_params={
            "statement_timeout": str(settings.statement_timeout_ms),
            "lock_timeout": str(settings.lock_timeout_ms),
        },
    )


def _tls_context(settings: DbSettings) -> ssl.SSLContext | bool:
    """What pg8000 gets as ``ssl_context``: False (no TLS asked for) over a Unix socket, as libpq
    ignores sslmode there, and for disable; otherwise a context of ours, since pg8000's default
    (None) loads the system's CA store on every connect (20-40 ms) only to verify nothing."""
    if settings.unix_sock is not None or settings.sslmode == "disable":
        return False
    # libpq: require with a CA file verifies the chain as verify-ca does; prefer never verifies
    # (it would fall back to plain text on a failed check, which protects nothing)
    verify = settings.sslmode.startswith("verify-") or (settings.sslmode == "require"
                                                       and settings.sslrootcert is not None)
    return _context(verify, settings.sslmode == "verify-full", settings.sslrootcert if verify else None)


@functools.lru_cache(maxsize=8)
def _context(verify: bool, check_hostname: bool, rootcert: str | None) -> ssl.SSLContext:
    """One context per kind in a process: loading a CA store costs milliseconds, a context is reusable."""
    import ssl  # lazily, as pg8000 is: importing this module costs no ssl import (15-20 ms)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.2 or later; loads no CA store by itself
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context.check_hostname = check_hostname  # pg8000 passes server_hostname=host
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        if rootcert is None or rootcert == "system":
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=rootcert)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: not a PEM file, no certificate in it
        raise ConfigError(f"sslrootcert {rootcert} holds no CA certificate that can be loaded: {exc}") from exc
    return context


def _refuses_tls(exc: BaseException) -> bool:
    return _is_interface_error(exc) and str(exc) == _REFUSES_TLS


def _raise_if_tls_failed(exc: BaseException, settings: DbSettings) -> None:
    """A server without TLS when TLS is required, or a certificate that fails verification, is bad
    config: trying again would meet the same server and the same certificate."""
    if _refuses_tls(exc):
        raise ConfigError(f"the server at {settings.describe()} does not accept TLS, but sslmode={settings.sslmode}",
                          database=settings.describe()) from exc
    import ssl  # pg8000 has imported it already (through scramp)

    # pg8000 (1.31) lets the handshake's error through as it is; look one level down too, should a
    # later version wrap it
    seen = next((candidate for candidate in (exc, exc.__cause__, exc.__context__)
                 if isinstance(candidate, ssl.SSLCertVerificationError)), None)
    if seen is not None:
        hint = ""
        if seen.verify_code in _NAME_MISMATCH:
            hint = f" (verify-full: the certificate must name the host connected to, {settings.host})"
        raise ConfigError(f"the server at {settings.describe()} failed TLS verification "
                          f"(sslmode={settings.sslmode}): {seen.verify_message or seen}{hint}",
                          database=settings.describe()) from exc


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
    if code == _INSUFFICIENT_PRIVILEGE:  # the role the operator configured lacks a grant: their setting
        return ConfigError(f"the database role lacks a privilege the job needs ({message}): docs/security.md "
                           "lists the grants of the job's role; python -m etl_core check tests them", sqlstate=code)
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
