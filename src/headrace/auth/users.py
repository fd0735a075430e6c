"""Users and their API keys (HTTP Basic `username:key`); keys are stored only as salted hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from headrace.auth.subject import Subject
from headrace.db.engine import Database
from headrace.db.schema import users
from headrace.errors import Exists, NotFound


def hash_key(key: str, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), salt.encode(), 10_000).hex()
    return f"pbkdf2${salt}${digest}"


def verify_key(key: str, stored: str) -> bool:
    try:
        _, salt, _ = stored.split("$", 2)
    except ValueError:
        return False
    return hmac.compare_digest(hash_key(key, salt), stored)


def new_key() -> str:
    return secrets.token_urlsafe(24)


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
    """The user table; key checks are cached so that Basic auth costs one hash per new key, not per request."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._verified: dict[tuple[str, str], User] = {}
        self._by_name: dict[str, User] = {}

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

    def get(self, username: str) -> User:
        cached = self._by_name.get(username)
        if cached is not None:
            return cached
        with self.db.reader.connect() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).first()
        if row is None:
            raise NotFound(f"No such user: {username}")
        user = self._row_to_user(row)
        self._by_name[username] = user
        return user

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
    ) -> User:
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
                    key_hash=hash_key(key),
                    admin=admin,
                    home=home,
                    root="/",
                    created=int(time.time()),
                )
            )
        return self.get(username)

    def set_key(self, username: str, key: str) -> None:
        with self.db.engine.begin() as conn:
            n = conn.execute(update(users).where(users.c.username == username).values(key_hash=hash_key(key))).rowcount
        if n == 0:
            raise NotFound(f"No such user: {username}")
        self._verified = {k: v for k, v in self._verified.items() if k[0] != username}
        self._by_name.pop(username, None)

    def authenticate(self, username: str, key: str) -> User | None:
        cached = self._verified.get((username, key))
        if cached is not None:
            return cached
        with self.db.reader.connect() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).first()
        if row is None or not verify_key(key, row.key_hash):
            return None
        user = self._row_to_user(row)
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[(username, key)] = user
        return user
