"""The Alembic migrations create exactly the tables, columns and indexes that `headrace.db.schema` declares,
on the database this run uses (SQLite or PostgreSQL)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from headrace.db.engine import make_engine, migrate
from headrace.db.schema import metadata


def test_migrations_match_the_declared_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        migrate(engine)  # idempotent
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []
