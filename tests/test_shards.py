"""The sharded path (docs/scale.md): line-aligned byte ranges, each counted on its own, reduced in SQL,
published as a run: the same table as one function's run, through several emulators at once too; a
batch with a shard missing, counted from another version of the file, or with a bad row publishes
nothing."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from etl_core import pipeline, shards
from etl_core.config import Settings
from etl_core.errors import BadRequest, ContractViolation, SourceChanged
from etl_core.service import Service
from tests.conftest import ROOT
from tests.helpers import GOOD, features_dump, write_files

sys.path.insert(0, str(ROOT / "bench"))
import generate
import shards as simulation  # bench/shards.py: the Map's stand-in

sys.path.remove(str(ROOT / "bench"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 users (some without experiments), 150 compounds whose names need quoting, 30,000 experiments
    of 1 to 5 compounds, a few listed twice: ties, and every shard boundary inside the file."""
    out = tmp_path_factory.mktemp("generated")
    generate.generate(out, 2000, 150, 30000, seed=7)
    return out


def settings_of(env: dict[str, str], data: Path, **more: str) -> Settings:
    return Settings.from_env({**env, "DATA_DIR": str(data), "ETL_METRICS_NAMESPACE": "", **more})


# --- the plan


def lines_of(data: bytes, events: list[dict[str, Any]]) -> list[bytes]:
    return [line for e in events for line in data[e["first"]:e["end"]].splitlines(keepends=True)]


@pytest.mark.unit
@pytest.mark.parametrize("count", [1, 2, 3, 7, 64])
def test_the_plan_cuts_the_file_at_line_ends_and_covers_every_row_once(generated: Path, count: int) -> None:
    data = (generated / "user_experiments.csv").read_bytes()
    planned = shards.plan(Settings.from_env({"DATA_DIR": str(generated)}), "b1", count)["shards"]
    assert len(planned) == count and [e["shard"] for e in planned] == list(range(count))
    header = data.index(b"\n") + 1
    assert planned[0]["first"] == header and planned[-1]["end"] == len(data)
    for before, after in itertools.pairwise(planned):
        assert before["end"] == after["first"] and data[after["first"] - 1:after["first"]] == b"\n"
    assert lines_of(data, planned) == data[header:].splitlines(keepends=True)
    sizes = [e["end"] - e["first"] for e in planned]
    assert max(sizes) - min(sizes) < 200  # about equal: a line or two apart
    assert {e["action"] for e in planned} == {"count-shard"} and len({e["identity"] for e in planned}) == 1


