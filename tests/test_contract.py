"""The data contract, rule by rule, through the whole job against a real PostgreSQL.

Each folder under tests/corpus/ is one broken input: the files it holds replace those of the good
data set (tests/helpers.py: GOOD), and ``expected.json`` gives what must come out:
``violations`` (file, line, column, rule) in strict mode, and for quarantine the rows rejected per
file and the users written (null: the run fails in quarantine too, as a whole file is unusable).
In every case the features loaded before stay exactly as they were when the run fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from etl_core import pipeline
from etl_core.config import Settings
from etl_core.contract import RULE_TEXT, Rule
from etl_core.errors import ContractViolation
from tests.helpers import GOOD, features_dump, write_files

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())
ROOT = Path(__file__).resolve().parent.parent


def case_files(case: str) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for path in (CORPUS / case).iterdir():
        if path.name.endswith(".absent"):
            files[path.name.removesuffix(".absent")] = None
        elif path.name in GOOD:
            files[path.name] = path.read_bytes()
    return files


def expected(case: str) -> dict[str, Any]:
    return json.loads((CORPUS / case / "expected.json").read_text())


def settings_for(env: dict[str, str], data_dir: Path) -> Settings:
    return Settings.from_env({**env, "DATA_DIR": str(data_dir)})


@pytest.fixture
def loaded(env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> list[tuple[Any, ...]]:
    """A first, good run: the features that every failing run must leave untouched."""
    pipeline.run(settings_for(env, write_files(tmp_path / "good", {})), pipeline.Trigger())
    return features_dump(db, schema)


def test_every_rule_has_a_corpus_case() -> None:
    covered = {rule for case in CASES for *_, rule in expected(case)["violations"]}
    assert covered == {rule.value for rule in Rule}


@pytest.mark.parametrize("case", CASES)
def test_strict_lists_every_violation_and_changes_nothing(
        case: str, env: dict[str, str], tmp_path: Path, db: Any, schema: str, loaded: list[Any]) -> None:
    settings = settings_for(env, write_files(tmp_path / case, case_files(case)))
    with pytest.raises(ContractViolation) as info:
        pipeline.run(settings, pipeline.Trigger(policy="strict"))
    report = info.value.details["violations"]
    found = sorted((v["file"], v["line"] or 0, v["column"] or "", v["rule"]) for v in report["first"])
    want = sorted((f, line or 0, c or "", r) for f, line, c, r in expected(case)["violations"])
    assert found == want
    assert report["total"] == len(want)
    assert features_dump(db, schema) == loaded
    [[status, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs ORDER BY id DESC LIMIT 1')
    assert status == "failed"
    assert error["code"] == "contract_violation"


@pytest.mark.parametrize("case", CASES)
def test_quarantine_loads_the_good_rows_and_lists_every_bad_one(
        case: str, env: dict[str, str], tmp_path: Path, db: Any, schema: str, loaded: list[Any]) -> None:
    settings = settings_for(env, write_files(tmp_path / case, case_files(case)))
    want = expected(case)
    if want["quarantine"] is None:
        with pytest.raises(ContractViolation):
            pipeline.run(settings, pipeline.Trigger(policy="quarantine"))
        assert features_dump(db, schema) == loaded
        return
    # force: three users are too few for the load guard (a rejected user is a third of them)
    summary = pipeline.run(settings, pipeline.Trigger(policy="quarantine", force=True))
    assert summary["status"] == "partial"
    rejected = {name: f["rows_rejected"] for name, f in summary["files"].items() if f["rows_rejected"]}
    assert rejected == want["quarantine"]["rejected"]
    assert summary["users_written"] == want["quarantine"]["users_written"]
    stored = db.run(f'SELECT file, line, column_name, rule FROM "{schema}".etl_rejects '
                    "WHERE run_id = :id", id=summary["run_id"])
    assert sorted((f, line or 0, c or "", r) for f, line, c, r in stored) == sorted(
        (f, line or 0, c or "", r) for f, line, c, r in want["violations"])


def test_quarantine_features_ignore_rejected_rows(env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    # user 1's second experiment names an unknown compound: only her first experiment counts
    files = {"user_experiments.csv": GOOD["user_experiments.csv"].replace("2,1,2;3,15", "2,1,2;7,15")}
    summary = pipeline.run(settings_for(env, write_files(tmp_path, files)), pipeline.Trigger(policy="quarantine"))
    rows = db.run(f'SELECT user_id, total_experiments, most_common_compounds FROM "{schema}".user_features '
                  "ORDER BY user_id")
    assert rows == [[1, 1, "Compound A;Compound B"], [2, 1, "Compound A;Compound C"], [3, 0, None]]
    assert summary["files"]["user_experiments.csv"]["rows_rejected"] == 1


def test_the_readme_documents_every_rule() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Data contract", 1)[1].split("\n## ", 1)[0]
    for rule in Rule:
        assert re.search(rf"`{rule.value}`", section), f"README's data contract does not name {rule.value}"
    assert set(RULE_TEXT) == set(Rule)


def test_the_dialect_document_gives_every_rule_and_no_other() -> None:
    """docs/contract.md's table of deviations names each rule of the rules table, and nothing else as one."""
    text = (ROOT / "docs" / "contract.md").read_text()
    table = text.split("## Every deviation and its rule", 1)[1].split("\n## ", 1)[0]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
             if line.startswith("| ") and not line.startswith("| deviation")]
    codes = [re.fullmatch(r"`([a-z_]+)`", row[-2]) for row in cells]
    assert all(codes), [row for row, code in zip(cells, codes, strict=True) if not code]
    assert {code.group(1) for code in codes if code} == {rule.value for rule in Rule}
    readme = (ROOT / "README.md").read_text().split("## Data contract", 1)[1].split("\n## ", 1)[0]
    for row in cells:  # the README's scope column says the same of each rule
        assert re.search(rf"\| {row[-2]} \|[^\n]*\| [^|\n]*{row[-1]}[^|\n]* \|", readme), row
