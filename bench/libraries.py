"""Libraries against what is written by hand: Powertools for AWS Lambda against etl_core/metrics.py,
etl_core/logs.py and the handler's S3 record parsing; pgpq against etl_core/store/copy_binary.py.

    python bench/libraries.py imports [--runs 15]     # import and first-call cost, fresh processes
    python bench/libraries.py emf                     # Powertools' EMF documents against ours and the schema
    python bench/libraries.py logs                    # Powertools' log line against the runtime's format
    python bench/libraries.py s3                      # S3Event's records against the handler's parsing
    python bench/libraries.py copy --data bench/out/M --data bench/out/L [--rounds 5]

Needs the benchmark's requirements (bench/requirements.txt pins aws-lambda-powertools and pgpq; they
are never in the image).  ``copy`` needs PostgreSQL (BENCH_DATABASE_URL, the test database by default)
and caches each data set's features in bench/out as Arrow IPC, as bench/copy_formats.py does.
Every figure is printed with the load average at the time: the machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common

sys.path.insert(0, str(_common.ROOT))

PYTHON = sys.executable
POWERTOOLS_ALL = ("from aws_lambda_powertools import Logger, Metrics\n"
                  "from aws_lambda_powertools.utilities.data_classes import S3Event")
POWERTOOLS_METRICS_S3 = ("from aws_lambda_powertools import Metrics\n"
                         "from aws_lambda_powertools.utilities.data_classes import S3Event")
OURS = "import urllib.parse\nfrom etl_core import logs, metrics\nlogs.configure()"
HANDLER = "import handler.lambda_function"
# what each case imports, in a fresh process
IMPORTS = {
    "ours (metrics + logs + urllib.parse)": OURS,
    "powertools (Metrics + Logger + S3Event)": POWERTOOLS_ALL,
    "powertools (Metrics + S3Event)": POWERTOOLS_METRICS_S3,
    "handler today (the INIT import)": HANDLER,
    "handler + powertools (all three)": HANDLER + "\n" + POWERTOOLS_ALL,
    "handler + powertools (Metrics + S3Event)": HANDLER + "\n" + POWERTOOLS_METRICS_S3,
    "pyarrow (what the hand-written encoder needed)": "import pyarrow, pyarrow.compute",
    "pyarrow + pgpq (what the store's encoder needs now)": "import pyarrow, pyarrow.compute, pgpq",
}
S3_EVENT = {"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "lab-exports"},
                                                          "object": {"key": "exports/2026+12%2F04/_manifest.json"}}}]}
# what a first invocation does with each: the ColdStart document, the S3 records, one log line, a run's document
FIRST_CALL_OURS = f"""
from urllib.parse import unquote_plus
from etl_core import logs, metrics
from etl_core.config import MetricsSettings
settings = MetricsSettings("ExperimentEtl", (("Service", "experiment-etl"),))
event = {S3_EVENT!r}
with logs.bound(kind="s3", aws_request_id="req-1"):
    metrics.emit(metrics.cold_start_document(settings))
    objects = [(r["s3"]["bucket"]["name"], unquote_plus(r["s3"]["object"]["key"])) for r in event["Records"]]
    logs.log_event("run_started", objects=objects)
    metrics.emit(metrics.run_document(settings, status="succeeded", run_id=1, files=FILES, users_written=9,
                                      seconds={{"extract": 0.5, "transform": 0.25, "load": 0.5, "total": 1.3}}))
"""
FIRST_CALL_POWERTOOLS = f"""
from aws_lambda_powertools import Logger, Metrics, single_metric
from aws_lambda_powertools.utilities.data_classes import S3Event
event = {S3_EVENT!r}
with single_metric(name="ColdStart", unit="Count", value=1, namespace="ExperimentEtl") as cold:
    cold.add_dimension(name="Service", value="experiment-etl")
    cold.add_metadata(key="requestId", value="req-1")
    cold.add_metadata(key="kind", value="s3")
