"""Read the three CSV files under the data contract, as streams of Arrow record batches.

Every file is read through a ``Source`` (etl_core/sources/source.py): its header (etl_core/reading/header.py), then

* the fast path (etl_core/reading/fast.py) reads it with pinned types (int64, date32, float64) on all cores
  and checks the typed batches with ``pyarrow.compute``; good data never leaves this path;
* at the first sign of trouble (a conversion error, a row with the wrong number of fields, a value
  that breaks a rule) the file is read again on the diagnostic path (etl_core/reading/diagnose.py): every
  field as bytes, on one thread so that each rejected line's number is known, and every rule checked
  as a vectorised mask.  It reports each violation with file, line, column, value and rule, and hands
  on only the rows that pass, which is what the quarantine policy loads.

Both paths check values against one table of the contract's rules (etl_core/reading/rules.py).  Keys
that only grow are unique; keys in no order from the first batches on are kept as they pass and looked
over at the end (etl_core/reading/keys.py, ``Unique``).  Either path reads the key column in a pass of
its own otherwise: the fast path when keys grew for longer and then stopped, the diagnostic path
always, unless the fast path found the duplicates already.  So a good file is read through once
(twice where its keys grew, then did not), a bad one at most three times.  Accepted rows go to a
``Sink`` batch by batch.  The fast path takes a file of at most ``fast.WHOLE_READ_BYTES`` (64 MiB)
into memory and parses it on all cores at once; a larger
one streams in blocks, so that a large experiments file is never held whole.  A small experiments
file is read and parsed early (``read_early``), on Arrow's pool, while the users and compounds that
its checks need are read on the caller's thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import pyarrow as pa

from etl_core import literals
from etl_core.contract import FileContract
from etl_core.reading import diagnose, fast
from etl_core.reading.fast import Early
from etl_core.reading.header import read_header
from etl_core.reading.keys import KeySet, References
from etl_core.reading.rules import output_schema
from etl_core.reading.violations import VIOLATION_SCHEMA, FileProblem
from etl_core.sources import Pinned, Source, translated

__all__ = [
    "VIOLATION_SCHEMA", "Collector", "Early", "FileProblem", "FileResult", "KeySet", "References", "Sink",
    "output_schema", "read_early", "read_file", "read_header",
]


class Sink(Protocol):
    """Where accepted rows go: a collector for small files, the aggregator for experiments."""

    def add(self, batch: pa.RecordBatch) -> None: ...

    def reset(self) -> None: ...


class Collector:
    """A sink that keeps every accepted batch, for the files that are needed whole."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.batches: list[pa.RecordBatch] = []

    def add(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def reset(self) -> None:
        self.batches.clear()

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, schema=self.schema)


@dataclasses.dataclass
class FileResult:
    """What reading one file gave: counts, and every violation as an Arrow table."""

    contract: FileContract
    rows_read: int = 0
    rows_rejected: int = 0
    extra_columns: tuple[str, ...] = ()
    violations: pa.Table = dataclasses.field(default_factory=lambda: literals.empty_table(VIOLATION_SCHEMA))

    @property
    def rows_accepted(self) -> int:
        return self.rows_read - self.rows_rejected


def read_file(
    source: Source,
    contract: FileContract,
    sink: Sink,
    *,
    refs: References | None = None,
    block_size: int = 1 << 20,
    progress: Callable[[int, int], None] | None = None,
    size: int | None = None,
    early: Early | None = None,
    threads: bool = True,
) -> FileResult:
    """Read one file of ``source`` into ``sink``; return its counts and violations (never raises for
    bad rows).  Every read of the file sees the version the first one saw, or SourceChanged is raised.
    ``size``: the file's size, where the caller knows it (the fast path reads a small file whole);
    ``early``: this file's ``read_early``; ``threads``: False while another file's early read has
    Arrow's pool (this one is then parsed on the caller's thread)."""
    source = source if isinstance(source, Pinned) else Pinned(source)  # a run's pins hold across its files
    names, extra = read_header(source, contract)
    result = FileResult(contract, extra_columns=extra)
    with translated(contract.filename):
        try:
            result.rows_read = fast.read(source, contract, names, sink.add, refs, block_size, progress, size=size,
                                         early=early, threads=threads)
        except (fast.Diagnose, pa.ArrowInvalid) as doubt:
            duplicates = doubt.duplicates if isinstance(doubt, fast.Diagnose) else None
            outcome = diagnosed(source, contract, names, sink, refs, block_size, progress, duplicates)
            result.rows_read, result.rows_rejected = outcome.rows_read, outcome.rows_rejected
            result.violations = outcome.violations
    source.check(contract.filename)
    return result


# pyarrow's reader needs each row within one block: a file with a longer line is read again with larger
# blocks, up to this size (a line longer still fails the run as a bug of ours would: docs/contract.md)
MAX_BLOCK_SIZE = 256 << 20


def diagnosed(source: Source, contract: FileContract, names: list[str], sink: Sink, refs: References | None,
               block_size: int, progress: Callable[[int, int], None] | None, duplicates: pa.Array | None
               ) -> diagnose.Outcome:
    """The diagnostic read of the file into ``sink`` (emptied first), with blocks large enough for its
    longest line."""
    while True:
        sink.reset()
        try:
            return diagnose.read(source, contract, names, sink.add, refs, block_size, progress, duplicates)
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc) or block_size >= MAX_BLOCK_SIZE:
                raise
            block_size = min(block_size * 16, MAX_BLOCK_SIZE)


def read_early(source: Pinned, contract: FileContract, *, size: int, block_size: int) -> Early | None:
    """Start reading and parsing ``contract``'s file on a thread of its own, if it is small enough to be
    read whole (else None): hand it to ``read_file`` as ``early`` once the files it is checked against
    are read, and close it in any case.  Its header must have been checked."""
    if size > fast.WHOLE_READ_BYTES:
        return None
    return Early(source, contract, lambda: read_header(source, contract)[0], block_size, size)
