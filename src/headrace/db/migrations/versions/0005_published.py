"""Activations remember whether Kafka has acknowledged their message, so that one left queued without a
message (its publisher died between the commit and the acknowledgement) is found and published again.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fn_activations") as batch:
        batch.add_column(sa.Column("published", sa.Boolean, nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("fn_activations") as batch:
        batch.drop_column("published")
