"""PostgreSQL: every insert into the outbox notifies `headrace_events`, in the inserting transaction.

PostgreSQL delivers a notification only when its transaction commits (none for a rolled-back one, and one
for many identical ones in a transaction), so a log follower in any process that LISTENs is woken exactly
when events it has not read may be there. Nothing on SQLite, whose followers share the writer's process.

Revision ID: 0003
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION headrace_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('headrace_events', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER events_notify AFTER INSERT ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION headrace_events_notify()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute("DROP FUNCTION headrace_events_notify()")
