"""One TLS context per process for every HTTP client headrace opens.

httpx builds a new `ssl.SSLContext` for each client, loading the CA bundle each time: about 25 ms of CPU, paid
by every CLI command, every activation's storage client and every test helper for each client it opens, even
when it only ever speaks plain HTTP. The context is built on first use and shared; it honours SSL_CERT_FILE and
SSL_CERT_DIR as httpx does, and trusts in addition the CA bundle HEADRACE_CA_FILE names (the CLI's `--ca-file`,
the client config's `ca_file`) and the PEM certificates in HEADRACE_CA_PEM (how a function in its sandbox, which
sees none of the server's files, is given the CA of a server with a private certificate). HEADRACE_CLIENT_CERT
(and HEADRACE_CLIENT_KEY, unless the key is in the same PEM file) is the certificate shown to servers that
require one (`--tls-client-ca`).
"""

from __future__ import annotations

import functools
import os
import ssl

import httpx

#: The environment variables naming the extra CA bundle (a file) and holding extra CA certificates (PEM text).
CA_FILE_ENV = "HEADRACE_CA_FILE"
CA_PEM_ENV = "HEADRACE_CA_PEM"
CLIENT_CERT_ENV = "HEADRACE_CLIENT_CERT"
CLIENT_KEY_ENV = "HEADRACE_CLIENT_KEY"


class CAFileError(ValueError):
    """A CA bundle that cannot be read or holds no certificate."""


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """This process's TLS context for HTTPS servers (verifying them against the CA bundle, plus `ca_file`, or
    HEADRACE_CA_FILE when None, plus HEADRACE_CA_PEM). One context per CA file, built once."""
    chosen = os.environ.get(CA_FILE_ENV, "") if ca_file is None else ca_file
    env = os.environ.get
    return _context(chosen, env(CA_PEM_ENV, ""), env(CLIENT_CERT_ENV, ""), env(CLIENT_KEY_ENV, ""))


@functools.cache
def _context(ca_file: str, ca_pem: str, client_cert: str = "", client_key: str = "") -> ssl.SSLContext:
    ctx = httpx.create_ssl_context()
    if client_cert:
        try:
            ctx.load_cert_chain(client_cert, client_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise CAFileError(f"client certificate {client_cert}: {getattr(exc, 'strerror', None) or exc}") from exc
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CAFileError(f"CA file {ca_file}: {getattr(exc, 'strerror', None) or exc}") from exc
    if ca_pem.strip():
        try:
            ctx.load_verify_locations(cadata=ca_pem)
        except ssl.SSLError as exc:
            raise CAFileError(f"{CA_PEM_ENV} holds no usable certificate: {exc}") from exc
    return ctx


def extra_ca_pem() -> str:
    """The PEM text of the CAs this process trusts beyond the system's (HEADRACE_CA_FILE, HEADRACE_CA_PEM): what
    a sandboxed function is given so that it trusts the same servers."""
    parts = []
    path = os.environ.get(CA_FILE_ENV, "")
    if path:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                parts.append(f.read())
        except OSError:
            pass
    if os.environ.get(CA_PEM_ENV, "").strip():
        parts.append(os.environ[CA_PEM_ENV])
    return "\n".join(p.strip() for p in parts if p.strip())


def use_ca_file(path: str) -> None:
    """Trust `path`'s CAs in this process (and what it starts) from now on: `--ca-file`, or the CA of a server
    started with --tls-self-signed (its own clients reach it too)."""
    if path:
        os.environ[CA_FILE_ENV] = path
