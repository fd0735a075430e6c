"""The dcache-sse kind's mapping of a channel's events, in this process: SSE frames as dCache sends them to a
session whose remote is an httpx MockTransport (stats, listings), delivering to an in-memory sink. What a
real remote does end to end is tests/test_source_dcache_sse.py's."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent

from headrace.events.sources import base, dcache_sse
from headrace.events.sources.remote_http import Credentials, DoorFiles
from source_support import MemorySink

API = "http://remote.example/api/v1"
CHANNEL = f"{API}/events/channels/chan1"
SUB = f"{CHANNEL}/subscriptions/inotify/s1"
SUBDIR = f"{CHANNEL}/subscriptions/inotify/s2"

#: The remote's namespace: path -> stat JSON.
NODES: dict[str, dict[str, Any]] = {
    "/w": {"fileType": "DIR", "size": 512, "mtime": 1, "creationTime": 1},
    "/w/a": {"fileType": "REGULAR", "size": 3, "mtime": 1000, "creationTime": 900, "pnfsId": "P1",
             "checksums": [{"type": "ADLER32", "value": "024d0127"}]},
    "/w/sub": {"fileType": "DIR", "size": 512, "mtime": 2000, "creationTime": 2000},
    "/w/in": {"fileType": "DIR", "size": 512, "mtime": 3000, "creationTime": 3000},
    "/w/in/x": {"fileType": "REGULAR", "size": 7, "mtime": 3001, "creationTime": 3001},
}  # fmt: skip


#: What the session asked of the remote besides stats and listings: (method, URL path).
CALLS: list[tuple[str, str]] = []


def remote(request: httpx.Request) -> httpx.Response:
    if "/events/channels/" in request.url.path:
        CALLS.append((request.method, request.url.path))
        if request.method == "POST":  # a subscription: its URL names the directory
            target = json.loads(request.content)["path"]
            return httpx.Response(201, headers={"Location": f"{CHANNEL}/subscriptions/inotify/at{target}"})
        return httpx.Response(204)
    path = request.url.path.removeprefix("/api/v1/namespace")
    node = NODES.get(path)
    if node is None:
        return httpx.Response(404, json={"status": "404", "title": "Not Found", "detail": "No such file"})
    if request.url.params.get("children") == "true":
        prefix = path.rstrip("/") + "/"
        kids = [{**n, "fileName": p[len(prefix) :]} for p, n in NODES.items() if p.startswith(prefix)]
        return httpx.Response(200, json={**node, "children": [k for k in kids if "/" not in k["fileName"]]})
    return httpx.Response(200, json=node)


def session(sink: MemorySink, recursive_watch: bool = True) -> dcache_sse._Session:
    source = dcache_sse.build("s", {"url": API, "path": "/w", "recursive": True, "basic": "u:k"})
    http = httpx.AsyncClient(transport=httpx.MockTransport(remote))
    s = dcache_sse._Session(source, sink, http)
    s.channel = CHANNEL
    s.subs = {SUB: "/w", SUBDIR: "/w/sub"}
    s.recursive_watch = recursive_watch
    s.snapshot = {}
    s.door = DoorFiles("http://door.example:2880", source.credentials)
    return s


def inotify(eid: int, mask: list[str], name: str | None = None, cookie: str | None = None, sub: str = SUB) -> Any:
    ev: dict[str, Any] = {"mask": mask}
    if name is not None:
        ev["name"] = name
    if cookie is not None:
        ev["cookie"] = cookie
    return ServerSentEvent(event="inotify", data=json.dumps({"event": ev, "subscription": sub}), id=str(eid))


def system(kind: str, **fields: Any) -> ServerSentEvent:
    return ServerSentEvent(event="SYSTEM", data=json.dumps({"type": kind, **fields}))


def test_a_batch_becomes_remote_events_in_order_with_the_last_id_as_position() -> None:
    sink = MemorySink()
    s = session(sink)
    batch = [
        inotify(0, ["IN_CREATE"], "a"),  # a file's IN_CREATE: not an event of its own
        inotify(1, ["IN_CLOSE_WRITE"], "a"),
        inotify(2, ["IN_ATTRIB"], "a"),
        inotify(3, ["IN_MOVED_FROM"], "a", cookie="c1"),
        inotify(4, ["IN_MOVED_TO"], "b", cookie="c1"),
        inotify(5, ["IN_MOVED_FROM"], "x", cookie="c2"),  # moved out of the watched tree
        inotify(6, ["IN_CREATE", "IN_ISDIR"], "sub"),
        inotify(7, ["IN_DELETE"], "b"),
        inotify(8, ["IN_OPEN"], "b"),
    ]
    assert asyncio.run(s.process(batch))
    got = [(e.kind.value, e.path, e.key) for e in sink.events]
    assert got == [
        ("CLOSE_WRITE", "/w/a", "file:/w/a:3:1000"),
        ("ATTRIB", "/w/a", "sse:chan1:2:a"),
        ("MOVE", "/w/b", "sse:chan1:4:b"),
        ("DELETE", "/w/x", "sse:chan1:5:x"),
        ("CREATE", "/w/sub", "dir:/w/sub:2000"),
        ("DELETE", "/w/b", "gone:file:/w/b:3:1000"),  # the moved file, as last known
    ]
    closed = sink.events[0]
    assert closed.size == 3 and closed.time == 1_000_000 and closed.url == "http://door.example:2880/w/a"
    assert closed.detail["pnfsId"] == "P1" and closed.detail["checksums"][0]["type"] == "ADLER32"
    assert sink.events[2].old_path == "/w/a" and sink.events[4].is_dir
    assert sink.pos == "chan1:8" and s.last_id == 8
    # ids at or below the position (a reconnect's replay) are not delivered again
    asyncio.run(s.process([inotify(7, ["IN_DELETE"], "b"), inotify(9, ["IN_DELETE"], "a")]))
    assert [e.key for e in sink.events[6:]] == ["sse:chan1:9:a"] and sink.pos == "chan1:9"


def test_events_of_a_subdirectory_are_named_by_its_path_and_self_events_are_skipped() -> None:
    sink = MemorySink()
    s = session(sink, recursive_watch=False)
    asyncio.run(
        s.process(
            [
                inotify(0, ["IN_ATTRIB"], sub=SUBDIR),  # the directory's own event: its parent's watch names it
                inotify(1, ["IN_DELETE"], "f", sub=SUBDIR),
            ]
        )
    )
    assert [(e.kind.value, e.path) for e in sink.events] == [("DELETE", "/w/sub/f")]


@pytest.mark.parametrize(
    "frame",
    [
        system("EVENT_LOSS"),
        system("SUBSCRIPTION_CLOSED", subscription=SUB),
        inotify(1, ["IN_Q_OVERFLOW"]),
        inotify(1, ["IN_IGNORED"]),
    ],
)
def test_losses_deliver_what_came_before_then_relist_and_go_on(frame: ServerSentEvent) -> None:
    CALLS.clear()
    sink = MemorySink()
    s = session(sink)
    s.snapshot = {"/w/a": [3, 1000, False, 900], "/w/old": [1, 1, False, 1]}
    after = inotify(5, ["IN_DELETE"], "after", sub=SUBDIR)
    asyncio.run(s.process([inotify(0, ["IN_DELETE"], "before"), frame, after]))
    got = [(e.kind.value, e.path, bool(e.detail.get("relisted"))) for e in sink.events]
    relisted = [  # the re-listing's differences from the snapshot: the gone first, then by depth
        ("DELETE", "/w/old", True),
        ("CREATE", "/w/in", True),
        ("CREATE", "/w/sub", True),
        ("CLOSE_WRITE", "/w/in/x", True),
    ]
    before, later = [("DELETE", "/w/before", False)], [("DELETE", "/w/sub/after", False)]
    # a SYSTEM event is acted on where it stands; a watch's own overflow or end after its batch
    assert got == (before + relisted + later if frame.event == "SYSTEM" else before + later + relisted)
    assert sink.pos == "chan1:5"
    resubscribed = [c for c in CALLS if c[0] == "POST"]
    assert len(resubscribed) == (1 if "SUBSCRIPTION_CLOSED" in frame.data or "IN_IGNORED" in frame.data else 0)


@pytest.mark.parametrize(
    ("frame", "raised"),
    [(system("CHANNEL_CLOSED"), dcache_sse.ChannelGone), (system("COMPETING_CLIENT"), RuntimeError)],
)
def test_a_lost_channel_or_a_competitor_ends_the_stream(frame: ServerSentEvent, raised: type) -> None:
    sink = MemorySink()
    with pytest.raises(raised):
        asyncio.run(session(sink).process([inotify(0, ["IN_DELETE"], "before"), frame]))
    assert [e.path for e in sink.events] == ["/w/before"]


def test_a_closed_subdirectory_watch_is_dropped_quietly() -> None:
    sink = MemorySink()
    s = session(sink)
    asyncio.run(s.process([system("SUBSCRIPTION_CLOSED", subscription=SUBDIR)]))
    assert SUBDIR not in s.subs and sink.state_now("channel")["subs"] == {SUB: "/w"}


def test_a_relisting_delivers_the_differences_with_the_streams_keys() -> None:
    s = session(MemorySink())
    before = {
        "/w/same": [1, 10, False, 5],
        "/w/changed": [1, 10, False, 5],
        "/w/gone": [2, 20, False, 5],
        "/w/olddir": [0, 30, True, 30],
        "/w/olddir/inner": [3, 31, False, 31],
    }
    after = {
        "/w/same": [1, 10, False, 5],
        "/w/changed": [4, 40, False, 5],
        "/w/newdir": [0, 50, True, 50],
        "/w/newdir/new": [5, 51, False, 51],
    }
    got = [(e.kind.value, e.path, e.key, e.size) for e in s.differences(before, after)]
    assert got == [
        ("DELETE", "/w/olddir/inner", "gone:file:/w/olddir/inner:3:31", None),  # contents first
        ("DELETE", "/w/gone", "gone:file:/w/gone:2:20", None),
        ("DELETE", "/w/olddir", "gone:dir:/w/olddir:30", None),
        ("CLOSE_WRITE", "/w/changed", "file:/w/changed:4:40", 4),
        ("CREATE", "/w/newdir", "dir:/w/newdir:50", None),  # a directory before what it holds
        ("CLOSE_WRITE", "/w/newdir/new", "file:/w/newdir/new:5:51", 5),
    ]


def test_a_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    creds = Credentials({"token_file": str(token)})
    assert creds.header() == "Bearer first"
    token.write_text("second, longer\n")
    os.utime(token, ns=(1, 1))  # a different mtime whatever the clock's resolution
    assert creds.header() == "Bearer second, longer"
    assert Credentials({"basic": "u:k"}).header() == "Basic dTpr"


@pytest.mark.parametrize("recursive_watch", [True, False])
def test_a_directory_moved_in_is_listed_and_in_a_per_directory_tree_watched(recursive_watch: bool) -> None:
    CALLS.clear()
    sink = MemorySink()
    s = session(sink, recursive_watch=recursive_watch)
    asyncio.run(s.process([inotify(0, ["IN_MOVED_TO", "IN_ISDIR"], "in", cookie="c9")]))
    got = [(e.kind.value, e.path, e.key) for e in sink.events]
    assert got == [("CREATE", "/w/in", "dir:/w/in:3000"), ("CLOSE_WRITE", "/w/in/x", "file:/w/in/x:7:3001")]
    subscribed = [c for c in CALLS if c[0] == "POST"]
    assert subscribed == ([] if recursive_watch else [("POST", "/api/v1/events/channels/chan1/subscriptions/inotify")])


def test_a_directory_moved_within_a_per_directory_tree_keeps_its_watch_and_one_moved_out_loses_it() -> None:
    CALLS.clear()
    sink = MemorySink()
    s = session(sink, recursive_watch=False)
    asyncio.run(
        s.process(
            [
                inotify(0, ["IN_MOVED_FROM", "IN_ISDIR"], "sub", cookie="c1"),
                inotify(1, ["IN_MOVED_TO", "IN_ISDIR"], "sub2", cookie="c1"),
                inotify(2, ["IN_DELETE"], "f", sub=SUBDIR),  # the watch followed its directory
            ]
        )
    )
    assert [(e.kind.value, e.path, e.old_path) for e in sink.events] == [
        ("MOVE", "/w/sub2", "/w/sub"),
        ("DELETE", "/w/sub2/f", None),
    ]
    assert s.subs[SUBDIR] == "/w/sub2"
    asyncio.run(s.process([inotify(3, ["IN_MOVED_FROM", "IN_ISDIR"], "sub2", cookie="c2")]))  # out of the tree
    assert (sink.events[-1].kind.value, sink.events[-1].path) == ("DELETE", "/w/sub2")
    assert SUBDIR not in s.subs and ("DELETE", "/api/v1/events/channels/chan1/subscriptions/inotify/s2") in CALLS


def test_events_of_other_subscriptions_in_the_channel_are_skipped() -> None:
    sink = MemorySink()
    tick = ServerSentEvent(event="metronome", data=json.dumps({"event": "tick", "subscription": SUB}), id="0")
    asyncio.run(session(sink).process([tick, inotify(1, ["IN_DELETE"], "x")]))
    assert [e.path for e in sink.events] == ["/w/x"] and sink.pos == "chan1:1"


def test_a_fenced_sink_stops_the_source_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def mock(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events/channels"):
            return httpx.Response(201, headers={"Location": CHANNEL})
        if request.url.path.endswith("/doors"):
            return httpx.Response(200, json=[])
        if request.url.path.endswith("/selector"):
            return httpx.Response(200, json={"properties": {"path": {}, "recursive": {}}})
        return remote(request)

    monkeypatch.setattr(dcache_sse, "client", lambda: httpx.AsyncClient(transport=httpx.MockTransport(mock)))

    class Fenced(MemorySink):
        async def deliver(self, events: Any, position: str | None) -> int:
            raise base.Fenced("taken over")

    source = dcache_sse.build("s", {"url": API, "path": "/w", "recursive": True, "basic": "u:k"})
    with pytest.raises(base.Fenced):
        asyncio.run(asyncio.wait_for(source.run(Fenced()), 30))
    assert source.files() is None  # the remote advertised no door
