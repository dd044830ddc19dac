"""Which of a load's rows differ from the last load's, by their digests (``etl_core.features.Digester``
makes them): the rows a reload sends the database, and the users it no longer has.  Pure: Arrow
arrays in and out, ``pyarrow.compute`` only, no threads, no I/O."""

from __future__ import annotations

import dataclasses
from bisect import bisect_right
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from etl_core import literals


@dataclasses.dataclass
class Changes:
    """One batch's comparison with the last load: which of its rows to send (added or changed), and the
    users of the last load that the new rows skipped (removed)."""

    send: pa.Array  # boolean, one per row of the batch
    new: pa.Array  # boolean, one per row of the batch: the user is not in the last load (added)
    removed: pa.Array  # user ids, ascending
    added: int
    changed: int


class Previous:
    """The last load's users (ascending ids) and their digests, compared batch by batch with a load's
    rows, which come by ascending user id (the engine's buckets, in order)."""

    def __init__(self, user_ids: pa.Array, digests: pa.Array) -> None:
        self._ids = user_ids
        self._digests = digests
        self._ids_view: Sequence[int] = memoryview(user_ids.buffers()[1]).cast("q")[
            user_ids.offset:user_ids.offset + len(user_ids)]
        self._next = 0  # the first of the last load's users not compared yet
        self._last_id: int | None = None

    def compare(self, user_ids: pa.Array, digests: pa.Array) -> Changes:
        """The batch's rows (``user_ids`` ascending, after every earlier batch's) against the last load."""
        n = len(user_ids)
        if not n:
            return Changes(literals.empty(pa.bool_()), literals.empty(pa.bool_()), literals.empty(pa.int64()), 0, 0)
        first, last = user_ids[0].as_py(), user_ids[n - 1].as_py()
        if (self._last_id is not None and first <= self._last_id) or (
                n > 1 and not pc.all(pc.greater(user_ids.slice(1), user_ids.slice(0, n - 1))).as_py()):
            raise ValueError("a load's rows must come by strictly ascending user id")
        self._last_id = last
        end = bisect_right(self._ids_view, last, self._next)
        old_ids = self._ids.slice(self._next, end - self._next)
        old_digests = self._digests.slice(self._next, end - self._next)
        self._next = end
        if len(old_ids) == n and pc.all(pc.equal(old_ids, user_ids)).as_py():  # the same users: row by row
            differs = pc.not_equal(old_digests, digests)
            return Changes(differs, literals.repeat(False, pa.bool_(), n), literals.empty(pa.int64()), 0,
                           differs.true_count)
        at = pc.index_in(user_ids, value_set=old_ids)
        known = at.is_valid()
        differs = pc.not_equal(pc.take(old_digests, at), digests)
        send = pc.or_kleene(pc.invert(known), differs)  # unknown: added; known: the digest differs
        added = len(user_ids) - known.true_count
        changed = pc.sum(pc.fill_null(differs, False)).as_py() or 0
        removed = pc.filter(old_ids, pc.invert(pc.is_in(old_ids, value_set=user_ids)))
        return Changes(pc.fill_null(send, True), pc.invert(known), removed, added, changed)

    def afresh(self) -> Previous:
        """The same users and digests, compared from the first again (an estimate's own cursor)."""
        return Previous(self._ids, self._digests)

    def rest(self) -> pa.Array:
        """The last load's users after every batch compared: all removed."""
        rest = self._ids.slice(self._next)
        self._next = len(self._ids)
        return rest


def digest_table(user_ids: Sequence[pa.Array], digests: Sequence[pa.Array]) -> pa.Table:
    """A load's digests as one table (user_id ascending, digest), to store."""
    return pa.table({"user_id": pa.chunked_array(user_ids, pa.int64()),
                     "digest": pa.chunked_array(digests, pa.uint64())})


def share_differing(previous: Previous, user_ids: Sequence[pa.Array], digests: Sequence[pa.Array]) -> float:
    """Of the first batches of a load (``user_ids`` ascending, their ``digests``) and the last load's users
    among them, the share that differ: added, changed or removed (0 where there are none)."""
    probe = previous.afresh()
    differing = seen = 0
    for ids, found_digests in zip(user_ids, digests, strict=True):
        found = probe.compare(ids, found_digests)
        differing += found.added + found.changed + len(found.removed)
        seen += len(ids) + len(found.removed)
    return differing / seen if seen else 0.0
