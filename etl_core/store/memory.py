"""An in-memory store that keeps the PostgreSQL store's promises, for the quick test tier.

It runs the whole pipeline without a server.  tests/test_store.py holds both stores to the same
contract; it never replaces a test against PostgreSQL.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from etl_core import literals
from etl_core.config import RetentionSettings
from etl_core.errors import LoadError, RunInProgress, shorten
from etl_core.guard import Volume
from etl_core.store import CONFIRMING, LARGEST_ID, LOADED, PUBLISHED, LastLoaded, RowDigests, RunRecord
from etl_core.tables import COMPARED


class MemoryStore:
    def __init__(self) -> None:
        self.features: pa.Table | None = None  # with a run_id column, as the real table has
        # each version a run ended: the feature values, valid_from and valid_to (user_features_history)
        self.history: list[dict[str, Any]] = []
        self.kept_from = 0  # the oldest run whose features the history can give (etl_history_horizon)
        self.rejected: list[tuple[int, pa.Table]] = []  # (run id, its rejects), as stored
        self.runs: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def run(self, *, policy: str, source: str) -> Iterator[MemoryRun]:
        if not self._lock.acquire(blocking=False):
            running = max((i for i, r in self.runs.items() if r["status"] == "running"), default=None)
            raise RunInProgress("another run holds the ETL lock; try again when it has finished",
                                running_run_id=running)
        try:
            for record in self.runs.values():
                if record["status"] == "running":
                    record.update(status="failed", finished_at=_now(), error={
                        "type": "Abandoned", "code": "abandoned",
                        "message": "the run stopped before it finished (connection or process lost)"})
            loaded = [i for i, r in self.runs.items() if r["status"] in LOADED]
            last = LastLoaded(max(loaded), self.runs[max(loaded)]["fingerprint"]) if loaded else None
            run_id = max(self.runs, default=0) + 1
            self.runs[run_id] = {"run_id": run_id, "status": "running", "policy": policy, "data_dir": source,
                                 "started_at": _now(), "finished_at": None, "files": None, "users_written": None,
                                 "seconds": None, "error": None, "fingerprint": None, "inputs": None,
                                 "same_as": None, "changes": None, "restored_from": None}
            yield MemoryRun(self, run_id, last)
        finally:
            self._lock.release()

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        record = self.runs.get(run_id) if 1 <= run_id <= LARGEST_ID else None
        if record is None:
            return None
        rejects = sum(t.num_rows for i, t in self.rejected if i == run_id)
        return {**record, "rejects": rejects}

    def list_runs(self, *, limit: int, status: str | None = None, before: int | None = None) -> list[dict[str, Any]]:
        ids = sorted((i for i, r in self.runs.items() if (status is None or r["status"] == status)
                      and (before is None or i < before)), reverse=True)
        return [found for i in ids[:limit] if (found := self.get_run(i)) is not None]

    def rejects(self, run_id: int, *, limit: int, after: int = 0, max_chars: int) -> list[dict[str, Any]]:
        rows = [row for i, table in self.rejected if i == run_id for row in table.to_pylist()]
        page = []
        for seq, row in enumerate(rows[max(after, 0):max(after, 0) + limit], start=max(after, 0) + 1):
            page.append({"seq": seq, "file": row["file"], "line": row["line"], "column": row["column"],
                         "value": _cut(row["value"], max_chars), "rule": row["rule"],
                         "raw": _cut(row["raw"], max_chars), "raw_sha256": row.get("raw_sha256")})
        return page

    def history_kept_from(self) -> int:
        return self.kept_from

    def as_of(self, run_id: int, *, limit: int, after: int = 0) -> list[dict[str, Any]]:
        current = [] if self.features is None else self.features.to_pylist()
        rows = [row for row in current if row["run_id"] <= run_id] + [
            {**{c: v[c] for c in ("user_id", *COMPARED)}, "run_id": v["valid_from"]} for v in self.history
            if v["valid_from"] <= run_id < v["valid_to"]]
        return sorted((r for r in rows if r["user_id"] > after), key=lambda r: r["user_id"])[:limit]

    def changes(self, run_id: int, *, limit: int, after: int = 0) -> list[dict[str, Any]]:
        values = COMPARED
        before = {v["user_id"]: {c: v[c] for c in values} for v in self.history if v["valid_to"] == run_id}
        current = [] if self.features is None else self.features.to_pylist()
        made = {r["user_id"]: {c: r[c] for c in values} for r in current if r["run_id"] == run_id}
        made.update({v["user_id"]: {c: v[c] for c in values} for v in self.history if v["valid_from"] == run_id})
        users = sorted(u for u in before.keys() | made.keys() if u > after)[:limit]
        return [{"user_id": u, "change": "added" if u not in before else "removed" if u not in made else "changed",
                 "before": before.get(u), "after": made.get(u)} for u in users]

    def last_confirmed(self) -> dict[str, Any] | None:
        confirmed = [i for i, r in self.runs.items() if r["status"] in CONFIRMING]
        if not confirmed:
            return None
        record = self.runs[max(confirmed)]
        finished = datetime.datetime.fromisoformat(record["finished_at"])
        age = (datetime.datetime.now(datetime.UTC) - finished).total_seconds()
        return {"run_id": record["run_id"], "status": record["status"], "finished_at": record["finished_at"],
                "age_seconds": round(age, 3)}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "database": "memory", "server_version": None}

    def missing_grants(self) -> list[tuple[str, bool]]:
        return []

    def migrate(self, *, apply: bool = True) -> dict[str, Any]:
        """Memory has one shape, this release's: nothing to apply."""
        from etl_core.store.migrations import LATEST

        return {"schema": "memory", "version_before": LATEST, "version": LATEST, "applied": [], "pending": [],
                "latest": LATEST}

    def close(self) -> None:
        pass


