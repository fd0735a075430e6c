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
    true,
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
    Column("qos", String(32), nullable=False, default="disk"),  # the target: disk | tape | disk+tape
    Column("hsm_uri", Text, nullable=True),  # the tape copy of the current version (HSM script's URI)
    Column("accessed", BigInteger, nullable=True),  # ms: last read of a file on tape and disk (eviction LRU)
    UniqueConstraint("parent_id", "name", name="uq_inodes_parent_name"),
    sqlite_autoincrement=True,
)
# The flush queue: files whose QoS wants a tape copy they do not have yet (qos, locality) = (tape, ONLINE).
Index("ix_inodes_tape", inodes.c.qos, inodes.c.locality)

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
    # Events of other storage systems (events/sources): the source's name (NULL: headrace's own namespace) and
    # the event's identity within it, unique together so that a re-delivered event enters the log once.
    Column("source", String(64), nullable=True),
    Column("source_key", Text, nullable=True),
    sqlite_autoincrement=True,
)
Index("ix_events_time", events.c.time)
Index("ux_events_source_key", events.c.source, events.c.source_key, unique=True)

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

# -- functions (OpenWhisk's entities) -----------------------------------------------------------------------
# JSON-valued columns hold compact JSON text. Names are unique per namespace (the owning user's name).

fn_actions = Table(
    "fn_actions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("namespace", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("version", Integer, nullable=False),  # bumped on every update
    Column("exec", Text, nullable=False),  # {"kind", "code" | "zip" (base64), "main", "binary"} or a sequence
    Column("parameters", Text, nullable=False),
    Column("annotations", Text, nullable=False),
    Column("limits", Text, nullable=False),  # timeout ms, memory MB, logs MB, concurrency
    Column("scaling", Text, nullable=False),  # minScale, maxScale, retries, maxEventAge, ordered
    Column("updated", BigInteger, nullable=False),  # ms since epoch
    UniqueConstraint("namespace", "name", name="uq_fn_actions_name"),
)

fn_triggers = Table(
    "fn_triggers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("namespace", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("version", Integer, nullable=False),
    Column("parameters", Text, nullable=False),
    Column("annotations", Text, nullable=False),
    Column("feed", String(256), nullable=True),  # "/whisk.system/storage/changes" for the storage feed
    Column("feed_params", Text, nullable=True),  # path, recursive, flags, pattern, min_size
    Column("updated", BigInteger, nullable=False),
    UniqueConstraint("namespace", "name", name="uq_fn_triggers_name"),
)

fn_rules = Table(
    "fn_rules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("namespace", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("version", Integer, nullable=False),
    Column("trigger", String(256), nullable=False),  # the trigger's name in the rule's namespace
    Column("action", String(256), nullable=False),  # the action's name in the rule's namespace
    Column("status", String(16), nullable=False),  # active | inactive
    Column("updated", BigInteger, nullable=False),
    UniqueConstraint("namespace", "name", name="uq_fn_rules_name"),
)

fn_packages = Table(
    "fn_packages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("namespace", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("version", Integer, nullable=False),
    Column("parameters", Text, nullable=False),
    Column("annotations", Text, nullable=False),
    Column("binding", Text, nullable=True),  # {"namespace", "name"} of the package a binding is bound to
    Column("publish", Boolean, nullable=False),  # shared: other namespaces may read it and run its actions
    Column("updated", BigInteger, nullable=False),
    UniqueConstraint("namespace", "name", name="uq_fn_packages_name"),
)