objects = [(r.s3.bucket.name, r.s3.get_object.key) for r in S3Event(event).records]
logger = Logger(service="experiment-etl")
logger.append_keys(kind="s3", requestId="req-1")
logger.info("run_started", extra={{"objects": objects}})
m = Metrics(namespace="ExperimentEtl")
m.set_default_dimensions(Service="experiment-etl")
for name, value, unit in VALUES:
    m.add_metric(name=name, unit=unit, value=value)
members = {{"event": "run_metrics", "run_id": 1, "status": "succeeded", "requestId": "req-1", "kind": "s3"}}
for key, value in members.items():
    m.add_metadata(key=key, value=value)
m.flush_metrics()
"""
FILES = {name: {"rows_read": 10, "rows_accepted": 9, "rows_rejected": 1}
         for name in ("users.csv", "compounds.csv", "user_experiments.csv")}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def env() -> dict[str, str]:
    """The child's environment: the worktree's code first, and no Powertools settings from outside."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")},
            "PYTHONPATH": os.pathsep.join([str(_common.ROOT), os.environ.get("PYTHONPATH", "")])}


def _child(statement: str, first_call: str | None) -> str:
    """A fresh process's script: import ``statement`` and time it, then (stdout to /dev/null) the
    first call; print both durations."""
    return "\n".join([
        "import sys, time, json, os",
        "sys.stderr.write('--- measured ---\\n'); sys.stderr.flush()",
        "t0 = time.perf_counter()",
        statement,
        "t1 = time.perf_counter()",
        "out = sys.stdout; sys.stdout = open(os.devnull, 'w')",
        f"FILES = {FILES!r}",
        f"VALUES = {_values()!r}",
        first_call or "",
        "t2 = time.perf_counter()",
        "sys.stdout = out",
        "print(json.dumps({'import': t1 - t0, 'first_call': t2 - t1}))",
    ])


def _values() -> list[tuple[str, float, str]]:
    """The metrics of our run document (name, value, unit), for Powertools to print the same."""
    from etl_core import metrics
    from etl_core.config import MetricsSettings

    doc = metrics.run_document(MetricsSettings("ExperimentEtl", (("Service", "experiment-etl"),)), status="succeeded",
                               run_id=1, files=FILES, users_written=9,
                               seconds={"extract": 0.5, "transform": 0.25, "load": 0.5, "total": 1.3})
    assert doc is not None
    return [(m["Name"], doc[m["Name"]], m["Unit"]) for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]]


def _importtime(stderr: str) -> float:
    """The cumulative import time (s) of the modules the measured statement imported first-hand
    (-X importtime's top-level lines after the marker)."""
    total = 0
    for line in stderr.split("--- measured ---", 1)[1].splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match and not match.group(3):
            total += int(match.group(2))
    return total / 1e6


