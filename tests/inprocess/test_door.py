"""The door (WebDAV) in this process: transfers with ranges, conditions and digests, the namespace methods,
authentication, and the events each change writes to the outbox."""

from __future__ import annotations

import base64
import hashlib
import uuid
import xml.etree.ElementTree as ET
import zlib

import httpx
import pytest

from inprocess_harness import DOOR_URL, InProcess
from outbox import head, kinds, rows

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def base(door: httpx.Client) -> str:
    d = f"/d-{uuid.uuid4().hex[:8]}"
    assert door.request("MKCOL", d).status_code == 201
    return d


def test_put_get_head_with_validators_and_digests(door: httpx.Client, base: str) -> None:
    r = door.put(f"{base}/f", content=DATA)
    assert r.status_code == 201
    etag = r.headers["etag"]
    got = door.get(f"{base}/f")
    assert got.status_code == 200 and got.content == DATA and got.headers["etag"] == etag
    assert got.headers["content-length"] == str(len(DATA)) and got.headers["accept-ranges"] == "bytes"
    head_r = door.head(f"{base}/f", headers={"Want-Digest": "adler32"})
    assert head_r.status_code == 200 and head_r.content == b""
    assert head_r.headers["digest"] == f"adler32={zlib.adler32(DATA):08x}"
    sha = base64.b64encode(hashlib.sha256(DATA).digest()).decode()
    assert door.head(f"{base}/f", headers={"Want-Digest": "sha-256"}).headers["digest"] == f"sha-256={sha}"
    # an overwrite is a 204 and a new entity tag
    r = door.put(f"{base}/f", content=b"second")
    assert r.status_code == 204 and r.headers["etag"] != etag
    assert door.get(f"{base}/f").content == b"second"


def test_an_upload_with_a_wrong_digest_is_refused_and_leaves_nothing(door: httpx.Client, base: str) -> None:
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    r = door.put(f"{base}/bad", content=DATA, headers={"Digest": f"md5={wrong}"})
    assert r.status_code in (400, 409, 412), r.text
    assert door.head(f"{base}/bad").status_code == 404
    right = base64.b64encode(hashlib.md5(DATA).digest()).decode()
    assert door.put(f"{base}/good", content=DATA, headers={"Digest": f"md5={right}"}).status_code == 201


def test_content_md5_is_verified_as_dcache_does(door: httpx.Client, base: str) -> None:
    """RFC 1864's Content-MD5 (base64 of the MD5): a mismatch is 400 with a JSON body and stores nothing; a
    malformed one, or one that disagrees with the Digest header, is 400 too."""
    right = base64.b64encode(hashlib.md5(DATA).digest()).decode()
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    r = door.put(f"{base}/bad", content=DATA, headers={"Content-MD5": wrong})
    assert r.status_code == 400 and "mismatch" in r.json()["detail"], r.text
    assert door.head(f"{base}/bad").status_code == 404
    for headers in ({"Content-MD5": "not base64!"}, {"Content-MD5": right, "Digest": f"md5={wrong}"}):
        r = door.put(f"{base}/bad", content=DATA, headers=headers)
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text
        assert door.head(f"{base}/bad").status_code == 404
    assert door.put(f"{base}/good", content=DATA, headers={"Content-MD5": right}).status_code == 201
    assert door.head(f"{base}/good", headers={"Want-Digest": "md5"}).headers["digest"] == f"md5={right}"


def test_quota_properties_are_on_collections_only(door: httpx.Client, base: str) -> None:
    """gfal2 and davix read a file's DAV:quota-used-bytes as its size: a file has none, its collection has them."""
    assert door.put(f"{base}/f", content=DATA).status_code == 201
    body = (
        '<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getcontentlength/>'
        "<D:quota-used-bytes/><D:quota-available-bytes/></D:prop></D:propfind>"
    )
    r = door.request("PROPFIND", base, headers={"Depth": "1", "Content-Type": "application/xml"}, content=body)
    assert r.status_code == 207, r.text
    ns = {"D": "DAV:"}
    found: dict[str, dict[str, str]] = {}
    for resp in ET.fromstring(r.content).findall("D:response", ns):
        href = resp.findtext("D:href", namespaces=ns) or ""
        props: dict[str, str] = {}
        for ps in resp.findall("D:propstat", ns):
            if "200" in (ps.findtext("D:status", namespaces=ns) or ""):
                for prop in ps.find("D:prop", ns) or []:
                    props[prop.tag.split("}")[1]] = prop.text or ""
        found[href.rstrip("/")] = props
    assert found[f"{base}/f"] == {"getcontentlength": str(len(DATA))}
    assert {"quota-used-bytes", "quota-available-bytes"} <= set(found[base])


