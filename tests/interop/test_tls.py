"""davs:// on a real `headrace up --tls-cert --tls-key`: curl, rclone, gfal2 (gfal-copy) and davix upload and
download over TLS as a non-admin user, trusting the test CA each its own way (curl --cacert, rclone --ca-cert,
gfal2's X509_CERT_DIR, davix --capath); a client without the CA fails with its certificate error; the door
speaks HTTP/2 by ALPN; what the server announces (doors, the CLI config, activation storage URLs) is https,
the CLI and functions in their sandbox reach it over TLS; `--tls-client-ca` refuses a client without a
certificate; `--tls-self-signed` makes its CA once and reuses it. The third-party clients' tests are marked
interop (SQLite run only, as all interop tests); the rest run on both databases.

davix 0.8 (Debian's) never answers a Basic challenge (--userlogin/--userpass: cern-fts/davix#81), so davix
and gfal2 carry the user's macaroon as a bearer token (gfal2 from BEARER_TOKEN, davix as a header).
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness import add_user, headrace_command, query
from pool_harness import PoolProcess, pool_db_url
from tls_harness import TestCA, TLSServer

from .tools import require, run

MB = 1024 * 1024
GFAL_PYTHON = "/usr/bin/python3"


@dataclass
class Site:
    srv: TLSServer
    ca: TestCA
    user: str
    key: str
    token: str  # the user's macaroon (bearer), good for its home directory

    @property
    def home(self) -> str:
        return f"/{self.user}"

    def get(self, path: str) -> httpx.Response:
        with self.srv.door(auth=(self.user, self.key)) as door:
            return door.get(path)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("tls")
    ca = TestCA.make(base / "ca")
    srv = TLSServer(data=base / "data", cli_config=base / "cli.json", ca=ca)
    srv.start()
    try:
        user, key, uid = add_user(srv, "tlsuser")
        with srv.door() as door:
            assert door.request("MKCOL", f"/{user}").status_code == 201
        with srv.api() as api:
            assert api.post(f"/api/v1/namespace/{user}", json={"action": "chown", "uid": uid}).is_success
        with srv.door(auth=(user, key)) as door:
            r = door.post(
                "/",
                headers={"Content-Type": "application/macaroon-request"},
                json={"caveats": ["activity:DOWNLOAD,UPLOAD,LIST,READ_METADATA,DELETE,MANAGE"], "validity": "PT1H"},
            )
            assert r.status_code == 200, r.text
        yield Site(srv, ca, user, key, r.json()["macaroon"])
    finally:
        srv.stop()


def _payload(tmp_path: Path, name: str, size: int = 3 * MB + 17) -> tuple[Path, bytes]:
    data = secrets.token_bytes(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def test_announced_urls_are_https(site: Site) -> None:
    with site.srv.api(auth=(site.user, site.key)) as api:
        doors = api.get("/api/v1/doors").json()
    assert doors[0]["protocol"] == "https" and doors[0]["port"] == site.srv.door_port
    with site.srv.door(auth=(site.user, site.key)) as door:
        discovery = door.get("/.well-known/wlcg-tape-rest-api").json()
    assert discovery["endpoints"][0]["uri"].startswith(site.srv.api_url + "/")
    config = json.loads(site.srv.cli_config.read_text())
    assert config["door"] == site.srv.door_url and config["api"] == site.srv.api_url
    # a client that does not trust the CA is refused by its own TLS check
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(site.srv.door_url + site.home, auth=(site.user, site.key))


@pytest.mark.interop
def test_curl_over_tls_and_http2(site: Site, tmp_path: Path) -> None:
    require("curl")
    src, data = _payload(tmp_path, "curl.bin")
    url = f"{site.srv.door_url}{site.home}/curl.bin"
    auth = f"{site.user}:{site.key}"
    put = run(["curl", "-sS", "--cacert", str(site.ca.ca), "-u", auth, "-T", str(src), url, "-w", "%{http_code}"])
    assert put.stdout.endswith("201")
    out = tmp_path / "curl.back"
    got = run(
        ["curl", "-sS", "--http2", "--cacert", str(site.ca.ca), "-u", auth, "-o", str(out), url,
         "-w", "%{http_code} %{http_version}"]
    )  # fmt: skip
    assert got.stdout == "200 2"  # granian negotiates HTTP/2 by ALPN
    assert out.read_bytes() == data
    h1 = run(["curl", "-sS", "--http1.1", "--cacert", str(site.ca.ca), "-u", auth, "-o", "/dev/null", url,
              "-w", "%{http_version}"])  # fmt: skip
    assert h1.stdout == "1.1"
    # the frontend: HTTP/1.1 over TLS (uvicorn)
    api = run(["curl", "-sS", "--cacert", str(site.ca.ca), "-u", auth, f"{site.srv.api_url}/api/v1/user"])
    assert json.loads(api.stdout)["username"] == site.user
    bad = run(["curl", "-sS", "-u", auth, url], check=False)
    assert bad.returncode == 60 and "certificate" in bad.stderr.lower()


@pytest.mark.interop
def test_rclone_over_tls(site: Site, tmp_path: Path) -> None:
    require("rclone")
    src, data = _payload(tmp_path, "rc.bin")
    obscured = run(["rclone", "obscure", site.key]).stdout.strip()
    env = {
        **os.environ,
        "RCLONE_CONFIG": str(tmp_path / "rclone.conf"),
        "RCLONE_CONFIG_H_TYPE": "webdav",
        "RCLONE_CONFIG_H_URL": site.srv.door_url,
        "RCLONE_CONFIG_H_VENDOR": "other",
        "RCLONE_CONFIG_H_USER": site.user,
        "RCLONE_CONFIG_H_PASS": obscured,
    }
    ca = ["--ca-cert", str(site.ca.ca)]
    run(["rclone", *ca, "copyto", str(src), f"h:{site.user}/rc.bin"], env=env)
    assert site.get(f"{site.home}/rc.bin").content == data
    run(["rclone", *ca, "copyto", f"h:{site.user}/rc.bin", str(tmp_path / "rc.back")], env=env)
    assert (tmp_path / "rc.back").read_bytes() == data
    bad = run(["rclone", "lsf", f"h:{site.user}/"], env=env, check=False)
    assert bad.returncode != 0 and "x509: certificate signed by unknown authority" in bad.stderr


@pytest.mark.interop
def test_gfal_copy_davs(site: Site, tmp_path: Path) -> None:
    gfal_copy = require("gfal-copy")
    if subprocess.run([GFAL_PYTHON, "-c", "import gfal2, gfal2_util"], capture_output=True).returncode != 0:
        pytest.skip("gfal2's Python bindings are not installed (scripts/install-test-deps.sh)")
    src, data = _payload(tmp_path, "gfal.bin")
    davs = f"davs://127.0.0.1:{site.srv.door_port}{site.home}/gfal.bin"
    env = {**os.environ, "GFAL_PYTHONBIN": GFAL_PYTHON, "BEARER_TOKEN": site.token, "HOME": str(tmp_path)}
    trusted = {**env, "X509_CERT_DIR": str(site.ca.ca_dir)}
    run([gfal_copy, "-f", f"file://{src}", davs], env=trusted)
    assert site.get(f"{site.home}/gfal.bin").content == data
    run([gfal_copy, "-f", davs, f"file://{tmp_path / 'gfal.back'}"], env=trusted)
    assert (tmp_path / "gfal.back").read_bytes() == data
    other = TestCA.make(tmp_path / "other", "another CA")
    bad = run([gfal_copy, "-f", davs, f"file://{tmp_path / 'x'}"], env={**env, "X509_CERT_DIR": str(other.ca_dir)},
              check=False)  # fmt: skip
    assert bad.returncode != 0 and "certificate verification failed" in bad.stderr.lower(), bad.stderr


@pytest.mark.interop
def test_davix_davs(site: Site, tmp_path: Path) -> None:
    require("davix-put")
    src, data = _payload(tmp_path, "davix.bin")
    davs = f"davs://127.0.0.1:{site.srv.door_port}{site.home}/davix.bin"
    bearer = ["-H", f"Authorization: Bearer {site.token}"]
    capath = ["--capath", str(site.ca.ca_dir)]
    run(["davix-put", *capath, *bearer, str(src), davs])
    assert site.get(f"{site.home}/davix.bin").content == data
    run(["davix-get", *capath, *bearer, davs, str(tmp_path / "davix.back")])
    assert (tmp_path / "davix.back").read_bytes() == data
    other = TestCA.make(tmp_path / "other", "another CA")
    bad = run(["davix-get", "--capath", str(other.ca_dir), *bearer, davs, str(tmp_path / "x")], check=False)
    assert bad.returncode != 0 and "certificate verification failed" in bad.stderr.lower(), bad.stderr


@pytest.mark.interop
@pytest.mark.xfail(
    strict=True,
    reason="davix 0.8 never answers a Basic challenge with --userlogin/--userpass, over TLS or not (cern-fts/davix#81)",
)
def test_davix_basic_over_tls(site: Site) -> None:
    require("davix-ls")
    out = run(
        ["davix-ls", "--capath", str(site.ca.ca_dir), "--userlogin", site.user, "--userpass", site.key,
         f"davs://127.0.0.1:{site.srv.door_port}{site.home}/"],
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_cli_with_ca_file(site: Site, tmp_path: Path) -> None:
    src, data = _payload(tmp_path, "cli.bin", 100_000)
    env = {
        **os.environ,
        "HEADRACE_CONFIG": str(tmp_path / "none.json"),
        "HEADRACE_DOOR_URL": site.srv.door_url,
        "HEADRACE_API_URL": site.srv.api_url,
        "HEADRACE_USER": site.user,
        "HEADRACE_KEY": site.key,
    }
    env.pop("HEADRACE_CA_FILE", None)
    env.pop("SSL_CERT_FILE", None)
    put = [*headrace_command(["--ca-file", str(site.ca.ca), "put", str(src), f"{site.home}/cli.bin"])]
    run(put, env=env)
    assert site.get(f"{site.home}/cli.bin").content == data
    run(headrace_command(["get", f"{site.home}/cli.bin", str(tmp_path / "cli.back")]),
        env={**env, "HEADRACE_CA_FILE": str(site.ca.ca)})  # fmt: skip
    assert (tmp_path / "cli.back").read_bytes() == data
    run(headrace_command(["ls", site.home]), env={**env, "SSL_CERT_FILE": str(site.ca.ca)})
    bad = run(headrace_command(["ls", site.home]), env=env, check=False)
    assert bad.returncode != 0
    assert "certificate verify failed" in bad.stderr and "--ca-file" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = run(headrace_command(["--ca-file", str(tmp_path / "nope.pem"), "ls", "/"]), env=env, check=False)
    assert missing.returncode != 0 and "nope.pem" in missing.stderr


FN = """
def main(event, ctx):
    ctx.storage.write(event["out"], "written over TLS")
    with ctx.storage.open(event["out"]) as f:
        back = f.read().decode()
    import os
    return {"back": back, "door": os.environ.get("HEADRACE_DOOR_URL", "")}