def imports(runs: int) -> None:
    first_calls = {"ours (metrics + logs + urllib.parse)": FIRST_CALL_OURS,
                   "powertools (Metrics + Logger + S3Event)": FIRST_CALL_POWERTOOLS}
    figures: dict[str, dict[str, list[float]]] = {name: {"wall": [], "importtime": [], "first_call": []}
                                                  for name in IMPORTS}
    print(f"{runs} fresh processes per case, interleaved; {PYTHON}; {load()}")
    for name, statement in IMPORTS.items():  # one warm-up each: bytecode caches written
        subprocess.run([PYTHON, "-c", _child(statement, first_calls.get(name))], env=env(), check=True,
                       capture_output=True)
    for _ in range(runs):
        for name, statement in IMPORTS.items():
            script = _child(statement, first_calls.get(name))
            done = subprocess.run([PYTHON, "-c", script], env=env(), check=True, capture_output=True, text=True)
            timed = json.loads(done.stdout.splitlines()[-1])
            figures[name]["wall"].append(timed["import"])
            figures[name]["first_call"].append(timed["first_call"])
            traced = subprocess.run([PYTHON, "-X", "importtime", "-c", script], env=env(), check=True,
                                    capture_output=True, text=True)
            figures[name]["importtime"].append(_importtime(traced.stderr))
    print(f"{'case':52} {'import wall ms':>16} {'-X importtime ms':>17} {'first call ms':>14}")
    for name, got in figures.items():
        def ms(values: list[float]) -> str:
            return f"{statistics.median(values) * 1e3:6.1f} ({min(values) * 1e3:.1f}-{max(values) * 1e3:.1f})"
        first = ms(got["first_call"]) if name in first_calls else "-"
        print(f"{name:52} {ms(got['wall']):>16} {ms(got['importtime']):>17} {first:>14}")
    for base, name in (("handler today (the INIT import)", "handler + powertools (all three)"),
                       ("handler today (the INIT import)", "handler + powertools (Metrics + S3Event)"),
                       ("pyarrow (what the hand-written encoder needed)",
                        "pyarrow + pgpq (what the store's encoder needs now)")):
        grown = [statistics.median(figures[name][k]) - statistics.median(figures[base][k])
                 for k in ("wall", "importtime")]
        least = min(figures[name]["wall"]) - min(figures[base]["wall"])
        print(f"{name}: {grown[0] * 1e3:.1f} ms more than {base} (medians; -X importtime {grown[1] * 1e3:.1f} ms; "
              f"the fastest runs' {least * 1e3:.1f} ms)")
    import aws_lambda_powertools

    size = sum(f.stat().st_size for f in Path(aws_lambda_powertools.__file__).parent.rglob("*") if f.is_file())
    print(f"aws_lambda_powertools {aws_lambda_powertools.__version__} installed: {size / 1e6:.1f} MB "
          f"(its dependencies jmespath and typing_extensions are in the image already, for botocore and pydantic); "
          f"{load()}")


def _powertools_run_document(ours: dict[str, Any]) -> dict[str, Any]:
    """Powertools' Metrics printing the metrics, dimensions and members of our document ``ours``."""
    from aws_lambda_powertools import Metrics

    [directive] = ours["_aws"]["CloudWatchMetrics"]
    m = Metrics(namespace=directive["Namespace"])
    m.set_default_dimensions(**{key: ours[key] for key in directive["Dimensions"][0]})
    names = {metric["Name"] for metric in directive["Metrics"]}
    for metric in directive["Metrics"]:
        m.add_metric(name=metric["Name"], unit=metric["Unit"], value=ours[metric["Name"]])
    for key, value in ours.items():
        if key != "_aws" and key not in names and key not in directive["Dimensions"][0]:
            m.add_metadata(key=key, value=value)
    m.set_timestamp(ours["_aws"]["Timestamp"])
    doc = dict(m.serialize_metric_set())
    m.clear_metrics()
    return doc


def _printed(call: Any) -> list[dict[str, Any]]:
    out, sys.stdout = sys.stdout, io.StringIO()
    try:
        call()
        return [json.loads(line) for line in sys.stdout.getvalue().splitlines() if line.startswith("{")]
    finally:
        sys.stdout = out


