"""The fast path and the diagnostic path cannot disagree: a differential test over generated rows.

Rows for each of the three files are drawn from valid values and every kind of invalid one (ids of
17 to 20 digits, leading zeros, '+' signs, hex, negatives and 0; dates that exist or not; numbers
valid or not, -0 among them; empty fields; id lists with spaces and empty items; keys twice; unknown
users and compounds; rows with a field too few or too many; rows of empty fields; an extra column), each
labelled with what the contract says about it.  The same rows go to

* the diagnostic path (diagnose.read): its violations (line, column, rule) and accepted rows must be
  exactly what the labels say, each violation once;
* the fast path (fast.read), one row at a time and the whole file: it takes a row exactly when the
  row is valid and written in a form its reader takes (every valid form but a '+' sign before an id
  and a quoted field with a comma after whitespace), and then hands on the same values; it takes the
  whole file only when it is valid;
* read_file, which picks the path: its rows and violations are the diagnostic path's.

test_a_value_gets_the_same_verdict_on_both_paths explores the values one at a time (a row of plain
valid fields but one); the file tests add what only a file has: keys twice, references, empty and
broken rows, an extra column.  Each bug this test found (19-digit and hex ids, '+' signs, -0, NULL
as a blank field, keys written two ways, rows lost after pyarrow's last batch) fails it again if
its fix is undone.

Hypothesis runs derandomized (a fixed seed per test, no example database) so that CI sees the same
examples every run; a run takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_core.contract import COMPOUNDS, EXPERIMENTS, USERS, FileContract, Rule
from etl_core.reading import diagnose, extract, fast, rules
from etl_core.sources.source import SourceMissing

USERS_KNOWN = [1, 2, 3, rules.ID_MAX]
COMPOUNDS_KNOWN = [1, 2, 3, 4, 10**17, rules.ID_MAX]
REFS = extract.References.of(pa.array(USERS_KNOWN, pa.int64()), pa.array(COMPOUNDS_KNOWN, pa.int64()))
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class MemorySource:
    """Files held in memory: a Source for tests (and proof that extract needs nothing but streams)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def open(self, name: str) -> pa.NativeFile:
        if name not in self.files:
            raise SourceMissing(f"{name} is not there", file=name)
        return pa.BufferReader(self.files[name])

    def size(self, name: str) -> int:
        return len(self.files[name])

    def identity(self, name: str) -> str:
        return str(hash(self.files[name]))


@dataclasses.dataclass(frozen=True)
class Field:
    """One field as written, and what the contract says of it."""

    text: str  # as it goes into the line (quoted if it must be)
    value: Any = None  # the accepted value, when valid
    rules: frozenset[Rule] = frozenset()  # what it breaks
    plain: bool = True  # whether the fast path's reader takes it as it is written
    ids: tuple[int, ...] = ()  # id lists: the valid ids it names (unknown compounds are found from them)

    @property
    def valid(self) -> bool:
        return not self.rules


def quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def field(text: str, **kwargs: Any) -> Field:
    """A field whose text is quoted if a CSV line needs it to be."""
    return Field(quoted(text) if any(c in text for c in ',"') and not text.startswith('"') else text, **kwargs)


# --- ids


def id_values(small: bool = False) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(1, 5),  # keys repeat, references hit
        st.integers(1, 5) if small else st.integers(1, 10**6),
        st.integers(10**16, 10**17 - 1),  # 17 digits
        st.integers(10**17, rules.ID_MAX),  # 18 digits
        st.sampled_from([rules.ID_MAX, 10**17]),
    )


@st.composite
def valid_id(draw: st.DrawFn, values: st.SearchStrategy[int]) -> Field:
    v = draw(values)
    form = draw(st.sampled_from(["plain", "plain", "zeros", "spaces", "tab", "quoted", "quoted-spaces", "plus"]))
    text = {"plain": str(v), "zeros": "000" + str(v), "spaces": f" {v} ", "tab": f"\t{v}", "quoted": f'"{v}"',
            "quoted-spaces": f'" {v} "', "plus": f"+{v}"}[form]
    return Field(text, v, plain=form != "plus")  # pyarrow reads no '+' before an integer


