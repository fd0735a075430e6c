"""Bearer JWTs from trusted issuers (auth/issuers.py): verified with PyJWT against the issuer's published
keys, then turned into a principal.

Keys come from the issuer's OpenID discovery document (`/.well-known/openid-configuration` → `jwks_uri`),
are kept for `KEYS_MAX_AGE` seconds, and fetched again when a token names a key id not among them (at most
once per `refetch_interval` per issuer, so tokens with made-up key ids cannot make the server hammer the
issuer): a key the issuer rotates in is picked up with its first token. Signature (asymmetric algorithms
only), `exp`, `nbf`, `iat` (with `LEEWAY` seconds), `iss` and `aud` are checked; each refusal is a 401 whose
reason says which (expired, wrong audience, unknown issuer, bad signature, unknown key id ...), with an
RFC 6750 `WWW-Authenticate: Bearer error="invalid_token"` header.

What a verified token may do:
- a capability token (WLCG profile `storage.read|create|modify|stage:/path`, SciTokens `read:|write:/path`)
  gets `Restrictions` with one `grants:` set (macaroons.py), paths under the issuer's base path: the same
  checks as a macaroon's `path:` and `activity:` caveats, in `Principal.check`. It acts as the issuer's
  configured `user`, else as the user its identity maps to;
- an identity token (OIDC, no capability scopes) acts with its mapped user's own permissions: the issuer's
  `users` map, an identity created before, or, with `create_users`, a user made on first use (remembered in
  the state table, so every process maps it alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from headrace.auth.issuers import Issuer
from headrace.auth.macaroons import Restrictions, grants_caveat
from headrace.db.schema import state
from headrace.errors import Exists, NotFound, Unauthorized
from headrace.storage.paths import normalize

if TYPE_CHECKING:
    from headrace.auth.users import User, Users
    from headrace.config import Settings

log = logging.getLogger("headrace.auth")

#: Seconds of clock difference tolerated on exp, nbf and iat.
LEEWAY = 30
#: How long fetched keys are used before the issuer is asked again.
KEYS_MAX_AGE = 3600.0
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]

#: The WLCG common JWT profile versions understood (a token's `wlcg.ver`, when it has one).
WLCG_VERSIONS = ("1.0",)
# WLCG common JWT profile (v1.0) storage scopes and SciTokens' as dCache maps them to activities.
_META = {"LIST", "READ_METADATA"}
SCOPE_ACTIVITIES: dict[str, frozenset[str]] = {
    "storage.read": frozenset({"DOWNLOAD", *_META}),
    "storage.create": frozenset({"UPLOAD", "MANAGE", *_META}),
    "storage.modify": frozenset({"UPLOAD", "MANAGE", "DELETE", "UPDATE_METADATA", *_META}),
    "storage.stage": frozenset({"STAGE", *_META}),
    "read": frozenset({"DOWNLOAD", *_META}),
    "write": frozenset({"UPLOAD", "MANAGE", "DELETE", "UPDATE_METADATA", *_META}),
}
_WLCG = ("storage.read", "storage.create", "storage.modify", "storage.stage")
_SCITOKENS = ("read", "write")
_NAME_CHARS = re.compile(r"[^a-z0-9_.-]+")


def looks_like_jwt(token: str) -> bool:
    """A compact JWS (three base64url parts, a JSON header): a macaroon never looks like this."""
    return token.startswith("eyJ") and token.count(".") == 2


def invalid_token(reason: str) -> Unauthorized:
    quoted = reason.replace("\\", "\\\\").replace('"', "'")
    return Unauthorized(
        f"Invalid bearer token: {reason}",
        headers={"WWW-Authenticate": f'Bearer realm="headrace", error="invalid_token", error_description="{quoted}"'},
    )


async def discovery_document(http: httpx.AsyncClient, issuer: str) -> dict[str, Any]:
    """The issuer's OpenID discovery document (`/.well-known/openid-configuration`); httpx.HTTPError when it
    cannot be fetched, ValueError when it is no JSON object."""
    url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
    response = await http.get(url)
    response.raise_for_status()
    doc = response.json()
    if not isinstance(doc, dict):
        raise ValueError(f"{url} is not a JSON object")
    return doc


class IssuerKeys:
    """One issuer's signing keys: discovered, cached, re-fetched (rate-limited) on an unknown key id."""

    def __init__(self, issuer: str, http: httpx.AsyncClient, refetch_interval: float) -> None:
        self.issuer = issuer
        self.http = http
        self.refetch_interval = refetch_interval
        self.keys: dict[str, PyJWK] = {}
        self.fetched = -1e9  # never: time.monotonic() may be small on a machine just booted
        self.attempted = -1e9
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        jwks_uri = (await discovery_document(self.http, self.issuer))["jwks_uri"]
        resp = await self.http.get(jwks_uri)
        resp.raise_for_status()
        keyset = PyJWKSet.from_dict(resp.json())
        self.keys = {str(k.key_id or ""): k for k in keyset.keys}
        self.fetched = time.monotonic()

    async def get(self, kid: str | None) -> PyJWK:
        now = time.monotonic()
        stale = now - self.fetched > KEYS_MAX_AGE
        if stale or (kid is not None and kid not in self.keys):
            async with self._lock:
                now = time.monotonic()
                stale = now - self.fetched > KEYS_MAX_AGE
                missing = kid is not None and kid not in self.keys
                if (stale or missing) and now - self.attempted >= self.refetch_interval:
                    self.attempted = now
                    try:
                        await self._fetch()
                    except (httpx.HTTPError, ValueError, KeyError, jwt.PyJWTError) as exc:
                        log.warning("keys of token issuer %s not fetched: %s", self.issuer, exc)
                        if not self.keys:
                            raise invalid_token(f"the keys of issuer {self.issuer} cannot be fetched") from exc
        if kid is None:
            if len(self.keys) == 1:
                return next(iter(self.keys.values()))
            raise invalid_token("the token names no key id (kid)")
        key = self.keys.get(kid)
        if key is None:
            raise invalid_token(f"unknown key id {kid!r} for issuer {self.issuer}")
        return key


