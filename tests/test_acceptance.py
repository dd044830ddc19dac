"""The challenge's own data (tests/data/challenge, CRLF line endings, kept byte for byte) gives exactly
the challenge's table; the project's sample set in data/ (tab after every comma) gives the same."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from etl_core import pipeline
from etl_core.config import Settings
from tests.conftest import REFERENCE_DATA, ROOT
from tests.helpers import EXPECTED, features_rows

# sha256 of the files as the challenge shipped them: a checkout that rewrote their line endings
# (core.autocrlf, an editor) would test other bytes than the challenge's
CHALLENGE_SHA256 = {
    "users.csv": "c920c79daa4d349b4736e28788ee2c061f66b2cf85da75e5813c9241c0b83485",
    "compounds.csv": "fd94f50a75a79d9869edd5fcdb783678fc9ea8aed11ef0d8469d2ae864006912",
    "user_experiments.csv": "c9f3de8d0f984623f7c857ef6c3615029231de810bc7ee6e23adfa3b5ecaac50",
}


@pytest.mark.parametrize("name", sorted(CHALLENGE_SHA256))
def test_the_challenge_files_are_the_original_bytes_with_crlf(name: str) -> None:
    content = (REFERENCE_DATA / name).read_bytes()
    assert hashlib.sha256(content).hexdigest() == CHALLENGE_SHA256[name]
    lines = content.split(b"\n")
    assert lines[-1] == b"" and all(line.endswith(b"\r") for line in lines[:-1]), "every line ends in CRLF"


@pytest.mark.parametrize("data_dir", [REFERENCE_DATA, ROOT / "data"], ids=["reference-data", "repo-data"])
def test_the_challenge_table(env: dict[str, str], db: Any, schema: str, data_dir: Any) -> None:
    assert (data_dir / "users.csv").is_file(), f"missing {data_dir}"
    summary = pipeline.run(Settings.from_env({**env, "DATA_DIR": str(data_dir)}), pipeline.Trigger())
    assert summary["status"] == "succeeded"
    assert features_rows(db, schema) == EXPECTED
    ids = db.run(f'SELECT user_id, most_common_compound_ids FROM "{schema}".user_features ORDER BY user_id')
    assert ids[0] == [1, [2]] and ids[3] == [4, [1, 2, 3]]
