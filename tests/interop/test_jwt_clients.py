"""Third-party clients with a JWT from a real OAuth2 provider (support/oidc_provider.py) over davs:// on a
real `headrace up --tls-cert --tls-key --token-issuers FILE`: gfal2 (gfal-copy, token in BEARER_TOKEN, as
the grid passes it), davix (a bearer header), rclone (--webdav-bearer-token) and curl upload and download
as a WLCG capability token allows, and are refused outside its scopes. The token's audience is the door's
own https URL, which the issuer's entry accepts by default."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import add_user
from support.oidc_provider import OidcProvider
from tls_harness import TestCA, TLSServer

from .tools import require, run

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
logging.getLogger("werkzeug").setLevel(logging.ERROR)

GFAL_PYTHON = "/usr/bin/python3"
MB = 1024 * 1024


@dataclass
class Site:
    srv: TLSServer
    ca: TestCA
    provider: OidcProvider

    def token(self, scope: str) -> str:
        return self.provider.token("door", scope)

    def get(self, path: str) -> bytes:
        with self.srv.door() as door:
            r = door.get(path)
            assert r.status_code == 200, r.text
            return r.content


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("jwtclients")
    ca = TestCA.make(base / "ca")
    provider = OidcProvider().start()
    issuers = base / "issuers.yaml"
    srv = TLSServer(data=base / "data", cli_config=base / "cli.json", ca=ca)
    issuers.write_text(f"- issuer: {provider.issuer}\n  kind: wlcg\n  base_path: /grid\n  user: gridsvc\n")
    srv.args_extra = [*srv.args_extra, "--token-issuers", str(issuers)]
    provider.add_client("door", srv.door_url)
    srv.start()
    try:
        _, _, uid = add_user(srv, "gridsvc")
        with srv.door() as door:
            for d in ("/grid", "/grid/in", "/grid/out"):
                assert door.request("MKCOL", d).status_code == 201
            assert door.put("/grid/in/fixed.bin", content=b"fixed").status_code == 201
        with srv.api() as api:
            for d in ("/grid", "/grid/in", "/grid/out"):
                assert api.post(f"/api/v1/namespace{d}", json={"action": "chown", "uid": uid}).is_success
        yield Site(srv, ca, provider)
    finally:
        srv.stop()
        provider.stop()


def _payload(tmp_path: Path, name: str, size: int = 2 * MB + 5) -> tuple[Path, bytes]:
    data = secrets.token_bytes(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def test_gfal_copy_with_a_jwt(site: Site, tmp_path: Path) -> None:
    gfal_copy = require("gfal-copy")
    if subprocess.run([GFAL_PYTHON, "-c", "import gfal2, gfal2_util"], capture_output=True).returncode != 0:
        pytest.skip("gfal2's Python bindings are not installed (scripts/install-test-deps.sh)")
    src, data = _payload(tmp_path, "gfal.bin")
    token = site.token("storage.read:/ storage.create:/in")
    env = {**os.environ, "GFAL_PYTHONBIN": GFAL_PYTHON, "BEARER_TOKEN": token, "HOME": str(tmp_path),
           "X509_CERT_DIR": str(site.ca.ca_dir)}  # fmt: skip
    door = f"davs://127.0.0.1:{site.srv.door_port}"
    run([gfal_copy, f"file://{src}", f"{door}/grid/in/gfal.bin"], env=env)
    assert site.get("/grid/in/gfal.bin") == data
    run([gfal_copy, f"{door}/grid/in/gfal.bin", f"file://{tmp_path / 'gfal.back'}"], env=env)
    assert (tmp_path / "gfal.back").read_bytes() == data
    # storage.create:/in does not reach /grid/out: refused
    bad = run([gfal_copy, f"file://{src}", f"{door}/grid/out/gfal.bin"], env=env, check=False)
    assert bad.returncode != 0 and ("403" in bad.stderr or "denied" in bad.stderr.lower()), bad.stderr


def test_davix_with_a_jwt(site: Site, tmp_path: Path) -> None:
    require("davix-put")
    src, data = _payload(tmp_path, "davix.bin")
    bearer = ["-H", f"Authorization: Bearer {site.token('storage.read:/in storage.modify:/in')}"]
    capath = ["--capath", str(site.ca.ca_dir)]
    url = f"davs://127.0.0.1:{site.srv.door_port}/grid/in/davix.bin"
    run(["davix-put", *capath, *bearer, str(src), url])
    assert site.get("/grid/in/davix.bin") == data
    run(["davix-get", *capath, *bearer, url, str(tmp_path / "davix.back")])
    assert (tmp_path / "davix.back").read_bytes() == data
    reader = ["-H", f"Authorization: Bearer {site.token('storage.read:/in')}"]
    bad = run(["davix-put", *capath, *reader, str(src), url.replace("davix.bin", "nope.bin")], check=False)
    assert bad.returncode != 0


def test_rclone_and_curl_with_a_jwt(site: Site, tmp_path: Path) -> None:
    require("rclone")
    src, data = _payload(tmp_path, "rc.bin")
    token = site.token("storage.read:/ storage.modify:/out")
    env = {**os.environ, "RCLONE_CONFIG": str(tmp_path / "rclone.conf")}
    remote = [f"--webdav-url={site.srv.door_url}", "--webdav-vendor=other", f"--webdav-bearer-token={token}",
              "--ca-cert", str(site.ca.ca)]  # fmt: skip
    run(["rclone", *remote, "copyto", str(src), ":webdav:grid/out/rc.bin"], env=env)
    assert site.get("/grid/out/rc.bin") == data
    listed = run(["rclone", *remote, "lsf", ":webdav:grid/out/"], env=env).stdout.split()
    assert "rc.bin" in listed
    curl = ["curl", "-sS", "--cacert", str(site.ca.ca), "-H", f"Authorization: Bearer {token}"]
    out = tmp_path / "curl.back"
    code = run([*curl, "-o", str(out), "-w", "%{http_code}", f"{site.srv.door_url}/grid/out/rc.bin"]).stdout
    assert code == "200" and out.read_bytes() == data
    in_url = f"{site.srv.door_url}/grid/in/fixed.bin"
    gone = run([*curl, "-X", "DELETE", "-o", "/dev/null", "-w", "%{http_code}", in_url])
    assert gone.stdout == "403"  # only storage.read under /in
