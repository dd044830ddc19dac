"""Warm invocations of two images, interleaved: this checkout's and another commit's (default: main).

Builds both images from their Dockerfiles (the other from ``git archive REF``), starts each behind its
emulator on the host network against the same PostgreSQL (each in a schema of its own), warms them,
then invokes them in turn, ``--rounds`` times each (the order flipped every round), with the HTTP API
event for GET /trigger-etl on the image's own data (the challenge's).  It prints the medians of the
emulator's REPORT durations and of the client's wall time, and their differences.

    .venv/bin/python bench/warm.py --base main --rounds 25

Needs podman (or docker, ``--engine docker``) and a base image; the defaults are those of the
container tests (tests/containers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INVOCATIONS = "/2015-03-31/functions/function/invocations"
PODMAN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def sh(*cmd: str, **kwargs: object) -> str:
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return str(done.stdout)


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports that nothing listens on now (held together while chosen)."""
    held = [socket.socket() for _ in range(count)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def build(engine: list[str], flags: list[str], base_image: str, context: Path, tag: str) -> None:
    sh(*engine, "build", *flags, "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}", "-t", tag,
       str(context), env={**os.environ, "BUILDAH_FORMAT": "docker"})


def invoke(port: int, event: bytes) -> float:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{INVOCATIONS}", data=event,
                                     headers={"content-type": "application/json"}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - loopback
        reply = json.load(response)
    spent = (time.perf_counter() - started) * 1000
    if reply.get("statusCode") != 200:
        raise SystemExit(f"invocation on port {port} failed: {reply}")
    return spent


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options bench/warm.py and bench/cold.py share: engine, base image, database."""
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--base-image", default="localhost/debian-python:bookworm")
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/test"))


def engine_of(args: argparse.Namespace) -> tuple[list[str], list[str], bytes]:
    """The engine's command, its flags, and the HTTP API event for GET /trigger-etl."""
    return [args.engine], PODMAN_FLAGS if args.engine == "podman" else [], (
        ROOT / "events" / "trigger-etl.json").read_bytes()


def dirty() -> str:
    return " (with uncommitted changes)" if sh("git", "-C", str(ROOT), "status", "--porcelain").strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="the commit to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=25, help="measured invocations of each image")
    parser.add_argument("--warmup", type=int, default=3, help="invocations of each before measuring")
    add_engine_options(parser)
    args = parser.parse_args()
    engine, flags, event = engine_of(args)
    base_commit = sh("git", "-C", str(ROOT), "rev-parse", "--short", args.base).strip()
    head_commit = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD").strip()
    changed = dirty()
    images = {"base": f"localhost/experiment-etl:warm-{base_commit}", "head": "localhost/experiment-etl:warm-head"}
    with tempfile.TemporaryDirectory(prefix="warm-") as tmp:
        archive = Path(tmp) / "base.tar"
        sh("git", "-C", str(ROOT), "archive", "-o", str(archive), args.base)
        (Path(tmp) / "base").mkdir()
        sh("tar", "-xf", str(archive), "-C", str(Path(tmp) / "base"))
        print(f"building {images['base']} ({args.base} = {base_commit}) and {images['head']} ({head_commit}{changed})")
        build(engine, flags, args.base_image, Path(tmp) / "base", images["base"])
    build(engine, flags, args.base_image, ROOT, images["head"])

    found_ports = free_ports(2 * len(images))
    ports = dict(zip(images, found_ports, strict=False))
    # the emulator's own Runtime API listens on 127.0.0.1:9001 unless told otherwise: on the host
    # network each container needs a port of its own for it too
    api_ports = dict(zip(images, found_ports[len(images):], strict=True))
    names = {side: f"experiment-etl-warm-{side}-{ports[side]}" for side in images}
    try:
        for side, image in images.items():
            sh(*engine, "run", "-d", *flags, "--name", names[side], "--network", "host",
               "-e", f"DATABASE_URL={args.database_url}", "-e", f"DB_SCHEMA=warm_{side}",
               "--entrypoint", "/usr/local/bin/aws-lambda-rie", image,
               "--runtime-interface-emulator-address", f"127.0.0.1:{ports[side]}",
               "--runtime-api-address", f"127.0.0.1:{api_ports[side]}",
               "python3", "-m", "awslambdaric", "handler.lambda_function.handler")
        for side in images:
            deadline = time.monotonic() + 30
            while not listening(ports[side]):
                if time.monotonic() > deadline:
                    logs = subprocess.run([*engine, "logs", names[side]], capture_output=True, text=True, check=False)
                    raise SystemExit(f"{side} did not start:\n{logs.stdout}{logs.stderr}")
                time.sleep(0.2)
            for _ in range(args.warmup):
                invoke(ports[side], event)
        wall: dict[str, list[float]] = {side: [] for side in images}
        for round_ in range(args.rounds):
            order = list(images) if round_ % 2 == 0 else list(images)[::-1]
            for side in order:
                wall[side].append(invoke(ports[side], event))
        reported = {}
        for side in images:
            done = subprocess.run([*engine, "logs", names[side]], capture_output=True, text=True, check=True)
            durations = [float(d) for d in re.findall(r"^REPORT RequestId: \S+\s+(?:Init Duration: [\d.]+ ms\s+)?"
                                                      r"Duration: ([\d.]+) ms", done.stdout + done.stderr, re.M)]
            reported[side] = durations[-args.rounds:]
            if len(reported[side]) != args.rounds:
                raise SystemExit(f"{side}: {len(durations)} REPORT lines for {args.rounds + args.warmup} invocations")
    finally:
        for side in images:
            subprocess.run([*engine, "rm", "-f", names[side]], capture_output=True, check=False)
        for side in images:
            subprocess.run(["psql", args.database_url, "-qc", f"DROP SCHEMA IF EXISTS warm_{side} CASCADE"],
                           capture_output=True, check=False)
    print(f"{args.rounds} warm invocations of each, interleaved, after {args.warmup} to warm up")
    for label, found in (("emulator REPORT Duration", reported), ("client wall time", wall)):
        base, head = statistics.median(found["base"]), statistics.median(found["head"])
        print(f"{label}: median {base:.2f} ms at {args.base} ({base_commit}), {head:.2f} ms at HEAD ({head_commit}"
              f"{changed}): {head - base:+.2f} ms; ranges {min(found['base']):.1f}-{max(found['base']):.1f} and "
              f"{min(found['head']):.1f}-{max(found['head']):.1f} ms")


if __name__ == "__main__":
    main()
