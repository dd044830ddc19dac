"""The README promises things that code must keep: the test command CI runs, where the configuration
is, the rule codes (tests/test_contract.py), the routes, and what query.sh prints (tests/test_e2e.py)."""

from __future__ import annotations

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


def test_the_readme_points_to_the_configuration_reference() -> None:
    """Every variable is in docs/configuration.md (tests/test_config.py holds it to the code)."""
    assert "[docs/configuration.md](docs/configuration.md)" in README.split("## Configuration", 1)[1]


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
