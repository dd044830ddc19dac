"""Deterministic benchmark data: users.csv, compounds.csv, user_experiments.csv under the data contract.

    python bench/generate.py --scale M                 # -> bench/out/M/
    python bench/generate.py --users 1000 --compounds 50 --experiments 20000 --out /tmp/x
    python bench/generate.py --scale L --changed 0.01  # -> bench/out/L-changed1/: 1% of L's users renamed
    python bench/generate.py --scale L --sparse        # -> bench/out/L-sparse/: the user ids spread out

Vectorised with numpy and pyarrow; the experiments file is written in chunks with a streaming CSV
writer, so memory stays flat whatever the size.  Same seed and sizes give byte-identical files.

Shape of the data:
* ids are 1..n, unique, in file order (as an export of a database would have them);
* which user runs an experiment and which compounds it lists follow a truncated power law
  (Zipf-like): a few users are very active, a few compounds very popular, most users have a
  handful of experiments and some have none;
* each experiment lists 1 to 5 compounds; a popular compound is occasionally listed twice in one
  experiment (counts once);
* user and compound names need CSV quoting: commas, double quotes, apostrophes, non-ASCII letters;
  no name starts or ends with whitespace or a quote (the contract trims those);
* dates are YYYY-MM-DD between 2015 and 2024, run times non-negative with two decimals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

SCALES: dict[str, tuple[int, int, int]] = {  # users, compounds, experiments
    "S": (1_000, 100, 10_000),
    "M": (100_000, 1_000, 1_000_000),
    "L": (1_000_000, 10_000, 10_000_000),
    "2L": (1_000_000, 10_000, 20_000_000),
    "4L": (1_000_000, 10_000, 40_000_000),
    # past one function's comfort: twice and four times 4L's experiments over twice and four times the users
    "8L": (2_000_000, 10_000, 80_000_000),
    "16L": (4_000_000, 10_000, 160_000_000),
}
OUT = Path(__file__).resolve().parent / "out"
USER_SKEW = 0.8  # exponent of the power law over users
COMPOUND_SKEW = 1.0  # ... and over compounds
LIST_LENGTHS = np.array([1, 2, 3, 4, 5])
LIST_WEIGHTS = np.array([0.30, 0.30, 0.20, 0.12, 0.08])
CHUNK = 1_000_000  # experiments per written batch

FIRST = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
         "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Zoë", "José", "Ærin",
         "François", "Łucja", "Søren", "Anaïs", "Chen", "Priya", "Kwame", "Ines"]
LAST = ["Smith", "Jones", "O'Brien", "Müller", "García", "Nguyen", "Kowalski", "Ødegaard", "Dubois",
        "Rossi", "Tanaka", "Okafor", "Silva", "van der Berg", "MacLeod", "D'Angelo", "Johansson", "Ivanova",
        "Cohen", "Patel"]
NICK = ["Bo", "Doc", "Ace", "Red", "Sunny", "Tiny", "Max"]
SUFFIX = ["Jr.", "Sr.", "PhD", "MD", "III"]
STEMS = ["Aspirin", "Caffeine", "Ibuprofen", "Paracetamol", "Dopamine", "Serotonin", "Taxol", "Quinine",
         "Morphine", "Penicillin", "Warfarin", "Metformin", "Lisinopril", "Atropine", "Cortisol"]
PREFIX = ["2,4-Dinitro", "1,3,5-Trimethyl", "N,N-Dimethyl", "4,4'-Dihydroxy", "2,6-Dichloro"]


def power_law(rng: np.random.Generator, n: int, size: int, skew: float) -> np.ndarray:
    """Ranks 0..n-1 with P(rank k) roughly proportional to (k+1)^-skew (inverse CDF of the continuous law)."""
    u = rng.random(size)
    if abs(skew - 1.0) < 1e-9:
        x = np.exp(u * np.log(n + 1.0))
    else:
        a = 1.0 - skew
        x = (u * ((n + 1.0) ** a - 1.0) + 1.0) ** (1.0 / a)
    return np.minimum(x.astype(np.int64) - 1, n - 1)


def pick(rng: np.random.Generator, words: list[str], size: int) -> pa.Array:
    return pa.array(words, pa.string()).take(pa.array(rng.integers(0, len(words), size)))


def ids_text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values, pa.int64()), pa.string())


def users_table(rng: np.random.Generator, n: int) -> pa.Table:
    ids = np.arange(1, n + 1, dtype=np.int64)
    first, last = pick(rng, FIRST, n), pick(rng, LAST, n)
    nick, suffix = pick(rng, NICK, n), pick(rng, SUFFIX, n)
    style = pa.array(rng.choice(4, size=n, p=[0.55, 0.20, 0.15, 0.10]).astype(np.int8))
    name = pc.choose(
        style,
        pc.binary_join_element_wise(first, last, " "),                      # Alice Smith
        pc.binary_join_element_wise(last, first, ", "),                     # Smith, Alice
        pc.binary_join_element_wise(first, pc.binary_join_element_wise('"', nick, '"', ""), last, " "),
        pc.binary_join_element_wise(pc.binary_join_element_wise(first, last, " "), suffix, ", "),
    )
    email = pc.binary_join_element_wise("user", ids_text(ids), "@example.com", "")
    days = rng.integers(0, 3652, n).astype(np.int32) + np.int32(16436)  # 2015-01-01 + up to 10 years
    return pa.table({"user_id": ids, "name": name, "email": email,
                     "signup_date": pa.array(days, pa.int32()).cast(pa.date32())})


def compounds_table(rng: np.random.Generator, n: int) -> pa.Table:
    ids = np.arange(1, n + 1, dtype=np.int64)
    stem, prefix, tag = pick(rng, STEMS, n), pick(rng, PREFIX, n), pick(rng, NICK, n)
    number = ids_text(ids)
    style = pa.array(rng.choice(3, size=n, p=[0.6, 0.25, 0.15]).astype(np.int8))
    name = pc.choose(
        style,
        pc.binary_join_element_wise(stem, number, "-"),                                   # Taxol-17
        pc.binary_join_element_wise(prefix, pc.utf8_lower(stem), number, ""),             # 2,4-Dinitrotaxol17
        pc.binary_join_element_wise(stem, pc.binary_join_element_wise('"', tag, '"', ""), number, " "),
    )
    parts = [ids_text(rng.integers(1, 40, n)), ids_text(rng.integers(1, 60, n)),
             ids_text(rng.integers(0, 6, n)), ids_text(rng.integers(0, 8, n))]
    structure = pc.binary_join_element_wise("C", parts[0], "H", parts[1], "N", parts[2], "O", parts[3], "")
    return pa.table({"compound_id": ids, "compound_name": name, "compound_structure": structure})


def experiments_batch(rng: np.random.Generator, first_id: int, size: int, user_perm: np.ndarray,
                      compound_perm: np.ndarray) -> pa.RecordBatch:
    users = user_perm[power_law(rng, len(user_perm), size, USER_SKEW)]
    lengths = rng.choice(LIST_LENGTHS, size=size, p=LIST_WEIGHTS)
    offsets = np.zeros(size + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    items = compound_perm[power_law(rng, len(compound_perm), int(offsets[-1]), COMPOUND_SKEW)]
    lists = pa.ListArray.from_arrays(pa.array(offsets), ids_text(items))
    run_time = np.round(rng.gamma(2.0, 30.0, size), 2)
    return pa.record_batch({
        "experiment_id": pa.array(np.arange(first_id, first_id + size, dtype=np.int64)),
        "user_id": pa.array(users),
        "experiment_compound_ids": pc.binary_join(lists, ";"),
        "experiment_run_time": pa.array(run_time),
    })


def generate(out: Path, users: int, compounds: int, experiments: int, seed: int) -> dict[str, object]:
    params = {"users": users, "compounds": compounds, "experiments": experiments, "seed": seed}
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").unlink(missing_ok=True)  # written last: its presence means complete files
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    quoted = pacsv.WriteOptions(quoting_style="needed")  # every string quoted
    pacsv.write_csv(users_table(rng, users), out / "users.csv", write_options=quoted)
    pacsv.write_csv(compounds_table(rng, compounds), out / "compounds.csv", write_options=quoted)
    # who the active users and the popular compounds are: a fixed random order of the ids
    user_perm = rng.permutation(np.arange(1, users + 1, dtype=np.int64))
    compound_perm = rng.permutation(np.arange(1, compounds + 1, dtype=np.int64))
    plain = pacsv.WriteOptions(quoting_style="none")  # ids and ';' only: nothing needs quotes
    writer = None
    try:
        for start in range(0, experiments, CHUNK):
            batch = experiments_batch(rng, start + 1, min(CHUNK, experiments - start), user_perm, compound_perm)
            if writer is None:
                writer = pacsv.CSVWriter(out / "user_experiments.csv", batch.schema, write_options=plain)
            writer.write_batch(batch)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no experiments: a header only
        (out / "user_experiments.csv").write_text(
            "experiment_id,user_id,experiment_compound_ids,experiment_run_time\n", encoding="utf-8")
    seconds = round(time.perf_counter() - started, 3)
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.csv"))}
    (out / "params.json").write_text(json.dumps(params) + "\n", encoding="utf-8")
    return {**params, "seconds": seconds, "bytes": sizes, "out": str(out)}


def changed_variant(source: Path, out: Path, share: float, seed: int) -> dict[str, object]:
    """A copy of the set in ``source`` in which ``share`` of the users (a deterministic random choice) have
    another name, nothing else changed: a reload of it changes exactly those users' features, and the
    average (experiments per user) stays as it is.  The other two files are hard links (no copy)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").unlink(missing_ok=True)
    started = time.perf_counter()
    for name in ("compounds.csv", "user_experiments.csv"):
        (out / name).unlink(missing_ok=True)
        (out / name).hardlink_to(source / name)
    users = pacsv.read_csv(source / "users.csv", convert_options=pacsv.ConvertOptions(
        column_types={"user_id": pa.int64(), "name": pa.string(), "email": pa.string(), "signup_date": pa.date32()}))
    rng = np.random.default_rng(seed)
    chosen = rng.random(users.num_rows) < share if share < 1 else np.ones(users.num_rows, dtype=bool)
    renamed = pc.if_else(pa.array(chosen), pc.binary_join_element_wise(users["name"], f" (renamed {share:g})", ""),
                         users["name"])
    users = users.set_column(users.column_names.index("name"), "name", renamed)
    pacsv.write_csv(users, out / "users.csv", write_options=pacsv.WriteOptions(quoting_style="needed"))
    params = {"source": str(source), "changed_share": share, "changed_users": int(chosen.sum()), "seed": seed}
    (out / "params.json").write_text(json.dumps(params) + "\n", encoding="utf-8")
    return {**params, "seconds": round(time.perf_counter() - started, 3), "out": str(out)}


