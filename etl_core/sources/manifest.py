"""The manifest an exporter writes after the three CSV files of a set: ``_manifest.json``.

It is what makes a prefix of a bucket a complete set: the S3 event that starts a run is the
manifest's, and a run on an S3 source reads the files the manifest names and nothing else.

    {"files": [{"key": "users.csv", "etag": "\\"9b2cf535f27731c974343645a3985328\\""},
               {"key": "compounds.csv"},
               "user_experiments.csv"]}

Each key is the object's name beside the manifest (or its whole key, which must then lie beside
it); together they are exactly the contract's three files.  An ETag, when given, must be the
object's: otherwise the set is being replaced while we look at it (SourceChanged, run again).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from etl_core.errors import ManifestError, SourceChanged, shorten
from etl_core.sources.source import Source, translated

MANIFEST = "_manifest.json"
MAX_BYTES = 1 << 20  # a manifest names three objects: anything longer is not one


def read(source: Source, names: Sequence[str], prefix: str = "") -> dict[str, str | None]:
    """The manifest of ``source``: each of ``names`` with the ETag the exporter gave (None: none).
    ``prefix`` is the key of the manifest's directory, for keys given whole.  SourceMissing if there is
    none, ManifestError if it is not a manifest of exactly ``names``."""
    with source.open(MANIFEST) as stream, translated(MANIFEST):
        raw = stream.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ManifestError(f"{MANIFEST} is longer than {MAX_BYTES} bytes: not a manifest", file=MANIFEST)
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{MANIFEST} is not UTF-8 JSON: {shorten(str(exc), 200)}", file=MANIFEST) from None
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, list):
        raise ManifestError(f'{MANIFEST} must be an object with a list "files" of the keys of the set',
                            file=MANIFEST, expected=list(names))
    found: dict[str, str | None] = {}
    for item in files:
        key, etag = _entry(item)
        name = _name(key, prefix)
        if name in found:
            raise ManifestError(f"{MANIFEST} names {name!r} twice", file=MANIFEST)
        found[name] = etag
    extra = sorted(set(found) - set(names))
    missing = [name for name in names if name not in found]
    if extra or missing:
        raise ManifestError(
            f"{MANIFEST} must name exactly {', '.join(names)}"
            + (f"; it also names {', '.join(map(repr, extra))}" if extra else "")
            + (f"; it lacks {', '.join(missing)}" if missing else ""),
            file=MANIFEST, extra=extra, missing=missing)
    return found


def check_etags(expected: dict[str, str | None], described: dict[str, dict[str, Any]]) -> None:
    """SourceChanged if an object's ETag is not the one the manifest gives for it."""
    for name, etag in expected.items():
        have = described.get(name, {}).get("etag")
        if etag is not None and have is not None and _bare(etag) != _bare(have):
            raise SourceChanged(f"{name} is not the object {MANIFEST} names (its ETag is {have}, the manifest "
                                f"says {etag}): the set is being replaced; nothing was loaded", file=name)


def _entry(item: Any) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict) and isinstance(item.get("key"), str) and isinstance(item.get("etag"), str | None):
        return item["key"], item.get("etag")
    raise ManifestError(f'each item of "files" in {MANIFEST} is a key or {{"key": ..., "etag": ...}}, not '
                        f"{shorten(json.dumps(item), 200)}", file=MANIFEST)


def _name(key: str, prefix: str) -> str:
    directory, _, name = key.rpartition("/")
    if directory and directory.strip("/") != prefix.strip("/"):
        raise ManifestError(f"{MANIFEST} names {shorten(key, 200)!r}, which is not beside it", file=MANIFEST)
    return name


def _bare(etag: str) -> str:
    return etag.strip().strip('"')
