"""The dCache storage-events API (/api/v1/events): channels, subscriptions, SSE framing and replay, inotify
semantics, limits and errors, and headrace's extensions (durable channels, recursive watches, keep-alive)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client, http
from headrace.tls import tls_context
from sse_reader import SseReader, masks

EV = "/api/v1/events"


def channel(api: httpx.Client, client_id: str | None = None) -> str:
    r = api.post(f"{EV}/channels", json={"client-id": client_id} if client_id else None)
    assert r.status_code == 201, r.text
    assert r.content == b""
    return r.headers["Location"]


def subscribe(api: httpx.Client, ch: str, selector: Any, kind: str = "inotify", status: int = 201) -> str:
    r = api.post(f"{ch}/subscriptions/{kind}", json=selector, follow_redirects=False)
    assert r.status_code == status, r.text
    return r.headers["Location"]


def error(r: httpx.Response, status: int, detail: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == str(status)
    assert detail in body["detail"], body


def wait_disconnected(server: Server) -> None:
    """Until the server has seen every SSE client go (events sent before that count as delivered)."""
    deadline = time.monotonic() + 60
    while "headrace_sse_connections 0.0" not in http("GET", f"{server.api_url}/metrics").text:
        assert time.monotonic() < deadline, "an SSE client is still connected"
        time.sleep(0.05)


def test_metadata_event_types_and_schemas(server: Server) -> None:
    with server.api() as api:
        assert api.get(EV).json() == {
            "channels": {
                "maximumPerUser": 128,
                "lifetimeWhenDisconnected": {"minimum": 1, "maximum": 86400, "default": 300},
            }
        }
        assert api.get(f"{EV}/eventTypes").json() == ["inotify", "metronome"]
        assert "inotify" in api.get(f"{EV}/eventTypes/inotify").json()["description"]
        error(api.get(f"{EV}/eventTypes/nope"), 404, "Unknown event type: nope")
        sel = api.get(f"{EV}/eventTypes/inotify/selector").json()
        assert sel["required"] == ["path"] and sel["properties"]["path"]["pattern"] == "^/(.*[^/])?$"
        assert api.get(f"{EV}/eventTypes/metronome/event").json()["type"] == "string"
        assert "mask" in api.get(f"{EV}/eventTypes/inotify/event").json()["properties"]
    r = http("GET", f"{server.api_url}{EV}/channels")
    error(r, 401, "")


def test_channel_lifecycle_listing_and_ownership(server: Server) -> None:
    _, key, _ = add_user(server, "evowner")
    other = client(base_url=server.api_url, auth=("evowner", key))
    with server.api() as api, other:
        r = api.post(f"{EV}/channels/")  # the trailing slash form
        assert r.status_code == 201
        raw_names = [k for k, _ in r.headers.raw]
        assert b"Location" in raw_names, raw_names  # capitalised, as clients match it
        plain = r.headers["Location"]
        assert plain.startswith(f"{server.api_url}{EV}/channels/")
        cid = plain.rsplit("/", 1)[1]
        assert len(cid) == 22 and "=" not in cid  # 16 bytes, base64url without padding
        tagged = channel(api, "tagged-client")
        listed = api.get(f"{EV}/channels").json()
        assert plain in listed and tagged in listed
        assert api.get(f"{EV}/channels", params={"client-id": "tagged-client"}).json() == [tagged]
        untagged = api.get(f"{EV}/channels", params={"client-id": ""}).json()
        assert plain in untagged and tagged not in untagged
        assert other.get(f"{EV}/channels").json() == []
        error(other.get(plain, headers={"Accept": "application/json"}), 403, "Access denied")
        error(other.delete(plain), 403, "Access denied")
        error(api.get(f"{EV}/channels/AAAAAAAAAAAAAAAAAAAAAA"), 404, "No such channel")

        assert api.get(plain, headers={"Accept": "application/json"}).json() == {"timeout": 300}
        assert api.patch(plain, json={"timeout": 60}).status_code == 204
        assert api.get(plain, headers={"Accept": "application/json"}).json() == {"timeout": 60}
        for bad in (0, 86401, "60", None):
            error(api.patch(plain, json={"timeout": bad}), 400, "timeout")
        error(api.post(f"{EV}/channels", json={"client": "x"}), 400, "Unknown field")
        assert api.delete(plain).status_code == 204
        error(api.get(plain, headers={"Accept": "application/json"}), 404, "No such channel")
        assert api.delete(tagged).status_code == 204


def test_per_user_channel_limit_is_429(server: Server) -> None:
    _, key, _ = add_user(server, "evlimit")
    with client(base_url=server.api_url, auth=("evlimit", key)) as api:
        made = [channel(api) for _ in range(128)]
        error(api.post(f"{EV}/channels"), 429, "Too many channels")
        api.delete(made[0])
        made[0] = channel(api)  # room again
        for url in made:
            assert api.delete(url).status_code == 204


def test_upload_events_framing_ids_and_subscription_url(server: Server) -> None:
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev1")
        ch = channel(api)
        sub = subscribe(api, ch, {"path": "/ev1"})
        assert api.get(sub).json() == {"path": "/ev1"}
        assert api.get(f"{ch}/subscriptions").json() == [sub]
        reader = SseReader(ch, server.auth)
        assert reader.status == 200 and reader.headers["content-type"].startswith("text/event-stream")
        assert door.put("/ev1/run.h5", content=b"x" * 10).status_code == 201
        frames = reader.take(5)
        assert masks(frames) == [
            ("run.h5", ["IN_CREATE"]),
            ("run.h5", ["IN_OPEN"]),
            ("run.h5", ["IN_MODIFY"]),
            ("run.h5", ["IN_CLOSE_WRITE"]),
            ("run.h5", ["IN_ATTRIB"]),
        ]
        assert [f["id"] for f in frames] == [0, 1, 2, 3, 4]
        assert all(f["data"]["subscription"] == sub and set(f["data"]) == {"event", "subscription"} for f in frames)
        door.request("MKCOL", "/ev1/sub")
        (mk,) = reader.take(1)
        assert mk["data"]["event"] == {"name": "sub", "mask": ["IN_CREATE", "IN_ISDIR"]}
        assert reader.quiet() == []
        reader.close()
        for line in reader.lines:
            assert line == "" or line.split(": ", 1)[0] in {"event", "id", "data"}, line
        api.delete(ch)


def test_a_path_with_empty_names_is_read_as_the_namespace_api_reads_it(server: Server) -> None:
    """ada subscribes to paths with "//" in them (dCache's pattern lets them through): the watch is on the
    directory the namespace API finds for that path."""
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev1b")
        door.request("MKCOL", "/ev1b/d")
        assert api.get("/api/v1/namespace//ev1b//d").status_code == 200
        ch = channel(api)
        subscribe(api, ch, {"path": "//ev1b//d", "flags": ["IN_CLOSE_WRITE"]})
        reader = SseReader(ch, server.auth)
        assert door.put("/ev1b/d/f", content=b"x").status_code == 201
        assert masks(reader.take(1)) == [("f", ["IN_CLOSE_WRITE"])]
        reader.close()
        api.delete(ch)


def test_flags_macros_moves_and_deletes(server: Server) -> None:
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev2")
        door.request("MKCOL", "/ev2/a")
        door.request("MKCOL", "/ev2/b")
        door.put("/ev2/a/f", content=b"1")
        ch = channel(api)
        sub_a = subscribe(api, ch, {"path": "/ev2/a", "flags": ["IN_MOVE", "IN_DELETE", "IN_CLOSE_WRITE"]})
        sub_b = subscribe(api, ch, {"path": "/ev2/b", "flags": ["IN_ALL_EVENTS"]})
        sub_f = subscribe(api, ch, {"path": "/ev2/a/f", "flags": ["IN_MOVE_SELF", "IN_ATTRIB", "IN_DELETE_SELF"]})
        reader = SseReader(ch, server.auth)
        assert (
            door.request("MOVE", "/ev2/a/f", headers={"Destination": f"{server.door_url}/ev2/b/g"}).status_code == 201
        )
        frames = reader.take(3)
        by_sub = {f["data"]["subscription"]: f["data"]["event"] for f in frames}
        assert by_sub[sub_a]["mask"] == ["IN_MOVED_FROM"] and by_sub[sub_a]["name"] == "f"
        assert by_sub[sub_b]["mask"] == ["IN_MOVED_TO"] and by_sub[sub_b]["name"] == "g"
        assert by_sub[sub_a]["cookie"] == by_sub[sub_b]["cookie"]
        assert by_sub[sub_f] == {"mask": ["IN_MOVE_SELF"]}
        # the file's watch followed it: a change at its new path still reaches it
        assert api.post("/api/v1/namespace/ev2/b/g", json={"action": "chmod", "mode": 0o600}).status_code == 200
        got = reader.take(2)
        assert {
            (f["data"]["subscription"], f["data"]["event"].get("name"), tuple(f["data"]["event"]["mask"])) for f in got
        } == {
            (sub_f, None, ("IN_ATTRIB",)),  # on the target itself: unnamed
            (sub_b, "g", ("IN_ATTRIB",)),  # in the parent: named
        }
        assert door.delete("/ev2/b/g").status_code == 204
        frames = reader.until(lambda f: f["event"] == "SYSTEM")
        seen = [(f["data"]["subscription"], f["data"]["event"]["mask"]) for f in frames if f["event"] == "inotify"]
        assert (sub_b, ["IN_DELETE"]) in seen
        assert seen.index((sub_f, ["IN_DELETE_SELF"])) < seen.index((sub_f, ["IN_IGNORED"]))
        assert frames[-1]["data"] == {"type": "SUBSCRIPTION_CLOSED", "subscription": sub_f}
        assert api.get(f"{ch}/subscriptions").json() == [sub_a, sub_b]
        reader.close()
        api.delete(ch)


def test_oneshot_mask_add_merge_and_unsubscribe(server: Server) -> None:
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev3")
        ch = channel(api)
        reader = SseReader(ch, server.auth)
        sub = subscribe(api, ch, {"path": "/ev3", "flags": ["IN_CREATE"]})
        assert reader.next()["data"] == {"type": "NEW_SUBSCRIPTION", "subscription": sub}
        again = subscribe(api, ch, {"path": "/ev3", "flags": ["IN_DELETE", "IN_MASK_ADD"]}, status=303)
        assert again == sub
        assert set(api.get(sub).json()["flags"]) == {"IN_CREATE", "IN_DELETE"}
        door.put("/ev3/x", content=b"")
        door.delete("/ev3/x")
        assert masks(reader.take(2)) == [("x", ["IN_CREATE"]), ("x", ["IN_DELETE"])]
        # without IN_MASK_ADD the flags are replaced
        assert subscribe(api, ch, {"path": "/ev3", "flags": ["IN_DELETE"]}, status=303) == sub
        door.put("/ev3/y", content=b"")
        door.delete("/ev3/y")
        assert masks(reader.take(1)) == [("y", ["IN_DELETE"])]
        assert api.delete(sub).status_code == 204
        frames = reader.take(2)
        assert masks(frames) == [(None, ["IN_IGNORED"])]
        assert frames[1]["data"] == {"type": "SUBSCRIPTION_CLOSED", "subscription": sub}
        error(api.get(sub), 404, "No such subscription")
        one = subscribe(api, ch, {"path": "/ev3", "flags": ["IN_CREATE", "IN_ONESHOT"]})
        reader.next()  # NEW_SUBSCRIPTION
        door.put("/ev3/z1", content=b"")
        door.put("/ev3/z2", content=b"")
        frames = reader.take(3)
        assert masks(frames) == [("z1", ["IN_CREATE"]), (None, ["IN_IGNORED"])]
        assert frames[2]["data"] == {"type": "SUBSCRIPTION_CLOSED", "subscription": one}
        assert reader.quiet() == []
        reader.close()
        api.delete(ch)


def test_subscription_errors_use_dcache_wording(server: Server) -> None:
    _, key, _ = add_user(server, "evnosy")
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev4")
        door.request("MKCOL", "/ev4/private")
        api.post("/api/v1/namespace/ev4/private", json={"action": "chmod", "mode": 0o700})
        door.put("/ev4/file", content=b"")
        ch = channel(api)
        post = f"{ch}/subscriptions/inotify"
        error(api.post(post, content=b""), 400, "Missing JSON entity in POST request")
        bad = api.post(post, content=b"{nope", headers={"Content-Type": "application/json"})
        error(bad, 400, "Bad selector: malformed JSON")
        error(api.post(f"{ch}/subscriptions/kafka", json={"path": "/"}), 400, "Unknown event type: kafka")
        error(api.post(post, json={"path": "/ev4", "colour": "red"}), 400, "Bad selector: Unrecognized field")
        error(api.post(post, json={"flags": ["IN_CREATE"]}), 400, 'Bad selector: "path" is required')
        error(api.post(post, json={"path": "ev4"}), 400, "Bad selector:")
        error(api.post(post, json={"path": "/ev4/"}), 400, "Bad selector:")  # dCache's pattern: no trailing slash
        error(api.post(post, json=["/ev4"]), 400, "Bad selector:")
        error(api.post(post, json={"path": "/ev4", "flags": ["IN_SOMETIMES"]}), 400, "Bad selector: Unknown flags")
        error(
            api.post(post, json={"path": "/ev4", "flags": ["IN_CREATE", "IN_DONT_FOLLOW", "IN_EXCL_UNLINK"]}),
            400,
            "Bad selector: Unsupported flags: [IN_DONT_FOLLOW, IN_EXCL_UNLINK]",
        )
        error(api.post(post, json={"path": "/ev4/nothing"}), 400, "Not found: Problem with path: /ev4/nothing")
        error(api.post(post, json={"path": "/ev4/file", "flags": ["IN_ONLYDIR"]}), 400, "Failed condition:")
        error(api.post(f"{ch}/subscriptions/metronome", json={"frequency": 1, "delay": 1}), 400, "Bad selector:")
        error(api.post(f"{ch}/subscriptions/metronome", json={"frequency": -1}), 400, "Bad selector:")
        assert api.get(f"{ch}/subscriptions").json() == []
        api.delete(ch)
    with client(base_url=server.api_url, auth=("evnosy", key)) as api:
        ch = channel(api)
        error(api.post(f"{ch}/subscriptions/inotify", json={"path": "/ev4/private/x"}), 400, "Permission denied")
        api.delete(ch)


def test_replay_with_last_event_id_and_queueing_while_disconnected(server: Server) -> None:
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev5")
        ch = channel(api)
        subscribe(api, ch, {"path": "/ev5", "flags": ["IN_CLOSE_WRITE"]})
        reader = SseReader(ch, server.auth)
        for i in range(3):
            door.put(f"/ev5/f{i}", content=b"")
        assert [f["id"] for f in reader.take(3)] == [0, 1, 2]
        reader.close()
        wait_disconnected(server)
        for i in range(3, 6):
            door.put(f"/ev5/f{i}", content=b"")
        # without Last-Event-ID: what was queued while away, nothing sent before
        reader = SseReader(ch, server.auth)
        frames = reader.take(3)
        assert [(f["id"], f["data"]["event"]["name"]) for f in frames] == [(3, "f3"), (4, "f4"), (5, "f5")]
        assert reader.quiet() == []
        reader.close()
        # with Last-Event-ID: every later event still held
        reader = SseReader(ch, server.auth, last_event_id=1)
        assert [f["id"] for f in reader.take(4)] == [2, 3, 4, 5]
        assert reader.quiet() == []
        reader.close()
        error(http("GET", ch, auth=server.auth, headers={"Last-Event-ID": "banana"}), 400, "Bad Last-Event-ID")
        error(http("GET", ch, auth=server.auth, headers={"Last-Event-ID": "-3"}), 400, "Bad Last-Event-ID")
        api.delete(ch)


def test_event_loss_when_replay_reaches_past_what_is_held(fresh_server: Server) -> None:
    # 16500 ticks in a few seconds: past the default metronome limit (100 Hz), which the server may raise
    server = fresh_server
    server.env_extra.update({"HEADRACE_METRONOME_MAX_HZ": "5000", "HEADRACE_METRONOME_USER_HZ": "5000"})
    server.start()
    with server.api() as api:
        ch = channel(api)
        reader = SseReader(ch, server.auth)
        subscribe(api, ch, {"frequency": 5000, "count": 16500}, kind="metronome")
        frames = reader.until(lambda f: f["event"] == "SYSTEM" and f["data"]["type"] == "SUBSCRIPTION_CLOSED", 60)
        ticks = [f for f in frames if f["event"] == "metronome"]
        assert len(ticks) == 16500 and ticks[-1]["id"] == 16499 and ticks[-1]["data"]["event"] == "tick"
        reader.close()
        reader = SseReader(ch, server.auth, last_event_id=10)
        first = reader.next()
        assert first == {"event": "SYSTEM", "data": {"type": "EVENT_LOSS"}}
        assert reader.next()["id"] == 16500 - 16383
        reader.close()
        api.delete(ch)


def test_competing_client_is_told_and_closed(server: Server) -> None:
    with server.api() as api:
        ch = channel(api)
        first = SseReader(ch, server.auth)
        second = SseReader(ch, server.auth)
        assert first.next() == {"event": "SYSTEM", "data": {"type": "COMPETING_CLIENT"}}
        assert first.ended.wait(5)
        assert second.status == 200 and not second.ended.is_set()
        second.close()
        api.delete(ch)


def test_metronome_messages_and_count(server: Server) -> None:
    with server.api() as api:
        ch = channel(api)
        reader = SseReader(ch, server.auth)
        sub = subscribe(api, ch, {"frequency": 50, "count": 3, "message": "${username}:${count}"}, kind="metronome")
        frames = reader.take(5)
        assert frames[0]["data"]["type"] == "NEW_SUBSCRIPTION"
        assert [f["data"]["event"] for f in frames[1:4]] == ["admin:1", "admin:2", "admin:3"]
        assert all(f["data"]["subscription"] == sub for f in frames[1:4])
        assert frames[4]["data"] == {"type": "SUBSCRIPTION_CLOSED", "subscription": sub}
        reader.close()
        api.delete(ch)


def test_recursive_watch_follows_the_tree_and_renames(server: Server) -> None:
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev6")
        door.request("MKCOL", "/ev6/run1")
        ch = channel(api)
        subscribe(api, ch, {"path": "/ev6", "flags": ["IN_CLOSE_WRITE", "IN_CREATE", "IN_MOVE"], "recursive": True})
        reader = SseReader(ch, server.auth)
        door.put("/ev6/top.h5", content=b"")
        door.request("MKCOL", "/ev6/run1/raw")
        door.put("/ev6/run1/raw/a.h5", content=b"")
        door.request("MOVE", "/ev6/run1", headers={"Destination": f"{server.door_url}/ev6/run2"})
        door.put("/ev6/run2/raw/b.h5", content=b"")
        got = masks(reader.take(9))
        assert got == [
            ("top.h5", ["IN_CREATE"]),
            ("top.h5", ["IN_CLOSE_WRITE"]),
            ("run1/raw", ["IN_CREATE", "IN_ISDIR"]),
            ("run1/raw/a.h5", ["IN_CREATE"]),
            ("run1/raw/a.h5", ["IN_CLOSE_WRITE"]),
            ("run1", ["IN_MOVED_FROM", "IN_ISDIR"]),
            ("run2", ["IN_MOVED_TO", "IN_ISDIR"]),
            ("run2/raw/b.h5", ["IN_CREATE"]),
            ("run2/raw/b.h5", ["IN_CLOSE_WRITE"]),
        ]
        # the watched directory itself moves: names stay relative to it
        door.request("MKCOL", "/ev6b")
        door.request("MOVE", "/ev6", headers={"Destination": f"{server.door_url}/ev6b/ev6"})
        door.put("/ev6b/ev6/run2/c.h5", content=b"")
        got = masks(
            reader.until(
                lambda f: (
                    f["data"]["event"].get("name") == "run2/c.h5" and "IN_CLOSE_WRITE" in f["data"]["event"]["mask"]
                )
            )
        )
        assert got[-2:] == [("run2/c.h5", ["IN_CREATE"]), ("run2/c.h5", ["IN_CLOSE_WRITE"])]
        reader.close()
        api.delete(ch)


def test_cloudevents_format_extension(server: Server) -> None:
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev7")
        ch = channel(api)
        subscribe(api, ch, {"path": "/ev7", "flags": ["IN_CLOSE_WRITE"], "format": "cloudevents"})
        error(api.post(f"{ch}/subscriptions/inotify", json={"path": "/ev7", "format": "xml"}), 400, "Bad selector")
        reader = SseReader(ch, server.auth)
        door.put("/ev7/f.h5", content=b"abc")
        ev = reader.next()["data"]["event"]
        assert ev["specversion"] == "1.0" and ev["type"] == "org.headrace.storage.closed.write"
        assert ev["subject"] == "/ev7/f.h5" and ev["inotifymask"] == "IN_CLOSE_WRITE"
        assert ev["data"]["size"] == 3 and int(ev["id"]) == ev["data"]["offset"]
        reader.close()
        api.delete(ch)


def test_keepalive_is_opt_in(server: Server) -> None:
    with server.api() as api:
        ch = channel(api)
        error(api.get(ch, params={"keepalive": "0"}), 400, "keepalive")
        reader = SseReader(ch, server.auth, params={"keepalive": "1"})
        deadline = time.monotonic() + 60
        while ":" not in reader.lines and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ":" in reader.lines
        reader.close()
        api.delete(ch)


def test_unread_channel_overflows_and_memory_stays_bounded(server: Server) -> None:
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev8")
        ch = channel(api)
        subscribe(api, ch, {"path": "/ev8", "flags": ["IN_CREATE"]})
        for i in range(1010):
            door.put(f"/ev8/f{i}", content=b"")
        # One dispatcher hands each event of the log to every channel in turn: once a second channel has the
        # event of a later write, the first has been offered all 1010 (connecting earlier would drain it while
        # it is still being fed, and the last ones would find room)
        door.request("MKCOL", "/ev8-mark")
        marker = channel(api)
        subscribe(api, marker, {"path": "/ev8-mark", "flags": ["IN_CREATE"]})
        door.put("/ev8-mark/m", content=b"")
        marked = SseReader(marker, server.auth)
        assert marked.next()["data"]["event"]["name"] == "m"
        marked.close()
        api.delete(marker)
        reader = SseReader(ch, server.auth)
        frames = reader.take(1001, timeout=30)
        names = [f["data"]["event"].get("name") for f in frames]
        assert names[:1000] == [f"f{i}" for i in range(1000)]
        assert frames[1000]["data"]["event"] == {"mask": ["IN_Q_OVERFLOW"]}
        assert reader.quiet() == []
        door.put("/ev8/after", content=b"")  # room again once the client has caught up
        assert reader.next()["data"]["event"]["name"] == "after"
        reader.close()
        api.delete(ch)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_slow_reader_keeps_server_memory_bounded(fresh_server: Server) -> None:
    server = fresh_server  # with metronomes faster than the default limit (100 Hz), to fill the queue fast
    server.env_extra.update({"HEADRACE_METRONOME_MAX_HZ": "50000", "HEADRACE_METRONOME_USER_HZ": "50000"})
    server.start()
    assert server.proc is not None
    with server.api() as api:
        ch = channel(api)
        path = ch.split(str(server.api_port), 1)[1]
        sock = socket.create_connection(("127.0.0.1", server.api_port))
        auth = httpx.BasicAuth(*server.auth)._auth_header  # type: ignore[attr-defined]
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        time.sleep(0.3)
        before = _rss_kib(server.proc.pid)
        subscribe(api, ch, {"frequency": 50000, "count": 100000, "message": "x" * 1000}, kind="metronome")
        time.sleep(3)  # ~100 MB of ticks offered to a client that reads nothing
        after = _rss_kib(server.proc.pid)
        assert after - before < 40_000, (before, after)
        sock.settimeout(5)
        seen = b""
        while b"IN_Q_OVERFLOW" not in seen and b'"overflow"' not in seen:
            chunk = sock.recv(65536)
            assert chunk
            seen = seen[-300:] + chunk
        sock.close()
        api.delete(ch)


def test_idle_channel_expires_after_its_timeout(server: Server) -> None:
    with server.api() as api:
        ch = channel(api)
        api.patch(ch, json={"timeout": 1})
        deadline = time.monotonic() + 60
        while api.get(ch, headers={"Accept": "application/json"}).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        error(api.get(ch, headers={"Accept": "application/json"}), 404, "No such channel")


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_channels_survive_restart(fresh_server: Server, how: str) -> None:
    srv = fresh_server.start()
    with srv.api() as api, srv.door() as door:
        door.request("MKCOL", "/d")
        ch = channel(api, "survivor")
        sub = subscribe(api, ch, {"path": "/d", "flags": ["IN_CLOSE_WRITE"]})
        reader = SseReader(ch, srv.auth)
        for i in range(3):
            door.put(f"/d/a{i}", content=b"")
        assert [f["id"] for f in reader.take(3)] == [0, 1, 2]
        if how == "sigterm":
            srv.stop()
            assert reader.next() == {"event": "SYSTEM", "data": {"type": "SHUTDOWN"}}
        else:
            srv.kill()
        reader.close()
    srv.start()
    with srv.api() as api, srv.door() as door:
        assert api.get(f"{EV}/channels", params={"client-id": "survivor"}).json() == [ch]
        assert api.get(sub).json() == {"path": "/d", "flags": ["IN_CLOSE_WRITE"]}
        door.put("/d/b0", content=b"")
        reader = SseReader(ch, srv.auth, last_event_id=0)
        frames = reader.take(3)
        assert [(f["id"], f["data"]["event"]["name"]) for f in frames] == [(1, "a1"), (2, "a2"), (3, "b0")]
        assert reader.quiet() == []
        reader.close()


def test_a_thousand_channels_streaming_at_once(server: Server) -> None:
    users = [add_user(server, f"evmany{i}") for i in range(8)]
    with server.door() as door:
        door.request("MKCOL", "/ev9")
    urls: list[tuple[tuple[str, str], str]] = []
    with contextlib.ExitStack() as stack:
        for name, key, _ in users:
            api = stack.enter_context(client(base_url=server.api_url, auth=(name, key)))
            for _ in range(125):
                ch = channel(api)
                subscribe(api, ch, {"path": "/ev9", "flags": ["IN_CLOSE_WRITE"]})
                urls.append(((name, key), ch))
    assert len(urls) == 1000

    async def run() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=1100, max_keepalive_connections=0)
        async with httpx.AsyncClient(verify=tls_context(), limits=limits, timeout=httpx.Timeout(60, read=60)) as client:
            connected = 0
            all_connected = asyncio.Event()

            async def one(auth: tuple[str, str], url: str) -> dict[str, Any]:
                nonlocal connected
                async with client.stream("GET", url, auth=auth) as r:
                    assert r.status_code == 200
                    connected += 1
                    if connected == len(urls):
                        all_connected.set()
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            return dict(json.loads(line[6:]))
                raise AssertionError("stream ended")

            tasks = [asyncio.create_task(one(a, u)) for a, u in urls]
            await asyncio.wait_for(all_connected.wait(), 60)
            async with httpx.AsyncClient(verify=tls_context(), base_url=server.door_url, auth=server.auth) as door:
                assert (await door.put("/ev9/for-everyone.h5", content=b"1")).status_code == 201
            return await asyncio.wait_for(asyncio.gather(*tasks), 60)

    got = asyncio.run(run())
    assert len(got) == 1000
    assert all(d["event"] == {"name": "for-everyone.h5", "mask": ["IN_CLOSE_WRITE"]} for d in got)
    assert len({d["subscription"] for d in got}) == 1000
    for name, key, _ in users:
        with client(auth=(name, key)) as api:
            for auth, url in urls:
                if auth[0] == name:
                    assert api.delete(url).status_code == 204


def test_recursive_moves_come_from_then_to_and_cloudevents_once_per_event(server: Server) -> None:
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ev10")
        door.request("MKCOL", "/ev10/s")
        door.put("/ev10/s/x.h5", content=b"")
        ch = channel(api)
        subscribe(api, ch, {"path": "/ev10", "flags": ["IN_MOVE"], "recursive": True})
        subscribe(api, ch, {"path": "/ev10/s", "flags": ["IN_MOVE"], "format": "cloudevents"})
        reader = SseReader(ch, server.auth)
        door.request("MOVE", "/ev10/s/x.h5", headers={"Destination": f"{server.door_url}/ev10/y.h5"})
        frames = reader.take(3)
        plain = [f["data"]["event"] for f in frames if "mask" in f["data"]["event"]]
        assert [(p["name"], p["mask"]) for p in plain] == [("s/x.h5", ["IN_MOVED_FROM"]), ("y.h5", ["IN_MOVED_TO"])]
        (ce,) = [f["data"]["event"] for f in frames if "specversion" in f["data"]["event"]]
        assert ce["type"] == "org.headrace.storage.moved" and ce["inotifymask"] == "IN_MOVED_FROM"
        reader.close()
        # Last-Event-ID -1: everything still held, from the first event on
        reader = SseReader(ch, server.auth, last_event_id=-1)
        assert [f["id"] for f in reader.take(3)] == [0, 1, 2]
        reader.close()
        api.delete(ch)
