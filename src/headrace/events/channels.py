"""Channels and subscriptions of the dCache storage-events API: the core, without HTTP.

A channel belongs to one user, holds subscriptions (inotify watches, metronomes) and numbers every event it
queues from 0. One dispatcher reads the event log once for all channels and hands each event to the watches
it concerns (an index by watched inode; recursive watches by path). A channel holds its last 16383 events
for Last-Event-ID replay; each subscription may have at most 1000 unsent events, past which its events are
dropped and one IN_Q_OVERFLOW is queued, so that a slow or absent client costs bounded memory.

Beyond dCache: channels, their subscriptions, ids and held events survive a restart (channel_store), and a
watch may be recursive.

Every event is checked at delivery against the rights of the channel's owner and the confinement of the
credential that made the channel (events.access: the same rule as the storage feed's); a channel can be used
only by its owner, and by a confined credential only if it made the channel under the same confinement.

Bounds (one user cannot exhaust what all share): channels per user, subscriptions per channel, recursive
watches per user (each is matched against every event), metronome frequency (each, and summed over a user's
metronomes) and message size; each refusal is a precise 4xx.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headrace.auth.users import Subjects, Users
from headrace.errors import BadRequest, Forbidden, NotFound, TooManyRequests
from headrace.events import sse
from headrace.events.access import Confinement, Directories, Reader, may_use, one_side, sides, view_seen
from headrace.events.channel_store import ChannelStore, Entry, Saved, entry_line, position_line, sent_line
from headrace.events.log import EventLog
from headrace.events.model import EventKind, StorageEvent
from headrace.events.render import cloudevent_dict, inotify
from headrace.events.selectors import (
    METRONOME_MAX_HZ,
    METRONOME_MAX_MESSAGE,
    InotifySelector,
    MetronomeSelector,
    inotify_selector,
    metronome_selector,
)
from headrace.metrics import EVENT_CONSUMER_LAG, EVENT_LOG_HEAD, SSE_CHANNELS, SSE_CONNECTIONS

log = logging.getLogger("headrace.events")

_ORDER = {"IN_MOVED_FROM": 0, "IN_MOVED_TO": 1}
HELD = 16383  # events a channel keeps for replay (dCache's figure)
QUEUE_LIMIT = 1000  # unsent events per subscription before IN_Q_OVERFLOW (dCache's figure)
TIMEOUT_DEFAULT, TIMEOUT_MIN, TIMEOUT_MAX = 300, 1, 86400
SUBSCRIPTIONS_PER_CHANNEL = 64
RECURSIVE_PER_USER = 16  # recursive watches are matched against every event: a user's are bounded
METRONOME_USER_HZ = 1000.0  # a user's metronomes together, ticks per second
CHECKPOINT_SECONDS = 2.0


def new_id(nbytes: int) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).rstrip(b"=").decode()


class Connection:
    """The one client connected to a channel: SYSTEM frames waiting for it, and how it is told to end."""

    def __init__(self) -> None:
        self.system: list[tuple[int, bytes]] = []  # (the channel's next id when it happened, frame)
        self.final: bytes | None = None
        self.wake = asyncio.Event()

    def end(self, frame: bytes) -> None:
        if self.final is None:
            self.final = frame
        self.wake.set()


@dataclass(eq=False)
class Subscription:
    channel: Channel
    type: str
    sid: str
    url: str  # absolute, equal to the Location it was created with
    selector: dict[str, Any]  # as given (flags updated by a merge)
    since: int  # log offset: events at or before it predate the subscription
    pending: int = 0  # queued and not yet sent
    overflowed: bool = False

    @property
    def key(self) -> str:
        return f"{self.type}/{self.sid}"

    def meta(self) -> dict[str, Any]:
        return {"type": self.type, "sid": self.sid, "url": self.url, "selector": self.selector, "since": self.since}


@dataclass(eq=False)
class Watch(Subscription):
    inode: int = 0
    path: str = "/"  # current path of the target (followed across renames)
    flags: frozenset[str] = frozenset()
    oneshot: bool = False
    recursive: bool = False
    format: str = "inotify"

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "inode": self.inode, "path": self.path}


@dataclass(eq=False)
class Metronome(Subscription):
    spec: MetronomeSelector = field(default_factory=lambda: MetronomeSelector(1.0))
    ticks: int = 0
    task: asyncio.Task[None] | None = None

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "ticks": self.ticks}


class Channel:
    def __init__(
        self,
        manager: ChannelManager,
        cid: str,
        owner: str,
        client_id: str | None,
        timeout: int,
        offset: int,
        confinement: Confinement | None = None,
    ) -> None:
        self.manager = manager
        self.id = cid
        self.owner = owner
        #: The confinement of the credential that made the channel: every event it delivers is checked against it.
        self.confinement = confinement
        self.client_id = client_id
        self.timeout = timeout
        self.offset = offset  # log offset dispatched to this channel
        self.subs: dict[str, Subscription] = {}
        self.held: deque[Entry] = deque(maxlen=HELD)
        self.next_id = 0
        self.sent = -1  # last id written to a client
        self.conn: Connection | None = None
        self.idle_since: float | None = time.monotonic()
        self.journal: list[str] = []
        self.journal_lines = 0
        self.saved_offset = -1
        self.saved_sent = -1
        self.closed = False

    # -- queueing ---------------------------------------------------------------------------------------

    def queue(self, sub: Subscription, payload: Any, *, force: bool = False) -> None:
        """Number and hold one event for `sub`; past QUEUE_LIMIT unsent, drop it and flag the overflow once."""
        if sub.pending >= QUEUE_LIMIT and not force:
            if not sub.overflowed:
                sub.overflowed = True
                self._hold(sub, _management(sub, "IN_Q_OVERFLOW") if sub.type == "inotify" else "overflow")
            return
        self._hold(sub, payload)

    def _hold(self, sub: Subscription, payload: Any) -> None:
        entry = Entry(self.next_id, sub.type, sub.key, sse.compact({"event": payload, "subscription": sub.url}))
        self.next_id += 1
        self.held.append(entry)
        sub.pending += 1
        self.journal.append(entry_line(entry))
        if self.conn is not None:
            self.conn.wake.set()

    def system(self, frame: bytes) -> None:
        """A SYSTEM event for the client connected now (never held, never replayed)."""
        if self.conn is not None:
            self.conn.system.append((self.next_id, frame))
            self.conn.wake.set()

    def take(self, cursor: int, limit: int = 512) -> tuple[bool, list[Entry]]:
        """Held events from id `cursor` on (at most `limit`), and whether some before them are gone."""
        if cursor >= self.next_id or not self.held:
            return False, []
        lost = cursor < self.held[0].id
        out: list[Entry] = []
        for e in reversed(self.held):
            if e.id < cursor:
                break
            out.append(e)
        out.reverse()
        return lost, out[:limit]

    def mark_sent(self, entries: list[Entry]) -> None:
        for e in entries:
            if e.id <= self.sent:
                continue  # a replay: counted when first sent
            self.sent = e.id
            sub = self.subs.get(e.sub)
            if sub is not None:
                sub.pending = max(0, sub.pending - 1)
                if sub.pending < QUEUE_LIMIT:
                    sub.overflowed = False

    # -- the client -------------------------------------------------------------------------------------

    def connect(self) -> Connection:
        if self.conn is not None:
            self.conn.end(sse.system("COMPETING_CLIENT"))
        self.conn = Connection()
        self.idle_since = None
        SSE_CONNECTIONS.inc()
        return self.conn

    def disconnect(self, conn: Connection) -> None:
        SSE_CONNECTIONS.dec()
        if self.conn is conn:
            self.conn = None
            self.idle_since = time.monotonic()

    # -- persistence ------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "confinement": self.confinement.to_json() if self.confinement is not None else None,
            "clientId": self.client_id,
            "timeout": self.timeout,
            "offset": self.offset,
            "subscriptions": [s.meta() for s in self.subs.values()],
        }


class ChannelManager:
    """Every channel of the server, the dispatcher that feeds them from the event log, and their upkeep."""

    def __init__(
        self,
        log_: EventLog,
        directory: Path,
        *,
        per_user: int = 128,
        subscriptions_per_channel: int = SUBSCRIPTIONS_PER_CHANNEL,
        recursive_per_user: int = RECURSIVE_PER_USER,
        metronome_max_hz: float = METRONOME_MAX_HZ,
        metronome_max_message: int = METRONOME_MAX_MESSAGE,
        metronome_user_hz: float = METRONOME_USER_HZ,
        users: Users | None = None,
    ) -> None:
        self.log = log_
        self.store = ChannelStore(directory, held=HELD)
        self.per_user = per_user
        self.subscriptions_per_channel = subscriptions_per_channel
        self.recursive_per_user = recursive_per_user
        #: The most metronome ticks per second one subscription may ask for, and one user's metronomes together.
        self.metronome_max_hz = metronome_max_hz
        self.metronome_max_message = metronome_max_message
        self.metronome_user_hz = metronome_user_hz
        self.users = users if users is not None else Users(log_.db)
        #: Directory permissions for judging events at delivery (events.access).
        self.dirs = Directories()
        self._subjects = Subjects(self.users)
        self._readers: dict[tuple[str, Confinement | None], Reader] = {}
        self.channels: dict[str, Channel] = {}
        self.by_inode: dict[int, list[Watch]] = {}
        self.recursive: list[Watch] = []
        self.offset = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- life -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        head = await self.log.db.read(self.log.head)
        self.offset = head
        for saved in self.store.load():
            try:
                self._restore(saved)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("events: channel %s not restored: %s", saved.meta.get("id"), exc)
        if self.channels:
            self.offset = min(ch.offset for ch in self.channels.values())
        SSE_CHANNELS.set(len(self.channels))
        self._tasks = [asyncio.create_task(self._dispatch_forever()), asyncio.create_task(self._upkeep_forever())]

    def shutdown_clients(self) -> None:
        """Tell every connected client the server is going away (before the HTTP server drains)."""
        self._stopping = True
        for ch in self.channels.values():
            if ch.conn is not None:
                ch.conn.end(sse.system("SHUTDOWN"))

    async def stop(self) -> None:
        self.shutdown_clients()
        for t in self._tasks:
            t.cancel()
        for ch in self.channels.values():
            for sub in ch.subs.values():
                if isinstance(sub, Metronome) and sub.task is not None:
                    sub.task.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.checkpoint(force=True)

    def _restore(self, saved: Saved) -> None:
        m = saved.meta
        ch = Channel(
            self, m["id"], m["owner"], m.get("clientId"), int(m["timeout"]), saved.offset,
            Confinement.from_json(m.get("confinement")),
        )  # fmt: skip
        ch.next_id, ch.sent = saved.next_id, saved.sent
        ch.held.extend(saved.entries)
        ch.journal_lines = len(saved.entries)
        ch.saved_offset, ch.saved_sent = saved.offset, saved.sent
        for s in m.get("subscriptions", []):
            if s["type"] == "inotify":
                sel = inotify_selector(s["selector"])
                sub: Subscription = Watch(
                    ch, "inotify", s["sid"], s["url"], s["selector"], int(s["since"]),
                    inode=int(s["inode"]), path=s["path"], flags=sel.flags, oneshot=sel.oneshot,
                    recursive=sel.recursive,
                    format=sel.format,
                )  # fmt: skip
            else:
                # one saved before today's limits is held to them (slowed down, its message cut)
                spec = metronome_selector(s["selector"], max_hz=math.inf, max_message=None)
                spec = dataclasses.replace(
                    spec,
                    interval=max(spec.interval, 1.0 / self.metronome_max_hz),
                    message=spec.message.encode()[: self.metronome_max_message].decode(errors="ignore"),
                )
                sub = Metronome(
                    ch, "metronome", s["sid"], s["url"], s["selector"], int(s["since"]),
                    spec=spec, ticks=int(s.get("ticks", 0)),
                )  # fmt: skip
            ch.subs[sub.key] = sub
            self._index(sub)
        for e in ch.held:
            if e.id > ch.sent and e.sub in ch.subs:
                ch.subs[e.sub].pending += 1
        self.channels[ch.id] = ch

    # -- channels ---------------------------------------------------------------------------------------

    def create(self, owner: str, client_id: str | None, confinement: Confinement | None = None) -> Channel:
        if self._stopping:
            raise TooManyRequests("The server is shutting down")
        if sum(1 for c in self.channels.values() if c.owner == owner) >= self.per_user:
            raise TooManyRequests(f"Too many channels: at most {self.per_user} per user")
        ch = Channel(self, new_id(16), owner, client_id, TIMEOUT_DEFAULT, self.offset, confinement)
        self.channels[ch.id] = ch
        self._save_meta(ch)
        self.store.append(ch.id, [position_line(ch.offset, 0)])
        SSE_CHANNELS.set(len(self.channels))
        return ch

    def get(self, cid: str, owner: str, confinement: Confinement | None = None) -> Channel:
        """The channel `cid` for its owner using a credential confined by `confinement` (403 otherwise)."""
        ch = self.channels.get(cid)
        if ch is None:
            raise NotFound("No such channel")
        if ch.owner != owner or not may_use(ch.confinement, confinement):
            raise Forbidden("Access denied")
        return ch

    def owned(self, owner: str, client_id: str | None, confinement: Confinement | None = None) -> list[Channel]:
        out = [c for c in self.channels.values() if c.owner == owner and may_use(c.confinement, confinement)]
        if client_id is not None:
            out = [c for c in out if (c.client_id or "") == client_id]
        return out

    def set_timeout(self, ch: Channel, timeout: Any) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not TIMEOUT_MIN <= timeout <= TIMEOUT_MAX:
            raise BadRequest(f"timeout must be an integer between {TIMEOUT_MIN} and {TIMEOUT_MAX} seconds")
        ch.timeout = timeout
        if ch.idle_since is not None:
            ch.idle_since = time.monotonic()
        self._save_meta(ch)

    def delete(self, ch: Channel) -> None:
        for sub in list(ch.subs.values()):
            self._unindex(sub)
            if isinstance(sub, Metronome) and sub.task is not None:
                sub.task.cancel()
        ch.subs.clear()
        ch.closed = True
        if ch.conn is not None:
            ch.conn.end(b"")
        self.channels.pop(ch.id, None)
        self.store.remove(ch.id)
        SSE_CHANNELS.set(len(self.channels))

    # -- subscriptions ----------------------------------------------------------------------------------

    def _room_for_one(self, ch: Channel) -> None:
        if len(ch.subs) >= self.subscriptions_per_channel:
            raise TooManyRequests(f"Too many subscriptions: at most {self.subscriptions_per_channel} per channel")

    async def watch(
        self, ch: Channel, url_base: str, raw: dict[str, Any], sel: InotifySelector, inode: int, path: str
    ) -> tuple[Subscription, bool]:
        """Subscribe `ch` to inode `inode` at namespace path `path`; (subscription, created). The same target
        again updates the existing watch's flags (merged with IN_MASK_ADD, replaced otherwise) and is not
        created."""
        for sub in ch.subs.values():
            if isinstance(sub, Watch) and (sub.inode, sub.recursive, sub.format) == (inode, sel.recursive, sel.format):
                sub.flags = sub.flags | sel.flags if sel.mask_add else sel.flags
                sub.oneshot = sel.oneshot
                sub.selector = {**raw, "flags": sorted(sub.flags) + (["IN_ONESHOT"] if sel.oneshot else [])}
                self._save_meta(ch)
                return sub, False
        self._room_for_one(ch)
        if sel.recursive and sum(1 for w in self.recursive if w.channel.owner == ch.owner) >= self.recursive_per_user:
            raise TooManyRequests(f"Too many recursive watches: at most {self.recursive_per_user} per user")
        since = await self.log.db.read(self.log.head)
        sid = new_id(12)
        w = Watch(
            ch, "inotify", sid, f"{url_base}/inotify/{sid}", raw, since,
            inode=inode, path=path, flags=sel.flags, oneshot=sel.oneshot, recursive=sel.recursive,
            format=sel.format,
        )  # fmt: skip
        self._add(ch, w)
        return w, True

    def metronome_hz(self, owner: str) -> float:
        """The ticks per second of all of a user's metronomes."""
        return sum(
            1.0 / s.spec.interval
            for c in self.channels.values()
            if c.owner == owner
            for s in c.subs.values()
            if isinstance(s, Metronome)
        )

    def metronome(self, ch: Channel, url_base: str, raw: dict[str, Any], spec: MetronomeSelector) -> Subscription:
        """A metronome in `ch`; its selector was checked against this manager's limits (`metronome_selector`
        with `metronome_max_hz`, `metronome_max_message`). A user's metronomes together tick at most
        `metronome_user_hz` times a second (429 past it)."""
        self._room_for_one(ch)
        hz = 1.0 / spec.interval
        used = self.metronome_hz(ch.owner)
        if used + hz > self.metronome_user_hz * (1 + 1e-9):
            raise TooManyRequests(
                f"Too many metronome ticks: {ch.owner}'s metronomes would tick {used + hz:g} times a second, "
                f"at most {self.metronome_user_hz:g} are allowed per user"
            )
        sid = new_id(12)
        m = Metronome(ch, "metronome", sid, f"{url_base}/metronome/{sid}", raw, self.offset, spec=spec)
        self._add(ch, m)
        return m

    def _add(self, ch: Channel, sub: Subscription) -> None:
        ch.subs[sub.key] = sub
        self._index(sub)
        self._save_meta(ch)
        ch.system(sse.system("NEW_SUBSCRIPTION", subscription=sub.url))

    def unsubscribe(self, sub: Subscription) -> None:
        ch = sub.channel
        if sub.key not in ch.subs:
            return
        if sub.type == "inotify":
            ch.queue(sub, _management(sub, "IN_IGNORED"), force=True)
        del ch.subs[sub.key]
        self._unindex(sub)
        if isinstance(sub, Metronome) and sub.task is not None and sub.task is not asyncio.current_task():
            sub.task.cancel()
        self._save_meta(ch)
        ch.system(sse.system("SUBSCRIPTION_CLOSED", subscription=sub.url))

    def _index(self, sub: Subscription) -> None:
        if isinstance(sub, Watch):
            self.by_inode.setdefault(sub.inode, []).append(sub)
            if sub.recursive:
                self.recursive.append(sub)
        elif isinstance(sub, Metronome):
            sub.task = asyncio.create_task(self._tick(sub))

    def _unindex(self, sub: Subscription) -> None:
        if isinstance(sub, Watch):
            watches = self.by_inode.get(sub.inode, [])
            if sub in watches:
                watches.remove(sub)
            if not watches:
                self.by_inode.pop(sub.inode, None)
            if sub in self.recursive:
                self.recursive.remove(sub)

    async def _tick(self, m: Metronome) -> None:
        spec, ch = m.spec, m.channel
        start = time.monotonic() - m.ticks * spec.interval
        while spec.count is None or m.ticks < spec.count:
            due = start + (m.ticks + 1) * spec.interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            while (spec.count is None or m.ticks < spec.count) and start + (m.ticks + 1) * spec.interval <= now:
                m.ticks += 1
                ch.queue(m, spec.message.replace("${username}", ch.owner).replace("${count}", str(m.ticks)))
                if m.ticks % 1000 == 0:
                    await asyncio.sleep(0)
        self.unsubscribe(m)

    # -- dispatch ---------------------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        db = self.log.db
        while True:
            try:
                if not self.by_inode:  # nothing watches: keep up with the head without reading events
                    head = await self.log.wait_beyond(self.offset, 5.0)
                    EVENT_LOG_HEAD.set(head)
                    if self.by_inode:
                        continue  # a watch came while waiting: read what it may concern
                    if head > self.offset:
                        self.dirs.known.clear()  # events passed unread: what they changed is not known
                    self._advance(max(head, self.offset))
                    continue
                batch = await self.log.next_batch(self.offset, 2000, 5.0)
                if not batch:
                    continue
                await self.prepare(batch)
                for ev in batch:
                    self.dispatch(ev)
                self._advance(batch[-1].offset)
                EVENT_LOG_HEAD.set(batch[-1].offset)
                if len(batch) == 2000:
                    EVENT_CONSUMER_LAG.labels("sse").set(max(0, await db.read(self.log.head) - self.offset))
                else:
                    EVENT_CONSUMER_LAG.labels("sse").set(0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("events: dispatcher failed; retrying")
                await asyncio.sleep(1.0)

    def _advance(self, offset: int) -> None:
        self.offset = offset
        for ch in self.channels.values():
            if ch.offset < offset:
                ch.offset = offset
            if ch.journal:
                ch.journal.append(position_line(ch.offset, ch.next_id))
                self._flush(ch)

    def _flush(self, ch: Channel) -> None:
        lines, ch.journal = ch.journal, []
        ch.journal_lines += len(lines)
        if ch.journal_lines > 3 * HELD:
            self.store.rewrite(ch.id, ch.held, ch.offset, ch.next_id, ch.sent)
            ch.journal_lines = len(ch.held)
        else:
            self.store.append(ch.id, lines)
        ch.saved_offset, ch.saved_sent = ch.offset, ch.sent

    async def prepare(self, batch: list[StorageEvent]) -> None:
        """Read what judging a batch's events at delivery takes: who the watching channels' owners are, and
        (if any of them is not an administrator) the permissions of the directories the events name."""
        ids = self.dirs.needed(batch)
        owners = {w.channel.owner for ws in self.by_inode.values() for w in ws}
        unknown = self._subjects.stale(owners)  # new owners, and those looked up too long ago

        def judged_by_permissions() -> bool:
            return bool(ids) and not self._subjects.all_admin(owners)

        if not unknown and not judged_by_permissions():
            return  # e.g. only administrators watch: nothing to read, no thread hop

        def read() -> None:
            if unknown:
                self._subjects.refresh(unknown)
                self._readers.clear()
            if judged_by_permissions():
                with self.log.db.reader.connect() as conn:
                    self.dirs.load(conn, ids)

        await self.log.db.read(read)

    def dispatch(self, ev: StorageEvent) -> None:
        """Queue `ev` for every watch it concerns, as far as each channel may see it (`prepare` first). Events
        of other systems (events/sources) concern no watch: a watch is on this namespace."""
        if ev.source is not None:
            return
        judged: dict[tuple[str, Confinement | None], tuple[bool, bool]] = {}

        def seen(w: Watch) -> tuple[bool, bool]:
            key = (w.channel.owner, w.channel.confinement)
            found = judged.get(key)
            if found is None:
                reader = self._readers.get(key)
                if reader is None:
                    reader = self._readers[key] = Reader(self._subjects.get(key[0]), key[1])
                found = judged[key] = sides(reader, self.dirs, ev)
            return found

        done: set[int] = set()
        for iid in (ev.old_parent_id, ev.parent_id, ev.inode_id):  # Linux's order: from, to, self
            if iid is None or iid in done:
                continue
            done.add(iid)
            for w in list(self.by_inode.get(iid, ())):
                if not w.recursive and ev.offset > w.since and ev.offset > w.channel.offset:
                    self._deliver(w, ev, inotify(ev, w.inode), seen)
        for w in list(self.recursive):
            if ev.offset > w.since and ev.offset > w.channel.offset:
                # its own directory's view and the views below it, in Linux's order: from, to, the rest
                views = inotify(ev, w.inode) + _below(w, ev)
                views.sort(key=lambda p: _ORDER.get(p["mask"][0], 2))
                self._deliver(w, ev, views, seen)
            _follow(w, ev)

    def _deliver(
        self, w: Watch, ev: StorageEvent, payloads: list[dict[str, Any]], seen: Callable[[Watch], tuple[bool, bool]]
    ) -> None:
        """Queue the views of `ev` that `w` asks for and its channel may see (`seen`: judged only when some
        view is asked for)."""
        ch = w.channel
        wanted = [p for p in payloads if p["mask"][0] in w.flags]
        old = new = False
        if wanted:
            old, new = seen(w)
            wanted = [p for p in wanted if view_seen(p["mask"][0], old, new)]
        if wanted and w.key in ch.subs:
            if w.format == "inotify":
                for p in wanted:
                    ch.queue(w, p)
                    if w.oneshot:
                        break
            else:  # one CloudEvent per storage event (its id, the offset, stays unique), with every view's mask
                masks = [",".join(p["mask"]) for p in wanted[: 1 if w.oneshot else None]]
                shown = one_side(ev, old, new)  # half a rename: a delete or a create
                assert shown is not None
                ch.queue(w, cloudevent_dict(shown, inotifymask=";".join(masks)))
            if w.oneshot:
                self.unsubscribe(w)
                return
        if ev.inode_id == w.inode and ev.kind is EventKind.DELETE and w.key in ch.subs:
            self.unsubscribe(w)  # the target is gone: IN_IGNORED, as Linux does after IN_DELETE_SELF
        elif ev.inode_id == w.inode and ev.kind is EventKind.MOVE and not w.recursive:
            w.path = ev.path

    # -- upkeep -----------------------------------------------------------------------------------------

    async def _upkeep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, CHECKPOINT_SECONDS))
            try:
                self.expire()
                self.checkpoint()
            except Exception:
                log.exception("events: channel upkeep failed")

    def expire(self) -> None:
        now = time.monotonic()
        for ch in list(self.channels.values()):
            if ch.conn is None and ch.idle_since is not None and now - ch.idle_since >= ch.timeout:
                log.info("events: channel %s of %s timed out", ch.id, ch.owner)
                self.delete(ch)

    def checkpoint(self, *, force: bool = False) -> None:
        """Record each channel's position and last sent id, so a restart resumes there."""
        for ch in self.channels.values():
            if ch.journal or ch.offset != ch.saved_offset or ch.sent != ch.saved_sent or force:
                ch.journal.append(position_line(ch.offset, ch.next_id))
                ch.journal.append(sent_line(ch.sent))
                self._flush(ch)
            if force:
                self._save_meta(ch)

    def _save_meta(self, ch: Channel) -> None:
        if not ch.closed:
            self.store.save_meta(ch.id, ch.meta())


