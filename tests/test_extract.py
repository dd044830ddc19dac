"""Reading the files: the CSV dialects that copies of the challenge's data come in, and the exact
report (file, line, column, value, rule) for rows that break the contract.  No database here."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_core.contract import COMPOUNDS, EXPERIMENTS, USERS, FileContract, Rule
from etl_core.reading import diagnose, extract
from etl_core.sources.source import LocalSource, Pinned, SourceMissing

pytestmark = pytest.mark.unit

USERS_ROWS = [
    {"user_id": 1, "name": "Alice", "email": "alice@example.com", "signup_date": "2023-01-01"},
    {"user_id": 2, "name": "Bob, Jr.", "email": "bob@example.com", "signup_date": "2023-02-01"},
]


def read(tmp_path: Path, contract: FileContract, content: bytes, refs: extract.References | None = None, *,
         size: int | None = None, early: bool = False) -> tuple[pa.Table, extract.FileResult]:
    """``size``: the size read_file is told the file has (a small file is read whole); ``early``: the
    file is read and parsed ahead on its own thread (extract.read_early), as the pipeline reads a small
    experiments file."""
    path = tmp_path / contract.filename
    path.write_bytes(content)
    sink = extract.Collector(extract.output_schema(contract))
    source = Pinned(LocalSource(tmp_path))
    ahead = extract.read_early(source, contract, size=len(content), block_size=1 << 16) if early else None
    try:
        result = extract.read_file(source, contract, sink, refs=refs, block_size=1 << 16, size=size, early=ahead)
    finally:
        if ahead is not None:
            ahead.close()
    return sink.table(), result


def plain(table: pa.Table) -> list[dict[str, object]]:
    rows = table.to_pylist()
    for row in rows:
        if "signup_date" in row:
            row["signup_date"] = row["signup_date"].isoformat()
    return rows


@pytest.mark.parametrize("content", [
    b'user_id,name,email,signup_date\n1,Alice,alice@example.com,2023-01-01\n2,"Bob, Jr.",bob@example.com,2023-02-01\n',
    (b'user_id,name,email,signup_date\r\n'
     b'1,Alice,alice@example.com,2023-01-01\r\n'
     b'2,"Bob, Jr.",bob@example.com,2023-02-01\r\n'),
    (b'\xef\xbb\xbfuser_id,name,email,signup_date\r\n'
     b'1,Alice,alice@example.com,2023-01-01\r\n'
     b'2,"Bob, Jr.",bob@example.com,2023-02-01'),
    (b'user_id,\tname,\temail,\tsignup_date\n'
     b'1,\tAlice,\talice@example.com,\t2023-01-01\n'
     b'2,\t"Bob, Jr.",\tbob@example.com,\t2023-02-01\n'),
    (b'user_id, name, email, signup_date\n'
     b' 1 , Alice , alice@example.com , 2023-01-01 \n'
     b'\n'
     b'2,"Bob, Jr.",bob@example.com,2023-02-01\n'
     b'\n'),
    b'signup_date,email,name,user_id\n2023-01-01,alice@example.com,Alice,1\n2023-02-01,bob@example.com,"Bob, Jr.",2\n',
], ids=["lf", "crlf", "bom-crlf-no-final-newline", "tab-after-comma", "spaces-and-blank-lines", "reordered"])
def test_every_dialect_of_the_same_users_reads_the_same(tmp_path: Path, content: bytes) -> None:
    table, result = read(tmp_path, USERS, content)
    assert plain(table) == USERS_ROWS
    assert result.violations.num_rows == 0
    assert result.rows_read == 2


def test_extra_columns_are_ignored_and_reported(tmp_path: Path) -> None:
    table, result = read(tmp_path, COMPOUNDS, b"compound_id,compound_name,compound_structure,vendor\n1,A,X,acme\n")
    assert table.column_names == ["compound_id", "compound_name", "compound_structure"]
    assert result.extra_columns == ("vendor",)


@pytest.mark.parametrize("header", ["user_id,name,email,signup_date,,", "note,user_id,name,note,email,signup_date,note",
                                    ",user_id,name,email,signup_date,"])
def test_columns_outside_the_contract_may_repeat_their_names(tmp_path: Path, header: str) -> None:
    """A spreadsheet saves empty trailing columns as empty names: ignored columns, however named, and
    whatever they hold (a repeated name among them was a duplicate_column that failed the run)."""
    extra = header.count(",") - 3
    row = {"user_id": "1", "name": "Ann", "email": "a@x", "signup_date": "2023-01-01"}
    line = ",".join(row.get(n, f'"x,{i}"') for i, n in enumerate(header.split(",")))
    table, result = read(tmp_path, USERS, f"{header}\n{line}\n".encode())
    assert result.violations.num_rows == 0
    assert table.to_pylist() == [{"user_id": 1, "name": "Ann", "email": "a@x",
                                  "signup_date": datetime.date(2023, 1, 1)}]
    assert len(result.extra_columns) == extra


@pytest.mark.parametrize(("header", "row"), [
    ("compound_id,compound_name,compound_structure", "NULL,,"),
    ("compound_id,compound_name,compound_structure", "NA,,"),
    ("compound_id,compound_name,compound_structure,vendor", ",,,acme"),
], ids=["null-is-a-value", "na-is-a-value", "an-extra-field-is-not-blank"])
def test_a_row_is_blank_only_when_every_field_is_empty(tmp_path: Path, header: str, row: str) -> None:
    good = "1,A,X" + ",v" * (header.count(",") - 2)
    table, result = read(tmp_path, COMPOUNDS, f"{header}\n{good}\n{row}\n\n".encode())
    assert [(v["line"], v["rule"]) for v in result.violations.to_pylist()] == [
        (3, "not_positive_integer"), (3, "empty_value"), (3, "empty_value")]
    assert table["compound_id"].to_pylist() == [1]
    assert (result.rows_read, result.rows_rejected) == (2, 1)


def test_compound_lists_become_lists_of_ids(tmp_path: Path) -> None:
    refs = extract.References.of(pa.array([1, 2], pa.int64()), pa.array([1, 2, 3], pa.int64()))
    table, _ = read(tmp_path, EXPERIMENTS,
                    b"experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
                    b"1,1,1;2,10\n2,2, 3 ; 1 ,1.5\n3,1,2,0\n", refs)
    assert table["experiment_compound_ids"].to_pylist() == [[1, 2], [3, 1], [2]]
    assert table["experiment_run_time"].to_pylist() == [10.0, 1.5, 0.0]


def test_a_violation_names_file_line_column_value_and_rule(tmp_path: Path) -> None:
    table, result = read(tmp_path, USERS,
                         b"user_id,name,email,signup_date\n1,Alice,a@x,2023-01-01\n\n2,Bob,b@x,2023-13-01\n")
    assert result.violations.to_pylist() == [{
        "file": "users.csv", "line": 4, "column": "signup_date", "value": "2023-13-01",
        "rule": "not_iso_date", "raw": "2,Bob,b@x,2023-13-01",
    }]
    assert table["user_id"].to_pylist() == [1]  # the good row is still handed on
    assert (result.rows_read, result.rows_rejected) == (2, 1)


def test_lines_stay_exact_after_rows_with_a_wrong_field_count(tmp_path: Path) -> None:
    content = b"user_id,name,email,signup_date\n1,A,a@x,2023-01-01\n2,B\n3,C,c@x,2023-01-01,extra\n4,,d@x,2023-01-01\n"
    _, result = read(tmp_path, USERS, content)
    found = [(v["line"], v["rule"]) for v in result.violations.to_pylist()]
    assert found == [(3, "field_count"), (4, "field_count"), (5, "empty_value")]


def test_lines_that_are_not_utf8_are_reported_and_the_rest_still_read(tmp_path: Path) -> None:
    content = (b"user_id,name,email,signup_date\r\n1,Alice,a@x,2023-01-01\r\n2,Ren\xe9\r\n"
               b"3,Ren\xe9,c@x,2023-01-01\r\n4,,d@x,2023-01-01\r\n5,\xff\xfe,x\r\n\r\n6,E,e@x,2023-01-01\r\n"
               b"7,G\xe9,\"g,h\",2023-01-01,x")
    table, result = read(tmp_path, USERS, content)
    found = [(v["line"], v["column"], v["rule"]) for v in result.violations.to_pylist()]
    assert found == [(3, None, "encoding"), (4, "name", "encoding"), (5, "name", "empty_value"),
                     (6, None, "encoding"), (9, None, "encoding")]
    assert result.violations["raw"][0].as_py() == "2,Ren\ufffd"
    assert table["user_id"].to_pylist() == [1, 6]
    assert (result.rows_read, result.rows_rejected) == (7, 5)


def test_lines_stay_exact_with_many_broken_rows_across_batches(tmp_path: Path) -> None:
    rows = []
    for i in range(1, 3001):  # 150 kB: three batches, a thousand rows with a wrong field count
        rows.append(f"{i},C" if i % 3 == 0 else f"{i},,X" if i % 7 == 0 else f"{i},C{i},{'X' * 40}")
    _, result = read(tmp_path, COMPOUNDS, ("compound_id,compound_name,compound_structure\n" + "\n".join(rows)).encode())
    want = [(i + 1, "field_count" if i % 3 == 0 else "empty_value") for i in range(1, 3001) if i % 3 == 0 or i % 7 == 0]
    assert [(v["line"], v["rule"]) for v in result.violations.to_pylist()] == want


@pytest.mark.parametrize(("rows", "found", "accepted"), [
    ("1,A\n", [(2, "field_count")], []),
    ('1,\t"A, B",X\n', [], [1]),
    ('1,A\n2,\t"A, B",X\n3,B,Y,Z', [(2, "field_count"), (4, "field_count")], [2]),
], ids=["one-broken-row", "one-recovered-row", "no-row-that-pyarrow-returns"])
def test_rows_are_not_lost_when_pyarrow_returns_no_other_row(tmp_path: Path, rows: str, found: list[object],
                                                            accepted: list[int]) -> None:
    table, result = read(tmp_path, COMPOUNDS, ("compound_id,compound_name,compound_structure\n" + rows).encode())
    assert [(v["line"], v["rule"]) for v in result.violations.to_pylist()] == found
    assert table["compound_id"].to_pylist() == accepted
    assert result.rows_read == len(rows.strip().splitlines())


def test_unknown_compound_reports_the_offending_id(tmp_path: Path) -> None:
    refs = extract.References.of(pa.array([1], pa.int64()), pa.array([1, 2], pa.int64()))
    _, result = read(tmp_path, EXPERIMENTS,
                     b"experiment_id,user_id,experiment_compound_ids,experiment_run_time\n1,1,1;9;8,10\n", refs)
    [violation] = result.violations.to_pylist()
    assert (violation["rule"], violation["value"]) == ("unknown_compound", "9;8")


def test_huge_ids_are_not_positive_integers(tmp_path: Path) -> None:
    _, result = read(tmp_path, COMPOUNDS, b"compound_id,compound_name,compound_structure\n"
                                          b"99999999999999999999,A,X\n")
    assert result.violations["rule"].to_pylist() == [Rule.NOT_POSITIVE_INTEGER.value]


@pytest.mark.parametrize("other", ["", "x,B,b@x,2023-01-01\n"], ids=["fast-path", "diagnostic-path"])
def test_an_id_has_at_most_18_digits_on_either_path(tmp_path: Path, other: str) -> None:
    content = ("user_id,name,email,signup_date\n"
               "123456789012345678,A,a@x,2023-01-01\n"  # 18 digits
               "1234567890123456789,B,b@x,2023-01-01\n"  # 19
               "000000000000000000007,C,c@x,2023-01-01\n"  # 7, leading zeros aside
               + other)
    table, result = read(tmp_path, USERS, content.encode())
    found = [(v["line"], v["column"], v["rule"]) for v in result.violations.to_pylist()]
    want = [(3, "user_id", "not_positive_integer")] + ([(5, "user_id", "not_positive_integer")] if other else [])
    assert found == want  # each once
    assert table["user_id"].to_pylist() == [123456789012345678, 7]


@pytest.mark.parametrize("other", ["", "4,1,x,1\n"], ids=["fast-path", "diagnostic-path"])
def test_ids_in_experiments_have_at_most_18_digits_on_either_path(tmp_path: Path, other: str) -> None:
    big = 1234567890123456789  # an accepted compound could not have it: only the digit limit rejects it here
    refs = extract.References.of(pa.array([1], pa.int64()), pa.array([1, 123456789012345678, big], pa.int64()))
    content = ("experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
               f"1,1,1;123456789012345678,10\n2,1,1;{big},10\n{big},1,1,10\n" + other)
    table, result = read(tmp_path, EXPERIMENTS, content.encode(), refs)
    found = [(v["line"], v["column"], v["rule"]) for v in result.violations.to_pylist()]
    want = [(3, "experiment_compound_ids", "not_positive_integer"), (4, "experiment_id", "not_positive_integer")]
    assert found == want + ([(5, "experiment_compound_ids", "not_positive_integer")] if other else [])
    assert table["experiment_compound_ids"].to_pylist() == [[1, 123456789012345678]]


def test_an_id_may_have_a_plus_sign(tmp_path: Path) -> None:
    refs = extract.References.of(pa.array([1, 2], pa.int64()), pa.array([1, 2, 3], pa.int64()))
    table, result = read(tmp_path, EXPERIMENTS, b"experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
                                                b"+1,+2,+3; +1,10\n2,1,1;+,10\n", refs)
    assert [(v["line"], v["rule"]) for v in result.violations.to_pylist()] == [(3, "not_positive_integer")]
    assert table.to_pylist() == [{"experiment_id": 1, "user_id": 2, "experiment_compound_ids": [3, 1],
                                  "experiment_run_time": 10.0}]


@pytest.mark.parametrize(("whole", "early"), [(False, False), (True, False), (True, True)],
                         ids=["streamed", "read-whole", "read-early"])
@pytest.mark.parametrize("other", ["", "9,1,x,1\n"], ids=["fast-path", "diagnostic-path"])
def test_a_hexadecimal_id_is_not_an_id(tmp_path: Path, other: str, whole: bool, early: bool) -> None:
    """pyarrow reads 0x1A as the integer 26; the contract's ids are decimal, on either path, whether the
    file is streamed, read whole or read early."""
    refs = extract.References.of(pa.array([1, 26], pa.int64()), pa.array([1, 2, 16], pa.int64()))
    padding = "".join(f"{i},1,1,10\n" for i in range(10, 6000))  # 0x comes after the first 64 KiB block
    content = ("experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
               "1,1,1,10\n" + padding + '2,0x1A,1,10\n3,1,2;0X10,10\n4,1," 0x2",10\n' + other)
    table, result = read(tmp_path, EXPERIMENTS, content.encode(), refs, size=len(content) if whole else None,
                         early=early)
    bad = [(v["line"], v["column"], v["rule"]) for v in result.violations.to_pylist()]
    assert bad[:3] == [(5993, "user_id", "not_positive_integer"),
                       (5994, "experiment_compound_ids", "not_positive_integer"),
                       (5995, "experiment_compound_ids", "not_positive_integer")]
    assert table.num_rows == 5991


@pytest.mark.parametrize("zero", ["-0", "-0.0", "-.0", "-0e5"])
@pytest.mark.parametrize("other", ["", "9,1,x,1\n"], ids=["fast-path", "diagnostic-path"])
def test_a_run_time_with_a_minus_sign_is_negative_even_when_zero(tmp_path: Path, other: str, zero: str) -> None:
    refs = extract.References.of(pa.array([1], pa.int64()), pa.array([1], pa.int64()))
    content = ("experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
               f"1,1,1,0\n2,1,1,{zero}\n3,1,1,+0\n4,1,1,1e-400\n" + other)
    table, result = read(tmp_path, EXPERIMENTS, content.encode(), refs)
    assert [(v["line"], v["value"], v["rule"]) for v in result.violations.to_pylist()][:1] == [
        (3, zero, "not_non_negative_number")]
    assert table["experiment_run_time"].to_pylist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("content", "rule"), [
    (None, Rule.MISSING_FILE),
    (b"", Rule.EMPTY_FILE),
    (b"user_id,name,email\n", Rule.MISSING_COLUMN),
    (b"user_id,name,name,email,signup_date\n", Rule.DUPLICATE_COLUMN),
    (b"user_id,name,email,signup_date,,name\n", Rule.DUPLICATE_COLUMN),
    (b"user_id,n\xe4me,email,signup_date\n", Rule.ENCODING),
])
def test_unreadable_files_are_file_problems(tmp_path: Path, content: bytes | None, rule: Rule) -> None:
    path = tmp_path / "users.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(extract.FileProblem, match=rule.value) as info:
        extract.read_header(LocalSource(tmp_path), USERS)
    assert info.value.violation["rule"] == rule.value


# --- fuzz: random and mutated bytes give contract violations, never a crash or a hang

SEED = (b"experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
        b"1,1,1;2,10\n2,1,\"2;3\",15\n3,2,1;3,20\n")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEED)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert" or not data:
            data[at:at] = draw(st.sampled_from([b",", b";", b'"', b"\n", b"\r", b"\xff", b"-", b" ", b"\t", b"x",
                                                b"\xef\xbb\xbf", b"9" * 25]))
        elif op == "delete":
            del data[min(at, len(data) - 1)]
        else:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(mutated(), st.binary(max_size=200)))
def test_any_bytes_give_rows_or_contract_violations_never_a_crash(tmp_path: Path, content: bytes) -> None:
    refs = extract.References.of(pa.array([1, 2], pa.int64()), pa.array([1, 2, 3], pa.int64()))
    path = tmp_path / EXPERIMENTS.filename
    path.write_bytes(content)
    sink = extract.Collector(extract.output_schema(EXPERIMENTS))
    try:
        result = extract.read_file(LocalSource(tmp_path), EXPERIMENTS, sink, refs=refs, block_size=1 << 16)
    except extract.FileProblem:
        return
    rules = set(result.violations["rule"].to_pylist())
    assert rules <= {r.value for r in Rule}
    assert sink.table().num_rows == result.rows_accepted
    accepted = sink.table()
    if accepted.num_rows:  # what passes really is valid
        assert min(accepted["experiment_id"].to_pylist()) > 0
        assert all(c in (1, 2, 3) for cs in accepted["experiment_compound_ids"].to_pylist() for c in cs)


def test_keys_in_any_order_are_checked_for_duplicates_across_batches(tmp_path: Path) -> None:
    rows = [f"{i},C{i},{'X' * 40}" for i in [5, 3, 9, *range(10, 4000)]]  # 180 kB: three batches
    unique = "compound_id,compound_name,compound_structure\n" + "\n".join(rows) + "\n"
    table, result = read(tmp_path, COMPOUNDS, unique.encode())
    assert (table.num_rows, result.violations.num_rows) == (3993, 0)
    again = unique + "3,C3 again,Y\n"  # far from the first 3, in another batch
    _, result = read(tmp_path, COMPOUNDS, again.encode())
    assert [(v["line"], v["rule"]) for v in result.violations.to_pylist()] == [
        (3, "duplicate_key"), (3995, "duplicate_key")]


@pytest.mark.parametrize(("order", "opened"), [
    ([5, 3, 9, *range(10, 4000)], 2),  # in no order from the first batch: the keys kept as they pass (the header
    # is opened on its own)
    ([*range(10, 4000), 5, 3, 9], 3),  # in order for more than EARLY_BATCHES batches: a second look at the keys
])
def test_keys_that_stop_growing_early_are_looked_over_without_a_second_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: list[int], opened: int) -> None:
    opens: list[str] = []
    real = LocalSource.open

    def counted(self: LocalSource, name: str) -> Any:
        opens.append(name)
        return real(self, name)

    def load(content: str) -> extract.FileResult:
        (tmp_path / COMPOUNDS.filename).write_text(content)
        sink = extract.Collector(extract.output_schema(COMPOUNDS))
        result = extract.read_file(LocalSource(tmp_path), COMPOUNDS, sink, block_size=1 << 12)
        assert sink.table().num_rows == result.rows_accepted
        return result

    monkeypatch.setattr(LocalSource, "open", counted)
    rows = [f"{i},C{i},X" for i in order]  # 4 kB blocks: 9-10 batches
    content = "compound_id,compound_name,compound_structure\n" + "\n".join(rows) + "\n"
    result = load(content)
    assert (result.rows_accepted, result.violations.num_rows, len(opens)) == (len(order), 0, opened)
    result = load(content + "3,C3 again,Y\n")  # far from the first 3, in another batch
    assert [(v["line"], v["rule"]) for v in result.violations.to_pylist()] == [
        (order.index(3) + 2, "duplicate_key"), (len(order) + 2, "duplicate_key")]


@pytest.mark.parametrize("twice", ["3", " 3 ", '"3"', "+3", "003", '3,\t"C, again",Y'])
@pytest.mark.parametrize("other", ["", "x,B,Y\n"], ids=["fast-path", "diagnostic-path"])
def test_a_key_is_the_same_key_however_it_is_written(tmp_path: Path, twice: str, other: str) -> None:
    row = twice if "," in twice else f"{twice},C again,Y"
    content = f"compound_id,compound_name,compound_structure\n3,C,X\n4,D,Y\n{row}\n{other}"
    table, result = read(tmp_path, COMPOUNDS, content.encode())
    assert [(v["line"], v["rule"]) for v in result.violations.to_pylist()][:3] == [
        (2, "duplicate_key"), (4, "duplicate_key")] + ([(5, "not_positive_integer")] if other else [])
    assert table["compound_id"].to_pylist() == [4]


def test_a_failing_sink_fails_the_read_without_a_diagnostic_re_read(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_core.features import engine as counting

    def broken(self: counting.ExperimentCounter, item: object) -> None:
        raise pa.ArrowInvalid("a bug in counting")

    def no_diagnosis(*args: object) -> None:
        raise AssertionError("the file was read again on the diagnostic path")

    monkeypatch.setattr(counting.ExperimentCounter, "_partition", broken)
    monkeypatch.setattr(diagnose, "read", no_diagnosis)
    path = tmp_path / EXPERIMENTS.filename
    path.write_text("experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
                    + "".join(f"{i},1,1,10\n" for i in range(1, 20001)))
    with counting.ExperimentCounter(pa.array([1], pa.int64()), pa.array([1], pa.int64())) as counter:
        with pytest.raises(counting.CountingFailed):
            extract.read_file(LocalSource(tmp_path), EXPERIMENTS, counter, refs=extract.References.of(
                pa.array([1], pa.int64()), pa.array([1], pa.int64())), block_size=1 << 16)
            counter.result()


def test_a_file_read_whole_is_read_to_its_end_when_it_is_longer_than_said(tmp_path: Path) -> None:
    """The size a whole read is told is only where it starts: a file that grew since is read to its end
    (and Source.check, at the end of read_file, reports the change where the source can tell)."""
    content = b"compound_id,compound_name,compound_structure\n" + b"".join(
        b"%d,C%d,CC\n" % (i, i) for i in range(1, 101))
    table, result = read(tmp_path, COMPOUNDS, content, size=len(content) // 3)
    assert result.rows_read == 100 and table["compound_id"].to_pylist() == list(range(1, 101))


def test_the_fast_path_sees_0x_across_two_buffers() -> None:
    from etl_core.reading import fast

    watched = fast._Watched()
    for chunk in (b"id\n1,0", b"x1A\n"):
        assert watched(pa.py_buffer(chunk)).to_pybytes() == chunk
    assert watched.hex and watched.bytes == 10
    plain = fast._Watched()
    plain(pa.py_buffer(b"name,email\nAlex,alex@example.com\n0,x\n"))
    assert not plain.hex


@pytest.mark.parametrize("bad", ["5,1,1,10,extra\n", "5,1\n"], ids=["more-fields", "fewer-fields"])
def test_a_row_the_early_parse_cannot_read_is_reported_and_the_rest_loaded(tmp_path: Path, bad: str) -> None:
    """The early read's parse fails (pyarrow raises where the fast path would); the file is read again on
    the diagnostic path, which names the line, and every good row still arrives."""
    refs = extract.References.of(pa.array([1], pa.int64()), pa.array([1], pa.int64()))
    good = "".join(f"{i},1,1,10\n" for i in range(6, 3000))
    content = "experiment_id,user_id,experiment_compound_ids,experiment_run_time\n1,1,1,10\n" + bad + good
    table, result = read(tmp_path, EXPERIMENTS, content.encode(), refs, size=len(content), early=True)
    assert [v["line"] for v in result.violations.to_pylist()][:1] == [3]
    assert table["experiment_id"].to_pylist()[:2] == [1, 6] and table.num_rows == 2995


def test_an_early_read_raises_its_error_where_its_batches_are_taken(tmp_path: Path) -> None:
    from etl_core.reading import fast

    names = [c.name for c in EXPERIMENTS.columns]
    early = fast.Early(LocalSource(tmp_path), EXPERIMENTS, lambda: names, 1 << 16, 100)  # no such file
    with pytest.raises(SourceMissing, match=EXPERIMENTS.filename):
        list(early.batches(fast._Watched()))
    early.close()
    gone = fast.Early(LocalSource(tmp_path), EXPERIMENTS, lambda: names, 1 << 16, 100)
    gone.close()  # never taken: its error is dropped, not raised


def test_an_early_read_that_failed_is_freed_without_the_collector(tmp_path: Path) -> None:
    """Its error's traceback holds the early read's thread frame, which holds the read: kept on it, the
    two would make a cycle (and the file's bytes with it) that only the collector frees."""
    import gc
    import weakref

    refs = extract.References.of(pa.array([1], pa.int64()), pa.array([1], pa.int64()))
    content = ("experiment_id,user_id,experiment_compound_ids,experiment_run_time\n1,1,1,10\n5,1\n"
               + "".join(f"{i},1,1,10\n" for i in range(6, 3000))).encode()
    (tmp_path / EXPERIMENTS.filename).write_bytes(content)
    source = Pinned(LocalSource(tmp_path))
    gc.disable()
    try:
        early = extract.read_early(source, EXPERIMENTS, size=len(content), block_size=1 << 16)
        assert early is not None
        freed = weakref.ref(early)
        sink = extract.Collector(extract.output_schema(EXPERIMENTS))
        result = extract.read_file(source, EXPERIMENTS, sink, refs=refs, block_size=1 << 16, size=len(content),
                                   early=early)
        assert result.rows_rejected == 1  # the parse failed; the diagnostic path read the file
        early.close()
        del early
        assert freed() is None
    finally:
        gc.enable()


def test_a_file_too_large_to_read_whole_is_not_read_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_core.reading import fast

    content = b"compound_id,compound_name,compound_structure\n1,C1,CC\n"
    (tmp_path / COMPOUNDS.filename).write_bytes(content)
    source = Pinned(LocalSource(tmp_path))
    monkeypatch.setattr(fast, "WHOLE_READ_BYTES", len(content) - 1)
    assert extract.read_early(source, COMPOUNDS, size=len(content), block_size=1 << 16) is None
    monkeypatch.setattr(fast, "WHOLE_READ_BYTES", len(content))
    early = extract.read_early(source, COMPOUNDS, size=len(content), block_size=1 << 16)
    assert early is not None
    early.close()
