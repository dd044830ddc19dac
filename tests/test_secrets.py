"""The database's login from Secrets Manager (DB_SECRET_ID): moto's server on loopback as the endpoint,
and a PostgreSQL cluster of its own that checks passwords (scram-sha-256; the shared server trusts
127.0.0.1, where any password would do).  A role of the job logs in with the secret's password; the
rotation changes both and the next run of the same process succeeds; every log line, error and answer
of these runs is searched for the secret's value."""

# ruff: noqa: S105, S106 - the passwords here are test values, made up to be searched for

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from pg8000.native import identifier, literal

from etl_core.config import Settings, db_settings
from etl_core.errors import ConfigError, SecretError, SecretUnavailable
from etl_core.service import Service
from etl_core.store import secret
from etl_core.store.db import close_quietly, connect
from handler import lambda_function
from handler.app import status_for
from handler.service import set_service
from tests.conftest import REFERENCE_DATA, throwaway_server
from tests.helpers import free_port
from tests.s3server import REGION, LocalS3

ROLE = "etl_app"
# characters a URL or a shell would mangle: the password goes to the server as it is in the secret
PUNCTUATION = "@:/%?# '\""


def new_password() -> str:
    return f"pw{PUNCTUATION}{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def server() -> Iterator[SimpleNamespace]:
    """A cluster that checks passwords, with the job's role (LOGIN, no superuser) allowed to make schemas."""
    with throwaway_server(password=secrets.token_hex(12)) as url:  # in a URL: no punctuation
        admin = connect(db_settings({"DATABASE_URL": url}))
        password = new_password()
        admin.run(f"CREATE ROLE {identifier(ROLE)} LOGIN PASSWORD {literal(password)}")
        admin.run(f"GRANT CREATE ON DATABASE test TO {identifier(ROLE)}")
        parts = urlsplit(url)
        yield SimpleNamespace(admin=admin, port=parts.port, password=password)
        close_quietly(admin)


@pytest.fixture(scope="module")
def aws() -> Iterator[LocalS3]:
    local = LocalS3().start()
    yield local
    local.stop()


INSTALLED: list[Service] = []


@pytest.fixture(autouse=True)
def fresh_process() -> Iterator[None]:
    """Each test starts as a new process would: nothing read yet."""
    secret.forget()
    yield
    secret.forget()
    set_service(None)
    while INSTALLED:
        INSTALLED.pop().close()


@pytest.fixture
def name(aws: LocalS3) -> str:
    return f"etl/db-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of every logger, DEBUG included, as a runtime at AWS_LAMBDA_LOG_LEVEL=DEBUG would write."""
    caplog.set_level(logging.DEBUG)
    return caplog


def disconnect(server: SimpleNamespace) -> None:
    """End the role's sessions (the job's kept connection), and wait until they are gone: the next
    connect must be a new login."""
    server.admin.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :u", u=ROLE)
    for _ in range(100):
        if not server.admin.run("SELECT 1 FROM pg_stat_activity WHERE usename = :u", u=ROLE):
            return
        time.sleep(0.05)
    raise AssertionError("the role's sessions did not end")


def rds_secret(server: SimpleNamespace, password: str, **more: Any) -> str:
    return json.dumps({"engine": "postgres", "username": ROLE, "password": password, "host": "127.0.0.1",
                       "port": server.port, "dbname": "test", **more})


def environment(aws: LocalS3, name: str, schema: str, **more: str) -> dict[str, str]:
    """No user and no password in DATABASE_URL, and the wrong port: the RDS secret names them."""
    return {"DATABASE_URL": f"postgresql://127.0.0.1:{free_port()}/postgres", "DB_SCHEMA": schema,
            "DATA_DIR": str(REFERENCE_DATA), "DB_SECRET_ID": name, "DB_SECRET_ENDPOINT": aws.endpoint,
            "AWS_REGION": REGION, "DB_CONNECT_ATTEMPTS": "1", "ETL_METRICS_NAMESPACE": "", **more}


def install(env: dict[str, str]) -> Service:
    service = Service(Settings.from_env(env))
    set_service(service)
    INSTALLED.append(service)
    return service


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    """A direct invocation, as the runtime makes it: the answer, or the error document it reports."""
    try:
        answer: dict[str, Any] = lambda_function.handler(event, SimpleNamespace(aws_request_id="r-1"))
        return answer
    except Exception as exc:  # noqa: BLE001 - the runtime reports any error as its class and JSON text
        return {"errorType": type(exc).__name__, "errorMessage": str(exc)}


