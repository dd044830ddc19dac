"""S3 is a second source: the job reads a lab's exports from a bucket, started by the S3 notification
of a set's manifest, against a real S3 endpoint over HTTP (moto's server on loopback)."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from etl_core.config import Settings
from etl_core.errors import BadRequest, RunInProgress, SourceChanged, SourceForbidden, SourceUnavailable
from etl_core.pipeline import ContractViolation
from etl_core.sources import source as source_module
from handler import lambda_function
from tests.conftest import REFERENCE_DATA, ROOT
from tests.helpers import EXPECTED, features_dump, features_rows, free_port
from tests.s3server import MANIFEST, LocalS3, put, upload_set
from tests.test_api import installed

S3_PUT = json.loads((ROOT / "events" / "s3-put.json").read_text())


@pytest.fixture(scope="module")
def server() -> Iterator[LocalS3]:
    started = LocalS3().start()
    yield started
    started.stop()


@pytest.fixture
def fs(server: LocalS3) -> pafs.S3FileSystem:
    return server.fs()


@pytest.fixture
def bucket(fs: pafs.S3FileSystem) -> str:
    name = f"lab-{uuid.uuid4().hex[:12]}"
    fs.create_dir(name)
    return name


@pytest.fixture
def s3_settings(env: dict[str, str], server: LocalS3, bucket: str) -> Settings:
    return Settings.from_env({**env, **server.env(f"s3://{bucket}/exports/")})


def notification(bucket: str, *keys: str) -> dict[str, Any]:
    """The event S3 sends (events/s3-put.json's shape) for ``keys``, URL-encoded as S3 encodes them."""
    from urllib.parse import quote_plus

    event = copy.deepcopy(S3_PUT)
    template = event["Records"][0]
    event["Records"] = []
    for key in keys:
        record = copy.deepcopy(template)
        record["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
        record["s3"]["object"]["key"] = quote_plus(key, safe="/")
        event["Records"].append(record)
    return event


def runs(db: Any, schema: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in db.run(f'SELECT id, status, error->>\'code\' FROM "{schema}".etl_runs ORDER BY id')]


def test_the_challenge_set_in_a_bucket_loads_once_per_change(
        s3_settings: Settings, fs: pafs.S3FileSystem, bucket: str, db: Any, schema: str) -> None:
    upload_set(fs, REFERENCE_DATA, f"{bucket}/exports", etags=True)
    event = notification(bucket, f"exports/{MANIFEST}")
    with installed(s3_settings):
        first = lambda_function.handler(event, None)
        assert (first["status"], first["users_written"]) == ("succeeded", 10)
        assert features_rows(db, schema) == EXPECTED
        users = first["inputs"]["users.csv"]
        assert users["key"] == f"s3://{bucket}/exports/users.csv" and users["etag"] and users["size"] > 0

        again = lambda_function.handler(event, None)  # the same event twice (at-least-once delivery)
        assert (again["status"], again["same_as"]) == ("unchanged", first["run_id"])

        # a second upload of the same set (new manifest, same files): one load in all
        upload_set(fs, REFERENCE_DATA, f"{bucket}/exports", etags=True)
        assert lambda_function.handler(event, None)["status"] == "unchanged"

        # a changed object is loaded
        changed = (REFERENCE_DATA / "users.csv").read_bytes().replace(b"Alice", b"Alicia")
        put(fs, f"{bucket}/exports/users.csv", changed)
        put(fs, f"{bucket}/exports/{MANIFEST}", json.dumps({"files": ["users.csv", "compounds.csv",
                                                                      "user_experiments.csv"]}).encode())
        loaded = lambda_function.handler(event, None)
        assert loaded["status"] == "succeeded" and loaded["inputs"]["users.csv"]["etag"] != users["etag"]
        assert features_rows(db, schema)[0][0] == "Alicia"
        record = lambda_function.handler({"action": "get-run", "run_id": loaded["run_id"]}, None)
        assert record["data_dir"] == f"s3://{bucket}/exports/" and record["fingerprint"] == loaded["fingerprint"]
    assert [(s, c) for _, s, c in runs(db, schema)] == [("succeeded", None), ("unchanged", None),
                                                         ("unchanged", None), ("succeeded", None)]


def test_an_event_for_a_csv_file_alone_starts_nothing(s3_settings: Settings, fs: pafs.S3FileSystem, bucket: str,
                                                      db: Any, schema: str) -> None:
    upload_set(fs, REFERENCE_DATA, f"{bucket}/exports")
    with installed(s3_settings):
        reply = lambda_function.handler(notification(bucket, "exports/users.csv"), None)
        assert reply["status"] == "ignored" and reply["objects"] == [f"s3://{bucket}/exports/users.csv"]
        assert lambda_function.handler({"action": "list-runs"}, None)["runs"] == []


def test_keys_are_decoded_and_a_sub_prefix_is_a_set_of_its_own(s3_settings: Settings, fs: pafs.S3FileSystem,
                                                               bucket: str, db: Any, schema: str) -> None:
    upload_set(fs, REFERENCE_DATA, f"{bucket}/exports/lab one/2026+11")
    with installed(s3_settings):
        # two records for one set (the manifest written twice): one run
        summary = lambda_function.handler(notification(bucket, f"exports/lab one/2026+11/{MANIFEST}",
                                                       f"exports/lab one/2026+11/{MANIFEST}"), None)
        assert summary["status"] == "succeeded"
        assert summary["inputs"]["users.csv"]["key"] == f"s3://{bucket}/exports/lab one/2026+11/users.csv"
    assert features_rows(db, schema) == EXPECTED


@pytest.mark.parametrize("key", ["elsewhere/_manifest.json", "other-bucket"])
def test_an_event_outside_the_data_url_is_refused(s3_settings: Settings, bucket: str, key: str) -> None:
    event = notification("another-bucket", f"exports/{MANIFEST}") if key == "other-bucket" else \
        notification(bucket, key)
    with installed(s3_settings), pytest.raises(BadRequest, match="not below DATA_URL"):
        lambda_function.handler(event, None)


@pytest.mark.parametrize("data", ["../other", "/exports", "s3://another-bucket/exports", "a/../../b", ".", "sub/.",
                                  "./sub"])
def test_a_trigger_may_name_only_a_prefix_below_the_data_url(s3_settings: Settings, data: str) -> None:
    with installed(s3_settings), pytest.raises(BadRequest):
        lambda_function.handler({"action": "trigger-etl", "data": data}, None)


def test_an_event_that_meets_a_run_in_progress_is_a_function_error(
        s3_settings: Settings, fs: pafs.S3FileSystem, bucket: str, db: Any, schema: str) -> None:
    """Lambda retries an asynchronous event whose invocation fails: RunInProgress is such a failure."""
    upload_set(fs, REFERENCE_DATA, f"{bucket}/exports")
    db.run("SELECT pg_advisory_lock(hashtext(:n))", n=f"experiment-etl:{schema}")
    try:
        with installed(s3_settings), pytest.raises(RunInProgress):
            lambda_function.handler(notification(bucket, f"exports/{MANIFEST}"), None)
    finally:
        db.run("SELECT pg_advisory_unlock(hashtext(:n))", n=f"experiment-etl:{schema}")
    with installed(s3_settings):  # the retry
        assert lambda_function.handler(notification(bucket, f"exports/{MANIFEST}"), None)["status"] == "succeeded"


class _Swapping:
    """A stream that replaces its object on S3 after its first read: the later ranged GETs of the same
    stream then read the new object, with no error from S3 or pyarrow."""

    def __init__(self, stream: pa.NativeFile, swap: Any) -> None:
        self.stream, self.swap, self.reads = stream, swap, 0

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        data = self.stream.read(n)
        if self.reads == 1:
            self.swap()
        return data

    def close(self) -> None:
        self.stream.close()

    @property
    def closed(self) -> bool:
        return self.stream.closed


def test_an_object_replaced_during_a_pass_fails_the_run_and_loads_nothing(
        s3_settings: Settings, fs: pafs.S3FileSystem, bucket: str, db: Any, schema: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    upload_set(fs, REFERENCE_DATA, f"{bucket}/exports")
    with installed(s3_settings):
        lambda_function.handler({"action": "trigger-etl"}, None)
    before = features_dump(db, schema)
    experiments = (REFERENCE_DATA / "user_experiments.csv").read_bytes()
    put(fs, f"{bucket}/exports/user_experiments.csv", experiments + b"99,1,1,5\r\n")  # a change: it loads
    opened = []
    real_open = source_module.S3Source.open

    def swapping_open(self: source_module.S3Source, name: str) -> pa.NativeFile:
        stream = real_open(self, name)
        opened.append(name)
        if name == "user_experiments.csv" and opened.count(name) == 2:  # the fast path's pass
            return pa.PythonFile(_Swapping(stream, lambda: put(fs, f"{bucket}/exports/{name}", experiments)),
                                 mode="r")
        return stream

    monkeypatch.setattr(source_module.S3Source, "open", swapping_open)
    with installed(s3_settings), pytest.raises(SourceChanged) as info:
        lambda_function.handler({"action": "trigger-etl"}, None)
    error = json.loads(str(info.value))
    assert error["code"] == "source_changed" and error["file"] == "user_experiments.csv"
    assert features_dump(db, schema) == before
    assert runs(db, schema)[-1][1:] == ("failed", "source_changed")


def manifest_of(*items: Any) -> bytes:
    return json.dumps({"files": list(items)}).encode()


@pytest.mark.parametrize(("case", "code", "named"), [
    ("no-bucket", "contract_violation", MANIFEST),
    ("no-manifest", "contract_violation", MANIFEST),
    ("missing-object", "contract_violation", "users.csv"),
    ("extra-key", "bad_manifest", MANIFEST),
    ("lacks-a-key", "bad_manifest", MANIFEST),
    ("not-json", "bad_manifest", MANIFEST),
    ("stale-etag", "source_changed", "users.csv"),
    ("not-utf8", "contract_violation", "users.csv"),
])
def test_bad_sets_are_clear_errors_recorded_and_the_features_untouched(
        env: dict[str, str], server: LocalS3, fs: pafs.S3FileSystem, bucket: str, db: Any, schema: str,
        case: str, code: str, named: str) -> None:
    base = f"{bucket}/exports"
    upload_set(fs, REFERENCE_DATA, base)
    settings = Settings.from_env({**env, **server.env(f"s3://{bucket}/exports/")})
    with installed(settings):
        lambda_function.handler({"action": "trigger-etl"}, None)
    before = features_dump(db, schema)
    names = ["users.csv", "compounds.csv", "user_experiments.csv"]
    if case == "no-bucket":
        settings = Settings.from_env({**env, **server.env(f"s3://no-such-{bucket}/exports/")})
    elif case == "no-manifest":
        fs.delete_file(f"{base}/{MANIFEST}")
    elif case == "missing-object":
        fs.delete_file(f"{base}/users.csv")
    elif case == "extra-key":
        put(fs, f"{base}/{MANIFEST}", manifest_of(*names, "notes.txt"))
    elif case == "lacks-a-key":
        put(fs, f"{base}/{MANIFEST}", manifest_of(*names[1:]))
    elif case == "not-json":
        put(fs, f"{base}/{MANIFEST}", b"users.csv\ncompounds.csv\n")
    elif case == "stale-etag":
        put(fs, f"{base}/{MANIFEST}", manifest_of({"key": "users.csv", "etag": '"0123"'}, *names[1:]))
    elif case == "not-utf8":
        put(fs, f"{base}/users.csv", "user_id,name,email,signup_date\n1,Zoë,z@x,2023-01-01\n".encode("utf-16"))
    with installed(settings), pytest.raises(Exception) as info:
        lambda_function.handler({"action": "trigger-etl"}, None)
    error = json.loads(str(info.value))
    assert error["code"] == code, error
    assert named in json.dumps(error)
    assert features_dump(db, schema) == before
    assert runs(db, schema)[-1][1:] == ("failed", code)
    if code == "contract_violation":
        assert isinstance(info.value, ContractViolation)
        assert error["violations"]["first"][0]["file"] == named


def test_wrong_credentials_are_503_source_forbidden(env: dict[str, str], server: LocalS3, fs: pafs.S3FileSystem,
                                                  bucket: str, db: Any, schema: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import settings as moto_settings
    from moto.core.authorization import ActionAuthenticatorMixin

    upload_set(fs, REFERENCE_DATA, f"{bucket}/exports")
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys from now on
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    settings = Settings.from_env({**env, **server.env(f"s3://{bucket}/exports/")})
    with installed(settings), pytest.raises(SourceForbidden) as info:
        lambda_function.handler({"action": "trigger-etl"}, None)
    error = json.loads(str(info.value))
    assert error["code"] == "source_forbidden" and "not-the-secret" not in str(info.value)
    assert "AKIAWRONG" not in str(info.value)
    assert runs(db, schema)[-1][1:] == ("failed", "source_forbidden")


def test_an_endpoint_that_does_not_answer_is_503(env: dict[str, str], db: Any, schema: str) -> None:
    settings = Settings.from_env({**env, "DATA_URL": "s3://lab/exports/",
                                  "DATA_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}", "AWS_REGION": "us-east-1"})
    with installed(settings), pytest.raises(SourceUnavailable) as info:
        lambda_function.handler({"action": "trigger-etl"}, None)
    assert json.loads(str(info.value))["code"] == "source_unavailable"
    assert runs(db, schema)[-1][1:] == ("failed", "source_unavailable")


def test_the_http_api_answers_source_errors_with_their_statuses() -> None:
    from handler.app import status_for

    assert [status_for(c) for c in (SourceChanged, SourceUnavailable, SourceForbidden)] == [409, 503, 503]


