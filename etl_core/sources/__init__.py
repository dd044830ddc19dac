"""Where the files are: a local directory or an S3 prefix, read through ``pyarrow.fs`` and pinned to
the identity a run found (``source``), and the manifest an exporter writes after a set (``manifest``).
The face: the rest of the job uses only what this module names."""

from etl_core.sources.manifest import MANIFEST, check_etags
from etl_core.sources.manifest import read as read_manifest
from etl_core.sources.source import LocalSource, Pinned, Source, SourceMissing, s3_source, translated

__all__ = ["MANIFEST", "LocalSource", "Pinned", "Source", "SourceMissing", "check_etags", "read_manifest", "s3_source",
           "translated"]
