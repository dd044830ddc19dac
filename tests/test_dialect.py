"""The corners of the CSV dialect (docs/contract.md), one named regression test per class of issue 21.

Each case is read every way the job reads a file: streamed and read whole on the fast path (which
either takes the file as it is or leaves it to the diagnostic path), read early on a thread of its
own, and on the diagnostic path directly.  Every way must give the same violations (line, column,
rule) and the same accepted rows.  The policies' side (strict's answer, quarantine's stored rejects)
is in tests/test_dialect_load.py, against a real PostgreSQL.
"""

from __future__ import annotations

import datetime
from typing import Any

import pyarrow as pa
import pytest

from etl_core.contract import COMPOUNDS, EXPERIMENTS, USERS, FileContract
from etl_core.reading import extract, fast, header, lines
from etl_core.sources.source import Pinned
from tests.test_rules import MemorySource

pytestmark = pytest.mark.unit

UH = "user_id,name,email,signup_date\n"
CH = "compound_id,compound_name,compound_structure\n"
EH = "experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
REFS = extract.References.of(pa.array([1, 2, 3], pa.int64()), pa.array([1, 2, 3], pa.int64()))
D = datetime.date(2023, 1, 1)

Found = list[tuple[int | None, str | None, str]]


def every_way(contract: FileContract, content: bytes, refs: extract.References | None = None, *,
              block_size: int = 1 << 16) -> tuple[Found, list[dict[str, Any]], list[dict[str, Any]], int]:
    """(violations, accepted rows, the violations as dicts, rows read), the same every way the file is
    read, or the test fails."""
    answers = []
    for way in ("streamed", "whole", "early", "diagnostic"):
        source = Pinned(MemorySource({contract.filename: content}))
        sink = extract.Collector(extract.output_schema(contract))
        if way == "diagnostic":
            names, _ = header.read_header(source, contract)
            outcome = extract.diagnosed(source, contract, names, sink, refs, block_size, None, None)
            table, read = outcome.violations, outcome.rows_read
        else:
            early = extract.read_early(source, contract, size=len(content), block_size=block_size) \
                if way == "early" else None
            try:
                result = extract.read_file(source, contract, sink, refs=refs, block_size=block_size,
                                           size=len(content) if way != "streamed" else None, early=early)
            finally:
                if early is not None:
                    early.close()
            table, read = result.violations, result.rows_read
        found = [(v["line"], v["column"], v["rule"]) for v in table.to_pylist()]
        answers.append((way, found, sink.table().to_pylist(), table.to_pylist(), read))
    first = answers[0]
    for way, *answer in answers[1:]:
        assert answer == list(first[1:]), f"{way} differs from {first[0]}"
    return first[1], first[2], first[3], first[4]


def fast_takes(contract: FileContract, content: bytes, refs: extract.References | None = None) -> bool:
    """Whether the fast path alone takes the file (streamed and whole agree on that)."""
    taken = []
    for size in (None, len(content)):
        source = MemorySource({contract.filename: content})
        names, _ = header.read_header(source, contract)
        sink = extract.Collector(extract.output_schema(contract))
        try:
            fast.read(source, contract, names, sink.add, refs, 1 << 16, None, size=size)
            taken.append(True)
        except (fast.Diagnose, pa.ArrowInvalid):
            taken.append(False)
    assert taken[0] == taken[1]
    return taken[0]


# --- whitespace before a quoted field that holds a delimiter


@pytest.mark.parametrize(("row", "want"), [
    ('1, "Doe, John",2023-01-01', [(2, None, "field_count")]),  # a naive split has the right field count
    ('1,\t"Doe, John",\t"j@x" ,2023-01-01', []),
    ('1 , "Aspirin, 500",x@y,2023-01-01', []),
])
def test_whitespace_before_a_quoted_field_holding_a_delimiter_reads_it_as_one_field(row: str, want: Found) -> None:
    found, accepted, _, _ = every_way(USERS, (UH + row + "\n2,B,b@x,2023-01-01\n").encode())
    assert found == want
    names = [r["name"] for r in accepted]
    assert names == (["B"] if want else [row.split('"')[1], "B"])


