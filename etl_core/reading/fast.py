"""The fast path: a file read with pinned types on all cores and checked batch by batch.

Good data never leaves this path.  At any doubt (a value pyarrow's reader cannot convert, a row
with the wrong number of fields, a value that breaks a rule, a key that may occur twice) it raises
``Diagnose`` (or pyarrow's ``ArrowInvalid`` comes through), and the caller reads the file again on
the diagnostic path, which says what is wrong and where.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl_core.contract import Column, FileContract
from etl_core.reading import keys, rules
from etl_core.sources import Source


class Diagnose(Exception):
    """Raise inside the fast path: something is off, read the file again on the diagnostic path.
    ``duplicates``: the keys that occur twice, when the fast path has looked them up already."""

    def __init__(self, duplicates: pa.Array | None = None) -> None:
        super().__init__("read the file on the diagnostic path")
        self.duplicates = duplicates


# A file of at most this many bytes is read whole: into memory in one read, looked over for hex once,
# its blocks parsed on all cores at once (M's 28 MB of experiments read and checked in 0.17-0.19 s,
# streamed in 0.21-0.22 s, where the reader parses one block at a time).  The file's bytes are let go
# once parsed, and the table, about twice the file, batch by batch as it is checked.  Larger files stream.
# At the limit it costs memory: a 63 MB experiments file peaked at 327-343 MB RSS read whole, 242-250 MB
# streamed, for a run 0.03-0.09 s shorter.
WHOLE_READ_BYTES = 64 << 20


def read(source: Source, contract: FileContract, names: list[str], add: rules.Add, refs: keys.References | None,
         block_size: int, progress: Callable[[int, int], None] | None, *, size: int | None = None,
         early: Early | None = None, threads: bool = True) -> int:
    """Read the file into ``add`` batch by batch; return the number of rows read.  ``size``: the file's
    size when the caller knows it (a small file is read whole); ``early``: the file read and parsed
    already (``Early``); ``threads``: False parses on the caller's thread, leaving Arrow's pool to an
    ``Early`` read of another file."""
    rows = 0
    unique = keys.Unique()
    watched = _Watched()
    whole = size is not None and size <= WHOLE_READ_BYTES
    with contextlib.ExitStack() as opened:
        if early is not None:
            batches = early.batches(watched)
        else:
            raw = opened.enter_context(source.open(contract.filename))
            batches = _typed_batches(_checked_whole(raw, watched, size or 0) if whole else
                                     pa.TransformInputStream(raw, watched), contract, names, block_size,
                                     whole=whole, threads=threads, quotes=watched.quotes)
        for batch in batches:
            out = check(batch, contract, refs)
            if watched.hex:
                raise Diagnose
            rows += out.num_rows
            unique.add(out.column(contract.key))
            add(out)
            if progress:
                progress(rows, watched.bytes)
    if watched.hex or watched.quote_at_end:
        raise Diagnose
    # keys that only ever grow are unique, with nothing kept; keys in no order from the start were kept
    # as they passed; others take a second look at the file
    if not unique.increasing.holds:
        if unique.known:
            duplicates = unique.duplicates()
        else:
            with source.open(contract.filename) as again:
                duplicates = keys.duplicate_keys(again, contract.key, names, block_size)
        if len(duplicates):
            raise Diagnose(duplicates)
    return rows


class Early:
    """A file small enough to read whole (at most WHOLE_READ_BYTES), read and parsed on a thread of its
    own, its blocks on Arrow's pool, while the caller reads and checks the files it depends on (the
    experiments while the users and compounds are read on the caller's thread): the parse does not
    need them, only the checks do.  ``header`` gives the file's column names (it reads the header, on
    the thread: from S3 that is a request of its own).  ``batches`` hands the batches over, and
    raises what the read raised; ``close`` waits for the thread (call it whether or not they were
    taken)."""

    def __init__(self, source: Source, contract: FileContract, header: Callable[[], list[str]], block_size: int,
                 size: int) -> None:
        self._watched = _Watched()
        self._batches: list[pa.RecordBatch] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(source, contract, header, block_size, size),
                                        name="etl-early-read", daemon=True)
        self._thread.start()

    def _read(self, source: Source, contract: FileContract, header: Callable[[], list[str]], block_size: int,
              size: int) -> None:
        try:
            names = header()
            with source.open(contract.filename) as raw:
                whole = _checked_whole(raw, self._watched, size)
            self._batches = list(_typed_batches(whole, contract, names, block_size, whole=True, threads=True,
                                                quotes=self._watched.quotes))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            self._error = exc

    def batches(self, watched: _Watched) -> Iterator[pa.RecordBatch]:
        """The batches, each let go once handed on; ``watched`` gets what the read saw."""
        self._thread.join()
        # The error's traceback holds the frames it passed, the thread's (which holds this object) and
        # this one: neither may keep the error, or only the collector would free them, and the file's
        # bytes with them.
        error, self._error = self._error, None
        if error is not None:
            try:
                raise error
            finally:
                error = None
        watched.bytes, watched.hex, watched.tail = self._watched.bytes, self._watched.hex, self._watched.tail
        batches, self._batches = self._batches, []
        return _handed(batches)

    def close(self) -> None:
        self._thread.join()
        self._batches, self._error = [], None


def _handed(batches: list[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches`` in order, each let go once handed on."""
    batches.reverse()
    while batches:
        yield batches.pop()


