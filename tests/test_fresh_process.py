"""What a fresh process imports to run the job on good data: not pandas (pyarrow imports it, 0.4 s, on
its first conversion of a Python object whenever it is installed, as it is in the test venv), and
not pyarrow.dataset (0.1 s, through pyarrow.acero)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REFERENCE_DATA, ROOT

SCRIPT = """
import json, sys
from etl_core import pipeline
from etl_core.config import Settings
summary = pipeline.run(Settings.from_env(json.loads(sys.argv[1])), pipeline.Trigger(force=True))
print(json.dumps({"status": summary["status"], "users": summary["users_written"],
                  "imported": sorted(m for m in ("pandas", "pyarrow.dataset", "pyarrow.acero") if m in sys.modules)}))
"""


def test_a_good_run_converts_no_python_objects(env: dict[str, str]) -> None:
    import pandas  # noqa: F401 - the trap is only there when pandas is installed (requirements-dev.txt has it)
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps({**env, "DATA_DIR": str(REFERENCE_DATA)})],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": "succeeded", "users": 10, "imported": []}
