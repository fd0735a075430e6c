"""The events API driven the way dCache's sample event consumer drives it: `requests` for the channel and
subscription, the `sseclient` package for the stream (with its own reconnect and Last-Event-ID)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import requests
from sseclient import SSEClient

from harness import Server


def _open(srv: Server, path: str) -> tuple[requests.Session, str]:
    s = requests.Session()
    s.auth = srv.auth
    r = s.post(f"{srv.api_url}/api/v1/events/channels")
    r.raise_for_status()
    channel = r.headers["Location"]
    r = s.post(f"{channel}/subscriptions/inotify", json={"path": path})
    assert r.status_code == 201, r.text
    return s, channel


def _collect(channel: str, session: requests.Session, out: list[Any], stop: threading.Event) -> None:
    """Follow the channel as a robust consumer does: sseclient reconnects with Last-Event-ID by itself after a
    stream ends; a refused connection (the server restarting) makes a new client from the last id."""
    last_id: str | None = None
    while not stop.is_set():
        try:
            client = SSEClient(channel, session=session, retry=200, last_id=last_id)
            for msg in client:
                if stop.is_set():
                    return
                if msg.event == "inotify":
                    out.append((int(msg.id), msg.data))
                    last_id = msg.id
        except requests.ConnectionError:
            time.sleep(0.2)


def test_sample_consumer_flow_sees_an_upload(server: Server) -> None:
    with server.door() as door:
        door.request("MKCOL", "/sse-interop")
    s, channel = _open(server, "/sse-interop")
    got: list[Any] = []
    stop = threading.Event()
    t = threading.Thread(target=_collect, args=(channel, s, got, stop), daemon=True)
    t.start()
    time.sleep(0.3)
    with server.door() as door:
        door.put("/sse-interop/RAW-R0001-DA01-S00000.h5", content=b"x")
    deadline = time.monotonic() + 60
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    masks = [json.loads(data)["event"]["mask"][0] for _, data in got]
    assert masks == ["IN_CREATE", "IN_OPEN", "IN_MODIFY", "IN_CLOSE_WRITE", "IN_ATTRIB"]
    assert [i for i, _ in got] == [0, 1, 2, 3, 4]
    stop.set()
    s.delete(channel)


def test_sseclient_reconnects_across_a_server_restart_without_loss_or_repeat(fresh_server: Server) -> None:
    srv = fresh_server.start()
    with srv.door() as door:
        door.request("MKCOL", "/r")
    s, channel = _open(srv, "/r")
    got: list[Any] = []
    stop = threading.Event()
    t = threading.Thread(target=_collect, args=(channel, s, got, stop), daemon=True)
    t.start()
    time.sleep(0.3)
    with srv.door() as door:
        door.put("/r/before", content=b"")
    deadline = time.monotonic() + 60
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    srv.stop()
    srv.start()
    with srv.door() as door:
        door.put("/r/after", content=b"")
    deadline = time.monotonic() + 60
    while len(got) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    names = [(i, json.loads(data)["event"]["name"]) for i, data in got]
    assert [i for i, _ in names] == list(range(10))
    assert [n for _, n in names] == ["before"] * 5 + ["after"] * 5
    stop.set()
    s.delete(channel)