def _typed_batches(stream: pa.NativeFile, contract: FileContract, names: list[str], block_size: int, whole: bool,
                   threads: bool, quotes: bool = True) -> Iterator[pa.RecordBatch]:
    read_options = pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=block_size, use_threads=threads)
    # A bad row raises: diagnose.  Empty lines are skipped (pyarrow's row numbers do not matter here);
    # a row of empty fields (,,,) is not skipped, and its empty id sends the file to the diagnostic path.
    # A whole file is cut into blocks at line breaks without regard to quotes, unless newlines_in_values:
    # then a quote left open runs on across the blocks, into a value (which the checks see) or into
    # pyarrow's error, where without it pyarrow 26, parsing the blocks at once, silently dropped the rows
    # from the quote to its block's end.  It costs the cut a look at every quote (users at L: 0.17 to
    # 0.21 s), so it is asked for only where the file holds one (``quotes``).  Streamed blocks are parsed
    # one after the other, each carrying an open quote into the next, and keep to it as they are.
    parse_options = pacsv.ParseOptions(ignore_empty_lines=True, newlines_in_values=whole and quotes)
    # Columns beyond the contract are read as bytes only to be looked at (_extra_shapes), never handed on.
    extra = [n for n in names if n not in contract.column_names]
    convert_options = pacsv.ConvertOptions(
        column_types={**{c.name: rules.RULES[c.kind].read_as for c in contract.columns},
                      **{n: pa.binary() for n in extra}},
        include_columns=contract.column_names + extra, strings_can_be_null=False, quoted_strings_can_be_null=False,
        null_values=[""],  # an empty field only: pyarrow's default nulls (NULL, NA, nan, ...) are values
    )
    if not whole:
        yield from pacsv.open_csv(stream, read_options=read_options, parse_options=parse_options,
                                  convert_options=convert_options)
        return
    batches = pacsv.read_csv(stream, read_options=read_options, parse_options=parse_options,
                             convert_options=convert_options).to_batches()
    del stream  # the file's bytes, parsed
    yield from _handed(batches)