"""


def test_function_reaches_the_door_over_tls(site: Site) -> None:
    """Activation storage URLs are https; the function's sandbox trusts the CA the server trusts."""
    ns = "/api/v1/namespaces/_"
    with site.srv.api(auth=(site.user, site.key)) as api:
        body = {"exec": {"kind": "python:3", "code": FN}, "annotations": [{"key": "storage", "value": True}]}
        assert api.put(f"{ns}/actions/tlsfn", json=body).status_code == 200
        r = api.post(
            f"{ns}/actions/tlsfn",
            params={"blocking": "true", "result": "true"},
            json={"out": f"{site.home}/from-fn.txt"},
            timeout=120,
        )
    assert r.status_code == 200, r.text
    assert r.json()["back"] == "written over TLS"
    assert r.json()["door"].startswith("https://")
    assert site.get(f"{site.home}/from-fn.txt").content == b"written over TLS"


def test_client_certificate_required(tmp_path: Path) -> None:
    ca = TestCA.make(tmp_path / "ca")
    srv = TLSServer(
        data=tmp_path / "data", cli_config=tmp_path / "cli.json", ca=ca, client_cert=True,
        args_extra=["--tls-client-ca", str(ca.ca)],
    ).start()  # fmt: skip
    try:
        with srv.door() as door:  # with the client certificate
            assert door.put("/mtls.txt", content=b"x").status_code == 201
        url = f"{srv.door_url}/mtls.txt"
        without = run(["curl", "-sS", "--cacert", str(ca.ca), "-u", "admin:test-admin-key", url], check=False)
        assert without.returncode != 0, without.stdout
        with_cert = run(
            ["curl", "-sS", "--cacert", str(ca.ca), "--cert", str(ca.client_cert), "--key", str(ca.client_key),
             "-u", "admin:test-admin-key", url]
        )  # fmt: skip
        assert with_cert.stdout == "x"
        cli = {
            **os.environ, "HEADRACE_CONFIG": str(tmp_path / "none.json"), "HEADRACE_DOOR_URL": srv.door_url,
            "HEADRACE_API_URL": srv.api_url, "HEADRACE_USER": "admin", "HEADRACE_KEY": "test-admin-key",
            "HEADRACE_CA_FILE": str(ca.ca),
        }  # fmt: skip
        refused = run(headrace_command(["ls", "/"]), env=cli, check=False)
        assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        shown = {**cli, "HEADRACE_CLIENT_CERT": str(ca.client_cert), "HEADRACE_CLIENT_KEY": str(ca.client_key)}
        assert "mtls.txt" in run(headrace_command(["ls", "/"]), env=shown).stdout
        with pytest.raises(httpx.HTTPError):  # the frontend too
            httpx.get(f"{srv.api_url}/healthz", verify=ca.context())
        assert httpx.get(f"{srv.api_url}/healthz", verify=ca.context(client_cert=True)).status_code == 200
    finally:
        srv.stop()


