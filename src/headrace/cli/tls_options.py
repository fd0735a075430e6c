"""The TLS options every server command takes (`headrace up`, `door`, `frontend`, `pool`), and what
`--tls-self-signed` does: a CA and a server certificate under the data directory, made once and reused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from headrace.config import Settings
from headrace.tls import use_ca_file
from headrace.tls_server import self_signed

TLS_CERT = typer.Option(
    None, "--tls-cert", help="Serve HTTPS with this certificate (PEM, chain after it; env HEADRACE_TLS_CERT)"
)
TLS_KEY = typer.Option(None, "--tls-key", help="The certificate's private key (PEM; env HEADRACE_TLS_KEY)")
TLS_CLIENT_CA = typer.Option(
    None,
    "--tls-client-ca",
    help="Require client certificates signed by this CA bundle (PEM; env HEADRACE_TLS_CLIENT_CA)",
)


def tls_overrides(cert: Path | None, key: Path | None, client_ca: Path | None) -> dict[str, str | None]:
    """Settings overrides for the TLS options given (absolute paths: roles may change directory)."""
    return {
        "tls_cert": str(cert.resolve()) if cert is not None else None,
        "tls_key": str(key.resolve()) if key is not None else None,
        "tls_client_ca": str(client_ca.resolve()) if client_ca is not None else None,
    }


def with_self_signed(settings: Settings) -> Settings:
    """`--tls-self-signed`: the CA and certificate under DATA/tls (made when missing), the CA trusted by this
    process and what it starts (functions included), and its path printed for clients to trust."""
    if settings.tls_cert or settings.tls_key:
        raise ValueError("give --tls-self-signed or --tls-cert/--tls-key, not both")
    made = self_signed(settings.data_dir.resolve() / "tls", [settings.host])
    use_ca_file(str(made.ca))
    what = "made" if made.created else "reused"
    print(f"headrace: TLS CA   {made.ca}  ({what}; trust it: --ca-file, HEADRACE_CA_FILE or SSL_CERT_FILE)", flush=True)
    return replace(settings, tls_cert=str(made.cert), tls_key=str(made.key))
