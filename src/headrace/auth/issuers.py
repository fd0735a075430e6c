"""The trusted token issuers file (`headrace up --token-issuers FILE`, HEADRACE_TOKEN_ISSUERS): which
OIDC/OAuth2 issuers' JWTs the servers accept, for which audiences, relative to which base path, and how
their tokens map to headrace users. Read and checked once at start-up: a mistake is one line naming the
file, the entry and the field.

```yaml
- issuer: https://login.helmholtz.de/oauth2      # required: the `iss` claim, exactly
  audiences: [https://door.example.org]          # default: the WLCG "any" audience and the server's own URLs
  base_path: /                                   # capability paths are relative to this
  kind: oidc                                     # wlcg | scitokens | oidc; default: decided per token
  claim: eduperson_principal_name                # identity claim (default sub)
  users: {alice@desy.de: alice}                  # explicit map: claim value -> headrace user
  create_users: true                             # unmapped identities get a user on first use ...
  default_group: 2000                            # ... with this primary gid
  user: svc-transfer                             # capability tokens act as this user (else: mapped as above)
  console:                                       # the web console offers "Sign in with ..." (docs/console.md)
    client_id: headrace-console                  # required: a public client (no secret), authorization code + PKCE
    scopes: openid profile                       # default: openid
    name: Helmholtz AAI                          # the button's label (default: the issuer's host)
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from headrace.storage.paths import normalize

#: The audience every WLCG-profile token may carry to be accepted anywhere.
WLCG_ANY = "https://wlcg.cern.ch/jwt/v1/any"
KINDS = ("wlcg", "scitokens", "oidc")
FIELDS = {
    "issuer", "audiences", "base_path", "kind", "claim", "users", "create_users", "default_group", "user", "console",
}  # fmt: skip
CONSOLE_FIELDS = {"client_id", "scopes", "name"}
#: OAuth 2.0 scope tokens (RFC 6749 section 3.3): printable ASCII but space, double quote and backslash.
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")


class IssuersError(ValueError):
    """The issuers file cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class ConsoleClient:
    """The web console's OAuth client at an issuer: public (no secret), authorization code flow with PKCE."""

    client_id: str
    scopes: str = "openid"
    #: The sign-in button's label: "Sign in with NAME".
    name: str = ""


@dataclass(frozen=True)
class Issuer:
    issuer: str
    #: Accepted `aud` values; None: the WLCG "any" audience and the server's own URLs.
    audiences: tuple[str, ...] | None = None
    base_path: str = "/"
    kind: str | None = None
    claim: str = "sub"
    users: Mapping[str, str] = field(default_factory=dict)
    create_users: bool = False
    default_group: int | None = None
    #: The user capability tokens of this issuer act as (a facility's service identity).
    user: str | None = None
    #: The console's client at this issuer, when the console offers signing in with it.
    console: ConsoleClient | None = None

    def accepted_audiences(self, own_urls: tuple[str, ...]) -> tuple[str, ...]:
        return self.audiences if self.audiences is not None else (WLCG_ANY, *own_urls)


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise IssuersError(f"{where}: issuer must be a URL")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise IssuersError(f"{where}: issuer {value!r} is not an http(s) URL")
    return value


def _console(raw: Any, issuer: str, where: str) -> ConsoleClient:
    where = f"{where}: console"
    if isinstance(raw, str):
        raw = {"client_id": raw}
    if not isinstance(raw, dict):
        raise IssuersError(f"{where}: expected a mapping with at least `client_id: ID`")
    unknown = sorted(set(map(str, raw)) - CONSOLE_FIELDS)
    if unknown:
        raise IssuersError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(CONSOLE_FIELDS))})")
    client_id = raw.get("client_id")
    if client_id is None:
        raise IssuersError(f"{where}: `client_id` is missing (the console's public client at the issuer)")
    if not isinstance(client_id, str) or not client_id.strip() or any(c.isspace() for c in client_id):
        raise IssuersError(f"{where}: client_id must be a client id (a string without spaces)")
    scopes = raw.get("scopes", "openid")
    if isinstance(scopes, list) and all(isinstance(s, str) for s in scopes):
        scopes = " ".join(scopes)
    if not isinstance(scopes, str) or not all(_SCOPE.fullmatch(s) for s in scopes.split()):
        raise IssuersError(f"{where}: scopes must be OAuth scopes separated by spaces (or a list), not {scopes!r}")
    name = raw.get("name", urlsplit(issuer).hostname or issuer)
    if not isinstance(name, str) or not name.strip():
        raise IssuersError(f"{where}: name must be the text for the button (Sign in with NAME)")
    return ConsoleClient(client_id=client_id, scopes=" ".join(scopes.split()), name=name.strip())


