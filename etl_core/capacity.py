"""Whether a run fits the memory the function may use, decided before the kernel decides it.

A function killed by its memory limit leaves the table as it was (the transaction never commits) and
its run recorded as not finished, but it says nothing about why.  So a run checks twice, and stops
with ``InputTooLarge`` (507 ``input_too_large``), its own code and a message that says what to do:

* **up front**, from the files' sizes, before a row is read: ``estimate`` is the peak the job reached
  on the bench's data (bench/README.md, round six, whole process, after the files were read and
  counted and the features written):

      peak ≈ 160 MB + 0.55 x the experiments file + 2.2 x the users file

  (L: 0.32 GB of experiments and 61 MB of users, 0.45 GB; 4L: 1.33 GB, 0.99 GB; 8L: 2.72 GB and 123 MB,
  1.65 GB).  Past the pending-keys budget the counts follow the distinct (user, compound) pairs, 8
  bytes each, so a file whose experiments repeat fewer pairs needs more than this per byte, and one
  that repeats more needs less: the estimate refuses only what would not fit by the bench's measure;
* **while reading and publishing**: ``Watch`` reads the process's resident memory after each batch
  and stops the run once it passes WATCH_SHARE of the limit, with how far it got.

The limit is ``Settings.memory_limit_mb`` (ETL_MEMORY_LIMIT_MB, else Lambda's
AWS_LAMBDA_FUNCTION_MEMORY_SIZE), lowered to the memory cgroup's limit where that is lower (a
container run with ``--memory``); 0 turns both checks off.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from etl_core.errors import InputTooLarge

BASE_BYTES = 160 << 20  # the interpreter, pyarrow, the reader's blocks, the COPY's buffers
PER_EXPERIMENTS_BYTE = 0.55  # pending keys and counted pairs, per byte of the experiments file
PER_USERS_BYTE = 2.2  # the users' table, sorted, and their rows of the features
WATCH_SHARE = 0.9  # stop past this share of the limit: the features and the COPY still need some
WATCH_EVERY = 0.05  # seconds between two looks at the process's memory (one look: 10-70 us)
WHAT_TO_DO = ("give the function more memory (Lambda allows up to 10,240 MB), or split the experiments "
              "across several functions (docs/scale.md)")

_CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory"))
_UNLIMITED = 1 << 60  # cgroup v1 writes 'no limit' as a number near 2^63


def limit_bytes(limit_mb: int | None) -> int | None:
    """The bytes a run may use: ``limit_mb`` MiB, or the memory cgroup's limit if that is lower, or
    the cgroup's alone without a setting; None when nothing limits it or ``limit_mb`` is 0 (off)."""
    if limit_mb == 0:
        return None
    limits = [limit_mb << 20] if limit_mb else []
    cgroup = cgroup_limit()
    if cgroup is not None:
        limits.append(cgroup)
    return min(limits) if limits else None


def cgroup_limit() -> int | None:
    """The lowest memory limit of this process's cgroup and its ancestors (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    found: list[int] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            root, name = _CGROUP_ROOTS[0], "memory.max"
        elif "memory" in controllers.split(","):
            root, name = _CGROUP_ROOTS[1], "memory.limit_in_bytes"
        else:
            continue
        here = root / path.lstrip("/")
        for directory in (here, *here.parents):
            if not directory.is_relative_to(root):
                break
            value = _read_limit(directory / name)
            if value is not None:
                found.append(value)
    return min(found) if found else None


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) >= _UNLIMITED:
        return None  # 'max', or v1's 'unlimited'
    return int(text)


def rss_bytes() -> int | None:
    """The process's resident memory now (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def estimate(*, experiments_bytes: int, users_bytes: int) -> int:
    """The run's peak memory by the bench's measure (see the module's text), in bytes."""
    return int(BASE_BYTES + PER_EXPERIMENTS_BYTE * experiments_bytes + PER_USERS_BYTE * users_bytes)


def check_fits(*, experiments_bytes: int, users_bytes: int, limit: int | None) -> int:
    """The estimate; InputTooLarge when it is more than ``limit`` (None: no limit)."""
    needed = estimate(experiments_bytes=experiments_bytes, users_bytes=users_bytes)
    if limit is not None and needed > limit:
        raise InputTooLarge(
            f"user_experiments.csv ({_size(experiments_bytes)}) and users.csv ({_size(users_bytes)}) would need "
            f"about {_size(needed)} of memory, more than the {_size(limit)} this function may use; "
            f"nothing was read or loaded: {WHAT_TO_DO}",
            reason="estimate", estimated_bytes=needed, limit_bytes=limit,
            experiments_bytes=experiments_bytes, users_bytes=users_bytes,
        )
    return needed


class Watch:
    """Stops a run whose memory passes WATCH_SHARE of ``limit``: ``check`` after each batch (it looks at
    most every WATCH_EVERY seconds)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.stop_at = int(limit * WATCH_SHARE)
        self._next = 0.0

    def check(self, where: str) -> None:
        """InputTooLarge if the process holds more than ``stop_at`` now; ``where`` says how far the run got."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + WATCH_EVERY
        used = rss_bytes()
        if used is not None and used > self.stop_at:
            raise InputTooLarge(
                f"the run held {_size(used)} of memory {where}, past {WATCH_SHARE:.0%} of the {_size(self.limit)} "
                f"this function may use; it was stopped before the limit would stop it, and nothing was loaded: "
                f"{WHAT_TO_DO}",
                reason="memory", rss_bytes=used, limit_bytes=self.limit, where=where,
            )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