def _checked_whole(raw: pa.NativeFile, watched: _Watched, size: int) -> pa.BufferReader:
    """The whole file, in memory, looked over for '0x' and '0X' once (a Python call per block costs
    more, with the reader's threads waiting for the GIL)."""
    data = raw.read(size + 1)  # one read of the size expected (a stream of unknown length grows its buffer)
    if len(data) > size:  # it has grown since: read it all (Source.check will say it changed)
        data += raw.read()
    watched.bytes = len(data)
    body = data.find(b"\n") + 1  # the header ('experiment_id' has an 'x') apart, so that memchr can skip the rest
    watched.hex = _has_hex(data[:body]) or _has_hex(data, body)
    watched.quotes = data.find(b'"') >= 0
    watched.tail = data[data.rfind(b"\n") + 1:]
    return pa.BufferReader(pa.py_buffer(data))


class _Watched:
    """A stream transform that passes the bytes on unchanged, counting them (for progress) and
    watching for '0x' and '0X': pyarrow's reader takes 0x1A for the integer 26 (so does its cast,
    which parses id lists), but the contract's ids are decimal.  A file with either anywhere, even
    in a text field, is left to the diagnostic path.  It keeps the file's last line (after its last
    LF) as well: pyarrow's reader takes a quote left open on a last line without a line break as a
    value running to the end of the file (``quote_at_end``)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.hex = False
        self.tail = b""  # the bytes after the last LF so far
        self.quotes = True  # whether the file may hold a quote after its header (set by a whole read)
        self._last = b""  # the byte before this buffer: '0' may end one buffer and 'x' start the next

    def __call__(self, buf: pa.Buffer) -> pa.Buffer:
        if buf.size and not self.hex:
            data = buf.to_pybytes()
            self.hex = _has_hex(self._last + data[:1]) or _has_hex(data)
            self._last = data[-1:]
            end = data.rfind(b"\n")
            self.tail = data[end + 1:] if end >= 0 else self.tail + data
        self.bytes += buf.size
        return buf

    @property
    def quote_at_end(self) -> bool:
        """Whether the file's last line has no line break and holds a quote (which may be left open)."""
        return b'"' in self.tail


_HEX = {b"x": re.compile(b"0x"), b"X": re.compile(b"0X")}


def _has_hex(data: bytes, start: int = 0) -> bool:
    """Whether ``data[start:]`` holds '0x' or '0X' (memchr finds a rare 'x' fast; only then look for the
    pair, from there on)."""
    for x, pair in _HEX.items():
        at = data.find(x, start)
        if at >= 0 and pair.search(data, max(at - 1, start)):
            return True
    return False


def check(batch: pa.RecordBatch, contract: FileContract, refs: keys.References | None) -> pa.RecordBatch:
    """The batch as it is handed on (text trimmed, id lists parsed); raises Diagnose if any value
    breaks a rule."""
    columns = [_column(col, batch.column(col.name), refs) for col in contract.columns]
    if batch.num_columns > len(columns):
        _extra_shapes(batch, contract)
    return pa.RecordBatch.from_arrays(columns, schema=rules.output_schema(contract))


def _column(col: Column, values: pa.Array, refs: keys.References | None) -> pa.Array:
    if values.null_count:  # an empty field that is not text
        raise Diagnose
    accepted = rules.RULES[col.kind].accept(values)
    if accepted is None:
        raise Diagnose
    if refs is not None and col.kind == "id_list" and not refs.compounds.contains_all(accepted.values):
        raise Diagnose
    if refs is not None and col.name == "user_id" and not refs.users.contains_all(accepted):
        raise Diagnose
    return accepted


def _extra_shapes(batch: pa.RecordBatch, contract: FileContract) -> None:
    """Columns beyond the contract are ignored, but pyarrow's reader may have split a row wrongly inside
    them (a quoted field after whitespace), or run a quote left open across lines: either leaves a
    quote at the start of a trimmed value, or a line break in one.  Diagnose, which reads every line
    as it stands."""
    for name in batch.schema.names:
        if name in contract.column_names:
            continue
        values = batch.column(name)
        if rules.odd_bytes(values):
            raise Diagnose
        text = rules.clean(values.view(pa.string()))  # only looked at, byte-wise: UTF-8 or not
        if len(text) and pc.any(pc.starts_with(text, '"')).as_py():
            raise Diagnose
