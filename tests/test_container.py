"""The container image, end to end: ./build.sh builds it and starts it, ./invoke.sh calls it.

The image is the project's Dockerfile, built on the local Debian base image (tests/containers.py).
The function container runs on the host network (tests talk to loopback only) against the test
database, in a fresh schema; the emulator's cold-start report and the image size are printed.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
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


def test_build_sh_builds_and_serves_the_image(engine: Engine, base_image: str, function_image: str, database_url: str,
                                              schema: str, db: Any, request: pytest.FixtureRequest) -> None:
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

        second = json.loads(invoke(url, "events/trigger-etl.json").split("\n", 1)[1])
        assert second["run_id"] == summary["run_id"] + 1
        assert features_rows(db, schema) == EXPECTED  # replaced, not appended: still one row per user

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
