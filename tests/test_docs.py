"""The README promises things that code must keep: the test command CI runs, the configuration
variables, the rule codes (tests/test_contract.py), the routes."""

from __future__ import annotations

import re

import pytest

from etl_core import config
from handler.app import app
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    block = README.split("### Tests", 1)[1].split("```", 2)[1]
    command = [line for line in block.splitlines() if "pytest" in line]
    assert command == [".venv/bin/python -m pytest"]
    assert command[0] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_setting_the_code_reads_is_in_the_configuration_table() -> None:
    source = (ROOT / "etl_core" / "config.py").read_text()
    read = set(re.findall(r'env\.get\(\s*"([A-Z_]+)"', source))
    read |= set(re.findall(r'_(?:int|float|share|seconds)\(env, "([A-Z_]+)"', source))
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    assert read, "found no settings in config.py"
    for name in read:
        assert f"`{name}`" in table, f"{name} is read by config.py but not documented"


def test_every_route_is_documented() -> None:
    for route in app.routes:
        path = getattr(route, "path", "")
        if path.startswith(("/docs", "/openapi", "/redoc")):
            continue
        for method in sorted(getattr(route, "methods", set()) - {"HEAD"}):
            assert f"{method} {path.replace('{run_id}', '{id}')}" in README, (method, path)


def test_the_default_policy_in_the_readme_is_the_code_default() -> None:
    assert config.Settings.from_env({}).policy == "strict"
    assert "`strict` (default)" in README
