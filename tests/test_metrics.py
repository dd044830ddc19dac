"""Metrics in CloudWatch's Embedded Metric Format: every document printed is checked against the
schema written from the specification (tests/data/emf-schema.json) and holds the run's numbers."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from etl_core import logs, metrics
from etl_core.config import MetricsSettings, Settings, metrics_settings
from etl_core.errors import BadRequest, ConfigError, ContractViolation, RunInProgress
from etl_core.service import Service, Trigger
from etl_core.store.memory import MemoryStore
from tests.conftest import ROOT
from tests.helpers import emf_problems, write_files

pytestmark = pytest.mark.unit

SETTINGS = MetricsSettings(namespace="Lab/ETL", dimensions=(("Service", "etl"), ("Stage", "test")))
SUMMARY_FILES = {
    "users.csv": {"rows_read": 10, "rows_accepted": 9, "rows_rejected": 1, "extra_columns": []},
    "compounds.csv": {"rows_read": 3, "rows_accepted": 3, "rows_rejected": 0, "extra_columns": []},
    "user_experiments.csv": {"rows_read": 11, "rows_accepted": 8, "rows_rejected": 3, "extra_columns": ["x"]},
}


def test_the_schema_refuses_what_the_specification_refuses() -> None:
    good = metrics.run_document(SETTINGS, status="succeeded", run_id=1, files=SUMMARY_FILES, users_written=9,
                                seconds={"extract": 0.5})
    assert good is not None and emf_problems(good) == []
    broken: list[dict[str, Any]] = [
        {"RunsFailed": 1},  # no _aws
        {**good, "_aws": {**good["_aws"], "Timestamp": "now"}},
        {**good, "_aws": {**good["_aws"], "LogGroup": "x"}},
        {**good, "_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "", "Dimensions": [[]], "Metrics": []}]}},
        {**good, "_aws": {"Timestamp": 1, "CloudWatchMetrics": [
            {"Namespace": "N", "Dimensions": [[f"d{i}" for i in range(10)]], "Metrics": []}]}},
        {**good, "_aws": {"Timestamp": 1, "CloudWatchMetrics": [
            {"Namespace": "N", "Dimensions": [[]], "Metrics": [{"Name": "m", "Unit": "Parsecs"}]}]}, "m": 1},
        {**good, "_aws": {"Timestamp": 1, "CloudWatchMetrics": [
            {"Namespace": "N", "Dimensions": [[]], "Metrics": [{"Name": f"m{i}"} for i in range(101)]}]}},
        {**good, "RunsFailed": "0"},  # a metric's member is a number
        {**good, "Stage": 3},  # a dimension's member is a string
        {key: value for key, value in good.items() if key != "UsersWritten"},  # a named metric is missing
    ]
    for doc in broken:
        assert emf_problems(doc), doc


def test_a_run_with_rejects_counts_them_per_file_and_in_all() -> None:
    doc = metrics.run_document(SETTINGS, status="partial", run_id=7, files=SUMMARY_FILES, users_written=9,
                               seconds={"extract": 0.25, "load": 0.5, "transform": 0.125, "total": 0.9}, now=1700.0)
    assert doc is not None and emf_problems(doc) == []
    assert doc["_aws"]["Timestamp"] == 1_700_000
    [directive] = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Lab/ETL" and directive["Dimensions"] == [["Service", "Stage"]]
    assert (doc["Service"], doc["Stage"]) == ("etl", "test")
    assert (doc["RunsSucceeded"], doc["RunsPartial"], doc["RunsFailed"]) == (0, 1, 0)
    assert (doc["RowsRead"], doc["RowsAccepted"], doc["RowsRejected"]) == (24, 20, 4)
    assert (doc["RowsRejected.users"], doc["RowsRejected.compounds"], doc["RowsRejected.user_experiments"]) == (1, 0, 3)
    assert doc["RowsRead.user_experiments"] == 11 and doc["UsersWritten"] == 9
    assert (doc["ExtractDuration"], doc["TransformDuration"], doc["LoadDuration"], doc["TotalDuration"]) == (
        0.25, 0.125, 0.5, 0.9)
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["TotalDuration"] == "Seconds" and units["RowsRejected.users"] == "Count"
    assert (doc["run_id"], doc["status"], doc["event"]) == (7, "partial", "run_metrics")


def test_a_failed_run_counts_as_failed_with_what_it_knew() -> None:
    doc = metrics.run_document(SETTINGS, status="failed", seconds={"total": 0.1}, error_code="database_unavailable")
    assert doc is not None and emf_problems(doc) == []
    assert (doc["RunsSucceeded"], doc["RunsPartial"], doc["RunsFailed"]) == (0, 0, 1)
    assert doc["error_code"] == "database_unavailable" and "RowsRead" not in doc and "run_id" not in doc


def test_the_document_carries_the_invocations_context_but_not_as_dimensions() -> None:
    with logs.bound(kind="schedule", run_id=3, **{logs.REQUEST_ID: "req-1"}):
        doc = metrics.cold_start_document(SETTINGS)
    assert doc is not None and emf_problems(doc) == []
    assert (doc["ColdStart"], doc["requestId"], doc["kind"], doc["run_id"]) == (1, "req-1", "schedule", 3)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Service", "Stage"]]


def test_no_namespace_no_metrics() -> None:
    off = MetricsSettings(namespace=None)
    assert metrics.run_document(off, status="succeeded") is None and metrics.cold_start_document(off) is None
    out: list[str] = []
    metrics.emit(None, out.append)
    assert out == []


def test_a_document_is_one_line_and_a_broken_sink_does_not_fail_the_run() -> None:
    out = io.StringIO()
    metrics.emit(metrics.cold_start_document(SETTINGS), out.write)
    assert "\n" not in out.getvalue() and json.loads(out.getvalue())["ColdStart"] == 1

    def broken(line: str) -> None:
        raise OSError("stdout is closed")

    metrics.emit(metrics.cold_start_document(SETTINGS), broken)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, MetricsSettings("ExperimentEtl", (("Service", "experiment-etl"),))),
    ({"ETL_METRICS_NAMESPACE": ""}, MetricsSettings(None, (("Service", "experiment-etl"),))),
    ({"ETL_METRICS_DIMENSIONS": ""}, MetricsSettings("ExperimentEtl", ())),
    ({"ETL_METRICS_DIMENSIONS": " Service = etl , Stage=prod "}, MetricsSettings(
        "ExperimentEtl", (("Service", "etl"), ("Stage", "prod")))),
])
def test_metrics_settings(env: dict[str, str], expected: MetricsSettings) -> None:
    assert metrics_settings(env) == expected


@pytest.mark.parametrize("env", [
    {"ETL_METRICS_DIMENSIONS": "Service"}, {"ETL_METRICS_DIMENSIONS": "=x"}, {"ETL_METRICS_DIMENSIONS": "a=1,a=2"},
    {"ETL_METRICS_DIMENSIONS": ",".join(f"d{i}=v" for i in range(10))}, {"ETL_METRICS_NAMESPACE": "n" * 256},
])
def test_bad_metrics_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="ETL_METRICS"):
        metrics_settings(env)


# One document per run through the service: for runs that fail too, not for refused triggers.

@pytest.fixture
def printed() -> list[dict[str, Any]]:
    return []


def service(printed: list[dict[str, Any]], data: Any = None, **env: str) -> Service:
    settings = Settings.from_env({"DATA_DIR": str(data or ROOT / "data"), "ETL_METRICS_DIMENSIONS": "Service=t", **env})
    return Service(settings, MemoryStore(), emit=lambda line: printed.append(json.loads(line)))


def test_each_run_prints_one_valid_document(printed: list[dict[str, Any]], tmp_path: Any) -> None:
    data = write_files(tmp_path / "d", {"users.csv": "user_id,name,email,signup_date\n1,,a@x,2023-01-01\n"
                                                     "2,Bob,b@x,2023-01-01\n3,Cy,c@x,2023-01-01\n"})
    job = service(printed, data)
    summary = job.trigger(Trigger(policy="quarantine"))
    with pytest.raises(ContractViolation):
        job.trigger(Trigger(policy="strict"))
    assert [emf_problems(doc) for doc in printed] == [[], []]
    partial, failed = printed
    assert (partial["RunsPartial"], partial["run_id"], partial["RowsRejected.users"]) == (1, summary["run_id"], 1)
    assert partial["UsersWritten"] == summary["users_written"]
    assert partial["TotalDuration"] == summary["seconds"]["total"]
    assert (failed["RunsFailed"], failed["error_code"], failed["RowsRejected.users"]) == (1, "contract_violation", 1)
    assert failed["run_id"] == summary["run_id"] + 1


def test_a_refused_trigger_is_no_run_and_prints_nothing(printed: list[dict[str, Any]], tmp_path: Any) -> None:
    job = service(printed)
    with pytest.raises(BadRequest):
        job.trigger(Trigger(data="../elsewhere"))
    with job.store.run(policy="strict", source="x"), pytest.raises(RunInProgress):
        job.trigger(Trigger())
    assert printed == []


def test_every_metric_a_run_prints_is_documented() -> None:
    from tests.conftest import ROOT

    operating = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    failed = metrics.run_document(MetricsSettings(), status="failed", run_id=1, config_error=True,
                                  files={"users.csv": {"rows_read": 1}}, users_written=0,
                                  seconds={"total": 1.0}, purged={"rejects": 0, "runs": 0})
    assert failed is not None
    for directive in failed["_aws"]["CloudWatchMetrics"]:
        for metric in directive["Metrics"]:
            name = metric["Name"].split(".")[0]  # RowsRead.users is RowsRead per file
            assert f"`{name}`" in operating, f"{name} is printed but not in docs/operating.md"
