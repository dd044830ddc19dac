"""Arrow's allocator: the run makes the named pool the default, and keeps Arrow's own where the build lacks it.
The collector: what exists when the first run starts is frozen, once per process."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pyarrow as pa
import pytest

from etl_core import memory

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    before = pa.default_memory_pool()
    yield
    pa.set_memory_pool(before)


@pytest.mark.parametrize("name", ["jemalloc", "mimalloc", "system"])
def test_the_named_pool_becomes_the_default(name: str) -> None:
    assert memory.use(name) == name
    assert pa.default_memory_pool().backend_name == name
    before = pa.default_memory_pool().bytes_allocated()
    buffer = pa.allocate_buffer(1 << 20)  # the default pool's
    assert pa.default_memory_pool().bytes_allocated() - before >= buffer.size


def test_a_build_without_the_allocator_keeps_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    pa.set_memory_pool(pa.system_memory_pool())

    def missing() -> pa.MemoryPool:
        raise NotImplementedError("This Arrow build does not enable jemalloc")

    monkeypatch.setattr(pa, "jemalloc_memory_pool", missing)
    assert memory.use("jemalloc") == "system"
    assert pa.default_memory_pool().backend_name == "system"


def test_an_unknown_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="tcmalloc"):
        memory.use("tcmalloc")


def test_settle_freezes_what_exists_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_settled", False)
    gc.unfreeze()
    try:
        memory.settle()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        memory.settle()
        assert gc.get_freeze_count() == frozen, "a second settle froze again: a warm process would keep its garbage"
        cycle: list[object] = []
        cycle.append(cycle)  # garbage that only the collector frees, made after the first settle
        later = weakref.ref(_Box(cycle))
        del cycle
        gc.collect()
        assert later() is None
    finally:
        gc.unfreeze()


class _Box:
    """A weakly referenceable member of a cycle."""

    def __init__(self, cycle: list[object]) -> None:
        cycle.append(self)