@dataclass(frozen=True)
class VerifiedToken:
    issuer: Issuer
    claims: Mapping[str, Any]


def _scopes(claims: Mapping[str, Any]) -> list[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list):
        return [str(s) for s in raw]
    return []


def capability_grants(issuer: Issuer, scopes: list[str]) -> list[tuple[str, frozenset[str]]] | None:
    """The (namespace path, activities) grants of a token's capability scopes, paths under the issuer's base
    path (a scope whose path is not absolute or climbs out is left out); None for an identity token."""
    if issuer.kind == "oidc":
        return None
    names = _WLCG if issuer.kind == "wlcg" else _SCITOKENS if issuer.kind == "scitokens" else _WLCG + _SCITOKENS
    grants: list[tuple[str, frozenset[str]]] = []
    capability = False
    for scope in scopes:
        name, sep, path = scope.partition(":")
        if name not in names or (name in _SCITOKENS and not sep):
            continue  # a bare `read`/`write` is some other service's scope, not a SciTokens capability
        capability = True
        rel = path if sep and path else "/"
        if not rel.startswith("/"):
            continue
        try:
            full = normalize(issuer.base_path.rstrip("/") + normalize(rel))
        except Exception:
            continue
        grants.append((full, SCOPE_ACTIVITIES[name]))
    return grants if capability else None


def _identity_key(issuer: str, claim: str, value: str) -> str:
    return "jwt-user:" + hashlib.sha256(json.dumps([issuer, claim, value]).encode()).hexdigest()