SPREAD = 1_000_003  # a sparse variant's user id: the original times this (ids up to about 10^13)


def sparse_variant(source: Path, out: Path) -> dict[str, object]:
    """A copy of the set in ``source`` whose user ids are spread out (``id * SPREAD``) in both files: the
    same users, experiments and features under other ids, which no longer fill a range (the job then
    finds a user by a lookup, not by subtraction).  compounds.csv is a hard link."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").unlink(missing_ok=True)
    started = time.perf_counter()
    (out / "compounds.csv").unlink(missing_ok=True)
    (out / "compounds.csv").hardlink_to(source / "compounds.csv")
    spread = pa.scalar(SPREAD, pa.int64())
    for name in ("users.csv", "user_experiments.csv"):
        convert = pacsv.ConvertOptions(column_types={"user_id": pa.int64()}, strings_can_be_null=False,
                                       quoted_strings_can_be_null=False)
        reader = pacsv.open_csv(source / name, read_options=pacsv.ReadOptions(block_size=64 << 20),
                                convert_options=convert)
        with pacsv.CSVWriter(out / name, reader.schema,
                             write_options=pacsv.WriteOptions(quoting_style="needed")) as writer:
            for batch in reader:
                at = batch.schema.get_field_index("user_id")
                writer.write_batch(batch.set_column(at, "user_id", pc.multiply(batch["user_id"], spread)))
    params = {"source": str(source), "sparse": SPREAD}
    (out / "params.json").write_text(json.dumps(params) + "\n", encoding="utf-8")
    return {**params, "seconds": round(time.perf_counter() - started, 3), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), help="preset sizes (S, M, L, 2L, 4L, 8L, 16L)")
    parser.add_argument("--users", type=int)
    parser.add_argument("--compounds", type=int)
    parser.add_argument("--experiments", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, help="output directory (default bench/out/<scale>)")
    parser.add_argument("--changed", type=float, metavar="SHARE",
                        help="with --scale: a variant of that set (generated first if missing) in which SHARE "
                             "(0-1) of the users are renamed, in bench/out/<scale>-changed<percent>")
    parser.add_argument("--sparse", action="store_true",
                        help="with --scale: a variant of that set (generated first if missing) whose user ids "
                             "are spread out (not a range), in bench/out/<scale>-sparse")
    args = parser.parse_args(argv)
    if args.sparse:
        if not args.scale:
            parser.error("--sparse needs --scale")
        source = OUT / args.scale
        if not (source / "params.json").exists():
            generate(source, *SCALES[args.scale], args.seed)
        print(json.dumps(sparse_variant(source, args.out or OUT / f"{args.scale}-sparse")))
        return 0
    if args.changed is not None:
        if not args.scale or not 0 < args.changed <= 1:
            parser.error("--changed needs --scale and a share above 0, at most 1")
        source = OUT / args.scale
        if not (source / "params.json").exists():
            generate(source, *SCALES[args.scale], args.seed)
        out = args.out or OUT / f"{args.scale}-changed{args.changed * 100:g}"
        print(json.dumps(changed_variant(source, out, args.changed, args.seed)))
        return 0
    users, compounds, experiments = SCALES[args.scale] if args.scale else (None, None, None)
    users = args.users if args.users is not None else users
    compounds = args.compounds if args.compounds is not None else compounds
    experiments = args.experiments if args.experiments is not None else experiments
    if users is None or compounds is None or experiments is None:
        parser.error("give --scale, or all of --users --compounds --experiments")
    if users < 1 or compounds < 1 or experiments < 0:
        parser.error("need at least one user and one compound, and no negative count")
    name = args.scale or f"u{users}_c{compounds}_e{experiments}"
    out = args.out or OUT / name
    print(json.dumps(generate(out, users, compounds, experiments, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
