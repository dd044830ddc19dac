"""What a fresh process imports to run the job on good data: not pandas (pyarrow imports it, 0.4 s, on
its first conversion of a Python object whenever it is installed, as it is in the test venv), not
pyarrow.dataset (0.1 s, through pyarrow.acero), and not botocore (only DB_SECRET_ID needs it,
tests/test_secrets.py); which allocator its Arrow buffers came from, and
that the collector no longer walks what the imports made."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REFERENCE_DATA, ROOT

SCRIPT = """
import gc, json, sys
import pyarrow as pa
from etl_core import logs, service
from etl_core.config import Settings
logs.configure()
summary = service.start(Settings.from_env(json.loads(sys.argv[1]))).trigger(service.Trigger(force=True))
print(json.dumps({"status": summary["status"], "users": summary["users_written"],
                  "imported": sorted(m for m in ("pandas", "pyarrow.dataset", "pyarrow.acero", "botocore")
                                     if m in sys.modules),
                  "pool": pa.default_memory_pool().backend_name,
                  "frozen": gc.get_freeze_count() > 10_000}))
"""


def _run(env: dict[str, str]) -> tuple[dict[str, object], list[dict[str, object]]]:
    """The fresh process's result line and its log events (the settings come from ``env``, not from the
    process's environment, which Arrow would read itself)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps({**env, "DATA_DIR": str(REFERENCE_DATA)})],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return json.loads(done.stdout.strip().splitlines()[-1]), events


def test_a_good_run_converts_no_python_objects(env: dict[str, str]) -> None:
    import pandas  # noqa: F401 - the trap is only there when pandas is installed (requirements-dev.txt has it)
    result, events = _run(env)
    # the imports' objects are left out of the collector's walks, the exit's included (etl_core.memory)
    assert result == {"status": "succeeded", "users": 10, "imported": [], "pool": "jemalloc", "frozen": True}
    assert [e["memory_pool"] for e in events if e.get("message") == "run_started"] == ["jemalloc"]


def test_the_allocator_named_in_the_settings_is_used(env: dict[str, str]) -> None:
    result, events = _run({**env, "ARROW_DEFAULT_MEMORY_POOL": "system"})
    assert (result["status"], result["pool"]) == ("succeeded", "system")
    assert [e["memory_pool"] for e in events if e.get("message") == "run_started"] == ["system"]


# The same trap without a database, pandas or not installed: a finder that records every attempt to
# import pandas (pyarrow tries it on its first conversion of a Python object) and finds nothing.
UNIT_SCRIPT = """
import gc, json, sys
tried = []
class Recorder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            tried.append(name)
        return None
sys.meta_path.insert(0, Recorder)
sys.modules.pop("pandas", None)
from etl_core import pipeline
from etl_core.config import Settings
from etl_core.store.memory import MemoryStore
summary = pipeline.run(Settings.from_env(json.loads(sys.argv[1])), pipeline.Trigger(), store=MemoryStore())
print(json.dumps({"status": summary["status"], "users": summary["users_written"], "tried": tried,
                  "frozen": gc.get_freeze_count()}))
"""


@pytest.mark.unit
def test_a_good_run_tries_no_pandas_import_even_without_a_database() -> None:
    """The quick tier's guard on the trap: extract and the features on good data convert no Python
    object (the database-tier test above covers the PostgreSQL store's side).  A run by itself leaves
    the process as it found it: freezing the collector's objects is the bootstrap's (service.start)."""
    env = {"DATA_DIR": str(REFERENCE_DATA), "ETL_METRICS_NAMESPACE": ""}
    done = subprocess.run([sys.executable, "-c", UNIT_SCRIPT, json.dumps(env)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"status": "succeeded", "users": 10, "tried": [],
                                                                 "frozen": 0}
