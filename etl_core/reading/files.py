"""Reading a run's three files: every header first (all file-level problems at once), then the users
and the compounds, then the experiments, counted as they stream (``counting``) against the accepted
users and compounds."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pyarrow as pa

from etl_core import capacity, features
from etl_core.config import Settings
from etl_core.contract import COMPOUNDS, EXPERIMENTS, FILES, USERS, FileContract, Rule
from etl_core.errors import ContractViolation
from etl_core.guard import Volume
from etl_core.logs import log_event
from etl_core.reading import extract
from etl_core.reading.violations import report
from etl_core.reading.violations import rows as violation_rows
from etl_core.sources import Pinned, Source

PROGRESS_EVERY = 5.0  # seconds between progress lines of one file


@dataclasses.dataclass(frozen=True)
class Extracted:
    """What extract made of the three files: the accepted users and compounds, the experiments'
    counts, and every file's result (rows read, accepted, rejected, violations)."""

    users: pa.Table
    compounds: pa.Table  # sorted by compound_id: the order ties are listed in
    counts: features.Counts
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


def read_all(settings: Settings, source: Pinned, run_id: int, watch: capacity.Watch | None = None) -> Extracted:
    """The three files read under the contract: accepted users and compounds, the experiments' counts,
    each file's result; ContractViolation for file-level problems (rows' problems are in the results).
    With a ``watch``, InputTooLarge before a row is read when the files' sizes say the run would not fit
    its memory, or as soon as the memory it holds passes the watch's share of it."""
    check_headers(source)
    size = source.size(EXPERIMENTS.filename)
    if watch is not None:
        needed = capacity.check_fits(experiments_bytes=size, users_bytes=source.size(USERS.filename),
                                     limit=watch.limit)
        log_event("capacity", run_id=run_id, estimated_mb=needed >> 20, limit_mb=watch.limit >> 20)
    # a small experiments file is parsed on Arrow's pool while the users and compounds, which only its
    # checks need, are read on this thread
    early = extract.read_early(source, EXPERIMENTS, size=size, block_size=settings.block_size)
    try:
        users_sink = extract.Collector(extract.output_schema(USERS))
        compounds_sink = extract.Collector(extract.output_schema(COMPOUNDS))
        users = _read(settings, source, USERS, users_sink, run_id, threads=early is None, watch=watch)
        compounds = _read(settings, source, COMPOUNDS, compounds_sink, run_id, threads=early is None, watch=watch)
        users_table = users_sink.table()
        compounds_table = compounds_sink.table().sort_by("compound_id")
        refs = extract.References.of(users_table["user_id"].combine_chunks(),
                                     compounds_table["compound_id"].combine_chunks())
        # a file of one block is one batch: counting it on a thread would overlap with nothing
        threaded = size > settings.block_size
        # how many batches the file gives: whether the engine stages their keys (features/engine.py)
        batches = size // settings.block_size + 1
        with features.ExperimentCounter(refs.users.index, refs.compounds.index, threaded=threaded,
                                        batches=batches) as counter:
            experiments = _read(settings, source, EXPERIMENTS, counter, run_id, refs=refs, early=early, watch=watch)
            counts = counter.result()  # the counting thread finishes with the file
    finally:
        if early is not None:
            early.close()
    return Extracted(users_table, compounds_table, counts, (users, compounds, experiments))


def check_headers(source: Source) -> None:
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
            violations=report(table, len(problems)),
        )


def _read(settings: Settings, source: Source, contract: FileContract, sink: extract.Sink, run_id: int,
          refs: extract.References | None = None, early: extract.Early | None = None,
          threads: bool = True, watch: capacity.Watch | None = None) -> extract.FileResult:
    size = source.size(contract.filename)
    last = [time.monotonic()]

    def progress(rows: int, offset: int) -> None:
        if watch is not None:
            watch.check(f"after {rows:,} rows ({offset / 1e6:.0f} of {size / 1e6:.0f} MB) of {contract.filename}")
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
