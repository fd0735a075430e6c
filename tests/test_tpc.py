"""HTTP third-party copy between two real `headrace up` doors on 127.0.0.1 (`here` and `there`): COPY with
`Source:` (pull) and with a remote `Destination:` (push), as curl-like requests and driven by gfal2's
`gfal-copy --copy-mode pull|push`; the perf-marker stream and its last line; checksums verified (a corrupted
remote or local copy is a failure line and nothing visible); permissions exactly as a PUT or GET of the
path by the user, macaroon caveats included; wrong remote credentials; the concurrent-copy limit; the
upload event of a pulled file; and a function pulling a file with `ctx.storage.copy_from`.

Users: `alice` (the same name on both servers) owns /alice on each; `bob` is a second, non-admin user of
`here` who may read and write only /bob.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

from harness import Server, add_user, execute, http, query, wait_for

NS = "/api/v1/namespaces/_"
MARKER_INTERVAL = "0.2"


@dataclass
class User:
    name: str
    key: str
    uid: int

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.name}:{self.key}".encode()).decode()

    @property
    def auth(self) -> tuple[str, str]:
        return (self.name, self.key)


@dataclass
class Pair:
    here: Server
    there: Server
    alice_here: User
    alice_there: User
    bob: User


def _mkdir_owned(srv: Server, parent: str, name: str, uid: int, mode: int | None = None) -> None:
    with srv.api() as api:
        r = api.post(f"/api/v1/namespace{parent}", json={"action": "mkdir", "name": name})
        assert r.is_success, r.text
        path = f"{parent.rstrip('/')}/{name}"
        assert api.post(f"/api/v1/namespace{path}", json={"action": "chown", "uid": uid}).is_success
        if mode is not None:
            assert api.post(f"/api/v1/namespace{path}", json={"action": "chmod", "mode": mode}).is_success


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("tpc")
    env = {"HEADRACE_TPC_PER_USER": "1", "HEADRACE_TPC_MARKER_INTERVAL": MARKER_INTERVAL}
    here = Server(data=base / "here", cli_config=base / "here.json", env_extra=env).start()
    there = Server(data=base / "there", cli_config=base / "there.json", env_extra=env).start()
    try:
        users = [User(*add_user(here, "alice")), User(*add_user(there, "alice")), User(*add_user(here, "bob"))]
        alice_here, alice_there, bob = users
        _mkdir_owned(here, "/", "alice", alice_here.uid, 0o755)
        _mkdir_owned(there, "/", "alice", alice_there.uid, 0o755)
        _mkdir_owned(here, "/", "bob", bob.uid, 0o755)
        yield Pair(here, there, alice_here, alice_there, bob)
    finally:
        here.stop()
        there.stop()


def _put(srv: Server, user: User, path: str, data: bytes) -> None:
    r = http("PUT", srv.door_url + path, auth=user.auth, content=data)
    assert r.status_code in (201, 204), r.text


def _adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def _copy(srv: Server, path: str, headers: dict[str, str], **kw: Any) -> httpx.Response:
    return http("COPY", srv.door_url + path, headers=headers, timeout=120, **kw)


def _last_line(r: httpx.Response) -> str:
    lines = [line.strip() for line in r.text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _markers(r: httpx.Response) -> list[int]:
    return [int(m) for m in re.findall(r"Stripe Bytes Transferred: (\d+)", r.text)]


def _blob_of(srv: Server, data: bytes) -> Path:
    """The pool file holding `data` (to corrupt it as a failing disk would)."""
    for path in (srv.data / "pools").rglob("data/*/*"):
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return path
    raise AssertionError("no blob holds the data")


def _events(srv: Server, path: str) -> list[tuple[str, str | None]]:
    return [
        (k, c) for k, c in query(srv.data, 'SELECT kind, cause FROM events WHERE path = :p ORDER BY "offset"', p=path)
    ]


# -- pull and push, curl-like -------------------------------------------------------------------------------


def test_pull_streams_markers_and_commits_as_an_upload(pair: Pair) -> None:
    data = secrets.token_bytes(3 * 1024 * 1024 + 17)
    _put(pair.there, pair.alice_there, "/alice/pull-src", data)
    headers = {
        "Source": f"{pair.there.door_url}/alice/pull-src",
        "TransferHeaderAuthorization": pair.alice_there.basic(),
        "Credential": "none",
    }
    r = _copy(pair.here, "/alice/pulled", headers, auth=pair.alice_here.auth)
    assert r.status_code == 202, r.text
    assert r.headers["content-type"] == "text/perf-marker-stream"
    assert r.text.startswith("Perf Marker\n")
    for field_name in ("Timestamp:", "Stripe Index: 0", "Stripe Bytes Transferred:", "Total Stripe Count: 1"):
        assert field_name in r.text
    assert _last_line(r) == "success: Created"
    assert _markers(r)[-1] == len(data)
    got = http("GET", pair.here.door_url + "/alice/pulled", auth=pair.alice_here.auth)
    assert got.status_code == 200 and got.content == data
    with pair.here.api() as api:
        meta = api.get("/api/v1/namespace/alice/pulled", params={"checksum": "true"}).json()
    assert meta["fileType"] == "REGULAR" and meta["size"] == len(data)
    assert {"type": "ADLER32", "value": _adler(data)} in meta["checksums"]
    owner = query(pair.here.data, "SELECT uid FROM inodes WHERE name = 'pulled'")
    assert owner == [(pair.alice_here.uid,)]
    # The same events as an upload: the file is created, then closed after writing (IN_CLOSE_WRITE).
    kinds = [k for k, _ in _events(pair.here, "/alice/pulled")]
    assert "CLOSE_WRITE" in kinds and kinds.index("CREATE") < kinds.index("CLOSE_WRITE")


def test_pull_over_an_existing_file_and_overwrite_f(pair: Pair) -> None:
    _put(pair.there, pair.alice_there, "/alice/ow-src", b"new content")
    _put(pair.here, pair.alice_here, "/alice/ow", b"old")
    headers = {"Source": f"{pair.there.door_url}/alice/ow-src", "TransferHeaderAuthorization": pair.alice_there.basic()}
    refused = _copy(pair.here, "/alice/ow", {**headers, "Overwrite": "F"}, auth=pair.alice_here.auth)
    assert refused.status_code == 412 and refused.json()["status"] == "412"
    r = _copy(pair.here, "/alice/ow", headers, auth=pair.alice_here.auth)
    assert r.status_code == 202 and _last_line(r) == "success: Created"
    assert http("GET", pair.here.door_url + "/alice/ow", auth=pair.alice_here.auth).content == b"new content"


def test_push_sends_the_file_with_its_digest(pair: Pair) -> None:
    data = secrets.token_bytes(2 * 1024 * 1024 + 5)
    _put(pair.here, pair.alice_here, "/alice/push-src", data)
    headers = {
        "Destination": f"{pair.there.door_url}/alice/pushed",
        "TransferHeaderAuthorization": pair.alice_there.basic(),
        "Credential": "none",
    }
    r = _copy(pair.here, "/alice/push-src", headers, auth=pair.alice_here.auth)
    assert r.status_code == 202, r.text
    assert r.headers["content-type"] == "text/perf-marker-stream"
    assert _last_line(r) == "success: Created", r.text
    assert _markers(r)[-1] == len(data)
    got = http("GET", pair.there.door_url + "/alice/pushed", auth=pair.alice_there.auth)
    assert got.status_code == 200 and got.content == data
    # The remote's upload belongs to the remote credential's user.
    assert query(pair.there.data, "SELECT uid FROM inodes WHERE name = 'pushed'") == [(pair.alice_there.uid,)]


# -- checksums ----------------------------------------------------------------------------------------------


def test_a_corrupted_remote_is_a_failure_and_nothing_is_visible(pair: Pair) -> None:
    data = secrets.token_bytes(1024 * 1024)
    _put(pair.there, pair.alice_there, "/alice/rotten", data)
    blob = _blob_of(pair.there, data)
    blob.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])  # the recorded adler32 no longer holds
    headers = {"Source": f"{pair.there.door_url}/alice/rotten", "TransferHeaderAuthorization": pair.alice_there.basic()}
    r = _copy(pair.here, "/alice/rotten-copy", headers, auth=pair.alice_here.auth)
    assert r.status_code == 202
    last = _last_line(r)
    assert last.startswith("failure:") and "mismatch" in last.lower(), last
    assert http("GET", pair.here.door_url + "/alice/rotten-copy", auth=pair.alice_here.auth).status_code == 404
    assert _events(pair.here, "/alice/rotten-copy") == []
    assert not any((pair.here.data / "pools").rglob("tmp/*"))  # no partial upload left behind


def test_a_corrupted_local_file_is_not_pushed(pair: Pair) -> None:
    data = secrets.token_bytes(512 * 1024)
    _put(pair.here, pair.alice_here, "/alice/rotten-here", data)
    blob = _blob_of(pair.here, data)
    blob.write_bytes(b"\x00" + data[1:])
    headers = {
        "Destination": f"{pair.there.door_url}/alice/rotten-pushed",
        "TransferHeaderAuthorization": pair.alice_there.basic(),
    }
    r = _copy(pair.here, "/alice/rotten-here", headers, auth=pair.alice_here.auth)
    assert r.status_code == 202
    assert _last_line(r).startswith("failure:"), r.text
    assert http("GET", pair.there.door_url + "/alice/rotten-pushed", auth=pair.alice_there.auth).status_code == 404


class _Plain(BaseHTTPRequestHandler):
    """A remote without checksums: /slow (holds its body until released), /chunked, /redirect (to /chunked),
    /elsewhere?to=URL (to URL), anything else whole."""

    release = threading.Event()
    protocol_version = "HTTP/1.1"
    body = bytes(range(256)) * 16

    def do_GET(self) -> None:
        if self.path.startswith("/elsewhere?to="):  # a redirect to wherever the test says
            self.send_response(302)
            self.send_header("Location", unquote(self.path.split("=", 1)[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/redirect":  # as a dCache door sends a client to its pool
            self.send_response(302)
            self.send_header("Location", "/chunked")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(self.body), 1000):
                piece = self.body[i : i + 1000]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.path == "/slow":
            self.wfile.write(self.body[:100])
            self.wfile.flush()
            self.release.wait(60)
            self.wfile.write(self.body[100:])
        else:
            self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def plain() -> Iterator[str]:
    _Plain.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Plain.release.set()
    server.shutdown()
    server.server_close()


def test_without_a_remote_checksum_verification_fails_unless_waived(pair: Pair, plain: str) -> None:
    headers = {"Source": f"{plain}/nodigest"}
    r = _copy(pair.here, "/alice/nodigest", headers, auth=pair.alice_here.auth)
    assert r.status_code == 202 and "no checksum" in _last_line(r), r.text
    assert http("GET", pair.here.door_url + "/alice/nodigest", auth=pair.alice_here.auth).status_code == 404
    r = _copy(
        pair.here, "/alice/nodigest", {**headers, "RequireChecksumVerification": "false"}, auth=pair.alice_here.auth
    )
    assert _last_line(r) == "success: Created", r.text
    assert http("GET", pair.here.door_url + "/alice/nodigest", auth=pair.alice_here.auth).content == _Plain.body
    # A chunked body, behind a redirect.
    waived = {"Source": f"{plain}/redirect", "RequireChecksumVerification": "false"}
    r = _copy(pair.here, "/alice/chunked", waived, auth=pair.alice_here.auth)
    assert _last_line(r) == "success: Created", r.text
    assert http("GET", pair.here.door_url + "/alice/chunked", auth=pair.alice_here.auth).content == _Plain.body


# -- refusals -----------------------------------------------------------------------------------------------


def test_the_transfer_policy_keeps_copies_from_denied_addresses(pair: Pair, plain: str, tmp_path: Path) -> None:
    """A door with HEADRACE_TPC_DENY=127.0.0.2/32, a non-admin user: a copy naming a denied address is a 403
    before any byte moves (pull and push), a remote that redirects there fails the copy and nothing is stored;
    the default policy denies link-local addresses (a cloud's metadata service)."""
    env = {"HEADRACE_TPC_DENY": "127.0.0.2/32", "HEADRACE_TPC_MARKER_INTERVAL": MARKER_INTERVAL}
    guarded = Server(data=tmp_path / "guarded", cli_config=tmp_path / "guarded.json", env_extra=env).start()
    try:
        carol = User(*add_user(guarded, "carol"))
        _mkdir_owned(guarded, "/", "carol", carol.uid, 0o755)
        denied = f"http://127.0.0.2:{urlsplit(plain).port}"
        r = _copy(guarded, "/carol/pulled", {"Source": f"{denied}/chunked"}, auth=carol.auth)
        assert r.status_code == 403, r.text
        assert "127.0.0.2" in r.json()["detail"] and "HEADRACE_TPC_DENY" in r.json()["detail"], r.json()
        _put(guarded, carol, "/carol/src", b"to push")
        r = _copy(guarded, "/carol/src", {"Destination": f"{denied}/x"}, auth=carol.auth)
        assert r.status_code == 403 and "127.0.0.2" in r.json()["detail"], r.text
        source = f"{plain}/elsewhere?to={quote(denied + '/chunked', safe='')}"
        headers = {"Source": source, "RequireChecksumVerification": "false"}
        r = _copy(guarded, "/carol/redirected", headers, auth=carol.auth)
        assert r.status_code == 202 and _last_line(r).startswith("failure"), r.text
        assert "may not reach" in r.text, r.text
        assert http("GET", guarded.door_url + "/carol/redirected", auth=carol.auth).status_code == 404
        # a name is judged by what it resolves to
        r = _copy(guarded, "/carol/pulled", {"Source": "http://127.0.0.2.nip.invalid/x"}, auth=carol.auth)
        assert r.status_code == 202 and _last_line(r).startswith("failure"), r.text  # does not resolve: fails later
    finally:
        guarded.stop()
    r = _copy(
        pair.here, "/alice/meta", {"Source": "http://169.254.169.254/latest/meta-data/"}, auth=pair.alice_here.auth
    )
    assert r.status_code == 403 and "169.254.169.254" in r.json()["detail"], r.text


def _macaroon(srv: Server, user: User, path: str, activities: str) -> str:
    r = http(
        "POST",
        f"{srv.door_url}{path}/",
        auth=user.auth,
        headers={"Content-Type": "application/macaroon-request"},
        json={"caveats": [f"path:{path}", f"activity:{activities}"], "validity": "PT1H"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["macaroon"])


def test_permissions_are_those_of_a_put_or_get_by_the_user(pair: Pair) -> None:
    _put(pair.there, pair.alice_there, "/alice/perm-src", b"remote data")
    _put(pair.here, pair.alice_here, "/alice/private", b"alice's only")
    with pair.here.api() as api:
        assert api.post("/api/v1/namespace/alice/private", json={"action": "chmod", "mode": 0o600}).is_success
    pull = {"Source": f"{pair.there.door_url}/alice/perm-src", "TransferHeaderAuthorization": pair.alice_there.basic()}
    push = {
        "Destination": f"{pair.there.door_url}/alice/from-bob",
        "TransferHeaderAuthorization": pair.alice_there.basic(),
    }

    # bob may not write /alice nor read alice's private file: refused before anything moves.
    r = _copy(pair.here, "/alice/bobs", pull, auth=pair.bob.auth)
    assert r.status_code == 403 and r.json()["status"] == "403", r.text
    r = _copy(pair.here, "/alice/private", push, auth=pair.bob.auth)
    assert r.status_code == 403 and r.json()["status"] == "403", r.text
    assert http("GET", pair.there.door_url + "/alice/from-bob", auth=pair.alice_there.auth).status_code == 404
    # No credentials: 401 as for any request.
    assert _copy(pair.here, "/bob/x", pull).status_code == 401

    # In his own directory he may pull.
    r = _copy(pair.here, "/bob/pulled", pull, auth=pair.bob.auth)
    assert _last_line(r) == "success: Created", r.text
    assert query(pair.here.data, "SELECT uid FROM inodes WHERE name = 'pulled' AND size = 11") == [(pair.bob.uid,)]

    # Macaroon caveats: a token without UPLOAD cannot pull, one without DOWNLOAD cannot push.
    read_only = _macaroon(pair.here, pair.bob, "/bob", "DOWNLOAD,LIST,READ_METADATA")
    r = _copy(pair.here, "/bob/by-token", {**pull, "Authorization": f"Bearer {read_only}"})
    assert r.status_code == 403 and "UPLOAD" in r.json()["detail"], r.text
    write_only = _macaroon(pair.here, pair.bob, "/bob", "UPLOAD,LIST,READ_METADATA")
    push_bob = {**push, "Destination": f"{pair.there.door_url}/alice/bob-token"}
    r = _copy(pair.here, "/bob/pulled", {**push_bob, "Authorization": f"Bearer {write_only}"})
    assert r.status_code == 403 and "DOWNLOAD" in r.json()["detail"], r.text
    # A token for /bob does not reach /alice, whatever bob may do otherwise.
    upload = _macaroon(pair.here, pair.bob, "/bob", "UPLOAD,DOWNLOAD")
    r = _copy(pair.here, "/bob/by-token", {**pull, "Authorization": f"Bearer {upload}"})
    assert _last_line(r) == "success: Created", r.text
    r = _copy(pair.here, "/alice/by-token", {**pull, "Authorization": f"Bearer {upload}"})
    assert r.status_code == 403

    # Wrong remote credentials: accepted here, refused there, reported on the failure line.
    wrong = {**pull, "TransferHeaderAuthorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}
    r = _copy(pair.here, "/bob/wrong-remote", wrong, auth=pair.bob.auth)
    assert r.status_code == 202
    assert _last_line(r).startswith("failure:") and "401" in _last_line(r), r.text
    assert http("GET", pair.here.door_url + "/bob/wrong-remote", auth=pair.bob.auth).status_code == 404
    wrong_push = {**wrong, "Destination": f"{pair.there.door_url}/alice/wrong"}
    del wrong_push["Source"]
    r = _copy(pair.here, "/bob/pulled", wrong_push, auth=pair.bob.auth)
    assert _last_line(r).startswith("failure:") and "401" in _last_line(r), r.text


def test_bad_requests_are_json_errors(pair: Pair) -> None:
    cases = [
        {"Source": "ftp://example.org/file"},
        {"Source": "file:///etc/passwd"},
        {"Source": "gsiftp://example.org/file"},
        {"Source": "http://[::1"},
        {"Destination": "http://[::1"},
        {"Source": f"{pair.there.door_url}/alice/x", "Credential": "gridsite"},
        {"Source": f"{pair.there.door_url}/alice/x", "RequireChecksumVerification": "maybe"},
        {"Source": f"{pair.there.door_url}/alice/x", "TransferHeaderContent-Length": "5"},
    ]
    for headers in cases:
        r = _copy(pair.here, "/alice/bad", headers, auth=pair.alice_here.auth)
        assert r.status_code == 400, (headers, r.text)
        body = r.json()
        assert body["status"] == "400" and body["title"] and body["detail"], body
    r = _copy(pair.here, "/alice/push-src", {"Destination": "gsiftp://example.org/x"}, auth=pair.alice_here.auth)
    assert r.status_code == 400 and r.json()["status"] == "400"


def test_concurrent_copies_per_user_are_limited(pair: Pair, plain: str) -> None:
    headers = {"Source": f"{plain}/slow", "RequireChecksumVerification": "false"}
    url = pair.here.door_url + "/alice/slow"
    seen: list[str] = []
    with httpx.Client(auth=pair.alice_here.auth, timeout=60) as c, c.stream("COPY", url, headers=headers) as r:
        assert r.status_code == 202
        lines = r.iter_lines()
        # Markers come while the remote holds its body: the first, then one with the 100 bytes sent.
        while "Stripe Bytes Transferred: 100" not in (line := next(lines, "(end)")):
            seen.append(line)
            assert line != "(end)" and not line.startswith(("success", "failure")), seen
        busy = _copy(pair.here, "/alice/slow2", headers, auth=pair.alice_here.auth)
        assert busy.status_code == 429, busy.text
        assert busy.json()["status"] == "429" and "third-party copies" in busy.json()["detail"]
        assert busy.headers.get("retry-after")
        # Another user is not held back by alice's copy.
        other = _copy(
            pair.here,
            "/bob/other",
            {"Source": f"{plain}/nodigest", "RequireChecksumVerification": "false"},
            auth=pair.bob.auth,
        )
        assert _last_line(other) == "success: Created", other.text
        _Plain.release.set()
        rest = [line.strip() for line in lines if line.strip()]
    assert rest[-1] == "success: Created"
    assert http("GET", url, auth=pair.alice_here.auth).content == _Plain.body
    # The slot is free again.
    again = _copy(
        pair.here,
        "/alice/slow3",
        {"Source": f"{plain}/nodigest", "RequireChecksumVerification": "false"},
        auth=pair.alice_here.auth,
    )
    assert _last_line(again) == "success: Created"


# -- gfal2 ---------------------------------------------------------------------------------------------------

GFAL_PYTHON = "/usr/bin/python3"


def _gfal_copy() -> str:
    found = shutil.which("gfal-copy")
    if found is None:
        pytest.skip("gfal-copy is not installed (apt-get install gfal2-util-scripts gfal2-plugin-http)")
    return found


def _share_root_key(pair: Pair) -> None:
    """One token valid on both doors (as a WLCG token is at every site): `there` takes `here`'s root key."""
    key = query(pair.here.data, "SELECT value FROM state WHERE name = 'macaroon-root-key'")[0][0]
    execute(pair.there.data, "UPDATE state SET value = :v WHERE name = 'macaroon-root-key'", [{"v": key}])


def test_gfal_copy_pull_and_push(pair: Pair, tmp_path: Path) -> None:
    gfal_copy = _gfal_copy()
    _share_root_key(pair)
    token = _macaroon(pair.here, pair.alice_here, "/alice", "DOWNLOAD,UPLOAD,LIST,READ_METADATA,DELETE,MANAGE")
    bearer = {"Authorization": f"Bearer {token}"}
    wait_for(
        lambda: http("PROPFIND", pair.there.door_url + "/alice/", headers={**bearer, "Depth": "0"}).status_code == 207,
        "the shared key",
    )
    data = secrets.token_bytes(5 * 1024 * 1024 + 3)
    _put(pair.there, pair.alice_there, "/alice/gfal-src", data)
    env = {**os.environ, "GFAL_PYTHONBIN": GFAL_PYTHON, "BEARER_TOKEN": token, "HOME": str(tmp_path)}

    def gfal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([gfal_copy, "-vv", *args], capture_output=True, text=True, env=env, timeout=300)

    pulled = gfal(
        "--copy-mode", "pull", f"{pair.there.door_url}/alice/gfal-src", f"{pair.here.door_url}/alice/gfal-pulled"
    )
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    log = pulled.stdout + pulled.stderr
    assert "third party copy" in log.lower() and "streamed" not in log.lower(), log
    got = http("GET", pair.here.door_url + "/alice/gfal-pulled", headers=bearer)
    assert got.content == data

    pushed = gfal(
        "--copy-mode",
        "push",
        "-K",
        "adler32",
        f"{pair.here.door_url}/alice/gfal-pulled",
        f"{pair.there.door_url}/alice/gfal-pushed",
    )
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    log = pushed.stdout + pushed.stderr
    assert "third party copy" in log.lower() and "streamed" not in log.lower(), log
    assert http("GET", pair.there.door_url + "/alice/gfal-pushed", headers=bearer).content == data

    # With a checksum asked for, pull mode verifies it end to end.
    verified = gfal(
        "--copy-mode",
        "pull",
        "-K",
        "adler32",
        f"{pair.there.door_url}/alice/gfal-src",
        f"{pair.here.door_url}/alice/gfal-verified",
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert http("GET", pair.here.door_url + "/alice/gfal-verified", headers=bearer).content == data


# -- functions ------------------------------------------------------------------------------------------------

PULLER = """
def main(params, ctx):
    ctx.storage.copy_from(params["url"], params["path"], headers={"Authorization": params["auth"]})
    try:
        auth = {"Authorization": params["auth"]}
        ctx.storage.copy_from(params["url"] + ".missing", params["path"] + ".missing", headers=auth)
    except Exception as exc:
        missing = str(exc)
    return {"size": len(ctx.storage.read(params["path"])), "missing": missing}
"""


def test_a_function_pulls_a_file_with_copy_from(pair: Pair) -> None:
    data = secrets.token_bytes(300 * 1024)
    _put(pair.there, pair.alice_there, "/alice/for-fn", data)
    with pair.here.api() as api:
        assert api.post("/api/v1/namespace/", json={"action": "mkdir", "name": "fn"}).is_success
        body = {"exec": {"kind": "python:3", "code": PULLER}, "annotations": [{"key": "storage", "value": True}]}
        assert api.put(f"{NS}/actions/puller", json=body).status_code == 200
        params = {"url": f"{pair.there.door_url}/alice/for-fn", "path": "/fn/pulled", "auth": pair.alice_there.basic()}
        r = api.post(f"{NS}/actions/puller", params={"blocking": "true"}, json=params, timeout=120)
    assert r.status_code == 200, r.text
    record = r.json()
    result = record["response"]["result"]
    assert result["size"] == len(data), record
    assert "failure:" in result["missing"] and "404" in result["missing"], result
    assert http("GET", pair.here.door_url + "/fn/pulled", auth=pair.here.auth).content == data
    # The pulled file's events name the activation that asked for it.
    assert ("CLOSE_WRITE", record["activationId"]) in _events(pair.here, "/fn/pulled")


# -- the parts, without servers -------------------------------------------------------------------------------


def test_wire_format_and_header_mapping() -> None:
    from headrace.errors import BadRequest
    from headrace.storage import tpc

    marker = tpc.perf_marker(1234, 1700000000.7).decode()
    assert [line.strip() for line in marker.splitlines()] == [
        "Perf Marker",
        "Timestamp: 1700000000",
        "Stripe Index: 0",
        "Stripe Bytes Transferred: 1234",
        "Total Stripe Count: 1",
        "End",
    ]
    assert tpc.failure_line("remote GET answered 404\nNot Found") == b"failure: remote GET answered 404 Not Found\n"
    mapped = tpc.transfer_headers(
        [("TransferHeaderAuthorization", "Bearer t"), ("Authorization", "mine"), ("transferheaderx-a", "1")]
    )
    assert mapped == {"Authorization": "Bearer t", "x-a": "1"}
    for bad in ("TransferHeader", "TransferHeaderHost", "TransferHeaderTransfer-Encoding"):
        with pytest.raises(BadRequest):
            tpc.transfer_headers([(bad, "x")])
    assert tpc.compare({"ADLER32": "0000002a"}, {"ADLER32": "0000002a"}) is None
    assert "mismatch" in (tpc.compare({"ADLER32": "0000002a"}, {"ADLER32": "0000002b"}) or "")
    assert tpc.remote_digest("adler32=0000002A", ["ADLER32"]) == {"ADLER32": "0000002a"}


def test_blob_chunks_reads_any_store() -> None:
    """The push path for blobs held by a pool process: the store's own ASGI send, caught chunk by chunk."""
    import asyncio

    from headrace.storage.memory_store import MemoryStore
    from headrace.storage.tpc_transfer import blob_chunks

    async def run() -> bytes:
        store = MemoryStore("mem")
        data = secrets.token_bytes(3 * 1024 * 1024 + 1)
        stored = await store.write(data)
        got = b"".join([c async for c in blob_chunks(store, stored.blob, stored.size, "f")])
        assert got == data
        with pytest.raises(Exception, match=r"(?i)missing|not found|no such"):
            async for _ in blob_chunks(store, "0" * 32, 10, "gone"):
                pass
        return got

    assert asyncio.run(run())


def test_transfer_policy_rules() -> None:
    import asyncio

    from headrace.storage.tpc_policy import TransferPolicy, TransferRefused

    default = TransferPolicy.from_env({})
    for address in ("169.254.169.254", "::ffff:169.254.169.254", "fe80::1%eth0", "0.0.0.0", "::", "224.0.0.1"):
        assert not default.permits(address), address
    for address in ("127.0.0.1", "10.1.2.3", "2001:db8::1", "131.169.1.1"):
        assert default.permits(address), address
    private = TransferPolicy.from_env({"HEADRACE_TPC_DENY": "127.0.0.0/8, ::1, 10.0.0.0/8"})
    assert not private.permits("127.0.0.1") and not private.permits("::1") and not private.permits("::ffff:10.0.0.1")
    assert private.permits("169.254.169.254")  # a list given replaces the default
    only = TransferPolicy.from_env({"HEADRACE_TPC_ALLOW": "131.169.0.0/16", "HEADRACE_TPC_DENY": "131.169.9.0/24"})
    assert only.permits("131.169.1.1") and not only.permits("131.169.9.1") and not only.permits("127.0.0.1")
    with pytest.raises(TransferRefused, match=r"localhost resolves to .*127\.0\.0\.1.*HEADRACE_TPC_DENY"):
        asyncio.run(private.addresses("localhost", 80))
    with pytest.raises(TransferRefused, match="HEADRACE_TPC_ALLOW"):
        asyncio.run(only.addresses("127.0.0.1", 80))
    assert asyncio.run(default.addresses("[::1]", 80)) == ["::1"]
    with pytest.raises(ValueError, match="HEADRACE_TPC_DENY: 'nonsense' is not a network"):
        TransferPolicy.from_env({"HEADRACE_TPC_DENY": "10.0.0.0/8,nonsense"})
