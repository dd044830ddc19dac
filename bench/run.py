"""Run the benchmark: generate data where missing, run each implementation as its own process, measure
wall time and peak RSS, check that all of them wrote the same table, print and save the results.

    python bench/run.py --scales M L                  # pandas is skipped at L and 2L by default
    python bench/run.py --scales M L --with-2l        # and ours at 2L (20M experiments), for memory
    python bench/run.py --scales L --with-2l --with-4l  # ... and at 4L (40M)
    python bench/run.py --scales --with-4l --with-8l --repeat 3  # 4L against 8L (80M, 2M users): linear growth
    python bench/run.py --scales --with-16l             # 16L (160M experiments, 4M users, 5.4 GB)
    python bench/run.py --scales M --impls ours duckdb --repeat 3
    python bench/run.py --scales C M L --with-4l --impls-at-2l ours duckdb_copy polars_copy --repeat 5

Scale C is the challenge's own data (tests/data/challenge: 10 users), where the fixed costs are all
there is.  ``duckdb_copy`` and ``polars_copy`` are the plain peers, what a user would write (the
query, then a plain COPY into a table without a primary key); ``duckdb`` and ``polars`` also add the
primary key.  ``dlt`` is the plain peer a data engineer would write with dlt: DuckDB's query, its
Arrow result loaded by dlt's PostgreSQL destination (``write_disposition="replace"``, csv and COPY),
then the ids column made ``bigint[]``.  ``ours_pandas`` is our job in a venv that has pandas installed.
``ours``, ``ours_pandas`` and ``dlt`` load into a fresh schema each run (the peers drop and create
their table each run; dlt keeps its own tables next to ours, and would otherwise truncate);
``ours_replace`` is the job loading over its own previous load (publishing keeps the table: DELETE and
COPY in one transaction, then VACUUM on this server, which runs without autovacuum).

Wall time is the whole process (interpreter start, imports, reading, computing, loading, commit),
from the parent's fork to its wait4(); peak RSS is the child's ru_maxrss from wait4() (the client
process only: the PostgreSQL server's memory is not in it).  Before each run the server is asked for
a CHECKPOINT, so that no run pays for writing out the previous one's table, and a VACUUM of the
table it writes (as autovacuum would do between two scheduled runs; this server runs without it).
Each implementation writes to a schema of its own per scale (``bench_<impl>_<scale>``).  The schema
of ``ours``, ``ours_pandas`` and ``dlt`` is dropped before each of their runs, outside the timing, so
that each is a first load, as each peer's run is; ``ours_replace``'s schema holds its previous load
(one untimed load first, when it holds none), so that each of its runs replaces every row.  With
``--repeat N`` the implementations take turns, N rounds of one run each, and each shows its median
(the lower middle one for an even N).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import generate  # noqa: E402

IMPLS = ("ours", "ours_pandas", "ours_replace", "duckdb", "duckdb_copy", "pandas", "polars", "polars_copy",
         "dlt")
# ours_pandas: our job in the venv running this script, which has pandas (pyarrow imports pandas on
# its first conversion from Python objects when pandas is installed)
SCRIPT = {"ours_pandas": "ours", "ours_replace": "ours"}
FRESH = ("ours", "ours_pandas", "dlt")  # their schema is dropped before each run: a first load
BIG = ("2L", "4L", "8L", "16L")  # run with --with-<scale>, by --impls-at-2l
CHALLENGE = BENCH.parent / "tests" / "data" / "challenge"  # scale C: the challenge's own three files
COMPARED = ("user_id", "user_name", "total_experiments", "most_common_compounds", "most_common_compound_ids",
            "round(average_experiments::numeric, 9)")


def connect(url: str) -> Any:
    import pg8000.native

    return pg8000.native.Connection(**_common.pg_params(url), application_name="bench-run")


def ensure_data(scale: str, seed: int) -> dict[str, Any]:
    """The scale's files, generated (in a child process, timed) unless present with the same parameters."""
    if scale == "C":
        rows = {p.stem: sum(1 for _ in p.open(encoding="utf-8")) - 1 for p in CHALLENGE.glob("*.csv")}
        return {"dir": CHALLENGE, "users": rows["users"], "compounds": rows["compounds"],
                "experiments": rows["user_experiments"], "seed": None,
                "bytes": {p.name: p.stat().st_size for p in sorted(CHALLENGE.glob("*.csv"))},
                "generated_seconds": None}
    users, compounds, experiments = generate.SCALES[scale]
    want = {"users": users, "compounds": compounds, "experiments": experiments, "seed": seed}
    out = OUT / scale
    params = out / "params.json"
    generated = None
    if not params.exists() or json.loads(params.read_text(encoding="utf-8")) != want:
        print(f"generating {scale}: {users:,} users, {compounds:,} compounds, {experiments:,} experiments ...",
              flush=True)
        done = subprocess.run([sys.executable, str(BENCH / "generate.py"), "--scale", scale, "--seed", str(seed)],
                              check=True, capture_output=True, text=True)
        generated = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.csv"))}
    return {"dir": out, **want, "bytes": sizes, "generated_seconds": generated}


