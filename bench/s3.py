"""What reading from S3 costs the job: data set L from the local S3 server (moto, over HTTP on
loopback) and from disk, in the same run, beside a plain pyarrow read of the same three objects from
each (what moto itself costs).  Each measurement is a process of its own (wall time, peak RSS).

    python bench/s3.py [--data bench/out/L] [--rounds 3] [--database-url postgresql://postgres@127.0.0.1:5432/test]

Reports the job's extra time from S3 (S3 run - disk run) against the plain read's (S3 read - disk
read): the target is at most 1.3x, and a peak RSS within +20% of the disk run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUCKET, PREFIX = "bench-data", "L"

CHILD = r"""
import json, os, resource, sys, time
mode, what = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "job":
    from etl_core import pipeline
    from etl_core.config import Settings
    summary = pipeline.run(Settings.from_env(os.environ), pipeline.Trigger(force=True))
    assert summary["status"] == "succeeded", summary
else:
    import pyarrow.fs as pafs
    if what == "s3":
        fs = pafs.S3FileSystem(endpoint_override=os.environ["DATA_S3_ENDPOINT"].split("://")[1], scheme="http",
                               region="us-east-1")
        base = os.environ["DATA_URL"].removeprefix("s3://").rstrip("/")
    else:
        fs, base = pafs.LocalFileSystem(), os.environ["DATA_DIR"]
    for name in ("users.csv", "compounds.csv", "user_experiments.csv"):
        with fs.open_input_stream(f"{base}/{name}", buffer_size=8 << 20) as stream:
            while stream.read(1 << 20):
                pass
print(json.dumps({"seconds": time.perf_counter() - start,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(mode: str, what: str, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, what], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "out" / "L")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.helpers import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.s3server", "--port", str(port), "--upload",
                               str(args.data.resolve()), f"s3://{BUCKET}/{PREFIX}/"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        endpoint = server.stdout.readline().strip()  # printed once the set is uploaded
        base = {**os.environ, "DATABASE_URL": args.database_url, "DB_SCHEMA": "bench_s3",
                "ETL_METRICS_NAMESPACE": "", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "AWS_LAMBDA_LOG_LEVEL": "ERROR"}
        envs = {"disk": {**base, "DATA_DIR": str(args.data.resolve())},
                "s3": {**base, "DATA_URL": f"s3://{BUCKET}/{PREFIX}/", "DATA_S3_ENDPOINT": endpoint}}
        results: dict[str, list[dict[str, float]]] = {}
        measure("job", "disk", envs["disk"])  # warm-up: tables, page cache
        for _ in range(args.rounds):
            for mode in ("job", "read"):
                for what in ("disk", "s3"):
                    results.setdefault(f"{mode}-{what}", []).append(measure(mode, what, envs[what]))
    finally:
        server.terminate()
        server.wait()
    median = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "rss_mb")} for k, v in results.items()}
    job_extra = median["job-s3"]["seconds"] - median["job-disk"]["seconds"]
    read_extra = median["read-s3"]["seconds"] - median["read-disk"]["seconds"]
    rss = median["job-s3"]["rss_mb"] / median["job-disk"]["rss_mb"]
    for key, value in median.items():
        print(f"{key:10s} {value['seconds']:7.2f} s  peak RSS {value['rss_mb']:7.0f} MB")
    print(f"extra time from S3: job {job_extra:.2f} s, plain read {read_extra:.2f} s: "
          f"{job_extra / read_extra:.2f}x (target <= 1.3x)")
    print(f"peak RSS of the job from S3: {rss:.2f}x the disk run's (target <= 1.2x)")
    print(json.dumps({"median": median, "rounds": args.rounds, "job_extra": job_extra, "read_extra": read_extra}))


if __name__ == "__main__":
    main()
