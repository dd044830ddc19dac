"""Where our job spends its time: pipeline.run under cProfile (the same call as impl_ours.py).

    python bench/profile_ours.py --data bench/out/L [--top 25] [--stats bench/out/ours_L.prof]

pyarrow's kernels are C++: cProfile charges each one to the Python line that called it (for example
``pyarrow._compute.call_function`` under ``transform.tied_favourites``), which is what is wanted here.  The
CSV reader decodes on a thread pool; the main thread's wait for the next batch shows up as the
reader's ``read_next_batch``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path
from typing import Any

import _common

sys.path.insert(0, str(_common.ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--schema", default="bench_ours")
    parser.add_argument("--database-url", default=_common.DEFAULT_URL)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--stats", type=Path, help="also save the raw profile here (for snakeviz, pstats)")
    parser.add_argument("--kernels", action="store_true",
                        help="instead of cProfile: wall time of each pyarrow.compute function, by caller")
    opts = parser.parse_args()
    if opts.kernels:
        kernel_times(opts)
        return
    from etl_core import pipeline
    from etl_core.config import Settings

    settings = Settings.from_env({"DATABASE_URL": opts.database_url, "DB_SCHEMA": opts.schema,
                                  "DATA_DIR": str(opts.data)})
    profiler = cProfile.Profile()
    profiler.enable()
    summary = pipeline.run(settings, pipeline.Trigger(force=True))
    profiler.disable()
    print("phases (s):", summary["seconds"])
    if opts.stats:
        profiler.dump_stats(str(opts.stats))
    sections = [
        ("tottime", f"top {opts.top} by own time", lambda st: st.print_stats(opts.top)),
        ("cumulative", f"etl_core functions by cumulative time (top {opts.top})",
         lambda st: st.print_stats(r"etl_core", opts.top)),
        ("tottime", "which etl_core lines call the hottest pyarrow entry points",
         lambda st: st.print_callers(r"_group_by|_perform_join|compute.py:\d+\(wrapper\)|\(take\)|\(cast\)", 8)),
    ]
    for order, title, show in sections:
        text = io.StringIO()
        show(pstats.Stats(profiler, stream=text).sort_stats(order))
        body = text.getvalue()
        print(f"\n==== {title} ====")
        print(body[body.index("   ncalls") if "   ncalls" in body else 0:].strip("\n"))


def kernel_times(opts: argparse.Namespace) -> None:
    """Wrap every public function of pyarrow.compute (etl_core calls them as ``pc.name``), run the job,
    and print seconds per (function, calling etl_core function and line)."""
    import collections
    import time

    import pyarrow.compute as pc

    from etl_core import pipeline
    from etl_core.config import Settings

    spent: collections.Counter[tuple[str, str]] = collections.Counter()
    calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            frame = sys._getframe(1)
            where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}({frame.f_code.co_name})"
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name, where] += time.perf_counter() - start
                calls[name, where] += 1
        return wrapper

    for name in dir(pc):
        fn = getattr(pc, name)
        if not name.startswith("_") and callable(fn) and not isinstance(fn, type):
            setattr(pc, name, timed(name, fn))
    settings = Settings.from_env({"DATABASE_URL": opts.database_url, "DB_SCHEMA": opts.schema,
                                  "DATA_DIR": str(opts.data)})
    summary = pipeline.run(settings, pipeline.Trigger(force=True))
    print("phases (s):", summary["seconds"])
    print(f"\n==== pyarrow.compute functions by wall time (top {opts.top}) ====")
    print(f"{'seconds':>8} {'calls':>6}  function  <-  caller")
    for (name, where), seconds in spent.most_common(opts.top):
        print(f"{seconds:8.3f} {calls[name, where]:6d}  {name}  <-  {where}")


if __name__ == "__main__":
    with _common.exclusive():
        main()