fn_activations = Table(
    "fn_activations",
    metadata,
    Column("activation_id", String(32), primary_key=True),
    Column("namespace", String(64), nullable=False),
    Column("name", String(256), nullable=False),  # the action (or trigger) name
    Column("entity", String(8), nullable=False),  # action | trigger
    Column("version", String(32), nullable=False),
    Column("subject", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # queued | running | done | dead
    Column("created", BigInteger, nullable=False),  # ms: when it was queued (waitTime counts from here)
    Column("not_before", BigInteger, nullable=False),  # ms: a retry waits until then
    Column("start", BigInteger, nullable=True),
    Column("end", BigInteger, nullable=True),
    Column("status_code", Integer, nullable=True),  # 0 success, 1 application, 2 developer, 3 internal error
    Column("result", Text, nullable=True),
    Column("logs", Text, nullable=True),  # JSON list of "<time> stdout|stderr: line"
    Column("annotations", Text, nullable=False),
    Column("args", Text, nullable=False),  # parameters and event fields, kept for retries and redrives
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("cause", String(64), nullable=True),  # the trigger activation, or the activation whose write fired it
    Column("rule", String(256), nullable=True),
    Column("trigger", String(256), nullable=True),
    Column("event_offset", BigInteger, nullable=True),
    Column("event_time", BigInteger, nullable=True),  # ms: for the maximum event age
    Column("order_key", Text, nullable=True),  # activations with one key run in event order (per-path ordering)
    Column("depth", Integer, nullable=False),  # length of the activation chain that led here
    Column("dedup", String(128), nullable=True, unique=True),  # "<rule id>:<event offset>": one per (event, rule)
    # With the Kafka transport: false from the commit until Kafka has acknowledged the activation's message
    # (functions/kafka_transport.py); the controller publishes again one that stays false (its publisher died)
    Column("published", Boolean, nullable=False, server_default=true()),
)
Index("ix_fn_activations_queue", fn_activations.c.state, fn_activations.c.not_before)
Index("ix_fn_activations_list", fn_activations.c.namespace, fn_activations.c.created)
Index("ix_fn_activations_subject", fn_activations.c.subject, fn_activations.c.created)

# -- pools running as processes of their own (`headrace pool`), found by doors here ---------------------------

pools = Table(
    "pools",
    metadata,
    Column("name", String(64), primary_key=True),  # as inodes.pool names it
    Column("url", Text, nullable=False),  # where doors and redirected clients reach it
    Column("free_bytes", BigInteger, nullable=False),
    Column("used_bytes", BigInteger, nullable=False),
    Column("started", BigInteger, nullable=False),  # ms since epoch
    Column("heartbeat", BigInteger, nullable=False),  # ms: the last time it said it was alive
    Column("expires", BigInteger, nullable=False),  # ms: doors send it no new files after this without a heartbeat
)

# -- tape (storage/tape.py): flush failures, tape copies to remove, pins, bulk requests ----------------------

flush_failures = Table(
    "flush_failures",
    metadata,
    Column("inode_id", Id, ForeignKey("inodes.id", ondelete="CASCADE"), primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("not_before", BigInteger, nullable=False),  # ms: the next attempt waits until then
    Column("error", Text, nullable=False),
)

# Tape copies no file refers to any more (the file was deleted or overwritten): removed by the HSM's `remove`.
hsm_trash = Table(
    "hsm_trash",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("uri", Text, nullable=False),
    Column("created", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)

# A pin keeps a file's disk copy from eviction until it expires (dCache's sticky flag with an owner).
pins = Table(
    "pins",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("inode_id", Id, ForeignKey("inodes.id", ondelete="CASCADE"), nullable=False),
    Column("owner", String(64), nullable=False),  # username
    Column("request_id", String(64), nullable=True),  # the bulk/tape request that made it
    Column("expires", BigInteger, nullable=True),  # ms; None: until unpinned
    sqlite_autoincrement=True,
)
Index("ix_pins_inode", pins.c.inode_id)

# dCache's bulk requests and the WLCG Tape REST API's stage requests, one table: they share the staging queue.
bulk_requests = Table(
    "bulk_requests",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),  # username
    Column("api", String(8), nullable=False),  # bulk | tape | door (a read that stages)
    Column("activity", String(16), nullable=False),  # STAGE RELEASE PIN UNPIN UPDATE_QOS DELETE LOG_TARGET
    Column("arguments", Text, nullable=False),  # compact JSON
    Column("expand", String(8), nullable=False),  # none | targets | all
    Column("status", String(16), nullable=False),  # QUEUED STARTED COMPLETED CANCELLED
    Column("created", BigInteger, nullable=False),  # ms
    Column("started", BigInteger, nullable=True),
    Column("finished", BigInteger, nullable=True),
)
Index("ix_bulk_requests_owner", bulk_requests.c.owner, bulk_requests.c.created)

bulk_targets = Table(
    "bulk_targets",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("bulk_requests.id", ondelete="CASCADE"), nullable=False),
    Column("activity", String(16), nullable=False),  # the request's, for the queue's index
    Column("owner", String(64), nullable=False),  # the request's, for per-user limits
    Column("path", Text, nullable=False),
    Column("pnfsid", String(36), nullable=True),
    Column("state", String(16), nullable=False),  # CREATED READY RUNNING COMPLETED FAILED CANCELLED SKIPPED
    Column("error", Text, nullable=True),
    Column("created", BigInteger, nullable=False),
    Column("started", BigInteger, nullable=True),
    Column("finished", BigInteger, nullable=True),
    Column("claimed_by", String(64), nullable=True),  # the pool staging it
    Column("lease", BigInteger, nullable=True),  # ms: another pool may take it over after this
    sqlite_autoincrement=True,
)
Index("ix_bulk_targets_queue", bulk_targets.c.activity, bulk_targets.c.state)
Index("ix_bulk_targets_request", bulk_targets.c.request_id, bulk_targets.c.id)

# -- event sources (events/sources): other systems' events delivered into the log ------------------------------

sources = Table(
    "sources",
    metadata,
    Column("name", String(64), primary_key=True),  # base.NAME_PATTERN; events.source names it
    Column("kind", String(32), nullable=False),  # kinds.KINDS
    Column("config", Text, nullable=False),  # compact JSON: the kind's configuration (credentials included)
    Column("readers", Text, nullable=False),  # compact JSON: {"users": [...], "groups": [...]}
    Column("created", BigInteger, nullable=False),  # µs since epoch
    Column("updated", BigInteger, nullable=False),  # µs
    Column("version", Integer, nullable=False),  # bumped on every PUT: the runner restarts the source
    Column("position", Text, nullable=True),  # where the kind resumes (opaque to all but the kind)
    Column("state", Text, nullable=True),  # compact JSON: the kind's durable state, by key
    Column("holder", String(128), nullable=True),  # the controller running it
    Column("lease_until", BigInteger, nullable=True),  # µs: another controller may take it over after this
    Column("generation", Integer, nullable=False),  # bumped on every take-over: writes of an older holder fail
    Column("received", BigInteger, nullable=False),  # events delivered into the log
    Column("last_event", BigInteger, nullable=True),  # µs: when the last new event was delivered
    Column("last_error", Text, nullable=True),
    Column("last_error_time", BigInteger, nullable=True),  # µs
)

# -- the /whisk.system/alarms feeds (functions/alarms.py): each alarm's next due tick, and every tick fired ------

fn_alarms = Table(
    "fn_alarms",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("namespace", String(64), nullable=False),  # the trigger's namespace (its owner)
    Column("trigger", String(256), nullable=False),
    Column("feed", String(16), nullable=False),  # alarm | interval | once
    Column("config", Text, nullable=False),  # compact JSON: payload, cron, timezone, minutes, date, startDate, ...
    Column("status", String(16), nullable=False),  # active | paused | done
    Column("next_due", BigInteger, nullable=True),  # ms since epoch; NULL when nothing is due any more
    Column("fired", Integer, nullable=False),
    Column("created", BigInteger, nullable=False),  # ms
    Column("changed", BigInteger, nullable=False),  # ms: the status's last change
    UniqueConstraint("namespace", "trigger", name="uq_fn_alarms_trigger"),
)
Index("ix_fn_alarms_due", fn_alarms.c.status, fn_alarms.c.next_due)

#: One row per tick fired: (alarm, due time) is the tick's identity, so no tick fires twice.
fn_alarm_ticks = Table(
    "fn_alarm_ticks",
    metadata,
    Column("alarm_id", BigInteger, primary_key=True),
    Column("due", BigInteger, primary_key=True),  # ms
    Column("fired", BigInteger, nullable=False),  # ms: when it was fired
    Column("activation_id", String(64), nullable=True),  # the trigger's activation (NULL: no active rule)
)
