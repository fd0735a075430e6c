"""The /whisk.system/alarms feeds (issue 17): fn_alarms holds each alarm feed's configuration, status and next
due tick; fn_alarm_ticks one row per tick fired, keyed by (alarm, due time), so that a tick fires once across
restarts and controllers.

Revision ID: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fn_alarms",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(256), nullable=False),
        sa.Column("feed", sa.String(16), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("next_due", sa.BigInteger, nullable=True),
        sa.Column("fired", sa.Integer, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("changed", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("namespace", "trigger", name="uq_fn_alarms_trigger"),
    )
    op.create_index("ix_fn_alarms_due", "fn_alarms", ["status", "next_due"])
    op.create_table(
        "fn_alarm_ticks",
        sa.Column("alarm_id", sa.BigInteger, primary_key=True),
        sa.Column("due", sa.BigInteger, primary_key=True),
        sa.Column("fired", sa.BigInteger, nullable=False),
        sa.Column("activation_id", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("fn_alarm_ticks")
    op.drop_index("ix_fn_alarms_due", table_name="fn_alarms")
    op.drop_table("fn_alarms")