def emf() -> None:
    import warnings

    from aws_lambda_powertools import Metrics

    from etl_core import logs, metrics
    from etl_core.config import MetricsSettings
    from tests.helpers import emf_problems

    warnings.simplefilter("ignore")
    settings = MetricsSettings("ExperimentEtl", (("Service", "experiment-etl"), ("Stage", "prod")))
    with logs.bound(kind="s3", run_id=7, aws_request_id="req-1"):
        ours = metrics.run_document(settings, status="partial", run_id=7, files=FILES, users_written=9,
                                    seconds={"extract": 0.5, "total": 1.3}, now=1_700_000_000.0)
    assert ours is not None
    theirs = _powertools_run_document(ours)
    print("the run's document: ours", "valid" if not emf_problems(ours) else emf_problems(ours),
          "| Powertools'", "valid" if not emf_problems(theirs) else emf_problems(theirs))
    differ = sorted(k for k in set(ours) | set(theirs) if k != "_aws" and ours.get(k) != theirs.get(k))
    shown = ", ".join(f"{k}: ours {ours.get(k)!r} / theirs {theirs.get(k)!r}" for k in differ[:4])
    print(f"  members that differ ({len(differ)}): {shown}{' ...' if len(differ) > 4 else ''}")
    print("  directive equal:", ours["_aws"]["CloudWatchMetrics"] == theirs["_aws"]["CloudWatchMetrics"])
    print(f"  one line: ours {len(json.dumps(ours, separators=(',', ':')))} bytes, "
          f"theirs {len(json.dumps(theirs, separators=(',', ':')))} bytes")

    class Context:
        function_name = "experiment-etl-EtlFunction"
        aws_request_id = "req-1"

    cold = Metrics(namespace="ExperimentEtl")
    cold.set_default_dimensions(Service="experiment-etl", Stage="prod")

    @cold.log_metrics(capture_cold_start_metric=True)
    def handler(event: Any, context: Any) -> None:
        cold.add_metric(name="Invocations", unit="Count", value=1)  # else it warns of no metrics

    printed = _printed(lambda: handler({}, Context()))
    cold_doc = next(d for d in printed if "ColdStart" in d)
    print("ColdStart (log_metrics(capture_cold_start_metric=True)):", json.dumps(cold_doc, separators=(",", ":")))
    print("  its dimensions:", cold_doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
          "| ours:", metrics.cold_start_document(settings)["_aws"]["CloudWatchMetrics"][0]["Dimensions"],  # type: ignore[index]
          "| requestId/kind in it:", {"requestId", "kind"} <= set(cold_doc))

    off = Metrics(namespace=None)
    off.add_metric(name="RunsSucceeded", unit="Count", value=1)
    try:
        off.flush_metrics()
        print("no namespace: printed")
    except Exception as exc:  # noqa: BLE001
        print(f"no namespace (ETL_METRICS_NAMESPACE=''): {type(exc).__name__}: {exc} (ours: no document, no error)")
    off.clear_metrics()

    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("stdout is closed")

    broken = Metrics(namespace="ExperimentEtl")
    broken.add_metric(name="RunsSucceeded", unit="Count", value=1)
    out, sys.stdout = sys.stdout, Closed()
    try:
        broken.flush_metrics()
        failure = "nothing raised"
    except Exception as exc:  # noqa: BLE001
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        sys.stdout = out
    print(f"a stdout that fails: Powertools raises {failure} into the run (ours logs metrics_not_printed)")
    broken.clear_metrics()
    os.environ["POWERTOOLS_DEV"] = "true"
    dev = Metrics(namespace="ExperimentEtl")
    dev.add_metric(name="RunsSucceeded", unit="Count", value=1)
    print("POWERTOOLS_DEV=true in the function's environment: documents printed:", len(_printed(dev.flush_metrics)),
          "(read from os.environ at every flush, below our configuration edge)")
    del os.environ["POWERTOOLS_DEV"]


def logs_check() -> None:
    import logging

    from aws_lambda_powertools import Logger
    from awslambdaric.lambda_runtime_log_utils import JsonFormatter

    promised = {"timestamp", "level", "message", "logger", "requestId", "kind", "run_id"}
    record = logging.LogRecord("etl", logging.INFO, __file__, 1, "run_started", None, None)
    record.aws_request_id, record.kind, record.run_id = "req-1", "s3", 7  # type: ignore[attr-defined]
    runtime_line = json.loads(JsonFormatter().format(record))
    print("the runtime's JSON line (what docs/operating.md promises):", sorted(runtime_line))
    stream = io.StringIO()
    logger = Logger(service="experiment-etl", stream=stream)
    logger.append_keys(kind="s3", run_id=7)

    class Context:
        function_name, memory_limit_in_mb, aws_request_id = "experiment-etl-EtlFunction", 1024, "req-1"
        invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:experiment-etl-EtlFunction"

    @logger.inject_lambda_context
    def handler(event: Any, context: Any) -> None:
        logger.info("run_started")

    handler({}, Context())
    line = json.loads(stream.getvalue().splitlines()[-1])
    print("Powertools' Logger line:", sorted(line))
    print("  promised keys it lacks:", sorted(promised - set(line)), "| keys it adds:", sorted(set(line) - promised))
    print("  it writes through its own handler on stdout; the runtime's JSON handler (AWS_LAMBDA_LOG_FORMAT=JSON) "
          "never sees the line, and other libraries' lines (Mangum's) keep the runtime's format")


