"""SAM CLI end to end: sam build, sam local invoke, sam local start-api, through podman's Docker API.

SAM talks to the Docker API, so podman serves one here (``podman system service``) with its own
containers.conf (CONTAINERS_CONF, nothing under /etc is touched): runc, explicit ulimits, and the
database server's socket directory mounted into every container, because SAM's containers run on
podman's bridge network where 127.0.0.1 is the container itself.  The function reaches PostgreSQL
over that Unix socket (``DATABASE_URL=postgresql://postgres@/test?host=/var/run/postgresql``).

``sam build`` has no build-argument flag, so the local base image is also tagged with the name the
Dockerfile pulls by default, python:3.12-slim (on the test machine only; the tag is removed again).
The build reuses the layers of the ``function_image`` fixture.  SAM's version check (PyPI) and
telemetry are off: the tests talk to loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from etl_core.config import db_settings
from etl_core.store.db import close_quietly, connect
from tests.containers import ROOT, Engine, report, run, tail, wait_for_port
from tests.helpers import EXPECTED, features_rows, free_port

pytest_plugins = ["tests.containers"]  # the engine, base_image and function_image fixtures

pytestmark = pytest.mark.sam

SLIM = "docker.io/library/python:3.12-slim"  # the Dockerfile's default BASE_IMAGE
FUNCTION = "EtlFunction"


def find_sam() -> str:
    beside_python = Path(sys.executable).parent / "sam"
    found = str(beside_python) if beside_python.is_file() else shutil.which("sam")
    if not found:
        pytest.skip("sam is not installed (pip install aws-sam-cli: requirements-dev.txt)")
    return found


@pytest.fixture(scope="module")
def db_socket(database_url: str) -> tuple[str, str]:
    """The server's socket directory and the test database's URL over that socket (libpq's host=DIR)."""
    settings = db_settings({"DATABASE_URL": database_url})
    conn = connect(settings)
    try:
        directories = str((conn.run("SHOW unix_socket_directories") or [[""]])[0][0])
        port = int((conn.run("SHOW port") or [[settings.port]])[0][0])
    finally:
        close_quietly(conn)
    found = [d.strip() for d in directories.split(",") if (Path(d.strip()) / f".s.PGSQL.{port}").exists()]
    if not found:
        pytest.fail(f"the database server has no Unix socket on this machine (unix_socket_directories={directories})")
    user = urlsplit(database_url).username or settings.user
    url = f"postgresql://{user}@/{settings.database}?host={found[0]}" + ("" if port == 5432 else f"&port={port}")
    return found[0], url


def _ping(sock: Path) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        return b"OK" in s.recv(4096)
    return False


@pytest.fixture(scope="module")
def docker_host(engine: Engine, db_socket: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """podman's Docker-compatible API on a socket of our own, configured by a containers.conf of our own."""
    if engine.name != "podman":
        pytest.skip(f"the SAM tests drive podman's API service; the engine here is {engine.name}")
    tmp = tmp_path_factory.mktemp("podman-api")
    socket_dir = db_socket[0]
    conf = tmp / "containers.conf"
    conf.write_text(
        "[containers]\n"
        f'volumes = ["{socket_dir}:{socket_dir}"]\n'
        'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        + ('[engine]\nruntime = "runc"\n' if "--runtime" in engine.flags else ""),
        encoding="utf-8",
    )
    sock = tmp / "podman.sock"
    env = engine.environ(CONTAINERS_CONF=str(conf))
    with open(tmp / "service.log", "wb") as log:
        service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while not _ping(sock):
            if service.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"podman system service did not come up:\n{(tmp / 'service.log').read_text()}")
            time.sleep(0.2)
        yield f"unix://{sock}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=10)


@pytest.fixture(scope="module")
def slim_tag(engine: Engine, base_image: str) -> Iterator[str]:
    """python:3.12-slim as another name of the local base image, unless a real one is present."""
    created = engine.image_id(SLIM) is None
    if created:
        engine("tag", base_image, SLIM)
    try:
        yield SLIM
    finally:
        if created:
            engine("rmi", SLIM, check=False)


class Sam:
    """The sam command with our environment: our podman socket, no telemetry, no version check."""

    def __init__(self, exe: str, docker_host: str, home: Path) -> None:
        self.exe = exe
        self.home = home
        app_dir = home / "sam-app-dir"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "metadata.json").write_text(
            json.dumps({"telemetryEnabled": False, "lastVersionCheck": time.time() + 86400 * 365}), encoding="utf-8")
        (home / "tmp").mkdir(exist_ok=True)
        self.env = {**os.environ, "DOCKER_HOST": docker_host, "SAM_CLI_TELEMETRY": "0",
                    "__SAM_CLI_APP_DIR": str(app_dir), "TMPDIR": str(home / "tmp")}
        self.template = home / "build" / "template.yaml"

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run([self.exe, *args], cwd=self.home, env=self.env, timeout=timeout)

    def env_vars(self, name: str, schema: str, database_url: str) -> str:
        path = self.home / f"{name}.env.json"
        variables = {"DATABASE_URL": database_url, "DB_SCHEMA": schema, "DATA_URL": "/var/task/data"}  # not S3
        path.write_text(json.dumps({FUNCTION: variables}), encoding="utf-8")
        return str(path)


def container_ids(engine: Engine) -> set[str]:
    return set(engine("ps", "--all", "--quiet", "--no-trunc").stdout.split())


@pytest.fixture(autouse=True)
def no_containers_left(engine: Engine) -> Iterator[None]:
    """SAM removes every container it starts: check that nothing is left behind."""
    before = container_ids(engine)
    yield
    left = container_ids(engine) - before
    assert not left, f"containers left behind: {left}"


def report_lines(request: pytest.FixtureRequest, what: str, text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.startswith("REPORT ")]
    for line in lines:
        report(request, what, " ".join(line.split()))
    return lines


@pytest.fixture(scope="module")
def sam(docker_host: str, slim_tag: str, function_image: str, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Sam:
    """``sam build`` of template.yaml into a temporary directory (the repository stays clean)."""
    home = tmp_path_factory.mktemp("sam")
    tool = Sam(find_sam(), docker_host, home)
    started = time.monotonic()
    tool("build", "--template-file", str(ROOT / "template.yaml"), "--build-dir", str(home / "build"),
         "--cache-dir", str(home / "cache"), timeout=1800)
    report(request, "sam build", f"{time.monotonic() - started:.1f} s (layers shared with {function_image})")
    return tool


def test_sam_local_invoke_runs_the_etl(sam: Sam, db_socket: tuple[str, str], schema: str, db: Any,
                                       request: pytest.FixtureRequest) -> None:
    env_vars = sam.env_vars("invoke", schema, db_socket[1])
    done = sam("local", "invoke", FUNCTION, "-t", str(sam.template), "-e", str(ROOT / "events/post-trigger-etl.json"),
               "--env-vars", env_vars, "--skip-pull-image")
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply["statusCode"] == 200, reply
    body = json.loads(reply["body"])
    assert body["status"] == "succeeded" and body["users_written"] == 10, body
    assert features_rows(db, schema) == EXPECTED
    assert report_lines(request, "sam local invoke", done.stderr), tail(done.stderr)


def test_sam_local_invoke_answers_a_bad_event_clearly(sam: Sam, db_socket: tuple[str, str], schema: str,
                                                      request: pytest.FixtureRequest) -> None:
    env_vars = sam.env_vars("bad", schema, db_socket[1])
    done = sam("local", "invoke", FUNCTION, "-t", str(sam.template), "-e", str(ROOT / "events/bad-event.json"),
               "--env-vars", env_vars, "--skip-pull-image")
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply["errorType"] == "UnsupportedEvent", reply
    message = json.loads(reply["errorMessage"])
    assert message["code"] == "unsupported_event" and message["received"] == ["Records"], message
    assert "trigger-etl" in message["message"] and message["example"] == {"action": "trigger-etl", "policy": "strict"}
    report_lines(request, "sam local invoke (bad event)", done.stderr)


def curl(url: str, method: str = "GET") -> tuple[int, Any]:
    done = run(["curl", "--silent", "--show-error", "--max-time", "300", "--write-out", "\n%{http_code}",
                "-X", method, url])
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


def test_sam_local_start_api_serves_the_http_routes(sam: Sam, db_socket: tuple[str, str], schema: str, db: Any,
                                                   request: pytest.FixtureRequest) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl is not installed (.ci/setup-system.sh)")
    port = free_port()
    env_vars = sam.env_vars("api", schema, db_socket[1])
    out, err = sam.home / "start-api.out", sam.home / "start-api.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        # AllowGetTrigger routes the challenge's GET /trigger-etl as well (the deployed API does not by default)
        api = subprocess.Popen([sam.exe, "local", "start-api", "-t", str(sam.template), "--env-vars", env_vars,
                                "--parameter-overrides", "AllowGetTrigger=true",
                                "--skip-pull-image", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=sam.home, env=sam.env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    try:
        if not wait_for_port(port, 120, alive=lambda: api.poll() is None):
            pytest.fail(f"sam local start-api did not listen on {port}:\n{tail(err.read_text())}")
        base = f"http://127.0.0.1:{port}"
        first_status, first = curl(f"{base}/trigger-etl", "POST")
        second_status, second = curl(f"{base}/trigger-etl")  # the challenge's curl
        run_status, run_record = curl(f"{base}/runs/{first['run_id']}")
        missing_status, missing = curl(f"{base}/runs/999999")
        report(request, "curl -X POST /trigger-etl", f"{first_status} {json.dumps(first)}")
        report(request, "curl GET /trigger-etl", f"{second_status} {json.dumps(second)}")
        report(request, f"curl GET /runs/{first['run_id']}", f"{run_status} {json.dumps(run_record)}")
    finally:
        api.send_signal(signal.SIGINT)  # sam removes the containers it started when interrupted
        try:
            api.wait(timeout=60)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait(timeout=10)
    assert (first_status, second_status) == (200, 200), (first, second)
    assert (first["status"], second["status"], second["same_as"]) == ("succeeded", "unchanged", first["run_id"])
    assert second["run_id"] == first["run_id"] + 1  # the same files again: recorded, not loaded
    assert (first["users_written"], second["users_written"]) == (10, 0)
    assert run_status == 200 and run_record["run_id"] == first["run_id"] and run_record["status"] == "succeeded"
    assert run_record["users_written"] == 10, run_record
    assert missing_status == 404 and missing["error"]["code"] == "run_not_found", missing
    assert features_rows(db, schema) == EXPECTED  # two runs, still exactly one row per user
    assert report_lines(request, "sam local start-api", out.read_text() + err.read_text())


# SAM CLI's own reading of the template (no container): needs the SAM CLI of requirements-dev.txt
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SAM CLI's own use of jsonschema's validate
@pytest.mark.parametrize("allow_get", ["false", "true"])
def test_sam_local_serves_get_trigger_only_when_asked_and_without_an_authorizer(allow_get: str) -> None:
    """``sam local start-api`` reads the same template: GET /trigger-etl with
    ``--parameter-overrides AllowGetTrigger=true`` (the challenge's curl), and no authorizer on any route
    (SAM local has none for IAM or JWT, as docs/security.md says)."""
    from samcli.lib.providers.api_provider import ApiProvider
    from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

    from tests.test_template import AUDIENCE

    stacks, _ = SamLocalStackProvider.get_stacks(str(ROOT / "template.yaml"),
                                                 parameter_overrides={"AllowGetTrigger": allow_get})
    served = {(method, route.path): route for route in ApiProvider(stacks).api.routes for method in route.methods}
    expected = set(AUDIENCE)
    if allow_get == "false":
        expected.discard(("GET", "/trigger-etl"))
    assert set(served) == expected
    assert all(route.function_name == "EtlFunction" and route.authorizer_name is None for route in served.values())
