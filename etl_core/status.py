"""The statuses a run has in the ledger (``etl_runs.status``), named once: the store's CHECK
constraint, its queries, the metrics (one per finished status) and the API's documents are made
from this enum."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"  # holds the job's lock; a run cut off is marked failed by the next one
    SUCCEEDED = "succeeded"  # published every row
    PARTIAL = "partial"  # published, some rows rejected (quarantine)
    FAILED = "failed"  # published nothing; its error is recorded
    UNCHANGED = "unchanged"  # found the input the last load read, and loaded nothing
    RESTORED = "restored"  # published the features as they were after an earlier run (restored_from)
    DRY_RUN = "dry_run"  # did everything but the write: read, judged, compared; published nothing


# a finished run's statuses: each is a metric of its own (Runs<Status>)
FINISHED = tuple(s for s in RunStatus if s is not RunStatus.RUNNING)
# the statuses of a run that confirmed the table's rows: /health reports the last one
CONFIRMING = (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.UNCHANGED, RunStatus.RESTORED)
# the statuses of a run that loaded an input: the last one's fingerprint decides 'unchanged' (a restore is
# not one: the input the last load read stays 'unchanged', so that the restore stands until a new input)
LOADED = (RunStatus.SUCCEEDED, RunStatus.PARTIAL)
# the statuses of a run that published features (a load or a restore): the history's retention by runs counts them
PUBLISHED = (RunStatus.SUCCEEDED, RunStatus.PARTIAL, RunStatus.RESTORED)