@pytest.mark.unit
@pytest.mark.parametrize("eol", [b"\r", b"\r\n"])
def test_files_whose_lines_end_by_cr_or_crlf_are_cut_as_evenly_and_only_between_lines(
        generated: Path, tmp_path: Path, eol: bytes) -> None:
    """The contract's lines end at LF, CRLF or a lone CR: a file of old Mac line ends is cut as finely as
    any (it was one shard), and a CRLF is never split into a line end and a blank line."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("users.csv", "compounds.csv"):
        (data / name).write_bytes((generated / name).read_bytes())
    lines = (generated / "user_experiments.csv").read_bytes().splitlines()
    text = eol.join(lines) + eol
    (data / "user_experiments.csv").write_bytes(text)
    planned = shards.plan(Settings.from_env({"DATA_DIR": str(data)}), "b", 7)["shards"]
    assert len(planned) == 7
    header = len(lines[0]) + len(eol)
    assert planned[0]["first"] == header and planned[-1]["end"] == len(text)
    for before, after in itertools.pairwise(planned):
        assert before["end"] == after["first"] and text[after["first"] - len(eol):after["first"]] == eol
    assert lines_of(text, planned) == text[header:].splitlines(keepends=True)
    sizes = [e["end"] - e["first"] for e in planned]
    assert max(sizes) - min(sizes) < 200


@pytest.mark.unit
@pytest.mark.parametrize("window", [1, 2, 3])
def test_a_crlf_across_two_reads_is_one_line_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int) -> None:
    monkeypatch.setattr(shards, "WINDOW", window)
    path = tmp_path / "f"
    path.write_bytes(b"ab\r\ncd\rxy\n")
    with pa.OSFile(str(path)) as f:
        assert [shards._line_end(f, p, 10) for p in range(10)] == [4, 4, 4, 4, 7, 7, 7, 10, 10, 10]


@pytest.mark.unit
def test_more_shards_than_lines_give_one_shard_a_line_and_a_header_only_file_one_empty_shard(tmp_path: Path) -> None:
    data = write_files(tmp_path / "few", GOOD)
    text = (data / "user_experiments.csv").read_bytes()
    planned = shards.plan(Settings.from_env({"DATA_DIR": str(data)}), "b", 500)["shards"]
    assert len(planned) == text.count(b"\n") - 1  # every row its own shard, no empty one
    assert lines_of(text, planned) == text.splitlines(keepends=True)[1:]
    empty = write_files(tmp_path / "empty", {**GOOD, "user_experiments.csv": GOOD["user_experiments.csv"].split("\n")[0]
                                             + "\n"})
    [only] = shards.plan(Settings.from_env({"DATA_DIR": str(empty)}), "b", 4)["shards"]
    assert only["first"] == only["end"] == len(GOOD["user_experiments.csv"].split("\n")[0]) + 1


@pytest.mark.unit
@pytest.mark.parametrize(("before", "end"), [(b"", b"\n"), (b"\n", b"\n"), (b" \t\r\n\r\n", b"\r\n"), (b"\r\r", b"\r"),
                                            (b"\xef\xbb\xbf\n", b"\n"), (b"\n" * 70_000, b"\r")])
def test_the_header_ends_after_the_first_line_that_is_not_blank(before: bytes, end: bytes) -> None:
    import pyarrow as pa

    from etl_core import reading

    header = b"experiment_id,user_id"
    text = before + header + end + b"1,2\n"
    assert reading.header_end(pa.BufferReader(text)) == len(before) + len(header) + len(end)
    assert reading.header_end(pa.BufferReader(before + header)) == len(before + header)  # no break: no rows
    assert reading.header_end(pa.BufferReader(before)) == len(before)  # nothing but blank lines


@pytest.mark.unit
@pytest.mark.parametrize("event", [
    {"batch": "b", "shards": 0}, {"batch": "b", "shards": "4"}, {"batch": "", "shards": 2},
    {"batch": "x" * 200, "shards": 2}, {"shards": 2}])
def test_a_plan_needs_a_batch_name_and_a_number_of_shards(event: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(BadRequest):
        shards.plan(Settings.from_env({"DATA_DIR": str(write_files(tmp_path, GOOD))}), event.get("batch"),
                    event.get("shards"))


@pytest.mark.unit
def test_a_shard_event_is_checked_before_anything_is_read() -> None:
    good = {"batch": "b", "shard": 0, "shards": 2, "first": 10, "end": 20, "identity": "1:2"}
    assert shards.Shard.parse(good).end == 20
    for bad in ({**good, "shard": 2}, {**good, "first": 30}, {**good, "end": "20"}, {**good, "identity": None},
                {**good, "shard": True}):
        with pytest.raises(BadRequest):
            shards.Shard.parse(bad)


# --- count and reduce, in this process


def run_sharded(settings: Settings, batch: str, count: int) -> dict[str, Any]:
    service = Service(settings)
    try:
        planned = service.plan_shards(batch, count)
        for event in reversed(planned["shards"]):  # any order
            service.count_shard(event)
        return service.reduce_shards(batch)
    finally:
        service.close()


def single_table(env: dict[str, str], data: Path, db: Any, schema: str) -> list[tuple[Any, ...]]:
    pipeline.run(settings_of(env, data), pipeline.Trigger(force=True))
    return features_dump(db, schema, run_id=False)


@pytest.mark.parametrize("count", [1, 5])
def test_a_sharded_run_publishes_the_table_one_function_publishes(
        env: dict[str, str], db: Any, schema: str, generated: Path, count: int) -> None:
    want = single_table(env, generated, db, schema)
    summary = run_sharded(settings_of(env, generated), f"batch-{count}", count)
    assert (summary["status"], summary["users_written"], summary["shards"]) == ("succeeded", 2000, count)
    assert features_dump(db, schema, run_id=False) == want
    [[status, files]] = db.run(f'SELECT status, files FROM "{schema}".etl_runs WHERE id = :i', i=summary["run_id"])
    assert status == "succeeded" and files["user_experiments.csv"]["rows_read"] == 30000
    # the staging rows are gone once published
    assert db.run(f'SELECT count(*) FROM "{schema}".etl_shard_counts')[0][0] == 0


@pytest.mark.parametrize("before", [b"\n", b"  \r\n\r\n", b"\xef\xbb\xbf\n"])
def test_blank_lines_before_the_header_and_its_own_line_end_do_not_move_the_cuts(
        env: dict[str, str], db: Any, schema: str, generated: Path, tmp_path: Path, before: bytes) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("users.csv", "compounds.csv"):
        (data / name).write_bytes((generated / name).read_bytes())
    text = (generated / "user_experiments.csv").read_bytes()
    first = text.index(b"\n")
    (data / "user_experiments.csv").write_bytes(before + text[:first] + b"\r" + text[first + 1:])  # header ends by CR
    want = single_table(env, data, db, schema)
    summary = run_sharded(settings_of(env, data), "blank-first", 3)
    assert (summary["status"], summary["users_written"], summary["shards"]) == ("succeeded", 2000, 3)
    assert features_dump(db, schema, run_id=False) == want


def test_a_file_of_lone_cr_line_ends_sharded_publishes_the_single_functions_table(
        env: dict[str, str], db: Any, schema: str, generated: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("users.csv", "compounds.csv"):
        (data / name).write_bytes((generated / name).read_bytes())
    (data / "user_experiments.csv").write_bytes((generated / "user_experiments.csv").read_bytes().replace(b"\n", b"\r"))
    want = single_table(env, data, db, schema)
    summary = run_sharded(settings_of(env, data), "lone-cr", 4)
    assert (summary["status"], summary["users_written"], summary["shards"]) == ("succeeded", 2000, 4)
    assert features_dump(db, schema, run_id=False) == want


def test_a_shard_counted_twice_replaces_its_rows(env: dict[str, str], db: Any, schema: str, generated: Path) -> None:
    want = single_table(env, generated, db, schema)
    service = Service(settings_of(env, generated))
    try:
        planned = service.plan_shards("again", 3)["shards"]
        for event in planned + planned[:2]:  # Step Functions retries a shard: its rows are replaced
            service.count_shard(event)
        service.reduce_shards("again")
    finally:
        service.close()
    assert features_dump(db, schema, run_id=False) == want


def test_a_batch_with_a_shard_missing_publishes_nothing(env: dict[str, str], db: Any, schema: str,
                                                        generated: Path) -> None:
    single_table(env, generated, db, schema)
    before = features_dump(db, schema)
    service = Service(settings_of(env, generated))
    try:
        planned = service.plan_shards("short", 4)["shards"]
        for event in planned[:1] + planned[2:]:
            service.count_shard(event)
        with pytest.raises(shards.ShardsIncomplete) as info:
            service.reduce_shards("short")
        assert info.value.details["missing"] == [1] and info.value.http_status == 409
        with pytest.raises(shards.ShardsIncomplete):
            service.reduce_shards("never-planned")
    finally:
        service.close()
    assert features_dump(db, schema) == before
    [[status, error]] = db.run(f'SELECT status, error FROM "{schema}".etl_runs ORDER BY id DESC LIMIT 1')
    assert (status, error["code"]) == ("failed", "shards_incomplete")


def test_a_file_changed_after_the_plan_is_refused(env: dict[str, str], schema: str, tmp_path: Path) -> None:
    data = write_files(tmp_path, GOOD)
    service = Service(settings_of(env, data))
    try:
        [event] = service.plan_shards("moved", 1)["shards"]
        path = data / "user_experiments.csv"
        path.write_text(path.read_text() + "99,1,1,1.0\n")
        with pytest.raises(SourceChanged):
            service.count_shard(event)
    finally:
        service.close()


@pytest.mark.parametrize("changed", ["users.csv", "compounds.csv"])
def test_users_or_compounds_changed_between_count_and_reduce_publish_nothing(
        env: dict[str, str], db: Any, schema: str, tmp_path: Path, changed: str) -> None:
    """Every step reads the users and compounds again: the plan pins their versions as it pins the
    experiments', so that the counts and the names the reduce joins come from the same files."""
    data = write_files(tmp_path, GOOD)
    single_table(env, data, db, schema)
    before = features_dump(db, schema)
    service = Service(settings_of(env, data))
    try:
        planned = service.plan_shards("moving", 2)["shards"]
        service.count_shard(planned[0])
        path = data / changed
        lines = path.read_text().rstrip("\n").split("\n")
        path.write_text("\n".join(lines[:-1]) + "\n")  # the last user (or compound) gone
        with pytest.raises(SourceChanged):
            service.count_shard(planned[1])
        path.write_text("\n".join(lines) + "\n")
        for event in service.plan_shards("moving", 2)["shards"]:
            service.count_shard(event)
        path.write_text("\n".join(lines[:-1]) + "\n")
        with pytest.raises(shards.ShardsIncomplete, match="other versions of the input files"):
            service.reduce_shards("moving")
    finally:
        service.close()
    assert features_dump(db, schema) == before


