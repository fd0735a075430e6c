"""Users and their API keys (HTTP Basic `username:key`); keys are stored only as hashes.

A key the server generates (`new_key`: 256 random bits) is stored as its SHA-256: no one can guess such a
key, so a slow hash would buy nothing, and a fast one lets a flood of wrong keys cost the server next to
nothing. A key a person chose (`headrace user add --key`, HEADRACE_ADMIN_KEY) may be guessable: it is
stored salted and stretched (PBKDF2), and that check runs on a small pool of threads of its own, never on
the event loop, behind the failed-login limit (access.FailedLogins). Stored hashes say which they are, so
hashes written before this distinction (all PBKDF2) keep working as they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from headrace.auth.subject import Subject
from headrace.db.engine import Database
from headrace.db.schema import users
from headrace.errors import Exists, NotFound

FAST, SLOW = "sha256", "pbkdf2"
PBKDF2_ROUNDS = 10_000
#: The threads that run slow key checks: a flood of them waits here, not on the event loop or the database.
_SLOW_HASHES = ThreadPoolExecutor(2, thread_name_prefix="key-hash")


def hash_key(key: str, *, generated: bool, salt: str | None = None) -> str:
    """How a key is stored: `sha256$HEX` for a key the server generated, `pbkdf2$SALT$HEX` for a chosen one."""
    if generated:
        return f"{FAST}${hashlib.sha256(key.encode()).hexdigest()}"
    salt = salt or secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), salt.encode(), PBKDF2_ROUNDS).hex()
    return f"{SLOW}${salt}${digest}"


def is_slow(stored: str) -> bool:
    return stored.startswith(f"{SLOW}$")


def verify_key(key: str, stored: str) -> bool:
    """Whether `key` is the one `stored` was made from (constant-time comparison)."""
    kind, _, rest = stored.partition("$")
    if kind == FAST:
        return hmac.compare_digest(hash_key(key, generated=True), stored)
    if kind == SLOW:
        salt, _, _ = rest.partition("$")
        return hmac.compare_digest(hash_key(key, generated=False, salt=salt), stored)
    return False


def new_key() -> str:
    """A new random API key: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class User:
    username: str
    uid: int
    gids: tuple[int, ...]
    admin: bool
    home: str
    root: str

    @property
    def subject(self) -> Subject:
        return Subject(self.username, self.uid, self.gids, self.admin)


