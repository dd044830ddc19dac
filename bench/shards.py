"""The Step Functions Distributed Map, simulated on this machine: several Lambda Runtime Interface
Emulators, each in front of this same function (awslambdaric, handler.lambda_function.handler), take the
plan's count-shard events, as many at a time as there are emulators; then the reduce.  Step Functions
runs the Map in AWS (template.yaml's ShardedRun); here only this driver stands in for it.

    python bench/shards.py --data bench/out/L --shards 8 --workers 2 --schema bench_shards_l
    python bench/shards.py --data bench/out/L --shards 8 --workers 2 --compare bench_ours_l

Prints one JSON line: the plan, each shard's seconds, the reduce's, the whole, and (--compare) whether
the table equals another schema's features table (user_id, name, totals, ties, their ids, the average
to 9 places).  The emulator binary is build.sh's (.cache/rie, fetched from the aws-sam-cli wheel).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RIE = ROOT / ".cache" / "rie" / "aws-lambda-rie"
SAM_CLI_VERSION = "1.170.0"  # build.sh's
INVOKE = "/2015-03-31/functions/function/invocations"


def rie_binary() -> Path:
    """The emulator, fetched as build.sh fetches it (from the aws-sam-cli wheel) when it is not there yet."""
    if not RIE.exists():
        import glob
        import platform
        import zipfile

        wheels = RIE.parent / "wheel"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
                        f"aws-sam-cli=={SAM_CLI_VERSION}"], check=True)
        name = "aws-lambda-rie-arm64" if platform.machine() in ("aarch64", "arm64") else "aws-lambda-rie-x86_64"
        wheel = glob.glob(str(wheels / "aws_sam_cli-*.whl"))[0]
        RIE.write_bytes(zipfile.ZipFile(wheel).read("samcli/local/rapid/" + name))
        RIE.chmod(0o755)
    return RIE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int, seconds: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the emulator on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the emulator on port {port} did not start within {seconds} s")


@contextlib.contextmanager
def emulators(count: int, env: dict[str, str], python: str = sys.executable) -> Iterator[list[int]]:
    """``count`` emulators on free loopback ports, each with its own runtime process; stopped on exit."""
    binary = rie_binary()
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []
    ports = []
    try:
        for _ in range(count):
            port = free_port()
            log = tempfile.TemporaryFile()
            proc = subprocess.Popen(
                # each its own Runtime API port too (the emulator's default, 9001, is one for all)
                [str(binary), "--runtime-interface-emulator-address", f"127.0.0.1:{port}",
                 "--runtime-api-address", f"127.0.0.1:{free_port()}", python, "-m",
                 "awslambdaric", "handler.lambda_function.handler"],
                env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            procs.append((proc, log))
            try:
                wait_for(port, 20, proc)
            except RuntimeError as exc:
                log.seek(0)
                raise RuntimeError(f"{exc}: {log.read().decode(errors='replace')[-2000:]}") from None
            ports.append(port)
        yield ports
    finally:
        for proc, log in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def invoke(port: int, event: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """One invocation; the function's answer, or RuntimeError with its error document."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{INVOKE}", data=json.dumps(event).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - loopback only
        body = json.loads(answer.read() or b"null")
    if isinstance(body, dict) and "errorType" in body:
        raise RuntimeError(f"{event.get('action')}: {body['errorType']}: {body.get('errorMessage')}")
    return body if isinstance(body, dict) else {"answer": body}


def run_map(ports: list[int], batch: str, shards: int) -> dict[str, Any]:
    """The state machine's three states: plan on one emulator, the Map over all (as many shards at a time
    as there are emulators: each serves one invocation at a time), the reduce on one."""
    started = time.perf_counter()
    plan = invoke(ports[0], {"action": "plan-shards", "batch": batch, "shards": shards})
    planned = time.perf_counter()
    free: list[int] = list(ports)

    def one(event: dict[str, Any]) -> dict[str, Any]:
        port = free.pop()
        try:
            return invoke(port, event)
        finally:
            free.append(port)

    with ThreadPoolExecutor(len(ports)) as pool:
        counted = list(pool.map(one, plan["shards"]))
    mapped = time.perf_counter()
    reduced = invoke(ports[0], {"action": "reduce-shards", "batch": batch})
    done = time.perf_counter()
    return {"batch": batch, "shards": len(plan["shards"]), "workers": len(ports),
            "seconds": {"plan": round(planned - started, 3), "map": round(mapped - planned, 3),
                        "reduce": round(done - mapped, 3), "total": round(done - started, 3)},
            "shard_seconds": [c["seconds"] for c in counted], "run_id": reduced["run_id"],
            "users_written": reduced["users_written"], "status": reduced["status"]}


COMPARED = ("user_id", "user_name", "total_experiments", "most_common_compounds", "most_common_compound_ids",
            "round(average_experiments::numeric, 9)")


def same_table(url: str, a: str, b: str) -> bool:
    """Whether two schemas' features tables hold the same rows (all but run_id)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import _common
    import pg8000.native

    conn = pg8000.native.Connection(**_common.pg_params(url))
    try:
        cols = ", ".join(COMPARED)
        diff = conn.run(f'SELECT count(*) FROM ((SELECT {cols} FROM "{a}".user_features EXCEPT ALL '
                        f'SELECT {cols} FROM "{b}".user_features) UNION ALL (SELECT {cols} FROM "{b}".user_features '
                        f'EXCEPT ALL SELECT {cols} FROM "{a}".user_features)) d')
        return int(diff[0][0]) == 0
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="emulators (shards counted at a time)")
    parser.add_argument("--schema", default="bench_shards")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--compare", help="a schema whose features table the result must equal")
    args = parser.parse_args()
    env = {"DATABASE_URL": args.database_url, "DB_SCHEMA": args.schema, "DATA_DIR": str(args.data.resolve()),
           "ETL_GUARD_MIN_SHARE": "0", "ETL_METRICS_NAMESPACE": ""}
    with emulators(args.workers, env) as ports:
        result = run_map(ports, f"bench-{int(time.time())}", args.shards)
    if args.compare:
        result["same_as"] = {args.compare: same_table(args.database_url, args.schema, args.compare)}
    print(json.dumps(result))
    return 0 if result.get("same_as", {}).get(args.compare, True) else 1


if __name__ == "__main__":
    sys.exit(main())