class JwtVerifier:
    """Verifies bearer JWTs against the trusted issuers and maps them to users."""

    def __init__(
        self,
        issuers: list[Issuer],
        users: Users,
        *,
        own_urls: tuple[str, ...] = (),
        refetch_interval: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.issuers = {i.issuer.rstrip("/"): i for i in issuers}
        self.users = users
        self.own_urls = own_urls
        self.refetch_interval = refetch_interval
        self._http = http
        self._keys: dict[str, IssuerKeys] = {}
        self._mapped: dict[str, tuple[str, float]] = {}
        #: Tokens verified before (the token itself -> what it says, the kid that signed it).
        self._verified: dict[str, tuple[VerifiedToken, str]] = {}

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
        return self._http

    async def discovery(self, issuer: str) -> dict[str, Any]:
        """`issuer`'s discovery document, through this verifier's client (see `discovery_document`)."""
        return await discovery_document(self._client(), issuer)

    async def verify(self, token: str) -> VerifiedToken:
        """The token's issuer entry and claims if it holds; 401 (`invalid_token`) with the reason if not. A token
        verified before is taken from memory (PyJWT's decoding costs ~1 ms) while it has not expired and the
        key that signed it is still among its issuer's keys."""
        held = self._verified.get(token)
        if held is not None:
            verified, kid = held
            exp = verified.claims.get("exp")
            keys = self._keys.get(verified.issuer.issuer)
            if isinstance(exp, (int, float)) and time.time() < exp + LEEWAY and keys is not None and kid in keys.keys:
                return verified
            self._verified.pop(token, None)
        verified, kid = await self._verify(token)
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[token] = (verified, kid)
        return verified

    async def _verify(self, token: str) -> tuple[VerifiedToken, str]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise invalid_token("it is not a well-formed JWT") from exc
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise invalid_token(f"signature algorithm {alg!r} is not accepted")
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise invalid_token("it names no issuer (iss)")
        issuer = self.issuers.get(iss.rstrip("/"))
        if issuer is None:
            raise invalid_token(f"unknown issuer {iss}")
        keys = self._keys.get(issuer.issuer)
        if keys is None:
            keys = self._keys[issuer.issuer] = IssuerKeys(issuer.issuer, self._client(), self.refetch_interval)
        kid = header.get("kid")
        key = await keys.get(str(kid) if kid is not None else None)
        audiences = list(issuer.accepted_audiences(self.own_urls))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audiences,
                issuer=iss,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise invalid_token("expired") from exc
        except jwt.InvalidAudienceError as exc:
            got = unverified.get("aud")
            raise invalid_token(f"wrong audience {got!r}: this server accepts {', '.join(audiences)}") from exc
        except jwt.InvalidSignatureError as exc:
            raise invalid_token("bad signature") from exc
        except jwt.ImmatureSignatureError as exc:
            raise invalid_token("not valid yet (nbf)") from exc
        except jwt.InvalidIssuedAtError as exc:
            raise invalid_token("issued in the future (iat)") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"the {exc.claim} claim is missing") from exc
        except jwt.PyJWTError as exc:
            raise invalid_token(str(exc)) from exc
        version = claims.get("wlcg.ver")
        if version is not None and str(version) not in WLCG_VERSIONS:
            known = ", ".join(WLCG_VERSIONS)
            raise invalid_token(
                f"the token's WLCG profile version wlcg.ver={version!r} is not one this server knows ({known})"
            )
        return VerifiedToken(issuer, claims), key.key_id or ""

    # -- identity ----------------------------------------------------------------------------------------

    async def user_for(self, token: VerifiedToken, *, capability: bool) -> User:
        """The headrace user a verified token acts as."""
        issuer, claims = token.issuer, token.claims
        if capability and issuer.user:
            name = issuer.user
        else:
            value = claims.get(issuer.claim)
            if not isinstance(value, str) or not value:
                raise invalid_token(f"the {issuer.claim} claim, which names the user, is missing")
            name = issuer.users.get(value) or await self._mapped_user(issuer, value)
        try:
            return await self.users.fetch(name)
        except NotFound as exc:
            raise invalid_token(f"the token's user {name} does not exist here") from exc

    async def _mapped_user(self, issuer: Issuer, value: str) -> str:
        key = _identity_key(issuer.issuer, issuer.claim, value)
        held = self._mapped.get(key)
        if held is not None and time.monotonic() - held[1] < 60.0:
            return held[0]
        name = await self.users.db.read(self._stored_identity, key)
        if name is None:
            if not issuer.create_users:
                raise invalid_token(f"no headrace user for {issuer.claim} {value!r} of issuer {issuer.issuer}")
            name = await self.users.db.write(self._create_identity, issuer, value, key)
            log.info("user %s created for %s %r of %s", name, issuer.claim, value, issuer.issuer)
        self._mapped[key] = (name, time.monotonic())
        return name

    def _stored_identity(self, key: str) -> str | None:
        with self.users.db.reader.connect() as conn:
            row = conn.execute(select(state.c.value).where(state.c.name == key)).first()
        return None if row is None else str(row.value)

    def _create_identity(self, issuer: Issuer, value: str, key: str) -> str:
        from headrace.auth.users import new_key

        found = self._stored_identity(key)
        if found is not None:
            return found
        stem = _NAME_CHARS.sub("-", value.lower()).strip("-.")[:48] or "user"
        name, n = stem, 1
        while True:
            try:
                gids = (issuer.default_group,) if issuer.default_group is not None else ()
                self.users.create(name, new_key(), gids=gids, generated=True)
                break
            except Exists:
                n += 1
                name = f"{stem}-{n}"
        with contextlib.suppress(IntegrityError), self.users.db.engine.begin() as conn:
            conn.execute(insert(state).values(name=key, value=name))
        return self._stored_identity(key) or name

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def token_info(token: VerifiedToken, grants: list[tuple[str, frozenset[str]]] | None) -> dict[str, Any]:
    """What `headrace whoami` shows of a token."""
    c = token.claims
    exp = c.get("exp")
    return {
        "issuer": c.get("iss"),
        "subject": c.get("sub"),
        "kind": "identity" if grants is None else "capability",
        "audience": c.get("aud"),
        "scopes": _scopes(c),
        "expires": datetime.fromtimestamp(exp, UTC).isoformat() if isinstance(exp, (int, float)) else None,
        "grants": [{"path": p, "activities": sorted(a)} for p, a in grants or []],
    }


