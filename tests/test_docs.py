"""The README promises things that code must keep: the test command CI runs, where the configuration
is, the rule codes (tests/test_contract.py), the routes, and what query.sh prints (tests/test_e2e.py)."""

from __future__ import annotations

import re
from pathlib import Path

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


def _slugs(markdown: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation but '-' and '_' dropped,
    spaces as '-', a repeated one numbered."""
    found: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not (heading := re.match(r"#{1,6} +(.*?) *#*$", line)):
            continue
        slug = re.sub(r"[^\w\- ]", "", re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading.group(1)).lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_its_file_and_heading(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _slugs(linked.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with that anchor in {linked.relative_to(ROOT)}")
    assert not broken, broken
