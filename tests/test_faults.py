"""Faults during uploads, over real HTTP: bodies cut short, clients that hang up mid-upload, wrong digests, a
full pool. Invariant 2: a failed or cut-off upload leaves nothing visible, nothing in the pool's tmp/, and no
event in the outbox; an existing file being overwritten keeps its old version.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import Server, query
from test_bad_input import BASIC, Reply, assert_problem, parse_reply, server_state, unchanged

MB = 1024 * 1024


def tmp_dir(server: Server) -> Path:
    return server.data / "pools" / "pool0" / "tmp"


def wait_for(predicate: Callable[[], object], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def put_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: {BASIC}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def upload_then_hang_up(server: Server, path: str, *, total: int, send: int, chunked: bool = False) -> None:
    """Start an upload of `total` bytes, send `send` of them, wait until the server is writing them to tmp/,
    then close the socket."""
    headers = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total)}
    with socket.create_connection(("127.0.0.1", server.door_port), timeout=10) as s:
        s.sendall(put_head(path, headers))
        block = os.urandom(256 * 1024)
        sent = 0
        while sent < send:
            n = min(len(block), send - sent)
            s.sendall(chunk(block[:n]) if chunked else block[:n])
            sent += n
        assert wait_for(lambda: os.listdir(tmp_dir(server))), "the upload never reached the pool's tmp/"


def get_status(server: Server, path: str) -> int:
    with server.door() as c:
        return c.head(path).status_code


@pytest.fixture
def base(server: Server, request: pytest.FixtureRequest) -> str:
    path = f"/faults/{request.node.name.replace('[', '-').replace(']', '')}"
    with server.door() as c:
        c.request("MKCOL", "/faults")
        assert c.request("MKCOL", path).status_code == 201
    return path


# -- bodies cut short ----------------------------------------------------------------------------------------


def test_body_shorter_than_content_length_then_close(server: Server, base: str) -> None:
    with unchanged(server):
        with socket.create_connection(("127.0.0.1", server.door_port), timeout=10) as s:
            s.sendall(put_head(f"{base}/short", {"Content-Length": "1000"}) + b"x" * 500)
            time.sleep(0.2)
        assert wait_for(lambda: not os.listdir(tmp_dir(server)))
    assert get_status(server, f"{base}/short") == 404


def test_body_shorter_than_content_length_then_half_close(server: Server, base: str) -> None:
    """The client ends its side early but still listens: no answer, or a 400 with the JSON body."""
    with unchanged(server):
        with socket.create_connection(("127.0.0.1", server.door_port), timeout=10) as s:
            s.sendall(put_head(f"{base}/short", {"Content-Length": "1000"}) + b"x" * 500)
            s.shutdown(socket.SHUT_WR)
            received = bytearray()
            with contextlib.suppress(ConnectionResetError):
                while data := s.recv(65536):
                    received += data
        if received:
            assert_problem(parse_reply(bytes(received)), 400)
    assert get_status(server, f"{base}/short") == 404


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_hang_up_mid_upload(server: Server, base: str, chunked: bool) -> None:
    with unchanged(server):
        upload_then_hang_up(server, f"{base}/big", total=10 * MB, send=5 * MB, chunked=chunked)
        assert wait_for(lambda: not os.listdir(tmp_dir(server))), "partial upload left in tmp/"
    assert get_status(server, f"{base}/big") == 404


def test_hang_up_mid_overwrite_keeps_the_old_version(server: Server, base: str) -> None:
    with server.door() as c:
        assert c.put(f"{base}/f", content=b"old version").status_code == 201
        etag = c.head(f"{base}/f").headers["etag"]
        with unchanged(server):
            upload_then_hang_up(server, f"{base}/f", total=10 * MB, send=3 * MB)
        r = c.get(f"{base}/f")
        assert r.content == b"old version"
        assert r.headers["etag"] == etag


def test_many_concurrent_hang_ups_leave_nothing(server: Server, base: str) -> None:
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            upload_then_hang_up(server, f"{base}/f{i}", total=4 * MB, send=(i + 1) * 100_000, chunked=i % 2 == 1)
        except BaseException as exc:
            errors.append(exc)

    with unchanged(server):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert wait_for(lambda: not os.listdir(tmp_dir(server)))
    assert all(get_status(server, f"{base}/f{i}") == 404 for i in range(16))


# -- digests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    ["adler32=00000000", "md5=1B2M2Y8AsgTpgAmY7PhCfg==", "sha-256=" + "0" * 64],
    ids=["adler32", "md5", "sha-256"],
)
def test_wrong_digest_is_400_and_stores_nothing(server: Server, base: str, digest: str) -> None:
    data = os.urandom(2 * MB)
    with server.door() as c:
        assert c.put(f"{base}/old", content=b"old").status_code == 201
        with unchanged(server):
            assert_problem(c.put(f"{base}/new", content=data, headers={"Digest": digest}), 400, "mismatch")
            assert_problem(c.put(f"{base}/old", content=data, headers={"Digest": digest}), 400, "mismatch")
        assert c.head(f"{base}/new").status_code == 404
        assert c.get(f"{base}/old").content == b"old"
        good = f"adler32={zlib.adler32(data):08x}"
        r = c.put(f"{base}/new", content=data, headers={"Digest": good, "Want-Digest": "adler32"})
        assert r.status_code == 201
        assert r.headers["digest"] == good


# -- a full pool ---------------------------------------------------------------------------------------------

CAP = 1_000_000


@pytest.fixture(scope="module")
def full_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("full")
    srv = Server(
        data=base / "data", cli_config=base / "cli.json", env_extra={"HEADRACE_POOL_MAX_BYTES": str(CAP)}
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
def full(full_server: Server) -> Server:
    """The capped server, emptied: each test starts with the whole cap free."""
    with full_server.door() as c:
        listing = c.request("PROPFIND", "/", headers={"Depth": "1"}).text
        for href in re.findall(r"<D:href>([^<]+)</D:href>", listing):
            if href != "/":
                assert c.delete(href).status_code == 204
    assert used_bytes(full_server) == 0
    return full_server


def used_bytes(server: Server) -> int:
    return int(query(server.data, "SELECT COALESCE(SUM(size), 0) FROM inodes WHERE pool IS NOT NULL")[0][0])


def refused_before_body(server: Server, path: str, size: int) -> Reply:
    """Announce a PUT of `size` bytes and wait for the answer before sending any of them.

    Sending the body regardless would race the server's close: granian closes right after an early answer,
    without draining (no lingering close), and the reset can destroy the answer before the client reads it.
    """
    with socket.create_connection(("127.0.0.1", server.door_port), timeout=10) as s:
        s.sendall(put_head(path, {"Content-Length": str(size), "Connection": "close"}))
        assert select.select([s], [], [], 10)[0], "no answer before the body"
        received = bytearray()
        while data := s.recv(65536):
            received += data
    return parse_reply(bytes(received))


def chunked_until_answered(server: Server, path: str, limit: int) -> bytes:
    """Send a chunked upload 100 kB at a time until the server answers (or `limit` bytes went); the answer."""
    with socket.create_connection(("127.0.0.1", server.door_port), timeout=10) as s:
        s.sendall(put_head(path, {"Transfer-Encoding": "chunked", "Connection": "close"}))
        block = os.urandom(100_000)
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < limit and not select.select([s], [], [], 0)[0]:
                s.sendall(chunk(block))
                sent += len(block)
            if sent >= limit:
                s.sendall(b"0\r\n\r\n")
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while data := s.recv(65536):
                received += data
    return bytes(received)


def test_upload_past_the_cap_is_507(full: Server) -> None:
    with full.door() as c:
        c.request("MKCOL", "/cap")
        assert c.put("/cap/first", content=b"a" * 600_000).status_code == 201
        with unchanged(full):
            assert_problem(refused_before_body(full, "/cap/second", 600_000), 507)
            assert_problem(refused_before_body(full, "/cap/first", 500_000), 507)  # overwrite: room for both
            assert_problem(refused_before_body(full, "/cap/big", 8 * MB), 507)
        assert c.head("/cap/second").status_code == 404
        assert c.get("/cap/first").content == b"a" * 600_000


def test_chunked_upload_growing_past_the_cap_is_507(full: Server) -> None:
    with full.door() as c:
        c.request("MKCOL", "/cap")
    with unchanged(full):
        reply = parse_reply(chunked_until_answered(full, "/cap/chunked", limit=20 * MB))
        assert_problem(reply, 507)
    with full.door() as c:
        assert c.head("/cap/chunked").status_code == 404


def test_failed_uploads_give_their_room_back(full: Server) -> None:
    """After refusals, hang-ups, bad digests and refused COPYs, the pool takes exactly what it has left."""
    with full.door() as c:
        c.request("MKCOL", "/room")
        assert c.put("/room/small", content=b"s" * 1000).status_code == 201
        free = CAP - used_bytes(full)
        assert free > 200_000
        with unchanged(full):
            for _ in range(3):
                assert_problem(refused_before_body(full, "/room/x", free + 1), 507)
                upload_then_hang_up(full, "/room/x", total=free // 2, send=free // 4)
                assert wait_for(lambda: not os.listdir(tmp_dir(full)))
                assert_problem(c.put("/room/x", content=b"x" * 1000, headers={"Digest": "adler32=00000000"}), 400)
        assert c.put("/room/copy-target", content=b"t").status_code == 201
        free = CAP - used_bytes(full)
        for _ in range(3):  # each refused COPY copied the data first: it must give the room back
            r = c.request("COPY", "/room/small", headers={"Destination": "/room/copy-target", "Overwrite": "F"})
            assert_problem(r, 412)
        assert c.put("/room/exact", content=b"e" * free).status_code == 201
        assert used_bytes(full) == CAP
        assert_problem(refused_before_body(full, "/room/one-more", 1), 507)
    assert server_state(full)["tmp"] == []


def test_copy_that_fills_the_pool_is_507_and_leaves_nothing(full: Server) -> None:
    with full.door() as c:
        c.request("MKCOL", "/tree")
        for i in range(3):
            assert c.put(f"/tree/f{i}", content=bytes([i]) * 200_000).status_code == 201
        filler = CAP - used_bytes(full) - 450_000  # room for two of the three copies, not for the third
        assert c.put("/filler", content=b"f" * filler).status_code == 201
        with unchanged(full):
            r = c.request("COPY", "/tree", headers={"Destination": "/tree-copy", "Depth": "infinity"})
            assert_problem(r, 507)
        assert c.request("PROPFIND", "/tree-copy", headers={"Depth": "0"}).status_code == 404
        room = CAP - used_bytes(full)
        assert c.put("/exact", content=b"e" * room).status_code == 201, "the refused COPY kept some room"


def test_refused_copy_is_412_not_507_when_the_pool_is_nearly_full(full: Server) -> None:
    """The precondition (Overwrite: F onto an existing target) decides before any data is copied."""
    with full.door() as c:
        assert c.put("/src", content=b"s" * 600_000).status_code == 201
        assert c.put("/dst", content=b"d").status_code == 201
        with unchanged(full):
            r = c.request("COPY", "/src", headers={"Destination": "/dst", "Overwrite": "F"})
            assert_problem(r, 412)
        assert c.get("/dst").content == b"d"


def test_early_refusal_reaches_a_client_still_sending(server: Server) -> None:
    """A PUT refused before its body is read (here 409: no parent) gets its JSON answer even when the
    client sends the whole body without Expect: 100-continue, not a connection reset mid-send.
    (The HTTP server reads past the refusal itself; measured the same with 100 MiB bodies.)"""
    body = b"z" * (6 * 1024 * 1024)  # more than loopback's socket buffers hold, less than the door drains
    for _ in range(10):
        with server.door() as door:
            r = door.put("/no-such-parent/f", content=body)
        assert r.status_code == 409, r.text
        assert r.json()["detail"].startswith("Parent directory does not exist")
