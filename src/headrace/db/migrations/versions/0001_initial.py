"""Initial schema: namespace, checksums, xattrs, labels, outbox, users, state.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inodes",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("pnfsid", sa.String(36), nullable=False, unique=True),
        sa.Column("parent_id", Id, sa.ForeignKey("inodes.id"), nullable=True),
        sa.Column("name", sa.String(1024), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.Integer, nullable=False),
        sa.Column("uid", sa.Integer, nullable=False),
        sa.Column("gid", sa.Integer, nullable=False),
        sa.Column("ctime", sa.BigInteger, nullable=False),
        sa.Column("mtime", sa.BigInteger, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("pool", sa.String(64), nullable=True),
        sa.Column("blob", sa.String(128), nullable=True),
        sa.Column("locality", sa.String(32), nullable=False),
        sa.Column("qos", sa.String(32), nullable=False),
        sa.UniqueConstraint("parent_id", "name", name="uq_inodes_parent_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "checksums",
        sa.Column("inode_id", Id, sa.ForeignKey("inodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("type", sa.String(16), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
    )
    op.create_table(
        "xattrs",
        sa.Column("inode_id", Id, sa.ForeignKey("inodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(512), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "labels",
        sa.Column("inode_id", Id, sa.ForeignKey("inodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("label", sa.String(255), primary_key=True),
    )
    op.create_table(
        "events",
        sa.Column("offset", Id, primary_key=True, autoincrement=True),
        sa.Column("time", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("is_dir", sa.Boolean, nullable=False),
        sa.Column("inode_id", sa.BigInteger, nullable=False),
        sa.Column("pnfsid", sa.String(36), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("parent_id", sa.BigInteger, nullable=True),
        sa.Column("name", sa.String(1024), nullable=True),
        sa.Column("old_path", sa.Text, nullable=True),
        sa.Column("old_parent_id", sa.BigInteger, nullable=True),
        sa.Column("old_name", sa.String(1024), nullable=True),
        sa.Column("cookie", sa.String(32), nullable=True),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("cause", sa.String(64), nullable=True),
        sa.Column("username", sa.String(64), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_time", "events", ["time"])
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("uid", sa.Integer, nullable=False, unique=True),
        sa.Column("gids", sa.String(255), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("home", sa.Text, nullable=False),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "state",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("state", "users", "events", "labels", "xattrs", "checksums", "inodes"):
        op.drop_table(table)
