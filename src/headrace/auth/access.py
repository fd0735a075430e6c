"""Authenticating a request (Basic API key, macaroon as Bearer or `?authz=`, or anonymous) and checking
what the resulting principal may do at a path.

Namespace permission (Unix owner/mode) is checked by the namespace itself; this module adds what tokens
restrict on top: the paths, the root view, the activities, the time and the client address.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime

from headrace.auth.macaroons import MacaroonAuthority, Restrictions
from headrace.auth.subject import ANONYMOUS, Subject
from headrace.auth.users import Users
from headrace.errors import Forbidden, NotFound, Unauthorized
from headrace.storage.paths import from_url_path, is_within, normalize

# What each activity lets a token holder do on ancestors of its allowed paths: just enough to find them.
_ANCESTOR_OK = {"READ_METADATA", "LIST"}


@dataclass(frozen=True)
class Principal:
    subject: Subject
    restrictions: Restrictions | None = None
    method: str = "basic"  # basic | macaroon | anonymous

    @property
    def root(self) -> str:
        return self.restrictions.root if self.restrictions else "/"

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
        if r is None or not r.paths:
            return True
        return all(is_within(path, allowed) or is_within(allowed, path) for allowed in r.paths)

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


class Authenticator:
    def __init__(self, users: Users, macaroons: MacaroonAuthority, *, anonymous: bool = False) -> None:
        self.users = users
        self.macaroons = macaroons
        self.anonymous = anonymous

    def authenticate(self, authorization: str | None, authz: str | None, client_ip: str | None) -> Principal:
        """The principal behind a request's credentials; raises Unauthorized (401) when they do not hold."""
        if authz:
            return self._macaroon(authz, client_ip)
        if authorization:
            scheme, _, value = authorization.partition(" ")
            scheme = scheme.lower()
            if scheme == "basic":
                return self._basic(value.strip())
            if scheme == "bearer":
                return self._macaroon(value.strip(), client_ip)
            raise Unauthorized(f"Unsupported authorization scheme: {scheme}")
        if self.anonymous:
            return Principal(ANONYMOUS, None, "anonymous")
        raise Unauthorized("Authentication required")

    def _basic(self, value: str) -> Principal:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise Unauthorized("Malformed Basic credentials") from exc
        username, sep, key = decoded.partition(":")
        if not sep:
            raise Unauthorized("Malformed Basic credentials")
        user = self.users.authenticate(username, key)
        if user is None:
            raise Unauthorized("Invalid username or key")
        return Principal(user.subject, None, "basic")

    def _macaroon(self, token: str, client_ip: str | None) -> Principal:
        r = self.macaroons.verify(token)
        if r is None:
            raise Unauthorized("Invalid macaroon")
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
            user = self.users.get(r.username)
        except NotFound as exc:
            raise Unauthorized("Macaroon's user no longer exists") from exc
        return Principal(user.subject, r, "macaroon")
