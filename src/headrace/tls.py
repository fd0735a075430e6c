"""One TLS context per process for every HTTP client headrace opens.

httpx builds a new `ssl.SSLContext` for each client, loading the CA bundle each time: about 25 ms of CPU, paid
by every CLI command, every activation's storage client and every test helper for each client it opens, even
when it only ever speaks plain HTTP. The context is built on first use and shared; it honours SSL_CERT_FILE and
SSL_CERT_DIR as httpx does.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """This process's TLS context for HTTPS servers (verifying them against the CA bundle)."""
    return httpx.create_ssl_context()
