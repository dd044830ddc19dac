"""Keys: each file's key must be unique, and experiments must point to accepted users and compounds."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from etl_core import literals
from etl_core.features import TABLE_SPREAD, IdIndex
from etl_core.reading import lines, rules


class KeySet:
    """The accepted keys of one file, with a membership test for whole arrays in time that follows the
    array (``features.IdIndex``: built once, not a hash table of every key per batch)."""

    def __init__(self, keys: pa.Array) -> None:
        self.index = IdIndex(keys)  # the keys are unique

    def contains_all(self, values: pa.Array) -> bool:
        """Whether every value (none null) is one of the keys."""
        return self.index.contains_all(values)

    def missing(self, values: pa.Array) -> pa.Array:
        """Per value: True where it is not null and not one of the keys."""
        return self.index.missing(values)


@dataclasses.dataclass(frozen=True)
class References:
    """The accepted keys of users.csv and compounds.csv, which experiments must point to."""

    users: KeySet
    compounds: KeySet

    @classmethod
    def of(cls, user_ids: pa.Array, compound_ids: pa.Array) -> References:
        return cls(KeySet(user_ids), KeySet(compound_ids))


class Increasing:
    """Whether every key so far is greater than the one before it (across batches too)."""

    def __init__(self) -> None:
        self.holds = True
        self._last: int | None = None

    def add(self, keys: pa.Array) -> None:
        if not self.holds or len(keys) == 0:
            return
        first = keys[0].as_py()
        if self._last is not None and first <= self._last:
            self.holds = False
        elif len(keys) > 1 and not pc.all(pc.less(keys[:-1], keys[1:])).as_py():
            self.holds = False
        self._last = keys[-1].as_py()


# A file whose keys stop growing within its first EARLY_BATCHES batches (an export in no particular
# order) keeps its keys as they pass, 8 bytes each, and has them looked over once at the end; a file whose
# keys grew for longer keeps nothing and, should they stop growing later, has its key column read again
# (``duplicate_keys``).  A shuffled L took 9.7 s read twice, against 4.9 s in order (round eight).
EARLY_BATCHES = 4


class Unique:
    """Whether a file's keys are unique, as far as the batches that pass can tell: ``known`` where they
    only grew, or where they stopped growing early and every key was kept; ``duplicates`` then says
    which repeat.  Else the caller must look the file over again."""

    def __init__(self) -> None:
        self.increasing = Increasing()
        self._kept: list[pa.Array] | None = []
        self._batches = 0

    def add(self, keys: pa.Array) -> None:
        self.increasing.add(keys)
        self._batches += 1
        if self._kept is None:
            return
        if self.increasing.holds and self._batches > EARLY_BATCHES:
            self._kept = None  # growing so far: keep nothing (if they stop growing later: a second look)
        else:
            self._kept.append(keys)

    @property
    def known(self) -> bool:
        return self.increasing.holds or self._kept is not None

    def duplicates(self) -> pa.Array:
        """The keys that occur more than once (where ``known``).  Whether any does is found first, and
        cheaply: keys within TABLE_SPREAD times their number of each other each claim a slot of a table
        (``pc.inverse_permutation``: a key claimed twice keeps one claim), and all are unique where each
        finds its own claim (10M shuffled keys: 0.15 s); sparser keys by ``pc.unique`` (1.3 s); which keys
        repeat only then, by ``pc.value_counts`` (3 s at 10M)."""
        if self.increasing.holds or not self._kept:
            return literals.empty(pa.int64())
        keys = pa.chunked_array(self._kept, pa.int64()).combine_chunks()
        n = len(keys)
        bounds = pc.min_max(keys).as_py()
        span = bounds["max"] - bounds["min"] + 1
        if span <= TABLE_SPREAD * n and n < 2**31:
            offsets = pc.subtract(keys, literals.scalar(bounds["min"], pa.int64()))
            claims = pc.inverse_permutation(offsets, max_index=span - 1, output_type=pa.int32())
            if pc.all(pc.equal(claims.take(offsets), literals.arange(n, pa.int32()))).as_py():
                return literals.empty(pa.int64())
        elif len(pc.unique(keys)) == n:
            return literals.empty(pa.int64())
        counts = pc.value_counts(keys)
        return counts.field("values").filter(pc.greater(counts.field("counts"), literals.scalar(1, pa.int64())))


def duplicate_keys(stream: pa.NativeFile, key: str, names: list[str], block_size: int) -> pa.Array:
    """The valid key values that occur more than once in ``stream`` (one pass over its key column), as
    the checks read them (trimmed).  On the diagnostic path ``stream`` is the file's lines as
    etl_core/reading/lines.py hands them on."""
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=block_size),
        parse_options=pacsv.ParseOptions(invalid_row_handler=lines.skip, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={key: pa.binary()}, include_columns=[key],
                                             strings_can_be_null=False),
    )
    found = [_ids(batch.column(0)) for batch in reader]
    counts = pc.value_counts(pa.concat_arrays(found) if found else pa.array([], pa.int64()))
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1))


def _ids(raw: pa.Array) -> pa.Array:
    """The valid ids among ``raw`` (bytes)."""
    ids, ok = rules.ID.parse(rules.clean(rules.as_text(raw)))
    return ids.filter(ok)
