"""The job: extract, transform, load, in that order; the only module that knows all three."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from etl_core import counting, extract, guard, logs, manifest, memory, metrics
from etl_core.config import POLICIES, Settings
from etl_core.contract import COMPOUNDS, EXPERIMENTS, FILES, USERS, FileContract, Rule
from etl_core.contract import VERSION as CONTRACT_VERSION
from etl_core.errors import (
    BadRequest,
    ContractViolation,
    EtlError,
    FeaturesStale,
    InternalError,
    RunInProgress,
    RunNotFound,
    shorten,
)
from etl_core.guard import Volume
from etl_core.logs import log_event
from etl_core.source import LocalSource, Pinned, Source, SourceMissing, s3_source
from etl_core.store import Run as StoreRun
from etl_core.store import Store
from etl_core.violations import rows as violation_rows

MANIFEST = manifest.MANIFEST  # the object whose S3 notification starts a run
PROGRESS_EVERY = 5.0  # seconds between progress lines of one file
REPORTED_CHARS = 200  # characters of a reported row's raw text and value; the rest is counted, not sent
SHOWN_CHARS = 200  # characters of a caller's value repeated in an error
FORCE_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Trigger:
    """What one trigger asks for: the policy, optionally a data directory under DATA_ROOT, and whether
    to override the load guard."""

    policy: str | None = None
    data: str | None = None
    force: bool = False

    @classmethod
    def parse(cls, *, policy: object = None, data: object = None, force: object = None,
              **unknown: object) -> Trigger:
        """A trigger from a query string's or an event's values (strings, or JSON values); BadRequest
        names the field and what it accepts.  An empty or null value is the same as none."""
        if unknown:
            raise BadRequest(f"unknown parameter(s) {', '.join(sorted(map(_shown, unknown)))}; "
                             "the accepted ones are policy, data and force")
        return cls(policy=_policy(policy), data=_data(data), force=_force(force))

    @classmethod
    def of_object(cls, settings: Settings, bucket: str, key: str) -> Trigger:
        """The trigger of an S3 notification for ``key`` (decoded) in ``bucket``: the set whose manifest
        it is, as a ``data`` prefix below DATA_URL.  BadRequest for another bucket, or a key outside it."""
        url = settings.data_url
        shown = shorten(f"s3://{bucket}/{key}", SHOWN_CHARS)
        if url is None:
            raise BadRequest("an S3 notification, but DATA_URL is not an s3:// URL", object=shown)
        root_bucket, _, root = url.removeprefix("s3://").partition("/")
        directory = key.rpartition("/")[0]
        if bucket != root_bucket or not (directory + "/").startswith(root):
            raise BadRequest("the object is not below DATA_URL", object=shown)
        return cls(data=directory[len(root):] or None)


def _policy(value: object) -> str | None:
    if value is None or value == "":
        return None
    if value not in POLICIES:
        raise BadRequest(f"policy must be one of {', '.join(POLICIES)} (or absent), not {_shown(value)}")
    return str(value)


def _data(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"data must be a string, a directory below the data root (or absent), not {_shown(value)}")
    return value


def _force(value: object) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in FORCE_VALUES:
        return FORCE_VALUES[value.lower()]
    raise BadRequest(f"force must be true or false (also 1/0, yes/no; or absent), not {_shown(value)}")


def _shown(value: object) -> str:
    """A caller's value as an error repeats it: a string quoted, JSON's other values as JSON, cut short."""
    if isinstance(value, str):
        return repr(shorten(value, SHOWN_CHARS))
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return f"{shorten(json.dumps(value, default=str), SHOWN_CHARS)} ({kind.get(type(value), type(value).__name__)})"


def resolve_data_dir(settings: Settings, data: str | None) -> Path:
    """The directory to read: the default, or ``data`` relative to the root; nothing outside the root.
    Errors name ``data`` as given, never the root."""
    if not data:
        return settings.data_dir
    shown = shorten(data, SHOWN_CHARS)
    candidate = Path(data)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise BadRequest("data must be a relative path below the data root, without '..'", data=shown)
    try:
        resolved = (settings.data_root / candidate).resolve()  # follows symlinks
        outside = not resolved.is_relative_to(settings.data_root)
        is_dir = not outside and resolved.is_dir()
    except (OSError, ValueError, RuntimeError) as exc:  # name too long, a NUL byte, a symlink loop
        raise BadRequest(f"data is not a usable directory name: {_path_problem(exc)}", data=shown) from None
    if outside:
        raise BadRequest("data leads outside the data root", data=shown)
    if not is_dir:
        raise BadRequest("data is not a directory below the data root", data=shown)
    return resolved


@dataclasses.dataclass(frozen=True)
class Location:
    """Where one run reads: the source, how the ledger shows it, and (S3) the manifest's directory key."""

    source: Source
    where: str
    manifest_prefix: str | None = None  # None: a local directory, which needs no manifest


