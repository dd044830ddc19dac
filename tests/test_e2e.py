"""End to end as a newcomer runs it: ./build.sh --local starts the real Runtime Interface Emulator in
front of the real awslambdaric runtime, ./invoke.sh posts the HTTP API event, ./query.sh shows it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.helpers import EXPECTED, by_invocation, features_rows, free_port


def sh(*cmd: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(cmd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check and done.returncode:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture
def running(database_url: str, schema: str) -> Iterator[dict[str, str]]:
    env = {**os.environ, "DATABASE_URL": database_url, "DB_SCHEMA": schema, "RIE_PORT": str(free_port())}
    env.pop("DATA_DIR", None)
    sh("./build.sh", "--local", env=env)
    try:
        yield env
    finally:
        sh("./build.sh", "stop", env=env)


def normalized(shown: str) -> list[str]:
    """query.sh's output, line by line without trailing blanks, the runs' seconds (which vary) as 0.00."""
    return [re.sub(r"\|\s+[0-9.]+$", "| 0.00", line.rstrip()) if re.match(r"\s+\d+ \| \w+\s+\| (strict|quarantine)",
                                                                       line) else line.rstrip()
            for line in shown.strip().splitlines()]


def readme_sample() -> list[str]:
    block = (ROOT / "README.md").read_text(encoding="utf-8").split("<!-- query.sh output -->", 1)[1]
    return normalized(block.split("```", 2)[1])


def test_build_local_invoke_and_query(running: dict[str, str], db: Any, schema: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    first = sh("./invoke.sh", env=running)  # POST /trigger-etl
    assert first.stdout.startswith("HTTP 200")
    assert '"users_written": 10' in first.stdout
    assert readme_sample() == normalized(sh("./query.sh", env=running).stdout)  # the README shows what it prints
    again = sh("./invoke.sh", "events/trigger-etl.json", env=running)  # the challenge's GET, served locally
    assert again.stdout.startswith("HTTP 200") and '"status": "unchanged"' in again.stdout
    assert features_rows(db, schema) == EXPECTED  # twice: still ten rows

    shown = sh("./query.sh", env=running).stdout
    assert "(10 rows)" in shown
    assert re.search(r"4 \| Dave\s+\|\s+1 \| Compound A;Compound B;Compound C\s+\| \{1,2,3\}\s+\|\s+1\.1", shown)

    bad = sh("./invoke.sh", "events/bad-event.json", env=running, check=False)
    assert bad.returncode == 1
    assert '"errorType": "UnsupportedEvent"' in bad.stdout

    log = (ROOT / ".run" / "function.log").read_text()
    invocations = by_invocation(log)
    assert len(invocations) == 3  # two triggers, one event of an SQS message's shape (unsupported)
    for request_id, lines in invocations.items():  # the runtime's JSON lines, as in AWS (LoggingConfig)
        found = [json.loads(line) for line in lines]
        assert found and all(line["requestId"] == request_id and (line.get("level") or "_aws" in line)
                             for line in found), lines
    ours = [json.loads(line) for lines in invocations.values() for line in lines if '"logger": "etl"' in line]
    assert {line["kind"] for line in ours} == {"http", "direct"} and all(line.get("run_id") for line in ours
                                                                         if line["message"] == "run_finished")
    init = re.search(r"INIT REPORT\(durationMs: ([0-9.]+)\)", log)
    durations = re.findall(r"REPORT RequestId: \S+\s+(?:Init Duration: [0-9.]+ ms\s+)?Duration: ([0-9.]+) ms", log)
    assert init and len(durations) >= 3
    with capsys.disabled():
        print(f"\n[report] local RIE: init {init.group(1)} ms, invocations {', '.join(durations)} ms")


def test_invoke_says_when_nothing_answers() -> None:
    env = {**os.environ, "RIE_PORT": str(free_port())}
    done = sh("./invoke.sh", env=env, check=False)
    assert done.returncode == 3
    assert "nothing answers" in done.stderr


def test_build_local_s3_serves_the_set_from_a_local_s3_server(database_url: str, schema: str, db: Any) -> None:
    """``./build.sh --local --s3``: moto's server on loopback holds data/ where events/s3-put.json's
    manifest is; the upload's notification loads it, the same notification again is 'unchanged', and
    ``./build.sh stop`` stops both processes."""
    env = {**os.environ, "DATABASE_URL": database_url, "DB_SCHEMA": schema, "RIE_PORT": str(free_port()),
           "S3_PORT": str(free_port())}
    for name in ("DATA_DIR", "DATA_URL", "DATA_S3_ENDPOINT"):
        env.pop(name, None)
    started = sh("./build.sh", "--local", "--s3", env=env)
    pids = [int((ROOT / ".run" / name).read_text()) for name in ("local.pid", "s3.pid")]
    try:
        assert f"http://127.0.0.1:{env['S3_PORT']}" in started.stderr
        first = json.loads(sh("./invoke.sh", "events/s3-put.json", env=env).stdout)
        again = json.loads(sh("./invoke.sh", "events/s3-put.json", env=env).stdout)
    finally:
        sh("./build.sh", "stop", env=env)
    assert (first["status"], first["users_written"]) == ("succeeded", 10)
    assert first["inputs"]["users.csv"]["key"] == "s3://experiment-etl-lab-data/exports/users.csv"
    assert (again["status"], again["same_as"]) == ("unchanged", first["run_id"])
    assert features_rows(db, schema) == EXPECTED
    for pid in pids:  # both stopped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# Every route of the HTTP API and its direct action, through ./invoke.sh and the real emulator: the
# HTTP events built by invoke.sh go through Mangum as API Gateway's would.
ROUTES = {  # (method, path as invoke.sh is given it) -> the direct action that does the same, if any
    ("POST", "/trigger-etl"): ["trigger-etl"],
    ("GET", "/trigger-etl"): ["trigger-etl"],
    ("GET", "/runs"): ["list-runs"],
    ("GET", "/runs/{run_id}"): ["get-run", "run_id={run_id}"],
    ("GET", "/runs/{run_id}/rejects"): ["get-rejects", "run_id={run_id}"],
    ("GET", "/runs/{run_id}/changes"): ["get-changes", "run_id={run_id}"],
    ("GET", "/runs/{run_id}/features"): ["get-features", "run_id={run_id}"],
    ("POST", "/runs/{run_id}/restore"): ["restore", "run_id={run_id}", "dry_run=true"],
    ("GET", "/health"): ["health"],
    ("GET", "/openapi.json"): None,  # HTTP only
}


def test_invoke_reaches_every_route_by_http_and_by_direct_action(running: dict[str, str]) -> None:
    from handler import lambda_function
    from handler.app import app

    documented = {(method, route.path) for route in app.routes if getattr(route, "methods", None)
                  for method in route.methods if method != "HEAD"
                  and route.path not in ("/docs", "/docs/oauth2-redirect", "/redoc")}
    assert documented == set(ROUTES), "a route without an ./invoke.sh check: add it to ROUTES"
    first = json.loads(sh("./invoke.sh", "trigger-etl", "policy=quarantine", env=running).stdout)
    assert first["status"] == "succeeded"
    for (method, path), action in ROUTES.items():
        target = path.format(run_id=first["run_id"]) + ("?force=true" if path == "/trigger-etl" else "")
        by_http = sh("./invoke.sh", method, target, env=running)
        assert by_http.stdout.startswith("HTTP 200"), (method, path, by_http.stdout[:300])
        if action is not None:
            direct = sh("./invoke.sh", *(part.format(run_id=first["run_id"]) for part in action), env=running)
            assert json.loads(direct.stdout), (action, direct.stdout[:300])
    sharded = {"plan-shards", "count-shard", "reduce-shards"}  # the state machine's, tests/test_shards.py's
    actions = {route[0] for route in ROUTES.values() if route} | {"migrate"} | sharded
    assert actions == set(lambda_function.ACTIONS)
    migrate = json.loads(sh("./invoke.sh", "migrate", "apply=false", env=running).stdout)
    assert migrate["pending"] == []
    wrong = sh("./invoke.sh", "GET", "/runs?limit=0", env=running, check=False)
    assert wrong.returncode == 1 and wrong.stdout.startswith("HTTP 400")
    assert sh("./invoke.sh", "not/an/action", env=running, check=False).returncode == 64


def test_build_local_refuses_to_start_when_a_run_could_not_succeed(database_url: str, schema: str,
                                                                    tmp_path: Any) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "DB_SCHEMA": schema, "RIE_PORT": str(free_port()),
           "DATA_DIR": str(tmp_path / "missing")}
    done = sh("./build.sh", "--local", env=env, check=False)
    assert done.returncode == 1
    assert "data: NOT OK" in done.stderr and "DATA_DIR is not an existing directory" in done.stderr
    assert "not starting" in done.stderr and "function running" not in done.stderr
    assert sh("./invoke.sh", env=env, check=False).returncode == 3  # nothing was left listening
    env = {**env, "DATA_DIR": str(ROOT / "data"), "DATABASE_URL": database_url.rsplit("/", 1)[0] + "/no_such_db"}
    done = sh("./build.sh", "--local", env=env, check=False)
    assert done.returncode == 1 and "database: NOT OK" in done.stderr and "does not exist" in done.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["--local", "--bogus"], "unknown argument '--bogus'"),
    (["stop", "--local"], "stop takes no other argument"),
])
def test_build_names_a_bad_argument(args: list[str], says: str) -> None:
    done = sh("./build.sh", *args, env={**os.environ, "RIE_PORT": str(free_port())}, check=False)
    assert done.returncode != 0 and says in done.stderr


def test_build_clean_drops_the_schema_the_local_function_wrote(database_url: str, schema: str, db: Any) -> None:
    """The quickstart's teardown line: ./build.sh clean stops the function and drops its schema."""
    env = {**os.environ, "DATABASE_URL": database_url, "DB_SCHEMA": schema, "RIE_PORT": str(free_port())}
    env.pop("DATA_DIR", None)
    sh("./build.sh", "--local", env=env)
    try:
        assert sh("./invoke.sh", env=env).stdout.startswith("HTTP 200")
        assert db.run("SELECT 1 FROM pg_namespace WHERE nspname = :s", s=schema) == [[1]]
    finally:
        cleaned = sh("./build.sh", "clean", env=env)
    assert f"dropped schema {schema}" in cleaned.stderr
    assert db.run("SELECT 1 FROM pg_namespace WHERE nspname = :s", s=schema) == []
    assert sh("./invoke.sh", env=env, check=False).returncode == 3  # stopped too
