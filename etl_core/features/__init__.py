"""The features: pure Arrow kernels (``kernels``: arrays in, arrays out, ``pyarrow.compute`` only, no
threads, no I/O) and the engine that runs them over a file of any length (``engine``: a counting
thread beside the reader, buckets, a memory budget, the features worked out while the COPY sends
them), and each user's digest (``digests``: what a reload compares with the last load's).  The face:
the rest of the job uses only what this module names."""

from etl_core.features.digests import Digester
from etl_core.features.engine import Counts, ExperimentCounter, feature_batches
from etl_core.features.kernels import FEATURES_SCHEMA, TABLE_SPREAD, IdIndex, ascending, average

__all__ = ["FEATURES_SCHEMA", "TABLE_SPREAD", "Counts", "Digester", "ExperimentCounter", "IdIndex", "ascending",
           "average", "feature_batches"]