def resolve_location(settings: Settings, data: str | None) -> Location:
    """The source to read: DATA_URL's (or DATA_DIR's), or ``data`` below it; nothing outside it, and
    no other bucket.  Errors name ``data`` as given, never the root."""
    if settings.data_url is None:
        directory = resolve_data_dir(settings, data)
        return Location(LocalSource(directory), str(directory))
    url = settings.data_url
    if data:
        shown = shorten(data, SHOWN_CHARS)
        parts = data.strip("/").split("/")
        if data.startswith("/") or "://" in data or ".." in parts or "\0" in data:
            raise BadRequest("data must be a relative key prefix below DATA_URL, without '..' or another bucket",
                             data=shown)
        url = f"{url}{'/'.join(p for p in parts if p)}/"
    source = s3_source(url, endpoint=settings.s3_endpoint, region=settings.s3_region)
    return Location(source, url, manifest_prefix=url.removeprefix("s3://").partition("/")[2].rstrip("/"))


def fingerprint(policy: str, inputs: dict[str, dict[str, Any] | None]) -> str:
    """What decides whether a trigger loads: each input's key and identity (size and mtime_ns, or size
    and ETag), the policy and the contract's version; never the data itself (nothing is read for it)."""
    made_of = {"contract": CONTRACT_VERSION, "policy": policy,
               "inputs": {name: None if found is None else [found["key"], found["identity"]]
                          for name, found in sorted(inputs.items())}}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()


def _path_problem(exc: Exception) -> str:
    """Why a path could not be used, without the path (OSError's and RuntimeError's texts hold it)."""
    if isinstance(exc, OSError):
        return (exc.strerror or type(exc).__name__).lower()
    if isinstance(exc, RuntimeError):
        return "a symbolic link loop"
    return str(exc)  # ValueError: 'embedded null byte'


