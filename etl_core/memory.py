"""Which allocator Arrow's buffers come from: one process-wide choice, made by the run from its settings.

pyarrow's wheels default to mimalloc.  On Linux with transparent huge pages in ``madvise`` mode
(Debian's default, and this project's test machine) mimalloc asks for huge pages, and every first
touch of one makes the kernel zero 2 MiB: up to a third of the job's CPU at M went to
``clear_page_erms``.  jemalloc, also in the wheels, does not: measured whole-process (bench/README.md,
round five) M 0.68 s against 0.70 s and 169 MB against 223 MB, L 4.05 s against 4.34 s and 431 MB
against 492 MB, 4L as fast in 1.00 GB against 1.09 GB.

Arrow reads ``ARROW_DEFAULT_MEMORY_POOL`` itself when it starts; the settings carry the same variable
(``jemalloc`` where it is unset), so a choice made there is kept, and a build without jemalloc keeps
Arrow's own default.
"""

from __future__ import annotations

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