def python_for(impl: str) -> str:
    """Each implementation runs with its own dependencies only.  Ours gets a venv with just
    requirements.txt, as in the image: pyarrow imports pandas whenever it is installed (0.3-0.5 s)."""
    if impl not in ("ours", "ours_replace"):
        return sys.executable  # ours_pandas too: this venv has pandas
    venv = BENCH / "out" / "venv-ours"
    python = venv / "bin" / "python"
    requirements = BENCH.parent / "requirements.txt"
    stamp = venv / "requirements.txt"
    if not python.exists() or not stamp.exists() or stamp.read_text() != requirements.read_text():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                        str(requirements)], check=True)
        stamp.write_text(requirements.read_text())
    return str(python)


def precompile() -> None:
    """Bytecode for our package and the bench scripts, made before the runs as the image makes it
    (where PYTHONDONTWRITEBYTECODE is set, as on the CI machine, each run would compile them again)."""
    for target in (["-l", str(BENCH)], [str(BENCH.parent / "etl_core")]):
        subprocess.run([sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", *target],
                       check=True)


def schema_of(impl: str, scale: str) -> str:
    return f"bench_{impl}_{scale}".lower()


def run_impl(impl: str, data: Path, schema: str, url: str, timeout: float) -> dict[str, Any]:
    """One run in its own process: wall seconds, peak RSS (MiB), and the JSON line it printed."""
    cmd = [python_for(impl), str(BENCH / f"impl_{SCRIPT.get(impl, impl)}.py"), "--data", str(data),
           "--schema", schema, "--database-url", url]
    code = code_version()  # the code a run imports is what is on disk when it starts
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=BENCH.parent)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    result: dict[str, Any] = {"impl": impl, "wall": round(wall, 3), "rss_mb": round(usage.ru_maxrss / 1024, 1),
                              "exit": proc.returncode, "phases": {}, "rows": None, "code": code}
    for line in reversed(stdout.strip().splitlines()):
        try:
            line_json = json.loads(line)
        except json.JSONDecodeError:
            continue
        result["phases"], result["rows"] = line_json.get("phases", {}), line_json.get("rows")
        break
    if proc.returncode != 0:
        result["error"] = (stderr.strip().splitlines() or ["(no output)"])[-1][:300]
    return result


def table_digest(conn: Any, schema: str) -> tuple[int, str] | None:
    cols = ", ".join(f"coalesce(({c})::text, '<null>')" for c in COMPARED)
    try:
        [[count, digest]] = conn.run(
            f"SELECT count(*), md5(string_agg(concat_ws('|', {cols}), E'\\n' ORDER BY user_id)) "
            f"FROM {_common.q(schema)}.{_common.TABLE}")
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        print(f"  cannot read {schema}: {exc}", flush=True)
        return None
    return int(count), str(digest)


