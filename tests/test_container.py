"""The container image, end to end: ./build.sh builds it and starts it, ./invoke.sh calls it.

The image is the project's Dockerfile, built on the local Debian base image (tests/containers.py).
The function container runs on the host network (tests talk to loopback only) against the test
database, in a fresh schema; the emulator's cold-start report and the image size are printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.containers import ROOT, Engine, report, run, tail
from tests.helpers import EXPECTED, features_rows, free_port

pytest_plugins = ["tests.containers"]  # the engine, base_image and function_image fixtures (shared with test_sam.py)

pytestmark = pytest.mark.container

CONTAINER = "experiment-etl"  # the name build.sh gives the function container
INVOCATIONS = "/2015-03-31/functions/function/invocations"
SECRET_NAMES = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_KEY|DATABASE_URL|PGPASS",
                          re.IGNORECASE)


def invoke(url: str, event: str, *, expect_ok: bool = True) -> str:
    done = run([str(ROOT / "invoke.sh"), event], env={**os.environ, "FUNCTION_URL": url}, check=False, timeout=300)
    if (done.returncode == 0) != expect_ok:
        pytest.fail(f"./invoke.sh {event} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def post(url: str, event: str) -> dict[str, Any]:
    request = urllib.request.Request(url, data=(ROOT / event).read_bytes(),  # noqa: S310 - loopback, ours
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - a loopback URL of ours
        reply: dict[str, Any] = json.load(response)
    return reply


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at ``port`` (/proc/net/tcp: the host network is ours)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def test_build_sh_builds_and_serves_the_image(engine: Engine, base_image: str, function_image: str, database_url: str,
                                              schema: str, db: Any, request: pytest.FixtureRequest,
                                              tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}{INVOCATIONS}"
    env = engine.environ(
        CONTAINER_ENGINE=engine.name,
        ENGINE_FLAGS=" ".join(engine.flags),
        BASE_IMAGE=base_image,
        IMAGE=function_image,
        HOST_NETWORK="1",
        DATABASE_URL=database_url,
        DB_SCHEMA=schema,
        RIE_PORT=str(port),
    )
    env.pop("DATA_DIR", None)  # the image's own data/, not a host path
    try:
        # build (all layers cached by the function_image fixture), then the documented run command,
        # adapted: `run -d --network host -e RIE_PORT=... -e DATABASE_URL=... -e DB_SCHEMA=... IMAGE`
        run([str(ROOT / "build.sh")], env=env, timeout=1200)

        first = invoke(url, "events/trigger-etl.json")
        assert first.startswith("HTTP 200"), first
        summary = json.loads(first.split("\n", 1)[1])
        assert summary["status"] == "succeeded"
        assert summary["users_written"] == 10
        assert features_rows(db, schema) == EXPECTED

        second = json.loads(invoke(url, "events/post-trigger-etl.json").split("\n", 1)[1])  # POST, as deployed
        assert second["run_id"] == summary["run_id"] + 1  # recorded, and
        assert (second["status"], second["same_as"]) == ("unchanged", summary["run_id"])  # the same files: no load
        forced = invoke_event(url, {"action": "trigger-etl", "force": True})
        assert (forced["run_id"], forced["status"]) == (summary["run_id"] + 2, "succeeded")
        assert features_rows(db, schema) == EXPECTED  # replaced, not appended: still one row per user
        # on the host's network the emulator listens on loopback only, as --local's does
        assert listening_addresses(port) == {"127.0.0.1"}
        # ./query.sh shows the schema and database build.sh started the function with
        plain = {k: v for k, v in env.items() if k not in ("DB_SCHEMA", "DATABASE_URL")}
        shown = run([str(ROOT / "query.sh")], env=plain)
        assert "Alice" in shown.stdout and "succeeded" in shown.stdout, shown.stdout

        bad = post(url, "events/bad-event.json")
        assert bad["errorType"] == "UnsupportedEvent", bad
        message = json.loads(bad["errorMessage"])
        assert message["code"] == "unsupported_event"
        assert "action" in message["message"] and message["received"] == ["Records"]
        shown = json.loads(invoke(url, "events/bad-event.json", expect_ok=False))
        assert shown["errorType"] == "UnsupportedEvent" and shown["error"]["code"] == "unsupported_event"

        logs = engine("logs", CONTAINER)
        log = logs.stdout + logs.stderr
        init = re.search(r"INIT REPORT\(durationMs: ([\d.]+)\)", log)
        reports = [" ".join(line.split()[3:]) for line in log.splitlines() if line.startswith("REPORT ")]
        assert init or reports, f"no INIT REPORT or REPORT line in the container log:\n{tail(log)}"
        if init:
            report(request, "cold start: emulator INIT REPORT", f"durationMs {float(init.group(1)):.1f} "
                                                                "(start of the runtime client, imports)")
        for label, line in zip(["cold start: first invocation", "warm: second invocation"], reports, strict=False):
            report(request, label, line)
        # the emulator's Max Memory Used is the configured size, not a measurement: the container's
        # cgroup's peak (cgroup v2, or v1's memory controller)
        for peak_file in ("/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes"):
            peak = engine("exec", CONTAINER, "cat", peak_file, check=False)
            if peak.returncode == 0 and peak.stdout.strip().isdigit():
                report(request, "container peak memory (its cgroup's, all invocations)",
                       f"{int(peak.stdout) / 2**20:.0f} MiB ({peak_file})")
                break
        hwm = engine("exec", CONTAINER, "sh", "-c", "grep -h VmHWM /proc/[0-9]*/status", check=False)
        peaks = [int(line.split()[1]) for line in hwm.stdout.splitlines() if line.startswith("VmHWM")]
        if peaks:
            report(request, "largest process peak RSS in the container (VmHWM)", f"{max(peaks) / 1024:.0f} MiB")

        # DATA_DIR, a directory of this machine, is what the container reads (mounted as /data)
        own = tmp_path / "own data"
        shutil.copytree(ROOT / "data", own)
        users = own / "users.csv"
        users.write_text(users.read_text(encoding="utf-8").replace("Alice", "Alicia"), encoding="utf-8")
        run([str(ROOT / "build.sh")], env={**env, "DATA_DIR": str(own)}, timeout=1200)
        mounted = invoke_event(url, {"action": "trigger-etl"})
        assert (mounted["status"], mounted["changes"]["changed"]) == ("succeeded", 1), mounted
        assert db.run(f'SELECT user_name FROM "{schema}".user_features WHERE user_id = 1') == [["Alicia"]]
    finally:
        run([str(ROOT / "build.sh"), "stop"], env=env, check=False, timeout=120)
    assert engine("ps", "-a", "--filter", f"name=^{CONTAINER}$", "--format", "{{.Names}}").stdout.strip() == ""


def test_image_runs_as_a_non_root_user(engine: Engine, function_image: str) -> None:
    user = engine.inspect(function_image)["Config"].get("User") or ""
    uid = user.split(":")[0]
    assert uid not in ("", "0", "root"), f"the image runs as {user or 'root (no USER)'}"


def test_image_holds_only_the_function(engine: Engine, function_image: str) -> None:
    listing = engine("run", "--rm", *engine.flags, "--network", "none", "--entrypoint", "/bin/ls", function_image,
                     "-A", "/var/task", "/var/task/data").stdout
    task, data = listing.split("\n\n")
    assert set(task.splitlines()[1:]) == {"etl_core", "handler", "data"}, listing  # no tests/, .git, .venv
    assert set(data.splitlines()[1:]) == {"users.csv", "compounds.csv", "user_experiments.csv"}, listing


def test_image_env_has_no_credentials(engine: Engine, function_image: str) -> None:
    config = engine.inspect(function_image)["Config"]
    names = [item.split("=", 1)[0] for item in config.get("Env") or []]
    assert not [name for name in names if SECRET_NAMES.search(name)], config["Env"]
    assert not [item for item in config.get("Env") or [] if re.search(r"://[^/@\s]+:[^/@\s]+@", item)]
    assert "PATH=/opt/venv/bin:" in " ".join(config["Env"])


def test_image_size_is_reported(engine: Engine, function_image: str, request: pytest.FixtureRequest) -> None:
    size = int(engine.inspect(function_image)["Size"])
    report(request, "image size", f"{size / 1e6:.0f} MB ({size} bytes) for {function_image}")
    assert size < 2_000_000_000, "the function image grew past 2 GB"


# Operating it: correlated logs, metrics, history, rejects and freshness, through the real emulator.

PASSWORD = "pw-s3cret"  # noqa: S105 - in DATABASE_URL; the test server trusts loopback, so it is never asked for


INVOKED: list[str] = []  # the URLs invoked, one entry per invocation


def invoke_event(url: str, evt: Any) -> dict[str, Any]:
    INVOKED.append(url)
    request = urllib.request.Request(url, data=json.dumps(evt).encode(),  # noqa: S310 - loopback, ours
                                     headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - a loopback URL of ours
        reply: dict[str, Any] = json.load(response)
    return reply


def http(url: str, path: str, query: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    from tests.test_api import event

    reply = invoke_event(url, event("runs.json", path=path, query=query or {}))
    return reply["statusCode"], json.loads(reply["body"])


def test_operating_the_function_in_the_container(engine: Engine, function_image: str, database_url: str,
                                                 schema: str, db: Any, tmp_path: Any,
                                                 request: pytest.FixtureRequest) -> None:
    from tests.conftest import REFERENCE_DATA
    from tests.helpers import by_invocation, emf_problems, write_files

    root = tmp_path / "data"
    root.mkdir()
    (root / "good").mkdir()
    for path in REFERENCE_DATA.iterdir():
        (root / "good" / path.name).write_bytes(path.read_bytes())
    write_files(root / "bad", {"users.csv": "user_id,name,email,signup_date\n" + "".join(
        f"{i},{'' if i > 3 else f'U{i}'},u{i}@x,2023-01-01\n" for i in range(1, 11))})  # 7 rejected users
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    url = f"http://127.0.0.1:{port}{INVOCATIONS}"
    name = f"experiment-etl-ops-{port}"
    with_password = database_url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    assert PASSWORD in with_password
    env = {"RIE_PORT": str(port), "DATABASE_URL": with_password, "DB_SCHEMA": schema, "DATA_ROOT": "/data",
           "DATA_DIR": "/data/good", "ETL_HEALTH_MAX_AGE_SECONDS": "3600",
           "ETL_METRICS_DIMENSIONS": "Service=container-test",
           "AWS_LAMBDA_LOG_LEVEL": "INFO"}  # as the template's LoggingConfig sets it (ApplicationLogLevel)
    engine("run", "-d", *engine.flags, "--name", name, "--network", "host", "-v", f"{root}:/data:ro",
           *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")), function_image)
    try:
        from tests.containers import wait_for_port

        assert wait_for_port(port, 30), engine("logs", name, check=False).stderr
        # a run with rejects, by HTTP (its lines come from FastAPI's worker thread)
        status, partial = http(url, "/trigger-etl", {"policy": "quarantine", "data": "bad"})
        assert (status, partial["status"], partial["files"]["users.csv"]["rows_rejected"]) == (200, "partial", 7)
        runs = [partial["run_id"]]
        statuses = []
        for _ in range(2):  # the image's data: loaded, then the same files again: unchanged
            runs.append(http(url, "/trigger-etl")[1]["run_id"])
            statuses.append(invoke_event(url, {"action": "get-run", "run_id": runs[-1]})["status"])
        assert statuses == ["succeeded", "unchanged"]
        failed = invoke_event(url, {"action": "trigger-etl", "data": "bad"})  # strict: a function error
        assert failed["errorType"] == "ContractViolation"
        runs.append(json.loads(failed["errorMessage"])["run_id"])
        runs.append(invoke_event(url, {"action": "trigger-etl", "policy": "quarantine", "data": "bad",
                                       "force": True})["run_id"])  # 3 users where 10 were: the guard is overridden
        assert runs == list(range(runs[0], runs[0] + 5))

        # history and rejects page without gaps or repeats
        seen, query = [], {"limit": "2"}
        while True:
            status, page = http(url, "/runs", query)
            assert status == 200 and len(page["runs"]) <= 2
            seen += [r["run_id"] for r in page["runs"]]
            if page["next_before"] is None:
                break
            query = {"limit": "2", "before": str(page["next_before"])}
        assert seen == runs[::-1]
        failed_runs = invoke_event(url, {"action": "list-runs", "status": "failed"})["runs"]
        assert [r["run_id"] for r in failed_runs] == [runs[3]]
        rejects, after = [], "0"
        while after is not None:
            status, page = http(url, f"/runs/{runs[0]}/rejects", {"limit": "3", "after": after})
            assert status == 200 and len(page["rejects"]) <= 3
            rejects += page["rejects"]
            after = None if page["next_after"] is None else str(page["next_after"])
        assert [r["seq"] for r in rejects] == list(range(1, 8)) and [r["line"] for r in rejects] == list(range(5, 12))
        assert {r["rule"] for r in rejects} == {"empty_value"}
        assert http(url, "/runs", {"limit": "0"})[0] == 400

        # freshness: the age of the last run that confirmed the table, then 503 past the limit
        status, health = http(url, "/health")
        assert status == 200 and health["last_confirmed"]["run_id"] == runs[-1]
        assert 0 <= health["last_confirmed"]["age_seconds"] < 120 and health["max_age_seconds"] == 3600
        db.run(f'UPDATE "{schema}".etl_runs SET finished_at = finished_at - interval \'2 hours\'')
        status, stale = http(url, "/health")
        assert (status, stale["error"]["code"]) == (503, "features_stale")
        assert stale["error"]["last_confirmed"]["age_seconds"] >= 7200
        status, schema_doc = http(url, "/openapi.json")
        assert status == 200 and "HTTPValidationError" not in json.dumps(schema_doc)
        log = engine("logs", name).stdout + engine("logs", name).stderr
    finally:
        engine("rm", "-f", name, check=False)

    assert PASSWORD not in log
    invocations = by_invocation(log)
    assert len(invocations) == INVOKED.count(url), list(invocations)
    documents = []
    mangum_lines = 0
    for request_id, lines in invocations.items():
        for line in lines:
            try:
                found = json.loads(line)
            except ValueError:
                pytest.fail(f"not a JSON line in invocation {request_id}: {line!r}\n{tail(log)}")
            assert isinstance(found, dict) and found.get("requestId") == request_id, (request_id, line)
            if "_aws" in found:  # a metrics document
                assert emf_problems(found) == [], line
                documents.append(found)
            elif found.get("logger") == "etl":
                assert found["level"] in ("INFO", "WARNING", "ERROR") and found["kind"] in ("http", "direct"), line
                if found["message"] in ("run_started", "file_read", "run_finished", "run_failed"):
                    assert isinstance(found.get("run_id"), int), line
            elif found.get("logger", "").startswith("mangum"):  # its access line: GET /path 200
                assert found["level"] == "INFO" and found["kind"] == "http", line
                mangum_lines += 1
            else:  # the runtime's own report of a failed direct invocation, or another library's line
                assert found.get("level"), line
    [cold] = [d for d in documents if "ColdStart" in d]
    runs_documents = [d for d in documents if d.get("event") == "run_metrics"]
    assert [d["run_id"] for d in runs_documents] == runs and cold["requestId"] == next(iter(invocations))
    first = runs_documents[0]
    assert (first["RunsPartial"], first["RunsFailed"], first["Service"]) == (1, 0, "container-test")
    assert (first["RowsRead.users"], first["RowsAccepted.users"], first["RowsRejected.users"]) == (10, 3, 7)
    assert (first["RowsRejected"], first["UsersWritten"], first["kind"]) == (partial["violations"]["total"], 3, "http")
    assert (runs_documents[3]["RunsFailed"], runs_documents[3]["error_code"]) == (1, "contract_violation")
    errors = [json.loads(line) for line in invocations[runs_documents[3]["requestId"]]]
    assert {e.get("errorType") for e in errors} >= {"ContractViolation"}  # the runtime's report, same request id
    assert mangum_lines, "no access line of Mangum's in the log"
    report(request, "operating", f"{len(invocations)} invocations, {sum(map(len, invocations.values()))} lines, "
                                 f"all JSON with their request id; {len(documents)} EMF documents valid; "
                                 f"{mangum_lines} access lines of Mangum's, each with its kind")


def test_the_readmes_base_image_command_prints_the_settings_these_tests_build_with(engine: Engine,
                                                                                   base_image: str) -> None:
    """README, "Containers without a registry": ``eval "$(python -m tests.containers base-image)"`` and
    ./build.sh builds on the local base image with this engine's flags, as test_build_sh... does."""
    done = run([sys.executable, "-m", "tests.containers", "base-image"], cwd=ROOT, env=engine.environ())
    shown = run(["bash", "-c", done.stdout + '\nprintf "%s\\n" "$CONTAINER_ENGINE" "$BASE_IMAGE" "${ENGINE_FLAGS:-}"'])
    assert shown.stdout.splitlines() == [engine.name, base_image, " ".join(engine.flags)]
