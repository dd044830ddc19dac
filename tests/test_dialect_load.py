"""The dialect's corners (issue 21) through the whole job, against a real PostgreSQL, in both policies:
nothing the database refuses reaches it, a row's problem is a 422 naming file and line in strict and a
stored reject in quarantine, a file's problem fails the run in both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from etl_core import pipeline
from etl_core.config import Settings
from etl_core.errors import ContractViolation
from tests.helpers import GOOD, features_dump, write_files
from tests.test_api import call, event, installed

USERS_WITH_NUL = (b"user_id,name,email,signup_date,note\n"
                  b"1,Al\x00ice,alice@example.com,2023-01-01,\n"
                  b"2,Bob,bob@example.com,2023-02-01,\x00\n"  # an ignored column: loaded
                  b"3,Carol,carol@example.com,2023-13-01,n\x00te\n")  # rejected: its raw text holds a NUL


def settings_for(env: dict[str, str], data: Path) -> Settings:
    return Settings.from_env({**env, "DATA_DIR": str(data)})


def test_a_nul_byte_is_a_422_naming_file_and_line_in_strict(env: dict[str, str], tmp_path: Path, db: Any,
                                                           schema: str) -> None:
    data = write_files(tmp_path / "nul", {"users.csv": USERS_WITH_NUL})
    with installed(settings_for(env, data)):
        status, body = call(event("trigger-etl.json"))
    assert status == 422, body
    first = body["error"]["violations"]["first"]
    assert [(v["file"], v["line"], v["column"], v["rule"]) for v in first][:2] == [
        ("users.csv", 2, "name", "nul_byte"), ("users.csv", 4, "signup_date", "not_iso_date")]
    assert first[0]["value"] == "Al\\x00ice"
    assert first[1]["raw"] == "3,Carol,carol@example.com,2023-13-01,n\\x00te"
    [[status_, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs ORDER BY id DESC LIMIT 1')
    assert (status_, error["code"]) == ("failed", "contract_violation")
    assert "\\x00" in json.dumps(error)


def test_a_nul_byte_is_a_stored_reject_in_quarantine(env: dict[str, str], tmp_path: Path, db: Any,
                                                     schema: str) -> None:
    data = write_files(tmp_path / "nul", {"users.csv": USERS_WITH_NUL})
    summary = pipeline.run(settings_for(env, data), pipeline.Trigger(policy="quarantine", force=True))
    assert summary["status"] == "partial"
    stored = db.run(f'SELECT file, line, column_name, value, rule, raw FROM "{schema}".etl_rejects '
                    "WHERE run_id = :id ORDER BY seq", id=summary["run_id"])
    assert [(r[0], r[1], r[2], r[4]) for r in stored] == [
        ("users.csv", 2, "name", "nul_byte"), ("users.csv", 4, "signup_date", "not_iso_date"),
        ("user_experiments.csv", 2, "user_id", "unknown_user"), ("user_experiments.csv", 3, "user_id", "unknown_user")]
    assert stored[0][3] == "Al\\x00ice" and stored[0][5] == "1,Al\\x00ice,alice@example.com,2023-01-01,"
    assert stored[1][5] == "3,Carol,carol@example.com,2023-13-01,n\\x00te"
    assert db.run(f'SELECT user_id, user_name FROM "{schema}".user_features') == [[2, "Bob"]]


@pytest.mark.parametrize("policy", ["strict", "quarantine"])
def test_a_header_only_experiments_file_without_newline_is_a_valid_load(
        policy: str, env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    header = GOOD["user_experiments.csv"].split("\n", 1)[0]
    data = write_files(tmp_path / "h", {"user_experiments.csv": header})
    summary = pipeline.run(settings_for(env, data), pipeline.Trigger(policy=policy))
    assert summary["status"] == "succeeded"
    assert summary["users_written"] == 3
    assert summary["files"]["user_experiments.csv"]["rows_read"] == 0


@pytest.mark.parametrize("policy", ["strict", "quarantine"])
@pytest.mark.parametrize("name", ["users.csv", "compounds.csv"])
def test_a_header_only_users_or_compounds_file_fails_the_run_in_both_policies(
        policy: str, name: str, env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    pipeline.run(settings_for(env, write_files(tmp_path / "good", {})), pipeline.Trigger())
    before = features_dump(db, schema)
    header = GOOD[name].split("\n", 1)[0]
    for content in (header, header + "\n", "\n" + header + "\r\n\r\n"):
        data = write_files(tmp_path / "h", {name: content})
        with pytest.raises(ContractViolation) as info:
            pipeline.run(settings_for(env, data), pipeline.Trigger(policy=policy, force=True))
        rules = {(v["file"], v["rule"]) for v in info.value.details["violations"]["first"]}
        assert (name, "no_rows") in rules
        assert features_dump(db, schema) == before


@pytest.mark.parametrize("policy", ["strict", "quarantine"])
def test_a_nul_byte_in_an_extra_columns_name_is_shown_escaped(policy: str, env: dict[str, str], tmp_path: Path,
                                                              db: Any, schema: str) -> None:
    users = GOOD["users.csv"].replace("signup_date\n", "signup_date,n\x00te\n", 1).replace("-01\n", "-01,x\n")
    data = write_files(tmp_path / "nul", {"users.csv": users.encode()})
    summary = pipeline.run(settings_for(env, data), pipeline.Trigger(policy=policy))
    assert summary["status"] == "succeeded"
    assert summary["files"]["users.csv"]["extra_columns"] == ["n\\x00te"]


@pytest.mark.parametrize("shape", ["blank lines", "spaces", "CRLF blank lines", "a long first column"])
def test_megabytes_before_a_header_or_in_it_load_as_the_plain_file_does(
        shape: str, env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    """Blank lines are skipped before the header whatever their length, and a header line is read whole
    up to the longest line the reader takes (256 MiB): past 1 MiB they were read cut (empty_file, or a
    missing column after the cut)."""
    plain = pipeline.run(settings_for(env, write_files(tmp_path / "plain", {})), pipeline.Trigger())
    want = features_dump(db, schema, run_id=False)
    users = GOOD["users.csv"]
    made = {"blank lines": "\n" * (2 << 20) + users, "spaces": " " * (2 << 20) + "\n" + users,
            "CRLF blank lines": "\r\n" * (1 << 20) + users,
            "a long first column": "".join(f"notes_{'n' * ((1 << 20) + 10)}," * (i == 0) + line + "\n"
                                           if i == 0 else "," + line + "\n"
                                           for i, line in enumerate(users.rstrip("\n").split("\n")))}[shape]
    data = write_files(tmp_path / "shaped", {"users.csv": made})
    summary = pipeline.run(settings_for(env, data), pipeline.Trigger(force=True))
    assert summary["status"] == "succeeded", summary
    assert summary["files"]["users.csv"]["rows_read"] == plain["files"]["users.csv"]["rows_read"] == 3
    assert features_dump(db, schema, run_id=False) == want


def _experiments(lines: int, open_quote_at: int | None = None) -> bytes:
    rows = [f"{i},{1 + i % 2},{1 + i % 3},10" for i in range(1, lines + 1)]
    if open_quote_at is not None:
        rows[open_quote_at - 2] = rows[open_quote_at - 2].replace(",10", ',"10')
    return ("experiment_id,user_id,experiment_compound_ids,experiment_run_time\n" + "\n".join(rows) + "\n").encode()


@pytest.mark.parametrize("policy", ["strict", "quarantine"])
def test_a_quote_left_open_in_a_file_of_many_blocks_is_its_lines_violation_not_lost_rows(
        policy: str, env: dict[str, str], tmp_path: Path, db: Any, schema: str) -> None:
    """20,000 experiments in blocks of 64 KiB, one with its last field's quote left open: strict refuses
    the run naming the line and keeps the table; quarantine rejects that line and loads the 19,999 others
    (pyarrow's reader, parsing the blocks at once, dropped the rest of the quote's block and the run
    published what was left)."""
    env = {**env, "ETL_BLOCK_SIZE": str(1 << 16)}
    good = write_files(tmp_path / "good", {"user_experiments.csv": _experiments(20_000)})
    pipeline.run(settings_for(env, good), pipeline.Trigger())
    before = features_dump(db, schema)
    assert [r[2] for r in before[:2]] == [10_000, 10_000]
    bad = write_files(tmp_path / "bad", {"user_experiments.csv": _experiments(20_000, open_quote_at=7_001)})
    if policy == "strict":
        with pytest.raises(ContractViolation) as info:
            pipeline.run(settings_for(env, bad), pipeline.Trigger(policy=policy))
        first = info.value.details["violations"]["first"]
        assert [(v["file"], v["line"], v["rule"]) for v in first] == [("user_experiments.csv", 7_001, "field_count")]
        assert features_dump(db, schema) == before
        return
    summary = pipeline.run(settings_for(env, bad), pipeline.Trigger(policy=policy))
    assert summary["status"] == "partial", summary
    files = summary["files"]["user_experiments.csv"]
    assert (files["rows_read"], files["rows_accepted"], files["rows_rejected"]) == (20_000, 19_999, 1)
    assert db.run(f'SELECT line, rule FROM "{schema}".etl_rejects WHERE run_id = :id',
                  id=summary["run_id"]) == [[7_001, "field_count"]]
    assert sorted(r[2] for r in features_dump(db, schema)[:2]) == [9_999, 10_000]
