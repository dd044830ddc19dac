"""The import graph is the one the README draws: the handler knows only the service; the pipeline
knows the inputs, reading, the features and the store; only the store knows pg8000; nothing below the
handler knows HTTP; nothing in the pure core imports threads or I/O."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

PACKAGES = ("etl_core", "handler")
HTTP = {"fastapi", "starlette", "mangum", "pydantic", "handler"}
THREADS_AND_IO = {"threading", "queue", "concurrent", "multiprocessing", "os", "io", "socket", "subprocess",
                  "tempfile", "pathlib", "shutil", "logging", "time", "pg8000", "pyarrow.csv", "pyarrow.fs"}
PURE_CORE = ("etl_core.features.kernels", "etl_core.features.digests", "etl_core.store.changes", "etl_core.guard",
             "etl_core.contract", "etl_core.reading.rules",
             "etl_core.literals", "etl_core.tables")
# every layer may name its settings, errors and run statuses, and write logs and metrics
SHARED = {"etl_core.config", "etl_core.errors", "etl_core.logs", "etl_core.metrics", "etl_core.status"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (a lazy import is still one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


GRAPH = {module_name(p): imports_of(p) for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def ours(imported: set[str]) -> set[str]:
    """The project's modules among ``imported``, by module (``from etl_core import x`` names x)."""
    return {name for name in imported if name in GRAPH} - SHARED - set(PACKAGES)


def test_only_the_store_imports_pg8000_or_its_database_modules() -> None:
    for module, imported in GRAPH.items():
        if module.startswith("etl_core.store"):
            continue
        assert not {i for i in imported if i.split(".")[0] == "pg8000"}, f"{module} imports pg8000"
        assert not ours(imported) & {"etl_core.store.db", "etl_core.store.sql"}, f"{module} reaches into the store"


def test_the_handler_reaches_the_job_only_through_the_service() -> None:
    for module, imported in GRAPH.items():
        if module.startswith("handler"):
            below = {m for m in ours(imported) if m.startswith("etl_core")}
            assert below <= {"etl_core.service"}, f"{module} imports {sorted(below)}"


def test_nothing_below_the_handler_knows_http() -> None:
    for module, imported in GRAPH.items():
        if module.startswith("etl_core"):
            assert not {i.split(".")[0] for i in imported} & HTTP, f"{module} imports {imported & HTTP}"


@pytest.mark.parametrize("module", [m for m in PURE_CORE if m in GRAPH])
def test_the_pure_core_imports_no_threads_and_no_io(module: str) -> None:
    imported = GRAPH[module]
    roots = {i.split(".")[0] for i in imported} | {i for i in imported if i.startswith("pyarrow.")}
    assert not roots & THREADS_AND_IO, f"{module} imports {sorted(roots & THREADS_AND_IO)}"


def readme_graph() -> dict[str, set[str]]:
    """The README's import picture: lines ``a -> b, c`` in the fenced block after ``<!-- import graph -->``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- import graph -->", 1)[1].split("```", 2)[1]
    edges: dict[str, set[str]] = {}
    for line in block.splitlines():
        if "->" in line:
            left, right = line.split("->", 1)
            edges[left.strip()] = {name.strip() for name in re.split(r"[,\s]+", right) if name.strip()}
    return edges


def short(module: str) -> str:
    return module.removeprefix("etl_core.")


def test_the_readme_picture_is_the_import_graph() -> None:
    drawn = readme_graph()
    for module, imported in GRAPH.items():
        if module in SHARED or module in ("etl_core", "handler"):
            continue
        actual = {short(m) for m in ours(imported) if m != module}
        assert drawn.get(short(module), set()) == actual, f"{module} imports {sorted(actual)}"
    assert set(drawn) <= {short(m) for m in GRAPH}, "the README draws a module that does not exist"


def test_the_benchmarks_table_is_the_jobs_table_without_its_key() -> None:
    """bench/_common.py writes the peers' table itself (importing etl_core would cost the peers its
    imports); this keeps it the same table as etl_core's, column for column."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import _common
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from etl_core.store import sql

    def columns(ddl: str) -> list[str]:
        body = ddl[ddl.index("(") + 1:ddl.rindex(")")]
        return [" ".join(line.replace('"', "").split()) for line in body.split(",")]

    ours = [c.replace(" PRIMARY KEY", "") for c in columns(sql.features_table("s", _common.TABLE, primary_key=True))]
    assert columns(_common.create_table_sql("s")[-1]) == ours
    assert tuple(_common.COLUMNS) == sql.FEATURE_COLUMNS


FACED = ("etl_core.reading", "etl_core.features", "etl_core.sources")
# the store's face is etl_core.store (the Store protocol); its two implementations are chosen at the edge, and the
# sharded path's staging (PostgreSQL only) is reached by that path alone
IMPLEMENTATIONS = {"etl_core.store.postgres", "etl_core.store.memory", "etl_core.store.shards"}


@pytest.mark.parametrize("package", (*FACED, "etl_core.store"))
def test_outside_code_uses_each_packages_face(package: str) -> None:
    """Folders show the architecture: code outside a package imports its face (``etl_core.reading``),
    never a module inside it (``etl_core.reading.fast``), so the inside can change shape freely."""
    for module, imported in GRAPH.items():
        if module == package or module.startswith(package + "."):
            continue
        inside = {m for m in ours(imported) if m.startswith(package + ".")} - IMPLEMENTATIONS
        assert not inside, f"{module} reaches into {package}: {sorted(inside)}; use the package's face"


def test_the_dlt_peer_declares_null_where_the_jobs_table_allows_it() -> None:
    """bench/impl_dlt.py hands dlt an Arrow schema, from which dlt makes the table's NOT NULLs (the
    benchmark's comparison reads values, not constraints): the columns it leaves nullable are ours."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import impl_dlt
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from etl_core.tables import USER_FEATURES

    assert impl_dlt.NULLABLE == tuple(c.name for c in USER_FEATURES.columns if c.nullable)
