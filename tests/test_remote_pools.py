"""Pools as processes of their own: two `headrace pool` processes and a `headrace up` server that uses them.

Uploads spread over both pools and come back byte-identical with their checksums; Range reads; a delete or an
overwrite removes the blob from its pool; COPY copies within the pool; the pool API refuses requests without a
valid token. With `HEADRACE_DOOR_REDIRECT`, reads are 302s and opted-in writes 307s to the pool, with tokens
that are refused once altered or expired, and a redirected upload is committed by the pool only when its
checksum holds. A pool killed with SIGKILL in the middle of an upload: the client gets an error, nothing is
visible, no event is written; restarted, the pool serves its files again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from harness import ADMIN_KEY, Server, http, query, wait_for
from headrace.errors import Forbidden
from headrace.storage import pool_protocol as proto
from pool_harness import PoolProcess, pool_db_url

MB = 1024 * 1024
SECRET = "test-pool-secret"
BASIC = "Basic " + base64.b64encode(f"admin:{ADMIN_KEY}".encode()).decode()


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def inode(server: Server, path: str) -> tuple[str, str, int]:
    """(pool, blob, size) of the file at `path` (a path of two levels: /dir/name), from the namespace."""
    _, parent, name = path.split("/")
    rows = query(
        server.data,
        "SELECT c.pool, c.blob, c.size FROM inodes c JOIN inodes p ON c.parent_id = p.id "
        "WHERE p.name = :parent AND c.name = :name",
        parent=parent,
        name=name,
    )
    assert len(rows) == 1, f"{path}: {rows}"
    return str(rows[0][0]), str(rows[0][1]), int(rows[0][2])


def events_for(server: Server, path: str) -> list[str]:
    return [str(r[0]) for r in query(server.data, "SELECT kind FROM events WHERE path = :p ORDER BY 1", p=path)]


class Cluster:
    def __init__(self, base: Path, *, server_env: dict[str, str], pool_env: dict[str, str]) -> None:
        self.server = Server(data=base / "data", cli_config=base / "cli.json", env_extra=server_env).start()
        db = pool_db_url(self.server)
        self.pools = {
            name: PoolProcess(base / name, db, name, env_extra=pool_env).start() for name in ("pool-a", "pool-b")
        }

    def pool_of(self, path: str) -> PoolProcess:
        return self.pools[inode(self.server, path)[0]]

    def stop(self) -> None:
        for p in self.pools.values():
            if p.proc is not None:
                p.stop()
        self.server.stop()


@pytest.mark.db_independent("the token functions alone, no server")
def test_a_token_is_refused_unless_exactly_as_issued() -> None:
    """Each of the four values of a signature's last character that decode to the same bytes (base64url's
    unused low bits) is refused but the one issued; so are a forged and a truncated one."""
    token = proto.PoolToken("pool", "read", "p1", "0" * 32, 4_000_000_000.0)
    issued = proto.sign(SECRET, token)
    assert proto.verify(SECRET, issued, pool="p1", aud="pool") == token
    head, last = issued[:-1], issued[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    k = alphabet.index(last) & ~3  # a 43-character SHA-256 signature: its last character's 2 low bits unused
    same_bytes = [alphabet[k + j] for j in range(4) if alphabet[k + j] != last]
    for bad in [head + c for c in same_bytes] + [issued[:-1], proto.sign("not-the-secret", token)]:
        with pytest.raises(Forbidden, match="signature does not verify"):
            proto.verify(SECRET, bad, pool="p1", aud="pool")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Door and pools sharing the secret the database keeps (no HEADRACE_POOL_SECRET), proxying (the default)."""
    c = Cluster(tmp_path_factory.mktemp("pools"), server_env={}, pool_env={})
    yield c
    c.stop()


