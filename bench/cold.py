"""Cold starts of this checkout's image: a new container each time, one HTTP-triggered run each.

Builds the image from the Dockerfile (as build.sh does), then ``--starts`` times: starts it behind its
emulator on the host network, each time with a schema of its own (so that every first invocation
is a full load of the image's data, the challenge's, never an ``unchanged`` answer), invokes the
HTTP API event for GET /trigger-etl once, then once more (warm), and removes the container.  It
prints, per start and as medians: the emulator's INIT REPORT (the runtime client and the handler
module), the first invocation's REPORT duration, their sum (the figure the cold-start target is
about: moving imports from one to the other gains nothing), the warm invocation's, and the
container's peak memory (its cgroup's).

    .venv/bin/python bench/cold.py --starts 10

Needs podman (or docker, ``--engine docker``) and the base image the container tests build
(tests/containers.py: ``localhost/debian-python:bookworm``, made once per machine by the first
container test run).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import time

from warm import ROOT, add_engine_options, build, dirty, engine_of, free_ports, invoke, listening, sh

_INIT = re.compile(r"INIT REPORT\(durationMs: ([\d.]+)\)")
_REPORT = re.compile(r"^REPORT RequestId: \S+\s+(?:Init Duration: [\d.]+ ms\s+)?Duration: ([\d.]+) ms", re.M)
_PEAKS = ("/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes")


def one_start(engine: list[str], flags: list[str], image: str, database_url: str, event: bytes,
              schema: str) -> dict[str, float]:
    port, api_port = free_ports(2)
    name = f"experiment-etl-cold-{port}"
    try:
        sh(*engine, "run", "-d", *flags, "--name", name, "--network", "host",
           "-e", f"DATABASE_URL={database_url}", "-e", f"DB_SCHEMA={schema}",
           "--entrypoint", "/usr/local/bin/aws-lambda-rie", image,
           "--runtime-interface-emulator-address", f"127.0.0.1:{port}",
           "--runtime-api-address", f"127.0.0.1:{api_port}",
           "python3", "-m", "awslambdaric", "handler.lambda_function.handler")
        deadline = time.monotonic() + 30
        while not listening(port):
            if time.monotonic() > deadline:
                raise SystemExit(f"the container did not start:\n{sh(*engine, 'logs', name)}")
            time.sleep(0.05)
        first_wall = invoke(port, event)
        warm_wall = invoke(port, event)
        logs = subprocess.run([*engine, "logs", name], capture_output=True, text=True, check=True)
        text = logs.stdout + logs.stderr
        init, reports = _INIT.search(text), [float(d) for d in _REPORT.findall(text)]
        if init is None or len(reports) != 2:
            raise SystemExit(f"expected an INIT REPORT and two REPORT lines:\n{text[-3000:]}")
        peak = 0.0
        for path in _PEAKS:
            done = subprocess.run([*engine, "exec", name, "cat", path], capture_output=True, text=True, check=False)
            if done.returncode == 0 and done.stdout.strip().isdigit():
                peak = int(done.stdout) / 2**20
                break
        return {"init_ms": float(init.group(1)), "first_ms": reports[0], "cold_ms": float(init.group(1)) + reports[0],
                "warm_ms": reports[1], "first_wall_ms": first_wall, "warm_wall_ms": warm_wall, "peak_mib": peak}
    finally:
        subprocess.run([*engine, "rm", "-f", name], capture_output=True, check=False)
        subprocess.run(["psql", database_url, "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                       capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=10, help="cold starts, each in a new container")
    add_engine_options(parser)
    args = parser.parse_args()
    engine, flags, event = engine_of(args)
    commit = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD").strip() + dirty()
    image = "localhost/experiment-etl:cold-head"
    print(f"building {image} ({commit})", flush=True)
    build(engine, flags, args.base_image, ROOT, image)
    rows = []
    for start in range(args.starts):
        load = os.getloadavg()[0]
        row = one_start(engine, flags, image, args.database_url, event, f"cold_{os.getpid()}_{start}")
        rows.append(row)
        print(f"start {start + 1}/{args.starts} (load {load:.2f}): INIT {row['init_ms']:.0f} ms + first "
              f"{row['first_ms']:.0f} ms = {row['cold_ms']:.0f} ms; warm {row['warm_ms']:.1f} ms; "
              f"peak {row['peak_mib']:.0f} MiB", flush=True)
    print(f"\n{args.starts} cold starts of {image} ({commit}), medians (ranges):")
    for key, label in (("init_ms", "INIT REPORT"), ("first_ms", "first invocation (REPORT)"),
                       ("cold_ms", "INIT + first invocation"), ("warm_ms", "second (warm) invocation (REPORT)"),
                       ("first_wall_ms", "first invocation, client wall"), ("peak_mib", "cgroup peak memory, MiB")):
        values = [r[key] for r in rows]
        print(f"  {label}: {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")


if __name__ == "__main__":
    main()
