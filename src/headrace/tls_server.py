"""TLS on headrace's servers (the door, the frontend, pool processes): the certificate, its key and the optional
client CA, as the HTTP servers take them, and `--tls-self-signed`'s CA and server certificate, made with the
`cryptography` package under the data directory and reused on every restart.

granian (the door, pools) speaks HTTP/1.1 and HTTP/2 over TLS (ALPN); uvicorn (the frontend, the health ports)
speaks HTTP/1.1. TLS 1.2 is the least version offered (gfal2's and davix's OpenSSL speak 1.3 too).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TLSConfigError(ValueError):
    """A TLS option that cannot work (the message names the file and why)."""


@dataclass(frozen=True)
class ServerTLS:
    cert: str
    key: str
    client_ca: str = ""

    def check(self) -> None:
        """Load the files once, so that a wrong path or a key of another certificate is refused at start."""
        try:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cert, self.key)
            if self.client_ca:
                ctx.load_verify_locations(cafile=self.client_ca)
        except FileNotFoundError as exc:
            raise TLSConfigError(f"TLS: no such file {exc.filename or ''}".strip()) from exc
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"TLS certificate {self.cert} / key {self.key}: {exc}") from exc

    def uvicorn(self) -> dict[str, Any]:
        """uvicorn.Config's keyword arguments for this certificate."""
        out: dict[str, Any] = {"ssl_certfile": self.cert, "ssl_keyfile": self.key}
        if self.client_ca:
            out.update(ssl_ca_certs=self.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        return out

    def granian(self) -> dict[str, Any]:
        """granian's embedded server's keyword arguments for this certificate."""
        from granian.constants import SSLProtocols

        out: dict[str, Any] = {
            "ssl_cert": Path(self.cert),
            "ssl_key": Path(self.key),
            "ssl_protocol_min": SSLProtocols.tls12,
        }
        if self.client_ca:
            out.update(ssl_ca=Path(self.client_ca), ssl_client_verify=True)
        return out


def server_tls(cert: str, key: str, client_ca: str = "") -> ServerTLS | None:
    """The TLS of a server given these options (None: plain HTTP); refused when only half is given."""
    if not cert and not key:
        if client_ca:
            raise TLSConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not cert or not key:
        raise TLSConfigError("give both --tls-cert and --tls-key")
    tls = ServerTLS(cert, key, client_ca)
    tls.check()
    return tls


# -- --tls-self-signed ------------------------------------------------------------------------------------

CA_NAME = "ca.pem"
CERT_NAME = "server.pem"
KEY_NAME = "server-key.pem"
CA_KEY_NAME = "ca-key.pem"


@dataclass(frozen=True)
class SelfSigned:
    ca: Path
    cert: Path
    key: Path
    created: bool


def _hosts(extra: list[str]) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn(), *extra]
    out: list[str] = []
    for n in names:
        if n and n not in out and n not in ("0.0.0.0", "::"):
            out.append(n)
    return out


def _san(hosts: list[str]) -> Any:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for h in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            entries.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(entries)


def _covers(cert_path: Path, hosts: list[str]) -> bool:
    """The certificate names every host and is good for another week."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)
    return all(h in have or str(_ip(h)) in have for h in hosts) and cert.not_valid_after_utc > soon


def _ip(h: str) -> object:
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        return h


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def make_ca(directory: Path, common_name: str = "headrace test CA", days: int = 3650) -> tuple[Path, Path]:
    """A new CA (certificate, key) in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key = directory / CA_KEY_NAME
    ca = directory / CA_NAME
    _write_private(
        ca_key,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca, ca_key


def issue(
    ca: Path, ca_key: Path, cert_out: Path, key_out: Path, hosts: list[str], *, client: bool = False, days: int = 825
) -> None:
    """A certificate for `hosts` (a server's; `client=True`: a client's, named by hosts[0]) signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if not client:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    _write_private(
        key_out,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    cert_out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def self_signed(directory: Path, extra_hosts: list[str] | None = None) -> SelfSigned:
    """The CA and server certificate under `directory` (made when missing, the server certificate made again
    when it no longer names every host or expires within a week; the CA is kept, so clients keep trusting)."""
    hosts = _hosts(extra_hosts or [])
    ca, ca_key = directory / CA_NAME, directory / CA_KEY_NAME
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    created = False
    if not (ca.exists() and ca_key.exists()):
        ca, ca_key = make_ca(directory, f"headrace CA ({socket.gethostname()})")
        created = True
    if created or not key.exists() or not _covers(cert, hosts):
        issue(ca, ca_key, cert, key, hosts)
        created = True
    return SelfSigned(ca, cert, key, created)
