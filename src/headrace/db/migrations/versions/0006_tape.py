"""Tape: the tape copy of a file and its last access, flush failures, tape copies to remove, pins, and the
bulk / tape-REST requests with their targets (the staging queue).

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("inodes") as batch:
        batch.add_column(sa.Column("hsm_uri", sa.Text, nullable=True))
        batch.add_column(sa.Column("accessed", sa.BigInteger, nullable=True))
    op.create_index("ix_inodes_tape", "inodes", ["qos", "locality"])
    op.create_table(
        "flush_failures",
        sa.Column("inode_id", Id, sa.ForeignKey("inodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("not_before", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
    )
    op.create_table(
        "hsm_trash",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "pins",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("inode_id", Id, sa.ForeignKey("inodes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("expires", sa.BigInteger, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_pins_inode", "pins", ["inode_id"])
    op.create_table(
        "bulk_requests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("api", sa.String(8), nullable=False),
        sa.Column("activity", sa.String(16), nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("expand", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("started", sa.BigInteger, nullable=True),
        sa.Column("finished", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_bulk_requests_owner", "bulk_requests", ["owner", "created"])
    op.create_table(
        "bulk_targets",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), sa.ForeignKey("bulk_requests.id", ondelete="CASCADE"), nullable=False),
        sa.Column("activity", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("pnfsid", sa.String(36), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("started", sa.BigInteger, nullable=True),
        sa.Column("finished", sa.BigInteger, nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("lease", sa.BigInteger, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_bulk_targets_queue", "bulk_targets", ["activity", "state"])
    op.create_index("ix_bulk_targets_request", "bulk_targets", ["request_id", "id"])


def downgrade() -> None:
    for index, table in (
        ("ix_bulk_targets_request", "bulk_targets"),
        ("ix_bulk_targets_queue", "bulk_targets"),
        ("ix_bulk_requests_owner", "bulk_requests"),
        ("ix_pins_inode", "pins"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("bulk_targets", "bulk_requests", "pins", "hsm_trash", "flush_failures"):
        op.drop_table(table)
    op.drop_index("ix_inodes_tape", table_name="inodes")
    with op.batch_alter_table("inodes") as batch:
        batch.drop_column("accessed")
        batch.drop_column("hsm_uri")
