"""What DB_SECRET_ID adds to a process's first connect: importing botocore, making the Secrets Manager
client, and one GetSecretValue round trip, against moto's server on loopback (tests/s3server.py).

Each of ``--processes`` fresh Python processes times, in order: ``import botocore.session`` (and its
Config), creating the client (botocore reads the service's model and endpoint rules), the first
GetSecretValue, and a second one (what a re-read after a rotation costs).  Then, in another set of
fresh processes that have imported what a run has when it first connects (pyarrow, pg8000, the
pipeline), the job's own path: ``etl_core.store.secret.login`` for the first time.  Medians
and ranges in milliseconds.  A real AWS endpoint adds its network round trip (and TLS) to the calls;
the imports and the client are the same.

    .venv/bin/python bench/secret.py --processes 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3server import ENVIRONMENT, REGION, LocalS3  # noqa: E402 - after the path is set

# the image has no awscrt; the test venv has it (through aws-sam-cli), and botocore would import it (80 ms)
NO_CRT = "import sys; sys.modules['awscrt'] = None\n"
BOTOCORE = NO_CRT + """
import json, sys, time
t0 = time.perf_counter()
import botocore.session
from botocore.config import Config
t1 = time.perf_counter()
client = botocore.session.get_session().create_client(
    "secretsmanager", region_name=sys.argv[2], endpoint_url=sys.argv[1],
    config=Config(connect_timeout=5, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 3}))
t2 = time.perf_counter()
client.get_secret_value(SecretId=sys.argv[3])
t3 = time.perf_counter()
client.get_secret_value(SecretId=sys.argv[3])
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "client": t2 - t1, "first_call": t3 - t2, "second_call": t4 - t3,
                  "total": t3 - t0}))
"""

OURS = NO_CRT + """
import json, sys, time
import pg8000.native, pyarrow  # what a run has imported when it first connects
from etl_core import pipeline
from etl_core.store import postgres
from etl_core.config import Settings
settings = Settings.from_env({"DB_SECRET_ID": sys.argv[3], "DB_SECRET_ENDPOINT": sys.argv[1],
                              "AWS_REGION": sys.argv[2]})
t0 = time.perf_counter()
from etl_core.store import secret
secret.login(settings.db)
t1 = time.perf_counter()
print(json.dumps({"login": t1 - t0}))
"""


def runs(script: str, args: list[str], n: int, env: dict[str, str]) -> list[dict[str, float]]:
    found = []
    for _ in range(n):
        done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True, timeout=120)
        found.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return found


def show(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"{name:<28} median {statistics.median(ms):7.1f} ms   range {min(ms):6.1f}-{max(ms):6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=10)
    args = parser.parse_args()
    server = LocalS3().start()
    try:
        import os

        server.client("secretsmanager").create_secret(
            Name="bench/db", SecretString=json.dumps({"username": "etl", "password": "x" * 32, "host": "db",
                                                      "port": 5432, "dbname": "lab"}))
        env = {**os.environ, **ENVIRONMENT, "PYTHONDONTWRITEBYTECODE": "0"}
        argv = [server.endpoint, REGION, "bench/db"]
        raw = runs(BOTOCORE, argv, args.processes, env)
        ours = runs(OURS, argv, args.processes, env)
    finally:
        server.stop()
    print(f"{args.processes} fresh processes each, {sys.version.split()[0]}, moto's server on 127.0.0.1")
    for key in ("import", "client", "first_call", "second_call", "total"):
        show(f"botocore {key}", [r[key] for r in raw])
    show("etl_core secret.login (first)", [r["login"] for r in ours])


if __name__ == "__main__":
    main()