def s3() -> None:
    from urllib.parse import unquote_plus

    from aws_lambda_powertools.utilities.data_classes import S3Event

    ours = [(r["s3"]["bucket"]["name"], unquote_plus(r["s3"]["object"]["key"])) for r in S3_EVENT["Records"]]
    theirs = [(r.s3.bucket.name, r.s3.get_object.key) for r in S3Event(S3_EVENT).records]
    print(f"the same (bucket, key): {ours == theirs}; ours {ours}, S3Event's records {theirs} (a record's "
          f"s3.get_object.key is the raw key; only S3Event.object_key, the first record's, is unquoted: "
          f"{S3Event(S3_EVENT).object_key!r})")
    for broken in ({"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}}}]},
                   {"Records": [{"eventSource": "aws:s3", "s3": None}]}):
        try:
            [(r.s3.bucket.name, r.s3.get_object.key) for r in S3Event(broken).records]
            print("a broken record: no error")
        except Exception as exc:  # noqa: BLE001
            print(f"a broken record: {type(exc).__name__}: {exc} (ours: UnsupportedEvent naming s3.bucket.name and "
                  "s3.object.key; S3Event would need the same try/except around it)")


# --- pgpq against copy_binary -----------------------------------------------------------------------------------

def _features(data: Path) -> Any:
    import pyarrow as pa

    from etl_core.features import kernels as transform

    cached = _common.ROOT / "bench" / "out" / f"features-{data.name}.arrow"
    if not cached.exists():
        from etl_core import pipeline
        from etl_core.config import Settings
        from etl_core.store.memory import MemoryStore

        store = MemoryStore()
        pipeline.run(Settings.from_env({"DATA_DIR": str(data)}), pipeline.Trigger(force=True), store=store)
        assert store.features is not None
        features = store.features.select(transform.FEATURES_SCHEMA.names).cast(transform.FEATURES_SCHEMA)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(cached), "wb") as f, pa.ipc.new_file(f, transform.FEATURES_SCHEMA) as writer:
            writer.write_table(features)
    return pa.ipc.open_file(str(cached)).read_all()


HANDWRITTEN = "b151bc8"  # the last commit with our own encoder in etl_core/store/copy_binary.py


