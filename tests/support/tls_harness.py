"""A test CA (made with `headrace.tls_server`, i.e. `cryptography`) and a `headrace up` serving HTTPS with a
certificate it signed: `TLSServer` is harness.Server with https URLs and clients that trust the test CA."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx

from harness import Server, client
from headrace.tls_server import issue, make_ca


@dataclass(frozen=True)
class TestCA:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and the CA as a hashed
    directory (what gfal2's X509_CERT_DIR and davix's --capath want)."""

    __test__ = False  # not a test class, whatever its name

    ca: Path
    ca_key: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    ca_dir: Path

    @classmethod
    def make(cls, directory: Path, name: str = "headrace test CA") -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = make_ca(directory, name)
        cert, key = directory / "server.pem", directory / "server-key.pem"
        issue(ca, ca_key, cert, key, ["localhost", "127.0.0.1", "::1"])
        client_cert, client_key = directory / "client.pem", directory / "client-key.pem"
        issue(ca, ca_key, client_cert, client_key, ["test-client"], client=True)
        ca_dir = directory / "certificates"
        ca_dir.mkdir(exist_ok=True)
        shutil.copy(ca, ca_dir / "ca.pem")
        # OpenSSL finds a CA in a directory by its subject hash (`openssl rehash` makes the HASH.0 link)
        subprocess.run(["openssl", "rehash", str(ca_dir)], check=True, capture_output=True)
        return cls(ca, ca_key, cert, key, client_cert, client_key, ca_dir)

    def context(self, *, client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


@dataclass
class TLSServer(Server):
    """`headrace up --tls-cert --tls-key` with the test CA's server certificate (add `--tls-client-ca` to
    `args_extra` to require client certificates; `client_cert=True` then makes the clients show one)."""

    ca: TestCA | None = None
    client_cert: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        assert self.ca is not None
        self.args_extra = ["--tls-cert", str(self.ca.cert), "--tls-key", str(self.ca.key), *self.args_extra]
        # the server's own clients (functions through the door) trust the test CA, as an operator sets it
        self.env_extra.setdefault("HEADRACE_CA_FILE", str(self.ca.ca))

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        assert self.ca is not None
        return self.ca.context(client_cert=self.client_cert)

    @property
    def door_url(self) -> str:
        return f"https://127.0.0.1:{self.door_port}"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def _ready(self) -> bool:
        try:
            r = httpx.get(f"{self.api_url}/healthz", timeout=1, verify=self.ssl_context)
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        with socket.create_connection(("127.0.0.1", self.door_port), timeout=1):
            return True

    def door(self, **kw: Any) -> httpx.Client:
        kw.setdefault("verify", self.ssl_context)
        kw.setdefault("auth", self.auth)
        return client(base_url=self.door_url, timeout=60, **kw)

    def api(self, **kw: Any) -> httpx.Client:
        kw.setdefault("verify", self.ssl_context)
        kw.setdefault("auth", self.auth)
        return client(base_url=self.api_url, timeout=60, **kw)