class Service:
    """What the API and the Lambda entry ask of the job, without knowing HTTP: one per process.  It
    holds the settings (read once) and the store (which keeps its connection for warm invocations);
    each trigger that becomes a run prints its metrics (``etl_core.metrics``) to ``emit``."""

    def __init__(self, settings: Settings, store: Store | None = None, *,
                 emit: metrics.Emit = metrics.print_line) -> None:
        self.settings = settings
        self.store = store or _postgres(settings)
        self.emit = emit

    def trigger(self, trigger: Trigger) -> dict[str, Any]:
        """Run the job; one metrics document for the run, failed runs included (also those that never
        reached the database), but not for a refused trigger (bad request, another run in progress)."""
        started = time.perf_counter()
        try:
            summary = run(self.settings, trigger, store=self.store)
        except (BadRequest, RunInProgress):
            raise
        except Exception as exc:
            error = exc if isinstance(exc, EtlError) else InternalError.of(exc)
            self._metrics(status="failed", run_id=error.details.get("run_id"), files=error.details.get("files"),
                          seconds={"total": round(time.perf_counter() - started, 3)}, error_code=error.code)
            raise
        self._metrics(status=summary["status"], run_id=summary.get("run_id"), files=summary.get("files"),
                      users_written=summary.get("users_written"), seconds=summary.get("seconds"))
        return summary

    def _metrics(self, **run: Any) -> None:
        metrics.emit(metrics.run_document(self.settings.metrics, **run), self.emit)

    def run_status(self, run_id: int) -> dict[str, Any]:
        found = self.store.get_run(run_id)
        if found is None:
            raise RunNotFound(f"there is no run {run_id}", run_id=run_id)
        return found

    def runs(self, *, limit: int, status: str | None = None, before: int | None = None) -> dict[str, Any]:
        """A page of run records, newest first; ``next_before`` continues it (None: no more)."""
        found = self.store.list_runs(limit=limit + 1, status=status, before=before)
        page = found[:limit]
        return {"runs": page, "next_before": page[-1]["run_id"] if len(found) > limit else None}

    def rejects(self, run_id: int, *, limit: int, after: int = 0) -> dict[str, Any]:
        """A page of a run's rejects in stored order; ``next_after`` continues it (None: no more)."""
        self.run_status(run_id)  # RunNotFound
        found = self.store.rejects(run_id, limit=limit + 1, after=after, max_chars=REPORTED_CHARS)
        page = found[:limit]
        return {"run_id": run_id, "rejects": page, "next_after": page[-1]["seq"] if len(found) > limit else None}

    def health(self) -> dict[str, Any]:
        """The database answers, and the last run that confirmed the features and its age; past
        ``health_max_age`` seconds (when set), FeaturesStale."""
        found = self.store.health()
        last = self.store.last_confirmed()
        limit = self.settings.health_max_age
        if limit is not None and (last is None or last["age_seconds"] > limit):
            what = ("no run has confirmed the features yet" if last is None else
                    f"the last run that confirmed the features (run {last['run_id']}) finished "
                    f"{last['age_seconds']:.0f} s ago")
            raise FeaturesStale(f"{what}; at most {limit:g} s are allowed (ETL_HEALTH_MAX_AGE_SECONDS)",
                                last_confirmed=last, max_age_seconds=limit)
        return {**found, "last_confirmed": last, "max_age_seconds": limit}

    def close(self) -> None:
        self.store.close()


