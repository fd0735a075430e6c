"""Checksums computed while data streams, and the RFC 3230 Digest/Want-Digest header syntax.

ADLER32 is always computed (dCache's default); MD5 and SHA-256 when asked for or when the client sends
them to be verified. Wire names follow RFC 3230/IANA (adler32, md5, sha-256); values in the namespace
are dCache's: lower-case hex, ADLER32 as 8 hex digits.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass, field

# namespace name -> RFC 3230 token
WIRE_NAMES = {"ADLER32": "adler32", "MD5": "md5", "SHA-256": "sha-256"}
FROM_WIRE = {v: k for k, v in WIRE_NAMES.items()}
FROM_WIRE["sha256"] = "SHA-256"
SUPPORTED = tuple(WIRE_NAMES)


@dataclass
class Hasher:
    """Feeds every chunk to each requested algorithm; ADLER32 always."""

    types: set[str] = field(default_factory=set)
    _adler: int = 1
    _others: dict[str, hashlib._Hash] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for t in self.types:
            if t == "MD5":
                self._others[t] = hashlib.md5(usedforsecurity=False)
            elif t == "SHA-256":
                self._others[t] = hashlib.sha256()

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._adler = zlib.adler32(chunk, self._adler)
        for h in self._others.values():
            h.update(chunk)

    def values(self) -> dict[str, str]:
        """Namespace checksums: {"ADLER32": "0a1b2c3d", ...} in lower-case hex."""
        out = {"ADLER32": f"{self._adler & 0xFFFFFFFF:08x}"}
        for t, h in self._others.items():
            out[t] = h.hexdigest()
        return out


def parse_want_digest(header: str) -> list[str]:
    """Namespace names asked for by `Want-Digest: adler32;q=1, md5;q=0.5`, best first; unknown ones ignored."""
    ranked: list[tuple[float, int, str]] = []
    for i, item in enumerate(header.split(",")):
        token, *params = [p.strip() for p in item.split(";")]
        q = 1.0
        for p in params:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        name = FROM_WIRE.get(token.lower())
        if name and q > 0:
            ranked.append((-q, i, name))
    return [name for _, _, name in sorted(ranked)]


def parse_digest(header: str) -> dict[str, str]:
    """`Digest: adler32=0a1b2c3d, md5=<base64>` -> namespace names to lower-case hex. Raises ValueError."""
    out: dict[str, str] = {}
    for item in header.split(","):
        item = item.strip()
        if not item:
            continue
        token, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"malformed Digest item {item!r}")
        name = FROM_WIRE.get(token.strip().lower())
        if name is None:
            continue
        out[name] = _wire_to_hex(name, value.strip())
    return out


def expected_checksums(digest: str, content_md5: str) -> dict[str, str]:
    """What a PUT says its body hashes to: its `Digest` (RFC 3230) and its `Content-MD5` (RFC 1864, the MD5
    as base64, which dCache verifies too), namespace names to lower-case hex. Raises ValueError when either
    is malformed or they name two different MD5s."""
    try:
        expected = parse_digest(digest)
    except ValueError as exc:
        raise ValueError(f"Malformed Digest header: {exc}") from exc
    if content_md5.strip():
        try:
            md5 = _wire_to_hex("MD5", content_md5.strip())
        except ValueError as exc:
            raise ValueError(f"Malformed Content-MD5 header: {exc}") from exc
        if expected.setdefault("MD5", md5) != md5:
            raise ValueError("Content-MD5 and Digest name different MD5 values")
    return expected


def format_digest(checksums: dict[str, str], wanted: list[str]) -> str | None:
    """The `Digest:` answer for the first wanted type we hold (RFC 3230: one is enough)."""
    for name in wanted:
        if name in checksums:
            return f"{WIRE_NAMES[name]}={_hex_to_wire(name, checksums[name])}"
    return None


def _wire_to_hex(name: str, value: str) -> str:
    if name == "ADLER32":
        int(value, 16)
        return value.lower().rjust(8, "0")
    # RFC 3230: md5 and sha-256 are base64 of the digest; accept hex too, as many clients send it.
    size = 16 if name == "MD5" else 32
    if len(value) == 2 * size:
        try:
            bytes.fromhex(value)
            return value.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ValueError(f"{WIRE_NAMES[name]} value is neither base64 nor hex") from exc
    if len(raw) != size:
        raise ValueError(f"{WIRE_NAMES[name]} value has the wrong length")
    return raw.hex()


def _hex_to_wire(name: str, value: str) -> str:
    if name == "ADLER32":
        return value
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")
