"""Functions: actions, triggers, rules, activations (with the activation queue and dead letters).

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _entity(name: str, *extra: sa.Column) -> None:  # type: ignore[type-arg]
    op.create_table(
        name,
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        *extra,
        sa.Column("updated", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("namespace", "name", name=f"uq_{name}_name"),
    )


def upgrade() -> None:
    _entity(
        "fn_actions",
        sa.Column("exec", sa.Text, nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("annotations", sa.Text, nullable=False),
        sa.Column("limits", sa.Text, nullable=False),
        sa.Column("scaling", sa.Text, nullable=False),
    )
    _entity(
        "fn_triggers",
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("annotations", sa.Text, nullable=False),
        sa.Column("feed", sa.String(256), nullable=True),
        sa.Column("feed_params", sa.Text, nullable=True),
    )
    _entity(
        "fn_rules",
        sa.Column("trigger", sa.String(256), nullable=False),
        sa.Column("action", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_table(
        "fn_activations",
        sa.Column("activation_id", sa.String(32), primary_key=True),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("entity", sa.String(8), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("not_before", sa.BigInteger, nullable=False),
        sa.Column("start", sa.BigInteger, nullable=True),
        sa.Column("end", sa.BigInteger, nullable=True),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("logs", sa.Text, nullable=True),
        sa.Column("annotations", sa.Text, nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("cause", sa.String(64), nullable=True),
        sa.Column("rule", sa.String(256), nullable=True),
        sa.Column("trigger", sa.String(256), nullable=True),
        sa.Column("event_offset", sa.BigInteger, nullable=True),
        sa.Column("event_time", sa.BigInteger, nullable=True),
        sa.Column("order_key", sa.Text, nullable=True),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("dedup", sa.String(128), nullable=True, unique=True),
    )
    op.create_index("ix_fn_activations_queue", "fn_activations", ["state", "not_before"])
    op.create_index("ix_fn_activations_list", "fn_activations", ["namespace", "created"])


def downgrade() -> None:
    for name in ("fn_activations", "fn_rules", "fn_triggers", "fn_actions"):
        op.drop_table(name)
