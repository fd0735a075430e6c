"""The `dcache-sse` source kind against a real remote: a second `headrace up` plays the remote dCache, with a
non-admin user whose key or macaroon the source uses. Uploads there become RemoteEvents delivered to a sink
(tests/source_support.MemorySink, base.Sink's contract in memory), through a local restart (the kind rebuilt
with the same sink resumes with Last-Event-ID), a remote restart that keeps the channel (headrace's) and one
that loses it (dCache's: channel re-made, tree re-listed), and a token file replaced while running."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client, http, settle, wait_for
from headrace.events.channels import HELD
from headrace.events.sources import dcache_sse, kinds
from headrace.events.sources.base import SourceConfigError
from headrace.events.sources.remote_http import DoorFiles
from source_support import MemorySink, Running
from sse_reader import SseReader

USER = "sseremote"


def mint(server: Server, auth: tuple[str, str], validity: str = "PT1H") -> str:
    r = http(
        "POST",
        f"{server.door_url}/",
        json={"caveats": [], "validity": validity},
        headers={"Content-Type": "application/macaroon-request"},
        auth=auth,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["macaroon"])


def setup_remote(server: Server) -> tuple[str, str]:
    """The remote's user and its key; /w belongs to it."""
    name, key, uid = add_user(server, USER)
    with server.door() as door, server.api() as api:
        assert door.request("MKCOL", "/w").status_code == 201
        assert api.post("/api/v1/namespace/w", json={"action": "chown", "uid": uid}).status_code == 200
    return name, key


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, tuple[str, str]]]:
    base = tmp_path_factory.mktemp("remote")
    srv = Server(data=base / "data", cli_config=base / "cli.json").start()
    user = setup_remote(srv)
    yield srv, user
    srv.stop()


def user_door(server: Server, user: tuple[str, str]) -> httpx.Client:
    door: httpx.Client = client(base_url=server.door_url, auth=user, timeout=60)
    return door


def config(server: Server, path: str, user: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "url": f"{server.api_url}/api/v1",
        "path": path,
        "recursive": True,
        "basic": f"{user[0]}:{user[1]}",
        **extra,
    }


def ready(sink: MemorySink) -> None:
    """Until the source has watched and listed its tree (its baseline snapshot is stored)."""
    wait_for(lambda: sink.state_now("snapshot") is not None, "the source's first listing")


def once_each(sink: MemorySink) -> Counter[tuple[str, str]]:
    """(kind, path) counts, once the sink has stopped changing; asserts no key twice."""
    events = settle(lambda: len(sink.seen()), "the sink")
    assert events == len(sink.seen())
    keys = [e.key for e in sink.seen()]
    assert len(keys) == len(set(keys))
    return Counter((e.kind.value, e.path) for e in sink.seen())


# -- configuration ------------------------------------------------------------------------------------------


