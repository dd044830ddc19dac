"""The sharded path: one experiments file counted by many invocations of this same function, the partial
counts reduced inside PostgreSQL, the features published as a run publishes them (docs/scale.md).

* ``plan``: the file's line-aligned byte ranges, one event per shard (the state machine's Map items);
* ``count``: one shard read under the contract (its byte range behind the file's header line), counted
  by the counting engine, its partial counts, (user, compound, n) and (user, NULL, experiments), COPYed
  into ``etl_shard_counts`` in one transaction (a shard counted again replaces its rows);
* ``reduce``: a run: every shard present and of the same object, the sums, maxima, ties and names in
  SQL, the rows handed to the same publication as a single run's (DELETE + COPY, the run finished, in
  one transaction), the staging rows dropped after the commit.

Only the strict policy: a shard's violations fail the reduce (with the shard's first byte: lines are
counted from the shard's start).  Experiment ids must increase from shard to shard (each shard checks
its own for duplicates, as a single run does; across shards only increasing ranges prove uniqueness).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import re
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl_core import features, reading
from etl_core.config import Settings
from etl_core.contract import COMPOUNDS, EXPERIMENTS, USERS
from etl_core.errors import BadRequest, ContractViolation, EtlError, InternalError, ShardsIncomplete, SourceChanged
from etl_core.guard import Volume, check_volume
from etl_core.inputs import identify, resolve_location
from etl_core.literals import scalar
from etl_core.logs import log_event
from etl_core.reading import report
from etl_core.sources import Pinned, Source, translated
from etl_core.store import Store
from etl_core.store import shards as staging

WINDOW = 1 << 16  # bytes read at a time to find the end of a line
_EOL = re.compile(rb"\r\n|\r|\n")
NAME_CHARS = 128  # a batch's name: what Step Functions' execution names allow, and a little more


@dataclasses.dataclass(frozen=True)
class Shard:
    batch: str
    shard: int
    shards: int
    first: int  # the first byte of the shard's first line
    end: int  # one past the last byte of its last line
    identity: str  # the versions of the three files the plan saw (``_identities``)

    def event(self) -> dict[str, Any]:
        return {"action": "count-shard", **dataclasses.asdict(self)}

    @classmethod
    def parse(cls, event: dict[str, Any]) -> Shard:
        fields: dict[str, Any] = {f.name: event.get(f.name) for f in dataclasses.fields(cls)}
        ints = ("shard", "shards", "first", "end")
        if not all(isinstance(fields[k], int) and not isinstance(fields[k], bool) for k in ints) \
                or not all(isinstance(fields[k], str) for k in ("batch", "identity")):
            raise BadRequest("count-shard needs batch and identity (strings) and shard, shards, first, end "
                             "(integers): the events plan-shards made", received=sorted(event)[:10])
        shard = cls(**fields)
        if not 0 <= shard.shard < shard.shards or not 0 <= shard.first <= shard.end:
            raise BadRequest("count-shard: shard must be below shards and first at most end", shard=shard.shard,
                             shards=shard.shards, first=shard.first, end=shard.end)
        return shard


def _batch_name(batch: Any) -> str:
    if not isinstance(batch, str) or not 0 < len(batch) <= NAME_CHARS:
        raise BadRequest(f"batch must be a name of 1 to {NAME_CHARS} characters (the execution's name)")
    return batch


# --- plan


def plan(settings: Settings, batch: Any, shards: Any) -> dict[str, Any]:
    """The batch's shard events: ``shards`` byte ranges of the experiments file of about equal size, each
    from the start of a line to the end of one (after the header line); fewer where lines are long."""
    batch = _batch_name(batch)
    if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= 10_000:
        raise BadRequest("plan-shards needs shards, an integer from 1 to 10,000")
    source = Pinned(resolve_location(settings, None).source)
    name = EXPERIMENTS.filename
    with translated(name):
        identity = _identities(source)
        size = source.size(name)
        with source.open_at(name, 0) as f:
            start = reading.header_end(f)  # past the header (and any blank line before it)
            cuts = [start]
            for k in range(1, shards):
                cut = _line_end(f, start + (size - start) * k // shards - 1, size)
                if cut > cuts[-1]:
                    cuts.append(cut)
    ranges = [(a, b) for a, b in zip(cuts, [*cuts[1:], size], strict=True) if b > a] or [(start, start)]
    events = [Shard(batch, i, len(ranges), a, b, identity).event() for i, (a, b) in enumerate(ranges)]
    log_event("shards_planned", batch=batch, shards=len(events), bytes=size)
    return {"batch": batch, "shards": events}


def forget(settings: Settings, batch: str) -> None:
    """Delete the staging rows of an earlier batch of this name (one that failed or was abandoned): a new
    plan starts the batch afresh, so that none of its old shards count or make it look incomplete."""
    staging.drop_batch(settings.db, settings.schema, batch)


def _identities(source: Source) -> str:
    """The versions of the three files, as one text: what a plan pins, each count checks and stores,
    and the reduce compares with the files it reads (the users and compounds are read by every step)."""
    with translated(EXPERIMENTS.filename):
        return ";".join(f"{c.filename}={source.identity(c.filename)}" for c in (EXPERIMENTS, USERS, COMPOUNDS))


def _line_end(f: pa.NativeFile, position: int, size: int) -> int:
    """The offset just past the first line end at or after ``position`` (``size`` if there is none): LF,
    CRLF or a lone CR, as the contract ends lines (a CRLF whose LF is read with the next window included)."""
    offset = max(position, 0)
    f.seek(offset)
    while offset < size:
        window = f.read(WINDOW)
        if not window:
            break
        found = _EOL.search(window)
        if found is not None:
            end = offset + found.end()
            if window[found.start():found.end()] == b"\r" and found.end() == len(window) and f.read(1) == b"\n":
                end += 1
            return end
        offset += len(window)
    return size


# --- count one shard


class ShardSource:
    """``source`` with its experiments file seen as the header line and one byte range of it: the rest of
    the extract step reads it as it reads a whole file."""

    def __init__(self, source: Pinned, shard: Shard) -> None:
        self.source = source
        self.shard = shard
        self._body: pa.Buffer | None = None

    def _view(self) -> pa.Buffer:
        if self._body is None:
            name = EXPERIMENTS.filename
            with translated(name), self.source.open_at(name, 0) as f:
                length = reading.header_end(f)
                f.seek(0)
                header = f.read(length)
                whole = bytearray(len(header) + self.shard.end - self.shard.first)  # one copy, not two
                whole[:len(header)] = header
                f.seek(self.shard.first)
                view, filled = memoryview(whole), len(header)
                while filled < len(whole):
                    got = f.readinto(view[filled:])
                    if not got:
                        raise SourceChanged(f"{name} ended before byte {self.shard.end}: it changed; plan again",
                                            file=name)
                    filled += got
            self._body = pa.py_buffer(whole)
        return self._body

    def open(self, name: str) -> pa.NativeFile:
        if name != EXPERIMENTS.filename:
            return self.source.open(name)
        return pa.BufferReader(self._view())

    def size(self, name: str) -> int:
        return self._view().size if name == EXPERIMENTS.filename else self.source.size(name)

    def identity(self, name: str) -> str:
        return self.source.identity(name)

    def describe(self, name: str) -> dict[str, Any]:
        return self.source.describe(name)


class _Ids:
    """A sink between the reader and the counter that keeps the shard's first and last experiment id and
    whether they increase."""

    def __init__(self, sink: features.ExperimentCounter) -> None:
        self.sink = sink
        self.reset_ids()

    def reset_ids(self) -> None:
        self.first: int | None = None
        self.last: int | None = None
        self.increasing = True

    def add(self, batch: pa.RecordBatch) -> None:
        ids = batch.column("experiment_id")
        if len(ids):
            if not features.ascending(ids) or (self.last is not None and ids[0].as_py() <= self.last):
                self.increasing = False
            self.first = ids[0].as_py() if self.first is None else self.first
            self.last = ids[-1].as_py()
        self.sink.add(batch)

    def reset(self) -> None:
        self.reset_ids()
        self.sink.reset()


def partial_counts(counts: features.Counts, compound_ids: pa.Array) -> pa.Table:
    """The counts as rows: (user_id, compound_id, n) for each pair, (user_id, NULL, experiments) for each
    user's experiments; uses ``counts`` up."""
    with_none = pa.concat_arrays([compound_ids, pa.nulls(1, compound_ids.type)])
    parts = []
    stride = scalar(counts.stride, pa.int64())
    for b, bucket in enumerate(counts.buckets):
        keys, n = bucket.take()
        keys = keys.cast(pa.int64())
        local = pc.divide(keys, stride)
        position = pc.add(local, scalar(b * counts.bucket_users, pa.int64()))
        index = pc.subtract(keys, pc.multiply(local, stride))
        parts.append(pa.table({"user_id": counts.user_ids.take(position), "compound_id": with_none.take(index),
                               "n": n.cast(pa.int64())}))
    if not parts:
        return pa.table({"user_id": pa.array([], pa.int64()), "compound_id": pa.array([], pa.int64()),
                         "n": pa.array([], pa.int64())})
    return pa.concat_tables(parts)