async def jwt_principal_parts(verifier: JwtVerifier, raw: str) -> tuple[User, Restrictions | None, dict[str, Any]]:
    """Verify `raw` and return the user it acts as, the restrictions of its scopes and what whoami shows."""
    token = await verifier.verify(raw)
    grants = capability_grants(token.issuer, _scopes(token.claims))
    user = await verifier.user_for(token, capability=grants is not None)
    info = token_info(token, grants)
    if grants is None:
        return user, None, info
    r = Restrictions(username=user.username, uid=user.uid, gids=user.gids)
    r.grants.append(grants)
    exp = token.claims.get("exp")
    r.caveats = [grants_caveat(grants)]
    if isinstance(exp, (int, float)):
        r.before = datetime.fromtimestamp(exp, UTC)
        r.caveats.append("before:" + r.before.isoformat(timespec="seconds").replace("+00:00", "Z"))
    return user, r, info


def own_urls(settings: Settings) -> tuple[str, ...]:
    """The server's own URLs, accepted as a token's audience by default: the door's and the frontend's, as
    configured and as http and https on host:port."""
    urls: list[str] = []
    for url in (settings.door_url, settings.api_url):
        urls.append(url.rstrip("/"))
    for port in (settings.door_port, settings.api_port):
        for scheme in ("https", "http"):
            urls.append(f"{scheme}://{settings.host}:{port}")
    return tuple(dict.fromkeys(urls))


def jwt_verifier(settings: Settings, users: Users) -> JwtVerifier | None:
    """The verifier for the settings' issuers file (IssuersError if it is not usable); None when none is set."""
    from headrace.auth.issuers import load_issuers

    if not settings.token_issuers:
        return None
    issuers = load_issuers(settings.token_issuers)
    refetch = float(os.environ.get("HEADRACE_TOKEN_KEYS_REFETCH") or 5.0)
    return JwtVerifier(issuers, users, own_urls=own_urls(settings), refetch_interval=refetch)