@pytest.fixture(scope="module")
def redirecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A door that redirects to its pools, with tokens good for 6 s, signed with HEADRACE_POOL_SECRET."""
    env = {"HEADRACE_POOL_SECRET": SECRET}
    c = Cluster(
        tmp_path_factory.mktemp("redirect"),
        server_env={**env, "HEADRACE_DOOR_REDIRECT": "1", "HEADRACE_POOL_TOKEN_SECONDS": "6"},
        pool_env=env,
    )
    yield c
    c.stop()


# -- proxying through the door ---------------------------------------------------------------------------


def test_uploads_land_on_both_pools_and_come_back_identical(cluster: Cluster) -> None:
    srv = cluster.server
    files = {f"/spread/f{i}": os.urandom(size) for i, size in enumerate([0, 1, 70_000, 3 * MB + 7, 5 * MB, 2 * MB])}
    local_before = {f for _, _, fs in os.walk(srv.data / "pools") for f in fs}
    with srv.door() as door:
        assert door.request("MKCOL", "/spread").status_code == 201
        for path, data in files.items():
            r = door.put(path, content=data, headers={"Want-Digest": "md5, sha-256"})
            assert r.status_code == 201, r.text
            assert r.headers["Digest"] == f"md5={b64(hashlib.md5(data).digest())}"
        used = set()
        for path, data in files.items():
            pool_name, blob, size = inode(srv, path)
            used.add(pool_name)
            pool = cluster.pools[pool_name]
            assert size == len(data)
            assert pool.blob_path(blob).read_bytes() == data, f"{path}: the blob in {pool_name} differs"
            r = door.get(path, headers={"Want-Digest": "adler32"})
            assert r.status_code == 200 and r.content == data
            assert r.headers["Digest"] == f"adler32={adler32(data)}"
            # A checksum not computed at upload is computed by the pool that holds the blob.
            r = door.head(path, headers={"Want-Digest": "sha-256"})
            assert r.headers["Digest"] == f"sha-256={b64(hashlib.sha256(data).digest())}"
            assert int(r.headers["Content-Length"]) == len(data)
            assert "CLOSE_WRITE" in events_for(srv, path)
    assert used == {"pool-a", "pool-b"}, f"all uploads went to {used}"
    local_after = {f for _, _, fs in os.walk(srv.data / "pools") for f in fs}
    assert local_after == local_before, "a new file went to the door's own pool although pools are registered"
    for p in cluster.pools.values():
        assert p.partial() == []


def test_range_reads_from_a_pool(cluster: Cluster) -> None:
    data = os.urandom(3 * MB + 11)
    with cluster.server.door() as door:
        door.request("MKCOL", "/range")
        assert door.put("/range/r.bin", content=data).status_code == 201
        etag = door.head("/range/r.bin").headers["ETag"]
        cases = {
            "bytes=100-199": data[100:200],
            "bytes=-10": data[-10:],
            f"bytes={MB}-": data[MB:],
            f"bytes=0-{len(data) + 100}": data,
        }
        for rng, want in cases.items():
            r = door.get("/range/r.bin", headers={"Range": rng})
            assert r.status_code == 206, (rng, r.status_code)
            assert r.content == want, rng
            assert int(r.headers["Content-Length"]) == len(want)
        r = door.get("/range/r.bin", headers={"Range": f"bytes={len(data) + 5}-{len(data) + 10}"})
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
        r = door.get("/range/r.bin", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert r.status_code == 200 and r.content == data
        r = door.get("/range/r.bin", headers={"Range": "bytes=0-9", "If-Range": etag})
        assert r.status_code == 206 and r.content == data[:10]


def test_delete_overwrite_move_and_copy_keep_pools_exact(cluster: Cluster) -> None:
    srv = cluster.server
    with srv.door() as door:
        door.request("MKCOL", "/life")
        assert door.put("/life/a", content=b"first version").status_code == 201
        pool_name, first, _ = inode(srv, "/life/a")
        pool = cluster.pools[pool_name]
        assert pool.blob_path(first).exists()

        # Overwrite: the new version may land on either pool; the old blob is gone from its pool.
        assert door.put("/life/a", content=b"second version").status_code == 204
        second_pool, second, _ = inode(srv, "/life/a")
        assert not pool.blob_path(first).exists(), "the replaced version's blob is still in its pool"
        assert door.get("/life/a").content == b"second version"

        # MOVE keeps the blob; COPY makes a new one in the same pool with the same bytes.
        assert door.request("MOVE", "/life/a", headers={"Destination": f"{srv.door_url}/life/b"}).status_code == 201
        assert inode(srv, "/life/b")[:2] == (second_pool, second)
        assert door.request("COPY", "/life/b", headers={"Destination": f"{srv.door_url}/life/c"}).status_code == 201
        copy_pool, copy_blob, _ = inode(srv, "/life/c")
        assert copy_pool == second_pool and copy_blob != second
        assert cluster.pools[copy_pool].blob_path(copy_blob).read_bytes() == b"second version"
        assert door.get("/life/c").content == b"second version"

        # DELETE removes the blob from the pool that held it, and only that one.
        assert door.delete("/life/b").status_code == 204
        assert not cluster.pools[second_pool].blob_path(second).exists(), "DELETE left the blob in its pool"
        assert cluster.pools[copy_pool].blob_path(copy_blob).exists()
        assert door.get("/life/b").status_code == 404

        # A LOCK on an unmapped URL makes an empty file: on a pool too.
        body = (
            '<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>'
            "<D:locktype><D:write/></D:locktype></D:lockinfo>"
        )
        assert door.request("LOCK", "/life/locked", content=body).status_code == 201
        locked_pool, locked_blob, size = inode(srv, "/life/locked")
        assert size == 0 and cluster.pools[locked_pool].blob_path(locked_blob).read_bytes() == b""


def test_a_client_gone_mid_upload_leaves_nothing_on_the_pool(cluster: Cluster) -> None:
    srv = cluster.server
    with srv.door() as door:
        door.request("MKCOL", "/gone")
    data = os.urandom(8 * MB)
    with socket.create_connection(("127.0.0.1", srv.door_port), timeout=30) as s:
        head = (
            f"PUT /gone/half HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {BASIC}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        s.sendall(head.encode() + data[: 3 * MB])
        receiving = wait_for(
            lambda: next((p for p in cluster.pools.values() if p.partial()), None), "the upload to reach a pool"
        )
    # The client hung up: the door drops the pool connection, and the pool its partial blob.
    wait_for(lambda: receiving.partial() == [], "the pool to remove the partial upload")
    with srv.door() as door:
        assert door.head("/gone/half").status_code == 404
    assert events_for(srv, "/gone/half") == []


def test_pool_api_needs_a_valid_token(cluster: Cluster) -> None:
    srv = cluster.server
    with srv.door() as door:
        door.request("MKCOL", "/auth")
        assert door.put("/auth/x", content=b"secret data").status_code == 201
    pool_name, blob, _ = inode(srv, "/auth/x")
    pool = cluster.pools[pool_name]
    other = next(p for p in cluster.pools.values() if p is not pool)
    secret = str(query(srv.data, "SELECT value FROM state WHERE name = 'pool-secret'")[0][0])
    url = f"{pool.url}{proto.API_PREFIX}{blob}"

    def token(key: str = secret, aud: str = "door", op: str = "read", pool: str = pool_name, blob: str = blob) -> str:
        return proto.mint(key, aud=aud, op=op, pool=pool, blob=blob, seconds=60.0)

    assert http("GET", url).status_code == 401
    ok = http("GET", url, headers={"Authorization": f"Bearer {token()}"})
    assert ok.status_code == 200 and ok.content == b"secret data"
    refused = {
        "signed with another secret": token(key="guess"),
        "expired": proto.mint(secret, aud="door", op="read", pool=pool_name, blob=blob, seconds=-1.0),
        "for the other pool": token(pool=other.name),
        "for a redirected client": token(aud="client"),
        "for another operation": token(op="delete"),
        "for another blob": token(blob="0" * 32),
    }
    for what, t in refused.items():
        r = http("GET", url, headers={"Authorization": f"Bearer {t}"})
        assert r.status_code == 403, f"a token {what} was accepted"
        assert r.json()["status"] == "403"
    assert http("DELETE", url, headers={"Authorization": f"Bearer {token()}"}).status_code == 403
    assert pool.blob_path(blob).exists()


# -- redirects -------------------------------------------------------------------------------------------


def test_redirected_reads_and_writes(redirecting: Cluster) -> None:
    srv = redirecting.server
    pool_urls = {p.url for p in redirecting.pools.values()}
    data = os.urandom(2 * MB + 5)
    with srv.door() as door:
        door.request("MKCOL", "/redir")
        # An opted-in PUT gets a 307 to a pool, with a token; its body, if any, is dropped: a client without
        # `Expect: 100-continue` asks with an empty body, then sends the data to the pool.
        r = door.put("/redir/a.bin", content=data, headers={"X-Headrace-Redirect": "yes"})
        assert r.status_code == 307, r.text
        assert door.head("/redir/a.bin").status_code == 404, "the body sent to the door was stored"
        r = door.put("/redir/a.bin", content=b"", headers={"X-Headrace-Redirect": "yes"})
        assert r.status_code == 307, r.text
        location = r.headers["Location"]
        assert any(location.startswith(u + "/redir/a.bin?token=") for u in pool_urls), location
        assert door.head("/redir/a.bin").status_code == 404, "visible before any data was sent"
        r = http("PUT", location, content=data, headers={"Want-Digest": "md5"})
        assert r.status_code == 201, r.text
        assert r.headers["Location"] == f"{srv.door_url}/redir/a.bin"
        assert r.headers["Digest"] == f"md5={b64(hashlib.md5(data).digest())}"
        assert "CLOSE_WRITE" in events_for(srv, "/redir/a.bin")
        pool_name, blob, size = inode(srv, "/redir/a.bin")
        assert size == len(data) and redirecting.pools[pool_name].blob_path(blob).read_bytes() == data
        # The token is for that one blob: a second upload with it is refused, the first is untouched.
        assert http("PUT", location, content=b"again").status_code == 409
        assert redirecting.pools[pool_name].blob_path(blob).read_bytes() == data

        # HEAD is the door's; GET is a 302 to the pool that holds the file.
        head = door.head("/redir/a.bin")
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
        r = door.get("/redir/a.bin", headers={"Want-Digest": "adler32"})
        assert r.status_code == 302
        read_url = r.headers["Location"]
        assert read_url.startswith(redirecting.pools[pool_name].url + "/redir/a.bin?token=")
        followed = http("GET", read_url)
        assert followed.status_code == 200 and followed.content == data
        assert followed.headers["ETag"] == head.headers["ETag"]
        assert followed.headers["Digest"] == f"adler32={adler32(data)}"
        part = http("GET", read_url, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        with srv.door(follow_redirects=True) as following:
            assert following.get("/redir/a.bin").content == data

        # An altered token is refused: its payload (claiming another blob) or its signature.
        token = parse_qs(urlsplit(read_url).query)["token"][0]
        version, payload, signature = token.split(".")
        forged = proto.sign("not-the-secret", claims_of(read_url))
        base = read_url.split("?")[0]
        for bad in (
            f"{version}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}",
            f"{version}.{payload}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}",
            forged,
        ):
            r = http("GET", base, params={"token": bad})
            assert r.status_code == 403, f"altered token accepted: {bad}"


def claims_of(url: str) -> proto.PoolToken:
    payload = parse_qs(urlsplit(url).query)["token"][0].split(".")[1]
    return proto.PoolToken.from_json(json.loads(base64.urlsafe_b64decode(payload + "==")))


def test_redirect_tokens_expire(redirecting: Cluster) -> None:
    srv = redirecting.server
    with srv.door() as door:
        door.request("MKCOL", "/expire")
        # In redirect mode a PUT that neither expects 100-continue nor opts in is proxied as usual.
        assert door.put("/expire/x", content=b"expiring").status_code == 201
        read_url = door.get("/expire/x").headers["Location"]
        write_url = door.put("/expire/y", content=b"", headers={"X-Headrace-Redirect": "yes"}).headers["Location"]
        assert http("GET", read_url).content == b"expiring"
        exp = min(claims_of(read_url).exp, claims_of(write_url).exp)
        assert exp - time.time() < 6.5
        time.sleep(max(0.0, exp - time.time()) + 0.3)
        r = http("GET", read_url)
        assert r.status_code == 403 and "expired" in r.json()["detail"]
        r = http("PUT", write_url, content=b"too late")
        assert r.status_code == 403 and "expired" in r.json()["detail"]
        assert door.head("/expire/y").status_code == 404


def test_redirected_upload_with_a_wrong_digest_leaves_nothing(redirecting: Cluster) -> None:
    srv = redirecting.server
    before = {name: p.blobs() for name, p in redirecting.pools.items()}
    with srv.door() as door:
        door.request("MKCOL", "/digest")
        r = door.put("/digest/bad", content=b"x", headers={"X-Headrace-Redirect": "yes"})
        assert r.status_code == 307
        r = http("PUT", r.headers["Location"], content=b"payload", headers={"Digest": "adler32=00000000"})
        assert r.status_code == 400 and "Digest mismatch" in r.json()["detail"]
        assert door.head("/digest/bad").status_code == 404
    assert events_for(srv, "/digest/bad") == []
    for name, p in redirecting.pools.items():
        assert p.blobs() == before[name] and p.partial() == []


def test_curl_with_expect_100_continue_is_redirected_to_a_pool(redirecting: Cluster, tmp_path: Path) -> None:
    srv = redirecting.server
    data = os.urandom(3 * MB)
    (tmp_path / "up.bin").write_bytes(data)
    with srv.door() as door:
        door.request("MKCOL", "/curl")
    cmd = [
        "curl", "-sS", "-L", "-u", f"admin:{ADMIN_KEY}", "-H", "Expect: 100-continue", "-T", str(tmp_path / "up.bin"),
        "-o", "/dev/null", "-w", "%{http_code} %{num_redirects}", f"{srv.door_url}/curl/up.bin",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.stdout == "201 1", (out.stdout, out.stderr)
    pool_name, blob, size = inode(srv, "/curl/up.bin")
    assert size == len(data) and redirecting.pools[pool_name].blob_path(blob).read_bytes() == data
    got = subprocess.run(
        ["curl", "-sS", "-L", "-u", f"admin:{ADMIN_KEY}", f"{srv.door_url}/curl/up.bin"],
        capture_output=True,
        timeout=60,
    )
    assert got.stdout == data


# -- failures --------------------------------------------------------------------------------------------


def paced_put(port: int, path: str, data: bytes, first: int, result: dict[str, object], go_on: threading.Event) -> None:
    """PUT `data` over a raw socket: `first` bytes, then wait for `go_on`, then the rest; record what came back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            head = (
                f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {BASIC}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
            )
            s.sendall(head.encode() + data[:first])
            result["sent_first"] = True
            go_on.wait(30)
            try:
                s.sendall(data[first:])
            except OSError as exc:
                result["send_error"] = repr(exc)
            received = bytearray()
            while b"\r\n" not in received:
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed without a response")
                received += chunk
            result["status"] = int(received.split(b" ", 2)[1])
    except OSError as exc:
        result["error"] = repr(exc)


