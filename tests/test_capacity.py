"""Failing cleanly at the memory limit: a run that would not fit is refused with its own code (from the
files' sizes before a row is read, or from the memory it holds while it reads and publishes), and a run
the kernel kills for memory in the middle of its publication leaves the table as it was, its run not
finished, and the next run loads."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etl_core import capacity, pipeline
from etl_core.config import Settings
from etl_core.errors import InputTooLarge
from tests.helpers import GOOD, features_dump, write_files

ROOT = Path(__file__).resolve().parent.parent


# --- pure decisions


@pytest.mark.unit
def test_the_estimate_grows_with_the_experiments_and_the_users() -> None:
    small = capacity.estimate(experiments_bytes=10**8, users_bytes=10**7)
    assert capacity.estimate(experiments_bytes=2 * 10**8, users_bytes=10**7) - small == int(
        capacity.PER_EXPERIMENTS_BYTE * 10**8)
    assert capacity.estimate(experiments_bytes=10**8, users_bytes=2 * 10**7) > small
    assert capacity.check_fits(experiments_bytes=10**8, users_bytes=10**7, limit=None) == small
    assert capacity.check_fits(experiments_bytes=10**8, users_bytes=10**7, limit=small) == small


@pytest.mark.unit
def test_an_input_past_the_limit_is_refused_with_what_to_do() -> None:
    with pytest.raises(InputTooLarge) as info:
        capacity.check_fits(experiments_bytes=5 * 2**30, users_bytes=2**27, limit=3008 << 20)
    error = info.value
    assert (error.code, error.http_status, error.details["reason"]) == ("input_too_large", 507, "estimate")
    assert error.details["estimated_bytes"] > error.details["limit_bytes"] == 3008 << 20
    assert "5.00 GiB" in error.message and "2.94 GiB" in error.message and "docs/scale.md" in error.message


@pytest.mark.unit
def test_the_limit_is_the_setting_or_the_cgroups_whichever_is_lower() -> None:
    cgroup = capacity.cgroup_limit()
    assert capacity.limit_bytes(0) is None  # off
    assert capacity.limit_bytes(None) == cgroup
    assert capacity.limit_bytes(512) == min(512 << 20, cgroup or 512 << 20)


@pytest.mark.unit
def test_the_setting_comes_from_etl_memory_limit_mb_else_lambdas_memory_size() -> None:
    assert Settings.from_env({}).memory_limit_mb is None
    assert Settings.from_env({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008"}).memory_limit_mb == 3008
    both = {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008", "ETL_MEMORY_LIMIT_MB": "10240"}
    assert Settings.from_env(both).memory_limit_mb == 10240
    assert Settings.from_env({**both, "ETL_MEMORY_LIMIT_MB": "0"}).memory_limit_mb is None


@pytest.mark.unit
def test_the_watch_stops_past_its_share_of_the_limit_and_only_then() -> None:
    held = capacity.rss_bytes()
    assert held is not None and held > 0
    capacity.Watch(4 * held).check("after nothing")  # far below: no error
    with pytest.raises(InputTooLarge) as info:
        capacity.Watch(held // 2).check("after 3 rows of users.csv")
    assert info.value.details["reason"] == "memory" and info.value.details["where"] == "after 3 rows of users.csv"
    assert "after 3 rows of users.csv" in info.value.message


# --- against PostgreSQL: refused runs are recorded and load nothing


def _runs(db: Any, schema: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in db.run(f'SELECT id, status, error FROM "{schema}".etl_runs ORDER BY id')]


def test_a_run_estimated_past_the_limit_is_refused_before_reading_and_keeps_the_table(
        env: dict[str, str], db: Any, schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.run(Settings.from_env(env), pipeline.Trigger(force=True))
    before = features_dump(db, schema)
    monkeypatch.setattr(capacity, "PER_EXPERIMENTS_BYTE", 10**9)  # any experiments file is too large now
    read: list[str] = []
    from etl_core.reading import extract
    real = extract.read_file
    monkeypatch.setattr(extract, "read_file", lambda source, contract, *a, **k: read.append(contract.filename)
                        or real(source, contract, *a, **k))
    with pytest.raises(InputTooLarge) as info:
        pipeline.run(Settings.from_env({**env, "ETL_MEMORY_LIMIT_MB": "4096"}), pipeline.Trigger(force=True))
    assert read == []  # refused before a row of any file was read
    assert info.value.details["reason"] == "estimate"
    assert features_dump(db, schema) == before
    last = _runs(db, schema)[-1]
    assert (last[1], last[2]["code"], last[2]["reason"]) == ("failed", "input_too_large", "estimate")


def test_a_run_whose_memory_passes_the_watch_is_stopped_and_keeps_the_table(
        env: dict[str, str], db: Any, schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.run(Settings.from_env(env), pipeline.Trigger(force=True))
    before = features_dump(db, schema)
    held = capacity.rss_bytes()
    assert held is not None
    # the estimate lets it through; the process already holds more than 90% of a limit of its own size
    monkeypatch.setattr(capacity, "BASE_BYTES", 0)
    limit_mb = max(1, int(held * 0.95) >> 20)
    with pytest.raises(InputTooLarge) as info:
        pipeline.run(Settings.from_env({**env, "ETL_MEMORY_LIMIT_MB": str(limit_mb)}), pipeline.Trigger(force=True))
    assert info.value.details["reason"] == "memory"
    assert info.value.details["where"].startswith("after ") and "users.csv" in info.value.details["where"]
    assert features_dump(db, schema) == before
    assert _runs(db, schema)[-1][2]["code"] == "input_too_large"
    assert pipeline.run(Settings.from_env(env), pipeline.Trigger(force=True))["status"] == "succeeded"


def test_the_watch_also_stops_a_publication_and_rolls_it_back(
        env: dict[str, str], db: Any, schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline.run(Settings.from_env(env), pipeline.Trigger(force=True))
    before = features_dump(db, schema)
    checked: list[str] = []
    real = capacity.Watch.check

    def at_the_features(self: capacity.Watch, where: str) -> None:
        checked.append(where)
        if "features" in where:  # only once the rows stream into the COPY: as if memory grew there
            self.stop_at = 0
            self._next = 0.0
        real(self, where)

    monkeypatch.setattr(capacity.Watch, "check", at_the_features)
    with pytest.raises(InputTooLarge) as info:
        pipeline.run(Settings.from_env({**env, "ETL_MEMORY_LIMIT_MB": "100000"}), pipeline.Trigger(force=True))
    assert info.value.details["where"] == "after the features of 10 users"
    assert features_dump(db, schema) == before
    assert _runs(db, schema)[-1][1] == "failed"


# --- killed by a cgroup's memory limit in the middle of its publication


def _own_memory_cgroup() -> tuple[Path, str, str] | None:
    """Where a child memory cgroup of this process's own may be made: (directory, limit file, events
    file), under cgroup v1's memory hierarchy or v2's; None where there is none this process may write."""
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            found = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes", "memory.oom_control"
        elif controllers == "" and "memory" in _words(Path("/sys/fs/cgroup/cgroup.controllers")):
            found = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max", "memory.events"
        else:
            continue
        if os.access(found[0], os.W_OK):
            return found
    return None


def _words(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").split()
    except OSError:
        return []


def _oom_kills(events: str) -> int:
    """The ``oom_kill N`` line of memory.events (v2) or memory.oom_control (v1)."""
    counts = dict(line.split() for line in events.splitlines() if len(line.split()) == 2)
    return int(counts.get("oom_kill", 0))


@pytest.fixture
def memory_cgroup() -> Iterator[tuple[Path, str, str]]:
    found = _own_memory_cgroup()
    if found is None:
        pytest.skip("no memory cgroup this process may make a child of (needs root, cgroup v1 or v2)")
    base, limit, events = found
    group = base / f"etl-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    try:
        yield group, limit, events
    finally:
        group.rmdir()  # empty by then: the child has exited


def heavy_features(directory: Path) -> Path:
    """A small input (14 MB) whose features outgrow its counts: 4,096 users with one experiment each (the
    first bucket, cheap), then 1,904 users whose one experiment lists all 1,500 compounds, so that each
    ties all of them: 90 kB of compound names a user, some 350 MB while their rows are made and sent."""
    users = ["user_id,name,email,signup_date"] + [f"{u},User {u},u{u}@x,2024-01-01" for u in range(1, 6001)]
    compounds = ["compound_id,compound_name,compound_structure"] + [
        f"{c},{'Compound-' + str(c).zfill(4) + '-' + 'x' * 45},C{c}" for c in range(1, 1501)]
    every = ";".join(str(c) for c in range(1, 1501))
    experiments = ["experiment_id,user_id,experiment_compound_ids,experiment_run_time"]
    experiments += [f"{u},{u},{1 + u % 1500},1.5" for u in range(1, 4097)]
    experiments += [f"{u},{u},{every},2.5" for u in range(4097, 6001)]
    return write_files(directory, {"users.csv": "\n".join(users) + "\n", "compounds.csv": "\n".join(compounds) + "\n",
                                   "user_experiments.csv": "\n".join(experiments) + "\n"})


@pytest.mark.container  # makes a cgroup: root on a Linux host, as the container tier is
def test_a_run_killed_by_its_memory_limit_mid_publication_leaves_the_table_and_the_next_run_loads(
        env: dict[str, str], db: Any, schema: str, tmp_path: Path, memory_cgroup: tuple[Path, str, str]) -> None:
    group, limit_file, events_file = memory_cgroup
    good = write_files(tmp_path / "good", GOOD)
    pipeline.run(Settings.from_env({**env, "DATA_DIR": str(good)}), pipeline.Trigger(force=True))
    before = features_dump(db, schema)
    heavy = heavy_features(tmp_path / "heavy")
    limit = 300 << 20
    (group / limit_file).write_text(str(limit))
    child_env = {**os.environ, **env, "DATA_DIR": str(heavy), "ETL_MEMORY_LIMIT_MB": "0",  # no watch: the kernel
                 "PYTHONPATH": str(ROOT)}
    script = ("from etl_core import logs, pipeline, service; from etl_core.config import Settings; import os; "
              "logs.configure(); s = Settings.from_env(os.environ); "
              "pipeline.run(s, pipeline.Trigger(force=True), store=service.start(s).store)")
    # the child joins the cgroup before it starts Python: all its memory is counted there
    done = subprocess.run(["sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$0" -c "$1"', sys.executable,
                           script], env=child_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, (done.returncode, done.stderr[-2000:])  # SIGKILL: the OOM killer
    assert _oom_kills((group / events_file).read_text()) >= 1  # the kernel killed it, for memory
    read = [line for line in done.stderr.splitlines() if "file_read" in line and "user_experiments.csv" in line]
    assert read and "run_finished" not in done.stderr, done.stderr[-2000:]  # counted all, killed publishing

    assert features_dump(db, schema) == before  # the publication never committed
    killed = _runs(db, schema)[-1]
    assert (killed[1], killed[2]) == ("running", None)  # not finished: the process died mid-way
    # the same input, with memory enough: it loads, and the killed run is marked as abandoned
    summary = pipeline.run(Settings.from_env({**env, "DATA_DIR": str(heavy)}), pipeline.Trigger(force=True))
    assert (summary["status"], summary["users_written"]) == ("succeeded", 6000)
    runs = dict((r[0], r) for r in _runs(db, schema))
    assert (runs[killed[0]][1], runs[killed[0]][2]["code"]) == ("failed", "abandoned")
    [[names]] = db.run(f'SELECT length(most_common_compounds) FROM "{schema}".user_features WHERE user_id = 6000')
    assert names == 1500 * 60 - 1
