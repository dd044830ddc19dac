"""CSV against binary COPY of the same features: the client's CPU to format them and the server's CPU
to parse them (the backend's utime + stime from /proc), in rounds.

    python bench/copy_formats.py --data bench/out/L [--rounds 3]

The features are worked out once (the job on the in-memory store) and kept in bench/out as Arrow IPC.
Needs the server on this host (it reads /proc/<backend pid>/stat).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import _common

sys.path.insert(0, str(_common.ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=_common.DEFAULT_URL)
    opts = parser.parse_args()
    import pg8000.native
    import pyarrow as pa

    from etl_core.features import kernels as transform
    from etl_core.store import postgres, sql

    cached = _common.ROOT / "bench" / "out" / f"features-{opts.data.name}.arrow"
    if not cached.exists():
        from etl_core import pipeline
        from etl_core.config import Settings
        from etl_core.store.memory import MemoryStore

        store = MemoryStore()
        pipeline.run(Settings.from_env({"DATA_DIR": str(opts.data)}), pipeline.Trigger(force=True), store=store)
        assert store.features is not None
        features = store.features.select(transform.FEATURES_SCHEMA.names).cast(transform.FEATURES_SCHEMA)
        with pa.OSFile(str(cached), "wb") as f, pa.ipc.new_file(f, transform.FEATURES_SCHEMA) as writer:
            writer.write_table(features)
    batches = pa.ipc.open_file(str(cached)).read_all().to_batches(max_chunksize=postgres.ROWS_PER_CHUNK)
    conn = pg8000.native.Connection(**_common.pg_params(opts.database_url), application_name="bench-copy-formats")
    [[pid]] = conn.run("SELECT pg_backend_pid()")
    conn.run(sql.features_table("pg_temp", "copy_formats"))

    def server_cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    for _ in range(opts.rounds):
        for binary in (False, True):
            conn.run("TRUNCATE pg_temp.copy_formats")
            started = time.process_time()
            if binary:
                chunks = list(postgres._binary_chunks(iter(batches), 1))
            else:
                chunks = list(postgres._csv_chunks(postgres._features_rows(b, 1) for b in batches))
            formatting = time.process_time() - started
            cpu, wall = server_cpu(), time.perf_counter()
            conn.run(sql.copy_in("pg_temp", "copy_formats", sql.FEATURE_COLUMNS, binary=binary), stream=chunks)
            wall, cpu = time.perf_counter() - wall, server_cpu() - cpu
            print(f"{'binary' if binary else 'csv':6}  formatting (client CPU) {formatting:.2f} s, "
                  f"{sum(len(c) for c in chunks) / 1e6:.0f} MB; COPY wall {wall:.2f} s, server CPU {cpu:.2f} s; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
    conn.close()


if __name__ == "__main__":
    main()
