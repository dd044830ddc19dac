"""The challenge's own data (shared/reference-data, CRLF line endings) gives exactly the challenge's
table; the project's sample set in data/ (tab after every comma) gives the same."""

from __future__ import annotations

from typing import Any

import pytest

from etl_core import pipeline
from etl_core.config import Settings
from tests.conftest import REFERENCE_DATA, ROOT
from tests.helpers import EXPECTED, features_rows


@pytest.mark.parametrize("data_dir", [REFERENCE_DATA, ROOT / "data"], ids=["reference-data", "repo-data"])
def test_the_challenge_table(env: dict[str, str], db: Any, schema: str, data_dir: Any) -> None:
    assert (data_dir / "users.csv").is_file(), f"missing {data_dir}"
    summary = pipeline.run(Settings.from_env({**env, "DATA_DIR": str(data_dir)}), pipeline.Trigger())
    assert summary["status"] == "succeeded"
    assert features_rows(db, schema) == EXPECTED
    ids = db.run(f'SELECT user_id, most_common_compound_ids FROM "{schema}".user_features ORDER BY user_id')
    assert ids[0] == [1, [2]] and ids[3] == [4, [1, 2, 3]]
