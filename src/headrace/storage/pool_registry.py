"""The `pools` table: pool processes register their name, URL and space there and heartbeat; doors read it.

Also the shared pool secret, when it is not given in the environment: kept in the `state` table, as the
macaroon root key is, so that every process with the database signs and checks the same pool tokens.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from headrace.db.engine import Database
from headrace.db.schema import pools, state
from headrace.errors import Conflict

SECRET_STATE = "pool-secret"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class PoolRow:
    name: str
    url: str
    free_bytes: int
    used_bytes: int
    started: int
    heartbeat: int
    expires: int

    def live(self, at_ms: int | None = None) -> bool:
        return self.expires > (now_ms() if at_ms is None else at_ms)


def read_pools(db: Database) -> list[PoolRow]:
    with db.reader.connect() as conn:
        rows = conn.execute(select(pools).order_by(pools.c.name)).all()
    return [PoolRow(**r._mapping) for r in rows]


def register(db: Database, name: str, url: str, *, free: int, used: int, lifetime: float) -> None:
    """Claim `name` for the pool at `url`. Refused while another URL holds the name and is alive (two
    processes must never believe they are one pool); a restart of the same pool takes its row back."""
    t = now_ms()
    values = {"url": url, "free_bytes": free, "used_bytes": used, "started": t, "heartbeat": t}
    values["expires"] = t + int(lifetime * 1000)
    with db.engine.begin() as conn:
        row = conn.execute(select(pools).where(pools.c.name == name)).first()
        if row is None:
            conn.execute(insert(pools).values(name=name, **values))
            return
        if row.url != url and row.expires > t:
            raise Conflict(f"Pool {name} is registered at {row.url} and alive; stop it first or use another --name")
        conn.execute(update(pools).where(pools.c.name == name).values(**values))


def heartbeat(db: Database, name: str, url: str, *, free: int, used: int, lifetime: float) -> None:
    """Say this pool is alive, with its current space; re-registers if an operator removed the row."""
    t = now_ms()
    values = {"url": url, "free_bytes": free, "used_bytes": used, "heartbeat": t, "expires": t + int(lifetime * 1000)}
    with db.engine.begin() as conn:
        if conn.execute(update(pools).where(pools.c.name == name).values(**values)).rowcount == 0:
            conn.execute(insert(pools).values(name=name, started=t, **values))


def mark_offline(db: Database, name: str) -> None:
    """A clean stop: doors stop choosing this pool at once (its files stay where they are)."""
    with db.engine.begin() as conn:
        conn.execute(update(pools).where(pools.c.name == name).values(expires=now_ms()))


def pool_secret(db: Database, configured: str = "") -> str:
    """The secret that signs pool tokens: `configured` (HEADRACE_POOL_SECRET) if set, else the database's."""
    if configured:
        return configured
    with db.reader.connect() as conn:
        value = conn.execute(select(state.c.value).where(state.c.name == SECRET_STATE)).scalar()
    if value:
        return str(value)
    try:
        with db.engine.begin() as conn:
            conn.execute(insert(state).values(name=SECRET_STATE, value=secrets.token_urlsafe(32)))
    except IntegrityError:
        pass  # another process made it first: use theirs
    with db.reader.connect() as conn:
        return str(conn.execute(select(state.c.value).where(state.c.name == SECRET_STATE)).scalar_one())
