"""dCache's frontend resources about the installation rather than its files, in dCache's JSON shapes, for the
clients that read them (SURF's ada: `--whoami` prints the versions of `/cells`, `--upload` picks a WebDAV door
from `/doors`, `--space` reads `/poolgroups` and a group's space):

- `GET /api/v1/cells`: the services of this installation as dCache's cells (name, domain, version, ...);
- `GET /api/v1/doors`: the WebDAV door (protocol, addresses, port, root, tags, read and write paths); who runs
  it (cell, domain, identifier) only for an administrator, as dCache;
- `GET /api/v1/poolgroups[/{group}[/pools | /space]]`: one pool group, `default`, of every pool (this
  process's own and the registered pool processes), and its space: total, free, precious (files waiting for
  their tape copy, which must not be removed) and removable (disk copies of files on tape that eviction may
  drop: not pinned), summed over its live pools, and per pool.

Any authenticated user may read them, as dCache's frontend lets its users.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends
from sqlalchemy import and_, case, exists, func, or_, select

from headrace import __version__
from headrace.auth.access import Principal
from headrace.db import schema
from headrace.db.engine import Database
from headrace.errors import NotFound
from headrace.http_common import principal_of
from headrace.storage.service import StorageService

PREFIX = "/api/v1"
#: dCache's name for the pool group every pool belongs to unless configured otherwise, and its link.
DEFAULT_GROUP = "default"
DEFAULT_LINK = "default-link"
DOMAIN = "headraceDomain"
DOOR_CELL = "WebDAV-door"
#: What the door is advertised for (dCache's `webdav.loginbroker.tags`): ada prefers doors with more tags.
DOOR_TAGS = ("dcache-view", "glue", "storage-descriptor")


@dataclass(frozen=True)
class PoolSpace:
    """A pool's space in bytes, as dCache's PoolSpaceData; `lru` is the age in seconds of the least recently
    used removable file."""

    total: int
    free: int
    precious: int
    removable: int
    lru: int

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "free": self.free,
            "precious": self.precious,
            "removable": self.removable,
            "lru": self.lru,
            "gap": 0,
            "breakEven": 0.0,
        }


def tape_bytes(db: Database, now_ms: int) -> dict[str, tuple[int, int, int | None]]:
    """Per pool: (precious, removable bytes, oldest access of a removable file in ms) from the namespace.
    Precious: files whose QoS wants a tape copy they do not have yet; removable: files of QoS tape on tape and
    disk, not pinned (what eviction may drop)."""
    inodes, pins = schema.inodes, schema.pins
    pinned = exists().where(pins.c.inode_id == inodes.c.id, or_(pins.c.expires.is_(None), pins.c.expires > now_ms))
    precious = and_(inodes.c.qos.in_(("tape", "disk+tape")), inodes.c.locality == "ONLINE")
    removable = and_(inodes.c.qos == "tape", inodes.c.locality == "ONLINE_AND_NEARLINE", ~pinned)
    q = (
        select(
            inodes.c.pool,
            func.sum(case((precious, inodes.c.size), else_=0)),
            func.sum(case((removable, inodes.c.size), else_=0)),
            func.min(case((removable, func.coalesce(inodes.c.accessed, inodes.c.mtime)), else_=None)),
        )
        .where(inodes.c.pool.is_not(None), or_(precious, removable))  # (qos, locality) is indexed
        .group_by(inodes.c.pool)
    )
    with db.reader.connect() as conn:
        return {r[0]: (int(r[1] or 0), int(r[2] or 0), None if r[3] is None else int(r[3])) for r in conn.execute(q)}


def router(service: StorageService) -> APIRouter:
    api = APIRouter()
    authenticated = Depends(principal_of(service))
    started = int(time.time() * 1000)

    async def pool_names() -> list[str]:
        remote = await service.remote_pools.refresh()
        return sorted({*service.pools, *remote})

    async def spaces() -> dict[str, PoolSpace]:
        """The space of every live pool, by name."""
        now = int(time.time() * 1000)
        remote = await service.remote_pools.refresh()
        tape = await service.db.read(tape_bytes, service.db, now)
        used_free: dict[str, tuple[int, int]] = {
            r.name: (r.used_bytes, r.free_bytes) for r in remote.values() if r.live()
        }
        for name, pool in service.pools.items():
            used_free[name] = (pool.used_bytes, pool.free_bytes())
        out = {}
        for name, (used, free) in sorted(used_free.items()):
            precious, removable, oldest = tape.get(name, (0, 0, None))
            lru = 0 if oldest is None else max(0, (now - oldest) // 1000)
            out[name] = PoolSpace(used + free, free, precious, removable, lru)
        return out

    def group(name: str) -> None:
        if name != DEFAULT_GROUP:
            raise NotFound(f"No such pool group: {name}")

    @api.get(PREFIX + "/cells", summary="The services of this installation, as dCache's cells")
    async def cells(principal: Principal = authenticated) -> Any:
        names = [("Frontend", "org.headrace.frontend"), ("PnfsManager", "org.headrace.namespace")]
        names.append((DOOR_CELL, "org.headrace.door"))
        out = [_cell(n, cls, DOMAIN, started) for n, cls in names]
        out += [_cell(n, "org.headrace.pool", DOMAIN, started) for n in service.pools]
        remote = await service.remote_pools.refresh()
        out += [_cell(r.name, "org.headrace.pool", f"{r.name}Domain", r.started) for r in remote.values() if r.live()]
        return sorted(out, key=lambda c: str(c["cellName"]))

    @api.get(PREFIX + "/doors", summary="The doors clients transfer data through (dCache's login broker)")
    async def doors(principal: Principal = authenticated) -> Any:
        settings = service.settings
        url = urlsplit(settings.door_url)
        scheme = url.scheme or "http"
        host = url.hostname or settings.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        door: dict[str, Any] = {
            "protocol": scheme,
            "protocols": [scheme],
            "version": "1.1",
            "root": "/",
            "addresses": [host],
            "port": url.port or (443 if scheme == "https" else 80),
            "load": 0.0,
            "tags": list(DOOR_TAGS),
            "readPaths": ["/"],
            "writePaths": ["/"],
        }
        if principal.subject.admin:
            door.update(
                cellName=DOOR_CELL,
                domainName=DOMAIN,
                identifier=f"{DOOR_CELL}@{DOMAIN}",
                updateTime=int(time.time() * 1000),
            )
        else:
            door["updateTime"] = 0
        return [door]

    @api.get(PREFIX + "/poolgroups", summary="The pool groups")
    async def poolgroups(principal: Principal = authenticated) -> Any:
        return [_group(await pool_names())]

    @api.get(PREFIX + "/poolgroups/{name}", summary="One pool group: its pools and links")
    async def poolgroup(name: str, principal: Principal = authenticated) -> Any:
        group(name)
        return _group(await pool_names())

    @api.get(PREFIX + "/poolgroups/{name}/pools", summary="The pools of a pool group")
    async def poolgroup_pools(name: str, principal: Principal = authenticated) -> Any:
        group(name)
        return await pool_names()

    @api.get(PREFIX + "/poolgroups/{name}/space", summary="The space of a pool group, in all and per pool")
    async def poolgroup_space(name: str, principal: Principal = authenticated) -> Any:
        group(name)
        per_pool = await spaces()
        total = PoolSpace(
            sum(s.total for s in per_pool.values()),
            sum(s.free for s in per_pool.values()),
            sum(s.precious for s in per_pool.values()),
            sum(s.removable for s in per_pool.values()),
            max((s.lru for s in per_pool.values()), default=0),
        )
        return {
            "groupSpaceData": total.as_json(),
            "costDataForPools": {n: {"label": n, "space": s.as_json()} for n, s in per_pool.items()},
        }

    return api


def _cell(name: str, cls: str, domain: str, created: int) -> dict[str, Any]:
    return {
        "cellName": name,
        "domainName": domain,
        "cellType": "Generic",
        "cellClass": cls,
        "creationTime": created,
        "version": __version__,
        "release": __version__,
        "roundTripTime": 0,
    }


def _group(pools: list[str]) -> dict[str, Any]:
    return {"name": DEFAULT_GROUP, "links": [DEFAULT_LINK], "pools": pools, "nestedPoolGroups": []}
