"""Arrow's allocator: the run makes the named pool the default, and keeps Arrow's own where the build lacks it."""

from __future__ import annotations

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