@pytest.mark.db_independent("configuration only")
@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"url": "http://x/api/v1", "basic": "u:k", "topic": "t"}, "Unknown option for dcache-sse: topic"),
        ({"path": "/d", "basic": "u:k"}, "url must be"),
        ({"url": "ftp://x/api/v1", "basic": "u:k"}, "url must be"),
        ({"url": "http://x/api/v1", "path": "d", "basic": "u:k"}, "path must be an absolute path"),
        ({"url": "http://x/api/v1", "recursive": "yes", "basic": "u:k"}, "recursive must be true or false"),
        ({"url": "http://x/api/v1"}, "Give exactly one of bearer, token_file or basic"),
        ({"url": "http://x/api/v1", "basic": "u:k", "bearer": "t"}, "given: bearer, basic"),
        ({"url": "http://x/api/v1", "basic": "nokey"}, 'basic must be "user:key"'),
        ({"url": "http://x/api/v1", "token_file": "rel/token"}, "token_file must be an absolute path"),
        ({"url": "http://x/api/v1", "basic": "u:k", "door": "door.example"}, "door must be an http(s) URL"),
    ],
)
def test_bad_configuration_is_a_source_config_error(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(SourceConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kinds.build("x", "dcache-sse", conf)


@pytest.mark.db_independent("configuration only")
def test_a_good_configuration_builds_without_contacting_anything() -> None:
    source = kinds.build("x", "dcache-sse", {"url": "http://127.0.0.1:1/api/v1/", "path": "//a//b/", "bearer": "t"})
    assert isinstance(source, dcache_sse.DcacheSseSource)
    assert source.name == "x" and source.cfg.path == "/a/b" and source.cfg.url == "http://127.0.0.1:1/api/v1"
    assert source.files() is not None  # the door is asked for on first use
    with_door = kinds.build("y", "dcache-sse", {"url": "http://h/api/v1", "door": "http://h:2880/", "basic": "u:k"})
    files = with_door.files()
    assert isinstance(files, DoorFiles) and files.url("/a b") == "http://h:2880/a%20b"


# -- against a remote ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("watch", ["recursive", "per-directory"])
def test_uploads_directories_moves_and_deletes_become_remote_events(
    remote: tuple[Server, tuple[str, str]], watch: str
) -> None:
    server, user = remote
    top = f"/w/events-{watch}"
    with user_door(server, user) as door:
        assert door.request("MKCOL", top).status_code == 201
        assert door.put(f"{top}/before", content=b"old").status_code == 201
        source = dcache_sse.build("remote", config(server, top, user))
        if watch == "per-directory":
            source.remote_recursive = False  # as against dCache: each directory watched as it appears
        sink = MemorySink()
        with Running(source, sink) as run:
            ready(sink)
            assert sink.seen() == []  # what was there before is the baseline
            assert door.put(f"{top}/a", content=b"hello").status_code == 201
            closed = wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/a"), "the upload's CLOSE_WRITE")[0]
            assert closed.size == 5 and closed.url == f"{server.door_url}{top}/a"
            assert closed.time is not None and closed.detail["checksums"][0]["type"] == "ADLER32"
            assert door.request("MKCOL", f"{top}/sub").status_code == 201
            wait_for(lambda: sink.of("CREATE", f"{top}/sub"), "the directory's CREATE")
            assert sink.of("CREATE", f"{top}/sub")[0].is_dir
            assert door.put(f"{top}/sub/b", content=b"bb").status_code == 201
            wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/sub/b"), "an upload in the new directory")
            moved = door.request("MOVE", f"{top}/a", headers={"Destination": f"{server.door_url}{top}/sub/a2"})
            assert moved.status_code in (201, 204)
            move = wait_for(lambda: sink.of("MOVE", f"{top}/sub/a2"), "the MOVE")[0]
            assert move.old_path == f"{top}/a" and not move.is_dir
            assert door.delete(f"{top}/sub/b").status_code == 204
            wait_for(lambda: sink.of("DELETE", f"{top}/sub/b"), "the DELETE")
            counts = once_each(sink)
            assert run.error is None
        for kind, path in [("CLOSE_WRITE", "a"), ("CREATE", "sub"), ("CLOSE_WRITE", "sub/b"), ("MOVE", "sub/a2")]:
            assert counts[(kind, f"{top}/{path}")] == 1, (kind, path, counts)
        assert counts[("DELETE", f"{top}/sub/b")] == 1
        assert not any(path.endswith("before") for _, path in counts)
        # the events came in the remote's order, the position is the last event id of the channel
        order = [(e.kind.value, e.path) for e in sink.seen() if e.kind.value != "ATTRIB"]
        assert order.index(("CLOSE_WRITE", f"{top}/a")) < order.index(("MOVE", f"{top}/sub/a2"))
        assert order.index(("MOVE", f"{top}/sub/a2")) < order.index(("DELETE", f"{top}/sub/b"))
        channel = sink.state_now("channel")["url"]
        assert sink.pos is not None and sink.pos.startswith(channel.rsplit("/", 1)[1] + ":")

        # functions read the files through the door, with the source's credentials, by range
        async def read() -> tuple[int | None, bytes, int | None, bytes]:
            files = source.files()
            assert files is not None
            size, chunks = await files.open(f"{top}/sub/a2")
            whole = b"".join([c async for c in chunks])
            part_size, part = await files.open(f"{top}/sub/a2", 1, 3)
            return size, whole, part_size, b"".join([c async for c in part])

        assert asyncio.run(read()) == (5, b"hello", 5, b"el")

        async def missing() -> None:
            files = source.files()
            assert files is not None
            await files.open(f"{top}/nothing")

        with pytest.raises(FileNotFoundError):
            asyncio.run(missing())


def test_a_path_the_user_may_not_watch_stops_the_source(remote: tuple[Server, tuple[str, str]]) -> None:
    server, user = remote
    with server.door() as door, server.api() as api:
        assert door.request("MKCOL", "/private-sse").status_code == 201
        assert api.post("/api/v1/namespace/private-sse", json={"action": "chmod", "mode": 0o700}).is_success
    with Running(dcache_sse.build("p", config(server, "/private-sse", user)), MemorySink()) as run:
        assert run.done.wait(60), "the source kept retrying"
        assert isinstance(run.error, PermissionError), run.error
        assert "Permission denied" in str(run.error)


def test_a_local_restart_resumes_the_channel_with_last_event_id(remote: tuple[Server, tuple[str, str]]) -> None:
    server, user = remote
    top = "/w/local-restart"
    sink = MemorySink()
    with user_door(server, user) as door:
        assert door.request("MKCOL", top).status_code == 201
        with Running(dcache_sse.build("r", config(server, top, user)), sink):
            ready(sink)
            door.put(f"{top}/one", content=b"1")
            wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/one"), "the first upload")
        channel = sink.state_now("channel")["url"]
        position = sink.pos
        for name in ("two", "three"):  # while the source is down: held by the remote's channel
            door.put(f"{top}/{name}", content=name.encode())
        door.delete(f"{top}/one")
        with Running(dcache_sse.build("r", config(server, top, user)), sink) as run:
            wait_for(lambda: sink.of("DELETE", f"{top}/one"), "what happened while the source was down")
            counts = once_each(sink)
            assert run.error is None
        assert sink.state_now("channel")["url"] == channel  # the same channel, resumed
        assert sink.pos != position
        for name in ("one", "two", "three"):
            assert counts[("CLOSE_WRITE", f"{top}/{name}")] == 1
        assert counts[("DELETE", f"{top}/one")] == 1
        # replayed from the stream (Last-Event-ID), not re-listed
        assert all("remote" in e.detail for e in sink.seen()), [e.detail for e in sink.seen()]


def test_token_file_is_read_again_when_replaced(remote: tuple[Server, tuple[str, str]], tmp_path: Path) -> None:
    server, user = remote
    top = "/w/token-file"
    token_file = tmp_path / "token"
    token_file.write_text(mint(server, user, "PT4S"))
    sink = MemorySink()
    with user_door(server, user) as door:
        assert door.request("MKCOL", top).status_code == 201
        conf = {**config(server, top, user), "token_file": str(token_file)}
        del conf["basic"]
        with Running(dcache_sse.build("t", conf), sink) as run:
            ready(sink)
            door.put(f"{top}/early", content=b"e")
            wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/early"), "an upload with the first token")
            # the first token expires; its replacement is read for the next request (the stat of the file)
            old = token_file.read_text()
            wait_for(
                lambda: (
                    http("GET", f"{server.api_url}/api/v1/user", headers={"Authorization": f"Bearer {old}"})
                    .json()
                    .get("status", "ANONYMOUS")
                    != "AUTHENTICATED"
                    or http(
                        "GET", f"{server.api_url}/api/v1/user", headers={"Authorization": f"Bearer {old}"}
                    ).status_code
                    == 401
                ),
                "the first token to expire",
            )
            token_file.write_text(mint(server, user) + "\n")
            door.put(f"{top}/late", content=b"late")
            late = wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/late"), "an upload after the token changed")[0]
            assert late.size == 4 and late.key.startswith("file:")  # stat'ed with the new token
            assert run.error is None


@pytest.fixture
def own_remote(fresh_server: Server) -> tuple[Server, tuple[str, str]]:
    fresh_server.start()
    return fresh_server, setup_remote(fresh_server)


def test_remote_restarts_lose_nothing_and_double_nothing(own_remote: tuple[Server, tuple[str, str]]) -> None:
    server, user = own_remote
    top = "/w/remote-restart"
    sink = MemorySink()
    with user_door(server, user) as door:
        assert door.request("MKCOL", top).status_code == 201
        assert door.put(f"{top}/keep", content=b"k").status_code == 201
        assert door.put(f"{top}/gone", content=b"g").status_code == 201
    with Running(dcache_sse.build("rr", config(server, top, user)), sink) as run:
        ready(sink)
        with user_door(server, user) as door:
            door.put(f"{top}/a", content=b"a")
            wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/a"), "an upload")
        first = sink.state_now("channel")["url"]

        # 1. headrace keeps its channels across a restart: the source reconnects and resumes
        server.stop()
        server.start()
        with user_door(server, user) as door:
            door.put(f"{top}/b", content=b"b")
            wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/b"), "an upload after the remote's restart")
        assert sink.state_now("channel")["url"] == first

        # 2. a restart that loses the channels, as dCache's does: a new channel, and a re-listing delivers what
        # changed while there was none (the source may reconnect before or after these changes)
        server.stop()
        shutil.rmtree(server.data / "channels")
        server.start()
        with user_door(server, user) as door:
            door.put(f"{top}/c", content=b"c")
            door.put(f"{top}/keep", content=b"kept, longer")
            door.delete(f"{top}/gone")
            wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/c"), "an upload after the channel was lost")
            wait_for(lambda: sink.of("DELETE", f"{top}/gone"), "a delete after the channel was lost")
            wait_for(
                lambda: [e for e in sink.of("CLOSE_WRITE", f"{top}/keep") if e.size == 12], "the overwrite of keep"
            )
            wait_for(lambda: sink.state_now("channel")["url"] != first, "a new channel")
            # and the stream goes on in the new channel
            door.put(f"{top}/d", content=b"d")
            wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/d"), "an upload in the new channel")
        counts = once_each(sink)
        assert run.error is None
    for name in ("a", "b", "c", "d", "keep"):
        assert counts[("CLOSE_WRITE", f"{top}/{name}")] == 1, (name, counts)
    assert counts[("DELETE", f"{top}/gone")] == 1
    assert counts[("CLOSE_WRITE", f"{top}/gone")] == 0  # the baseline is not delivered


# -- end to end: a source on a local server, a function triggered by the remote's uploads ------------------

READ_REMOTE = """\
def main(event, ctx):
    data = ctx.storage.read(event["path"], source=event["source"])
    return {"path": event["path"], "source": event["source"], "data": data.decode(), "size": event.get("size")}
"""


def test_remote_uploads_run_local_functions_through_restarts(
    own_remote: tuple[Server, tuple[str, str]], tmp_path: Path
) -> None:
    from test_sources import SRC, _activations, _deploy

    remote, user = own_remote
    top = "/w/e2e"
    with user_door(remote, user) as door:
        assert door.request("MKCOL", top).status_code == 201
    (tmp_path / "local").mkdir()
    local = Server(data=tmp_path / "local" / "data", cli_config=tmp_path / "local" / "cli.json").start()
    try:
        alice = add_user(local, "e2ealice")[:2]
        with local.api() as api:
            body = {"kind": "dcache-sse", **config(remote, top, user), "readers": {"users": [alice[0]]}}
            r = api.put(f"{SRC}/x", json=body)
            assert r.status_code == 201, r.text
            assert r.json()["basic"] == "***"
            wait_for(lambda: api.get(f"{SRC}/x").json()["state"]["position"], "the source's first listing")
        with client(base_url=local.api_url, auth=alice, timeout=60) as a, user_door(remote, user) as door:
            _deploy(a, "sse-reader", {"path": top, "source": "x"}, code=READ_REMOTE, storage=True)

            def done(*names: str) -> dict[str, list[dict[str, Any]]]:
                by_path: dict[str, list[dict[str, Any]]] = {}
                for act in _activations(a, "sse-reader"):
                    result = act["response"]["result"]
                    by_path.setdefault(result["path"], []).append(result)
                return by_path if all(f"{top}/{n}" in by_path for n in names) else {}

            door.put(f"{top}/f1", content=b"one")
            wait_for(lambda: done("f1"), "the function on the first remote upload")

            # the remote restarts and loses its channels (as dCache does): re-made, re-listed
            remote.stop()
            shutil.rmtree(remote.data / "channels")
            remote.start()
            door.put(f"{top}/f2", content=b"two")
            wait_for(lambda: done("f2"), "the function after the remote's restart", timeout=120)

            # the local server restarts; what the remote did meanwhile is replayed from its channel
            local.stop()
            door.put(f"{top}/f3", content=b"three")
            door.put(f"{top}/f4", content=b"four")
            local.start()
            wait_for(lambda: done("f3", "f4"), "the functions on uploads while the local server was down", timeout=120)
            door.put(f"{top}/f5", content=b"five")
            by_path = wait_for(lambda: done("f5"), "the function after the local restart")
            by_path = settle(lambda: done("f1", "f2", "f3", "f4", "f5"), "the activations", quiet=1.0)
        words = {"f1": "one", "f2": "two", "f3": "three", "f4": "four", "f5": "five"}
        assert sorted(by_path) == [f"{top}/{n}" for n in sorted(words)]
        for name, word in words.items():
            results = by_path[f"{top}/{name}"]
            assert len(results) == 1, (name, results)  # nothing doubled
            assert results[0] == {"path": f"{top}/{name}", "source": "x", "data": word, "size": len(word)}
    finally:
        local.stop()


def test_event_loss_is_made_good_by_a_relisting(fresh_server: Server) -> None:
    # a metronome on the source's own channel pushes what happened while the source was down out of the
    # 16383 events the channel holds: on resuming, the remote says EVENT_LOSS
    server = fresh_server
    server.env_extra.update({"HEADRACE_METRONOME_MAX_HZ": "5000", "HEADRACE_METRONOME_USER_HZ": "5000"})
    server.start()
    user = setup_remote(server)
    top = "/w/loss"
    sink = MemorySink()
    with user_door(server, user) as door, client(base_url=server.api_url, auth=user, timeout=60) as api:
        assert door.request("MKCOL", top).status_code == 201
        with Running(dcache_sse.build("l", config(server, top, user)), sink):
            ready(sink)
            door.put(f"{top}/a", content=b"a")
            wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/a"), "an upload")
        channel = sink.state_now("channel")["url"]
        door.put(f"{top}/b", content=b"b")
        door.put(f"{top}/a", content=b"a, again")
        door.delete(f"{top}/a")
        door.put(f"{top}/c", content=b"c")
        reader = SseReader(channel, user)  # read, as a disconnected channel's queue would overflow first
        # until the channel has numbered more events after the source's last than it holds: a reader that falls
        # 1000 behind (a loaded machine) has the metronome's surplus dropped, not held, so one burst may not do
        ids: list[int] = []
        while not ids or ids[-1] - ids[0] <= HELD + 16:
            r = api.post(f"{channel}/subscriptions/metronome", json={"frequency": 5000, "count": 17000})
            assert r.status_code == 201, r.text
            frames = reader.until(lambda f: f["event"] == "SYSTEM" and f["data"]["type"] == "SUBSCRIPTION_CLOSED", 120)
            ids += [f["id"] for f in frames if "id" in f]
        reader.close()
        with Running(dcache_sse.build("l", config(server, top, user)), sink) as run:
            wait_for(lambda: sink.of("DELETE", f"{top}/a"), "the deletion, from the re-listing")
            door.put(f"{top}/d", content=b"d")
            wait_for(lambda: sink.of("CLOSE_WRITE", f"{top}/d"), "an upload after the re-listing")
            counts = once_each(sink)
            assert run.error is None
    assert sink.state_now("channel")["url"] == channel  # the channel itself was not lost
    for name in ("a", "b", "c", "d"):
        assert counts[("CLOSE_WRITE", f"{top}/{name}")] == 1, (name, counts)
    assert counts[("DELETE", f"{top}/a")] == 1
    relisted = {e.path for e in sink.seen() if e.detail.get("relisted")}
    assert relisted == {f"{top}/a", f"{top}/b", f"{top}/c"}  # the overwrite of a, written and deleted: lost