def test_ranges(door: httpx.Client, base: str) -> None:
    door.put(f"{base}/f", content=DATA)
    r = door.get(f"{base}/f", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == DATA[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(DATA)}"
    r = door.get(f"{base}/f", headers={"Range": "bytes=-5"})  # the last five
    assert r.status_code == 206 and r.content == DATA[-5:]
    r = door.get(f"{base}/f", headers={"Range": "bytes=10000-"})
    assert r.status_code == 206 and r.content == DATA[10000:]
    r = door.get(f"{base}/f", headers={"Range": f"bytes=10000-{len(DATA) + 5000}"})  # the end is clamped
    assert r.status_code == 206 and r.content == DATA[10000:]
    r = door.get(f"{base}/f", headers={"Range": f"bytes={len(DATA)}-{len(DATA) + 10}"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(DATA)}"
    r = door.get(f"{base}/f", headers={"Range": f"bytes={len(DATA)}-"})  # open-ended, starting at the end
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(DATA)}"
    door.put(f"{base}/empty", content=b"")
    r = door.get(f"{base}/empty", headers={"Range": "bytes=0-"})  # nothing of an empty file is satisfiable
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */0"
    # If-Range with the current tag honours the range; with another the whole file comes back
    etag = door.head(f"{base}/f").headers["etag"]
    assert door.get(f"{base}/f", headers={"Range": "bytes=0-9", "If-Range": etag}).content == DATA[:10]
    r = door.get(f"{base}/f", headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == DATA


def test_conditional_requests(door: httpx.Client, base: str) -> None:
    etag = door.put(f"{base}/f", content=b"v1").headers["etag"]
    assert door.get(f"{base}/f", headers={"If-None-Match": etag}).status_code == 304
    assert door.get(f"{base}/f", headers={"If-None-Match": '"other"'}).status_code == 200
    assert door.put(f"{base}/f", content=b"v2", headers={"If-Match": '"other"'}).status_code == 412
    assert door.get(f"{base}/f").content == b"v1"
    assert door.put(f"{base}/f", content=b"v2", headers={"If-Match": f"W/{etag}"}).status_code == 412  # weak
    assert door.get(f"{base}/f").content == b"v1"
    # a list holds if one of its tags matches, compared strongly (RFC 9110 13.1.1)
    assert door.put(f"{base}/f", content=b"v2", headers={"If-Match": f'"other", {etag}'}).status_code == 204
    assert door.put(f"{base}/f", content=b"v3", headers={"If-None-Match": "*"}).status_code == 412  # exists
    assert door.put(f"{base}/new", content=b"n", headers={"If-None-Match": "*"}).status_code == 201
    assert door.get(f"{base}/f").content == b"v2"


def test_collections_move_copy_delete(door: httpx.Client, base: str) -> None:
    assert door.request("MKCOL", f"{base}/a").status_code == 201
    assert door.request("MKCOL", f"{base}/a").status_code == 405  # it exists
    assert door.request("MKCOL", f"{base}/no/parent").status_code == 409
    door.put(f"{base}/a/f", content=b"one")
    door.put(f"{base}/a/g", content=b"two")
    listing = door.request("PROPFIND", f"{base}/a", headers={"Depth": "1"})
    assert listing.status_code == 207
    assert f"<D:href>{base}/a/f</D:href>" in listing.text and f"<D:href>{base}/a/g</D:href>" in listing.text
    dest = f"{DOOR_URL}{base}"
    assert door.request("COPY", f"{base}/a/f", headers={"Destination": f"{dest}/copy"}).status_code == 201
    assert door.request("MOVE", f"{base}/a", headers={"Destination": f"{dest}/b"}).status_code == 201
    assert door.get(f"{base}/b/g").content == b"two" and door.get(f"{base}/copy").content == b"one"
    assert door.head(f"{base}/a/f").status_code == 404
    r = door.request("MOVE", f"{base}/copy", headers={"Destination": f"{dest}/b/f", "Overwrite": "F"})
    assert r.status_code == 412  # b/f exists and the client said not to overwrite
    assert door.delete(f"{base}/b").status_code == 204
    assert door.head(f"{base}/b/g").status_code == 404


def test_authentication(apps: InProcess, base: str) -> None:
    with apps.door(auth=None) as anonymous:
        assert anonymous.get(base).status_code == 401
    with apps.door(auth=("admin", "wrong")) as wrong:
        assert wrong.put(f"{base}/x", content=b"x").status_code == 401
    with apps.door() as door:
        assert door.head(f"{base}/x").status_code == 404  # nothing was written


def test_each_change_writes_its_event(apps: InProcess, door: httpx.Client, base: str) -> None:
    before = head(apps.data)
    door.put(f"{base}/f", content=b"x")
    door.request("MOVE", f"{base}/f", headers={"Destination": f"{DOOR_URL}{base}/g"})
    door.delete(f"{base}/g")
    got = [k for k in kinds(rows(apps.data, after=before)) if k[0] != "CLOSE_NOWRITE"]
    assert got[0] == ("CREATE", f"{base}/f") and got[-1] == ("DELETE", f"{base}/g")
    assert ("CLOSE_WRITE", f"{base}/f") in got and ("MOVE", f"{base}/g") in got