def count(settings: Settings, event: dict[str, Any]) -> dict[str, Any]:
    """Count one shard and replace its partial counts in the staging table; what it read."""
    started = time.perf_counter()
    shard = Shard.parse(event)
    _batch_name(shard.batch)
    source = Pinned(resolve_location(settings, None).source)
    name = EXPERIMENTS.filename
    if _identities(source) != shard.identity:
        raise SourceChanged("an input file is not the version the shards were planned on (users.csv, compounds.csv "
                            "and user_experiments.csv are all pinned by the plan); plan again", file=name)
    users, compounds, results = _read_references(settings, source)
    refs = reading.References.of(users["user_id"].combine_chunks(), compounds["compound_id"].combine_chunks())
    view = ShardSource(source, shard)
    with features.ExperimentCounter(refs.users.index, refs.compounds.index) as counter:
        ids = _Ids(counter)
        result = reading.read_file(view, EXPERIMENTS, ids, refs=refs, block_size=settings.block_size,
                                   size=view.size(name))
        counts = counter.result()
    experiments = counts.experiments
    rows = partial_counts(counts, compounds["compound_id"].combine_chunks())
    violations = pa.concat_tables([r.violations for r in (*results, result)])
    staging.replace_shard(settings.db, settings.schema, shard.batch, {
        "shard": shard.shard, "shards": shard.shards, "identity": shard.identity, "first_byte": shard.first,
        "end_byte": shard.end, "rows_read": result.rows_read, "rows_rejected": result.rows_rejected,
        "experiments": experiments, "first_experiment_id": ids.first, "last_experiment_id": ids.last,
        "increasing": ids.increasing, "violations": report(violations, settings.max_reported),
    }, _csv(rows, batch=shard.batch, shard=shard.shard))
    summary = {"batch": shard.batch, "shard": shard.shard, "rows_read": result.rows_read,
               "rows_rejected": result.rows_rejected, "experiments": experiments, "pairs": rows.num_rows,
               "seconds": round(time.perf_counter() - started, 3)}
    log_event("shard_counted", **summary)
    return summary


