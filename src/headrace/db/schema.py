"""The namespace, outbox and user tables, as SQLAlchemy Core metadata.

Portable by construction: nothing here is SQLite-only, so the same queries run on PostgreSQL.
The Alembic migrations in `migrations/versions` create exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

inodes = Table(
    "inodes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("pnfsid", String(36), nullable=False, unique=True),
    Column("parent_id", Id, ForeignKey("inodes.id"), nullable=True),
    Column("name", String(1024), nullable=False),
    Column("type", String(8), nullable=False),  # DIR | REGULAR
    Column("size", BigInteger, nullable=False, default=0),
    Column("mode", Integer, nullable=False),
    Column("uid", Integer, nullable=False),
    Column("gid", Integer, nullable=False),
    Column("ctime", BigInteger, nullable=False),  # creation, ms since epoch
    Column("mtime", BigInteger, nullable=False),  # content change, ms since epoch
    Column("generation", Integer, nullable=False, default=0),  # bumped on every content change (ETag)
    Column("pool", String(64), nullable=True),
    Column("blob", String(128), nullable=True),  # data file name inside the pool
    Column("locality", String(32), nullable=False, default="ONLINE"),
    Column("qos", String(32), nullable=False, default="disk"),
    UniqueConstraint("parent_id", "name", name="uq_inodes_parent_name"),
    sqlite_autoincrement=True,
)

checksums = Table(
    "checksums",
    metadata,
    Column("inode_id", Id, ForeignKey("inodes.id", ondelete="CASCADE"), primary_key=True),
    Column("type", String(16), primary_key=True),  # ADLER32 | MD5 | SHA-256
    Column("value", String(128), nullable=False),
)

xattrs = Table(
    "xattrs",
    metadata,
    Column("inode_id", Id, ForeignKey("inodes.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(512), primary_key=True),
    Column("value", Text, nullable=False),
)

labels = Table(
    "labels",
    metadata,
    Column("inode_id", Id, ForeignKey("inodes.id", ondelete="CASCADE"), primary_key=True),
    Column("label", String(255), primary_key=True),
)

# The transactional outbox: one row per change to one object, written in the change's own transaction.
events = Table(
    "events",
    metadata,
    Column("offset", Id, primary_key=True, autoincrement=True),
    Column("time", BigInteger, nullable=False),  # µs since epoch
    Column("kind", String(16), nullable=False),  # see headrace.events.model.EventKind
    Column("is_dir", Boolean, nullable=False),
    Column("inode_id", BigInteger, nullable=False),
    Column("pnfsid", String(36), nullable=False),
    Column("path", Text, nullable=False),
    Column("parent_id", BigInteger, nullable=True),
    Column("name", String(1024), nullable=True),
    Column("old_path", Text, nullable=True),
    Column("old_parent_id", BigInteger, nullable=True),
    Column("old_name", String(1024), nullable=True),
    Column("cookie", String(32), nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("detail", Text, nullable=True),  # compact JSON: checksums, attribute names, transfer facts
    Column("cause", String(64), nullable=True),
    Column("username", String(64), nullable=True),
    sqlite_autoincrement=True,
)
Index("ix_events_time", events.c.time)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("uid", Integer, nullable=False, unique=True),
    Column("gids", String(255), nullable=False),  # comma-separated, primary first
    Column("key_hash", String(128), nullable=False),
    Column("admin", Boolean, nullable=False, default=False),
    Column("home", Text, nullable=False, default="/"),
    Column("root", Text, nullable=False, default="/"),
    Column("created", BigInteger, nullable=False),
)

# Small named values: the macaroon root key, consumer positions, the clean-shutdown mark.
state = Table(
    "state",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)
