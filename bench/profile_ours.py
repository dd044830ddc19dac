"""Where our job spends its time: pipeline.run under cProfile (the same call as impl_ours.py).

    python bench/profile_ours.py --data bench/out/L [--top 25] [--stats bench/out/ours_L.prof]

pyarrow's kernels are C++: cProfile charges each one to the Python line that called it (for example
``pyarrow._compute.call_function`` under ``transform._compact``), which is what is wanted here.  The
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

import _common

sys.path.insert(0, str(_common.ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--schema", default="bench_ours")
    parser.add_argument("--database-url", default=_common.DEFAULT_URL)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--stats", type=Path, help="also save the raw profile here (for snakeviz, pstats)")
    opts = parser.parse_args()
    from etl_core import pipeline
    from etl_core.config import Settings

    settings = Settings.from_env({"DATABASE_URL": opts.database_url, "DB_SCHEMA": opts.schema,
                                  "DATA_DIR": str(opts.data)})
    profiler = cProfile.Profile()
    profiler.enable()
    summary = pipeline.run(settings, pipeline.Trigger())
    profiler.disable()
    print("phases (s):", summary["seconds"])
    if opts.stats:
        profiler.dump_stats(str(opts.stats))
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats(order).print_stats(opts.top)
        print(f"\n==== top {opts.top} by {order} ====")
        print(text.getvalue().split("\n", 6)[-1].strip("\n"))  # without pstats' preamble


if __name__ == "__main__":
    main()
