"""The routes of /whisk.system's feed actions: `POST /api/v1/namespaces/whisk.system/actions/alarms/{feed}`
and `.../storage/changes`, the invocation `wsk trigger create --feed` and the JS client's `feeds.create`
make (functions/feeds.py). Mounted before the functions API, whose errors ({"error", "code"}) they share."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from headrace.auth.access import Principal
from headrace.functions import records
from headrace.functions.alarms import FeedError
from headrace.functions.api import PREFIX, WhiskError, _body, _OpenWhiskRoute, namespace_of
from headrace.functions.feeds import FEED_ACTIONS, SYSTEM, Backend, Feeds, feed_record
from headrace.functions.model import MAX_PARAMETERS_BYTES
from headrace.functions.store import now_ms
from headrace.http_common import principal_of
from headrace.storage.service import StorageService


def install(app: FastAPI, service: StorageService, backend: Backend) -> Feeds:
    api = APIRouter(tags=["functions"], route_class=_OpenWhiskRoute)
    authenticated = Depends(principal_of(service))
    feeds = Feeds(service, backend)

    async def invoke(pkg: str, name: str, request: Request, blocking: bool, result: bool, p: Principal) -> Response:
        namespace_of(p, "_")  # authenticated, not a limited token
        feed = f"{pkg}/{name}"
        if feed not in FEED_ACTIONS:
            raise WhiskError(404, "The requested resource does not exist.")
        params = await _body(request, max_bytes=MAX_PARAMETERS_BYTES)
        start = now_ms()
        try:
            out = await feeds.lifecycle(p, feed, params)
        except FeedError as exc:
            raise WhiskError(exc.status, str(exc)) from None
        row = feed_record(p, feed, params, out, start)
        await service.db.group.run(backend.store.record_in, row)
        headers = {"X-Openwhisk-Activation-Id": str(row["activation_id"])}
        if not blocking:
            return JSONResponse({"activationId": row["activation_id"]}, status_code=202, headers=headers)
        return JSONResponse(out if result else records.activation(row), headers=headers)

    for pkg in ("alarms", "storage"):

        def route(pkg: str = pkg) -> None:
            @api.post(PREFIX + f"/{SYSTEM}/actions/{pkg}/{{name}}", summary=f"Invoke a /{SYSTEM}/{pkg} feed action")
            async def feed_action(
                name: str, request: Request, blocking: bool = False, result: bool = False,
                p: Principal = authenticated,
            ) -> Response:  # fmt: skip
                return await invoke(pkg, name, request, blocking, result, p)

        route()
    app.include_router(api)
    return feeds