def test_a_batch_planned_again_forgets_what_its_earlier_plan_counted(env: dict[str, str], db: Any, schema: str,
                                                                     generated: Path) -> None:
    want = single_table(env, generated, db, schema)
    service = Service(settings_of(env, generated))
    try:
        for event in service.plan_shards("again", 5)["shards"][:4]:  # abandoned before its reduce
            service.count_shard(event)
        for event in service.plan_shards("again", 3)["shards"]:
            service.count_shard(event)
        summary = service.reduce_shards("again")
    finally:
        service.close()
    assert (summary["status"], summary["shards"]) == ("succeeded", 3)
    assert features_dump(db, schema, run_id=False) == want


def test_a_missing_column_in_a_shards_files_is_the_datas_error(env: dict[str, str], tmp_path: Path) -> None:
    users = GOOD["users.csv"].replace("signup_date", "signed_up", 1)
    data = write_files(tmp_path, GOOD)
    service = Service(settings_of(env, data))
    try:
        [event] = service.plan_shards("headers", 1)["shards"]
        (data / "users.csv").write_text(users)
        replanned = service.plan_shards("headers", 1)["shards"]
        with pytest.raises(ContractViolation) as info:
            service.count_shard(replanned[0])
        assert info.value.http_status == 422 and "missing_column" in str(info.value.to_dict())
        assert event["identity"] != replanned[0]["identity"]
    finally:
        service.close()


