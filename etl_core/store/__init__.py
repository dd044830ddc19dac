"""Where runs and features are kept: the pipeline talks to a ``Store`` and to nothing else.

``PostgresStore`` (``etl_core.store.postgres``) is the real one and the only code that knows
pg8000; ``MemoryStore`` (``etl_core.store.memory``) keeps the same promises in memory, for the quick
test tier.  One test suite (tests/test_store.py) runs against both, so that they cannot drift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pyarrow as pa

from etl_core.config import RetentionSettings
from etl_core.guard import Volume
from etl_core.status import CONFIRMING, LOADED, PUBLISHED  # noqa: F401  (the store's modules take them from here)

LARGEST_ID = 2**63 - 1  # run ids are PostgreSQL bigints: any other number is no run


@dataclasses.dataclass(frozen=True)
class LastLoaded:
    """The newest run that published features, and the fingerprint of the input it read (None: a run
    from before fingerprints, which nothing equals)."""

    run_id: int
    fingerprint: str | None


class RunRecord:
    """What both stores' runs keep of themselves: the id, the last loaded run as it was when this run
    started, and the inputs (fingerprint, files) once the pipeline has recorded them."""

    def __init__(self, run_id: int, last_loaded: LastLoaded | None) -> None:
        self.run_id = run_id
        self.last_loaded = last_loaded
        self._inputs: dict[str, Any] = {}

    def record_inputs(self, fingerprint: str, inputs: Any) -> None:
        self._inputs = {"fingerprint": fingerprint, "inputs": inputs}


class RowDigests(Protocol):
    """Each row's digest of a load's features (``etl_core.features.Digester``): equal rows, equal digests."""

    algorithm: int  # digests of another algorithm are never compared

    def rows(self, features: pa.RecordBatch | pa.Table) -> pa.Array:
        """One uint64 per row."""
        ...


class Publication(Protocol):
    """One transaction that replaces the features: everything in it is published together at the end
    of the ``with`` block, or nothing is (any exception rolls all of it back)."""

    def lock(self) -> None:
        """From here on no one else can change how the table is referenced."""
        ...

    def volume(self) -> Volume:
        """What the table holds now (counted: the load guard's side of the comparison); locks as ``lock``."""
        ...

    changes: dict[str, int] | None  # once replace_features is done: added, changed, removed, unchanged

    def replace_features(self, features: Iterable[pa.RecordBatch], digester: RowDigests | None = None) -> int:
        """Make the table hold exactly these rows (consumed as they come), writing only the users added,
        changed (any value differs) or removed, each ended version kept in the history; return how many
        rows.  An unchanged row keeps the run that made it valid.  A store may use ``digester`` (the
        load's: ``etl_core.features.Digester``) to find the changed users without comparing every value."""
        ...

    sample: list[dict[str, Any]] | None  # previewing: the first users the diff found, as ``Store.changes``

    def preview(self, sample: int) -> None:
        """From here on nothing is written to the features (a dry run): ``replace_features`` and
        ``restore_features`` only compare, counting into ``changes``, and keep the first ``sample``
        users the comparison found (by id, with before and after) in ``sample``."""
        ...

    def restore_features(self, of: int) -> int:
        """As ``replace_features``, with the features as they were when run ``of`` finished (the history
        must still hold them: the caller checks); return how many rows."""
        ...

    def volume_as_of(self, of: int) -> Volume:
        """What the features as of run ``of`` hold: a restore's side of the load guard."""
        ...

    def store_rejects(self, rejects: pa.Table) -> None: ...

    def finish(self, *, status: str, files: Any, users_written: int, seconds: Any,
               restored_from: int | None = None) -> None:
        """Mark the run finished, in the same transaction as its features (``restored_from``: a restore's
        run whose features it published)."""
        ...


class Run(Protocol):
    """A run in progress: it holds the job's lock until its ``with`` block ends."""

    run_id: int
    last_loaded: LastLoaded | None  # as it was when this run started

    def record_inputs(self, fingerprint: str, inputs: Any) -> None:
        """What the run reads (its fingerprint, and each object's key, size, ETag or mtime): kept with
        the run and written with its outcome (finish, fail, unchanged)."""
        ...

    def unchanged(self, *, same_as: int, seconds: Any) -> None:
        """Finish the run as 'unchanged': its input is the one run ``same_as`` loaded; nothing is published."""
        ...

    def publishing(self) -> AbstractContextManager[Publication]: ...

    def fail(self, error: dict[str, Any]) -> None:
        """Record the run as failed with ``error``; never raises (the next run sweeps it otherwise)."""
        ...

    def analyze(self) -> None:
        """Refresh the planner's statistics of the features table after the publication, and reclaim its
        dead rows where nothing else would."""
        ...

    def record_seconds(self, seconds: Any) -> None: ...

    def purge(self, retention: RetentionSettings) -> dict[str, Any]:
        """After the run's outcome is recorded: delete the rejects of runs that finished more than
        ``rejects_days`` ago, then the runs older than ``runs_days`` (never the last that loaded, the last
        that confirmed the features, or one that still has rejects), each table in at most ``max_steps``
        steps of ``step_rows`` rows (the history in ``retention.history_steps`` of the versions this run
        ended).  ``{"rejects": M, "history": H, "runs": N, "backlog": bound reached}``."""
        ...


class Store(Protocol):
    def run(self, *, policy: str, source: str) -> AbstractContextManager[Run]:
        """Take the job's lock (RunInProgress if another run has it), mark runs a dead process left
        'running' as failed, and record a new run (with ``last_loaded`` as the ledger had it)."""
        ...

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """One run's record (``rejects``: how many it stored; ``changes``: the users it added, changed,
        removed and left unchanged, None where it published nothing), or None."""
        ...

    def history_kept_from(self) -> int:
        """The oldest run whose features the history can still give (the runs before it are refused)."""
        ...

    def as_of(self, run_id: int, *, limit: int, after: int = 0) -> list[dict[str, Any]]:
        """The features as they were when run ``run_id`` finished, at most ``limit`` users with an id
        above ``after``, by user id; each row's ``run_id`` is the run that made it valid.  The caller
        checks that the history keeps the run (``history_kept_from``)."""
        ...

    def changes(self, run_id: int, *, limit: int, after: int = 0) -> list[dict[str, Any]]:
        """The users run ``run_id`` added, changed or removed, at most ``limit`` with an id above
        ``after``, by user id: ``user_id``, ``change`` and ``before``/``after`` (the feature values, None
        where the user had none)."""
        ...

    def list_runs(self, *, limit: int, status: str | None = None, before: int | None = None) -> list[dict[str, Any]]:
        """At most ``limit`` run records, newest (highest id) first: only those with ``status`` if given,
        only those with an id below ``before`` if given.  No runs table yet: none."""
        ...

    def rejects(self, run_id: int, *, limit: int, after: int = 0, max_chars: int) -> list[dict[str, Any]]:
        """At most ``limit`` of a run's rejects in the order they were stored, those whose ``seq`` (1, 2,
        ... within the run) is above ``after``: seq, file, line, column, value, rule, raw, raw_sha256 (set
        when the row was stored without raw and value); a value or
        raw text longer than ``max_chars`` is cut as ``errors.shorten`` cuts it."""
        ...

    def last_confirmed(self) -> dict[str, Any] | None:
        """The newest run whose status is in CONFIRMING: run_id, status, finished_at and its age in
        seconds (by the store's clock); None if there is none."""
        ...

    def health(self) -> dict[str, Any]: ...

    def missing_grants(self) -> list[tuple[str, bool]]:
        """What the store's role lacks of docs/security.md's list, each named, with whether a run needs it
        (False: only the maintenance after a load, which the owner alone may run)."""
        ...

    def migrate(self, *, apply: bool = True) -> dict[str, Any]:
        """Bring the store's schema to this release's version now: ``schema``, ``version_before``,
        ``version``, ``applied`` (the steps' versions), ``pending`` (each step's version and
        description) and ``latest``.  ``apply=False`` only reads: nothing is applied."""
        ...

    def close(self) -> None: ...