def test_whitespace_before_a_quote_inside_an_ignored_column_still_counts_its_fields() -> None:
    # the two halves of a naive split would both fall into ignored columns and give the right count
    content = b'compound_id,v1,v2,compound_name,compound_structure\n1, "a,b",A,X\n2,p,q,B,Y\n'
    assert every_way(COMPOUNDS, content)[0] == [(2, None, "field_count")]
    assert not fast_takes(COMPOUNDS, content)


def test_repeated_names_of_ignored_columns_are_read_every_way() -> None:
    content = (UH.strip() + ',,note,,note\n1,A,a@x,2023-01-01,"p,q",x,,y\n2,B,b@x,2023-13-01,,,,\n').encode()
    found, accepted, _, read = every_way(USERS, content)
    assert found == [(3, "signup_date", "not_iso_date")] and read == 2
    assert [(r["user_id"], r["name"]) for r in accepted] == [(1, "A")]


# --- a quote left open on its line


def test_a_quote_left_open_does_not_merge_two_users() -> None:
    content = (UH + '1,"Al,a@x,2023-01-01\n2,Bob",b@x,2023-01-01\n').encode()
    found, accepted, violations, read = every_way(USERS, content)
    assert found == [(2, None, "field_count")]
    assert violations[0]["raw"] == '1,"Al,a@x,2023-01-01'
    assert [(r["user_id"], r["name"]) for r in accepted] == [(2, 'Bob"')]  # a quote inside a field is a quote
    assert read == 2


def test_a_quote_left_open_swallows_nothing_and_later_lines_keep_their_numbers() -> None:
    rows = [f"{i},C{i},X" for i in range(1, 1001)]
    rows[9] = '10,"C10,X'  # line 11
    rows[499] = "500,,X"  # line 501
    rows[998] = "999,C999"  # line 1000
    content = (CH + "\n".join(rows) + "\n").encode()
    found, accepted, _, read = every_way(COMPOUNDS, content, block_size=4096)
    assert found == [(11, None, "field_count"), (501, "compound_name", "empty_value"), (1000, None, "field_count")]
    assert len(accepted) == 997 and read == 1000


def _rows_of(contract: FileContract, n: int) -> list[list[str]]:
    if contract is USERS:
        return [[str(i), f"U{i}", f"u{i}@x", "2023-01-01"] for i in range(1, n + 1)]
    if contract is COMPOUNDS:
        return [[str(i), f"C{i}", "X"] for i in range(1, n + 1)]
    return [[str(i), str(1 + i % 3), str(1 + i % 3), "10"] for i in range(1, n + 1)]


@pytest.mark.parametrize("contract", [USERS, COMPOUNDS, EXPERIMENTS], ids=lambda c: c.filename)
@pytest.mark.parametrize("line", [2, 700, 2999])
def test_a_quote_left_open_in_any_field_of_a_file_of_many_blocks_loses_no_other_row(
        contract: FileContract, line: int) -> None:
    """pyarrow's reader, parsing a whole file's blocks on several threads, ran a quote left open to the end
    of its block and dropped the rows it swallowed without an error: the run published the file less
    those rows, in strict too.  Every field, at lines near the start, the middle and the end."""
    for field in range(len(contract.columns)):
        rows = _rows_of(contract, 3000)
        rows[line - 2][field] = '"' + rows[line - 2][field]
        content = "\n".join([",".join(c.name for c in contract.columns), *(",".join(r) for r in rows), ""]).encode()
        found, accepted, _, read = every_way(contract, content, REFS if contract is EXPERIMENTS else None,
                                             block_size=4096)
        assert found == [(line, None, "field_count")], (field, found[:3])
        assert len(accepted) == 2999 and read == 3000, field


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_a_quote_left_open_is_judged_on_its_line_whatever_the_line_break(end: str) -> None:
    content = end.join([UH.strip(), "1,A,a@x,2023-01-01", '2,"B,b@x,2023-01-01', "3,C,c@x,2023-13-01", ""]).encode()
    found, accepted, _, _ = every_way(USERS, content)
    assert found == [(3, None, "field_count"), (4, "signup_date", "not_iso_date")]
    assert [r["user_id"] for r in accepted] == [1]


def test_a_line_break_inside_quotes_is_two_broken_lines() -> None:
    content = (UH + '1,"Al\nice",a@x,2023-01-01\n2,B,b@x,2023-01-01\n').encode()
    found, accepted, _, _ = every_way(USERS, content)
    assert found == [(2, None, "field_count"), (3, None, "field_count")]
    assert [r["user_id"] for r in accepted] == [2]


# --- NUL bytes


def test_a_nul_byte_is_a_row_problem_shown_escaped() -> None:
    content = (UH + "1,A\x00b,a@x,2023-01-01\n2\x00,B,b@x,2023-01-01\n3,C,c@x,2023-01-01\n"
               '4,"D",d@x,2023-01-01,\x00\n').encode()
    found, accepted, violations, _ = every_way(USERS, content)
    assert found == [(2, "name", "nul_byte"), (3, "user_id", "not_positive_integer"), (5, None, "field_count")]
    assert [v["value"] for v in violations] == ["A\\x00b", "2\\x00", None]
    assert [v["raw"] for v in violations] == ["1,A\\x00b,a@x,2023-01-01", "2\\x00,B,b@x,2023-01-01",
                                              '4,"D",d@x,2023-01-01,\\x00']
    assert all("\x00" not in str(value) for v in violations for value in v.values())
    assert [r["user_id"] for r in accepted] == [3]


def test_a_nul_byte_in_a_compound_list_or_run_time_breaks_its_rule() -> None:
    content = (EH + "1,1,1;\x002,10\n2,1,1,1\x00\n3,1,1,1\n").encode()
    found, accepted, _, _ = every_way(EXPERIMENTS, content, REFS)
    assert found == [(2, "experiment_compound_ids", "not_positive_integer"),
                     (3, "experiment_run_time", "not_non_negative_number")]
    assert [r["experiment_id"] for r in accepted] == [3]


# --- a header-only file, without a final newline, or longer than a read block


@pytest.mark.parametrize("content", [EH.strip(), EH, EH.strip() + "\r\n", "\ufeff" + EH.strip()])
def test_a_header_only_file_without_final_newline_reads_as_with_one(content: str) -> None:
    assert every_way(EXPERIMENTS, content.encode(), REFS) == ([], [], [], 0)


def test_a_header_longer_than_the_read_block_is_read() -> None:
    long_header = EH.strip() + "," + ",".join(f"extra_{i:05d}" for i in range(2000))  # 26 kB
    for rows, want in [("", []), ("\n" + "1,1,1,10" + ",x" * 2000, [1])]:
        found, accepted, _, _ = every_way(EXPERIMENTS, (long_header + rows).encode(), REFS, block_size=4096)
        assert found == []
        assert [r["experiment_id"] for r in accepted] == want


@pytest.mark.parametrize("quote", ["", '"', ' "'])
def test_a_field_longer_than_the_read_block_is_read(quote: str) -> None:
    name = "x" * 20000
    field = quote + name + quote.strip()
    found, accepted, _, _ = every_way(USERS, f"{UH}1,{field},a@x,2023-01-01\n2,B,b@x,2023-01-01\n".encode(),
                                      block_size=4096)
    assert found == []
    assert [r["name"] for r in accepted] == [name, "B"]


# --- rows of empty fields are rows


