"""What the job leans on inside its dependencies beyond their public APIs, pinned so that an upgrade
which moves it fails here, naming what to change, instead of somewhere deep in a run.

- ``pyarrow._acero`` (etl_core/features/kernels.py ``group_by``): the public ``pyarrow.acero`` imports
  ``pyarrow.dataset`` and, where installed, pandas.
- pg8000's socket ``_usock`` (etl_core/store/db.py): the statement timeout's read deadline and
  ``TCP_NODELAY`` are set on it; pg8000 has no public handle on its socket.
- pg8000's error texts (etl_core/store/db.py ``_CONNECTION_LOST``, ``_REFUSES_TLS``): pg8000 raises
  ``InterfaceError`` with a message, and no code, for a lost connection and a server that refuses TLS.
"""

from __future__ import annotations

import inspect

import pyarrow as pa
import pytest

from etl_core.features import kernels as transform
from etl_core.store import db

pytestmark = pytest.mark.unit


def test_the_private_acero_entry_groups_as_the_public_group_by_does() -> None:
    table = pa.table({"k": pa.array([3, 1, 3, 2, 1, 3], pa.int64()), "n": pa.array([1, 2, 3, 4, 5, 6], pa.int64())})
    ours = transform.group_by(table, ["k"], [("n", "hash_sum"), ("n", "hash_max")]).sort_by("k")
    public = table.group_by(["k"], use_threads=False).aggregate([("n", "sum"), ("n", "max")]).sort_by("k")
    assert ours.to_pydict() == public.to_pydict(), (
        "pyarrow._acero no longer aggregates as Table.group_by does: etl_core/features/kernels.py group_by must follow "
        f"pyarrow {pa.__version__}'s Declaration/AggregateNodeOptions")


def _pg8000_source() -> str:
    import pg8000.core

    return inspect.getsource(pg8000.core)


def test_pg8000_still_keeps_its_socket_as_usock() -> None:
    import pg8000.core

    assert "self._usock = " in inspect.getsource(pg8000.core.CoreConnection.__init__), (
        "pg8000 no longer names its socket _usock: etl_core/store/db.py sets the read timeout and TCP_NODELAY "
        "through it, and must find the socket another way")


@pytest.mark.parametrize("text", [*db._CONNECTION_LOST, db._REFUSES_TLS])
def test_pg8000_still_words_its_interface_errors_as_the_store_reads_them(text: str) -> None:
    assert text in _pg8000_source(), (
        f"pg8000 no longer raises an error worded {text!r}: etl_core/store/db.py tells lost connections and "
        "a server refusing TLS apart by these texts, and must learn the new ones")
