"""Alembic environment: migrations run on the connection headrace hands in (see headrace.db.engine)."""

from alembic import context

from headrace.db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