@pytest.mark.parametrize("row", [",,", '"","",""', ' , ,\t', '"" ,"", ""'])
def test_a_row_whose_fields_are_all_empty_is_reported_not_dropped(row: str) -> None:
    found, accepted, _, read = every_way(COMPOUNDS, (CH + "1,A,X\n" + row + "\n\n \t\n2,B,Y\n").encode())
    assert found == [(3, "compound_id", "not_positive_integer"), (3, "compound_name", "empty_value"),
                     (3, "compound_structure", "empty_value")]
    assert [r["compound_id"] for r in accepted] == [1, 2]
    assert read == 3  # the blank lines (4, 5) are no rows


# --- doubled quotes


@pytest.mark.parametrize(("field", "value"), [
    ('"""Alice"""', '"Alice"'), ('""""""', '""'), ('"a""b"', 'a"b'), (' """x"" y"', '"x" y'), ('""""', '"'),
])
def test_doubled_quotes_are_literal_quotes(field: str, value: str) -> None:
    found, accepted, _, _ = every_way(USERS, f"{UH}1,{field},a@x,2023-01-01\n".encode())
    assert found == []
    assert accepted == [{"user_id": 1, "name": value, "email": "a@x", "signup_date": D}]


# --- one whitespace rule: spaces and tabs around a value are trimmed, quoted or not; nothing else


@pytest.mark.parametrize(("field", "value"), [
    (" Bob ", "Bob"), ('" Bob "', "Bob"), ('\t" Bob "', "Bob"), (' " Bob " ', "Bob"), ('"\tBob"', "Bob"),
    ("\u00a0Bob", "\u00a0Bob"), ("Bob\u3000", "Bob\u3000"), ("\u00a0", "\u00a0"), ("\x0bBob", "\x0bBob"),
])
def test_only_spaces_and_tabs_are_trimmed(field: str, value: str) -> None:
    found, accepted, _, _ = every_way(USERS, f"{UH}1,{field},a@x,2023-01-01\n".encode())
    assert found == []
    assert accepted[0]["name"] == value


@pytest.mark.parametrize("field", ['\t"  "', '"  "', ' "\t" ', "  "])
def test_a_value_of_spaces_and_tabs_is_empty_quoted_or_not(field: str) -> None:
    found, _, _, _ = every_way(USERS, f"{UH}1,{field},a@x,2023-01-01\n".encode())
    assert found == [(2, "name", "empty_value")]


@pytest.mark.parametrize("field", ["1\u00a0", "\u00a01", "1\u3000", "1\x0b", "1\x0c"])
def test_an_id_with_a_unicode_space_is_not_an_id(field: str) -> None:
    found, _, _, _ = every_way(USERS, f"{UH}{field},A,a@x,2023-01-01\n".encode())
    assert found == [(2, "user_id", "not_positive_integer")]
    found, _, _, _ = every_way(EXPERIMENTS, f"{EH}1,1,2;{field},10\n".encode(), REFS)
    assert found == [(2, "experiment_compound_ids", "not_positive_integer")]


# --- blank lines before the header; an ignored column


@pytest.mark.parametrize("before", ["\n", "\r\n\r\n", " \t\n\n", "\ufeff\n"])
def test_blank_lines_before_the_header_are_passed_over(before: str) -> None:
    content = (before + UH + "1,A,a@x,2023-01-01\n2,B,b@x,2023-13-01\n").encode()
    lead = before.replace("\r\n", "\n").count("\n")
    found, accepted, _, _ = every_way(USERS, content)
    assert found == [(lead + 3, "signup_date", "not_iso_date")]  # the file's own line
    assert [r["user_id"] for r in accepted] == [1]


def test_a_file_of_blank_lines_is_empty() -> None:
    with pytest.raises(extract.FileProblem, match="empty_file"):
        header.read_header(MemorySource({USERS.filename: b"\n \t\n\r\n"}), USERS)