class Users:
    """The user table, cached for `CACHE_SECONDS`: a key found right is not hashed again, and a user removed
    or re-keyed (by another process too) stops authenticating within that time."""

    #: How long a user, or a key found right, is taken from memory before the database is asked again.
    CACHE_SECONDS = 5.0

    def __init__(self, db: Database) -> None:
        self.db = db
        #: (username, SHA-256 of a key) -> (the user, the stored hash it matched, when): not the key itself.
        self._verified: dict[tuple[str, bytes], tuple[User, str, float]] = {}
        self._by_name: dict[str, tuple[User, float]] = {}

    def _row_to_user(self, row: object) -> User:
        m = row._mapping  # type: ignore[attr-defined]
        return User(
            username=m["username"],
            uid=m["uid"],
            gids=tuple(int(g) for g in m["gids"].split(",") if g),
            admin=bool(m["admin"]),
            home=m["home"],
            root=m["root"],
        )

    def _cached(self, username: str) -> User | None:
        found = self._by_name.get(username)
        return found[0] if found is not None and time.monotonic() - found[1] < self.CACHE_SECONDS else None

    def get(self, username: str) -> User:
        cached = self._cached(username)
        if cached is not None:
            return cached
        row = self._row(username)
        if row is None:
            self._by_name.pop(username, None)
            raise NotFound(f"No such user: {username}")
        user = self._row_to_user(row)
        self._by_name[username] = (user, time.monotonic())
        return user

    async def fetch(self, username: str) -> User:
        """`get`, reading the database (when the user is not cached) off the event loop."""
        cached = self._cached(username)
        return cached if cached is not None else await self.db.read(self.get, username)

    def exists(self, username: str) -> bool:
        with self.db.reader.connect() as conn:
            return conn.execute(select(users.c.id).where(users.c.username == username)).first() is not None

    def create(
        self,
        username: str,
        key: str,
        *,
        uid: int | None = None,
        gids: tuple[int, ...] = (),
        admin: bool = False,
        home: str = "/",
        generated: bool = False,
    ) -> User:
        """Add a user with `key` (`generated`: made by `new_key`, so stored with the fast hash)."""
        with self.db.engine.begin() as conn:
            if conn.execute(select(users.c.id).where(users.c.username == username)).first() is not None:
                raise Exists(f"User exists: {username}")
            if uid is None:
                taken = {r.uid for r in conn.execute(select(users.c.uid))}
                uid = 1000
                while uid in taken:
                    uid += 1
            conn.execute(
                insert(users).values(
                    username=username,
                    uid=uid,
                    gids=",".join(str(g) for g in (gids or (uid,))),
                    key_hash=hash_key(key, generated=generated),
                    admin=admin,
                    home=home,
                    root="/",
                    created=int(time.time()),
                )
            )
        return self.get(username)

    def set_key(self, username: str, key: str, *, generated: bool = False) -> None:
        with self.db.engine.begin() as conn:
            n = conn.execute(
                update(users).where(users.c.username == username).values(key_hash=hash_key(key, generated=generated))
            ).rowcount
        if n == 0:
            raise NotFound(f"No such user: {username}")
        self._verified = {k: v for k, v in self._verified.items() if k[0] != username}
        self._by_name.pop(username, None)

    @staticmethod
    def _cache_key(username: str, key: str) -> tuple[str, bytes]:
        return (username, hashlib.sha256(key.encode()).digest())

    def known(self, username: str, key: str) -> User | None:
        """The user, if `key` was found right for them in the last `CACHE_SECONDS` (no hash, no database)."""
        found = self._verified.get(self._cache_key(username, key))
        return found[0] if found is not None and time.monotonic() - found[2] < self.CACHE_SECONDS else None

    def _remember(self, username: str, key: str, row: object) -> User:
        user = self._row_to_user(row)
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[self._cache_key(username, key)] = (user, row.key_hash, time.monotonic())  # type: ignore[attr-defined]
        return user

    def _row(self, username: str) -> object | None:
        with self.db.reader.connect() as conn:
            return conn.execute(select(users).where(users.c.username == username)).first()

    def found_right(self, username: str, key: str) -> bool:
        """Whether `key` was found right for `username` before, however long ago (it may have changed since)."""
        return self._cache_key(username, key) in self._verified

    def _matched_before(self, username: str, key: str, stored: str) -> bool:
        """Whether `key` was found right against this very stored hash before (so it needs no hashing)."""
        found = self._verified.get(self._cache_key(username, key))
        return found is not None and hmac.compare_digest(found[1], stored)

    def authenticate(self, username: str, key: str) -> User | None:
        """The user if `key` is theirs, else None: blocking, for callers off the event loop (start-up)."""
        cached = self.known(username, key)
        if cached is not None:
            return cached
        row = self._row(username)
        if row is None:
            return None
        stored: str = row.key_hash  # type: ignore[attr-defined]
        if not (self._matched_before(username, key, stored) or verify_key(key, stored)):
            return None
        return self._remember(username, key, row)

    async def check_key(
        self, username: str, key: str, *, before_slow_hash: Callable[[str], None] | None = None
    ) -> User | None:
        """`authenticate` for the event loop: the row is read on a database thread, a slow hash is checked on
        `_SLOW_HASHES` after `before_slow_hash(username)` (which may refuse by raising)."""
        cached = self.known(username, key)
        if cached is not None:
            return cached
        row = await self.db.read(self._row, username)
        if row is None:
            return None
        stored: str = row.key_hash  # type: ignore[attr-defined]
        if self._matched_before(username, key, stored):
            ok = True
        elif is_slow(stored):
            if before_slow_hash is not None:
                before_slow_hash(username)
            ok = await asyncio.get_running_loop().run_in_executor(_SLOW_HASHES, verify_key, key, stored)
        else:
            ok = verify_key(key, stored)
        return self._remember(username, key, row) if ok else None


class Subjects:
    """The subjects (uid, groups, admin) of the users events are judged for in batches: the owners of event
    channels and of storage-feed triggers. Each is looked up again once it is `Users.CACHE_SECONDS` old, so a
    user removed, demoted or taken out of a group (by any process) stops seeing, or firing on, what they
    may no longer read within about twice that time (this cache's age and the `Users` cache's)."""

    def __init__(self, users: Users) -> None:
        self.users = users
        self._held: dict[str, tuple[Subject | None, float]] = {}

    def stale(self, names: Iterable[str]) -> set[str]:
        """Those of `names` not looked up yet, or looked up too long ago."""
        now = time.monotonic()
        return {n for n in names if (h := self._held.get(n)) is None or now - h[1] >= Users.CACHE_SECONDS}

    def refresh(self, names: Iterable[str]) -> None:
        """Look these users up (blocking: on a reader thread). A user that is gone is None: sees nothing."""
        for name in names:
            try:
                subject: Subject | None = self.users.get(name).subject
            except NotFound:
                subject = None
            self._held[name] = (subject, time.monotonic())

    def get(self, name: str) -> Subject | None:
        held = self._held.get(name)
        return held[0] if held is not None else None

    def all_admin(self, names: Iterable[str]) -> bool:
        return all((s := self.get(n)) is not None and s.admin for n in names)
