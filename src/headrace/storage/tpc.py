"""WLCG HTTP third-party copy (TPC): the wire format, apart from any transport.

The protocol dCache, XRootD and EOS speak and FTS and gfal2 (davix) drive: a WebDAV `COPY` whose `Source:`
names a URL on another server (pull: this door GETs it) or whose `Destination:` does (push: this door PUTs
the local file there). Each request header `TransferHeader<Name>: value` is sent to the remote as `<Name>:
value` (TransferHeaderAuthorization carries the remote's credential); `Credential:` says which credential the
active party may use besides those (only `none` here: no X.509 delegation, no token exchange).

The answer is `202 Accepted` with `Content-Type: text/perf-marker-stream`: a performance marker every few
seconds while the copy runs, then one last line, `success: Created` or `failure: <reason>`. davix
(gfal2's HTTP library) reads the body line by line, skips leading white space, and knows the lines `Perf
Marker`, `Timestamp:`, `Stripe Index:`, `Stripe Bytes Transferred:`, `Total Stripe Count:`, `End`,
`success`, `failure`/`failed` and `aborted`; older releases stop at any other line, so nothing else is sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from headrace.errors import BadRequest
from headrace.storage.checksums import SUPPORTED, WIRE_NAMES, parse_digest, parse_want_digest
from headrace.storage.tpc_policy import TransferPolicy

MEDIA_TYPE = "text/perf-marker-stream"
TRANSFER_HEADER = "transferheader"
#: Headers a TransferHeader may not set on the remote request: the transport's own framing.
_FRAMING = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade", "trailer"}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: What is asked of a remote when the client names no Want-Digest: dCache's types, adler32 first.
DEFAULT_WANT = ", ".join(f"{WIRE_NAMES[t]};q={q}" for t, q in zip(SUPPORTED, ("1", "0.5", "0.4"), strict=True))


@dataclass(frozen=True)
class TpcSettings:
    """Limits of third-party copies in one door process (HEADRACE_TPC_*)."""

    per_user: int = 5  # copies one user may run at once; 429 past it
    total: int = 50  # copies the door runs at once; 503 past it
    marker_interval: float = 5.0  # seconds between performance markers
    connect_timeout: float = 30.0
    idle_timeout: float = 120.0  # seconds without data from (or to) the remote before the copy fails
    #: Which addresses copies may reach (HEADRACE_TPC_DENY / HEADRACE_TPC_ALLOW, see tpc_policy).
    policy: TransferPolicy = field(default_factory=lambda: TransferPolicy.from_env({}))

    @classmethod
    def from_env(cls) -> TpcSettings:
        def number(name: str, default: float) -> float:
            raw = os.environ.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError as exc:
                raise ValueError(f"{name} must be a number, not {raw!r}") from exc
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {raw!r}")
            return value

        return cls(
            per_user=int(number("HEADRACE_TPC_PER_USER", cls.per_user)),
            total=int(number("HEADRACE_TPC_MAX", cls.total)),
            marker_interval=number("HEADRACE_TPC_MARKER_INTERVAL", cls.marker_interval),
            connect_timeout=number("HEADRACE_TPC_CONNECT_TIMEOUT", cls.connect_timeout),
            idle_timeout=number("HEADRACE_TPC_IDLE_TIMEOUT", cls.idle_timeout),
            policy=TransferPolicy.from_env(),
        )


def perf_marker(transferred: int, timestamp: float) -> bytes:
    """One performance marker: bytes moved so far, as one stripe (as dCache and XRootD send it)."""
    return (
        "Perf Marker\n"
        f"    Timestamp: {int(timestamp)}\n"
        "    Stripe Index: 0\n"
        f"    Stripe Bytes Transferred: {transferred}\n"
        "    Total Stripe Count: 1\n"
        "End\n"
    ).encode()


def success_line() -> bytes:
    return b"success: Created\n"


def failure_line(reason: str) -> bytes:
    """The last line of a failed copy: one line, whatever the reason holds."""
    flat = " ".join(reason.split()) or "the copy failed"
    return f"failure: {flat}\n".encode()


def remote_url(value: str, header: str) -> str:
    """The remote URL of a `Source:` or `Destination:` header: http or https with a host, else 400."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise BadRequest(f"{header} is not a URL: {value!r}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise BadRequest(f"{header} must be an http or https URL for a third-party copy, not {value!r}")
    if not parts.hostname:
        raise BadRequest(f"{header} has no host: {value!r}")
    return value.strip()


def transfer_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`TransferHeader<Name>: value` request headers as the `<Name>: value` headers of the remote request
    (400 on an empty or malformed name, or one that would change the request's framing)."""
    out: dict[str, str] = {}
    for name, value in headers:
        if not name.lower().startswith(TRANSFER_HEADER):
            continue
        remote = name[len(TRANSFER_HEADER) :]
        if not remote or not _TOKEN.match(remote):
            raise BadRequest(f"Malformed transfer header name: {name!r}")
        if remote.lower() in _FRAMING:
            raise BadRequest(f"{name} would set the remote request's {remote} header, which the door sets")
        out[remote] = value
    return out


def credential_mode(value: str | None) -> str:
    """The `Credential:` header: `none` (or absent) is honoured; the door cannot delegate an X.509 proxy
    (`gridsite`) nor exchange a token (`oidc`): 400."""
    mode = (value or "none").strip().lower()
    if mode != "none":
        raise BadRequest(
            f"Credential: {mode} is not supported: this door uses only the TransferHeader credentials "
            "(send Credential: none and the remote's credential as TransferHeaderAuthorization)"
        )
    return mode


def require_verification(value: str | None) -> bool:
    """`RequireChecksumVerification` (dCache's default: true). 400 unless true or false."""
    if value is None or not value.strip():
        return True
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise BadRequest(f"RequireChecksumVerification must be true or false, not {value!r}")
    return v == "true"


def want_digest(value: str | None) -> tuple[str, list[str]]:
    """The Want-Digest to send the remote and the types it names, best first (the client's, else dCache's)."""
    if value and parse_want_digest(value):
        return value, parse_want_digest(value)
    return DEFAULT_WANT, parse_want_digest(DEFAULT_WANT)


def remote_digest(header: str | None, wanted: list[str]) -> dict[str, str]:
    """The checksums a remote's `Digest:` answer names that we can compare (namespace names to lower-case
    hex), those wanted first; a malformed Digest counts as none."""
    if not header:
        return {}
    try:
        sums = parse_digest(header)
    except ValueError:
        return {}
    ordered = [t for t in wanted if t in sums] + [t for t in sums if t not in wanted]
    return {t: sums[t] for t in ordered}


def compare(local: dict[str, str], remote: dict[str, str]) -> str | None:
    """None when some type both sides know agrees and none disagrees; else why not (for a failure line)."""
    common = [t for t in remote if t in local]
    if not common:
        return "no checksum type in common with the remote"
    for t in common:
        if local[t] != remote[t]:
            return f"checksum mismatch: {WIRE_NAMES[t]} remote {remote[t]}, local {local[t]}"
    return None