def invalid_id() -> st.SearchStrategy[Field]:
    texts = st.one_of(
        st.sampled_from(["0", "000", "-0", "+0", "", " ", "+", "++1", "+-1", "x1", "1x", "1.0", "1e3", "1 2",
                         "0x1A", "0X10", '" 0x10"', "-", "\u0661", "NULL", "NA", "nan"]),
        st.integers(10**18, 10**19 - 1).map(str),  # 19 digits
        st.integers(10**19, 10**20 - 1).map(str),  # 20 digits
        st.integers(10**18, 10**19 - 1).map(lambda v: f"00{v}"),  # 19 digits after leading zeros
        st.integers(10**20, 10**30).map(str),
        st.integers(1, rules.ID_MAX).map(lambda v: f"-{v}"),
        st.integers(1, 10**6).map(hex),
    )
    return texts.map(lambda t: field(t, rules=frozenset({Rule.NOT_POSITIVE_INTEGER})))


# --- text

TEXT_CHARS = st.sampled_from([*"abcXYZ019 ,;.@-_é€😀", '"'])


@st.composite
def valid_text(draw: st.DrawFn) -> Field:
    core = draw(st.text(TEXT_CHARS, min_size=1, max_size=12).filter(
        lambda t: t.strip() and t.strip()[0] != '"' and t.strip()[-1] != '"'))
    value = core.strip()
    form = draw(st.sampled_from(["plain", "plain", "spaces", "quoted", "tab-quoted"]))
    if form == "spaces" and not any(c in core for c in ',"'):
        return Field(f"  {core}\t", value)
    if form == "quoted":
        return Field(quoted(core), value)
    if form == "tab-quoted":
        # a quoted field after whitespace: pyarrow's reader keeps the quotes as text, and splits the
        # field at a comma; the fast path sees the quote and leaves the file to the diagnostic path,
        # which reads the field whole
        return Field("\t" + quoted(value), value, plain=False)
    return field(core, value=value)


def invalid_text() -> st.SearchStrategy[Field]:
    blank = st.sampled_from(["", " ", "   ", "\t", '""', '" "', '"\t"'])
    return blank.map(lambda t: Field(t, rules=frozenset({Rule.EMPTY_VALUE})))


# --- dates


@st.composite
def valid_date(draw: st.DrawFn) -> Field:
    day = draw(st.dates(datetime.date(1, 1, 1), datetime.date(9999, 12, 31)))
    text = day.isoformat()
    return Field(draw(st.sampled_from([text, f" {text} ", f'"{text}"'])), day)


def _exists(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
        return True
    except ValueError:
        return False


def invalid_date() -> st.SearchStrategy[Field]:
    texts = st.one_of(
        st.builds(lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}", st.integers(1, 9999), st.integers(1, 12),
                  st.integers(29, 31)).filter(lambda t: not _exists(t)),  # 2023-02-30, 2023-04-31
        st.builds(lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}", st.integers(0, 9999), st.sampled_from([0, 13, 99]),
                  st.integers(1, 28)),
        st.builds(lambda y, m: f"{y:04d}-{m:02d}-00", st.integers(1, 9999), st.integers(1, 12)),
        st.sampled_from(["", " ", "2023-1-1", "2023-01-1", "01/02/2023", "20230101", "2023-01-01T00:00",
                         "+2023-01-01", "-2023-01-01", "12023-01-01", "2023-01-01x", "2023/01/01", "today", "NULL"]),
    )
    return texts.map(lambda t: field(t, rules=frozenset({Rule.NOT_ISO_DATE})))


# --- numbers


@st.composite
def valid_number(draw: st.DrawFn) -> Field:
    text = draw(st.one_of(
        st.integers(0, 10**9).map(str),
        st.floats(0, 1e12, allow_nan=False, allow_infinity=False).map(repr),
        st.floats(0, 1e300, allow_nan=False, allow_infinity=False).map(lambda f: f"{f:e}"),
        st.sampled_from([".5", "5.", "+1.5", "+0", "00.5", "1E3", "1e+3", "1e-3", "0.0", "1e-400", "0e5"]),
    ))
    return Field(draw(st.sampled_from([text, f" {text} ", f'"{text}"'])), float(text))


