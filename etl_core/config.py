"""Settings, read once at the edge from a mapping (``os.environ`` in production, a dict in tests).

Nothing below this module reads the environment.  Secrets have no defaults and never appear in
``describe()`` or in any error message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from etl_core.errors import ConfigError, shorten

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
POLICIES = ("strict", "quarantine")
MAX_DIMENSIONS = 9  # dimensions in one set, as the embedded metric format's schema allows
SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")  # libpq's, without "allow"
MAX_RETENTION_DAYS = 36_500
MEMORY_POOLS = ("jemalloc", "mimalloc", "system")  # Arrow's allocators, the default first (etl_core.memory)


@dataclasses.dataclass(frozen=True)
class DbSettings:
    """Where and how to connect; ``unix_sock`` wins over host/port when set (and then no TLS is asked
    for, as libpq ignores sslmode for Unix-domain sockets).

    ``sslmode`` is one of ``SSLMODES``; ``sslrootcert`` is the CA file that verifies the server's
    certificate, ``"system"`` for the system's CA store, or None (verify-*: the system store).
    """

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    database: str = "postgres"
    password: str | None = dataclasses.field(default=None, repr=False)
    unix_sock: str | None = None
    connect_timeout: float = 5.0
    connect_attempts: int = 3
    retry_delay: float = 0.5
    statement_timeout_ms: int = 600_000
    lock_timeout_ms: int = 5_000
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    secret: SecretSettings | None = None  # DB_SECRET_ID: the password (and more) from Secrets Manager

    def describe(self) -> str:
        """Where we connect, without the password."""
        where = self.unix_sock or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.database}"

    def with_login(self, *, password: str, user: str | None = None, host: str | None = None,
                   port: int | None = None, database: str | None = None) -> DbSettings:
        """These settings with a secret's parts in place of their own (None: keep ours); a host
        starting with '/' is a socket directory, as in a URL."""
        host = self.host if host is None else host
        port = self.port if port is None else port
        return dataclasses.replace(self, password=password, user=self.user if user is None else user, host=host,
                                   port=port, database=self.database if database is None else database,
                                   unix_sock=_socket_path(host, port))


@dataclasses.dataclass(frozen=True)
class SecretSettings:
    """Where the database's password is kept: a Secrets Manager secret (its ARN or name), read with the
    function's role (botocore's usual credential chain) in ``region``, at ``endpoint`` when set."""

    secret_id: str
    region: str | None = None
    endpoint: str | None = None  # http(s)://host:port of another Secrets Manager endpoint (tests)


@dataclasses.dataclass(frozen=True)
class RetentionSettings:
    """How long the ledger keeps rejected rows and runs, and whether a reject keeps the row it rejected.

    A purge deletes at most ``step_rows`` rows per statement and runs at most ``max_steps`` statements
    per table and run, so that a first purge of a large backlog is spread over several runs; for the
    history, at least enough statements to delete twice the versions the run itself ended
    (``history_steps``), so that runs which end many (every user changed) never outgrow the purge."""

    rejects_days: int = 30
    runs_days: int = 365
    keep_raw: bool = True
    history_days: int = 365  # the features as of runs that finished this long ago stay answerable
    history_runs: int | None = None  # ... and as of at most this many of the last runs that published
    step_rows: int = 5_000
    max_steps: int = 20

    def history_steps(self, ended: int) -> int:
        """The history's statements a run that ended ``ended`` versions may run: ``max_steps``, or enough
        for twice its own versions (a reload where every user changed ends as many versions as the table
        has rows; with a fixed bound of ``max_steps * step_rows`` the history would grow past its
        retention by the difference each run, and a backlog left by earlier runs shrinks by at least
        the run's own versions)."""
        return max(self.max_steps, -(-2 * max(ended, 0) // self.step_rows))


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """Where the metrics go: a CloudWatch namespace (None: no metrics) and one set of dimensions."""

    namespace: str | None = "ExperimentEtl"
    dimensions: tuple[tuple[str, str], ...] = (("Service", "experiment-etl"),)


@dataclasses.dataclass(frozen=True)
class Settings:
    db: DbSettings
    data_dir: Path
    data_root: Path
    schema: str = "public"
    policy: str = "strict"
    max_reported: int = 20
    block_size: int = 1 << 20
    min_share: float = 0.5
    max_rejected_share: float | None = None
    metrics: MetricsSettings = MetricsSettings()
    health_max_age: float | None = None  # seconds; None: /health does not judge the features' age
    data_url: str | None = None  # s3://bucket/prefix/ when the data is in S3; None: data_dir
    s3_endpoint: str | None = None  # http(s)://host:port of an S3 endpoint other than AWS's
    s3_region: str | None = None
    memory_pool: str = MEMORY_POOLS[0]  # Arrow's allocator (etl_core.memory); ARROW_DEFAULT_MEMORY_POOL
    retention: RetentionSettings = RetentionSettings()
    # MiB the run may use (etl_core.capacity): ETL_MEMORY_LIMIT_MB, else Lambda's function size; 0/None: no watch
    memory_limit_mb: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        data_url = env.get("DATA_URL") or None
        if data_url is not None and data_url.startswith("s3://"):
            data_url = _s3_url(data_url)
            data_dir = REPO_DATA_DIR
        else:
            data_dir = Path(data_url or env.get("DATA_DIR") or REPO_DATA_DIR).resolve()
            data_url = None
        data_root = Path(env.get("DATA_ROOT") or data_dir).resolve()
        endpoint = env.get("DATA_S3_ENDPOINT") or None
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"DATA_S3_ENDPOINT must be an http:// or https:// URL, not {endpoint!r}")
        policy = env.get("ETL_POLICY", "strict")
        if policy not in POLICIES:
            raise ConfigError(f"ETL_POLICY must be one of {', '.join(POLICIES)}, not {policy!r}")
        pool = env.get("ARROW_DEFAULT_MEMORY_POOL") or MEMORY_POOLS[0]
        if pool not in MEMORY_POOLS:
            raise ConfigError(f"ARROW_DEFAULT_MEMORY_POOL must be one of {', '.join(MEMORY_POOLS)}, not {pool!r}")
        return cls(
            db=db_settings(env),
            data_dir=data_dir,
            data_root=data_root,
            schema=env.get("DB_SCHEMA", "public"),
            policy=policy,
            max_reported=_int(env, "ETL_MAX_REPORTED_VIOLATIONS", 20, minimum=1),
            block_size=_int(env, "ETL_BLOCK_SIZE", 1 << 20, minimum=1 << 16),
            min_share=_share(env, "ETL_GUARD_MIN_SHARE", 0.5) or 0.0,
            max_rejected_share=_share(env, "ETL_GUARD_MAX_REJECTED_SHARE", None),
            metrics=metrics_settings(env),
            health_max_age=_seconds(env, "ETL_HEALTH_MAX_AGE_SECONDS"),
            data_url=data_url,
            s3_endpoint=endpoint,
            s3_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            memory_pool=pool,
            retention=retention_settings(env),
            memory_limit_mb=_int(env, "ETL_MEMORY_LIMIT_MB", _int(env, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 0, minimum=0),
                                 minimum=0) or None,
        )


def _s3_url(url: str) -> str:
    """``s3://bucket/prefix/`` with one trailing slash (the prefix may be empty)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket or "/" in bucket or ".." in prefix.split("/"):
        raise ConfigError(f"DATA_URL must be s3://bucket/prefix/ or a local directory, not {url!r}")
    prefix = prefix.strip("/")
    return f"s3://{bucket}/{prefix + '/' if prefix else ''}"


def metrics_settings(env: Mapping[str, str]) -> MetricsSettings:
    """ETL_METRICS_NAMESPACE (empty: no metrics) and ETL_METRICS_DIMENSIONS (``Name=value,...``)."""
    namespace = env.get("ETL_METRICS_NAMESPACE", MetricsSettings.namespace) or None
    if namespace is not None and len(namespace) > 255:
        raise ConfigError("ETL_METRICS_NAMESPACE must have at most 255 characters")
    raw = env.get("ETL_METRICS_DIMENSIONS")
    if raw is None:
        return MetricsSettings(namespace=namespace or None)
    dimensions = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not name or not value or len(name) > 255 or len(value) > 1024:
            raise ConfigError(f"ETL_METRICS_DIMENSIONS must be Name=value pairs separated by commas, not {item!r}")
        dimensions.append((name, value))
    names = [name for name, _ in dimensions]
    if len(set(names)) != len(names) or len(names) > MAX_DIMENSIONS:
        raise ConfigError(f"ETL_METRICS_DIMENSIONS must name at most {MAX_DIMENSIONS} dimensions, each once")
    return MetricsSettings(namespace=namespace or None, dimensions=tuple(dimensions))


def retention_settings(env: Mapping[str, str]) -> RetentionSettings:
    """ETL_REJECTS_RETENTION_DAYS, ETL_RUNS_RETENTION_DAYS, ETL_HISTORY_RETENTION_DAYS (whole days, at least
    1), ETL_HISTORY_RETENTION_RUNS (at least 1; unset: no bound by runs) and ETL_REJECTS_KEEP_RAW."""
    keep = env.get("ETL_REJECTS_KEEP_RAW") or "true"
    if keep.lower() not in ("true", "false"):
        raise ConfigError(f"ETL_REJECTS_KEEP_RAW must be true or false, not {keep!r}")
    days = {}
    for name, default in (("ETL_REJECTS_RETENTION_DAYS", RetentionSettings.rejects_days),
                          ("ETL_RUNS_RETENTION_DAYS", RetentionSettings.runs_days),
                          ("ETL_HISTORY_RETENTION_DAYS", RetentionSettings.history_days)):
        days[name] = _int(env, name, default, minimum=1)
        if days[name] > MAX_RETENTION_DAYS:  # PostgreSQL's timestamps end in 294276 AD; ours much sooner
            raise ConfigError(f"{name} must be at most {MAX_RETENTION_DAYS} (100 years), not {days[name]}")
    runs = _int(env, "ETL_HISTORY_RETENTION_RUNS", 0, minimum=1) or None
    return RetentionSettings(rejects_days=days["ETL_REJECTS_RETENTION_DAYS"],
                             runs_days=days["ETL_RUNS_RETENTION_DAYS"], keep_raw=keep.lower() == "true",
                             history_days=days["ETL_HISTORY_RETENTION_DAYS"], history_runs=runs)


def secret_settings(env: Mapping[str, str]) -> SecretSettings | None:
    """DB_SECRET_ID (an ARN or a name; unset or empty: no secret) and DB_SECRET_ENDPOINT.  An ARN names
    its region; a name is looked up in AWS_REGION (or AWS_DEFAULT_REGION)."""
    secret_id = (env.get("DB_SECRET_ID") or "").strip()
    if not secret_id:
        return None
    endpoint = env.get("DB_SECRET_ENDPOINT") or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"DB_SECRET_ENDPOINT must be an http:// or https:// URL, not {endpoint!r}")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
    if secret_id.startswith("arn:"):
        parts = secret_id.split(":", 6)
        if len(parts) < 7 or parts[2] != "secretsmanager" or not parts[3] or parts[5] != "secret":
            raise ConfigError("DB_SECRET_ID must be a secret's name or its ARN "
                              "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME), not "
                              f"{shorten(secret_id, 200)!r}")
        region = parts[3]
    elif region is None:
        raise ConfigError("DB_SECRET_ID names a secret without its region: give its ARN, or set AWS_REGION")
    return SecretSettings(secret_id=secret_id, region=region, endpoint=endpoint)


def db_settings(env: Mapping[str, str]) -> DbSettings:
    """DATABASE_URL (libpq URI) if set, else the libpq ``PG*`` variables, else local defaults."""
    timing: dict[str, Any] = {
        "connect_timeout": _float(env, "DB_CONNECT_TIMEOUT", 5.0),
        "connect_attempts": _int(env, "DB_CONNECT_ATTEMPTS", 3, minimum=1),
        "statement_timeout_ms": _int(env, "DB_STATEMENT_TIMEOUT_MS", 600_000, minimum=0),
        "lock_timeout_ms": _int(env, "DB_LOCK_TIMEOUT_MS", 5_000, minimum=0),
        "secret": secret_settings(env),
    }
    url = env.get("DATABASE_URL")
    if url:
        return _from_url(url, env, **timing)
    host = env.get("PGHOST", "127.0.0.1")
    port = _int(env, "PGPORT", 5432, minimum=1)
    return DbSettings(
        host=host,
        port=port,
        user=env.get("PGUSER", "postgres"),
        database=env.get("PGDATABASE", "postgres"),
        password=env.get("PGPASSWORD"),
        unix_sock=_socket_path(host, port),
        **_tls({}, env),
        **timing,
    )


def _from_url(url: str, env: Mapping[str, str], **timing: Any) -> DbSettings:
    """The URI's parts and query parameters; the password, sslmode and sslrootcert fall back to the
    PG* variables when the URI has none, as in libpq."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError("DATABASE_URL must start with postgresql:// (the libpq URI form)")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    try:
        port = int(query.get("port") or parts.port or 5432)
    except ValueError as exc:  # parts.port raises for a non-numeric port
        raise ConfigError("DATABASE_URL has a port that is not a number") from exc
    host = query.get("host") or unquote(parts.hostname or "") or "127.0.0.1"
    if "connect_timeout" in query:
        timing["connect_timeout"] = _float(query, "connect_timeout", 5.0)
    return DbSettings(
        host=host,
        port=port,
        user=unquote(parts.username or "") or query.get("user") or "postgres",
        database=unquote(parts.path.lstrip("/")) or query.get("dbname") or "postgres",
        password=unquote(parts.password) if parts.password else env.get("PGPASSWORD"),
        unix_sock=_socket_path(host, port),
        **_tls(query, env),
        **timing,
    )


def _tls(query: Mapping[str, str], env: Mapping[str, str]) -> dict[str, Any]:
    """sslmode and sslrootcert from DATABASE_URL's query, else PGSSLMODE and PGSSLROOTCERT.

    As in libpq (16 and later), ``sslrootcert=system`` makes verify-full the default and refuses a
    weaker mode: a public CA signs certificates for any host name its customers own, so only the
    host name check makes the system store mean something.  The CA file must exist now, not at the
    first connect."""
    mode_from = "DATABASE_URL's sslmode" if query.get("sslmode") else "PGSSLMODE"
    mode = query.get("sslmode") or env.get("PGSSLMODE") or None
    root_from = "DATABASE_URL's sslrootcert" if query.get("sslrootcert") else "PGSSLROOTCERT"
    root = query.get("sslrootcert") or env.get("PGSSLROOTCERT") or None
    if mode is None:
        mode = "verify-full" if root == "system" else "prefer"
    if mode not in SSLMODES:
        raise ConfigError(f"{mode_from} must be one of {', '.join(SSLMODES)}, not {mode!r}")
    if root == "system" and mode != "verify-full":
        raise ConfigError(f"{root_from}=system needs sslmode=verify-full (as in libpq), not {mode}")
    if root is not None and root != "system" and not Path(root).is_file():
        raise ConfigError(f"{root_from} names no file: {root}")
    return {"sslmode": mode, "sslrootcert": root}


def _socket_path(host: str, port: int) -> str | None:
    """libpq's convention: a host starting with '/' is the directory holding the server's socket."""
    return f"{host.rstrip('/')}/.s.PGSQL.{port}" if host.startswith("/") else None


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float], *, what: str, bound: str,
            accept: Callable[[float], bool]) -> Any:
    """``name``'s value as ``kind``, or None when unset or empty; ConfigError says ``what`` it must be,
    or within which ``bound``."""
    raw = env.get(name)
    if raw in (None, ""):
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {what}, not {raw!r}") from None
    if not accept(value):
        raise ConfigError(f"{name} must be {bound}, not {raw}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    value = _number(env, name, int, what="an integer", bound=f"at least {minimum}",
                    accept=lambda v: v >= minimum)
    return default if value is None else int(value)


def _share(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """A share between 0 and 1 (0 turns a 'least share' check off; 1 a 'largest share' check)."""
    value = _number(env, name, float, what="a number between 0 and 1", bound="between 0 and 1",
                    accept=lambda v: 0 <= v <= 1)
    return default if value is None else float(value)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _seconds(env, name)
    return default if value is None else value


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    """A positive, finite number, or None when unset or empty."""
    value = _number(env, name, float, what="a number", bound="positive", accept=lambda v: 0 < v < float("inf"))
    return None if value is None else float(value)
