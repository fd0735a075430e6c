"""The `dcache-sse` source kind: a dCache (or another headrace) frontend's storage events, `/api/v1/events`.

Configuration: `url` (the remote's `/api/v1` base), `path` (the watched directory), `recursive` (also every
directory below it), one credential (`bearer`, `token_file` re-read when it changes, `basic` "user:key"), and
`door` (the WebDAV base through which functions read the files; default: the remote's `/api/v1/doors`).

How it listens. The source makes a channel on the remote (its URL kept in the sink's state, so that a restart
reuses it; its disconnected lifetime raised to the remote's maximum, a day on dCache), subscribes `inotify` to
`path` for the events it maps, and reads the channel's SSE stream (httpx-sse), resuming after a disconnect or a
restart with `Last-Event-ID` = the id stored with the last delivered batch (the position, "<channel id>:<event
id>", so that an id of an older channel is never taken for one of a new channel). A new channel is read
with `Last-Event-ID: -1`: headrace replays what the channel queued since it was made; dCache, which holds no
id -1, says EVENT_LOSS, so the source re-lists once more (without the header dCache would replay nothing and
say nothing of the events between the subscription and the connection). With `recursive`, a remote
that offers a recursive watch (headrace: the inotify selector's schema has `recursive`) gets one; on one that
does not (dCache), every directory is subscribed as it is found: in the listing, and as IN_CREATE|IN_ISDIR or
IN_MOVED_TO|IN_ISDIR reveal it (then it is listed too, so files written into it before its subscription are
not missed).

What it delivers, in the remote's order, each batch with its last event id as the position:
  IN_CLOSE_WRITE          CLOSE_WRITE (a complete file; its size, mtime and checksums from a stat)
  IN_DELETE               DELETE
  IN_MOVED_FROM + _TO     MOVE with old_path (paired by cookie; a half whose other half is not in the watched
                          tree, or does not come within half a second, is a DELETE / a new file or directory)
  IN_CREATE|IN_ISDIR      CREATE, is_dir
  IN_ATTRIB               ATTRIB
everything else is not subscribed to or ignored. Keys: a file version's is "file:<path>:<size>:<mtime>" (one
key per version of a file, whichever way it was learnt: the stream or a re-listing), a directory's
"dir:<path>:<creationTime>", a deletion's "gone:" + the key of what was deleted as last known; moves and
attribute changes, and anything whose stat found nothing, are keyed by the channel and event id.

Losses. On EVENT_LOSS (the remote no longer holds the events after our last id), SUBSCRIPTION_CLOSED or
IN_IGNORED of the watched path, IN_Q_OVERFLOW, CHANNEL_CLOSED, or a 404 for the channel (the remote restarted
without its channels, as dCache does, or the channel timed out), the source re-makes what is gone (channel,
subscriptions), then re-lists the watched tree through the remote's namespace API and delivers what differs
from its snapshot (kept in the sink's state; on EVENT_LOSS and closed watches while the stream stays open, so
that the events the remote still holds after the gap follow the re-listing): new or changed files as
CLOSE_WRITE, new directories as CREATE,
missing files and directories as DELETE (contents before their directory), keyed as above, so a re-listing
never doubles an event the stream delivered or an earlier re-listing did. Then guaranteed, for changes during
the loss:
  - every file that exists at the re-listing and differs (size or mtime) from what was last delivered for its
    path gets exactly one CLOSE_WRITE for its version as listed; intermediate versions are not seen;
  - every path delivered before and missing at the re-listing gets one DELETE;
  - a rename shows as DELETE of the old path and CLOSE_WRITE (CREATE for a directory) of the new one;
  - a file written and deleted during the loss is never seen; attribute changes are not re-derived;
  - the re-listing's events come in path order, not in the order things happened.
Events queued in the new channel while the re-listing runs are delivered after it; a file version both in
the listing and in them is delivered once (same key). A crash between a delivery and the snapshot's
periodic save may make a later re-listing re-deliver a rename as delete + create (nothing else: file
versions and deletions keep their keys). The first start takes the listing as its baseline and delivers
nothing for what already exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from headrace.events.model import EventKind
from headrace.events.sources.base import Fenced, RemoteEvent, RemoteFiles, Sink, SourceConfigError
from headrace.events.sources.remote_http import (
    CREDENTIAL_KEYS,
    Credentials,
    DoorFiles,
    client,
    detail_of,
    discover_door,
    raise_for,
)

log = logging.getLogger(__name__)

KEYS = frozenset({"url", "path", "recursive", "door", *CREDENTIAL_KEYS})
#: What the source subscribes to: the events it maps, and IN_CREATE for new directories.
FLAGS = ["IN_CLOSE_WRITE", "IN_DELETE", "IN_MOVED_FROM", "IN_MOVED_TO", "IN_CREATE", "IN_ATTRIB"]
CHANNEL_TIMEOUT = 86400  # the longest both dCache and headrace allow: a source may be down a day
BATCH = 500  # SSE events per delivery
MOVE_WAIT = 0.5  # s: how long a trailing IN_MOVED_FROM waits for its IN_MOVED_TO
SNAPSHOT_EVERY = 5.0  # s: how often the snapshot is saved while events change it
STATS = 16  # concurrent stats of closed files
BACKOFF_MAX = 5.0
GIVE_UP = 30  # consecutive failed connections before the error is raised to the runner (which restarts)
KEEPALIVE = 30  # s between the keep-alives a headrace remote is asked for
SILENCE = 120.0  # s without a byte after which the stream is read again from a new connection

#: A snapshot entry: [size, mtime (ms), is_dir, creationTime (ms)].
Entry = list[Any]


@dataclass(frozen=True)
class Config:
    url: str
    path: str
    recursive: bool
    door: str | None


def parse(config: Mapping[str, Any]) -> Config:
    if not isinstance(config, Mapping):
        raise SourceConfigError("The configuration must be a JSON object")
    unknown = sorted(set(config) - KEYS)
    if unknown:
        known = ", ".join(sorted(KEYS))
        raise SourceConfigError(f"Unknown option for dcache-sse: {', '.join(unknown)} (known: {known})")
    url = config.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise SourceConfigError("url must be the remote frontend's http(s) /api/v1 base")
    path = config.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise SourceConfigError("path must be an absolute path")
    path = "/" + "/".join(p for p in path.split("/") if p)
    recursive = config.get("recursive", False)
    if not isinstance(recursive, bool):
        raise SourceConfigError("recursive must be true or false")
    door = config.get("door")
    if door is not None and (not isinstance(door, str) or urlsplit(door).scheme not in ("http", "https")):
        raise SourceConfigError("door must be an http(s) URL")
    return Config(url=url.rstrip("/"), path=path, recursive=recursive, door=door.rstrip("/") if door else None)


def build(name: str, config: Mapping[str, Any]) -> DcacheSseSource:
    """The source `name` (SourceConfigError for a bad configuration; nothing is contacted)."""
    cfg = parse(config)
    return DcacheSseSource(name, cfg, Credentials(config))


class ChannelGone(Exception):
    """The channel is no longer on the remote (404, CHANNEL_CLOSED)."""


class _LazyDoor:
    """RemoteFiles for a source whose door is asked of the remote on first use."""

    def __init__(self, source: DcacheSseSource) -> None:
        self.source = source

    async def open(self, path: str, start: int = 0, end: int | None = None) -> Any:
        files = await self.source.door_files()
        if files is None:
            raise FileNotFoundError(f"{self.source.cfg.url} advertises no WebDAV door to read {path} through")
        return await files.open(path, start, end)


class DcacheSseSource:
    def __init__(self, name: str, cfg: Config, credentials: Credentials) -> None:
        self.name = name
        self.cfg = cfg
        self.credentials = credentials
        self._door: DoorFiles | None = DoorFiles(cfg.door, credentials) if cfg.door else None
        self._door_asked = cfg.door is not None
        #: None: ask the remote whether its inotify watch can be recursive; tests force False to exercise
        #: the per-directory watches dCache needs against a headrace remote.
        self.remote_recursive: bool | None = None

    def files(self) -> RemoteFiles | None:
        if self._door is not None:
            return self._door
        return None if self._door_asked else _LazyDoor(self)

    async def door_files(self) -> DoorFiles | None:
        if not self._door_asked:
            async with client() as http:
                door = await discover_door(http, self.cfg.url, self.credentials)
            self._door = DoorFiles(door, self.credentials) if door else None
            self._door_asked = True
        return self._door

    async def run(self, sink: Sink) -> None:
        async with client() as http:
            await _Session(self, sink, http).run()


class _Session:
    """One run of a source: its channel, subscriptions, snapshot and position."""

    def __init__(self, source: DcacheSseSource, sink: Sink, http: httpx.AsyncClient) -> None:
        self.source = source
        self.cfg = source.cfg
        self.sink = sink
        self.http = http
        self.channel: str | None = None
        self.subs: dict[str, str] = {}  # subscription URL -> watched directory
        self.recursive_watch = False
        self.last_id = -1
        self.snapshot: dict[str, Entry] | None = None
        self.snapshot_dirty = False
        self.snapshot_saved = 0.0
        self.later: list[str] = []  # directories found in a batch, to watch and list after it
        self.dropped: list[str] = []  # subscriptions of directories that left the tree, to delete after it
        self.door: DoorFiles | None = None
        self.connected = False  # the last stream was opened (a drop after that is no failure to connect)

    # -- plumbing -------------------------------------------------------------------------------------

    def headers(self, **extra: str) -> dict[str, str]:
        return {**self.source.credentials.headers(), **extra}

    @property
    def channel_id(self) -> str:
        return (self.channel or "").rsplit("/", 1)[-1]

    def position(self) -> str:
        return f"{self.channel_id}:{self.last_id}"

    async def save_channel(self) -> None:
        await self.sink.set_state(
            "channel", {"url": self.channel, "subs": self.subs, "recursive": self.recursive_watch}
        )

    async def save_snapshot(self, force: bool = False) -> None:
        if self.snapshot is None or not (self.snapshot_dirty or force):
            return
        await self.sink.set_state("snapshot", self.snapshot)
        self.snapshot_dirty = False
        self.snapshot_saved = time.monotonic()

    def url_of(self, path: str) -> str | None:
        return self.door.url(path) if self.door else None

    # -- the loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.door = await self.source.door_files()
        state = await self.sink.state("channel")
        if isinstance(state, dict) and state.get("url"):
            self.channel = state["url"]
            self.subs = dict(state.get("subs") or {})
            self.recursive_watch = bool(state.get("recursive"))
        snapshot = await self.sink.state("snapshot")
        self.snapshot = snapshot if isinstance(snapshot, dict) else None
        position = await self.sink.position()
        if position and self.channel:
            chan, _, last = position.rpartition(":")
            if chan == self.channel_id and last.lstrip("-").isdigit():
                self.last_id = int(last)
        failures, backoff = 0, 0.1
        relist = self.channel is None or self.snapshot is None
        try:
            while True:
                self.connected = False
                try:
                    if self.channel is None:
                        await self.new_channel()
                        relist = True
                    if relist or self.cfg.path not in self.subs.values():  # (the watched path was gone)
                        await self.relist()
                        relist = False
                    if await self.stream():  # the remote ended the stream (a shutdown): reconnect
                        failures, backoff = 0, 0.1
                except Fenced:
                    raise  # another process holds the source now
                except ChannelGone as exc:
                    log.info("source %s: channel %s gone (%s): making a new one", self.source.name, self.channel, exc)
                    self.channel = None
                    continue
                except (httpx.TransportError, OSError, RuntimeError) as exc:
                    failures = 1 if self.connected else failures + 1
                    backoff = 0.1 if self.connected else backoff
                    if failures >= GIVE_UP or (isinstance(exc, PermissionError) and failures >= 3):
                        raise
                    log.info("source %s: %s; retrying in %.1f s", self.source.name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.save_snapshot())

    async def new_channel(self) -> None:
        base = f"{self.cfg.url}/events/channels"
        body = {"client-id": f"headrace-{self.source.name}"}
        response = await self.http.post(base, headers=self.headers(), json=body)
        raise_for(response, "POST /events/channels")
        self.channel = response.headers["location"]
        patched = await self.http.patch(self.channel, headers=self.headers(), json={"timeout": CHANNEL_TIMEOUT})
        if patched.status_code == 400:  # a remote with a shorter maximum keeps its default
            log.info("source %s: channel timeout refused: %s", self.source.name, detail_of(patched))
        self.subs = {}
        self.last_id = -1
        self.recursive_watch = False
        if self.cfg.recursive:
            self.recursive_watch = await self.offers_recursive()
        await self.save_channel()

    async def offers_recursive(self) -> bool:
        if self.source.remote_recursive is not None:
            return self.source.remote_recursive
        response = await self.http.get(f"{self.cfg.url}/events/eventTypes/inotify/selector", headers=self.headers())
        if not response.is_success:
            return False
        with contextlib.suppress(ValueError, AttributeError):
            return "recursive" in (response.json().get("properties") or {})
        return False

    async def subscribe(self, directory: str) -> bool:
        """Watch `directory` (False: it is not there, or not a directory)."""
        assert self.channel is not None
        if directory in self.subs.values():
            return True
        selector: dict[str, Any] = {"path": directory, "flags": [*FLAGS, "IN_ONLYDIR"]}
        if self.recursive_watch:
            selector["recursive"] = True
        response = await self.http.post(f"{self.channel}/subscriptions/inotify", headers=self.headers(), json=selector)
        if response.status_code == 404:
            raise ChannelGone(detail_of(response))
        if response.status_code == 400 and any(
            s in response.text for s in ("Not found", "Failed condition", "not a directory")
        ):
            return False
        if response.status_code == 400 and "Permission denied" in response.text:
            raise PermissionError(f"subscribing to {directory}: {detail_of(response)}")
        if response.status_code not in (201, 303):
            raise_for(response, f"subscribing to {directory}")
            raise RuntimeError(f"subscribing to {directory}: {detail_of(response)}")
        self.subs[response.headers["location"]] = directory
        await self.save_channel()
        return True

    # -- the stream -----------------------------------------------------------------------------------

    async def stream(self) -> bool:
        """Read the channel until the remote ends the stream (True) or something is wrong (raises)."""
        assert self.channel is not None
        headers = self.headers(**{"Last-Event-ID": str(self.last_id)})
        # headrace's frontend sends a keep-alive comment every KEEPALIVE s when asked (dCache ignores the
        # parameter): a connection silent for longer than SILENCE is taken for dead and made again
        timeout = httpx.Timeout(30, read=SILENCE)
        params = {"keepalive": str(KEEPALIVE)}
        queue: asyncio.Queue[ServerSentEvent | BaseException | None] = asyncio.Queue()
        async with aconnect_sse(
            self.http, "GET", self.channel, headers=headers, params=params, timeout=timeout
        ) as source:
            response = source.response
            if not response.is_success:
                await response.aread()
                if response.status_code == 404:
                    raise ChannelGone(detail_of(response))
                raise_for(response, "GET the channel")
            self.connected = True

            async def read() -> None:
                try:
                    async for sse in source.aiter_sse():
                        queue.put_nowait(sse)
                    queue.put_nowait(None)
                except BaseException as exc:  # handed to the consumer
                    queue.put_nowait(exc)

            reader = asyncio.ensure_future(read())
            try:
                return await self.consume(queue)
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader

    async def consume(self, queue: asyncio.Queue[ServerSentEvent | BaseException | None]) -> bool:
        last_delivery = time.monotonic()
        while True:
            batch: list[ServerSentEvent] = []
            item = await queue.get()
            ended = False
            while True:
                if item is None:
                    ended = True
                    break
                if isinstance(item, BaseException):
                    if batch:
                        await self.process(batch)
                    raise item
                batch.append(item)
                if len(batch) >= BATCH:
                    break
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    if _moved_from(batch[-1]):  # give its IN_MOVED_TO a moment to arrive
                        try:
                            item = await asyncio.wait_for(queue.get(), MOVE_WAIT)
                            continue
                        except TimeoutError:
                            pass
                    break
            if batch:
                delivered = await self.process(batch, force=time.monotonic() - last_delivery > 2.0)
                if delivered:
                    last_delivery = time.monotonic()
            if ended:
                return True

    async def process(self, batch: list[ServerSentEvent], *, force: bool = True) -> bool:
        """Map and deliver one batch; SYSTEM events act where they stand. True if something was delivered."""
        numbered: list[tuple[int, dict[str, Any]]] = []
        delivered = False
        for sse in batch:
            if sse.event == "SYSTEM":
                try:
                    kind = json.loads(sse.data).get("type")
                    data = json.loads(sse.data)
                except (ValueError, AttributeError):
                    continue
                if kind in ("EVENT_LOSS", "SUBSCRIPTION_CLOSED", "CHANNEL_CLOSED", "COMPETING_CLIENT", "SHUTDOWN"):
                    delivered |= await self.deliver(numbered)
                    numbered = []
                if kind == "EVENT_LOSS":  # re-list now; the stream goes on with the oldest events still held
                    await self.relist("events lost")
                if kind == "SUBSCRIPTION_CLOSED":
                    await self.closed(str(data.get("subscription")))
                elif kind == "CHANNEL_CLOSED":
                    raise ChannelGone("CHANNEL_CLOSED")
                elif kind == "COMPETING_CLIENT":
                    raise RuntimeError("another client connected to this source's channel")
                elif kind == "SHUTDOWN":
                    return delivered
                continue
            if sse.id is None or not sse.id.lstrip("-").isdigit():
                continue
            try:
                data = json.loads(sse.data)
            except ValueError:
                continue
            if int(sse.id) <= self.last_id:
                continue  # replayed twice (a reconnect raced a batch)
            numbered.append((int(sse.id), data))
        if numbered or force:
            delivered |= await self.deliver(numbered, force=force)
        return delivered

    async def closed(self, subscription: str) -> None:
        directory = self.subs.pop(subscription, None)
        await self.save_channel()
        if directory == self.cfg.path:
            await self.relist(f"the watch on {directory} closed")

    async def deliver(self, numbered: list[tuple[int, dict[str, Any]]], *, force: bool = True) -> bool:
        if not numbered:
            return False
        events: list[RemoteEvent] = []
        relist: str | None = None
        stats = await self.stat_closed(numbered)
        pending_from: dict[str, tuple[int, str, bool]] = {}
        out: list[tuple[int, RemoteEvent | tuple[int, str, bool] | None]] = []
        for eid, data in numbered:
            ev = data.get("event") if isinstance(data, dict) else None
            if not isinstance(ev, dict):
                continue  # not an inotify event (another kind of subscription in the channel)
            mask = ev.get("mask") or []
            directory = self.subs.get(str(data.get("subscription")))
            if not mask or directory is None:
                continue
            flag, is_dir = mask[0], "IN_ISDIR" in mask
            if flag in ("IN_Q_OVERFLOW",):
                relist = "the remote's queue overflowed"
                continue
            if flag == "IN_IGNORED":  # the watch closed: after this batch, as SUBSCRIPTION_CLOSED
                del self.subs[str(data.get("subscription"))]
                await self.save_channel()
                if directory == self.cfg.path:
                    relist = f"the watch on {directory} closed"
                continue
            name = ev.get("name")
            if not name:
                continue  # a directory's own events: its parent's watch names them
            path = _join(directory, name)
            if not _within(path, self.cfg.path, self.cfg.recursive):
                continue
            if flag == "IN_MOVED_FROM" and ev.get("cookie"):
                pending_from[str(ev["cookie"])] = (eid, path, is_dir)
                out.append((eid, (eid, path, is_dir)))
                continue
            if flag == "IN_MOVED_TO" and str(ev.get("cookie")) in pending_from:
                _, old, _ = pending_from.pop(str(ev["cookie"]))
                out = [(i, e) for i, e in out if not (isinstance(e, tuple) and e[1] == old)]
                out.append((eid, self.moved(eid, name, old, path, is_dir)))
                continue
            made = await self.one(eid, flag, name, path, is_dir, stats)
            if made is not None:
                out.append((eid, made))
        for _, e in out:
            if isinstance(e, tuple):  # moved out of the watched tree: gone from it
                e = self.deleted(e[0], e[1].rsplit("/", 1)[-1], e[1], e[2])
            if isinstance(e, RemoteEvent):
                events.append(e)
        self.last_id = numbered[-1][0]
        await self.sink.deliver(events, self.position())
        if self.later:
            await self.list_new()
        if self.dropped:
            await self.unsubscribe()
        if time.monotonic() - self.snapshot_saved > SNAPSHOT_EVERY:
            await self.save_snapshot()
        if relist:
            await self.relist(relist)
        return True

    async def stat_closed(self, numbered: list[tuple[int, dict[str, Any]]]) -> dict[str, dict[str, Any] | None]:
        """The stats of the files the batch's IN_CLOSE_WRITE / IN_MOVED_TO and directories' IN_CREATE name."""
        paths: list[str] = []
        for _, data in numbered:
            ev = data.get("event") if isinstance(data, dict) else None
            if not isinstance(ev, dict):
                continue  # not an inotify event (another kind of subscription in the channel)
            mask = ev.get("mask") or []
            directory = self.subs.get(str(data.get("subscription")))
            if (
                directory
                and ev.get("name")
                and mask
                and (mask[0] in ("IN_CLOSE_WRITE", "IN_MOVED_TO") or mask == ["IN_CREATE", "IN_ISDIR"])
            ):
                paths.append(_join(directory, ev["name"]))
        limit = asyncio.Semaphore(STATS)

        async def one(path: str) -> dict[str, Any] | None:
            async with limit:
                return await self.stat(path)

        unique = list(dict.fromkeys(paths))
        found = await asyncio.gather(*(one(p) for p in unique))
        return dict(zip(unique, found, strict=True))

    async def stat(self, path: str) -> dict[str, Any] | None:
        response = await self.http.get(
            f"{self.cfg.url}/namespace{quote(path)}", params={"checksum": "true"}, headers=self.headers()
        )
        if response.status_code in (403, 404):  # gone already, or not ours to read: keyed by the event id
            return None
        raise_for(response, f"stat {path}")
        node: dict[str, Any] = response.json()
        return node

    def sse_key(self, eid: int, name: str) -> str:
        return f"sse:{self.channel_id}:{eid}:{name}"

    async def one(
        self, eid: int, flag: str, name: str, path: str, is_dir: bool, stats: dict[str, dict[str, Any] | None]
    ) -> RemoteEvent | None:
        remote = {"id": eid, "flag": flag, "name": name}
        if flag in ("IN_CLOSE_WRITE", "IN_MOVED_TO") and not is_dir:
            return self.file(path, stats.get(path), self.sse_key(eid, name), remote)
        if flag in ("IN_CREATE", "IN_MOVED_TO") and is_dir:
            node = stats.get(path)
            if self.cfg.recursive and (flag == "IN_MOVED_TO" or not self.recursive_watch):
                return await self.new_directory(path, node, self.sse_key(eid, name), remote)
            return self.directory(path, node, self.sse_key(eid, name), remote)
        if flag == "IN_DELETE":
            return self.deleted(eid, name, path, is_dir)
        if flag == "IN_ATTRIB":
            return RemoteEvent(
                key=self.sse_key(eid, name), kind=EventKind.ATTRIB, path=path, is_dir=is_dir,
                url=None if is_dir else self.url_of(path), detail={"remote": remote},
            )  # fmt: skip
        return None

    def file(self, path: str, node: dict[str, Any] | None, fallback: str, remote: Mapping[str, Any]) -> RemoteEvent:
        detail: dict[str, Any] = {"remote": dict(remote)}
        if node is None or node.get("fileType") == "DIR":
            url = self.url_of(path)
            return RemoteEvent(key=fallback, kind=EventKind.CLOSE_WRITE, path=path, url=url, detail=detail)
        entry = _entry(node)
        self.remember(path, entry)
        if node.get("checksums"):
            detail["checksums"] = node["checksums"]
        if node.get("pnfsId"):
            detail["pnfsId"] = node["pnfsId"]
        return RemoteEvent(
            key=_file_key(path, entry), kind=EventKind.CLOSE_WRITE, path=path, size=entry[0],
            time=entry[1] * 1000, url=self.url_of(path), detail=detail,
        )  # fmt: skip

    def version(self, path: str, entry: Entry, detail: Mapping[str, Any]) -> RemoteEvent:
        """The CLOSE_WRITE of one version of a file, as a listing shows it."""
        return RemoteEvent(
            key=_file_key(path, entry), kind=EventKind.CLOSE_WRITE, path=path, size=entry[0],
            time=entry[1] * 1000, url=self.url_of(path), detail=detail,
        )  # fmt: skip

    def directory(self, path: str, node: dict[str, Any] | None, fallback: str, remote: Any) -> RemoteEvent:
        key = fallback
        if node is not None:
            entry = _entry(node)
            self.remember(path, entry)
            key = _dir_key(path, entry)
        return RemoteEvent(key=key, kind=EventKind.CREATE, path=path, is_dir=True, detail={"remote": dict(remote)})

    async def new_directory(self, path: str, node: dict[str, Any] | None, fallback: str, remote: Any) -> RemoteEvent:
        """A directory that appeared in a tree watched one directory at a time: its CREATE, then a watch on it
        and, through a listing, what is already in it (delivered in the next batch: it is keyed by version)."""
        made = self.directory(path, node, fallback, remote)
        if node is not None:
            self.later.append(path)
        return made

    def moved(self, eid: int, name: str, old: str, new: str, is_dir: bool) -> RemoteEvent:
        if self.snapshot is not None:
            for p in [p for p in self.snapshot if p == old or p.startswith(old + "/")]:
                self.snapshot[new + p[len(old) :]] = self.snapshot.pop(p)
            self.snapshot_dirty = True
        if is_dir and self.cfg.recursive and not self.recursive_watch:
            # a watch follows its directory across a rename: its events now name the new path
            for url, d in self.subs.items():
                if d == old or d.startswith(old + "/"):
                    self.subs[url] = new + d[len(old) :]
            self.later.append(new)
        return RemoteEvent(
            key=self.sse_key(eid, name), kind=EventKind.MOVE, path=new, old_path=old, is_dir=is_dir,
            url=None if is_dir else self.url_of(new), detail={"remote": {"id": eid, "name": name}},
        )  # fmt: skip

    def deleted(self, eid: int, name: str, path: str, is_dir: bool) -> RemoteEvent:
        key = self.sse_key(eid, name)
        if self.snapshot is not None and path in self.snapshot:
            entry = self.snapshot[path]
            key = "gone:" + (_dir_key(path, entry) if entry[2] else _file_key(path, entry))
            for p in [p for p in self.snapshot if p == path or p.startswith(path + "/")]:
                del self.snapshot[p]
            self.snapshot_dirty = True
        if is_dir:  # moved out of the tree (a deleted directory's watch closes by itself): stop following it
            self.dropped += [u for u, d in self.subs.items() if d == path or d.startswith(path + "/")]
            for url in self.dropped:
                self.subs.pop(url, None)
        return RemoteEvent(key=key, kind=EventKind.DELETE, path=path, is_dir=is_dir, detail={"remote": {"id": eid}})

    def remember(self, path: str, entry: Entry) -> None:
        if self.snapshot is not None and self.snapshot.get(path) != entry:
            self.snapshot[path] = entry
            self.snapshot_dirty = True

    # -- re-listing -----------------------------------------------------------------------------------

    async def relist(self, why: str = "") -> None:
        """Watch and list the tree; deliver what differs from the snapshot (nothing on a first start). Done
        while the stream stays connected: what the remote sends meanwhile waits in the reader's queue."""
        if why:
            log.info("source %s: %s: re-listing %s", self.source.name, why, self.cfg.path)
        listed: dict[str, Entry] = {}
        await self.walk(self.cfg.path, listed, root=True)
        events: list[RemoteEvent] = []
        if self.snapshot is not None:
            events = self.differences(self.snapshot, listed)
        self.snapshot = listed
        await self.sink.deliver(events, self.position())
        await self.save_snapshot(force=True)
        log.info(
            "source %s: re-listed %s: %d entries, %d changes", self.source.name, self.cfg.path, len(listed), len(events)
        )

    async def walk(self, directory: str, listed: dict[str, Entry], root: bool = False) -> None:
        watch = root or (self.cfg.recursive and not self.recursive_watch)
        if watch and not await self.subscribe(directory):
            if root:
                raise RuntimeError(f"the watched path {directory} is not a directory on {self.cfg.url}")
            return
        response = await self.http.get(
            f"{self.cfg.url}/namespace{quote(directory)}", params={"children": "true"}, headers=self.headers()
        )
        if response.status_code in (403, 404) and not root:  # gone, or closed to this user: not followed
            return
        raise_for(response, f"listing {directory}")
        for child in response.json().get("children") or []:
            name = child.get("fileName")
            if not name:
                continue
            path = _join(directory, name)
            entry = _entry(child)
            listed[path] = entry
            if entry[2] and self.cfg.recursive:
                await self.walk(path, listed)

    def differences(self, before: Mapping[str, Entry], after: Mapping[str, Entry]) -> list[RemoteEvent]:
        out: list[RemoteEvent] = []
        relisted = {"relisted": True}
        gone = [p for p in before if p not in after or before[p][2] != after[p][2]]
        for path in sorted(gone, key=lambda p: (-p.count("/"), p)):  # contents before their directory
            entry = before[path]
            key = "gone:" + (_dir_key(path, entry) if entry[2] else _file_key(path, entry))
            out.append(RemoteEvent(key=key, kind=EventKind.DELETE, path=path, is_dir=bool(entry[2]), detail=relisted))
        for path in sorted(after, key=lambda p: (p.count("/"), p)):
            entry, old = after[path], before.get(path)
            if entry[2]:
                if old is None or not old[2]:
                    key = _dir_key(path, entry)
                    out.append(RemoteEvent(key=key, kind=EventKind.CREATE, path=path, is_dir=True, detail=relisted))
            elif old is None or old[2] or old[:2] != entry[:2]:
                out.append(self.version(path, entry, relisted))
        return out

    async def unsubscribe(self) -> None:
        dropped, self.dropped = self.dropped, []
        await self.save_channel()
        for url in dropped:
            with contextlib.suppress(httpx.HTTPError):
                await self.http.delete(url, headers=self.headers())

    async def list_new(self) -> None:
        """Watch and list the directories that appeared in the last batch (a tree watched directory by
        directory), delivering the files and directories already in them."""
        while self.later:
            directory = self.later.pop(0)
            listed: dict[str, Entry] = {}
            await self.walk(directory, listed)
            events: list[RemoteEvent] = []
            for path in sorted(listed, key=lambda p: (p.count("/"), p)):
                entry = listed[path]
                if self.snapshot is not None and self.snapshot.get(path) == entry:
                    continue
                self.remember(path, entry)
                if entry[2]:
                    events.append(RemoteEvent(key=_dir_key(path, entry), kind=EventKind.CREATE, path=path, is_dir=True))
                else:
                    events.append(self.version(path, entry, {"listed": True}))
            if events:
                await self.sink.deliver(events, self.position())


def _entry(node: Mapping[str, Any]) -> Entry:
    is_dir = node.get("fileType") == "DIR"
    size = 0 if is_dir else int(node.get("size") or 0)
    return [size, int(node.get("mtime") or 0), is_dir, int(node.get("creationTime") or 0)]


def _file_key(path: str, entry: Sequence[Any]) -> str:
    return f"file:{path}:{entry[0]}:{entry[1]}"


def _dir_key(path: str, entry: Sequence[Any]) -> str:
    return f"dir:{path}:{entry[3]}"


def _join(directory: str, name: str) -> str:
    return ("" if directory == "/" else directory) + "/" + name


def _within(path: str, root: str, recursive: bool) -> bool:
    prefix = "/" if root == "/" else root + "/"
    if not path.startswith(prefix):
        return False
    return recursive or "/" not in path[len(prefix) :]


def _moved_from(sse: ServerSentEvent) -> bool:
    return sse.event == "inotify" and '"IN_MOVED_FROM"' in sse.data