def test_pool_killed_mid_upload_then_restarted(tmp_path: Path) -> None:
    c = Cluster(tmp_path, server_env={}, pool_env={})
    try:
        srv = c.server
        kept = {f"/kill/keep{i}": os.urandom(100_000 + i) for i in range(4)}
        with srv.door() as door:
            door.request("MKCOL", "/kill")
            for path, data in kept.items():
                assert door.put(path, content=data).status_code == 201
        assert {c.pool_of(p).name for p in kept} == {"pool-a", "pool-b"}

        data = os.urandom(16 * MB)
        result: dict[str, object] = {}
        go_on = threading.Event()
        t = threading.Thread(target=paced_put, args=(srv.door_port, "/kill/big", data, 4 * MB, result, go_on))
        t.start()
        victim = wait_for(
            lambda: next((p for p in c.pools.values() if any(os.scandir(p.data / "tmp"))), None),
            "the upload to reach a pool",
        )
        wait_for(lambda: sum(e.stat().st_size for e in os.scandir(victim.data / "tmp")) > 0, "data in the pool")
        victim.kill()
        go_on.set()
        t.join(60)
        assert not t.is_alive()
        status = result.get("status")
        failed = status is None or (isinstance(status, int) and status >= 500)
        assert failed, f"the client was told {status} although its pool died"
        assert status is not None or "error" in result, result
        with srv.door() as door:
            assert door.head("/kill/big").status_code == 404, "a cut-off upload became visible"
            # Its files are unavailable while it is down (503, not a hang or an empty 200) ...
            victim_files = [p for p in kept if c.pool_of(p) is victim]
            r = door.get(victim_files[0])
            assert r.status_code == 503 and r.json()["status"] == "503"
            # ... and new files go to the pool that is alive.
            for i in range(3):
                assert door.put(f"/kill/new{i}", content=b"new %d" % i).status_code == 201
                assert c.pool_of(f"/kill/new{i}") is not victim
        assert events_for(srv, "/kill/big") == [], "an event was written for an upload that never completed"

        assert victim.partial() != [], "the killed pool's partial upload vanished before its restart"
        victim.start()
        assert victim.partial() == [], "the restarted pool kept the partial upload"
        assert "recovered: removed 1 partial uploads" in victim.log()
        with srv.door() as door:
            for path, body in kept.items():
                r = door.get(path)
                assert r.status_code == 200 and r.content == body, path
            assert door.head("/kill/big").status_code == 404
        assert events_for(srv, "/kill/big") == []
    finally:
        c.stop()


def test_a_pool_name_belongs_to_one_pool(cluster: Cluster, tmp_path: Path) -> None:
    """A second process claiming a live pool's name refuses to start (one line, exit 1); a pool directory
    keeps the name it was first served under."""
    a = cluster.pools["pool-a"]
    impostor = PoolProcess(tmp_path / "impostor", a.db, "pool-a")
    out = subprocess.run(impostor.command(), env=impostor.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "pool-a is registered at" in out.stderr, out.stderr
    renamed = PoolProcess(a.data, a.db, "pool-z")
    out = subprocess.run(renamed.command(), env=renamed.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "holds pool 'pool-a'" in out.stderr, out.stderr
    with cluster.server.door() as door:
        door.request("MKCOL", "/names")
        assert door.put("/names/x", content=b"still served").status_code == 201
        assert door.get("/names/x").content == b"still served"
