"""curl against a real door: chunked and 100-continue uploads, Range GETs, conditionals, HEAD, RFC 3230
digests. curl is what many scripts at facilities use directly, so its exact behaviour matters."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from harness import Server

from .tools import api_path, require, run

pytestmark = pytest.mark.interop

DATA = random.Random(42).randbytes(2 * 1024 * 1024 + 333)


@dataclass
class Reply:
    status: int  # the final status (after any 100 Continue)
    headers: dict[str, str]  # of the final response, lower-case names
    body: bytes
    trace: str  # curl -v's stderr
    statuses: list[int]  # every status line seen, e.g. [100, 201]


@dataclass
class Curl:
    srv: Server
    tmp: Path

    def __call__(self, path: str, *args: str, stdin: bytes | None = None, auth: bool = True) -> Reply:
        head = self.tmp / "headers.txt"
        body = self.tmp / "body.bin"
        for f in (head, body):
            f.unlink(missing_ok=True)
        cmd = ["curl", "-sS", "-v", "--max-time", "60", "-D", str(head), "-o", str(body)]
        if auth:
            cmd += ["-u", ":".join(self.srv.auth)]
        cmd += [*args, self.srv.door_url + quote(path)]
        out = run(cmd, input=stdin, timeout=90, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        blocks = [b for b in head.read_text("latin-1").replace("\r\n", "\n").split("\n\n") if b.strip()]
        statuses = [int(b.split()[1]) for b in blocks]
        headers: dict[str, str] = {}
        for line in blocks[-1].splitlines()[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Reply(statuses[-1], headers, body.read_bytes() if body.exists() else b"", out.stderr, statuses)


@pytest.fixture(scope="module")
def curl(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Curl:
    require("curl")
    c = Curl(server, tmp_path_factory.mktemp("curl"))
    assert c("/curl", "-X", "MKCOL").status == 201
    return c


@pytest.fixture(scope="module")
def sample(curl: Curl) -> str:
    """A file of DATA on the server."""
    src = curl.tmp / "sample.bin"
    src.write_bytes(DATA)
    assert curl("/curl/sample ü.bin", "-T", str(src)).status == 201
    return "/curl/sample ü.bin"


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def stored_checksums(srv: Server, path: str) -> dict[str, str]:
    with srv.api() as api:
        info = api.get(api_path(path), params={"checksum": "true"}).json()
    return {c["type"]: c["value"] for c in info["checksums"]}


def test_chunked_put_from_stdin(curl: Curl, server: Server) -> None:
    r = curl("/curl/chunked.bin", "-T", "-", "-H", "Transfer-Encoding: chunked", stdin=DATA)
    assert r.status == 201, r.trace
    assert re.search(r"^> Transfer-Encoding: chunked", r.trace, re.MULTILINE | re.IGNORECASE)
    assert r.headers["etag"].startswith('"')
    get = curl("/curl/chunked.bin")
    assert get.status == 200 and get.body == DATA
    assert get.headers["etag"] == r.headers["etag"]
    assert stored_checksums(server, "/curl/chunked.bin")["ADLER32"] == adler32(DATA)
    # An empty chunked body makes an empty file.
    r = curl("/curl/chunked-empty", "-T", "-", "-H", "Transfer-Encoding: chunked", stdin=b"")
    assert r.status == 201
    assert curl("/curl/chunked-empty").body == b""


def test_expect_100_continue(curl: Curl) -> None:
    src = curl.tmp / "expect.bin"
    src.write_bytes(DATA)
    r = curl("/curl/expect.bin", "-T", str(src), "-H", "Expect: 100-continue")
    assert r.statuses == [100, 201], r.trace
    assert curl("/curl/expect.bin").body == DATA
    # Overwriting answers 204 (no new resource).
    r = curl("/curl/expect.bin", "-T", str(src), "-H", "Expect: 100-continue")
    assert r.statuses == [100, 204], r.trace
    # A request that will fail is refused before the body is sent: no 100 Continue.
    r = curl("/curl/no/such/dir/x.bin", "-T", str(src), "-H", "Expect: 100-continue")
    assert r.statuses == [409], r.trace
    r = curl("/curl/x.bin", "-T", str(src), "-H", "Expect: 100-continue", auth=False)
    assert r.statuses == [401], r.trace
    assert "basic" in r.headers["www-authenticate"].lower()


def test_range_gets(curl: Curl, sample: str) -> None:
    n = len(DATA)
    r = curl(sample, "-r", "0-99")
    assert r.status == 206 and r.body == DATA[:100]
    assert r.headers["content-range"] == f"bytes 0-99/{n}"
    assert r.headers["content-length"] == "100"
    r = curl(sample, "-r", "-500")  # suffix: the last 500 bytes
    assert r.status == 206 and r.body == DATA[-500:]
    assert r.headers["content-range"] == f"bytes {n - 500}-{n - 1}/{n}"
    r = curl(sample, "-r", f"{n - 10}-")  # open-ended
    assert r.status == 206 and r.body == DATA[-10:]
    r = curl(sample, "-r", f"1000-{n + 5000}")  # the end is clamped to the file
    assert r.status == 206 and r.body == DATA[1000:]
    r = curl(sample, "-r", f"-{n + 1000}")  # a suffix longer than the file is the whole file
    assert r.status == 206 and r.body == DATA
    r = curl(sample, "-r", f"{n}-{n + 10}")
    assert r.status == 416 and r.headers["content-range"] == f"bytes */{n}"
    r = curl(sample, "-H", "Range: bytes=0-0")
    assert r.status == 206 and r.body == DATA[:1]
    # If-Range with the current ETag honours the range; with a stale one the whole file comes back.
    etag = curl(sample, "-I").headers["etag"]
    assert curl(sample, "-r", "0-9", "-H", f"If-Range: {etag}").body == DATA[:10]
    r = curl(sample, "-r", "0-9", "-H", 'If-Range: "stale"')
    assert r.status == 200 and r.body == DATA


def test_resume_download(curl: Curl, sample: str) -> None:
    """curl -C - continues a partial download with a Range request."""
    part = curl.tmp / "partial.bin"
    part.write_bytes(DATA[:700_000])
    run(
        ["curl", "-sS", "-u", ":".join(curl.srv.auth), "-C", "-", "-o", str(part), curl.srv.door_url + quote(sample)],
        timeout=60,
    )
    assert part.read_bytes() == DATA


def test_head(curl: Curl, sample: str) -> None:
    r = curl(sample, "-I")
    assert r.status == 200
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"].startswith('"') and r.headers["last-modified"].endswith("GMT")
    assert r.headers["content-type"] == "application/octet-stream"
    assert curl("/curl/missing", "-I").status == 404
    r = curl("/curl/", "-I")
    assert r.status == 200


def test_conditional_gets(curl: Curl, sample: str) -> None:
    h = curl(sample, "-I").headers
    etag, last_modified = h["etag"], h["last-modified"]
    r = curl(sample, "-H", f"If-None-Match: {etag}")
    assert r.status == 304 and r.body == b"" and r.headers["etag"] == etag
    assert curl(sample, "-H", f'If-None-Match: "other", {etag}').status == 304
    assert curl(sample, "-H", 'If-None-Match: "other"').status == 200
    assert curl(sample, "-H", f"If-Modified-Since: {last_modified}").status == 304
    assert curl(sample, "-H", "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT").status == 200
    assert curl(sample, "-H", 'If-Match: "other"').status == 412
    assert curl(sample, "-H", f"If-Match: {etag}", "-r", "0-1").status == 206


def test_conditional_puts(curl: Curl) -> None:
    src = curl.tmp / "cond.txt"
    src.write_bytes(b"v1")
    assert curl("/curl/cond.txt", "-T", str(src), "-H", "If-None-Match: *").status == 201
    assert curl("/curl/cond.txt", "-T", str(src), "-H", "If-None-Match: *").status == 412
    etag = curl("/curl/cond.txt", "-I").headers["etag"]
    src.write_bytes(b"v2")
    assert curl("/curl/cond.txt", "-T", str(src), "-H", 'If-Match: "stale"').status == 412
    r = curl("/curl/cond.txt", "-T", str(src), "-H", f"If-Match: {etag}")
    assert r.status == 204 and r.headers["etag"] != etag
    assert curl("/curl/cond.txt").body == b"v2"


def test_want_digest_and_digest(curl: Curl, sample: str, server: Server) -> None:
    md5 = base64.b64encode(hashlib.md5(DATA).digest()).decode()
    sha = base64.b64encode(hashlib.sha256(DATA).digest()).decode()
    assert curl(sample, "-I", "-H", "Want-Digest: adler32").headers["digest"] == f"adler32={adler32(DATA)}"
    # Nothing but ADLER32 is stored yet: the most preferred type is computed (then stored).
    assert curl(sample, "-I", "-H", "Want-Digest: sha-256;q=1, md5;q=0.5").headers["digest"] == f"sha-256={sha}"
    assert curl(sample, "-I", "-H", "Want-Digest: MD5").headers["digest"] == f"md5={md5}"
    assert curl(sample, "-I", "-H", "Want-Digest: md5;q=0.3, adler32;q=0.9").headers["digest"].startswith("adler32=")
    r = curl(sample, "-H", "Want-Digest: md5")
    assert r.body == DATA and r.headers["digest"] == f"md5={md5}"
    assert "digest" not in curl(sample, "-I", "-H", "Want-Digest: crc32c").headers
    # Computed on demand and then stored, as dCache does.
    assert stored_checksums(server, sample)["MD5"] == hashlib.md5(DATA).hexdigest()

    src = curl.tmp / "digest.bin"
    src.write_bytes(DATA)
    r = curl("/curl/digest-ok.bin", "-T", str(src), "-H", f"Digest: md5={md5}", "-H", "Want-Digest: adler32")
    assert r.status == 201 and r.headers["digest"] == f"adler32={adler32(DATA)}"
    assert stored_checksums(server, "/curl/digest-ok.bin")["MD5"] == hashlib.md5(DATA).hexdigest()
    r = curl("/curl/digest-bad.bin", "-T", str(src), "-H", "Digest: adler32=00000001")
    assert r.status == 400 and b"mismatch" in r.body.lower()
    assert curl("/curl/digest-bad.bin", "-I").status == 404  # nothing became visible


def test_options_without_credentials(curl: Curl) -> None:
    r = curl("/", "-X", "OPTIONS", auth=False)
    assert r.status == 200
    assert "1" in [c.strip() for c in r.headers["dav"].split(",")]
    assert "PROPFIND" in r.headers["allow"]


def test_move_or_copy_onto_an_ancestor_is_refused(curl: Curl) -> None:
    """Overwriting a collection that contains the source would delete the source first (mod_dav: 403)."""
    assert curl("/curl/anc", "-X", "MKCOL").status == 201
    assert curl("/curl/anc/inner", "-X", "MKCOL").status == 201
    assert curl("/curl/anc/inner/f.txt", "-T", "-", stdin=b"keep me").status == 201
    for method in ("MOVE", "COPY"):
        for dest in ("/curl/anc", "/curl/anc/inner"):
            r = curl("/curl/anc/inner/f.txt", "-X", method, "-H", f"Destination: {curl.srv.door_url}{dest}")
            assert r.status == 403, (method, dest, r.body)
            r = curl("/curl/anc/inner/f.txt", "-X", method, "-H", f"Destination: {dest}", "-H", "Overwrite: F")
            assert r.status == 412, (method, dest, r.body)
    assert curl("/curl/anc/inner/f.txt").body == b"keep me"


def test_dead_property_without_namespace(curl: Curl) -> None:
    """A property element in no namespace (xmlns="") is a dead property like any other."""
    assert curl("/curl/nons.txt", "-T", "-", stdin=b"n").status == 201
    patch = (
        '<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><plain xmlns="">value</plain></D:prop></D:set>'
        "</D:propertyupdate>"
    )
    assert curl("/curl/nons.txt", "-X", "PROPPATCH", "--data-binary", patch).status == 207
    find = '<D:propfind xmlns:D="DAV:"><D:prop><plain xmlns=""/></D:prop></D:propfind>'
    r = curl("/curl/nons.txt", "-X", "PROPFIND", "-H", "Depth: 0", "--data-binary", find)
    assert r.status == 207
    assert re.search(rb'<plain xmlns="">value</plain>.*200 OK', r.body), r.body
    r = curl("/curl/nons.txt", "-X", "PROPFIND", "-H", "Depth: 0")  # allprop
    assert b'<plain xmlns="">value</plain>' in r.body
