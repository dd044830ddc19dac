"""Arrow literals made from their bytes, never from Python objects.

Whenever pandas is installed, pyarrow imports it (about 0.4 s) on its first conversion of a Python
object: ``pa.scalar``, ``pa.array([...])``, ``Schema.empty_table()``, and a Python number or string
handed to a compute function (``pc.add(x, 1)``).  The job's image has no pandas, but a venv beside
other tools often does; so the code a good file runs through uses these instead.  Pure: no threads,
no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

_FORMATS = {pa.int8(): "<b", pa.int32(): "<i", pa.int64(): "<q", pa.uint64(): "<Q", pa.float64(): "<d"}


def scalar(value: int | float | str | bool, type: pa.DataType) -> pa.Scalar:
    """``value`` as a scalar of ``type`` (int8, int32, int64, uint64, float64, bool or string)."""
    return array([value], type)[0]


def array(values: Sequence[int | float | str | bool], type: pa.DataType) -> pa.Array:
    """A short array of ``values`` (no nulls); for long ones use compute kernels."""
    n = len(values)
    if pa.types.is_boolean(type):
        bits = sum(1 << i for i, v in enumerate(values) if v)
        return pa.Array.from_buffers(type, n, [None, pa.py_buffer(bits.to_bytes(n // 8 + 1, "little"))])
    if pa.types.is_string(type):
        data = [str(v).encode() for v in values]
        offsets = [0]
        for d in data:
            offsets.append(offsets[-1] + len(d))
        return pa.Array.from_buffers(type, n, [None, pa.py_buffer(struct.pack(f"<{n + 1}i", *offsets)),
                                               pa.py_buffer(b"".join(data))])
    fmt = _FORMATS[type]
    return pa.Array.from_buffers(type, n, [None, pa.py_buffer(struct.pack(fmt[0] + fmt[1] * n, *values))])


def empty(type: pa.DataType) -> pa.Array:
    """An empty array of ``type``."""
    return pa.nulls(0, type)


def empty_table(schema: pa.Schema) -> pa.Table:
    """An empty table of ``schema``."""
    return pa.Table.from_batches([], schema=schema)


def repeat(value: int | float | str | bool, type: pa.DataType, n: int) -> pa.Array:
    """``value`` ``n`` times."""
    return pa.repeat(scalar(value, type), n)


def arange(n: int, type: pa.DataType) -> pa.Array:
    """0, 1, ..., n - 1 (an integer type), made by kernels."""
    return pc.subtract(pc.cumulative_sum(repeat(1, type, n)), scalar(1, type))
