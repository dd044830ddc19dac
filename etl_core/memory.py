"""The process's memory: which allocator Arrow's buffers come from, and what Python's collector walks.
Both are process-wide, set once by the process's bootstrap (``service.start``) before its first run,
never by a run itself.

**Arrow's allocator.**

pyarrow's wheels default to mimalloc.  On Linux with transparent huge pages in ``madvise`` mode
(Debian's default, and this project's test machine) mimalloc asks for huge pages, and every first
touch of one makes the kernel zero 2 MiB: up to a third of the job's CPU at M went to
``clear_page_erms``.  jemalloc, also in the wheels, does not: measured whole-process (bench/README.md,
round five) M 0.68 s against 0.70 s and 169 MB against 223 MB, L 4.05 s against 4.34 s and 431 MB
against 492 MB, 4L as fast in 1.00 GB against 1.09 GB.

Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` itself when it starts; the settings carry the same variable
(``jemalloc`` where it is unset), so a choice made there is kept, and a build without jemalloc keeps
Arrow's own default.

**The collector.**  The imports leave some 34,000 objects that live as long as the process.  Python's
cyclic collector walks all of them in every full collection, and at exit, where it runs several
times while the interpreter takes itself down, that took 40 ms of a 0.23 s run on the challenge's
data.  ``settle`` moves what is alive at the first run's start to the collector's permanent
generation, which no collection walks (``gc.freeze``): the exit took 13-20 ms, the whole process
0.20 s (round five).  What runs make afterwards is collected as before.  Frozen garbage would never
be freed, so the young generations are collected first (under 1 ms; a full collection, 10 ms, would
take back much of the gain): what a process made and dropped before its first run (a ``/health``
answered first, say) is not kept, unless it had grown old enough to be in the oldest generation.
"""

from __future__ import annotations

import gc

import pyarrow as pa

from etl_core.config import MEMORY_POOLS


def use(name: str) -> str:
    """Make ``name`` (one of MEMORY_POOLS) Arrow's default pool; the name of the pool in use afterwards
    (Arrow's own default when this build lacks ``name``).  Buffers made before keep their own pool."""
    if name not in MEMORY_POOLS:
        raise ValueError(f"no such Arrow memory pool: {name!r}")
    try:
        pool = getattr(pa, f"{name}_memory_pool")()
    except NotImplementedError:  # pyarrow built without this allocator
        return str(pa.default_memory_pool().backend_name)
    if pa.default_memory_pool().backend_name != pool.backend_name:
        pa.set_memory_pool(pool)
    return str(pool.backend_name)


_settled = False


def settle() -> None:
    """Once per process, after its imports: what is alive now is never walked by the collector again."""
    global _settled
    if not _settled:
        _settled = True
        gc.collect(1)  # the young generations: what may be garbage now
        gc.freeze()
