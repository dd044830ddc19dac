"""An independent oracle of the data contract: what docs/contract.md says a file gives, computed in
plain Python from the document alone.  It shares no code with the readers (it imports nothing from
etl_core): it splits lines and fields with a byte-by-byte state machine, and judges values with the
standard library.  tests/test_oracle.py holds the job's readers to it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

BOM = b"\xef\xbb\xbf"
BLANK = b" \t"
COMMA, QUOTE = 0x2C, 0x22
ID_LIMIT = 18


@dataclasses.dataclass
class Verdict:
    """What the contract says of one file: a file problem (its rule), or every row violation
    (line, column or None, rule), the accepted rows (values in the contract's column order) and the
    number of rows read (lines after the header that are not blank)."""

    problem: str | None = None
    violations: list[tuple[int, str | None, str]] = dataclasses.field(default_factory=list)
    accepted: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    rows_read: int = 0


def physical_lines(data: bytes) -> list[bytes]:
    """The file's lines, each without its line break (LF, CRLF or a lone CR); a last line without a
    line break is a line too."""
    out, start, i, n = [], 0, 0, len(data)
    while i < n:
        byte = data[i]
        if byte == 0x0A or byte == 0x0D:
            out.append(data[start:i])
            i += 2 if byte == 0x0D and i + 1 < n and data[i + 1] == 0x0A else 1
            start = i
        else:
            i += 1
    if start < n:
        out.append(data[start:])
    return out


def fields_of(line: bytes) -> list[bytes] | None:
    """The fields of one line, or None when a quote opened in it is not closed in it."""
    fields: list[bytes] = []
    state, current, blanks = "start", bytearray(), bytearray()
    for byte in line:
        if state == "start":
            if byte in BLANK:
                blanks.append(byte)
            elif byte == QUOTE:
                state, blanks = "quoted", bytearray()
            elif byte == COMMA:
                fields.append(bytes(blanks))
                blanks = bytearray()
            else:
                current, blanks, state = blanks + bytes([byte]), bytearray(), "plain"
        elif state == "plain":
            if byte == COMMA:
                fields.append(bytes(current))
                current, state = bytearray(), "start"
            else:
                current.append(byte)
        elif state == "quoted":
            if byte == QUOTE:
                state = "closing"
            else:
                current.append(byte)
        else:  # "closing": just after a quote inside a quoted field
            if byte == QUOTE:
                current.append(QUOTE)
                state = "quoted"
            elif byte == COMMA:
                fields.append(bytes(current))
                current, state = bytearray(), "start"
            else:  # what follows the closing quote belongs to the value, as it is
                current.append(byte)
                state = "plain"
    if state == "quoted":
        return None
    fields.append(bytes(blanks) if state == "start" else bytes(current))
    return fields


def _trim(value: bytes) -> bytes:
    return value.strip(BLANK)


def as_id(text: str) -> int | None:
    digits = text[1:] if text.startswith("+") else text
    if not digits or any(c not in "0123456789" for c in digits):
        return None
    if len(digits.lstrip("0")) > ID_LIMIT:
        return None
    value = int(digits)
    return value if value >= 1 else None


def as_date(text: str) -> datetime.date | None:
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        return None
    parts = text[:4], text[5:7], text[8:]
    if any(c not in "0123456789" for part in parts for c in part):
        return None
    try:
        return datetime.date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return None


def as_number(text: str) -> float | None:
    if not text or text.startswith("-") or any(c not in "0123456789.eE+-" for c in text):
        return None
    mantissa = text.lower().split("e")[0].lstrip("+")
    if not any(c.isdigit() for c in mantissa) or "+" in mantissa or "-" in mantissa:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def judge(data: bytes, columns: list[tuple[str, str]], key: str, *, users: set[int] | None = None,
          compounds: set[int] | None = None) -> Verdict:
    """``columns``: (name, kind) of the contract; ``users``/``compounds``: the accepted keys an
    experiment must point to (None: not checked)."""
    lines = physical_lines(data[len(BOM):] if data.startswith(BOM) else data)
    at = next((i for i, line in enumerate(lines) if _trim(line)), None)
    if at is None:
        return Verdict(problem="empty_file")
    try:
        # in the header, a quote left open runs to the end of the line
        header = [_trim(f).decode("utf-8") for f in (fields_of(lines[at]) or fields_of(lines[at] + b'"') or [])]
    except UnicodeDecodeError:
        return Verdict(problem="encoding")
    if any(header.count(name) > 1 for name, _ in columns):  # ignored columns may repeat a name
        return Verdict(problem="duplicate_column")
    if any(name not in header for name, _ in columns):
        return Verdict(problem="missing_column")
    where = {name: header.index(name) for name, _ in columns}
    verdict = Verdict()
    rows: list[tuple[int, dict[str, Any], set[tuple[str | None, str]]]] = []
    for number, line in enumerate(lines[at + 1:], start=at + 2):
        if not _trim(line):
            continue
        verdict.rows_read += 1
        fields = fields_of(line)
        if fields is None or len(fields) != len(header):
            try:
                line.decode("utf-8")
                rows.append((number, {}, {(None, "field_count")}))
            except UnicodeDecodeError:
                rows.append((number, {}, {(None, "encoding")}))
            continue
        values: dict[str, Any] = {}
        broken: set[tuple[str | None, str]] = set()
        for name, kind in columns:
            try:
                text = _trim(fields[where[name]]).decode("utf-8")
            except UnicodeDecodeError:
                broken.add((name, "encoding"))
                values[name] = None
                continue
            values[name], rules = _value(kind, text, compounds)
            broken |= {(name, rule) for rule in rules}
        if users is not None and values.get("user_id") is not None and values["user_id"] not in users:
            broken.add(("user_id", "unknown_user"))
        rows.append((number, values, broken))
    keys = [values.get(key) for _, values, _ in rows if values.get(key) is not None]
    for number, values, broken in rows:
        if values.get(key) is not None and keys.count(values[key]) > 1:
            broken.add((key, "duplicate_key"))
        verdict.violations += [(number, column, rule) for column, rule in broken]
        if not broken:
            verdict.accepted.append(tuple(values[name] for name, _ in columns))
    return verdict


def _value(kind: str, text: str, compounds: set[int] | None) -> tuple[Any, set[str]]:
    """(the value or None, the rules it breaks)."""
    if kind == "id":
        value = as_id(text)
        return value, set() if value is not None else {"not_positive_integer"}
    if kind == "text":
        rules = ({"empty_value"} if not text else set()) | ({"nul_byte"} if "\x00" in text else set())
        return (text if not rules else None), rules
    if kind == "date":
        day = as_date(text)
        return day, set() if day is not None else {"not_iso_date"}
    if kind == "number":
        number = as_number(text)
        return number, set() if number is not None else {"not_non_negative_number"}
    # an id list
    if not text:
        return None, {"empty_list"}
    items = [item.strip(" \t") for item in text.split(";")]
    ids = [as_id(item) for item in items]
    rules = set()
    if any(not item for item in items):
        rules.add("empty_list_item")
    if any(item and i is None for item, i in zip(items, ids, strict=True)):
        rules.add("not_positive_integer")
    if compounds is not None and any(i is not None and i not in compounds for i in ids):
        rules.add("unknown_compound")
    return ([i for i in ids if i is not None] if not rules else None), rules