def _management(sub: Subscription, flag: str) -> dict[str, Any]:
    """IN_IGNORED / IN_Q_OVERFLOW: inotify's bare mask, or for a CloudEvents watch a CloudEvent of its own."""
    if getattr(sub, "format", "inotify") != "cloudevents":
        return {"mask": [flag]}
    kind = "ignored" if flag == "IN_IGNORED" else "overflow"
    return {
        "specversion": "1.0",
        "id": f"{sub.sid}-{sub.channel.next_id}",
        "source": f"/headrace/events/subscriptions/{sub.sid}",
        "type": f"org.headrace.events.{kind}",
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "inotifymask": flag,
    }


def _below(w: Watch, ev: StorageEvent) -> list[dict[str, Any]]:
    """What a recursive watch sees of an event in a directory below its target: the parent's view, named by
    the path relative to the target (as `inotifywait -r` names them)."""
    prefix = "/" if w.path == "/" else w.path + "/"
    isdir = ["IN_ISDIR"] if ev.is_dir else []
    out: list[dict[str, Any]] = []
    if ev.kind is EventKind.MOVE:
        if ev.old_parent_id != w.inode and ev.old_path and ev.old_path.startswith(prefix):
            out.append({"name": ev.old_path[len(prefix) :], "cookie": ev.cookie, "mask": ["IN_MOVED_FROM", *isdir]})
        if ev.parent_id != w.inode and ev.path.startswith(prefix):
            out.append({"name": ev.path[len(prefix) :], "cookie": ev.cookie, "mask": ["IN_MOVED_TO", *isdir]})
        return out
    if ev.parent_id == w.inode or ev.parent_id is None or not ev.path.startswith(prefix):
        return out
    for p in inotify(ev, ev.parent_id):
        if "name" in p:
            out.append({**p, "name": ev.path[len(prefix) :]})
    return out


def _follow(w: Watch, ev: StorageEvent) -> None:
    """Keep a recursive watch's path current when its target or a directory above it is renamed."""
    if ev.kind is EventKind.MOVE and ev.is_dir and ev.old_path:
        old = ev.old_path
        if w.path == old or w.path.startswith(old + "/"):
            w.path = ev.path + w.path[len(old) :]
            w.channel.manager._save_meta(w.channel)
