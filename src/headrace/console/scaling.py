"""`GET /api/v1/scaling`: the caller's own actions' load, for the console's charts.

Per action: `workers` (warm worker processes in this process's runner; null when the frontend does not run
them, as with Kafka invokers), `queued` and `running` (activations in those states, from the database, so
right in every deployment) and `finished` (activations that ended in the last `window` seconds). Only the
caller's namespace, as the functions API (a macaroon limited to paths or activities is refused there too).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends
from sqlalchemy import func, select
from starlette.responses import JSONResponse, Response

from headrace.auth.access import Principal
from headrace.db.schema import fn_activations
from headrace.http_common import principal_of
from headrace.storage.service import StorageService

if TYPE_CHECKING:
    from headrace.db.engine import Database
    from headrace.functions.api import Functions

ROUTE = "/api/v1/scaling"
#: Seconds over which `finished` is counted (the console divides by it for activations per second).
WINDOW = 10


def load(db: Database, namespace: str, now_ms: int) -> dict[str, dict[str, int]]:
    """{action: {"queued", "running", "finished"}} of one namespace, in two grouped queries."""
    t = fn_activations
    out: dict[str, dict[str, int]] = {}

    def entry(name: str) -> dict[str, int]:
        return out.setdefault(name, {"queued": 0, "running": 0, "finished": 0})

    with db.reader.connect() as conn:
        busy = (
            select(t.c.name, t.c.state, func.count())
            .where(t.c.namespace == namespace, t.c.entity == "action", t.c.state.in_(("queued", "running")))
            .group_by(t.c.name, t.c.state)
        )
        for name, state, n in conn.execute(busy):
            entry(name)[state] = int(n)
        done = (
            select(t.c.name, func.count())
            .where(t.c.namespace == namespace, t.c.entity == "action", t.c.end >= now_ms - WINDOW * 1000)
            .group_by(t.c.name)
        )
        for name, n in conn.execute(done):
            entry(name)["finished"] = int(n)
    return out


def workers_of(controller: Any, namespace: str) -> dict[str, int] | None:
    """Warm workers per action of `namespace` in this process's runner (None: it runs none here)."""
    pools = getattr(controller, "pools", None)
    if pools is None:
        return None
    out: dict[str, int] = {}
    prefix = namespace + "/"
    for key, pool in list(pools.items()):
        if key.startswith(prefix):
            name = key[len(prefix) :].split("@")[0]
            out[name] = out.get(name, 0) + int(pool.size)
    return out


def router(service: StorageService, controller: Functions) -> APIRouter:
    from headrace.functions.api import WhiskError, namespace_of

    api = APIRouter(tags=["console"])
    authenticated = Depends(principal_of(service))

    @api.get(ROUTE, summary="The caller's actions: workers, queued, running, finished in the last 10 s")
    async def scaling(p: Principal = authenticated) -> Response:
        try:
            namespace = namespace_of(p, "_")
        except WhiskError as exc:
            return JSONResponse({"status": exc.status, "title": "Forbidden", "detail": exc.message}, exc.status)
        now = int(time.time() * 1000)
        rows = await service.db.read(load, service.db, namespace, now)
        workers = workers_of(controller, namespace)
        names = sorted(set(rows) | set(workers or {}))
        actions = [
            {
                "name": n,
                "workers": None if workers is None else workers.get(n, 0),
                **rows.get(n, {"queued": 0, "running": 0, "finished": 0}),
            }
            for n in names
        ]
        return JSONResponse({"namespace": namespace, "time": now, "window": WINDOW, "actions": actions})

    return api
