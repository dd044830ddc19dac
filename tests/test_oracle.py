"""Adversarial CSV against an independent oracle (tests/csv_oracle.py, written from docs/contract.md).

A Hypothesis strategy writes files the way a hurried exporter, an editor or a hostile user would:
quotes in every position (opening, closing, doubled, inside a plain field, left open), delimiters
inside and outside quotes, LF, CRLF and lone CR inside and outside quotes, spaces, tabs, NBSP and
other Unicode spaces, vertical tabs before, after and inside quotes, NUL and other control bytes,
invalid UTF-8, BOMs, blank lines anywhere (before the header too), rows of empty fields, headers
with and without a final newline, long headers and long fields.  Every file is read

* by each of the job's readers (streamed and read whole on the fast path, which may leave the file
  to the diagnostic path; read early; the diagnostic path on its own), which must give exactly the
  oracle's file problem, or its violations (line, column, rule) and accepted rows;
* through the whole job in both policies (test_both_policies_give_the_oracles_answer): strict's
  answer lists the oracle's violations with file and line; quarantine stores them as rejects, and
  the features loaded are those of the oracle's accepted users.

The quick tier runs a small profile; CI=true runs a larger one.  Derandomized: the same examples each run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_core import pipeline
from etl_core.config import Settings
from etl_core.contract import COMPOUNDS, EXPERIMENTS, USERS, FileContract
from etl_core.errors import ContractViolation
from etl_core.reading import extract
from tests import csv_oracle
from tests.helpers import GOOD, write_files
from tests.test_dialect import every_way
from tests.test_rules import MemorySource

CI = bool(os.environ.get("CI"))
QUICK = settings(max_examples=1500 if CI else 60, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])
LOADS = settings(QUICK, max_examples=200 if CI else 15)

USERS_KNOWN = {1, 2, 3}
COMPOUNDS_KNOWN = {1, 2, 3}
REFS = extract.References.of(pa.array(sorted(USERS_KNOWN), pa.int64()), pa.array(sorted(COMPOUNDS_KNOWN), pa.int64()))

# --- the pieces a file is made of

BREAKS = st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"])
SPACES = st.sampled_from([b"", b"", b" ", b"\t", b"  \t", b"\xc2\xa0", b"\xe3\x80\x80", b"\x0b"])
ODD = st.sampled_from([b'"', b'""', b",", b";", b"\n", b"\r", b"\r\n", b"\x00", b"\x01", b"\x1b", b"\x7f", b"\xff",
                       b"\xc3", b"\xef\xbb\xbf", b" ", b"\t", b"\xc2\xa0", b"0x1", b"-", b"+", b"e"])
GOOD_VALUES = {
    "id": st.integers(1, 4).map(lambda v: str(v).encode()),
    "text": st.sampled_from([b"Alice", b"Bob, Jr.", b'say "hi"', b"\xc3\xa9l\xc3\xa8ve", b"x;y", b"Zo\xc3\xab"]),
    "date": st.sampled_from([b"2023-01-01", b"2024-02-29", b"0001-01-01", b"9999-12-31"]),
    "number": st.sampled_from([b"10", b"1.5", b"1e3", b".5", b"0", b"+2"]),
    "id_list": st.sampled_from([b"1", b"1;2", b" 1 ; 3 ", b"3;3", b"+1;002"]),
}
VALUES = {
    "id": st.one_of(st.sampled_from([b"1", b"2", b"3", b"4", b"+1", b"001", b"0", b"-1", b"", b"1.0",
                                     b"999999999999999999", b"1000000000000000000", b"0x1A"]),
                    st.integers(1, 5).map(lambda v: str(v).encode())),
    "text": st.one_of(st.sampled_from([b"Alice", b"Bob, Jr.", b'say "hi"', b"", b" ", b"\xc3\xa9l\xc3\xa8ve",
                                       b"a\x00b", b"\xff", b'"', b"x;y", b"\xc2\xa0"]),
                      st.binary(min_size=0, max_size=6)),
    "date": st.sampled_from([b"2023-01-01", b"2023-02-30", b"2023-1-1", b"", b"0000-01-01", b"2024-02-29"]),
    "number": st.sampled_from([b"10", b"1.5", b"1e3", b".5", b"-0", b"-1", b"inf", b"nan", b"", b"1e400", b"+2"]),
    "id_list": st.sampled_from([b"1", b"1;2", b" 1 ; 3 ", b"", b";", b"1;;2", b"1;x", b"4", b"2;9", b"+1;002"]),
}


@st.composite
def written(draw: st.DrawFn, value: bytes) -> bytes:
    """``value`` as some writer might put it in a field: plain, quoted, with whitespace around or before
    the quote, with its quotes doubled or not, cut, or with odd bytes added anywhere."""
    form = draw(st.sampled_from(["plain", "plain", "quoted", "quoted", "spaced-quote", "raw-quote", "odd"]))
    before, after = draw(SPACES), draw(SPACES)
    if form == "plain":
        return before + value + after
    if form == "quoted":
        return before + b'"' + value.replace(b'"', b'""') + b'"' + after
    if form == "spaced-quote":
        return b" \t"[: draw(st.integers(1, 2))] + b'"' + value.replace(b'"', b'""') + b'"'
    if form == "raw-quote":  # quotes not doubled, or a quote left open
        return draw(st.sampled_from([b'"' + value, b'"' + value + b'"' + b'x', value + b'"', b'"' + value + b'"']))
    data = bytearray(value)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(ODD)
    return bytes(data)


@st.composite
def csv_file(draw: st.DrawFn, contract: FileContract) -> bytes:
    names = [c.name for c in contract.columns]
    kinds = {c.name: c.kind for c in contract.columns}
    if draw(st.integers(0, 3)) == 0:  # an extra column, anywhere; its name sometimes long
        extra = draw(st.sampled_from([b"note", b"x" * 70000, b"vendor"])).decode()
        names.insert(draw(st.integers(0, len(names))), extra)
    if draw(st.booleans()):
        names = draw(st.permutations(names))
    twist = draw(st.integers(0, 19))  # now and then a header that makes the file unusable
    if twist == 0:
        names.append(names[0])
    elif twist == 1:
        names.pop(draw(st.integers(0, len(names) - 1)))
    header_fields = []
    for i, name in enumerate(names):
        style = draw(st.sampled_from(["plain"] * 6 + ["quoted", "quoted", "spaced", "spaced", "nbsp", "open"]))
        if style == "open" and i < len(names) - 1:  # a quote left open: only the last name can have one
            style = "plain"
        header_fields.append({"plain": name, "quoted": f'"{name}"', "spaced": f' {name}\t', "nbsp": f"{name}\u00a0",
                              "open": f'"{name}'}[style].encode())
    out = bytearray()
    if draw(st.integers(0, 5)) == 0:
        out += b"\xef\xbb\xbf"
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # blank lines before the header
        out += draw(SPACES.filter(lambda s: s in (b"", b" ", b"\t", b"  \t"))) + draw(BREAKS)
    out += b",".join(header_fields) if twist != 2 else b"\xff" + b",".join(header_fields)
    if twist == 3:  # blank lines only
        return bytes(out[: len(out) - len(b",".join(header_fields))]) + b" \n"
    rows = draw(st.integers(0, 6))
    for _ in range(rows):
        out += draw(BREAKS)
        shape = draw(st.sampled_from(["row"] * 12 + ["blank", "empty", "garbage", "short", "long"]))
        if shape == "blank":
            out += draw(st.sampled_from([b"", b" ", b"\t \t"]))
            continue
        if shape == "garbage":
            out += b"".join(draw(st.lists(ODD | st.sampled_from([b"1", b"a"]), min_size=1, max_size=8)))
            continue
        fields = []
        for name in names:
            if shape == "empty":
                fields.append(draw(st.sampled_from([b"", b'""', b" "])))
            elif name in kinds and draw(st.integers(0, 4)):  # mostly good values, written plainly
                value = draw(GOOD_VALUES[kinds[name]])
                plain = b"," not in value and b'"' not in value and draw(st.booleans())
                fields.append(value if plain else b'"' + value.replace(b'"', b'""') + b'"')
            elif name in kinds:
                fields.append(draw(written(draw(VALUES[kinds[name]]))))
            else:
                fields.append(draw(written(draw(st.sampled_from([b"n", b"a, b", b"\xff", b"\x00", b"y" * 70000])))))
        if shape == "short":
            fields.pop()
        elif shape == "long":
            fields.append(b"z")
        out += b",".join(fields)
    if draw(st.booleans()):
        out += draw(BREAKS)
    return bytes(out)


def oracle(contract: FileContract, content: bytes) -> csv_oracle.Verdict:
    refs = {"users": USERS_KNOWN, "compounds": COMPOUNDS_KNOWN} if contract is EXPERIMENTS else {}
    return csv_oracle.judge(content, [(c.name, c.kind) for c in contract.columns], contract.key, **refs)


def readers_agree_with_the_oracle(contract: FileContract, content: bytes) -> None:
    want = oracle(contract, content)
    refs = REFS if contract is EXPERIMENTS else None
    if want.problem is not None:
        with pytest.raises(extract.FileProblem) as info:
            extract.read_header(MemorySource({contract.filename: content}), contract)
        assert info.value.violation["rule"] == want.problem, content
        return
    found, accepted, violations, read = every_way(contract, content, refs, block_size=1 << 16)
    assert sorted(found, key=repr) == sorted(want.violations, key=repr), content
    names = [c.name for c in contract.columns]
    assert [tuple(row[n] for n in names) for row in accepted] == want.accepted, content
    assert read == want.rows_read, content
    for v in violations:  # nothing PostgreSQL refuses: no NUL in a report
        assert all("\x00" not in str(value) for value in v.values()), v


@QUICK
@given(data=st.data())
@pytest.mark.unit
def test_users_files_read_as_the_oracle_says(data: st.DataObject) -> None:
    readers_agree_with_the_oracle(USERS, data.draw(csv_file(USERS)))


@QUICK
@given(data=st.data())
@pytest.mark.unit
def test_compounds_files_read_as_the_oracle_says(data: st.DataObject) -> None:
    readers_agree_with_the_oracle(COMPOUNDS, data.draw(csv_file(COMPOUNDS)))


@QUICK
@given(data=st.data())
@pytest.mark.unit
def test_experiments_files_read_as_the_oracle_says(data: st.DataObject) -> None:
    readers_agree_with_the_oracle(EXPERIMENTS, data.draw(csv_file(EXPERIMENTS)))


# --- through the whole job, in both policies


def _report_rows(found: list[dict[str, Any]]) -> list[tuple[str, int | None, str | None, str]]:
    return sorted(((v["file"], v["line"], v["column"], v["rule"]) for v in found), key=repr)


@LOADS
@given(data=st.data())
def test_both_policies_give_the_oracles_answer(data: st.DataObject, env: dict[str, str], tmp_path: Path, db: Any,
                                               schema: str) -> None:
    content = data.draw(csv_file(USERS))
    users = oracle(USERS, content)
    folder = write_files(tmp_path / f"case{abs(hash(content))}", {"users.csv": content})
    run_settings = Settings.from_env({**env, "DATA_DIR": str(folder), "ETL_MAX_REPORTED_VIOLATIONS": "1000"})
    # what the oracle says the job must answer: the users' violations, then the experiments' (GOOD's
    # experiments name users 1 and 2, which must be accepted users)
    accepted = {row[0] for row in users.accepted}
    experiments = csv_oracle.judge(GOOD["user_experiments.csv"].encode(),
                                   [(c.name, c.kind) for c in EXPERIMENTS.columns], EXPERIMENTS.key,
                                   users=accepted, compounds={1, 2, 3})
    if users.problem is not None:
        want = [("users.csv", 1, None, users.problem)]
    else:
        want = [("users.csv", line, column, rule) for line, column, rule in users.violations]
        want += [("user_experiments.csv", line, column, rule) for line, column, rule in experiments.violations]
        if users.rows_read == 0:
            want.append(("users.csv", None, None, "no_rows"))
    for policy in ("strict", "quarantine"):
        fails = users.problem is not None or users.rows_read == 0 or (policy == "strict" and want) or not accepted
        if fails:
            with pytest.raises(ContractViolation) as info:
                pipeline.run(run_settings, pipeline.Trigger(policy=policy, force=True))
            report = info.value.details["violations"]
            if users.problem is None:
                assert _report_rows(report["first"]) == sorted(want, key=repr), content
                assert report["total"] == len(want)
            else:
                assert [v["rule"] for v in report["first"]] == [users.problem], content
            continue
        summary = pipeline.run(run_settings, pipeline.Trigger(policy=policy, force=True))
        stored = db.run(f'SELECT file, line, column_name, rule, value, raw FROM "{schema}".etl_rejects '
                        "WHERE run_id = :id", id=summary["run_id"])
        assert sorted(((f, line, c, r) for f, line, c, r, _, _ in stored), key=repr) == sorted(want, key=repr), content
        assert all("\x00" not in (value or "") + (raw or "") for *_, value, raw in stored)
        loaded = db.run(f'SELECT user_id, user_name, total_experiments FROM "{schema}".user_features ORDER BY user_id')
        counts = {}
        for row in experiments.accepted:
            counts[row[1]] = counts.get(row[1], 0) + 1
        assert [tuple(r) for r in loaded] == sorted((u, name, counts.get(u, 0)) for u, name, *_ in users.accepted)
