"""The whole pipeline on the in-memory store: the quick tier's end-to-end check (no server).  The
same behaviours are checked against PostgreSQL in test_acceptance, test_contract and test_publish."""

from __future__ import annotations

from pathlib import Path

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
