"""Each table the job writes is described once (etl_core/tables.py): a database migrated by this
release has exactly those columns, types and NULL-ability, and docs/tables.md is made from them."""

from __future__ import annotations

from typing import Any

import pytest

from etl_core import pipeline, tables
from etl_core.config import Settings
from tests.conftest import ROOT


def columns_in_database(db: Any, schema: str, table: str) -> list[tuple[str, str, bool]]:
    return [(name, kind, nullable) for name, kind, nullable in db.run(
        "SELECT attname, format_type(atttypid, atttypmod), NOT attnotnull FROM pg_attribute "
        "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        t=f'"{schema}"."{table}"')]


def test_a_migrated_database_has_exactly_the_described_tables(settings: Settings, db: Any, schema: str) -> None:
    pipeline.run(settings, pipeline.Trigger())
    found = {name for [name] in db.run("SELECT tablename FROM pg_tables WHERE schemaname = :s", s=schema)}
    assert found == {t.name for t in tables.TABLES}
    for table in tables.TABLES:
        assert columns_in_database(db, schema, table.name) == [(c.name, c.sql, c.nullable) for c in table.columns], (
            f"{table.name} in the database differs from etl_core/tables.py")


def test_each_step_leaves_the_tables_as_their_descriptions_have_them_at_its_version(db: Any, schema: str) -> None:
    """The DDL is made from the descriptions as of a version (their ``since``): after steps 1..N the
    database has exactly the columns described as added by N or before, the later ones by their own steps."""
    from etl_core.store import migrations

    def version(conn: Any) -> int:
        return int(conn.run(migrations.version_query(schema))[0][0] or 0)

    for step in migrations.MIGRATIONS:
        assert migrations.apply_one(db, schema, step, version)
        found = {name for [name] in db.run("SELECT tablename FROM pg_tables WHERE schemaname = :s", s=schema)}
        assert found == {t.name for t in tables.TABLES if t.as_of(step.version)}, f"at version {step.version}"
        for table in tables.TABLES:
            if table.name in found:
                assert columns_in_database(db, schema, table.name) == [
                    (c.name, c.sql, c.nullable) for c in table.as_of(step.version)], (
                    f"{table.name} at version {step.version} differs from etl_core/tables.py")


@pytest.mark.unit
def test_docs_tables_is_the_description() -> None:
    assert (ROOT / "docs" / "tables.md").read_text(encoding="utf-8") == tables.markdown(), (
        "docs/tables.md is made by: python -m etl_core tables > docs/tables.md")
