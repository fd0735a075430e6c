"""Macaroons as dCache makes them: first-party caveats that restrict identity, paths, activities and time.

Caveats understood: `id:<uid>;<gid,...>;<username>`, `path:<absolute path>` (the token may act only at
or below it; several must all hold), `root:<path>` (the token sees that directory as '/'),
`activity:A,B` (intersection when several), `before:<ISO-8601 time>`, `ip:<cidr>[,<cidr>]`,
`grants:<JSON [[path, [activity, ...]], ...]>` (activities allowed per path, as a WLCG or SciTokens JWT's
scopes give them: any one grant of the caveat may allow an action, and several such caveats must all allow
it), and `cause:<activation id>` (the changes the token makes are that activation's).

Anyone holding a macaroon may append caveats to it, never insert or remove one: the caveats the server
minted are a prefix that only it can have written. So the caveats that say something the server vouches
for (`id:`, `cause:`) count only in their minted places: `id:` first, `cause:` right after it. Every token
the server mints ends with a `before:` caveat, so whatever a holder appends comes after that, and a token
with another `id:` or `cause:` anywhere else is refused: it was forged. Every other caveat, wherever it
is, can only narrow what the token allows.

The root key lives in the database's state table, shared by every process of a deployment;
`rotate_root_key` replaces it (`headrace token rotate-key`), and every process that `follow`s the table
uses the new key within `KEY_REFRESH_SECONDS`: tokens signed with the old one are refused from then on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import isodate
from pymacaroons import Macaroon, Verifier
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from headrace.db.schema import state
from headrace.errors import BadRequest, Unauthorized
from headrace.storage.paths import normalize

if TYPE_CHECKING:
    from headrace.db.engine import Database

ACTIVITIES = ("DOWNLOAD", "UPLOAD", "DELETE", "MANAGE", "LIST", "READ_METADATA", "UPDATE_METADATA", "STAGE")
LOCATION = "headrace"
#: Caveats whose content the server vouches for: valid only where it mints them (see the module docstring).
SERVER_CAVEATS = ("id", "cause")
#: An activation id, as `cause:` caveats carry it.
ACTIVATION_ID = re.compile(r"[0-9a-f]{32}")
#: The state-table row holding the root key.
ROOT_KEY_STATE = "macaroon-root-key"
#: How often a process that follows the state table re-reads the root key (so how soon a rotation holds).
KEY_REFRESH_SECONDS = 1.0

log = logging.getLogger("headrace.auth")


@dataclass
class Restrictions:
    """What a token allows, beyond what its user may do anyway."""

    username: str = ""
    uid: int = -1
    gids: tuple[int, ...] = ()
    #: The activation the token was minted for (its `cause:` caveat): the cause of every change it makes.
    cause: str | None = None
    paths: list[str] = field(default_factory=list)
    root: str = "/"
    activities: set[str] | None = None  # None: all
    before: datetime | None = None
    networks: list[list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = field(default_factory=list)
    #: Per-path activities (`grants:` caveats, a capability JWT's scopes): each set must allow an action,
    #: and a set allows it when one of its (path, activities) grants does.
    grants: list[list[tuple[str, frozenset[str]]]] = field(default_factory=list)
    #: The narrowing caveats (all but `id:` and `cause:`), in order: what a token minted from this one keeps.
    caveats: list[str] = field(default_factory=list)


def grants_caveat(grants: list[tuple[str, frozenset[str]]]) -> str:
    """The `grants:` caveat for a set of (path, activities) grants."""
    return "grants:" + json.dumps([[p, sorted(a)] for p, a in grants], separators=(",", ":"))


def _parse_grants(value: str) -> list[tuple[str, frozenset[str]]]:
    raw = json.loads(value)
    if not isinstance(raw, list):
        raise ValueError("grants: expected a list")
    out: list[tuple[str, frozenset[str]]] = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], list)):
            raise ValueError("grants: expected [path, [activity, ...]] items")
        acts = frozenset(str(a) for a in item[1])
        if not acts <= set(ACTIVITIES):
            raise ValueError("grants: unknown activity")
        out.append((normalize(item[0]), acts))
    return out


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
    """Validate a caveat a client asks for; return it normalised. Raises BadRequest (`id:` and `cause:`
    among them: only the server says who a token is and what it acts for)."""
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
    if key == "grants":
        try:
            return grants_caveat(_parse_grants(value))
        except ValueError as exc:
            raise BadRequest(f"Bad caveat {caveat!r}: {exc}") from exc
    if key in SERVER_CAVEATS:
        raise BadRequest(f"Bad caveat {caveat!r}: the server alone sets {key}: caveats")
    raise BadRequest(f"Bad caveat {caveat!r}: unknown caveat type {key!r}")


def _parse_time(value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"Bad time {value!r}: expected ISO-8601") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _narrow(r: Restrictions, caveat: str) -> None:
    """Apply one narrowing caveat to `r`; ValueError/BadRequest if it is not one this server understands."""
    key, sep, value = caveat.partition(":")
    if not sep:
        raise ValueError(f"not a key:value caveat: {caveat!r}")
    if key == "path":
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
    elif key == "grants":
        r.grants.append(_parse_grants(value))
    else:
        raise ValueError(f"unknown caveat {caveat!r}")


def _identity(r: Restrictions, caveat: str) -> None:
    uid, gids, name = caveat.removeprefix("id:").split(";", 2)
    r.uid, r.username = int(uid), name
    r.gids = tuple(int(g) for g in gids.split(",") if g)
    if r.uid < 0 or not name:
        raise ValueError("bad identity")


class MacaroonAuthority:
    """Mints and verifies macaroons with one root key (kept in the database's state table; `follow` keeps
    it current when it is rotated)."""

    def __init__(self, root_key: str) -> None:
        self.root_key = root_key
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    @staticmethod
    def new_root_key() -> str:
        return secrets.token_hex(32)

    def mint(
        self,
        *,
        username: str,
        uid: int,
        gids: tuple[int, ...],
        caveats: list[str],
        validity: timedelta,
        cause: str | None = None,
    ) -> str:
        """A token for the user `username` (uid, gids), narrowed by `caveats`, valid for `validity`; with
        `cause`, every change it makes names that activation as its cause."""
        m = Macaroon(location=LOCATION, identifier=secrets.token_hex(8), key=self.root_key)
        m.add_first_party_caveat(f"id:{uid};{','.join(str(g) for g in gids)};{username}")
        if cause is not None:
            if not ACTIVATION_ID.fullmatch(cause):
                raise ValueError(f"cause must be an activation id (32 hex digits), not {cause!r}")
            m.add_first_party_caveat(f"cause:{cause}")
        for caveat in caveats:
            if caveat.partition(":")[0] in SERVER_CAVEATS:
                raise ValueError(f"{caveat!r}: identity and cause are mint's own arguments")
            m.add_first_party_caveat(caveat)
        # Always last of what the server writes: anything a holder appends comes after it (module docstring).
        before = (datetime.now(UTC) + validity).isoformat(timespec="seconds").replace("+00:00", "Z")
        m.add_first_party_caveat(f"before:{before}")
        return str(m.serialize())

    def verify(self, token: str) -> Restrictions:
        """The token's restrictions if its signature holds and its caveats are all understood and in their
        places (expiry and address are the caller's to check); Unauthorized otherwise."""
        try:
            m = Macaroon.deserialize(token)
            caveats = [str(c.caveat_id) for c in m.caveats if c.first_party()]
            third_party = len(caveats) != len(m.caveats)
        except Exception as exc:
            raise Unauthorized("Invalid macaroon: it cannot be decoded") from exc
        if third_party:
            raise Unauthorized("Invalid macaroon: third-party caveats are not supported")
        if not caveats or not caveats[0].startswith("id:"):
            raise Unauthorized("Invalid macaroon: it names no identity")
        minted = 2 if len(caveats) > 1 and caveats[1].startswith("cause:") else 1
        if any(c.partition(":")[0] in SERVER_CAVEATS for c in caveats[minted:]):
            # a holder appended it: an identity or cause the server never vouched for
            raise Unauthorized("Invalid macaroon: an identity or cause caveat out of its place")
        r = Restrictions()
        try:
            _identity(r, caveats[0])
            if minted == 2:
                r.cause = caveats[1].removeprefix("cause:")
                if not ACTIVATION_ID.fullmatch(r.cause):
                    raise ValueError("bad cause")
            for caveat in caveats[minted:]:
                _narrow(r, caveat)
        except (ValueError, BadRequest) as exc:
            raise Unauthorized("Invalid macaroon: a caveat this server does not understand") from exc
        r.caveats = caveats[minted:]
        v = Verifier()
        v.satisfy_general(lambda _caveat: True)  # each was understood above, in order
        try:
            ok = v.verify(m, self.root_key)
        except Exception:  # pymacaroons raises its own for a bad signature
            ok = False
        if not ok:
            raise Unauthorized("Invalid macaroon: its signature does not hold")
        return r

    # -- the root key in the database -----------------------------------------------------------------------

    def follow(self, load: Callable[[], str], interval: float = KEY_REFRESH_SECONDS) -> None:
        """Re-read the root key with `load()` every `interval` seconds, on a thread of its own (never on the
        event loop), until `close`; a failed read keeps the key in use and is tried again."""
        if self._follower is not None:
            return

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    key = load()
                except Exception as exc:  # the database is away: keep the key, try again
                    log.debug("macaroon root key not re-read: %s", exc)
                    continue
                if key != self.root_key:
                    log.warning("macaroon root key rotated: tokens signed with the previous key are refused")
                    self.root_key = key

        self._follower = threading.Thread(target=run, name="macaroon-key", daemon=True)
        self._follower.start()

    def close(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(2.0)


def load_root_key(db: Database) -> str:
    """The root key every process of a deployment shares, made if this is the first process to need it
    (inserted, never replaced: processes starting at once all end up with the one key)."""
    with db.reader.connect() as conn:
        found = conn.execute(select(state.c.value).where(state.c.name == ROOT_KEY_STATE)).first()
    if found is not None:
        return str(found.value)
    with contextlib.suppress(IntegrityError), db.engine.begin() as conn:
        conn.execute(insert(state).values(name=ROOT_KEY_STATE, value=MacaroonAuthority.new_root_key()))
    with db.engine.connect() as conn:
        return str(conn.execute(select(state.c.value).where(state.c.name == ROOT_KEY_STATE)).scalar_one())


def rotate_root_key(db: Database) -> None:
    """Replace the root key: every token minted before is refused from now on (by each running process
    once it has re-read the key, `KEY_REFRESH_SECONDS` at most)."""
    with db.engine.begin() as conn:
        new = MacaroonAuthority.new_root_key()
        if conn.execute(update(state).where(state.c.name == ROOT_KEY_STATE).values(value=new)).rowcount == 0:
            conn.execute(insert(state).values(name=ROOT_KEY_STATE, value=new))
