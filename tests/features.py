"""The features of tables already in memory, for tests: the pure kernels of etl_core/features/kernels.py run
one after the other on the calling thread, and the threaded engine's batches (etl_core/features/engine.py)
gathered into one table.  The job itself streams; these are the same steps, laid out flat, to
compare with an oracle."""

from __future__ import annotations

import pyarrow as pa

from etl_core import literals
from etl_core.features.engine import Counts, feature_batches
from etl_core.features.kernels import (
    FEATURES_SCHEMA,
    IdIndex,
    add_counts,
    average,
    by_user_id,
    count_keys,
    experiment_keys,
    favourites,
    feature_batch,
)


def compute_features(users: pa.Table, compounds: pa.Table, experiments: pa.Table) -> pa.Table:
    """One row per user of ``users``, by user id: totals, the tied most common compounds (in compound
    id order), the average.  Every id in ``experiments`` is one of ``users`` and ``compounds``; the
    experiments are counted batch by batch, as the job counts them."""
    users = by_user_id(users)
    if users.num_rows == 0:
        return literals.empty_table(FEATURES_SCHEMA)
    compounds = compounds.sort_by("compound_id")
    user_ids = users["user_id"].combine_chunks()
    compound_ids = compounds["compound_id"].combine_chunks()
    keys, counts = literals.empty(pa.int64()), literals.empty(pa.int64())
    for batch in experiments.to_batches():
        if batch.num_rows:
            more = experiment_keys(batch.column("user_id"), batch.column("experiment_compound_ids"),
                                   IdIndex(user_ids), IdIndex(compound_ids))
            keys, counts = add_counts(keys, counts, *count_keys(more))
    batch = feature_batch(users, favourites(keys, counts, users.num_rows, len(compound_ids) + 1),
                          compounds["compound_name"].combine_chunks(), compound_ids,
                          average(experiments.num_rows, users.num_rows))
    return pa.Table.from_batches([batch], schema=FEATURES_SCHEMA)


def feature_table(users: pa.Table, compounds: pa.Table, counts: Counts) -> pa.Table:
    """The engine's ``feature_batches`` as one table."""
    return pa.Table.from_batches(list(feature_batches(users, compounds, counts)), schema=FEATURES_SCHEMA)