def reads(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The job's db_secret_read lines, as their fields."""
    return [{"reason": getattr(r, "reason", None), "changed": getattr(r, "changed", None)}
            for r in caplog.records if r.name == "etl" and r.getMessage() == "db_secret_read"]


def everything(caplog: pytest.LogCaptureFixture, *answers: Any) -> str:
    """Every log line of every logger as the runtime writes it (JSON, every field, the traceback), and
    every answer."""
    from awslambdaric.lambda_runtime_log_utils import JsonFormatter

    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    return "\n".join(lines + [json.dumps(answer, default=str) for answer in answers])


def aws_call(client: Any, operation: str, **params: Any) -> Any:
    """The test's own call to moto (it sends the secret's value): not one of the job's lines."""
    logging.disable(logging.CRITICAL)
    try:
        return getattr(client, operation)(**params)
    finally:
        logging.disable(logging.NOTSET)


def assert_never_shown(text: str, *values: str) -> None:
    for value in values:
        assert value not in text
        assert json.dumps(value)[1:-1] not in text  # nor as JSON escapes it


@pytest.fixture
def schema(server: SimpleNamespace) -> Iterator[str]:
    """A fresh schema on the password-checking cluster, whose role has its first password again."""
    server.admin.run(f"ALTER ROLE {identifier(ROLE)} PASSWORD {literal(server.password)}")
    made = f"t_{uuid.uuid4().hex[:12]}"
    yield made
    server.admin.run(f"DROP SCHEMA IF EXISTS {identifier(made)} CASCADE")


def test_a_run_logs_in_with_the_rds_secret_and_survives_a_rotation(server: SimpleNamespace, aws: LocalS3, name: str,
                                                                  schema: str, logged: pytest.LogCaptureFixture
                                                                  ) -> None:
    client = aws.client("secretsmanager")
    first_value = rds_secret(server, server.password)
    aws_call(client, "create_secret", Name=name, SecretString=first_value)
    install(environment(aws, name, schema))
    first = invoke({"action": "trigger-etl"})
    assert first["status"] == "succeeded", first
    owner = server.admin.run("SELECT tableowner FROM pg_tables WHERE schemaname = :s AND tablename = 'user_features'",
                             s=schema)
    assert owner == [[ROLE]]  # the secret's user, not DATABASE_URL's

    # the rotation: the role's password and the secret change; the process keeps its old login
    rotated = new_password()
    server.admin.run(f"ALTER ROLE {identifier(ROLE)} PASSWORD {literal(rotated)}")
    second_value = rds_secret(server, rotated)
    aws_call(client, "put_secret_value", SecretId=name, SecretString=second_value)
    disconnect(server)
    second = invoke({"action": "trigger-etl", "force": True})
    assert second["status"] == "succeeded", second
    assert second["run_id"] == first["run_id"] + 1
    assert [(r["reason"], r["changed"]) for r in reads(logged)] == [
        ("first use", None), ("the server refused the kept login (28P01)", True)]

    # the new login is kept: the next connect reads nothing
    disconnect(server)
    health = invoke({"action": "health"})
    assert health["database"] == f"{ROLE}@127.0.0.1:{server.port}/test"
    assert len(reads(logged)) == 2
    text = everything(logged, first, second, health)
    assert name in text and ROLE in text  # the search looks where the secret's neighbours are
    assert_never_shown(text, server.password, rotated, first_value, second_value)


def test_a_password_alone_goes_with_database_url(server: SimpleNamespace, aws: LocalS3, name: str, schema: str,
                                                 logged: pytest.LogCaptureFixture) -> None:
    for value in (server.password, json.dumps({"password": server.password})):
        secret.forget()
        aws_call(aws.client("secretsmanager"), "create_secret", Name=name + str(len(value)), SecretString=value)
        install(environment(aws, name + str(len(value)), schema,
                            DATABASE_URL=f"postgresql://{ROLE}@127.0.0.1:{server.port}/test"))
        assert invoke({"action": "trigger-etl", "force": True})["status"] == "succeeded"
    assert_never_shown(everything(logged), server.password)


def test_a_refused_login_is_read_again_once_then_bad_config_without_the_password(
        server: SimpleNamespace, aws: LocalS3, name: str, schema: str, logged: pytest.LogCaptureFixture) -> None:
    wrong = new_password()
    aws_call(aws.client("secretsmanager"), "create_secret", Name=name, SecretString=rds_secret(server, wrong))
    install(environment(aws, name, schema))
    answer = invoke({"action": "trigger-etl"})
    assert answer["errorType"] == "SecretError"
    error = json.loads(answer["errorMessage"])
    assert error["code"] == "bad_config" and error["sqlstate"] == "28P01" and error["secret"] == name
    assert "has not changed since it was read" in error["message"]
    assert [r["changed"] for r in reads(logged)] == [None, False]  # read twice, connected twice, no more
    health = invoke({"action": "health"})
    assert health["errorType"] == "SecretError" and status_for(SecretError) == 500
    assert_never_shown(everything(logged, answer, health), wrong)


def test_a_user_the_server_will_not_let_log_in_is_read_again_too(server: SimpleNamespace, aws: LocalS3, name: str,
                                                                 schema: str, logged: pytest.LogCaptureFixture
                                                                 ) -> None:
    """28000: after an alternating-users rotation the old user may be NOLOGIN; the secret names the new one."""
    server.admin.run(f"CREATE ROLE etl_old NOLOGIN PASSWORD {literal(server.password)}")
    try:
        client = aws.client("secretsmanager")
        old_login = rds_secret(server, server.password, username="etl_old")
        aws_call(client, "create_secret", Name=name, SecretString=old_login)
        install(environment(aws, name, schema))
        secret.login(Settings.from_env(environment(aws, name, schema)).db)  # the old login is kept
        aws_call(client, "put_secret_value", SecretId=name, SecretString=rds_secret(server, server.password))
        assert invoke({"action": "trigger-etl"})["status"] == "succeeded"
        assert [(r["reason"], r["changed"]) for r in reads(logged)] == [
            ("first use", None), ("the server refused the kept login (28000)", True)]
    finally:
        server.admin.run("DROP ROLE etl_old")


@pytest.mark.parametrize(("value", "binary", "says"), [
    ('{"username": "etl_app", "password": ', None, "not valid JSON"),
    ('{"username": "etl_app"}', None, "without a password"),
    ('{"password": "", "port": 5432}', None, "without a password"),
    ('{"password": "pw-in-json", "port": "five"}', None, "\"port\""),
    (None, b"\x00binary-password", "binary data"),
])
def test_a_malformed_secret_is_bad_config_that_names_the_secret_not_its_value(
        aws: LocalS3, name: str, schema: str, value: str | None, binary: bytes | None, says: str,
        logged: pytest.LogCaptureFixture) -> None:
    stored = {"SecretString": value} if value is not None else {"SecretBinary": binary}
    aws_call(aws.client("secretsmanager"), "create_secret", Name=name, **stored)
    install(environment(aws, name, schema))
    answer = invoke({"action": "trigger-etl"})
    assert answer["errorType"] == "SecretError"
    assert says in json.loads(answer["errorMessage"])["message"]
    assert_never_shown(everything(logged, answer), "pw-in-json", "binary-password")


def test_a_missing_secret_is_bad_config(aws: LocalS3, name: str, schema: str) -> None:
    install(environment(aws, name, schema))
    answer = invoke({"action": "health"})
    assert answer["errorType"] == "SecretError"
    assert "no such secret" in json.loads(answer["errorMessage"])["message"]
    assert name in answer["errorMessage"]


def test_access_denied_is_bad_config(aws: LocalS3, schema: str) -> None:
    """moto's own IAM check: a user without a policy may not read the secret."""
    denied = LocalS3().start()
    try:
        client = denied.client("secretsmanager")
        aws_call(client, "create_secret", Name="etl/db", SecretString="pw")
        iam = denied.client("iam")
        iam.create_user(UserName="stranger")
        key = iam.create_access_key(UserName="stranger")["AccessKey"]
        reset_auth(denied, b"0")  # from now on every call is checked against IAM (in this process's moto)
        settings = Settings.from_env({**environment(denied, "etl/db", schema)})
        import os

        saved = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        os.environ.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        try:
            with pytest.raises(SecretError, match=r"may not read it \(secretsmanager:GetSecretValue\)"):
                secret.login(settings.db)
        finally:
            os.environ.update(saved)
    finally:
        reset_auth(denied, b"inf")
        denied.stop()


def reset_auth(server: LocalS3, count: bytes) -> None:
    """moto (in this process) checks IAM after ``count`` more calls (inf: never, its default)."""
    from moto import settings
    from moto.core.responses import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = float(count)
    ActionAuthenticatorMixin.request_count = 0


def test_an_unreachable_endpoint_is_unavailable_503(aws: LocalS3, name: str, schema: str) -> None:
    env = environment(aws, name, schema, DB_SECRET_ENDPOINT=f"http://127.0.0.1:{free_port()}", DB_CONNECT_TIMEOUT="1")
    install(env)
    with pytest.raises(SecretUnavailable, match=f"cannot reach Secrets Manager for the secret {name}"):
        secret.login(Settings.from_env(env).db)
    health = invoke({"action": "health"})
    assert health["errorType"] == "SecretUnavailable" and status_for(SecretUnavailable) == 503
    assert json.loads(health["errorMessage"])["code"] == "database_unavailable"


def test_botocore_never_writes_its_debug_lines_which_hold_the_answers_bodies(aws: LocalS3, name: str,
                                                                              logged: pytest.LogCaptureFixture
                                                                              ) -> None:
    aws_call(aws.client("secretsmanager"), "create_secret", Name=name, SecretString="pw-never-logged")
    settings = Settings.from_env(environment(aws, name, "s"))
    assert secret.login(settings.db).password == "pw-never-logged"
    assert logging.getLogger().isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("botocore.parsers").isEnabledFor(logging.DEBUG)
    text = everything(logged)
    assert "db_secret_read" in text
    assert_never_shown(text, "pw-never-logged")


@pytest.mark.unit
@pytest.mark.parametrize(("text", "expected"), [
    ("plain password", secret.Login(password="plain password")),
    ('["not", "an object"]', secret.Login(password='["not", "an object"]')),
    (' {"password": "p"}', secret.Login(password="p")),
    ('{"password": "p", "username": "u", "host": "h", "port": "6432", "dbname": "d", "engine": "postgres"}',
     secret.Login(password="p", user="u", host="h", port=6432, database="d")),
    ('{"password": "p", "port": 5433, "host": null}', secret.Login(password="p", port=5433)),
])
def test_the_two_shapes_of_secret(text: str, expected: secret.Login) -> None:
    assert secret.parse(text, "s") == expected


@pytest.mark.unit
@pytest.mark.parametrize("text", ["", "  ", '{"password": 1}', '{"password": "p", "port": true}',
                                  '{"password": "p", "port": 70000}', '{"password": "p", "username": ""}',
                                  '{"password": "p", "host": 5}', "{not json", '{"password": "p"} trailing'])
def test_a_malformed_secret_never_repeats_its_text(text: str) -> None:
    with pytest.raises(SecretError) as caught:
        secret.parse(text, "name")
    assert "name" in caught.value.message
    assert text.strip() == "" or text not in json.dumps(caught.value.to_dict())


@pytest.mark.unit
def test_a_secret_replaces_only_what_it_names() -> None:
    base = Settings.from_env({"DATABASE_URL": "postgresql://u:old@db:5432/lab?sslmode=require",
                              "DB_SECRET_ID": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbC"}).db
    assert base.secret is not None and base.secret.region == "eu-west-1"
    applied = secret.Login(password="new", host="/run/pg").applied(base)
    assert (applied.user, applied.password, applied.database, applied.sslmode) == ("u", "new", "lab", "require")
    assert applied.unix_sock == "/run/pg/.s.PGSQL.5432"
    assert "new" not in repr(applied) and "new" not in applied.describe()


@pytest.mark.unit
@pytest.mark.parametrize(("env", "says"), [
    ({"DB_SECRET_ID": "etl/db"}, "without its region"),
    ({"DB_SECRET_ID": "arn:aws:s3:::bucket"}, "must be a secret's name or its ARN"),
    ({"DB_SECRET_ID": "etl/db", "AWS_REGION": "eu-west-1", "DB_SECRET_ENDPOINT": "127.0.0.1:5000"}, "http://"),
])
def test_a_secret_setting_that_cannot_work_is_refused_when_read(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.from_env(env)


@pytest.mark.unit
def test_no_secret_is_todays_behaviour() -> None:
    for env in ({}, {"DB_SECRET_ID": ""}, {"DB_SECRET_ID": "  "}):
        assert Settings.from_env({**env, "PGPASSWORD": "pw"}).db == Settings.from_env({"PGPASSWORD": "pw"}).db
    named = Settings.from_env({"DB_SECRET_ID": "etl/db", "AWS_DEFAULT_REGION": "eu-north-1"}).db.secret
    assert named is not None and (named.secret_id, named.region, named.endpoint) == ("etl/db", "eu-north-1", None)


@pytest.mark.unit
def test_botocore_is_imported_at_the_first_read_not_with_the_settings_or_the_store() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import sys\nfrom etl_core.config import Settings\nfrom etl_core import pipeline\n"
              "from etl_core.store import db, postgres\n"
              "Settings.from_env({'DB_SECRET_ID': 'etl/db', 'AWS_REGION': 'eu-west-1'})\n"
              "print('botocore' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=60)
    assert done.stdout.strip() == "False"
