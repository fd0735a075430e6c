"""What doors, clients and pool processes say to each other: the signed pool token and the pool's URL space.

A pool token is `hrp1.<payload>.<signature>`: the payload is compact JSON in unpadded base64url, the signature
HMAC-SHA256 over `hrp1.<payload>` with the shared pool secret, also unpadded base64url. Claims:

- `aud`: "door" (a door's own request, sent as `Authorization: Bearer`) or "client" (a redirected client's
  request, sent as `?token=` on the pool URL the door redirected it to);
- `op`: "read" (GET/HEAD), "write" (PUT), "delete", "copy", "sums";
- `pool`, `blob`: the only pool and blob it is good for; `exp`: Unix time after which it is refused;
- `dst`: the new blob's name for "copy"; `headers`: response headers a redirected read repeats (ETag, Digest...);
- `commit`: for a redirected write, what the pool needs to make the file visible itself: path, the user's
  identity, the door's preconditions, the checksums asked for, and the file's URL on the door.

Pure encode/decode: no I/O here (see `pool_client` and `pool_server` for the transports).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from headrace.errors import Forbidden

VERSION = "hrp1"
#: The pool's API for doors; a redirected client's request instead carries `?token=` on any path.
API_PREFIX = "/.pool/blobs/"
HEALTH_PATH = "/healthz"
TOKEN_PARAM = "token"
#: A door's own requests to a pool are short: their tokens live long enough to cover clock skew, no longer.
DOOR_TOKEN_SECONDS = 300.0

OPS = ("read", "write", "delete", "copy", "sums")


@dataclass(frozen=True)
class Commit:
    """What a pool needs to commit a redirected upload into the namespace as the door would have."""

    path: str
    username: str
    uid: int
    gids: tuple[int, ...]
    admin: bool = False
    if_match: str | None = None
    if_none_match_any: bool = False
    cause: str | None = None
    want: tuple[str, ...] = ()  # checksum types the client asked for (namespace names), best first
    location: str = ""  # the file's URL on the door, for the 201's Location

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "user": self.username,
            "uid": self.uid,
            "gids": list(self.gids),
            "admin": self.admin,
            "if_match": self.if_match,
            "inm": self.if_none_match_any,
            "cause": self.cause,
            "want": list(self.want),
            "loc": self.location,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Commit:
        return cls(
            path=str(d["path"]),
            username=str(d["user"]),
            uid=int(d["uid"]),
            gids=tuple(int(g) for g in d["gids"]),
            admin=bool(d.get("admin", False)),
            if_match=d.get("if_match"),
            if_none_match_any=bool(d.get("inm", False)),
            cause=d.get("cause"),
            want=tuple(str(w) for w in d.get("want", ())),
            location=str(d.get("loc", "")),
        )


@dataclass(frozen=True)
class PoolToken:
    aud: str
    op: str
    pool: str
    blob: str
    exp: float
    dst: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    commit: Commit | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"aud": self.aud, "op": self.op, "pool": self.pool, "blob": self.blob, "exp": self.exp}
        if self.dst is not None:
            out["dst"] = self.dst
        if self.headers:
            out["headers"] = self.headers
        if self.commit is not None:
            out["commit"] = self.commit.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PoolToken:
        headers = d.get("headers") or {}
        if not isinstance(headers, dict):
            raise ValueError("headers must be an object")
        commit = d.get("commit")
        return cls(
            aud=str(d["aud"]),
            op=str(d["op"]),
            pool=str(d["pool"]),
            blob=str(d["blob"]),
            exp=float(d["exp"]),
            dst=None if d.get("dst") is None else str(d["dst"]),
            headers={str(k): str(v) for k, v in headers.items()},
            commit=None if commit is None else Commit.from_json(commit),
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, signed: str) -> bytes:
    return hmac.new(secret.encode(), signed.encode("ascii"), hashlib.sha256).digest()


def sign(secret: str, token: PoolToken) -> str:
    payload = _b64(json.dumps(token.to_json(), separators=(",", ":"), sort_keys=True).encode())
    signed = f"{VERSION}.{payload}"
    return f"{signed}.{_b64(_mac(secret, signed))}"


def mint(
    secret: str,
    *,
    aud: str,
    op: str,
    pool: str,
    blob: str,
    seconds: float,
    dst: str | None = None,
    headers: dict[str, str] | None = None,
    commit: Commit | None = None,
) -> str:
    exp = round(time.time() + seconds, 3)
    return sign(secret, PoolToken(aud, op, pool, blob, exp, dst, headers or {}, commit))


def verify(secret: str, text: str, *, pool: str, aud: str, now: float | None = None) -> PoolToken:
    """The token's claims if its signature holds, it is for `pool` and `aud`, and it has not expired;
    Forbidden otherwise (one sentence, naming what failed but nothing of the secret)."""
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise Forbidden("Not a pool token")
    signed = f"{parts[0]}.{parts[1]}"
    # compared as text with the canonical encoding: base64url's last character carries unused bits, so a
    # decoded comparison would take a token altered there as the one the door issued
    if not hmac.compare_digest(parts[2].encode("ascii", "replace"), _b64(_mac(secret, signed)).encode("ascii")):
        raise Forbidden("Pool token signature does not verify")
    try:
        claims = PoolToken.from_json(json.loads(_unb64(parts[1])))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise Forbidden("Pool token payload is malformed") from exc
    if claims.pool != pool:
        raise Forbidden(f"Pool token is for pool {claims.pool}, not {pool}")
    if claims.aud != aud:
        raise Forbidden(f"Pool token is for a {claims.aud}, not a {aud} request")
    if claims.op not in OPS:
        raise Forbidden(f"Pool token has an unknown operation {claims.op!r}")
    if (time.time() if now is None else now) > claims.exp:
        raise Forbidden("Pool token has expired")
    return claims
