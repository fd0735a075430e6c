"""Macaroons as dCache makes them: first-party caveats that restrict identity, paths, activities and time.

Caveats understood: `id:<uid>;<gid,...>;<username>`, `path:<absolute path>` (the token may act only at
or below it; several must all hold), `root:<path>` (the token sees that directory as '/'),
`activity:A,B` (intersection when several), `before:<ISO-8601 time>`, `ip:<cidr>[,<cidr>]`.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import isodate
from pymacaroons import Macaroon, Verifier
from pymacaroons.exceptions import MacaroonException

from headrace.errors import BadRequest
from headrace.storage.paths import normalize

ACTIVITIES = ("DOWNLOAD", "UPLOAD", "DELETE", "MANAGE", "LIST", "READ_METADATA", "UPDATE_METADATA", "STAGE")
LOCATION = "headrace"


@dataclass
class Restrictions:
    """What a token allows, beyond what its user may do anyway."""

    username: str = ""
    uid: int = -1
    gids: tuple[int, ...] = ()
    paths: list[str] = field(default_factory=list)
    root: str = "/"
    activities: set[str] | None = None  # None: all
    before: datetime | None = None
    networks: list[list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)


def parse_validity(text: str) -> timedelta:
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError) as exc:
        raise BadRequest(f"Bad validity {text!r}: expected an ISO-8601 duration such as PT1H") from exc
    if not isinstance(value, timedelta):
        value = value.totimedelta(start=datetime.now(UTC))
    if not isinstance(value, timedelta) or value.total_seconds() <= 0:
        raise BadRequest(f"Bad validity {text!r}: must be positive")
    return value


def check_caveat(caveat: str) -> str:
    """Validate a caveat a client asks for; return it normalised. Raises BadRequest."""
    key, sep, value = caveat.partition(":")
    if not sep:
        raise BadRequest(f"Bad caveat {caveat!r}: expected key:value")
    if key in ("path", "root"):
        return f"{key}:{normalize(value)}"
    if key == "activity":
        acts = [a.strip().upper() for a in value.split(",") if a.strip()]
        unknown = [a for a in acts if a not in ACTIVITIES]
        if unknown or not acts:
            raise BadRequest(f"Bad caveat {caveat!r}: unknown activity {', '.join(unknown) or '(none)'}")
        return f"activity:{','.join(acts)}"
    if key == "before":
        _parse_time(value)
        return caveat
    if key == "ip":
        for net in value.split(","):
            try:
                ipaddress.ip_network(net.strip(), strict=False)
            except ValueError as exc:
                raise BadRequest(f"Bad caveat {caveat!r}: {exc}") from exc
        return caveat
    raise BadRequest(f"Bad caveat {caveat!r}: unknown caveat type {key!r}")


def _parse_time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"Bad time {value!r}: expected ISO-8601") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class MacaroonAuthority:
    """Mints and verifies macaroons with one root key (kept in the database's state table)."""

    def __init__(self, root_key: str) -> None:
        self.root_key = root_key

    @staticmethod
    def new_root_key() -> str:
        return secrets.token_hex(32)

    def mint(self, *, username: str, uid: int, gids: tuple[int, ...], caveats: list[str], validity: timedelta) -> str:
        m = Macaroon(location=LOCATION, identifier=secrets.token_hex(8), key=self.root_key)
        m.add_first_party_caveat(f"id:{uid};{','.join(str(g) for g in gids)};{username}")
        for caveat in caveats:
            m.add_first_party_caveat(caveat)
        before = (datetime.now(UTC) + validity).isoformat(timespec="seconds").replace("+00:00", "Z")
        m.add_first_party_caveat(f"before:{before}")
        return str(m.serialize())

    def verify(self, token: str) -> Restrictions | None:
        """The token's restrictions if its signature holds and it has not expired; None otherwise."""
        try:
            m = Macaroon.deserialize(token)
        except Exception:
            return None
        r = Restrictions()
        seen: list[str] = []

        def satisfy(caveat: str) -> bool:
            seen.append(caveat)
            key, sep, value = caveat.partition(":")
            if not sep:
                return False
            try:
                if key == "id":
                    uid, gids, name = value.split(";", 2)
                    r.uid, r.username = int(uid), name
                    r.gids = tuple(int(g) for g in gids.split(",") if g)
                elif key == "path":
                    r.paths.append(normalize(value))
                elif key == "root":
                    # Nested roots compose: a root caveat is relative to an earlier one.
                    rel = normalize(value)
                    r.root = normalize(r.root.rstrip("/") + rel) if r.root != "/" else rel
                elif key == "activity":
                    acts = {a.strip() for a in value.split(",")}
                    r.activities = acts if r.activities is None else r.activities & acts
                elif key == "before":
                    t = _parse_time(value)
                    r.before = t if r.before is None else min(r.before, t)
                elif key == "ip":
                    r.networks.append([ipaddress.ip_network(n.strip(), strict=False) for n in value.split(",")])
                else:
                    return False
            except (ValueError, BadRequest):
                return False
            return True

        v = Verifier()
        v.satisfy_general(satisfy)
        try:
            ok = v.verify(m, self.root_key)
        except MacaroonException:
            return None
        except Exception:
            return None
        if not ok or r.uid < 0:
            return None
        r.caveats = [c for c in seen if not c.startswith("id:")]
        return r