def _entry(raw: Any, where: str) -> Issuer:
    if not isinstance(raw, dict):
        raise IssuersError(f"{where}: expected a mapping with at least `issuer: URL`")
    unknown = sorted(set(map(str, raw)) - FIELDS)
    if unknown:
        raise IssuersError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(FIELDS))})")
    if "issuer" not in raw:
        raise IssuersError(f"{where}: `issuer` is missing")
    issuer = _url(raw["issuer"], where)
    where = f"{where} ({issuer})"
    audiences = raw.get("audiences")
    if audiences is not None:
        if isinstance(audiences, str):
            audiences = [audiences]
        if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise IssuersError(f"{where}: audiences must be a non-empty list of strings")
    base = raw.get("base_path", "/")
    if not isinstance(base, str) or not base.startswith("/"):
        raise IssuersError(f"{where}: base_path must be an absolute path")
    try:
        base = normalize(base)
    except Exception as exc:
        raise IssuersError(f"{where}: base_path {base!r}: {exc}") from exc
    kind = raw.get("kind")
    if kind is not None and kind not in KINDS:
        raise IssuersError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    claim = raw.get("claim", "sub")
    if not isinstance(claim, str) or not claim:
        raise IssuersError(f"{where}: claim must be a claim name such as sub or preferred_username")
    users = raw.get("users") or {}
    if not isinstance(users, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _USERNAME.fullmatch(v) for k, v in users.items()
    ):
        raise IssuersError(f"{where}: users must map claim values to headrace user names")
    create = raw.get("create_users", False)
    if not isinstance(create, bool):
        raise IssuersError(f"{where}: create_users must be true or false")
    group = raw.get("default_group")
    if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 0):
        raise IssuersError(f"{where}: default_group must be a gid (a non-negative integer)")
    if group is not None and not create:
        raise IssuersError(f"{where}: default_group is for create_users: true")
    user = raw.get("user")
    if user is not None and (not isinstance(user, str) or not _USERNAME.fullmatch(user)):
        raise IssuersError(f"{where}: user must be a headrace user name")
    console = _console(raw["console"], issuer, where) if raw.get("console") is not None else None
    return Issuer(
        issuer=issuer,
        audiences=tuple(audiences) if audiences is not None else None,
        base_path=base,
        kind=kind,
        claim=claim,
        users=dict(users),
        create_users=create,
        default_group=group,
        user=user,
        console=console,
    )


def parse_issuers(text: str, source: str = "issuers file") -> list[Issuer]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise IssuersError(f"{source}: not YAML{at}: {getattr(exc, 'problem', None) or exc}") from exc
    if raw is None:
        raw = []
    if isinstance(raw, dict) and "issuers" in raw:
        raw = raw["issuers"]
    if not isinstance(raw, list):
        raise IssuersError(f"{source}: expected a list of issuer entries (- issuer: URL)")
    entries = [_entry(item, f"{source}: entry {i + 1}") for i, item in enumerate(raw)]
    seen: set[str] = set()
    for e in entries:
        if e.issuer.rstrip("/") in seen:
            raise IssuersError(f"{source}: issuer {e.issuer} is listed twice")
        seen.add(e.issuer.rstrip("/"))
    return entries


def load_issuers(path: str | Path | None) -> list[Issuer]:
    """The entries of the issuers file at `path` (none for an empty path); IssuersError, one line, if not usable."""
    if not path:
        return []
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise IssuersError(f"token issuers file {p}: {exc.strerror or exc}") from exc
    return parse_issuers(text, f"token issuers file {p}")
