"""Every setting the function reads, documented once: its variables, default and meaning, in groups.
``docs/configuration.md`` is made from this table (``python -m etl_core settings``), and
tests/test_config.py holds both to what ``etl_core.config`` actually reads.  Pure data."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Setting:
    names: tuple[str, ...]  # the environment variables, read together
    default: str
    meaning: str  # Markdown, links relative to docs/
    read_by: str = "the function"  # or the runtime (awslambdaric), which reads it itself


REFERENCE: tuple[tuple[str, tuple[Setting, ...]], ...] = (
    ('The database', (
        Setting(('DATABASE_URL',), '—',
                'libpq URI, e.g. `postgresql://etl:pw@db:5432/lab`; a Unix socket as '
                '`postgresql://postgres@/postgres?host=/var/run/postgresql`'),
        Setting(('PGHOST', 'PGPORT', 'PGUSER', 'PGPASSWORD', 'PGDATABASE'),
                '`127.0.0.1`, `5432`, `postgres`, none, `postgres`',
                'used when `DATABASE_URL` is not set (`PGPASSWORD` also fills a URL without password)'),
        Setting(('PGSSLMODE', 'PGSSLROOTCERT'), '`prefer`, none',
                'TLS to the database, used when `DATABASE_URL` has no `sslmode` / `sslrootcert` query parameter '
                '(`?sslmode=verify-full&sslrootcert=/var/task/rds-ca.pem`): `disable`, `prefer`, `require`, '
                '`verify-ca` or `verify-full`, and a CA file or `system`; see [TLS to the database](database.md)'),
        Setting(('DB_SECRET_ID',), 'none',
                "ARN or name of a Secrets Manager secret holding the database's password: RDS's JSON (`username`,"
                ' `password`, `host`, `port`, `dbname`: what it names replaces that part of '
                '`DATABASE_URL`/`PG*`), or the password alone (JSON with only `password`, or the plain string) '
                'beside a `DATABASE_URL` without one. Read on the first connect, kept, and read once more when '
                'the server refuses it (rotation); a name needs `AWS_REGION`. Unset or empty: no secret, and '
                'botocore is never imported; see '
                '[database.md](database.md#the-password-from-secrets-manager)'),
        Setting(('DB_SECRET_ENDPOINT',), "AWS's",
                "`http(s)://host:port` of another Secrets Manager endpoint, e.g. the tests' local one"),
        Setting(('DB_SCHEMA',), '`public`',
                'schema of `user_features`, `etl_runs`, `etl_rejects`, `etl_schema_migrations`'),
        Setting(('DB_CONNECT_TIMEOUT',), '`5`',
                'seconds per connection attempt'),
        Setting(('DB_CONNECT_ATTEMPTS',), '`3`',
                'attempts in all (0.5 s, 1 s, ... between them) before 503'),
        Setting(('DB_STATEMENT_TIMEOUT_MS',), '`600000`',
                'server-side limit per statement'),
        Setting(('DB_LOCK_TIMEOUT_MS',), '`5000`',
                'how long the load waits for a lock that blocks writers (`CREATE INDEX`, `LOCK ... IN SHARE '
                'MODE`) before giving up (503); plain readers never block it'),
    )),
    ('The data', (
        Setting(('DATA_URL',), '`DATA_DIR`',
                'where the three CSV files are: a local directory, or `s3://bucket/prefix/` (read with the '
                "function's role or the usual `AWS_*` credential variables; see [Reading from S3](s3.md))"),
        Setting(('DATA_DIR',), "the repo's `data/`; `/var/task/data` in the image",
                'the local directory, when `DATA_URL` is not set'),
        Setting(('DATA_ROOT',), '`DATA_DIR`',
                'triggers may name a `data` directory only below this root (S3: below `DATA_URL`)'),
        Setting(('DATA_S3_ENDPOINT',), "AWS's",
                '`http(s)://host:port` of another S3 endpoint, e.g. the local S3 server (pyarrow ignores '
                '`AWS_ENDPOINT_URL_S3`)'),
        Setting(('AWS_REGION', 'AWS_DEFAULT_REGION'), 'set by Lambda',
                "the bucket's region"),
    )),
    ('Runs', (
        Setting(('ETL_POLICY',), '`strict`',
                'default policy'),
        Setting(('ETL_MAX_REPORTED_VIOLATIONS',), '`20`',
                'violations listed in a response'),
        Setting(('ETL_GUARD_MIN_SHARE',), '`0.5`',
                "least share of the table's users and of its experiments a new load must hold (0 turns the check "
                'off)'),
        Setting(('ETL_GUARD_MAX_REJECTED_SHARE',), 'none',
                'largest share of rejected rows a quarantine run may have'),
        Setting(('ETL_BLOCK_SIZE',), '`1048576`',
                'bytes per CSV record batch: small batches keep both cores busy (reading and counting overlap)'),
        Setting(('ETL_MEMORY_LIMIT_MB',), "Lambda's `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`",
                "MiB a run may use, lowered to the memory cgroup's limit where that is lower (a container's "
                '`--memory`): a run estimated past it is refused before a row is read, and one whose memory '
                'passes 90% of it is stopped, both 507 `input_too_large` (`etl_core/capacity.py`, '
                '[scale.md](scale.md)); `0` turns both checks off'),
        Setting(('AWS_LAMBDA_FUNCTION_MEMORY_SIZE',), 'set by Lambda',
                'the function\'s memory size in MiB, the default of `ETL_MEMORY_LIMIT_MB`'),
        Setting(('ARROW_DEFAULT_MEMORY_POOL',), '`jemalloc`',
                "the allocator of Arrow's buffers: `jemalloc`, `mimalloc` (pyarrow's own default) or `system`. "
                'jemalloc because mimalloc asks for transparent huge pages, which the kernel zeroes 2 MiB at a '
                'time: with jemalloc M took 3% less time and 54 MB less memory, L 7% and 60 MB '
                '(`etl_core/memory.py`); a pyarrow without jemalloc keeps its default'),
    )),
    ('Personal data', (
        Setting(('ETL_REJECTS_RETENTION_DAYS',), '`30`',
                "days (1-36500) a run's rejected rows (`etl_rejects`, personal data) are kept after the run "
                'finished; purged by each run after it records its outcome, in bounded steps (see '
                '[operating.md](operating.md#retention))'),
        Setting(('ETL_RUNS_RETENTION_DAYS',), '`365`',
                "days (1-36500) a run's record (`etl_runs`) is kept; never the last run that loaded (`unchanged` "
                'compares with it), the last that confirmed the features, or a run whose rejects are still kept'),
        Setting(('ETL_REJECTS_KEEP_RAW',), '`true`',
                '`false`: rejects are stored, answered and recorded without `raw` and `value`, with `raw_sha256` '
                "(the row's SHA-256) instead, so duplicates still match without the personal data"),
    )),
    ('History', (
        Setting(('ETL_HISTORY_RETENTION_DAYS',), '`365`',
                'days (1-36500): the features as of a run that finished within them stay answerable '
                '(`/runs/{id}/features`, `/changes`, restore); the versions that ended before the oldest such '
                'run are purged from `user_features_history` in bounded steps (each run at least twice the '
                'versions it ended itself), and older runs are answered 410 `history_purged`'),
        Setting(('ETL_HISTORY_RETENTION_RUNS',), 'none',
                'at most this many of the last runs that published (loads and restores) stay answerable, '
                'whichever of the two bounds is tighter'),
    )),
    ('Operating', (
        Setting(('ETL_HEALTH_MAX_AGE_SECONDS',), 'none',
                '`GET /health` answers 503 `features_stale` when the last run that confirmed the features '
                '(succeeded, partial, unchanged, restored) finished longer ago than this many seconds, or none '
                'has; unset: never'),
        Setting(('ETL_METRICS_NAMESPACE',), '`ExperimentEtl`',
                'CloudWatch namespace of the [metrics](operating.md) each run prints; empty: no metrics are '
                'printed'),
        Setting(('ETL_METRICS_DIMENSIONS',), '`Service=experiment-etl`',
                "the metrics' one dimension set, `Name=value` pairs separated by commas (at most 9; empty: none)."
                " The template's alarm expects `Service=` its `MetricsService` parameter"),
        Setting(('AWS_LAMBDA_LOG_FORMAT', 'AWS_LAMBDA_LOG_LEVEL'), '`JSON` (the image, `build.sh --local`), none',
                'read by the runtime, awslambdaric: `JSON` makes every log line one JSON object with the request '
                "id; the level filters lines (set by the template's `LoggingConfig` in AWS)",
                read_by="the runtime (awslambdaric)"),
    )),
)


def names(*, read_by: str | None = "the function") -> set[str]:
    """Every variable the reference documents (read by the function, or by whom ``read_by`` says; None: all)."""
    return {name for _, settings in REFERENCE for s in settings if read_by in (None, s.read_by) for name in s.names}


def markdown() -> str:
    """docs/configuration.md."""
    out = ["# Configuration", "",
           "Every setting the function reads, from its environment, once, when the first invocation needs it",
           "(`etl_core/config.py`; a bad value is `bad_config`, naming the variable). This page is made from",
           "`etl_core/settings_reference.py` by `python -m etl_core settings`; a test keeps both equal to what",
           "the code reads. The scripts' own variables (`RIE_PORT`, `S3_PORT`, `FUNCTION_URL`, `CONTAINER_ENGINE`,",
           "`ENGINE_FLAGS`, `BASE_IMAGE`, `IMAGE`, `HOST_NETWORK`, `POSTGRES_IMAGE`) are in `./build.sh --help`",
           "and at the top of `invoke.sh`."]
    for group, settings in REFERENCE:
        out += ["", f"## {group}", "", "| variable | default | meaning |", "|---|---|---|"]
        for s in settings:
            by = "" if s.read_by == "the function" else f" (read by {s.read_by})"
            out.append(f"| {', '.join(f'`{n}`' for n in s.names)} | {s.default} | {s.meaning}{by} |")
    return "\n".join(out) + "\n"