def invalid_number() -> st.SearchStrategy[Field]:
    texts = st.one_of(
        st.sampled_from(["-0", "-0.0", "-.0", "-0e1", " -0 "]),  # pyarrow reads these as -0.0
        st.sampled_from(["-1", "-.5", "inf", "+inf", "Infinity", "nan", "NaN", "-nan", "1e400", "ten", "", " ",
                         "1,5", "0x10", ".", "1e", "e3", "1.5.2", "--1", "NULL", "N/A", "1 000", "1d3", "\u0661"]),
        st.floats(1e-3, 1e12).map(lambda f: repr(-f)),
    )
    return texts.map(lambda t: field(t, rules=frozenset({Rule.NOT_NON_NEGATIVE_NUMBER})))


# --- id lists


@st.composite
def id_list(draw: st.DrawFn, valid: bool) -> Field:
    kinds = ["valid"] * draw(st.integers(1, 4))
    if not valid:
        faults = draw(st.lists(st.sampled_from(["empty", "bad", "only-empty"]), min_size=1, max_size=2))
        if "only-empty" in faults:
            kinds = ["empty"]
        else:
            for fault in faults:
                kinds.insert(draw(st.integers(0, len(kinds))), fault)
    items: list[str] = []
    ids: list[int] = []
    found: set[Rule] = set()
    plain = True
    for kind in kinds:
        if kind == "valid":
            v = draw(st.sampled_from(COMPOUNDS_KNOWN) if draw(st.integers(0, 9)) else id_values())
            form = draw(st.sampled_from(["plain", "plain", "spaces", "zeros", "plus"]))
            items.append({"plain": str(v), "spaces": f" {v} ", "zeros": f"0{v}", "plus": f"+{v}"}[form])
            ids.append(v)
            plain = plain and form != "plus"
        elif kind == "empty":
            items.append(draw(st.sampled_from(["", " ", "\t"])))
            found.add(Rule.EMPTY_LIST_ITEM)
        else:
            items.append(draw(st.sampled_from(["x", "0", "-2", "0x2", "1.5", str(10**18), "99999999999999999999",
                                               "1 2", "+"])))
            found.add(Rule.NOT_POSITIVE_INTEGER)
    text = draw(st.sampled_from([";", "; "])).join(items)
    if not text.strip():
        found = {Rule.EMPTY_LIST}
    written = draw(st.sampled_from([text, f'"{text}"']))
    return Field(written, ids if not found else None, frozenset(found), plain=plain, ids=tuple(ids))


# --- rows and files, and what the contract says about them

VALID = {"id": lambda: valid_id(id_values()), "text": valid_text, "date": valid_date, "number": valid_number,
         "id_list": lambda: id_list(True)}
INVALID = {"id": invalid_id, "text": invalid_text, "date": invalid_date, "number": invalid_number,
           "id_list": lambda: id_list(False)}
