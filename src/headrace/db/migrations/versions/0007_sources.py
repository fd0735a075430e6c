"""Event sources: events of other storage systems in the log, and the sources that deliver them.

`events` gains `source` (the source's name; NULL for headrace's own namespace) and `source_key` (the event's
identity within its source), unique together so that a re-delivered event enters the log once (NULLs are
distinct on both databases, so local events are unaffected). `sources` holds each source's configuration,
readers, delivery position and kind state, the lease of the controller that runs it (fenced by
`generation`), and what `GET /api/v1/sources` shows.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("source", sa.String(64), nullable=True))
        batch.add_column(sa.Column("source_key", sa.Text, nullable=True))
    op.create_index("ux_events_source_key", "events", ["source", "source_key"], unique=True)
    op.create_table(
        "sources",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("readers", sa.Text, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("position", sa.Text, nullable=True),
        sa.Column("state", sa.Text, nullable=True),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.BigInteger, nullable=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("received", sa.BigInteger, nullable=False),
        sa.Column("last_event", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_error_time", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("sources")
    op.drop_index("ux_events_source_key", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("source_key")
        batch.drop_column("source")