class MemoryRun(RunRecord):
    def __init__(self, store: MemoryStore, run_id: int, last_loaded: LastLoaded | None) -> None:
        super().__init__(run_id, last_loaded)
        self._store = store

    def unchanged(self, *, same_as: int, seconds: Any) -> None:
        self._store.runs[self.run_id].update(status="unchanged", finished_at=_now(), seconds=seconds,
                                             same_as=same_as, files={}, users_written=0, **self._inputs)

    @contextmanager
    def publishing(self) -> Iterator[MemoryPublication]:
        publication = MemoryPublication(self._store, self.run_id, self._inputs)
        yield publication  # an exception leaves the store as it was: nothing was applied yet
        publication.apply()

    def fail(self, error: dict[str, Any]) -> None:
        self._store.runs[self.run_id].update(status="failed", finished_at=_now(), error=error, **self._inputs)

    def analyze(self) -> None:
        pass

    def record_seconds(self, seconds: Any) -> None:
        self._store.runs[self.run_id]["seconds"] = seconds

    def purge(self, retention: RetentionSettings) -> dict[str, Any]:
        """As the PostgreSQL store purges: rejects of old runs, the history's horizon raised and the versions
        before it, then old runs the history no longer answers for, in bounded steps (a run's rejects are
        cut from their end, so that those left keep their seq)."""
        store = self._store
        now = datetime.datetime.now(datetime.UTC)

        def old(run_id: int, days: int) -> bool:
            finished = store.runs[run_id]["finished_at"]
            return finished is not None and datetime.datetime.fromisoformat(finished) < now - datetime.timedelta(days)

        purged: dict[str, Any] = {"rejects": 0, "history": 0, "runs": 0, "backlog": False}
        published = sorted(i for i, r in store.runs.items() if r["status"] in PUBLISHED)
        if published:
            recent = [i for i, r in store.runs.items() if r["finished_at"] is not None
                      and not old(i, retention.history_days)]
            kept = max(min(recent, default=published[-1]),
                       published[-retention.history_runs] if retention.history_runs and
                       len(published) >= retention.history_runs else 0)
            store.kept_from = max(store.kept_from, min(kept, published[-1]))
        ended = sorted((v for v in store.history if v["valid_to"] < store.kept_from),
                       key=lambda v: (v["valid_to"], v["user_id"]))
        run = store.runs[self.run_id]
        own = (run["changes"] or {}) if run["status"] in PUBLISHED else {}
        steps = retention.history_steps(own.get("changed", 0) + own.get("removed", 0))
        dropped = ended[:retention.step_rows * steps]
        store.history = [v for v in store.history if v not in dropped]
        purged["history"] = len(dropped)
        purged["backlog"] = len(ended) > len(dropped)
        for _ in range(retention.max_steps):
            budget = retention.step_rows
            left = []
            for run_id, table in store.rejected:
                if budget and old(run_id, retention.rejects_days):
                    cut = min(budget, table.num_rows)
                    table, budget = table.slice(0, table.num_rows - cut), budget - cut
                if table.num_rows:
                    left.append((run_id, table))
            store.rejected = left
            purged["rejects"] += retention.step_rows - budget
            if budget:
                break
        else:
            purged["backlog"] = True
        for _ in range(retention.max_steps):
            keep = {max((i for i, r in store.runs.items() if r["status"] in statuses), default=None)
                    for statuses in (LOADED, CONFIRMING)} | {i for i, _ in store.rejected}
            gone = [i for i in sorted(store.runs) if i not in keep and old(i, retention.runs_days)
                    and not (i >= store.kept_from and store.runs[i]["status"] in PUBLISHED)]
            for run_id in gone[:retention.step_rows]:
                del store.runs[run_id]
            purged["runs"] += min(len(gone), retention.step_rows)
            if len(gone) < retention.step_rows:
                break
        else:
            purged["backlog"] = True
        return purged