def test_an_ignored_column_is_not_checked_even_for_utf8_or_nul() -> None:
    content = b"compound_id,compound_name,compound_structure,vendor\n1,A,X,\xff\xfe\n2,B,Y,a\x00b\n"
    found, accepted, _, _ = every_way(COMPOUNDS, content)
    assert found == []
    assert [r["compound_id"] for r in accepted] == [1, 2]


# --- the physical-line reader itself


@pytest.mark.parametrize(("line", "fields"), [
    (b"", [b""]), (b"a,b", [b"a", b"b"]), (b' "a,b" ,c', [b"a,b ", b"c"]), (b'"a""b"', [b'a"b']),
    (b'a"b,c', [b'a"b', b"c"]), (b'"ab"c"d,e', [b'abc"d', b"e"]), (b'"open,x', None), (b'x,"', None),
    (b'"a\x00",\x00', [b"a\x00", b"\x00"]),
])
def test_a_line_splits_as_the_dialect_says(line: bytes, fields: list[bytes] | None) -> None:
    assert lines.split(line) == fields



@pytest.mark.parametrize("ends", [["\r"], ["\r", "\n", "\r\n"], ["\n", "\n", "\r"]])
def test_lines_keep_their_numbers_whatever_their_ends_across_blocks(ends: list[str]) -> None:
    rows = [f"{i},C{i},{'X' * (1 + i % 50)}" for i in range(1, 2001)]
    rows[1499] = "1500,,X"  # line 1501
    content = CH.strip() + ends[0] + "".join(row + ends[i % len(ends)] for i, row in enumerate(rows))
    for quoted in (False, True):  # blocks passed as they are, and blocks read line by line
        text = content.replace("C7,", '"C7",') if quoted else content
        found, accepted, _, _ = every_way(COMPOUNDS, text.encode(), block_size=4096)
        assert found == [(1501, "compound_name", "empty_value")]
        assert len(accepted) == 1999


def test_a_lone_cr_that_ends_a_read_block_still_counts_as_a_line_end() -> None:
    reader = lines.Lines(pa.BufferReader(b""), 3)
    handed = [reader._transform(pa.py_buffer(chunk)).to_pybytes()  # the blocks as pyarrow's reads cut them
              for chunk in (b"a,b,c\n", b"1,x,y\n2,x,y\r3", b',x,y\n4,"x,y\n', b"")]
    assert b"".join(handed).replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") == 5
    assert [(n, rule) for n, rule, _ in reader.broken] == [(5, "field_count")]


@pytest.mark.parametrize(("header_line", "problem"), [
    ('user_id, "name" ,\temail,"signup_date"', None), ('user_id,name,email,signup_date,"note', None),
    ("user_id,name\u00a0,email,signup_date", "missing_column"), ('user_id,"name,email",signup_date', "missing_column"),
])
def test_header_names_are_read_by_the_same_dialect(header_line: str, problem: str | None) -> None:
    content = (header_line + "\n1,A,a@x,2023-01-01" + (",n" if "note" in header_line else "") + "\n").encode()
    if problem:
        with pytest.raises(extract.FileProblem, match=problem):
            header.read_header(MemorySource({USERS.filename: content}), USERS)
        return
    found, accepted, _, _ = every_way(USERS, content)
    assert (found, [r["name"] for r in accepted]) == ([], ["A"])


@pytest.mark.parametrize(("last", "want"), [
    ('1,1,1,"10', [(2, None, "field_count")]), ('1,1,"1;2,10', [(2, None, "field_count")]), ('1,1,1,"10"', []),
    ('1,1,1,10"', [(2, "experiment_run_time", "not_non_negative_number")]),  # a quote in a plain field is a quote
])
def test_a_quote_on_a_last_line_without_a_line_break_is_judged_too(last: str, want: Found) -> None:
    found, accepted, _, _ = every_way(EXPERIMENTS, (EH + last).encode(), REFS)
    assert found == want
    assert len(accepted) == (0 if want else 1)
