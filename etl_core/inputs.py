"""Where a run reads and what it reads: the data location (a directory below DATA_ROOT, or a prefix below
DATA_URL: nothing outside it), each input file's identity, and the fingerprint that decides whether a
trigger loads.  Nothing here reads a row."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from etl_core.config import Settings
from etl_core.contract import FILES, Rule
from etl_core.contract import VERSION as CONTRACT_VERSION
from etl_core.errors import BadRequest, ConfigError, ContractViolation, shorten
from etl_core.reading import report, violation_rows
from etl_core.sources import (
    MANIFEST,
    LocalSource,
    Pinned,
    Source,
    SourceMissing,
    check_etags,
    read_manifest,
    s3_source,
)
from etl_core.store import Run as StoreRun

SHOWN_CHARS = 200  # characters of a caller's value repeated in an error


def resolve_data_dir(settings: Settings, data: str | None) -> Path:
    """The directory to read: the default, or ``data`` relative to the root; nothing outside the root.
    Errors name ``data`` as given, never the root."""
    if not data:
        return settings.data_dir
    if not settings.data_root.is_dir():  # the operator's setting, not the caller's mistake
        raise ConfigError("DATA_ROOT is not an existing directory: no data directory can be read below it",
                          setting="DATA_ROOT")
    shown = shorten(data, SHOWN_CHARS)
    candidate = Path(data)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise BadRequest("data must be a relative path below the data root, without '..'", data=shown)
    try:
        resolved = (settings.data_root / candidate).resolve()  # follows symlinks
        outside = not resolved.is_relative_to(settings.data_root)
        is_dir = not outside and resolved.is_dir()
    except (OSError, ValueError, RuntimeError) as exc:  # name too long, a NUL byte, a symlink loop
        raise BadRequest(f"data is not a usable directory name: {_path_problem(exc)}", data=shown) from None
    if outside:
        raise BadRequest("data leads outside the data root", data=shown)
    if not is_dir:
        raise BadRequest("data is not a directory below the data root", data=shown)
    for contract in FILES:  # a file of it may be a symlink too: it must not lead out of the root either
        try:
            target = (resolved / contract.filename).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise BadRequest(f"data's {contract.filename} is not a usable file: {_path_problem(exc)}",
                             data=shown) from None
        if not target.is_relative_to(settings.data_root):
            raise BadRequest(f"data's {contract.filename} leads outside the data root", data=shown)
    return resolved


@dataclasses.dataclass(frozen=True)
class Location:
    """Where one run reads: the source, how the ledger shows it, and (S3) the manifest's directory key."""

    source: Source
    where: str
    manifest_prefix: str | None = None  # None: a local directory, which needs no manifest
    setting: str | None = None  # the setting that names this directory itself (DATA_DIR), if one does

    def check(self) -> None:
        """ConfigError when the directory a setting names is not there: the operator's mistake, which
        three missing files would misname as the data's."""
        if self.setting is not None and not Path(self.where).is_dir():
            raise ConfigError(f"{self.setting} is not an existing directory: there is nothing to read; set "
                              f"{self.setting} to the directory that holds the three CSV files", setting=self.setting)


def resolve_location(settings: Settings, data: str | None) -> Location:
    """The source to read: DATA_URL's (or DATA_DIR's), or ``data`` below it; nothing outside it, and
    no other bucket.  Errors name ``data`` as given, never the root."""
    if settings.data_url is None:
        directory = resolve_data_dir(settings, data)
        return Location(LocalSource(directory), str(directory), setting=None if data else "DATA_DIR")
    url = settings.data_url
    if data:
        shown = shorten(data, SHOWN_CHARS)
        parts = data.strip("/").split("/")
        if data.startswith("/") or "://" in data or ".." in parts or "." in parts or "\0" in data:
            # '.' too: S3 keeps it as a key's own text, and every spelling would be another input
            raise BadRequest("data must be a relative key prefix below DATA_URL, without '.', '..' or another "
                             "bucket", data=shown)
        url = f"{url}{'/'.join(p for p in parts if p)}/"
    source = s3_source(url, endpoint=settings.s3_endpoint, region=settings.s3_region)
    return Location(source, url, manifest_prefix=url.removeprefix("s3://").partition("/")[2].rstrip("/"))


def fingerprint(policy: str, inputs: dict[str, dict[str, Any] | None]) -> str:
    """What decides whether a trigger loads: each input's key and identity (size and mtime_ns, or size
    and ETag), the policy and the contract's version; never the data itself (nothing is read for it)."""
    made_of = {"contract": CONTRACT_VERSION, "policy": policy,
               "inputs": {name: None if found is None else [found["key"], found["identity"]]
                          for name, found in sorted(inputs.items())}}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()


def _path_problem(exc: Exception) -> str:
    """Why a path could not be used, without the path (OSError's and RuntimeError's texts hold it)."""
    if isinstance(exc, OSError):
        return (exc.strerror or type(exc).__name__).lower()
    if isinstance(exc, RuntimeError):
        return "a symbolic link loop"
    return str(exc)  # ValueError: 'embedded null byte'


def identify(ledger: StoreRun, location: Location, source: Pinned, policy: str) -> tuple[str, dict[str, Any]]:
    """The input's fingerprint and each file's identity, recorded in the run before anything is read;
    an S3 set's objects must be the ones its manifest names."""
    location.check()
    expected = expected_manifest(location)
    inputs = describe(source)
    found = fingerprint(policy, inputs)
    ledger.record_inputs(found, inputs)
    if expected is not None:
        check_etags(expected, {name: item for name, item in inputs.items() if item is not None})
    return found, inputs


def expected_manifest(location: Location) -> dict[str, str | None] | None:
    """The manifest's ETags of an S3 set (None for a local directory, which has no manifest); a missing
    manifest is the contract's missing_file for it."""
    if location.manifest_prefix is None:
        return None
    names = [c.filename for c in FILES]
    try:
        return read_manifest(location.source, names, location.manifest_prefix)
    except SourceMissing:
        raise ContractViolation(
            f"there is no {MANIFEST} at {location.where}: a set is complete only once its manifest "
            "is written; nothing was loaded",
            violations=report(
                violation_rows(MANIFEST, Rule.MISSING_FILE, [None], values=[MANIFEST]), 1),
        ) from None


def describe(source: Pinned) -> dict[str, dict[str, Any] | None]:
    """Each input file's key, size and identity (None: not there, which the header check reports), pinned
    for the rest of the run."""
    described: dict[str, dict[str, Any] | None] = {}
    for name in (c.filename for c in FILES):
        try:
            described[name] = source.describe(name)
        except SourceMissing:
            described[name] = None
    return described