def test_self_signed_made_once_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def start() -> tuple[TLSServer, str]:
        srv = _SelfSigned(data=data, cli_config=tmp_path / "cli.json", ca=TestCA.make(tmp_path / "unused"))
        srv.start()
        return srv, srv.log()

    srv, log = start()
    ca = data / "tls" / "ca.pem"
    assert f"headrace: TLS CA   {ca.resolve()}  (made;" in log
    first = ca.read_bytes()
    httpx_ctx = ssl.create_default_context(cafile=str(ca))
    assert httpx.get(f"{srv.api_url}/healthz", verify=httpx_ctx).status_code == 200
    assert json.loads((tmp_path / "cli.json").read_text())["ca_file"] == str(ca.resolve())
    srv.stop()
    srv, log = start()
    try:
        assert "(reused;" in log
        assert ca.read_bytes() == first
        r = httpx.request("PROPFIND", f"{srv.door_url}/", verify=httpx_ctx, auth=srv.auth, headers={"Depth": "0"})
        assert r.status_code == 207
    finally:
        srv.stop()
    refused = subprocess.run(
        [sys.executable, "-m", "headrace.cli.main", "up", "--data", str(data), "--tls-self-signed",
         "--tls-cert", str(ca), "--tls-key", str(ca)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0 and "not both" in refused.stderr


@dataclass
class _SelfSigned(TLSServer):
    """`headrace up --tls-self-signed`: its clients trust the CA it made under its data directory."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.args_extra = ["--tls-self-signed"]
        self.env_extra.pop("HEADRACE_CA_FILE", None)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.data / "tls" / "ca.pem"))

    def _ready(self) -> bool:
        if not (self.data / "tls" / "ca.pem").exists():
            return False
        return super()._ready()


def test_pool_process_over_tls(tmp_path: Path) -> None:
    """`headrace pool` with HEADRACE_TLS_CERT/KEY registers an https URL; the door (trusting the CA through
    HEADRACE_CA_FILE) stores and reads files on it."""
    ca = TestCA.make(tmp_path / "ca")
    srv = TLSServer(data=tmp_path / "data", cli_config=tmp_path / "cli.json", ca=ca)
    srv.start()
    pool = PoolProcess(
        tmp_path / "tls-pool", pool_db_url(srv), "tls-pool",
        env_extra={"HEADRACE_TLS_CERT": str(ca.cert), "HEADRACE_TLS_KEY": str(ca.key)},
    )  # fmt: skip
    try:
        pool.log_path = tmp_path / "pool.log"
        pool.spawn(pool.args(), pool.env())
        https = f"https://127.0.0.1:{pool.port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{https}/healthz", verify=ca.context(), timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        pool.wait_until(healthy, 60)
        assert query(srv.data, "SELECT url FROM pools WHERE name = 'tls-pool'") == [(https,)]
        data = secrets.token_bytes(2 * MB + 5)
        with srv.door() as door:
            assert door.put("/on-tls-pool.bin", content=data).status_code == 201
            assert door.get("/on-tls-pool.bin").content == data
        assert pool.blobs(), "the file's blob is on the TLS pool"
    finally:
        pool.stop()
        srv.stop()


def test_third_party_copy_over_https(site: Site, tmp_path: Path) -> None:
    """HTTP-TPC over https: the door pulls from an https Source (verifying its certificate against the CA
    it trusts, sending TransferHeaderAuthorization) and pushes to an https Destination; checksums verified."""
    _, data = _payload(tmp_path, "tpc-src", 2 * MB + 5)
    with site.srv.door(auth=(site.user, site.key)) as door:
        assert door.put(f"{site.home}/tpc-src", content=data).status_code == 201
        bearer = {"TransferHeaderAuthorization": f"Bearer {site.token}"}
        pull = {"Source": f"{site.srv.door_url}{site.home}/tpc-src", **bearer}
        r = door.request("COPY", f"{site.home}/tpc-pulled", headers=pull, timeout=120)
        assert r.status_code == 202, r.text
        assert r.text.strip().splitlines()[-1].startswith("success"), r.text
        # the door's own URL would make a local COPY: "localhost" names it as another server (the certificate
        # holds both names), and may resolve to ::1 first, where nothing listens: the next address is tried
        elsewhere = site.srv.door_url.replace("127.0.0.1", "localhost")
        assert elsewhere != site.srv.door_url
        push = {"Destination": f"{elsewhere}{site.home}/tpc-pushed", **bearer}
        r = door.request("COPY", f"{site.home}/tpc-src", headers=push, timeout=120)
        assert r.status_code == 202, r.text
        assert r.text.strip().splitlines()[-1].startswith("success"), r.text
    assert site.get(f"{site.home}/tpc-pulled").content == data
    assert site.get(f"{site.home}/tpc-pushed").content == data