class MemoryPublication:
    def __init__(self, store: MemoryStore, run_id: int, inputs: dict[str, Any]) -> None:
        self._inputs = inputs
        self._store = store
        self._run_id = run_id
        self._features: pa.Table | None = None
        self._rejects: pa.Table | None = None
        self._finished: dict[str, Any] | None = None
        self._ended: list[dict[str, Any]] = []
        self.changes: dict[str, int] | None = None
        self._sample: int | None = None
        self.sample: list[dict[str, Any]] | None = None

    def preview(self, sample: int) -> None:
        self._sample = sample

    def restore_features(self, of: int) -> int:
        rows = self._store.as_of(of, limit=LARGEST_ID)
        if not rows or self._store.features is None:
            return self.replace_features([])
        schema = pa.schema([f for f in self._store.features.schema if f.name != "run_id"])
        table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "run_id"} for r in rows], schema=schema)
        return self.replace_features(table.to_batches())

    def volume_as_of(self, of: int) -> Volume:
        rows = self._store.as_of(of, limit=LARGEST_ID)
        return Volume(users=len(rows), experiments=sum(r["total_experiments"] for r in rows))

    def lock(self) -> None:
        pass  # one process, one run at a time: nothing to lock against

    def volume(self) -> Volume:
        table = self._store.features
        if table is None or table.num_rows == 0:
            return Volume(users=0, experiments=0)
        return Volume(users=table.num_rows, experiments=int(pc.sum(table["total_experiments"]).as_py()))

    def replace_features(self, features: Iterable[pa.RecordBatch], digester: RowDigests | None = None) -> int:
        """As the PostgreSQL store writes: only the users added, changed or removed; unchanged rows keep
        the run that made them valid, and each ended version goes to the history."""
        batches = list(features)
        table = pa.Table.from_batches(batches) if batches else None
        if table is None:  # every user removed
            current = self._store.features
            self._ended = [] if current is None else [_ended(row, self._run_id) for row in current.to_pylist()]
            self.changes = {"added": 0, "changed": 0, "removed": len(self._ended), "unchanged": 0}
            self._features = None
            return 0
        if pc.count_distinct(table["user_id"]).as_py() != table.num_rows:
            raise LoadError("database error 23505: duplicate key value violates unique constraint "
                            '"user_features_pkey"', sqlstate="23505")
        current = self._store.features
        if current is None:
            current = table.append_column("run_id", literals.repeat(0, pa.int64(), table.num_rows)).slice(0, 0)
        # each new row beside the user's old row (null where the user is new), all in Arrow: a run converts
        # no Python object (pyarrow would try to import pandas)
        # (take, not join: Acero's join tries to import pandas, and takes no list column)
        at = pc.index_in(table["user_id"], value_set=current["user_id"])
        before = current.take(at)
        joined = pa.table({**{name: _comparable(table[name]) for name in COMPARED},
                           **{f"old_{name}": _comparable(before[name]) for name in (*COMPARED, "run_id")}})
        known = pc.is_valid(joined["old_run_id"])
        differs = pc.and_(known, _any_differs(joined, COMPARED))
        written = pc.or_(pc.invert(known), differs)
        run_ids = pc.if_else(written, literals.scalar(self._run_id, pa.int64()), joined["old_run_id"])
        gone = pc.invert(pc.is_in(current["user_id"], value_set=table["user_id"]))
        ended_before = before.filter(differs)
        self._ended = [_ended(row, self._run_id) for row in
                       ended_before.to_pylist() + current.filter(gone).to_pylist()]
        changed = pc.sum(differs.cast(pa.int64())).as_py() or 0
        added = table.num_rows - (pc.sum(known.cast(pa.int64())).as_py() or 0)
        self.changes = {"added": added, "changed": changed, "removed": current.filter(gone).num_rows,
                        "unchanged": table.num_rows - added - changed}
        if self._sample is not None:
            self.sample = self._diff_sample(table, current)
        self._features = table.append_column("run_id", run_ids)
        return table.num_rows

    def store_rejects(self, rejects: pa.Table) -> None:
        self._rejects = rejects if self._rejects is None else pa.concat_tables([self._rejects, rejects])

    def _diff_sample(self, table: pa.Table, current: pa.Table) -> list[dict[str, Any]]:
        assert self._sample is not None
        old = {r["user_id"]: {c: r[c] for c in COMPARED} for r in current.to_pylist()}
        new = {r["user_id"]: {c: r[c] for c in COMPARED} for r in table.to_pylist()}
        users = sorted(u for u in old.keys() | new.keys() if old.get(u) != new.get(u))[:self._sample]
        return [{"user_id": u, "change": "added" if u not in old else "removed" if u not in new else "changed",
                 "before": old.get(u), "after": new.get(u)} for u in users]

    def finish(self, *, status: str, files: Any, users_written: int, seconds: Any,
               restored_from: int | None = None) -> None:
        self._finished = {"status": status, "files": files, "users_written": users_written, "seconds": seconds,
                          "finished_at": _now(), "changes": self.changes, "restored_from": restored_from,
                          **self._inputs}

    def apply(self) -> None:
        """The commit: every change of the publication at once."""
        if self.changes is not None and self._sample is None:
            self._store.features = self._features
            self._store.history.extend(self._ended)
        if self._rejects is not None and self._rejects.num_rows:
            self._store.rejected.append((self._run_id, self._rejects))
        if self._finished is not None:
            self._store.runs[self._run_id].update(self._finished)


def _any_differs(joined: pa.Table, columns: tuple[str, ...]) -> pa.Array:
    """Per row, whether any of ``columns`` differs from its ``old_`` twin, NULLs compared as values (as
    SQL's IS DISTINCT FROM); a list compared by its items in order."""
    result = None
    for name in columns:
        new, old = joined[name], joined[f"old_{name}"]
        unequal = pc.fill_null(pc.not_equal(new, old), literals.scalar(False, pa.bool_()))
        one_null = pc.xor(pc.is_null(new), pc.is_null(old))
        column = pc.or_(unequal, one_null)
        result = column if result is None else pc.or_(result, column)
    assert result is not None
    return result


def _comparable(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A list column as text ("1,2"; NULL stays NULL), anything else as it is."""
    if not pa.types.is_list(values.type):
        return values
    return pc.binary_join(pc.cast(values, pa.list_(pa.string())), literals.scalar(",", pa.string()))


def _ended(row: dict[str, Any], run_id: int) -> dict[str, Any]:
    """A version of a user's features as the history keeps it once run ``run_id`` ended it."""
    return {**{c: row[c] for c in ("user_id", *COMPARED)}, "valid_from": row["run_id"], "valid_to": run_id}


def _cut(text: str | None, limit: int) -> str | None:
    return None if text is None else shorten(text, limit)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()