def test_a_shard_with_a_bad_row_fails_the_reduce_with_where_it_is(env: dict[str, str], db: Any, schema: str,
                                                                   tmp_path: Path) -> None:
    rows = GOOD["user_experiments.csv"].rstrip("\n").split("\n")
    bad = [*rows, "98,1,not-a-list,1.0"]
    data = write_files(tmp_path, {**GOOD, "user_experiments.csv": "\n".join(bad) + "\n"})
    service = Service(settings_of(env, data))
    try:
        planned = service.plan_shards("bad", 2)["shards"]
        for event in planned:
            service.count_shard(event)
        with pytest.raises(ContractViolation) as info:
            service.reduce_shards("bad")
    finally:
        service.close()
    assert info.value.details["shard"] == 1 and info.value.details["first_byte"] == planned[1]["first"]
    assert info.value.details["violations"]["total"] == 1


def test_a_quote_left_open_in_a_shard_of_many_blocks_fails_the_reduce_not_loses_rows(
        env: dict[str, str], db: Any, schema: str, tmp_path: Path) -> None:
    rows = [f"{i},{1 + i % 2},{1 + i % 3},10" for i in range(1, 40_001)]
    rows[29_000] = rows[29_000].replace(",10", ',"10')  # in the second shard, blocks before its end
    text = "experiment_id,user_id,experiment_compound_ids,experiment_run_time\n" + "\n".join(rows) + "\n"
    data = write_files(tmp_path, {**GOOD, "user_experiments.csv": text})
    service = Service(settings_of(env, data, ETL_BLOCK_SIZE=str(1 << 16)))
    try:
        for event in service.plan_shards("open-quote", 2)["shards"]:
            service.count_shard(event)
        with pytest.raises(ContractViolation) as info:
            service.reduce_shards("open-quote")
    finally:
        service.close()
    assert info.value.details["shard"] == 1 and info.value.details["violations"]["total"] == 1
    assert info.value.details["violations"]["first"][0]["rule"] == "field_count"


def test_experiment_ids_that_do_not_increase_across_shards_are_refused(env: dict[str, str], schema: str,
                                                                       tmp_path: Path) -> None:
    rows = GOOD["user_experiments.csv"].rstrip("\n").split("\n")
    swapped = [rows[0], *rows[len(rows) // 2:], *rows[1:len(rows) // 2]]  # the second half first
    data = write_files(tmp_path, {**GOOD, "user_experiments.csv": "\n".join(swapped) + "\n"})
    service = Service(settings_of(env, data))
    try:
        for event in service.plan_shards("swapped", 2)["shards"]:
            service.count_shard(event)
        with pytest.raises(ContractViolation, match="does not increase from shard to shard"):
            service.reduce_shards("swapped")
    finally:
        service.close()


# --- the Map's stand-in: several emulators in parallel


@pytest.fixture
def emulators(env: dict[str, str], generated: Path) -> Iterator[list[int]]:
    with simulation.emulators(3, {**env, "DATA_DIR": str(generated), "ETL_METRICS_NAMESPACE": ""}) as ports:
        yield ports


def test_the_map_through_three_emulators_gives_the_single_functions_table(
        emulators: list[int], env: dict[str, str], db: Any, schema: str, generated: Path) -> None:
    want = single_table(env, generated, db, schema)
    result = simulation.run_map(emulators, "map-1", 6)
    assert (result["status"], result["shards"], result["users_written"]) == ("succeeded", 6, 2000)
    assert len(result["shard_seconds"]) == 6
    assert features_dump(db, schema, run_id=False) == want
