"""WebDAV class 2 locking (RFC 4918 sections 6, 7, 9.10, 9.11, 10.4) over raw HTTP against a real door,
plus the pure parts of `headrace.storage.locks` (If header grammar, timeouts, lock bookkeeping)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from harness import Server, wait_for
from headrace.errors import BadRequest, TooManyRequests
from headrace.storage import locks
from headrace.storage.locks import Condition, IfList, Locked, LockManager

from .tools import api_path

pytestmark = pytest.mark.interop

D = "{DAV:}"
OWNER = '<D:owner xmlns:D="DAV:"><D:href>mailto:ops@example.org</D:href></D:owner>'


def lockinfo(scope: str = "exclusive", owner: str = OWNER) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:{scope}/></D:lockscope>'
        f"<D:locktype><D:write/></D:locktype>{owner}</D:lockinfo>"
    )


@pytest.fixture(scope="module")
def door(server: Server) -> Iterator[httpx.Client]:
    with server.door() as c:
        yield c


@pytest.fixture
def base(door: httpx.Client, request: pytest.FixtureRequest) -> str:
    path = f"/locks-{request.node.name}"
    assert door.request("MKCOL", quote(path)).status_code == 201
    return path


def put(door: httpx.Client, path: str, body: bytes = b"x", token: str | None = None, **headers: str) -> int:
    if token:
        headers["If"] = f"(<{token}>)"
    return door.put(quote(path), content=body, headers=headers).status_code


def lock(
    door: httpx.Client, path: str, scope: str = "exclusive", depth: str = "infinity", timeout: str = "Second-600"
) -> httpx.Response:
    return door.request(
        "LOCK",
        quote(path),
        content=lockinfo(scope),
        headers={"Depth": depth, "Timeout": timeout, "Content-Type": "application/xml"},
    )


def token_of(r: httpx.Response) -> str:
    assert r.status_code in (200, 201), r.text
    header = r.headers["lock-token"]
    assert header.startswith("<") and header.endswith(">")
    return header[1:-1]


def activelocks(door: httpx.Client, path: str) -> list[ET.Element]:
    body = '<D:propfind xmlns:D="DAV:"><D:prop><D:lockdiscovery/><D:supportedlock/></D:prop></D:propfind>'
    r = door.request("PROPFIND", quote(path), content=body, headers={"Depth": "0"})
    assert r.status_code == 207, r.text
    root = ET.fromstring(r.content)
    entries = root.findall(f".//{D}supportedlock/{D}lockentry")
    assert {e.find(f"{D}lockscope/*").tag for e in entries} == {f"{D}exclusive", f"{D}shared"}  # type: ignore[union-attr]
    return root.findall(f".//{D}lockdiscovery/{D}activelock")


def test_options_advertise_class_2(door: httpx.Client) -> None:
    r = door.options("/")
    assert [c.strip() for c in r.headers["dav"].split(",")] == ["1", "2"]
    allow = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"LOCK", "UNLOCK"} <= allow


def test_exclusive_lock_on_a_file(door: httpx.Client, base: str, server: Server) -> None:
    f = f"{base}/doc ü.txt"
    assert put(door, f, b"v1") == 201
    r = lock(door, f, depth="0", timeout="Second-600")
    assert r.status_code == 200
    token = token_of(r)
    assert token.startswith("opaquelocktoken:")
    # The LOCK body describes the new lock.
    body = ET.fromstring(r.content)
    active = body.find(f"{D}lockdiscovery/{D}activelock")
    assert active is not None
    assert active.findtext(f"{D}locktoken/{D}href") == token
    assert active.find(f"{D}lockscope/{D}exclusive") is not None
    assert active.find(f"{D}locktype/{D}write") is not None
    assert active.findtext(f"{D}depth") == "0"
    assert active.findtext(f"{D}owner/{D}href") == "mailto:ops@example.org"
    assert active.findtext(f"{D}lockroot/{D}href") == quote(f)
    timeout = active.findtext(f"{D}timeout") or ""
    assert timeout.startswith("Second-") and 590 <= int(timeout[7:]) <= 600
    # PROPFIND shows it too.
    [found] = activelocks(door, f)
    assert found.findtext(f"{D}locktoken/{D}href") == token

    # Without the token: every change is refused with 423, reads go on.
    assert put(door, f, b"v2") == 423
    assert door.delete(quote(f)).status_code == 423
    assert door.request("MOVE", quote(f), headers={"Destination": quote(f"{base}/moved")}).status_code == 423
    assert door.request("COPY", quote(f"{base}/other"), headers={"Destination": quote(f)}).status_code in (404, 423)
    assert put(door, f"{base}/other", b"o") == 201
    assert door.request("COPY", quote(f"{base}/other"), headers={"Destination": quote(f)}).status_code == 423
    proppatch = (
        '<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><x:k xmlns:x="urn:x">v</x:k></D:prop></D:set>'
        "</D:propertyupdate>"
    )
    assert door.request("PROPPATCH", quote(f), content=proppatch).status_code == 423
    assert door.get(quote(f)).content == b"v1"
    assert door.request("COPY", quote(f), headers={"Destination": quote(f"{base}/copy")}).status_code == 201
    assert put(door, f"{base}/copy", b"c") == 204  # locks are not copied
    # Nor can anyone lock it again.
    assert lock(door, f).status_code == 423
    assert lock(door, f, scope="shared").status_code == 423

    # A token that is not the lock's makes the If header false: 412. A true header without the token: 423.
    assert put(door, f, b"v2", token="opaquelocktoken:00000000-0000-0000-0000-000000000000") == 412
    assert door.put(quote(f), content=b"v2", headers={"If": "(Not <DAV:no-lock>)"}).status_code == 423

    # With the token, untagged or tagged with the resource's URL, changes go through.
    assert put(door, f, b"v2", token=token) == 204
    tagged = f"<{server.door_url}{quote(f)}> (<{token}>)"
    assert door.put(quote(f), content=b"v3", headers={"If": tagged}).status_code == 204
    r = door.request("PROPPATCH", quote(f), content=proppatch, headers={"If": f"(<{token}>)"})
    assert r.status_code == 207
    etag = door.head(quote(f)).headers["etag"]
    assert door.put(quote(f), content=b"v4", headers={"If": f"(<{token}> [{etag}])"}).status_code == 204
    assert door.put(quote(f), content=b"v5", headers={"If": f"(<{token}> [{etag}])"}).status_code == 412  # stale

    # UNLOCK needs the token in Lock-Token, for this resource.
    assert door.request("UNLOCK", quote(f)).status_code == 400
    wrong = door.request("UNLOCK", quote(f"{base}/other"), headers={"Lock-Token": f"<{token}>"})
    assert wrong.status_code == 409
    assert door.request("UNLOCK", quote(f), headers={"Lock-Token": f"<{token}>"}).status_code == 204
    assert activelocks(door, f) == []
    assert put(door, f, b"v6") == 204
    assert door.request("UNLOCK", quote(f), headers={"Lock-Token": f"<{token}>"}).status_code == 409
    with server.api() as api:
        assert api.get(api_path(f)).json()["size"] == 2


def test_shared_locks(door: httpx.Client, base: str) -> None:
    f = f"{base}/shared.txt"
    assert put(door, f) == 201
    t1 = token_of(lock(door, f, scope="shared"))
    t2 = token_of(lock(door, f, scope="shared"))
    assert t1 != t2
    assert lock(door, f, scope="exclusive").status_code == 423
    assert len(activelocks(door, f)) == 2
    assert put(door, f) == 423
    assert put(door, f, token=t1) == 204  # each holder writes with its own token
    assert put(door, f, token=t2) == 204
    assert door.request("UNLOCK", quote(f), headers={"Lock-Token": f"<{t1}>"}).status_code == 204
    assert put(door, f) == 423  # the other shared lock still guards it
    assert door.request("UNLOCK", quote(f), headers={"Lock-Token": f"<{t2}>"}).status_code == 204
    assert put(door, f) == 204


def test_collection_lock_depth_infinity(door: httpx.Client, base: str) -> None:
    d = f"{base}/dir"
    assert door.request("MKCOL", quote(d)).status_code == 201
    assert put(door, f"{d}/existing") == 201
    token = token_of(lock(door, d, depth="infinity"))
    # Members are covered: new ones, existing ones, sub-collections.
    assert put(door, f"{d}/new") == 423
    assert put(door, f"{d}/existing") == 423
    assert door.request("MKCOL", quote(f"{d}/sub")).status_code == 423
    assert put(door, f"{d}/new", token=token) == 201
    assert door.request("MKCOL", quote(f"{d}/sub"), headers={"If": f"(<{token}>)"}).status_code == 201
    [inherited] = activelocks(door, f"{d}/new")
    assert inherited.findtext(f"{D}lockroot/{D}href") == quote(d) + "/"
    assert inherited.findtext(f"{D}depth") == "infinity"
    # A member cannot be locked apart, and the collection cannot be deleted or moved without the token.
    assert lock(door, f"{d}/existing").status_code == 423
    assert door.delete(quote(d)).status_code == 423
    assert door.request("MOVE", quote(d), headers={"Destination": quote(f"{base}/elsewhere")}).status_code == 423
    # A refresh through a member (RFC 4918 9.10.2) keeps the lock; the reply has no new Lock-Token.
    r = door.request("LOCK", quote(f"{d}/new"), headers={"If": f"(<{token}>)", "Timeout": "Second-100"})
    assert r.status_code == 200 and "lock-token" not in r.headers
    refreshed = ET.fromstring(r.content).findtext(f"{D}lockdiscovery/{D}activelock/{D}timeout") or ""
    assert refreshed in ("Second-100", "Second-99")
    assert door.delete(quote(d), headers={"If": f"(<{token}>)"}).status_code == 204
    assert door.request("UNLOCK", quote(d), headers={"Lock-Token": f"<{token}>"}).status_code == 409  # gone


def test_depth_0_collection_lock_guards_membership(door: httpx.Client, base: str, server: Server) -> None:
    d = f"{base}/d0"
    assert door.request("MKCOL", quote(d)).status_code == 201
    assert put(door, f"{d}/member") == 201
    token = token_of(lock(door, d, depth="0"))
    assert put(door, f"{d}/member", b"new content") == 204  # a member's content is not protected
    assert put(door, f"{d}/added") == 423  # but the collection's membership is
    assert door.delete(quote(f"{d}/member")).status_code == 423
    # The lock is on the collection, not on the new member: an untagged list does not name it (RFC 4918
    # 10.4.1), a list tagged with the collection's URL does.
    assert put(door, f"{d}/added", token=token) == 412
    tagged = {"If": f"<{server.door_url}{quote(d)}/> (<{token}>)"}
    assert door.put(quote(f"{d}/added"), content=b"x", headers=tagged).status_code == 201
    assert token_of(lock(door, f"{d}/member")) != token  # members may be locked on their own


def test_lock_on_unmapped_url_creates_an_empty_file(door: httpx.Client, base: str, server: Server) -> None:
    f = f"{base}/fresh.txt"
    r = lock(door, f)
    assert r.status_code == 201
    token = token_of(r)
    with server.api() as api:
        info = api.get(api_path(f), params={"checksum": "true"}).json()
    assert info["fileType"] == "REGULAR" and info["size"] == 0
    assert {"type": "ADLER32", "value": "00000001"} in info["checksums"]
    assert door.get(quote(f)).content == b""
    assert put(door, f, b"now with content") == 423
    assert put(door, f, b"now with content", token=token) == 204  # macOS Finder's sequence: LOCK, PUT, UNLOCK
    assert door.request("UNLOCK", quote(f), headers={"Lock-Token": f"<{token}>"}).status_code == 204
    assert door.get(quote(f)).content == b"now with content"
    assert lock(door, f"{base}/no/parent/x").status_code == 409


def test_lock_expires(door: httpx.Client, base: str) -> None:
    f = f"{base}/short.txt"
    assert put(door, f) == 201
    token = token_of(lock(door, f, timeout="Second-3"))  # long enough for the next PUT on a loaded machine
    assert put(door, f) == 423
    wait_for(lambda: put(door, f) == 204, "the lock to expire")
    assert put(door, f, token=token) == 412  # the token names no lock any more
    # A refresh needs a token; an infinite request is granted a bounded timeout.
    assert door.request("LOCK", quote(f), headers={"Timeout": "Second-10"}).status_code == 412
    r = lock(door, f, timeout="Infinite")
    assert f"Second-{locks.MAX_TIMEOUT}" in r.text


def test_move_releases_the_source_lock(door: httpx.Client, base: str) -> None:
    f = f"{base}/a.txt"
    assert put(door, f) == 201
    token = token_of(lock(door, f))
    r = door.request("MOVE", quote(f), headers={"Destination": quote(f"{base}/b.txt"), "If": f"(<{token}>)"})
    assert r.status_code == 201
    assert put(door, f"{base}/b.txt") == 204
    assert put(door, f) == 201
    assert door.request("UNLOCK", quote(f"{base}/b.txt"), headers={"Lock-Token": f"<{token}>"}).status_code == 409


def test_malformed_requests(door: httpx.Client, base: str) -> None:
    f = f"{base}/m.txt"
    assert put(door, f) == 201
    assert door.request("LOCK", quote(f), content=b"<not-xml").status_code == 400
    assert door.request("LOCK", quote(f), content=lockinfo(), headers={"Depth": "1"}).status_code == 400
    bad_type = lockinfo().replace("<D:write/>", "<D:read/>")
    assert door.request("LOCK", quote(f), content=bad_type).status_code == 400
    no_scope = lockinfo().replace("<D:lockscope><D:exclusive/></D:lockscope>", "")
    assert door.request("LOCK", quote(f), content=no_scope).status_code == 400
    assert door.put(quote(f), content=b"x", headers={"If": "(<unterminated"}).status_code == 400
    assert door.put(quote(f), content=b"x", headers={"If": "garbage"}).status_code == 400
    assert door.request("UNLOCK", quote(f), headers={"Lock-Token": "no-brackets"}).status_code == 400
    r = door.request("UNLOCK", quote(f), headers={"Lock-Token": "<opaquelocktoken:nope>"})
    assert r.status_code == 409 and r.json()["status"] == "409"


def test_lock_errors_are_json(door: httpx.Client, base: str) -> None:
    f = f"{base}/j.txt"
    assert put(door, f) == 201
    token_of(lock(door, f))
    r = door.put(quote(f), content=b"y")
    assert r.status_code == 423
    assert r.json()["status"] == "423" and r.json()["title"] == "Locked"


# -- the pure parts ----------------------------------------------------------------------------------------


def test_parse_if_header() -> None:
    lists = locks.parse_if('(<opaquelocktoken:a> ["etag"]) (Not <DAV:no-lock>)')
    assert lists == [
        IfList(None, (Condition(False, token="opaquelocktoken:a"), Condition(False, etag='"etag"'))),
        IfList(None, (Condition(True, token="DAV:no-lock"),)),
    ]
    tagged = locks.parse_if('<http://h/a b> (<urn:uuid:1>) <http://h/c> (NOT ["x"])')
    assert [t.resource for t in tagged] == ["http://h/a b", "http://h/c"]
    assert locks.submitted_tokens(lists + tagged) == {"opaquelocktoken:a", "urn:uuid:1"}
    for bad in ["", "()", "(<a>", "<x>", "(Not)", "(<a>) <http://h/> (<b>)", "junk"]:
        with pytest.raises(BadRequest):
            locks.parse_if(bad)


def test_parse_timeout() -> None:
    assert locks.parse_timeout(None) == locks.DEFAULT_TIMEOUT
    assert locks.parse_timeout("Second-30") == 30
    assert locks.parse_timeout("Infinite, Second-30") == locks.MAX_TIMEOUT
    assert locks.parse_timeout("Second-99999999") == locks.MAX_TIMEOUT
    assert locks.parse_timeout("Second-x, Second-5") == 5
    assert locks.parse_timeout("bogus") == locks.DEFAULT_TIMEOUT


def test_manager_owner_and_expiry() -> None:
    now = [1000.0]
    m = LockManager(clock=lambda: now[0])
    lk = m.lock("/a", is_dir=True, exclusive=True, infinite=True, owner="", username="alice", timeout=60)
    m.check_write("/a/x", {lk.token}, "alice", membership=True)
    with pytest.raises(Locked):
        m.check_write("/a/x", {lk.token}, "bob", membership=True)  # a token works only for its owner
    with pytest.raises(Locked):
        m.check_write("/", set(), "alice", subtree=True)  # deleting an ancestor touches the locked tree
    m.check_write("/b", set(), "bob", membership=True)
    assert m.conflicts("/a/y", exclusive=False, infinite=False) == [lk]
    now[0] += 61
    assert m.get(lk.token) is None and len(m) == 0
    m.check_write("/a/x", set(), "bob", membership=True)


def test_if_holds_evaluates_lists() -> None:
    m = LockManager()
    lk = m.lock("/d", is_dir=True, exclusive=True, infinite=True, owner="", username="u", timeout=60)

    async def etag_of(path: str) -> str | None:
        return '"e1"' if path == "/d/f" else None

    def holds(header: str, path: str = "/d/f") -> bool:
        return asyncio.run(
            locks.if_holds(locks.parse_if(header), path, m, resolve=lambda t: t.removeprefix("h"), etag_of=etag_of)
        )

    assert holds(f"(<{lk.token}>)")
    assert not holds(f"(<{lk.token}>)", path="/other")
    assert holds('(<urn:x>) (["e1"])')
    assert not holds('(["e2"])')
    assert holds('(Not ["e2"])')
    assert holds(f'<h/d/f> (<{lk.token}> [W/"e1"])')
    assert not holds('<h/elsewhere> (["e1"])')  # each list is checked against the resource it names
    assert holds('<h/elsewhere> (["e1"]) <h/d/f> (["e1"])')


# -- what desktop clients do (request sequences as they send them; the clients cannot run here) -------------


def test_finder_style_save(door: httpx.Client, base: str) -> None:
    """macOS Finder: LOCK an unmapped URL, PUT chunked with X-Expected-Entity-Length and the token,
    PROPFIND it, UNLOCK; and it refreshes with an empty LOCK body."""
    f = f"{base}/Report.pages"
    r = door.request("LOCK", quote(f), content=lockinfo(owner=OWNER), headers={"Depth": "0", "Timeout": "Second-600"})
    assert r.status_code == 201
    token = token_of(r)
    data = bytes(range(256)) * 1000

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 10_000):
            yield data[i : i + 10_000]

    r = door.put(
        quote(f),
        content=chunks(),
        headers={"If": f"(<{token}>)", "X-Expected-Entity-Length": str(len(data))},
    )
    assert r.status_code == 204
    r = door.request("LOCK", quote(f), headers={"If": f"(<{token}>)", "Timeout": "Second-600"})
    assert r.status_code == 200
    r = door.request("PROPFIND", quote(f), headers={"Depth": "0"})
    assert r.status_code == 207 and f"<D:getcontentlength>{len(data)}</D:getcontentlength>" in r.text
    assert door.request("UNLOCK", quote(f), headers={"Lock-Token": f"<{token}>"}).status_code == 204
    assert door.get(quote(f)).content == data


def test_windows_redirector_style_save(door: httpx.Client, base: str, server: Server) -> None:
    """The Windows WebDAV mini-redirector: an empty PUT, LOCK, PUT of the content, PROPPATCH of its Win32
    properties, UNLOCK, all with tagged If headers naming the full URL."""
    f = f"{base}/New Text Document.txt"
    url = f"{server.door_url}{quote(f)}"
    assert door.put(quote(f), content=b"").status_code == 201
    win_owner = '<D:owner xmlns:D="DAV:"><D:href>DOMAIN\\user</D:href></D:owner>'
    r = door.request("LOCK", quote(f), content=lockinfo(owner=win_owner), headers={"Timeout": "Second-3600"})
    token = token_of(r)
    tagged = {"If": f"<{url}> (<{token}>)"}
    assert door.put(quote(f), content=b"hello windows", headers=tagged).status_code == 204
    win32 = (
        '<?xml version="1.0" encoding="utf-8" ?><D:propertyupdate xmlns:D="DAV:" '
        'xmlns:Z="urn:schemas-microsoft-com:"><D:set><D:prop>'
        "<Z:Win32CreationTime>Wed, 25 Nov 2026 10:00:00 GMT</Z:Win32CreationTime>"
        "<Z:Win32LastAccessTime>Wed, 25 Nov 2026 10:00:00 GMT</Z:Win32LastAccessTime>"
        "<Z:Win32LastModifiedTime>Wed, 25 Nov 2026 10:00:00 GMT</Z:Win32LastModifiedTime>"
        "<Z:Win32FileAttributes>00000020</Z:Win32FileAttributes>"
        "</D:prop></D:set></D:propertyupdate>"
    )
    r = door.request("PROPPATCH", quote(f), content=win32, headers=tagged)
    assert r.status_code == 207 and "HTTP/1.1 200 OK" in r.text and "403" not in r.text
    assert door.request("UNLOCK", quote(f), headers={"Lock-Token": f"<{token}>"}).status_code == 204
    with server.api() as api:
        attrs = api.get(api_path(f), params={"xattr": "true"}).json()["extendedAttributes"]
    assert attrs["{urn:schemas-microsoft-com:}Win32FileAttributes"] == "00000020"
    assert door.get(quote(f)).content == b"hello windows"


def test_locks_per_user_are_capped() -> None:
    """Shared locks never conflict: the cap is what keeps one user from growing the door's memory."""
    m = LockManager()
    m.MAX_PER_USER = 5
    held = [
        m.lock("/s", is_dir=False, exclusive=False, infinite=False, owner="", username="u", timeout=60)
        for _ in range(5)
    ]
    with pytest.raises(TooManyRequests):
        m.lock("/s", is_dir=False, exclusive=False, infinite=False, owner="", username="u", timeout=60)
    m.lock("/s", is_dir=False, exclusive=False, infinite=False, owner="", username="v", timeout=60)  # others may
    m.unlock(held[0])
    m.lock("/s", is_dir=False, exclusive=False, infinite=False, owner="", username="u", timeout=60)