def run(settings: Settings, trigger: Trigger, *, store: Store | None = None) -> dict[str, Any]:
    """Run the job once; returns the summary, raises an EtlError (recorded in the runs table)."""
    policy = trigger.policy or settings.policy
    if policy not in POLICIES:
        raise BadRequest(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    location = resolve_location(settings, trigger.data)
    own = store is None
    store = store or _postgres(settings)
    memory.settle()  # the modules a run needs are imported by now
    try:
        with store.run(policy=policy, source=location.where) as ledger, logs.bound(run_id=ledger.run_id):
            try:
                return _run(settings, ledger, policy, location, force=trigger.force)
            except EtlError as exc:
                exc.details.setdefault("run_id", ledger.run_id)  # the answer names the run it recorded
                _failed(exc)
                ledger.fail(exc.to_dict())
                raise
            except Exception as exc:  # a bug of ours: still recorded, and still an answer with a body
                error = InternalError.of(exc, run_id=ledger.run_id)
                _failed(error)
                ledger.fail(error.to_dict())
                raise error from exc
    finally:
        if own:
            store.close()


def _failed(error: EtlError) -> None:
    """The run's last line: why it failed (the answer's own line, and a bug's traceback, come from the edge)."""
    level = logging.ERROR if isinstance(error, InternalError) else logging.WARNING
    log_event("run_failed", level=level, code=error.code, error_type=type(error).__name__, reason=error.message)


def _postgres(settings: Settings) -> Store:
    from etl_core.store.postgres import PostgresStore  # not imported by a run against another store

    return PostgresStore(settings.db, settings.schema)


@dataclasses.dataclass(frozen=True)
class _Extracted:
    """What extract made of the three files: the accepted users and compounds, the experiments'
    counts, and every file's result (rows read, accepted, rejected, violations)."""

    users: pa.Table
    compounds: pa.Table  # sorted by compound_id: the order ties are listed in
    counts: counting.Counts
    results: tuple[extract.FileResult, ...]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return {r.contract.filename: {
            "rows_read": r.rows_read, "rows_accepted": r.rows_accepted, "rows_rejected": r.rows_rejected,
            "extra_columns": list(r.extra_columns)} for r in self.results}

    @property
    def header_only(self) -> list[str]:
        """The users or compounds file that has a header and no data row (``no_rows``), if any."""
        return [r.contract.filename for r in self.results if r.contract in (USERS, COMPOUNDS) and r.rows_read == 0]

    @property
    def violations(self) -> pa.Table:
        """Every violation, with a ``no_rows`` one for a users or compounds file that has only a header."""
        header_only = [violation_rows(name, Rule.NO_ROWS, [None]) for name in self.header_only]
        return pa.concat_tables([r.violations for r in self.results] + header_only)

    @property
    def volume(self) -> Volume:
        experiments = next(r for r in self.results if r.contract is EXPERIMENTS)
        return Volume(users=self.users.num_rows, experiments=experiments.rows_accepted)


class _Stopwatch:
    """Seconds spent waiting on an iterator's items (the COPY waiting for the features)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timed(self, items: Generator[T, None, None]) -> Generator[T, None, None]:
        """The items of ``items``, counting the time each took to come; closing this closes ``items``."""
        try:
            while True:
                start = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self.seconds += time.perf_counter() - start
                yield item
        finally:
            items.close()


def _run(settings: Settings, ledger: StoreRun, policy: str, location: Location, *, force: bool) -> dict[str, Any]:
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    pool = memory.use(settings.memory_pool)  # before the first buffer of the run is made
    log_event("run_started", run_id=ledger.run_id, policy=policy, data_dir=location.where, memory_pool=pool)
    with _phase(seconds, "extract"):
        # the input's identity is decided before a byte of it is read, and every read must see it
        source = Pinned(location.source)
        found, inputs = _identify(ledger, location, source, policy)
        last = ledger.last_loaded
        if not force and last is not None and last.fingerprint == found:
            return _unchanged(ledger, policy, last.run_id, found, inputs, started)
        extracted = _extract(settings, source, ledger.run_id)
    violations = extracted.violations
    status = _verdict(settings, extracted, violations, policy, ledger.run_id, force=force)
    written, waited = _publish(settings, ledger, extracted, violations, status, force=force,
                               seconds=seconds, started=started)
    seconds["transform"] = round(waited, 3)
    seconds["total"] = round(time.perf_counter() - started, 3)
    # the load phase's time too; the run itself is committed already, so this may not fail it
    _after_commit(ledger.record_seconds, seconds, run_id=ledger.run_id, what="record the load time")
    files = extracted.files
    log_event("run_finished", run_id=ledger.run_id, status=status, users_written=written, seconds=seconds,
              files=files, rejects=violations.num_rows)
    return {
        "run_id": ledger.run_id, "status": status, "policy": policy, "files": files,
        "users_written": written, "violations": _report(violations, settings.max_reported),
        "seconds": seconds, "same_as": None, "fingerprint": found, "inputs": inputs,
    }


def _identify(ledger: StoreRun, location: Location, source: Pinned, policy: str) -> tuple[str, dict[str, Any]]:
    """The input's fingerprint and each file's identity, recorded in the run before anything is read;
    an S3 set's objects must be the ones its manifest names."""
    expected = _manifest(location)
    inputs = _describe(source)
    found = fingerprint(policy, inputs)
    ledger.record_inputs(found, inputs)
    if expected is not None:
        manifest.check_etags(expected, {name: item for name, item in inputs.items() if item is not None})
    return found, inputs


def _extract(settings: Settings, source: Pinned, run_id: int) -> _Extracted:
    _check_headers(source)
    size = source.size(EXPERIMENTS.filename)
    # a small experiments file is parsed on Arrow's pool while the users and compounds, which only its
    # checks need, are read on this thread
    early = extract.read_early(source, EXPERIMENTS, size=size, block_size=settings.block_size)
    try:
        users_sink = extract.Collector(extract.output_schema(USERS))
        compounds_sink = extract.Collector(extract.output_schema(COMPOUNDS))
        users = _read(settings, source, USERS, users_sink, run_id, threads=early is None)
        compounds = _read(settings, source, COMPOUNDS, compounds_sink, run_id, threads=early is None)
        users_table = users_sink.table()
        compounds_table = compounds_sink.table().sort_by("compound_id")
        refs = extract.References.of(users_table["user_id"].combine_chunks(),
                                     compounds_table["compound_id"].combine_chunks())
        # a file of one block is one batch: counting it on a thread would overlap with nothing
        threaded = size > settings.block_size
        with counting.ExperimentCounter(refs.users.keys, refs.compounds.keys, threaded=threaded) as counter:
            experiments = _read(settings, source, EXPERIMENTS, counter, run_id, refs=refs, early=early)
            counts = counter.result()  # the counting thread finishes with the file
    finally:
        if early is not None:
            early.close()
    return _Extracted(users_table, compounds_table, counts, (users, compounds, experiments))


def _verdict(settings: Settings, extracted: _Extracted, violations: pa.Table, policy: str, run_id: int, *,
             force: bool) -> str:
    """The run's status if it may publish; else the ContractViolation or LoadRefused that stops it."""
    def refuse(message: str) -> ContractViolation:
        return ContractViolation(message, run_id=run_id, files=extracted.files,
                                 violations=_report(violations, settings.max_reported))

    if violations.num_rows and policy == "strict":
        raise refuse(f"the input breaks the data contract in {violations.num_rows} place(s); nothing was loaded")
    if extracted.header_only:  # a file's problem: it fails the run in quarantine too
        raise refuse(f"{', '.join(extracted.header_only)} has no data row; nothing was loaded")
    if extracted.users.num_rows == 0:
        raise refuse("no user row was accepted; nothing was loaded")
    if not force:
        guard.check_rejects(rows_read=sum(r.rows_read for r in extracted.results),
                            rows_rejected=sum(r.rows_rejected for r in extracted.results),
                            max_share=settings.max_rejected_share)
    return "partial" if violations.num_rows else "succeeded"


def _publish(settings: Settings, ledger: StoreRun, extracted: _Extracted, violations: pa.Table, status: str, *,
             force: bool, seconds: dict[str, float], started: float) -> tuple[int, float]:
    """Replace the features and finish the run in one transaction; the rows written, and the seconds the
    COPY waited for the features (they stream into it bucket by bucket: the server parses while we
    compute, so that 'transform' time is part of 'load')."""
    stopwatch = _Stopwatch()
    features = stopwatch.timed(counting.feature_batches(extracted.users, extracted.compounds, extracted.counts))
    try:
        with _phase(seconds, "load"):
            with ledger.publishing() as publication:
                if force:  # no guard: nothing to count (a scan of the whole table)
                    publication.lock()  # against new foreign keys, as volume() would
                else:
                    guard.check_volume(publication.volume(), extracted.volume, min_share=settings.min_share)
                written = publication.replace_features(features)
                publication.store_rejects(violations)
                publication.finish(status=status, files=extracted.files, users_written=written,
                                   seconds=dict(seconds, total=round(time.perf_counter() - started, 3)))
            _after_commit(ledger.analyze, run_id=ledger.run_id, what="analyze the features table")
    finally:
        features.close()  # a failed COPY leaves no bucket being worked out
    return written, stopwatch.seconds


def _unchanged(ledger: StoreRun, policy: str, same_as: int, found: str, inputs: dict[str, Any],
               started: float) -> dict[str, Any]:
    """The input is the one run ``same_as`` loaded: record that, and load nothing."""
    seconds = {"total": round(time.perf_counter() - started, 3)}
    ledger.unchanged(same_as=same_as, seconds=seconds)
    log_event("run_unchanged", run_id=ledger.run_id, same_as=same_as, fingerprint=found)
    return {"run_id": ledger.run_id, "status": "unchanged", "policy": policy, "files": {}, "users_written": 0,
            "violations": {"total": 0, "first": []}, "seconds": seconds, "same_as": same_as,
            "fingerprint": found, "inputs": inputs}


def _manifest(location: Location) -> dict[str, str | None] | None:
    """The manifest's ETags of an S3 set (None for a local directory, which has no manifest); a missing
    manifest is the contract's missing_file for it."""
    if location.manifest_prefix is None:
        return None
    names = [c.filename for c in FILES]
    try:
        return manifest.read(location.source, names, location.manifest_prefix)
    except SourceMissing:
        raise ContractViolation(
            f"there is no {manifest.MANIFEST} at {location.where}: a set is complete only once its manifest "
            "is written; nothing was loaded",
            violations=_report(
                violation_rows(manifest.MANIFEST, Rule.MISSING_FILE, [None], values=[manifest.MANIFEST]), 1),
        ) from None


def _describe(source: Pinned) -> dict[str, dict[str, Any] | None]:
    """Each input file's key, size and identity (None: not there, which the header check reports), pinned
    for the rest of the run."""
    described: dict[str, dict[str, Any] | None] = {}
    for name in (c.filename for c in FILES):
        try:
            described[name] = source.describe(name)
        except SourceMissing:
            described[name] = None
    return described


def _after_commit(step: Callable[..., Any], *args: Any, run_id: int, what: str) -> None:
    """A step after the run's commit: its failure is logged, never the run's."""
    try:
        step(*args)
    except Exception as exc:  # noqa: BLE001
        reason = exc.message if isinstance(exc, EtlError) else f"{type(exc).__name__}: {exc}"
        log_event("after_commit_failed", level=logging.WARNING, run_id=run_id, reason=f"could not {what}: {reason}")


def _check_headers(source: Source) -> None:
    """Every file-level problem (missing, empty, bad header) of all three files, before any row is read."""
    problems = []
    for contract in FILES:
        try:
            extract.read_header(source, contract)
        except extract.FileProblem as problem:
            problems.append(problem.table)
    if problems:
        table = pa.concat_tables(problems)
        raise ContractViolation(
            f"{len(problems)} input file(s) cannot be read under the data contract; nothing was loaded",
            violations=_report(table, len(problems)),
        )


def _read(settings: Settings, source: Source, contract: FileContract, sink: extract.Sink, run_id: int,
          refs: extract.References | None = None, early: extract.Early | None = None,
          threads: bool = True) -> extract.FileResult:
    size = source.size(contract.filename)
    last = [time.monotonic()]

    def progress(rows: int, offset: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            log_event("progress", run_id=run_id, file=contract.filename, rows=rows,
                      mb=round(offset / 1e6, 1), mb_total=round(size / 1e6, 1))

    result = extract.read_file(source, contract, sink, refs=refs, block_size=settings.block_size, progress=progress,
                               size=size, early=early, threads=threads)
    log_event("file_read", run_id=run_id, file=contract.filename, rows=result.rows_read,
              rejected=result.rows_rejected, mb=round(size / 1e6, 1))
    return result


def _report(violations: pa.Table, limit: int) -> dict[str, Any]:
    """The total and the first ``limit`` violations, each row's raw text and value cut to REPORTED_CHARS
    characters (a line may be megabytes long; an answer must stay small)."""
    first = [{**row, "raw": _cut(row["raw"]), "value": _cut(row["value"])}
             for row in violations.slice(0, limit).to_pylist()]
    return {"total": violations.num_rows, "first": first}


def _cut(text: str | None) -> str | None:
    return None if text is None else shorten(text, REPORTED_CHARS)


@contextmanager
def _phase(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = round(time.perf_counter() - start, 3)
