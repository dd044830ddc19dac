"""Small helpers shared by the tests: write CSV files, read the features table back."""

from __future__ import annotations

import copy
import json
import logging
import re
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from etl_core.tables import USER_FEATURES

GOOD = {
    "users.csv": (
        "user_id,name,email,signup_date\n"
        "1,Alice,alice@example.com,2023-01-01\n"
        "2,Bob,bob@example.com,2023-02-01\n"
        "3,Carol,carol@example.com,2023-03-01\n"
    ),
    "compounds.csv": (
        "compound_id,compound_name,compound_structure\n"
        "1,Compound A,C20H25N3O\n"
        "2,Compound B,C21H30O2\n"
        "3,Compound C,C8H11NO2\n"
    ),
    "user_experiments.csv": (
        "experiment_id,user_id,experiment_compound_ids,experiment_run_time\n"
        "1,1,1;2,10\n"
        "2,1,2;3,15\n"
        "3,2,1;3,20\n"
    ),
}

# The challenge's expected table (its README, for tests/data/challenge): name, total, favourites, average.
EXPECTED = [
    ("Alice", 2, "Compound B", 1.1),
    ("Bob", 1, "Compound A;Compound C", 1.1),
    ("Carol", 1, "Compound B;Compound C", 1.1),
    ("Dave", 1, "Compound A;Compound B;Compound C", 1.1),
    ("Eve", 1, "Compound B;Compound C", 1.1),
    ("Frank", 1, "Compound A;Compound C", 1.1),
    ("Grace", 1, "Compound B;Compound C", 1.1),
    ("Heidi", 1, "Compound A;Compound B", 1.1),
    ("Ivan", 1, "Compound B;Compound C", 1.1),
    ("Judy", 1, "Compound A;Compound C", 1.1),
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_files(directory: Path, files: dict[str, str | bytes]) -> Path:
    """Write the good data set, overridden by ``files`` (a value of None removes that file)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in {**GOOD, **files}.items():
        path = directory / name
        if content is None:
            path.unlink(missing_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return directory


def features_rows(conn: Any, schema: str) -> list[tuple[Any, ...]]:
    rows = conn.run(
        f'SELECT user_name, total_experiments, most_common_compounds, average_experiments '
        f'FROM "{schema}".user_features ORDER BY user_id'
    )
    return [tuple(r) for r in rows]


def features_dump(conn: Any, schema: str, *, run_id: bool = True) -> list[tuple[Any, ...]]:
    """Every column of every row, including the run that wrote it: 'byte for byte' comparisons; with
    ``run_id=False`` every column but that one (found by name), to compare tables written by other runs."""
    columns = "*" if run_id else ", ".join(f'"{c}"' for c in USER_FEATURES.names if c != "run_id")
    rows = conn.run(f'SELECT {columns} FROM "{schema}".user_features ORDER BY user_id')
    return [tuple(r) for r in rows]


def logged(records: Iterable[logging.LogRecord], event: str | None = None) -> list[dict[str, Any]]:
    """The 'etl' logger's lines as the Lambda runtime writes them (its own JSON formatter), or only
    those of ``event``."""
    from awslambdaric.lambda_runtime_log_utils import JsonFormatter

    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(copy.copy(r))) for r in records if r.name == "etl"]
    return [line for line in lines if event is None or line.get("event") == event]


EMF_SCHEMA = Path(__file__).resolve().parent / "data" / "emf-schema.json"


def emf_problems(doc: dict[str, Any]) -> list[str]:
    """What makes ``doc`` no valid EMF document: the schema (tests/data/emf-schema.json), and the rules
    a schema cannot state: each metric and dimension named is a root member, a metric's a number (or
    at most 100 numbers), a dimension's a string."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(EMF_SCHEMA.read_text()))
    problems = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    for directive in doc.get("_aws", {}).get("CloudWatchMetrics", []) if not problems else []:
        for metric in directive["Metrics"]:
            value = doc.get(metric["Name"])
            numbers = value if isinstance(value, list) else [value]
            if not numbers or len(numbers) > 100 or not all(
                    isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
                problems.append(f"metric {metric['Name']!r} is not a number (or up to 100 numbers): {value!r}")
        for key in {key for dimension_set in directive["Dimensions"] for key in dimension_set}:
            if not isinstance(doc.get(key), str):
                problems.append(f"dimension {key!r} is not a string member: {doc.get(key)!r}")
    return problems


# the emulator's own lines: START/END/REPORT of an invocation, its (rapid) log lines
RIE_LINE = re.compile(r"^(START|END|REPORT|INIT_REPORT|INIT REPORT|EXTENSION|TELEMETRY) |\(rapid\)|^\d{2} \w{3} \d{4} ")


def by_invocation(log: str) -> dict[str, list[str]]:
    """The lines of each invocation in an emulator's output, between its START and END lines for the
    request id, without the emulator's own lines."""
    found: dict[str, list[str]] = {}
    current = None
    for line in log.splitlines():
        started = re.match(r"START RequestId: (\S+)", line)
        if started:
            current = started.group(1)
            found[current] = []
        elif line.startswith("END RequestId:"):
            current = None
        elif current is not None and line.strip() and not RIE_LINE.search(line):
            found[current].append(line)
    return found
