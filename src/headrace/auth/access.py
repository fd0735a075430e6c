"""Authenticating a request (Basic API key, macaroon as Bearer or `?authz=`, or anonymous) and checking
what the resulting principal may do at a path.

Namespace permission (Unix owner/mode) is checked by the namespace itself; this module adds what tokens
restrict on top: the paths, the root view, the activities, the time and the client address. Door and
frontend both authenticate here, so the limit on failed logins (`FailedLogins`) holds for both at once.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from headrace.auth.jwt_bearer import invalid_token, looks_like_jwt
from headrace.auth.macaroons import MacaroonAuthority, Restrictions
from headrace.auth.subject import ANONYMOUS, Subject
from headrace.auth.users import Users
from headrace.errors import Forbidden, NotFound, TooManyRequests, Unauthorized
from headrace.storage.paths import from_url_path, is_within, normalize

if TYPE_CHECKING:
    from headrace.auth.jwt_bearer import JwtVerifier

# What each activity lets a token holder do on ancestors of its allowed paths: just enough to find them.
_ANCESTOR_OK = {"READ_METADATA", "LIST"}


@dataclass(frozen=True)
class Principal:
    subject: Subject
    restrictions: Restrictions | None = None
    method: str = "basic"  # basic | macaroon | jwt | anonymous
    #: For a JWT: its issuer, subject, kind (capability | identity), scopes, expiry, grants (whoami shows it).
    token: dict[str, Any] | None = None

    @property
    def root(self) -> str:
        return self.restrictions.root if self.restrictions else "/"

    @property
    def cause(self) -> str | None:
        """The activation the changes of this request are made for, so that their events name it and
        activation chains can be cut: the `cause:` caveat of a token the server minted for that activation.
        Nothing a client says counts (an `X-Headrace-Cause` header, which anyone may send, is ignored)."""
        return self.restrictions.cause if self.restrictions else None

    def internal(self, path: str) -> str:
        """The namespace path for a path as this principal names it (a `root:` caveat shifts the view)."""
        path = normalize(path)
        root = self.root
        if root == "/":
            return path
        return root if path == "/" else root + path

    def external(self, path: str) -> str:
        """The inverse of `internal`: how this principal names a namespace path."""
        root = self.root
        if root == "/":
            return path
        if path == root:
            return "/"
        if path.startswith(root + "/"):
            return path[len(root) :]
        raise Forbidden(f"Path outside the token's root: {path}")

    def resolve(self, raw_url_path: bytes) -> str:
        """The namespace path a request names (percent-decoded strictly, through the token's root view),
        refused with 403 when the token can never act there. Every transport resolves paths here."""
        path = self.internal(from_url_path(raw_url_path))
        self.check_reach(path)
        return path

    def visible(self, path: str) -> bool:
        """Whether a listing may show `path` to this principal: a path-limited token sees, in the
        directories above its paths, only the entries that lead to them (as dCache filters them)."""
        r = self.restrictions
        if r is None:
            return True
        related = all(is_within(path, allowed) or is_within(allowed, path) for allowed in r.paths)
        return related and all(any(_related(path, p) for p, _ in grants) for grants in r.grants)

    def check_reach(self, path: str) -> None:
        """Raise Forbidden if no activity of the token could ever apply at `path` (neither within its paths
        nor above them). Checked before the namespace is consulted, so that a token learns nothing, not
        even whether a path exists, outside what it may reach."""
        r = self.restrictions
        if r is None:
            return
        for allowed in r.paths:
            if not (is_within(path, allowed) or is_within(allowed, path)):
                raise Forbidden(f"Permission denied: the token does not allow access to {self.external(path)}")
        for grants in r.grants:
            if not any(_related(path, p) for p, _ in grants):
                raise Forbidden(f"Permission denied: the token does not allow access to {self.external(path)}")

    def check(self, activity: str, path: str) -> None:
        """Raise Forbidden unless the token (if any) allows `activity` at the namespace path `path`."""
        r = self.restrictions
        if r is None:
            return
        if r.activities is not None and activity not in r.activities:
            raise Forbidden(f"Permission denied: the token does not allow {activity}")
        if not is_within(path, r.root):
            raise Forbidden(f"Permission denied: {path} is outside the token's root")
        for allowed in r.paths:
            if is_within(path, allowed):
                continue
            if activity in _ANCESTOR_OK and is_within(allowed, path):
                continue
            raise Forbidden(f"Permission denied: the token does not allow access to {self.external(path)}")
        for grants in r.grants:
            if not any(_grants(activity, path, p, acts) for p, acts in grants):
                where = {p for p, acts in grants if activity in acts}
                if not where:
                    raise Forbidden(f"Permission denied: the token does not allow {activity}")
                raise Forbidden(f"Permission denied: the token allows {activity} only under {', '.join(sorted(where))}")


def _related(path: str, allowed: str) -> bool:
    return is_within(path, allowed) or is_within(allowed, path)


def _grants(activity: str, path: str, allowed: str, activities: frozenset[str]) -> bool:
    """Whether one (path, activities) grant allows `activity` at `path` (ancestors: just enough to find it)."""
    if is_within(path, allowed):
        return activity in activities
    return activity in _ANCESTOR_OK and is_within(allowed, path)


class FailedLogins:
    """Failed Basic logins counted per client address and per user name: after `limit` failures within
    `window` seconds (counted from the first), further attempts from that address are answered 429 with
    Retry-After, without any key being hashed or any user looked up, until the window has passed. Attempts
    at a user name that has failed `limit` times are refused so too, but only where guessing could pay:
    when that user's key was chosen by a person (a slow hash, users.py), not one of the server's random
    keys. A key this process has found right before (`Users.found_right`) passes either way, once the
    database confirms it is still the user's, so a user behind an address someone else fails from, or
    whose name someone fails at, is not locked out; nor does failing at another's name slow the server.
    At most `tracked` addresses and names are remembered (the oldest go first): a flood from many
    addresses costs bounded memory."""

    def __init__(self, limit: int = 20, window: float = 60.0, tracked: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.tracked = tracked
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (first failure, count)

    def check_address(self, address: str | None) -> None:
        """TooManyRequests if `address` has failed `limit` times in the current window."""
        self._check(f"addr:{address}", f"from {address}")

    def check_user(self, username: str) -> None:
        """TooManyRequests if logins as `username` have failed `limit` times in the current window."""
        self._check(f"user:{username}", f"as {username}")

    def _check(self, key: str, what: str) -> None:
        if self.limit <= 0:
            return
        first, count = self._failures.get(key, (0.0, 0))
        left = first + self.window - time.monotonic()
        if count >= self.limit and left > 0:
            wait = max(1, math.ceil(left))
            raise TooManyRequests(
                f"Too many failed logins {what}: {count} in the last {self.window:g} s; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    def failed(self, address: str | None, username: str) -> None:
        if self.limit <= 0:
            return
        now = time.monotonic()
        for key in (f"addr:{address}", f"user:{username}"):
            first, count = self._failures.pop(key, (now, 0))
            if now - first >= self.window:
                first, count = now, 0
            self._failures[key] = (first, count + 1)
        while len(self._failures) > self.tracked:
            self._failures.popitem(last=False)


class Authenticator:
    def __init__(
        self,
        users: Users,
        macaroons: MacaroonAuthority,
        *,
        anonymous: bool = False,
        failed_logins: FailedLogins | None = None,
        jwt: JwtVerifier | None = None,
    ) -> None:
        self.users = users
        self.macaroons = macaroons
        #: Bearer JWTs from the trusted issuers (--token-issuers); None: no issuer is trusted.
        self.jwt = jwt
        self.anonymous = anonymous
        self.failed_logins = failed_logins or FailedLogins()

    async def authenticate(self, authorization: str | None, authz: str | None, client_ip: str | None) -> Principal:
        """The principal behind a request's credentials; raises Unauthorized (401) when they do not hold,
        TooManyRequests (429) when this client or user has failed too often of late."""
        if authz:
            return await (self._jwt(authz) if looks_like_jwt(authz) else self._macaroon(authz, client_ip))
        if authorization:
            scheme, _, value = authorization.partition(" ")
            scheme = scheme.lower()
            if scheme == "basic":
                return await self._basic(value.strip(), client_ip)
            if scheme == "bearer":
                token = value.strip()
                if looks_like_jwt(token):
                    return await self._jwt(token)
                return await self._macaroon(token, client_ip)
            raise Unauthorized(f"Unsupported authorization scheme: {scheme}")
        if self.anonymous:
            return Principal(ANONYMOUS, None, "anonymous")
        raise Unauthorized("Authentication required")

    async def _basic(self, value: str, client_ip: str | None) -> Principal:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise Unauthorized("Malformed Basic credentials") from exc
        username, sep, key = decoded.partition(":")
        if not sep:
            raise Unauthorized("Malformed Basic credentials")
        user = self.users.known(username, key)
        if user is None:
            if not self.users.found_right(username, key):
                self.failed_logins.check_address(client_ip)
            user = await self.users.check_key(username, key, before_slow_hash=self.failed_logins.check_user)
        if user is None:
            self.failed_logins.failed(client_ip, username)
            raise Unauthorized("Invalid username or key")
        return Principal(user.subject, None, "basic")

    async def _jwt(self, token: str) -> Principal:
        if self.jwt is None:
            raise invalid_token("this server trusts no token issuer (see --token-issuers)")
        from headrace.auth.jwt_bearer import jwt_principal_parts

        user, restrictions, info = await jwt_principal_parts(self.jwt, token)
        return Principal(user.subject, restrictions, "jwt", info)

    async def _macaroon(self, token: str, client_ip: str | None) -> Principal:
        r = self.macaroons.verify(token)
        if r.before is not None and datetime.now(UTC) >= r.before:
            raise Unauthorized("Macaroon expired")
        if r.networks:
            try:
                addr = ipaddress.ip_address(client_ip or "")
            except ValueError as exc:
                raise Unauthorized("Macaroon not valid from this client address") from exc
            for nets in r.networks:
                if not any(addr in n for n in nets):
                    raise Unauthorized("Macaroon not valid from this client address")
        try:
            user = await self.users.fetch(r.username)
        except NotFound as exc:
            raise Unauthorized("Macaroon's user no longer exists") from exc
        if user.uid != r.uid:  # the user was removed and the name given to someone else
            raise Unauthorized("Macaroon's user no longer exists")
        return Principal(user.subject, r, "macaroon")
