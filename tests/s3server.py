"""A local S3 endpoint for tests, the benchmark and ``build.sh --local``: moto's server on 127.0.0.1
(a free port), spoken to over HTTP by pyarrow's S3FileSystem exactly as AWS would be.  Nothing leaves
loopback: the region is set, the EC2 metadata lookup is off, and the credentials are dummies.

    python -m tests.s3server [--port N] [--upload DIR s3://bucket/prefix/]   # serves until interrupted
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from tests.helpers import free_port

REGION = "us-east-1"
ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
               "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}
FILES = ("users.csv", "compounds.csv", "user_experiments.csv")
MANIFEST = "_manifest.json"


class LocalS3:
    """moto's server in a thread of this process: S3, and every other service moto has (the tests'
    Secrets Manager: ``client("secretsmanager")``)."""

    def __init__(self, port: int | None = None) -> None:
        from moto.server import ThreadedMotoServer

        os.environ.update(ENVIRONMENT)
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> LocalS3:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def fs(self, **options: object) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region=REGION,
                                 allow_bucket_creation=True, **options)  # type: ignore[arg-type]

    def client(self, service: str) -> Any:
        """A botocore client of ``service`` on this server."""
        import botocore.session

        return botocore.session.get_session().create_client(service, region_name=REGION, endpoint_url=self.endpoint)

    def env(self, url: str) -> dict[str, str]:
        """The settings that point the job at ``url`` on this server."""
        return {**ENVIRONMENT, "DATA_URL": url, "DATA_S3_ENDPOINT": self.endpoint}


LocalAws = LocalS3  # the same server, named for what else it serves


def put(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


def upload_set(fs: pafs.FileSystem, directory: Path, base: str, *, etags: bool = False,
               names: Mapping[str, str] | None = None) -> None:
    """The exporter's part: the three files of ``directory`` below ``bucket/prefix`` (``base``), then the
    manifest naming them (with their ETags: MD5s, single-part uploads)."""
    entries = []
    for name in FILES:
        put(fs, f"{base}/{name}", (directory / name).read_bytes())
        entry: dict[str, str] = {"key": (names or {}).get(name, name)}
        if etags:  # as S3 answers it (pyarrow uploads in parts: not the file's MD5)
            stream = fs.open_input_stream(f"{base}/{name}")
            entry["etag"] = stream.metadata()["ETag"].decode()
            stream.close()
        entries.append(entry)
    put(fs, f"{base}/{MANIFEST}", json.dumps({"files": entries}).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upload", nargs=2, metavar=("DIR", "S3_URL"))
    args = parser.parse_args()
    server = LocalS3(args.port or None).start()
    if args.upload:
        directory, url = Path(args.upload[0]), args.upload[1]
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        fs = server.fs()
        fs.create_dir(bucket)
        upload_set(fs, directory, f"{bucket}/{prefix.strip('/')}".rstrip("/"))
    print(server.endpoint, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