def differences(conn: Any, a: str, b: str) -> dict[str, Any]:
    """Rows of a not in b and of b not in a (counts, and a few examples of each)."""
    cols = ", ".join(COMPARED)
    found: dict[str, Any] = {}
    for left, right in ((a, b), (b, a)):
        sql = (f"SELECT {cols} FROM {_common.q(left)}.{_common.TABLE} EXCEPT "
               f"SELECT {cols} FROM {_common.q(right)}.{_common.TABLE}")
        [[n]] = conn.run(f"SELECT count(*) FROM ({sql}) d")
        examples = conn.run(f"SELECT * FROM ({sql}) d ORDER BY 1 LIMIT 3")
        found[f"only_in_{left}"] = {"count": n, "examples": [[str(v) for v in row] for row in examples]}
    return found


def versions(url: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("pyarrow", "duckdb", "pandas", "polars", "numpy", "pg8000", "sqlalchemy", "dlt"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "-"
    conn = connect(url)
    found["postgresql"] = str(conn.run("SHOW server_version")[0][0])
    conn.close()
    return found


def git(*cmd: str) -> str:
    done = subprocess.run(["git", *cmd], cwd=BENCH.parent, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def code_version() -> str:
    """What our job runs: the content of etl_core/ and requirements.txt as on disk (each run imports
    what is there when it starts): their tree ids at HEAD, plus a hash of any uncommitted change."""
    paths = ("etl_core", "requirements.txt")
    trees = "+".join(git("rev-parse", "--short", f"HEAD:{p}") or "?" for p in paths)
    diff = git("diff", "HEAD", "--", *paths)
    if git("ls-files", "--others", "--exclude-standard", "--", *paths):
        diff += "untracked files"
    return f"etl_core {trees}" + (f" + uncommitted {hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else "")


def fmt_phases(result: dict[str, Any]) -> str:
    """The script's own phases, after 'startup': interpreter start until the script's first line ran."""
    phases = result["phases"]
    skip = {"script_total", "run", "run.total"}
    shown = [f"startup={result['wall'] - phases['script_total']:.2f}"] if "script_total" in phases else []
    return " ".join(shown + [f"{k.removeprefix('run.')}={v:.2f}" for k, v in phases.items() if k not in skip])


def is_ours(impl: str) -> bool:
    return impl.startswith("ours")


def choose(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time, carrying the highest peak RSS of all; a failure if all failed."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return dict(runs[-1], walls=[])
    chosen = dict(sorted(ok, key=lambda r: r["wall"])[(len(ok) - 1) // 2])
    chosen.update(rss_mb=max(r["rss_mb"] for r in ok), walls=[r["wall"] for r in ok],
                  loads=[r.get("load_before", 0.0) for r in ok])
    return chosen


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def render(header: list[str], results: list[dict[str, Any]], data: dict[str, dict[str, Any]]) -> list[str]:
    lines = list(header)
    lines += ["", "| scale | users | compounds | experiments | experiments CSV MB | generated in s |",
              "|---|---:|---:|---:|---:|---:|"]
    for scale, d in data.items():
        gen = f"{d['generated_seconds']:.1f}" if d["generated_seconds"] is not None else "(cached)"
        lines.append(f"| {scale} | {d['users']:,} | {d['compounds']:,} | {d['experiments']:,} | "
                     f"{d['bytes'].get('user_experiments.csv', 0) / 1e6:.0f} | {gen} |")
    lines += ["", "| implementation | scale | wall s | peak RSS MB | rows | same as ours | load before | phases (s) |",
              "|---|---|---:|---:|---:|---|---|---|"]
    for r in results:
        walls = r["walls"]
        wall = f"{r['wall']:.2f}" + (f" ({min(walls):.2f}-{max(walls):.2f}; median of {len(walls)}: "
                                     f"{', '.join(f'{w:.2f}' for w in walls)})" if len(walls) > 1 else "")
        status = f"FAILED: {r['error']}" if r.get("error") else fmt_phases(r)
        if r.get("code_note"):
            status += f" ({r['code_note']})"
        loads = r.get("loads") or [0.0]
        lines.append(f"| {r['impl']} | {r['scale']} | {wall} | {r['rss_mb']:.0f} | {r['rows'] or '-'} | "
                     f"{r['check']} | {min(loads):.2f}-{max(loads):.2f} | {status} |")
    others = [i for i in IMPLS if not is_ours(i) and any(r["impl"] == i for r in results)]
    lines += ["", "ours against each: wall (median) and peak RSS; spread = (max - min) / median of the runs", "",
              "| scale | " + " | ".join(f"ours/{o} wall | ours/{o} RSS" for o in others) + " | spread: "
              + ", ".join(i for i in IMPLS if any(r["impl"] == i for r in results)) + " |",
              "|---|" + "---:|---:|" * len(others) + "---|"]
    for scale in data:
        by = {r["impl"]: r for r in results if r["scale"] == scale and not r.get("error")}
        if "ours" not in by:
            continue
        cells = []
        for other in others:
            o = by.get(other)
            cells += [ratio(by["ours"]["wall"], o and o["wall"]), ratio(by["ours"]["rss_mb"], o and o["rss_mb"])]
        spreads = [f"{i} {spread(by[i]['walls']):.0%}" for i in IMPLS if i in by and len(by[i]["walls"]) > 1]
        lines.append(f"| {scale} | " + " | ".join(cells) + " | " + (", ".join(spreads) or "-") + " |")
    return lines


def spread(walls: list[float]) -> float:
    """(max - min) / median: how far apart the runs of one implementation were."""
    ordered = sorted(walls)
    return (ordered[-1] - ordered[0]) / ordered[(len(ordered) - 1) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="*", default=["M", "L"],
                        choices=["C", *(s for s in generate.SCALES if s not in BIG)])
    parser.add_argument("--with-2l", action="store_true", help="also run --impls-at-2l at 2L (20M experiments)")
    parser.add_argument("--with-4l", action="store_true", help="also run --impls-at-2l at 4L (40M experiments)")
    parser.add_argument("--with-8l", action="store_true", help="also run --impls-at-2l at 8L (80M experiments)")
    parser.add_argument("--with-16l", action="store_true", help="also run --impls-at-2l at 16L (160M experiments)")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--impls-at-2l", nargs="+", default=["ours"], choices=IMPLS,
                        help="the ones run at 2L, 4L, 8L and 16L")
    parser.add_argument("--skip-pandas-at", nargs="*", default=["L", *BIG], metavar="SCALE",
                        help="scales where pandas + to_sql is not run (default: L and up; it takes many minutes)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per implementation; the median wall is shown")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run before it is killed")
    parser.add_argument("--database-url", default=_common.DEFAULT_URL)
    args = parser.parse_args()

    plan = [(scale, [i for i in args.impls if not (i == "pandas" and scale in args.skip_pandas_at)])
            for scale in args.scales]
    wanted = {"2L": args.with_2l, "4L": args.with_4l, "8L": args.with_8l, "16L": args.with_16l}
    for big in [scale for scale in BIG if wanted[scale]]:
        plan.append((big, [i for i in args.impls_at_2l if not (i == "pandas" and big in args.skip_pandas_at)]))
    # ours first: the others are checked against its table
    plan = [(scale, sorted(impls, key=lambda i: i != "ours")) for scale, impls in plan]

    v = versions(args.database_url)
    header_code = code_version()
    header = [f"# Benchmark ({time.strftime('%Y-%m-%d %H:%M:%S')})", "",
              f"machine: {os.cpu_count()} cores (os.cpu_count()), "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, {platform.platform()}",
              "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
              f"command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}",
              f"code: commit {git('rev-parse', '--short', 'HEAD') or 'unknown'}, {header_code}",
              "interpreters: ours in bench/out/venv-ours (requirements.txt only, as in the image: with pandas "
              "installed, pyarrow imports it), the others in the venv running this script",
              "wall = whole process (interpreter start to exit), median of the runs; peak RSS = the client process "
              "(wait4 ru_maxrss), highest of the runs; "
              "'same as ours' compares (user_id, user_name, total_experiments, most_common_compounds, "
              "most_common_compound_ids, round(average_experiments, 9)) by md5 over all rows in user_id order"]
    print("\n".join(header), flush=True)
    results: list[dict[str, Any]] = []
    data: dict[str, dict[str, Any]] = {}
    precompile()
    conn = connect(args.database_url)
    for scale, impls in plan:
        data[scale] = ensure_data(scale, args.seed)
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
        # in rounds, every implementation once per round: a slow spell of this shared machine then
        # falls on all of them instead of on the runs of one
        for attempt in range(args.repeat):
            for impl in impls:
                if runs[impl] and "error" in runs[impl][-1]:
                    continue  # failed once: not run again
                schema = schema_of(impl, scale)
                if impl in FRESH:
                    conn.run(f"DROP SCHEMA IF EXISTS {_common.q(schema)} CASCADE")
                exists = conn.run("SELECT to_regclass(:t)", t=f"{_common.q(schema)}.{_common.TABLE}")[0][0]
                if impl == "ours_replace" and not exists:
                    print(f"[{scale}] {impl}: an untimed first load to replace ...", end=" ", flush=True)
                    first = run_impl(impl, data[scale]["dir"], schema, args.database_url, args.timeout)
                    print(first.get("error", "done"), flush=True)
                    exists = True
                if exists:
                    conn.run(f"VACUUM {_common.q(schema)}.{_common.TABLE}")
                conn.run("CHECKPOINT")
                print(f"[{scale}] {impl} run {attempt + 1}/{args.repeat} ...", end=" ", flush=True)
                load_before = round(os.getloadavg()[0], 2)
                r = run_impl(impl, data[scale]["dir"], schema, args.database_url, args.timeout)
                r["load_before"] = load_before  # 1-minute load average: near 0 on an idle machine
                print(f"{r['wall']:.2f} s, {r['rss_mb']:.0f} MB" + (f", FAILED: {r['error']}" if "error" in r else ""),
                      flush=True)
                runs[impl].append(r)
        reference: tuple[int, str] | None = None
        for impl in impls:  # ours first: each implementation's schema holds the table of its last run
            chosen = choose(runs[impl])
            chosen.update(scale=scale)
            codes = sorted({r["code"] for r in runs[impl]})
            if is_ours(impl) and (len(codes) > 1 or codes[0] != header_code):  # only ours imports etl_core
                chosen["code_note"] = "code changed: " + "; ".join(codes)
                print(f"  warning: {chosen['code_note']}", flush=True)
            if "error" in chosen:
                chosen["check"] = "-"
            else:
                digest = table_digest(conn, schema_of(impl, scale))
                if impl == "ours":
                    reference = digest
                    chosen["check"] = "(reference)" if digest else "unreadable"
                elif digest is None or reference is None:
                    chosen["check"] = "no reference" if digest else "unreadable"
                elif digest == reference:
                    chosen["check"] = "identical"
                else:
                    chosen["check"] = "DIFFERENT"
                    chosen["differences"] = differences(conn, schema_of("ours", scale), schema_of(impl, scale))
                    print(json.dumps(chosen["differences"], indent=1), flush=True)
                chosen["digest"] = digest
            results.append(chosen)
    conn.close()

    lines = render(header, results, data)
    checks = [r["check"] for r in results if r["impl"] != "ours"]  # ours_pandas is checked against ours too
    verdict = ("all compared tables identical to ours" if checks and all(c == "identical" for c in checks)
               else f"checks: {checks}")
    lines += ["", f"correctness: {verdict}"]
    print("\n".join(lines[len(header):]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (OUT / "results.json").write_text(json.dumps({"versions": v, "cpu_count": os.cpu_count(), "results": results,
                                                  "data": {k: {**d, "dir": str(d["dir"])} for k, d in data.items()}},
                                                 indent=1, default=str) + "\n", encoding="utf-8")
    print(f"\nwritten: {OUT / 'results.md'}, {OUT / 'results.json'}", flush=True)
    return 0 if all(c in ("identical", "(reference)") for c in [r["check"] for r in results]) else 1


if __name__ == "__main__":
    with _common.exclusive():
        code = main()
    sys.exit(code)