EMPTY = {"id": Rule.NOT_POSITIVE_INTEGER, "text": Rule.EMPTY_VALUE, "date": Rule.NOT_ISO_DATE,
         "number": Rule.NOT_NON_NEGATIVE_NUMBER, "id_list": Rule.EMPTY_LIST}


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a file: its fields (none for a blank or broken line) and its extra field, if any."""

    fields: dict[str, Field]
    extra: str | None = None
    broken: str | None = None  # the line, when it has a field too few or too many

    def line(self) -> str:
        if self.broken is not None:
            return self.broken
        texts = [f.text for f in self.fields.values()]
        return ",".join(texts if self.extra is None else [*texts, self.extra])


@st.composite
def rows_of(draw: st.DrawFn, contract: FileContract, extra: bool) -> list[Row]:
    out = []
    for _ in range(draw(st.sampled_from([1, 1, 2, 3, 5, 8]))):
        shape = draw(st.sampled_from(["valid"] * 4 + ["one-fault"] * 4 + ["faults", "empty", "empty", "broken"]))
        names = contract.column_names
        faulty = {"valid": set(), "one-fault": {draw(st.sampled_from(names))}, "faults": set(names)}.get(shape, set())
        fields = {}
        for col in contract.columns:
            if shape == "empty":  # a row of empty fields (,,,) is a row with empty values, not a blank line
                text = draw(st.sampled_from(["", "", "", "NULL", "nan"])) if col.kind in ("id", "number") else ""
                fields[col.name] = Field(text, rules=frozenset({EMPTY[col.kind]}))
            elif col.name in faulty and draw(st.booleans() if shape == "faults" else st.just(True)):
                fields[col.name] = draw(INVALID[col.kind]())
            elif col.name == "user_id" and contract is EXPERIMENTS:  # a user that may be unknown
                known = draw(st.integers(0, 4))
                fields[col.name] = draw(valid_id(st.sampled_from(USERS_KNOWN) if known else id_values(small=True)))
            else:
                fields[col.name] = draw(VALID[col.kind]())
        note = draw(st.sampled_from(["", "a note", '"a, b"'])) if extra else None
        row = Row(fields, note)
        if shape == "broken":  # plain fields, one too few or one too many
            texts = [str(i + 1) for i in range(len(names) + (1 if extra else 0))]
            row = Row({}, broken=",".join(texts[:-1] if draw(st.booleans()) else [*texts, "x"]))
        out.append(row)
    return out


def content_of(contract: FileContract, rows: list[Row], extra: bool) -> bytes:
    header = ",".join([*contract.column_names, "note"] if extra else contract.column_names)
    return ("\n".join([header, *(row.line() for row in rows)]) + "\n").encode()


def expected(contract: FileContract, rows: list[Row]) -> tuple[set[tuple[int, str | None, str]], list[Any]]:
    """What the contract says: every (line, column, rule), and the accepted rows."""
    found: set[tuple[int, str | None, str]] = set()
    lined = list(enumerate(rows, start=2))
    for line, row in lined:
        if row.broken is not None:
            found.add((line, None, Rule.FIELD_COUNT.value))
        for name, f in row.fields.items():
            found |= {(line, name, r.value) for r in f.rules}
        if contract is EXPERIMENTS and row.broken is None:
            if row.fields["user_id"].valid and row.fields["user_id"].value not in USERS_KNOWN:
                found.add((line, "user_id", Rule.UNKNOWN_USER.value))
            if any(i not in COMPOUNDS_KNOWN for i in row.fields["experiment_compound_ids"].ids):
                found.add((line, "experiment_compound_ids", Rule.UNKNOWN_COMPOUND.value))
    keys = [row.fields[contract.key].value for _, row in lined if row.fields and row.fields[contract.key].valid]
    for line, row in lined:
        if row.fields and row.fields[contract.key].valid and keys.count(row.fields[contract.key].value) > 1:
            found.add((line, contract.key, Rule.DUPLICATE_KEY.value))
    bad = {line for line, _, _ in found}
    accepted = [tuple(f.value for f in row.fields.values()) for line, row in lined if line not in bad]
    return found, accepted


def readable(content: bytes, rows: list[Row]) -> bool:
    """Whether the fast path's reader takes every field as it is written.  '0x' or '0X' anywhere in the
    file, even in text, makes the fast path leave the file to the diagnostic path (fast._Watched)."""
    return all(f.plain for row in rows for f in row.fields.values()) and b"0x" not in content.lower()


def plain_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in table.to_pylist()]


def run_fast(contract: FileContract, content: bytes, refs: extract.References | None, *, whole: bool = False
             ) -> list[Any] | None:
    """The fast path alone: the rows it hands on, or None when it leaves the file to the diagnostic path.
    ``whole``: the file is read whole (as a small file is), not streamed."""
    source = MemorySource({contract.filename: content})
    names = content.split(b"\n", 1)[0].decode().split(",")
    collector = extract.Collector(rules.output_schema(contract))
    try:
        fast.read(source, contract, names, collector.add, refs, 1 << 16, None, size=len(content) if whole else None)
    except (fast.Diagnose, pa.ArrowInvalid):
        return None
    return plain_rows(collector.table())


def run_diagnose(contract: FileContract, content: bytes, refs: extract.References | None
                 ) -> tuple[list[tuple[int, str | None, str]], list[Any]]:
    source = MemorySource({contract.filename: content})
    names = content.split(b"\n", 1)[0].decode().split(",")
    collector = extract.Collector(rules.output_schema(contract))
    outcome = diagnose.read(source, contract, names, collector.add, refs, 1 << 16, None)
    return [(v["line"], v["column"], v["rule"]) for v in outcome.violations.to_pylist()], plain_rows(collector.table())


def check_both_paths(contract: FileContract, rows: list[Row], extra: bool) -> None:
    refs = REFS if contract is EXPERIMENTS else None
    content = content_of(contract, rows, extra)
    want, accepted = expected(contract, rows)

    # the diagnostic path says exactly what the contract says, each violation once
    listed, diagnosed = run_diagnose(contract, content, refs)
    assert set(listed) == want, content.decode()
    assert len(listed) == len(want), f"a violation reported twice: {listed}"
    assert sorted(diagnosed, key=repr) == sorted(accepted, key=repr), content.decode()

    # row by row: the diagnostic path says what the contract says of the row alone; the fast path takes
    # the row exactly when it is valid and its reader takes it as written, with the same values
    for row in rows:
        alone = content_of(contract, [row], extra)
        assert set(run_diagnose(contract, alone, refs)[0]) == expected(contract, [row])[0], alone.decode()
        taken = run_fast(contract, alone, refs)
        should = not expected(contract, [row])[0] and readable(alone, [row])
        assert (taken is not None) == should, alone.decode()
        if taken is not None:
            assert taken == [tuple(f.value for f in row.fields.values())], alone.decode()

    # the whole file: the fast path takes it only when it is valid, and then hands on the same rows,
    # streamed or read whole
    whole = run_fast(contract, content, refs)
    assert run_fast(contract, content, refs, whole=True) == whole, content.decode()
    if whole is not None:
        assert not want, content.decode()
        assert whole == diagnosed
    elif not want:
        assert not readable(content, rows), "a valid file that the fast path's reader takes left the fast path"

    # read_file picks a path; what it gives is the diagnostic path's answer
    collector = extract.Collector(rules.output_schema(contract))
    result = extract.read_file(MemorySource({contract.filename: content}), contract, collector, refs=refs,
                               block_size=1 << 16)
    assert [(v["line"], v["column"], v["rule"]) for v in result.violations.to_pylist()] == listed
    assert plain_rows(collector.table()) == diagnosed
    assert (result.rows_read, result.rows_accepted) == (len(rows), len(accepted))


@SETTINGS
@given(st.booleans().flatmap(lambda extra: st.tuples(rows_of(USERS, extra), st.just(extra))))
def test_users_verdicts_agree(case: tuple[list[Row], bool]) -> None:
    check_both_paths(USERS, *case)


@SETTINGS
@given(st.booleans().flatmap(lambda extra: st.tuples(rows_of(COMPOUNDS, extra), st.just(extra))))
def test_compounds_verdicts_agree(case: tuple[list[Row], bool]) -> None:
    check_both_paths(COMPOUNDS, *case)


@SETTINGS
@given(st.booleans().flatmap(lambda extra: st.tuples(rows_of(EXPERIMENTS, extra), st.just(extra))))
def test_experiments_verdicts_agree(case: tuple[list[Row], bool]) -> None:
    check_both_paths(EXPERIMENTS, *case)


DEFAULTS = {"id": Field("1", 1), "text": Field("A", "A"), "date": Field("2023-01-01", datetime.date(2023, 1, 1)),
            "number": Field("1", 1.0), "id_list": Field("1", [1], ids=(1,))}


@st.composite
def one_value(draw: st.DrawFn, contract: FileContract) -> Row:
    """A row of plain valid fields but one, which is any value of its kind, valid or not."""
    target = draw(st.sampled_from(contract.columns))
    value = draw(st.one_of(VALID[target.kind](), INVALID[target.kind]()))
    return Row({c.name: value if c is target else DEFAULTS[c.kind] for c in contract.columns})


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.sampled_from([USERS, COMPOUNDS, EXPERIMENTS]).flatmap(lambda c: st.tuples(st.just(c), one_value(c))))
def test_a_value_gets_the_same_verdict_on_both_paths(case: tuple[FileContract, Row]) -> None:
    contract, row = case
    refs = REFS if contract is EXPERIMENTS else None
    content = content_of(contract, [row], False)
    want, accepted = expected(contract, [row])
    listed, diagnosed = run_diagnose(contract, content, refs)
    assert (listed, diagnosed) == (sorted(want, key=repr), accepted), content.decode()
    taken = run_fast(contract, content, refs)
    assert taken == (accepted if not want and readable(content, [row]) else None), content.decode()