def _handwritten() -> Any:
    """Our own encoder (pyarrow gathers), as it was at ``HANDWRITTEN``, read from git."""
    import types

    source = subprocess.run(["git", "-C", str(_common.ROOT), "show", f"{HANDWRITTEN}:etl_core/store/copy_binary.py"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("copy_binary_handwritten")
    exec(compile(source, f"copy_binary.py@{HANDWRITTEN}", "exec"), module.__dict__)  # noqa: S102
    return module


def handwritten_stream(batches: list[Any], run_id: int) -> Any:
    """The hand-written encoder's stream, chunk by chunk as the store sent it."""
    module = _handwritten_module()
    yield memoryview(module.HEADER)
    for batch in batches:
        yield module.rows(batch, run_id)
    yield memoryview(module.TRAILER)


_loaded: list[Any] = []


def _handwritten_module() -> Any:
    if not _loaded:
        _loaded.append(_handwritten())
    return _loaded[0]


def store_stream(batches: list[Any], run_id: int) -> Any:
    """What the store sends now (etl_core/store/postgres.py: copy_binary.rows per chunk, pgpq in it)."""
    from etl_core.store import postgres

    return postgres._binary_chunks(iter(batches), run_id)


def pgpq_stream(batches: list[Any], run_id: int) -> Any:
    """pgpq's binary COPY of the same batches with one encoder for the whole stream, the run's id as a
    column of its own (pgpq has no constants)."""
    import pyarrow as pa
    from pgpq import ArrowToPostgresBinaryEncoder

    from etl_core import transform

    schema = transform.FEATURES_SCHEMA.append(pa.field("run_id", pa.int64(), nullable=False))
    encoder = ArrowToPostgresBinaryEncoder(schema)
    yield encoder.write_header()
    run = pa.scalar(run_id, pa.int64())
    for batch in batches:
        yield encoder.write_batch(batch.append_column(schema.field("run_id"), pa.repeat(run, batch.num_rows)))
    yield encoder.finish()


# the reference first: every other is compared with it
ENCODERS = {"hand-written": handwritten_stream, "pgpq per chunk": store_stream, "pgpq one encoder": pgpq_stream}
REFERENCE = "hand-written"


def _encode(encoder: str, batches: list[Any], run_id: int) -> tuple[float, float, int]:
    """Wall and CPU seconds to make the whole stream (each chunk dropped once counted, as the store
    drops each once sent), and its length."""
    size = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for chunk in ENCODERS[encoder](batches, run_id):
        size += len(chunk)
    return time.perf_counter() - wall, time.process_time() - cpu, size


def _digest(encoder: str, batches: list[Any], run_id: int) -> str:
    digest = hashlib.sha256()
    for chunk in ENCODERS[encoder](batches, run_id):
        digest.update(chunk)
    return digest.hexdigest()


def _peak(data: Path, encoder: str) -> None:
    """In a fresh process, the features loaded: the resident set's peak while encoding (VmHWM, reset
    first through /proc/self/clear_refs) above the resident set before it."""
    from etl_core.store import postgres

    def status(field: str) -> int:
        return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(field + ":"))

    batches = _features(data).to_batches(max_chunksize=postgres.ROWS_PER_CHUNK)
    for _ in ENCODERS[encoder](batches[:1], 1):  # the encoder's modules imported, its constants made
        pass
    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    _encode(encoder, batches, 1)
    print(json.dumps({"before_kb": before, "peak_kb": status("VmHWM")}))


def _corners() -> list[tuple[str, Any]]:
    """Batches at the encoders' corners: NULLs, empty lists, extreme ints and floats, Unicode, an offset."""
    import pyarrow as pa

    from etl_core import transform

    rows = [(1, "a", 0, None, None, 0.0), (2, "", 1, "", [], -0.0), (2**63 - 1, "é✓\U0001F600", -(2**63), "x;y",
            [-(2**63), 2**63 - 1, 0], float("inf")), (-5, "z" * 1000, 7, "c", list(range(5000)), float("nan")),
            (3, "b", 2, None, [1], 1e-310)]
    columns = [pa.array([r[i] for r in rows], f.type) for i, f in enumerate(transform.FEATURES_SCHEMA)]
    batch = pa.RecordBatch.from_arrays(columns, schema=transform.FEATURES_SCHEMA)
    return [("corner rows", [batch]), ("the same, sliced (offset 2)", [batch.slice(2)]),
            ("one row per batch", [batch.slice(i, 1) for i in range(batch.num_rows)])]


def _load(conn: Any, table: str, stream: list[bytes]) -> None:
    from etl_core.store import sql

    conn.run(f"DROP TABLE IF EXISTS pg_temp.{table}")
    conn.run(sql.features_table("pg_temp", table))
    conn.run(sql.copy_in("pg_temp", table, sql.FEATURE_COLUMNS, binary=True), stream=stream)


def _server_compare(conn: Any, streams: dict[str, list[bytes]]) -> str:
    """Each stream loaded into a temporary table; each table's rows compared with the reference's by
    the server (NaN equals NaN there)."""
    tables = {name: f"lib_{i}" for i, name in enumerate(streams)}
    for name, stream in streams.items():
        _load(conn, tables[name], stream)
    said = []
    reference = f"pg_temp.{tables[REFERENCE]}"
    for name, table in tables.items():
        if name == REFERENCE:
            continue
        [[a, b, missing, extra]] = conn.run(
            f"SELECT (SELECT count(*) FROM {reference}), (SELECT count(*) FROM pg_temp.{table}),"
            f" (SELECT count(*) FROM (TABLE {reference} EXCEPT ALL TABLE pg_temp.{table}) d),"
            f" (SELECT count(*) FROM (TABLE pg_temp.{table} EXCEPT ALL TABLE {reference}) d)")
        said.append(f"{name}: rows {b} of {a}, {missing} missing, {extra} more")
    return "; ".join(said)


def copy(datas: list[Path], rounds: int) -> None:
    import pg8000.native
    import pgpq

    from etl_core.store import postgres

    print(f"pgpq {_version('pgpq')} ({pgpq.__file__}); {rounds} rounds, the encoders in turn; {load()}")
    conn = pg8000.native.Connection(**_common.pg_params(_common.DEFAULT_URL), application_name="bench-libraries")
    for name, batches in _corners():
        streams = {e: [bytes(c) for c in ENCODERS[e](batches, 42)] for e in ENCODERS}
        same = {e: b"".join(streams[e]) == b"".join(streams[REFERENCE]) for e in ENCODERS if e != REFERENCE}
        print(f"{name}: the same bytes as the hand-written encoder's {same}; server: {_server_compare(conn, streams)}")
    for data in datas:
        table = _features(data)
        batches = table.to_batches(max_chunksize=postgres.ROWS_PER_CHUNK)
        print(f"\n{data.name}: {table.num_rows} rows, {len(batches)} batches of {postgres.ROWS_PER_CHUNK}; {load()}")
        timings: dict[str, list[tuple[float, float]]] = {e: [] for e in ENCODERS}
        sizes: dict[str, set[int]] = {e: set() for e in ENCODERS}
        for _ in range(rounds):
            for encoder in ENCODERS:
                wall, cpu, size = _encode(encoder, batches, 1)
                timings[encoder].append((wall, cpu))
                sizes[encoder].add(size)
        digests = {e: _digest(e, batches, 1) for e in ENCODERS}
        for encoder, got in timings.items():
            walls, cpus = [w for w, _ in got], [c for _, c in got]
            [size] = sizes[encoder]
            print(f"  {encoder:16} wall median {statistics.median(walls):.3f} s ({min(walls):.3f}-{max(walls):.3f}), "
                  f"CPU median {statistics.median(cpus):.3f} s ({min(cpus):.3f}-{max(cpus):.3f}); "
                  f"{size / 1e6:.1f} MB, sha256 {digests[encoder][:16]}")
        print("  the same bytes as the hand-written encoder's:",
              {e: digests[e] == digests[REFERENCE] for e in ENCODERS if e != REFERENCE})
        streams = {e: [bytes(c) for c in ENCODERS[e](batches, 1)] for e in ENCODERS}
        print("  server:", _server_compare(conn, streams))
        del streams
        for encoder in ENCODERS:
            done = subprocess.run([PYTHON, __file__, "_peak", "--data", str(data), "--encoder", encoder], env=env(),
                                  check=True, capture_output=True, text=True)
            peak = json.loads(done.stdout.splitlines()[-1])
            grown = (peak["peak_kb"] - peak["before_kb"]) / 1024
            print(f"  {encoder:16} peak RSS growth while encoding {grown:.0f} MB "
                  f"(features loaded: {peak['before_kb'] / 1024:.0f} MB)")
        print(f"  {load()}")
    conn.close()


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["imports", "emf", "logs", "s3", "copy", "_peak"])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", type=Path, action="append", default=[])
    parser.add_argument("--encoder", choices=list(ENCODERS))
    opts = parser.parse_args()
    if opts.what == "imports":
        imports(opts.runs)
    elif opts.what == "emf":
        emf()
    elif opts.what == "logs":
        logs_check()
    elif opts.what == "s3":
        s3()
    elif opts.what == "copy":
        copy(opts.data, opts.rounds)
    else:
        _peak(opts.data[0], opts.encoder)


if __name__ == "__main__":
    main()
