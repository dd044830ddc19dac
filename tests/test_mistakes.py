"""An operator's mistakes are named as mistakes: a data directory, database or role that does not
exist and a refused password answer 500 bad_config naming the setting to fix, are recorded (where the
ledger can be reached) with that code, and are counted as ConfigErrors, never as the data's fault
(422) or the service's (503)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from etl_core.config import Settings
from etl_core.errors import ConfigError
from etl_core.service import Service, Trigger
from etl_core.store import sql
from handler import lambda_function
from tests.conftest import throwaway_server
from tests.test_api import call, event, installed


def test_a_data_dir_that_does_not_exist_is_bad_config_named_and_recorded(
        env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    settings = Settings.from_env({**env, "DATA_DIR": str(tmp_path / "not-there")})
    with installed(settings):
        status, body = call(event("post-trigger-etl.json"))
    assert (status, body["error"]["code"], body["error"]["setting"]) == (500, "bad_config", "DATA_DIR")
    assert "DATA_DIR is not an existing directory" in body["error"]["message"]
    assert str(tmp_path) not in json.dumps(body)  # the server's paths stay out of answers
    [[status_, error]] = db.run(f"SELECT status, error FROM {sql.q(schema, sql.RUNS)}")
    assert (status_, error["code"], error["setting"]) == ("failed", "bad_config", "DATA_DIR")


def test_a_data_root_that_does_not_exist_is_bad_config_not_the_callers_mistake(
        env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env({**env, "DATA_ROOT": str(tmp_path / "no-root"), "DATA_DIR": str(tmp_path)})
    service = Service(settings)
    try:
        with pytest.raises(ConfigError, match="DATA_ROOT is not an existing directory"):
            service.trigger(Trigger(data="sub"))
    finally:
        service.close()


@pytest.mark.parametrize(("url_change", "says"), [
    (lambda url: url.rsplit("/", 1)[0] + "/no_such_database", "the database it names does not exist"),
    (lambda url: url.replace("postgres@", "no_such_role@", 1), "it refuses the role"),
])
def test_a_database_or_role_that_does_not_exist_is_bad_config(env: dict[str, str], url_change: Any,
                                                              says: str) -> None:
    emitted: list[str] = []
    settings = Settings.from_env({**env, "DATABASE_URL": url_change(env["DATABASE_URL"])})
    service = Service(settings, emit=emitted.append)
    try:
        with pytest.raises(ConfigError, match=says) as info:
            service.trigger(Trigger())
    finally:
        service.close()
    assert info.value.code == "bad_config" and info.value.http_status == 500
    [metrics] = [json.loads(line) for line in emitted]
    assert (metrics["ConfigErrors"], metrics["RunsFailed"], metrics["error_code"]) == (1, 1, "bad_config")


def test_a_refused_password_is_bad_config_and_never_repeated() -> None:
    right, wrong_password = secrets.token_hex(8), secrets.token_hex(8)
    with throwaway_server(password=right) as url:
        wrong = url.replace(f"postgres:{right}@", f"postgres:{wrong_password}@", 1)
        settings = Settings.from_env({"DATABASE_URL": wrong, "DB_CONNECT_ATTEMPTS": "1"})
        service = Service(settings)
        try:
            with pytest.raises(ConfigError, match="it refuses the password") as info:
                service.health()
        finally:
            service.close()
    assert wrong_password not in json.dumps(info.value.to_dict()) and "28P01" in info.value.message


def test_a_data_run_failure_is_not_counted_as_a_config_error(env: dict[str, str], tmp_path: Path) -> None:
    emitted: list[str] = []
    (tmp_path / "users.csv").write_text("user_id,name\n")  # a data problem: columns missing, files missing
    service = Service(Settings.from_env({**env, "DATA_DIR": str(tmp_path)}), emit=emitted.append)
    try:
        with pytest.raises(Exception, match="cannot be read under the data contract"):
            service.trigger(Trigger())
    finally:
        service.close()
    [metrics] = [json.loads(line) for line in emitted]
    assert (metrics["ConfigErrors"], metrics["RunsFailed"], metrics["error_code"]) == (0, 1, "contract_violation")


def test_the_direct_action_names_the_setting_too(env: dict[str, str], tmp_path: Path) -> None:
    with installed(Settings.from_env({**env, "DATA_DIR": str(tmp_path / "gone")})), \
            pytest.raises(ConfigError) as info:
        lambda_function.handler({"action": "trigger-etl"}, None)
    assert json.loads(str(info.value))["setting"] == "DATA_DIR"
