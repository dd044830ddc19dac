"""The whole pipeline on the in-memory store: the quick tier's end-to-end check (no server).  The
same behaviours are checked against PostgreSQL in test_acceptance, test_contract and test_publish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from etl_core import pipeline
from etl_core.config import Settings
from etl_core.errors import ContractViolation, LoadRefused
from etl_core.store.memory import MemoryStore
from tests.conftest import REFERENCE_DATA as CHALLENGE_DATA
from tests.helpers import EXPECTED, GOOD, write_files

pytestmark = pytest.mark.unit


def settings_for(data: Path) -> Settings:
    return Settings.from_env({"DATA_DIR": str(data)})


def rows(store: MemoryStore) -> list[tuple[object, ...]]:
    assert store.features is not None
    table = store.features.sort_by("user_id")
    columns = ["user_name", "total_experiments", "most_common_compounds", "average_experiments"]
    return [tuple(r[c] for c in columns) for r in table.select(columns).to_pylist()]


def test_the_challenge_data_gives_the_challenge_table() -> None:
    store = MemoryStore()
    summary = pipeline.run(settings_for(CHALLENGE_DATA), pipeline.Trigger(), store=store)
    assert (summary["status"], summary["users_written"]) == ("succeeded", 10)
    assert [(n, t, c, round(a, 9)) for n, t, c, a in rows(store)] == EXPECTED
    record = store.get_run(summary["run_id"])
    assert record is not None and record["status"] == "succeeded"
    assert set(record["seconds"]) == {"extract", "transform", "load", "total"}


def test_strict_fails_on_a_violation_records_it_and_keeps_the_old_rows(tmp_path: Path) -> None:
    store = MemoryStore()
    pipeline.run(settings_for(write_files(tmp_path / "good", {})), pipeline.Trigger(), store=store)
    before = store.features
    bad = write_files(tmp_path / "bad", {"users.csv": GOOD["users.csv"] + "4,,d@x,2023-01-01\n"})
    with pytest.raises(ContractViolation) as info:
        pipeline.run(settings_for(bad), pipeline.Trigger(), store=store)
    assert info.value.details["violations"]["first"][0]["rule"] == "empty_value"
    assert store.features is before
    assert store.get_run(2)["error"]["code"] == "contract_violation"  # type: ignore[index]


def test_quarantine_loads_the_good_rows_and_keeps_the_rejects(tmp_path: Path) -> None:
    store = MemoryStore()
    bad = write_files(tmp_path, {"users.csv": GOOD["users.csv"] + "4,,d@x,2023-01-01\n"})
    summary = pipeline.run(settings_for(bad), pipeline.Trigger(policy="quarantine"), store=store)
    assert (summary["status"], summary["users_written"]) == ("partial", 3)
    [(run_id, rejects)] = store.rejected
    assert run_id == summary["run_id"] and rejects.column("line").to_pylist() == [5]


def test_a_cut_export_is_refused_unless_forced(tmp_path: Path) -> None:
    store = MemoryStore()
    pipeline.run(settings_for(CHALLENGE_DATA), pipeline.Trigger(), store=store)
    cut = (CHALLENGE_DATA / "user_experiments.csv").read_bytes().split(b"\r\n")[:3]
    short = write_files(tmp_path, {name: (CHALLENGE_DATA / name).read_bytes() for name in GOOD}
                        | {"user_experiments.csv": b"\r\n".join(cut) + b"\r\n"})
    with pytest.raises(LoadRefused):
        pipeline.run(settings_for(short), pipeline.Trigger(), store=store)
    assert store.features is not None and store.features.num_rows == 10
    assert pipeline.run(settings_for(short), pipeline.Trigger(force=True), store=store)["users_written"] == 10
    assert pa.compute.sum(store.features["total_experiments"]).as_py() == 2


def _reads(monkeypatch: pytest.MonkeyPatch, *, fail_on: str | None = None) -> list[tuple[str, bool, bool]]:
    """Every extract.read_file call of a run: (file, threads, read early); ``fail_on``: that file's read raises."""
    from etl_core.reading import extract

    calls: list[tuple[str, bool, bool]] = []
    real = extract.read_file

    def spy(source: object, contract: Any, sink: object, **kw: Any) -> extract.FileResult:
        calls.append((contract.filename, kw["threads"], kw["early"] is not None))
        if contract.filename == fail_on:
            raise OSError("the disk went away")
        return real(source, contract, sink, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(extract, "read_file", spy)
    return calls


@pytest.mark.parametrize(("whole_read_bytes", "expected"), [
    # the others leave Arrow's pool to the experiments' early read, which their checks then take
    (None, [("users.csv", False, False), ("compounds.csv", False, False), ("user_experiments.csv", True, True)]),
    # an experiments file larger than a whole read streams after the others, which parse on the pool
    (100, [("users.csv", True, False), ("compounds.csv", True, False), ("user_experiments.csv", True, False)]),
], ids=["small-experiments-read-early", "large-experiments-streamed"])
def test_where_the_experiments_are_parsed_beside_the_users_and_compounds(
        monkeypatch: pytest.MonkeyPatch, whole_read_bytes: int | None, expected: list[tuple[str, bool, bool]]) -> None:
    from etl_core.reading import fast

    if whole_read_bytes is not None:
        monkeypatch.setattr(fast, "WHOLE_READ_BYTES", whole_read_bytes)  # the challenge's experiments are larger
    calls = _reads(monkeypatch)
    store = MemoryStore()
    pipeline.run(settings_for(CHALLENGE_DATA), pipeline.Trigger(), store=store)
    assert calls == expected
    assert [(n, t, c, round(a, 9)) for n, t, c, a in rows(store)] == EXPECTED


def test_a_run_that_fails_before_the_experiments_leaves_no_early_read_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from etl_core.reading import fast

    real = fast._checked_whole

    def slow(*args: Any) -> Any:
        if threading.current_thread().name == "etl-early-read":
            time.sleep(0.5)  # the early read is still going when the compounds' read fails
        return real(*args)

    monkeypatch.setattr(fast, "_checked_whole", slow)
    _reads(monkeypatch, fail_on="compounds.csv")
    with pytest.raises(Exception, match="the disk went away"):
        pipeline.run(settings_for(CHALLENGE_DATA), pipeline.Trigger(), store=MemoryStore())
    assert [t.name for t in threading.enumerate() if t.name == "etl-early-read"] == []


@pytest.mark.parametrize("force", [False, True])
def test_only_a_guarded_run_counts_what_the_table_holds(monkeypatch: pytest.MonkeyPatch, force: bool) -> None:
    """The count scans the whole table (80 ms at a million users): a forced run, which the guard lets
    through anyway, only takes the lock."""
    from etl_core.store.memory import MemoryPublication

    calls: list[str] = []
    for name in ("lock", "volume"):
        real = getattr(MemoryPublication, name)
        monkeypatch.setattr(MemoryPublication, name,
                            lambda self, _real=real, _name=name: calls.append(_name) or _real(self))
    store = MemoryStore()
    pipeline.run(settings_for(CHALLENGE_DATA), pipeline.Trigger(force=force), store=store)
    assert calls == (["lock"] if force else ["volume"])
