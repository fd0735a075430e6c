"""Crash recovery with a real server: SIGKILL while 50 uploads are in flight, restart on the same data, and check
invariants 1 and 2 on what is left. Every visible file is complete and correct, every acknowledged upload is
visible, the pool holds no partial upload and no unreferenced blob, and the outbox holds exactly the events of
the committed uploads. Also: a clean SIGTERM when idle exits 0 and a restart keeps everything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from harness import Server, http, query
from test_bad_input import BASIC, server_state, settled

MB = 1024 * 1024
UPLOAD_KINDS = ["CREATE", "OPEN", "MODIFY", "CLOSE_WRITE", "ATTRIB"]


@dataclass
class Upload:
    name: str
    data: bytes
    seconds: float  # how long the client takes to send the body
    status: int | None = None  # the response's status, if one arrived
    error: str | None = None

    @property
    def adler32(self) -> str:
        return f"{zlib.adler32(self.data) & 0xFFFFFFFF:08x}"


def paced_put(port: int, path: str, up: Upload, chunk: int = 256 * 1024) -> None:
    """PUT `up.data` over a raw socket, spread over `up.seconds`; record the status or the error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            head = (
                f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {BASIC}\r\n"
                f"Content-Length: {len(up.data)}\r\nConnection: close\r\n\r\n"
            )
            s.sendall(head.encode())
            view = memoryview(up.data)
            pause = up.seconds / max(1, len(view) // chunk)
            for pos in range(0, len(view), chunk):
                s.sendall(view[pos : pos + chunk])
                time.sleep(pause)
            received = bytearray()
            while b"\r\n" not in received:
                data = s.recv(4096)
                if not data:
                    raise ConnectionError("closed without a response")
                received += data
            up.status = int(received.split(b" ", 2)[1])
    except OSError as exc:
        up.error = f"{type(exc).__name__}: {exc}"


def read_db(server: Server, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    return query(server.data, sql, **params)


def pool_files(server: Server) -> tuple[list[str], set[str]]:
    pool = server.data / "pools" / "pool0"
    tmp = sorted(os.listdir(pool / "tmp"))
    blobs = {f for _, _, files in os.walk(pool / "data") for f in files}
    return tmp, blobs


@pytest.mark.slow
def test_sigkill_during_concurrent_uploads(fresh_server: Server) -> None:
    srv = fresh_server.start()
    with srv.door() as c:
        assert c.request("MKCOL", "/crash").status_code == 201
    sizes = [2 * MB + (i * 6 * MB) // 49 for i in range(50)]
    # Sending times spread from 0.3 s to 9 s, shuffled against sizes, so that the kill finds uploads
    # done, uploads half sent, and uploads whose last bytes are being committed.
    uploads = [Upload(f"f{i:02d}", os.urandom(size), 0.3 + 8.7 * ((i * 37) % 50) / 49) for i, size in enumerate(sizes)]
    threads = [
        threading.Thread(target=paced_put, args=(srv.door_port, f"/crash/{u.name}", u), daemon=True) for u in uploads
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(u.status == 201 for u in uploads) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    done_at_kill = sum(u.status == 201 for u in uploads)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    for t in threads:
        t.join(30)
    acknowledged = {u.name for u in uploads if u.status == 201}
    assert done_at_kill >= 15, f"only {done_at_kill} uploads finished in 60 s"
    assert len(acknowledged) < len(uploads) - 10, "the kill came too late: too few uploads in flight"
    assert all(u.status in (201, None) for u in uploads), [(u.name, u.status) for u in uploads]

    log_before = len(srv.log())
    srv.start()
    assert "recovered: removed" in srv.log()[log_before:], "the restart did not report clearing partial uploads"

    # What the restarted server holds, read before any request adds read events.
    crash_id = read_db(srv, "SELECT id FROM inodes WHERE name = 'crash' AND type = 'DIR'")[0][0]
    rows = read_db(srv, "SELECT id, name, size, pool, blob FROM inodes WHERE parent_id = :p", p=crash_id)
    visible = {name: (inode_id, size, pool, blob) for inode_id, name, size, pool, blob in rows}
    sums = dict(
        read_db(
            srv,
            "SELECT i.name, c.value FROM checksums c JOIN inodes i ON i.id = c.inode_id"
            " WHERE i.parent_id = :p AND c.type = 'ADLER32'",
            p=crash_id,
        )
    )
    events = read_db(srv, 'SELECT "offset", kind, path, inode_id, detail FROM events ORDER BY "offset"')
    referenced = {r[0] for r in read_db(srv, "SELECT blob FROM inodes WHERE blob IS NOT NULL")}
    tmp, blobs = pool_files(srv)

    by_name = {u.name: u for u in uploads}
    assert set(visible) <= set(by_name)
    missing_acknowledged = acknowledged - set(visible)
    assert not missing_acknowledged, f"acknowledged (201) but gone after the crash: {sorted(missing_acknowledged)}"
    assert len(visible) < len(uploads), "nothing was in flight at the kill"
    assert tmp == [], f"partial uploads left in tmp/: {tmp}"
    assert blobs == referenced, f"orphans: {blobs - referenced}, missing: {referenced - blobs}"

    # The outbox: the directory's CREATE, then exactly one complete upload sequence per visible file.
    assert [(e[1], e[2]) for e in events if not e[2].startswith("/crash/")] == [("CREATE", "/crash")]
    for name, u in by_name.items():
        mine = [e for e in events if e[2] == f"/crash/{name}"]
        if name not in visible:
            assert mine == [], f"events for {name}, whose upload never committed: {mine}"
            continue
        assert [e[1] for e in mine] == UPLOAD_KINDS, f"{name}: {[e[1] for e in mine]}"
        assert {e[3] for e in mine} == {visible[name][0]}
        close_write = next(e for e in mine if e[1] == "CLOSE_WRITE")
        assert json.loads(close_write[4])["checksums"]["ADLER32"] == u.adler32
    assert len(events) == 1 + 5 * len(visible)

    # Every visible file is complete: size, checksum, and bytes.
    with srv.door() as c:
        for name, (_, size, pool, blob) in visible.items():
            u = by_name[name]
            assert size == len(u.data), name
            assert (pool, blob) != (None, None)
            assert sums[name] == u.adler32, name
            r = c.get(f"/crash/{name}", headers={"Want-Digest": "adler32"})
            assert r.status_code == 200
            assert r.headers["digest"] == f"adler32={u.adler32}"
            assert r.content == u.data, f"{name}: wrong bytes"
        # The server works on: an upload that was cut off can be sent again.
        lost = next(u for u in uploads if u.name not in visible)
        assert c.put(f"/crash/{lost.name}", content=lost.data).status_code == 201
        assert c.get(f"/crash/{lost.name}").content == lost.data


def test_clean_sigterm_when_idle_keeps_everything(fresh_server: Server) -> None:
    srv = fresh_server.start()
    files = {f"/keep/f{i}": os.urandom(size) for i, size in enumerate([0, 1, 65536, 3 * MB + 7])}
    with srv.door() as c:
        assert c.request("MKCOL", "/keep").status_code == 201
        for path, data in files.items():
            assert c.put(path, content=data).status_code == 201
        assert c.put("/keep/f1", content=b"second version").status_code == 204
        files["/keep/f1"] = b"second version"
        assert c.request("MOVE", "/keep/f2", headers={"Destination": "/keep/moved"}).status_code == 201
        files["/keep/moved"] = files.pop("/keep/f2")
        prop = (
            b'<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><Z:tag xmlns:Z="urn:z">kept</Z:tag></D:prop></D:set>'
            b"</D:propertyupdate>"
        )
        assert c.request("PROPPATCH", "/keep/moved", content=prop).status_code == 207
        etags = {path: c.head(path).headers["etag"] for path in files}
    before = settled(srv, quiet=0.5)  # idle: the HEADs' events are written, no request in flight

    assert srv.stop(signal.SIGTERM) == 0
    assert "stopped cleanly" in srv.log()
    assert read_db(srv, "SELECT value FROM state WHERE name = 'clean-shutdown'") == [("1",)]
    with pytest.raises(httpx.ConnectError):
        http("GET", srv.door_url, timeout=2)

    log_before = len(srv.log())
    srv.start()
    assert "recovered" not in srv.log()[log_before:]
    assert server_state(srv) == before
    with srv.door() as c:
        for path, data in files.items():
            r = c.get(path)
            assert r.status_code == 200
            assert r.content == data
            assert r.headers["etag"] == etags[path]
        assert b"kept" in c.request("PROPFIND", "/keep/moved", headers={"Depth": "0"}).content
        assert c.put("/keep/after-restart", content=b"x").status_code == 201
