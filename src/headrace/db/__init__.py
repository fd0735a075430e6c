"""Database schema, engine set-up and migrations (SQLite embedded, PostgreSQL scale-out)."""