def _read_references(settings: Settings, source: Source) -> tuple[pa.Table, pa.Table,
                                                                   tuple[reading.FileResult, ...]]:
    reading.check_headers(source)  # a missing file or a bad header: the data's error (422), as a run's
    users_sink = reading.Collector(reading.output_schema(USERS))
    compounds_sink = reading.Collector(reading.output_schema(COMPOUNDS))
    users = reading.read_file(source, USERS, users_sink, block_size=settings.block_size)
    compounds = reading.read_file(source, COMPOUNDS, compounds_sink, block_size=settings.block_size)
    return users_sink.table(), compounds_sink.table().sort_by("compound_id"), (users, compounds)


def _csv(table: pa.Table, **constants: Any) -> bytes:
    """``table`` as CSV rows (no header) with ``constants`` as leading columns; NULL as an empty field."""
    first = {k: pa.repeat(pa.scalar(v), table.num_rows) for k, v in constants.items()}
    whole = pa.table({**first, **{c: table[c] for c in table.column_names}})
    out = io.BytesIO()
    pacsv.write_csv(whole, out, write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue()


# --- reduce


def reduce(settings: Settings, batch: Any, *, force: bool = False, store: Store | None = None) -> dict[str, Any]:
    """A run that publishes the batch's counted shards; raises an EtlError, recorded in the runs table."""
    batch = _batch_name(batch)
    location = resolve_location(settings, None)
    own = store is None
    if store is None:
        from etl_core.store.postgres import PostgresStore

        store = PostgresStore(settings.db, settings.schema)
    try:
        with store.run(policy="strict", source=location.where) as ledger:
            try:
                return _reduce(settings, ledger, location, batch, force=force)
            except EtlError as exc:
                exc.details.setdefault("run_id", ledger.run_id)
                ledger.fail(exc.to_dict())
                raise
            except Exception as exc:
                error = InternalError.of(exc, run_id=ledger.run_id)
                ledger.fail(error.to_dict())
                raise error from exc
    finally:
        if own:
            store.close()


def _reduce(settings: Settings, ledger: Any, location: Any, batch: str, *, force: bool) -> dict[str, Any]:
    started = time.perf_counter()
    source = Pinned(location.source)
    found, inputs = identify(ledger, location, source, "strict")
    shards = staging.shard_records(settings.db, settings.schema, batch)
    _check_shards(batch, shards, _identities(source))
    users, compounds, results = _read_references(settings, source)
    violations = pa.concat_tables([r.violations for r in results])
    if violations.num_rows:
        raise ContractViolation(f"the input breaks the data contract in {violations.num_rows} place(s); "
                                "nothing was loaded", violations=report(violations, settings.max_reported))
    rows = staging.reduced(settings.db, settings.schema, batch, _csv(users.select(["user_id", "name"])),
                           _csv(compounds.select(["compound_id", "compound_name"])))
    experiments = sum(row["experiments"] for row in shards)
    features = _features(rows, experiments, users.num_rows)
    files = {USERS.filename: _file(results[0]), COMPOUNDS.filename: _file(results[1]),
             EXPERIMENTS.filename: {"rows_read": sum(r["rows_read"] for r in shards), "rows_accepted": experiments,
                                    "rows_rejected": 0, "extra_columns": [], "shards": len(shards)}}
    seconds = {"extract": round(time.perf_counter() - started, 3)}
    with ledger.publishing() as publication:
        if force:
            publication.lock()
        else:
            check_volume(publication.volume(), Volume(users=users.num_rows, experiments=experiments),
                         min_share=settings.min_share)
        written = publication.replace_features(features.to_batches(max_chunksize=1 << 16))
        publication.store_rejects(violations)
        seconds["total"] = round(time.perf_counter() - started, 3)
        publication.finish(status="succeeded", files=files, users_written=written, seconds=seconds)
    # the batch's staging rows, once published (a failure here leaves them for a later clean-up)
    staging.drop_batch(settings.db, settings.schema, batch)
    log_event("shards_reduced", run_id=ledger.run_id, batch=batch, shards=len(shards), users_written=written)
    return {"run_id": ledger.run_id, "status": "succeeded", "policy": "strict", "batch": batch, "shards": len(shards),
            "files": files, "users_written": written, "seconds": seconds, "fingerprint": found, "inputs": inputs}


def _file(result: reading.FileResult) -> dict[str, Any]:
    return {"rows_read": result.rows_read, "rows_accepted": result.rows_accepted,
            "rows_rejected": result.rows_rejected, "extra_columns": list(result.extra_columns)}


def _check_shards(batch: str, shards: list[dict[str, Any]], identity: str) -> None:
    if not shards:
        raise ShardsIncomplete(f"no shard of batch {batch!r} has been counted; nothing was loaded", batch=batch)
    planned = shards[0]["shards"]
    have = [row["shard"] for row in shards]
    missing = sorted(set(range(planned)) - set(have))
    if missing or len(have) != planned or any(row["shards"] != planned for row in shards):
        raise ShardsIncomplete(f"batch {batch!r} has {len(have)} of its {planned} shards counted; nothing was "
                               "loaded: count the missing ones again", batch=batch, missing=missing[:20])
    if any(row["identity"] != identity for row in shards):
        raise ShardsIncomplete(f"batch {batch!r} was counted from other versions of the input files than they "
                               "are now (users.csv, compounds.csv or user_experiments.csv changed); nothing was "
                               "loaded: plan and count it again", batch=batch)
    bad = [row for row in shards if row["rows_rejected"]]
    if bad:
        first = bad[0]
        raise ContractViolation(
            f"user_experiments.csv breaks the data contract in {sum(r['rows_rejected'] for r in bad)} place(s), "
            f"in {len(bad)} shard(s); nothing was loaded (lines are counted from the shard's first byte)",
            violations=first["violations"], shard=first["shard"], first_byte=first["first_byte"])
    ranges = [(row["first_experiment_id"], row["last_experiment_id"]) for row in shards
              if row["first_experiment_id"] is not None]
    ordered = all(row["increasing"] for row in shards) and all(a[1] < b[0] for a, b in itertools.pairwise(ranges))
    if not ordered:
        raise ContractViolation(
            "experiment_id does not increase from shard to shard: the sharded path cannot prove them unique; "
            "nothing was loaded (load this file with one function)", batch=batch)


def _features(data: bytes, experiments: int, users: int) -> pa.Table:
    """The reduce's CSV rows as the features table a single run computes."""
    names = ["user_id", "user_name", "total_experiments", "most_common_compounds", "ids"]
    types = {"user_id": pa.int64(), "user_name": pa.string(), "total_experiments": pa.int64(),
             "most_common_compounds": pa.string(), "ids": pa.string()}
    table = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(column_names=names),
                           parse_options=pacsv.ParseOptions(newlines_in_values=True),
                           convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                                quoted_strings_can_be_null=False))
    ids = pc.split_pattern(table["ids"], ";").cast(pa.list_(pa.int64()))
    average = pa.repeat(features.average(experiments, users), table.num_rows)
    return pa.table([table["user_id"], table["user_name"], table["total_experiments"],
                     table["most_common_compounds"], ids, average], schema=features.FEATURES_SCHEMA)
