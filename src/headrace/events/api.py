"""dCache's storage-events API on the frontend, `/api/v1/events`: event types and their schemas, channels,
subscriptions, and the SSE stream of a channel. HTTP only; the logic is in `channels`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from headrace.auth.access import Authenticator, Principal
from headrace.db.engine import Database
from headrace.errors import BadRequest, Forbidden, HeadraceError, NotFound, Unauthorized
from headrace.events import sse
from headrace.events.access import Confinement
from headrace.events.channels import TIMEOUT_DEFAULT, TIMEOUT_MAX, TIMEOUT_MIN, Channel, ChannelManager, Connection
from headrace.events.selectors import (
    DESCRIPTIONS,
    EVENT_SCHEMAS,
    SELECTOR_SCHEMAS,
    SelectorError,
    inotify_selector,
    metronome_selector,
)
from headrace.http_common import principal_of
from headrace.storage.namespace import Namespace
from headrace.storage.paths import is_within

PREFIX = "/api/v1/events"
LIFETIME = {"minimum": TIMEOUT_MIN, "maximum": TIMEOUT_MAX, "default": TIMEOUT_DEFAULT}


class Storage(Protocol):
    """What the API needs of the storage service (`headrace.storage.service.StorageService`, which builds on
    this package: named by what it offers, not imported, so that the dependency runs one way)."""

    db: Database
    namespace: Namespace
    auth: Authenticator


def _created(url: str, status: int = 201) -> Response:
    response = Response(status_code=status)
    # Real dCache clients look for "Location" case-sensitively; this raw header keeps the capital.
    response.raw_headers.append((b"Location", url.encode()))
    return response


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + PREFIX + "/channels"


async def _json_body(request: Request, missing: str, prefix: str) -> Any:
    body = await request.body()
    if not body.strip():
        if missing:
            raise BadRequest(missing)
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested past the limit
        raise BadRequest(f"{prefix}malformed JSON: {exc}") from exc


class ChannelStream:
    """The SSE stream of one channel: held events from the client's position on, then live ones, with
    SYSTEM events for the connection in between. One connection per channel."""

    def __init__(self, manager: ChannelManager, channel: Channel, last_id: int | None, keepalive: float | None):
        self.manager = manager
        self.channel = channel
        self.last_id = last_id
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ch = self.channel
        conn = ch.connect()
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            await self._pump(conn, gone, send)
        finally:
            gone.cancel()
            ch.disconnect(conn)

    async def _pump(self, conn: Connection, gone: asyncio.Future[Any], send: Send) -> None:
        ch = self.channel
        cursor = ch.sent + 1 if self.last_id is None else self.last_id + 1
        first = True
        while True:
            conn.wake.clear()
            out: list[bytes] = []
            lost, entries = ch.take(cursor)
            if lost and (first or self.last_id is not None or cursor > 0):
                out.append(sse.system("EVENT_LOSS"))
            first = False
            # SYSTEM events go out in the order they happened relative to the numbered ones
            system, conn.system = conn.system, []
            for e in entries:
                while system and system[0][0] <= e.id:
                    out.append(system.pop(0)[1])
                out.append(sse.frame(e.type, e.data, e.id))
            if entries:
                cursor = entries[-1].id + 1
            while system and system[0][0] <= cursor:
                out.append(system.pop(0)[1])
            conn.system[:0] = system  # after events not sent yet
            if conn.final is not None:
                out.append(conn.final)
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                ch.mark_sent(entries)
            if conn.final is not None or gone.done():
                break
            if entries and cursor < ch.next_id:
                continue  # more held than one batch
            waiter: asyncio.Future[Any] = asyncio.ensure_future(conn.wake.wait())
            done, _ = await asyncio.wait({waiter, gone}, timeout=self.keepalive, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not done and self.keepalive:
                await send({"type": "http.response.body", "body": sse.KEEPALIVE, "more_body": True})
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def router(service: Storage, manager: ChannelManager) -> APIRouter:
    api = APIRouter(tags=["events"])
    authenticate = principal_of(service)

    async def user(request: Request) -> Principal:
        found = authenticate(request)
        principal: Principal = await found if inspect.isawaitable(found) else found
        if principal.method == "anonymous":
            raise Unauthorized("Authentication required")
        return principal

    authenticated = Depends(user)

    def owner(p: Principal) -> str:
        return p.subject.username

    def confinement(p: Principal) -> Confinement | None:
        return Confinement.of(p.restrictions)

    def get(cid: str, p: Principal) -> Channel:
        """The caller's channel `cid`, if the caller's credential may use it (channels are bound to the
        confinement of the credential that made them)."""
        return manager.get(cid, owner(p), confinement(p))

    @api.get(PREFIX, summary="Service metadata: channel limits")
    async def metadata(_: Principal = authenticated) -> Any:
        return {
            "channels": {
                "maximumPerUser": manager.per_user,
                "lifetimeWhenDisconnected": {
                    "minimum": TIMEOUT_MIN,
                    "maximum": TIMEOUT_MAX,
                    "default": TIMEOUT_DEFAULT,
                },
            }
        }

    @api.get(PREFIX + "/eventTypes", summary="The event types")
    async def event_types(_: Principal = authenticated) -> Any:
        return sorted(DESCRIPTIONS)

    def _type(name: str) -> str:
        if name not in DESCRIPTIONS:
            raise NotFound(f"Unknown event type: {name}")
        return name

    @api.get(PREFIX + "/eventTypes/{name}", summary="An event type's description")
    async def event_type(name: str, _: Principal = authenticated) -> Any:
        return {"description": DESCRIPTIONS[_type(name)]}

    @api.get(PREFIX + "/eventTypes/{name}/selector", summary="JSON Schema of an event type's selector")
    async def selector_schema(name: str, _: Principal = authenticated) -> Any:
        schema = SELECTOR_SCHEMAS[_type(name)]
        if name == "metronome":  # this server's limits
            props = schema["properties"]
            schema = {
                **schema,
                "properties": {
                    **props,
                    "frequency": {**props["frequency"], "maximum": manager.metronome_max_hz},
                    "delay": {**props["delay"], "minimum": 1 / manager.metronome_max_hz},
                    "message": {**props["message"], "maxLength": manager.metronome_max_message},
                },
            }
        return schema

    @api.get(PREFIX + "/eventTypes/{name}/event", summary="JSON Schema of an event type's events")
    async def event_schema(name: str, _: Principal = authenticated) -> Any:
        return EVENT_SCHEMAS[_type(name)]

    @api.get(PREFIX + "/channels", summary="The caller's channels")
    async def list_channels(request: Request, p: Principal = authenticated) -> Any:
        client_id = request.query_params.get("client-id")
        base = _base(request)
        return [f"{base}/{c.id}" for c in manager.owned(owner(p), client_id, confinement(p))]

    async def create_channel(request: Request, p: Principal = authenticated) -> Response:
        body = await _json_body(request, "", "")
        client_id = None
        if body is not None:
            if not isinstance(body, dict):
                raise BadRequest("The request body must be a JSON object")
            unknown = sorted(set(body) - {"client-id"})
            if unknown:
                raise BadRequest(f"Unknown field: {unknown[0]}")
            client_id = body.get("client-id")
            if client_id is not None and not isinstance(client_id, str):
                raise BadRequest("client-id must be a string")
        ch = manager.create(owner(p), client_id, confinement(p))
        return _created(f"{_base(request)}/{ch.id}")

    for path in (PREFIX + "/channels", PREFIX + "/channels/"):
        api.add_api_route(
            path, create_channel, methods=["POST"], status_code=201, summary="Create a channel", response_class=Response
        )

    @api.get(PREFIX + "/channels/{cid}", summary="A channel's SSE stream, or (Accept: application/json) its timeout")
    async def channel(cid: str, request: Request, p: Principal = authenticated) -> Any:
        ch = get(cid, p)
        accept = request.headers.get("accept", "")
        if "application/json" in accept and "text/event-stream" not in accept:
            return {"timeout": ch.timeout}
        raw_last = request.headers.get("last-event-id")
        last_id: int | None = None
        if raw_last is not None and raw_last.strip() != "":
            try:
                last_id = int(raw_last.strip())
            except ValueError as exc:
                raise BadRequest(f"Bad Last-Event-ID: {raw_last!r} is not an event id") from exc
            if last_id < -1:  # -1: before the first event, i.e. replay everything still held
                raise BadRequest(f"Bad Last-Event-ID: {raw_last!r} is not an event id")
        keepalive: float | None = None
        raw_keepalive = request.query_params.get("keepalive")
        if raw_keepalive is not None:
            try:
                keepalive = float(raw_keepalive)
            except ValueError as exc:
                raise BadRequest("keepalive must be a number of seconds") from exc
            if not 1 <= keepalive <= 3600:
                raise BadRequest("keepalive must be between 1 and 3600 seconds")
        return _Raw(ChannelStream(manager, ch, last_id, keepalive))

    @api.patch(PREFIX + "/channels/{cid}", status_code=204, summary="Change a channel's timeout")
    async def patch_channel(cid: str, request: Request, p: Principal = authenticated) -> Response:
        ch = get(cid, p)
        body = await _json_body(request, "Missing JSON entity in PATCH request", "")
        if not isinstance(body, dict) or set(body) - {"timeout"}:
            raise BadRequest('The body must be {"timeout": seconds}')
        if "timeout" in body:
            manager.set_timeout(ch, body["timeout"])
        return Response(status_code=204)

    @api.delete(PREFIX + "/channels/{cid}", status_code=204, summary="Delete a channel")
    async def delete_channel(cid: str, p: Principal = authenticated) -> Response:
        manager.delete(get(cid, p))
        return Response(status_code=204)

    @api.get(PREFIX + "/channels/{cid}/subscriptions", summary="A channel's subscriptions")
    async def subscriptions(cid: str, p: Principal = authenticated) -> Any:
        return [s.url for s in get(cid, p).subs.values()]

    @api.post(PREFIX + "/channels/{cid}/subscriptions/{etype}", status_code=201, summary="Subscribe")
    async def subscribe(cid: str, etype: str, request: Request, p: Principal = authenticated) -> Response:
        ch = get(cid, p)
        raw = await _json_body(request, "Missing JSON entity in POST request", "Bad selector: ")
        if etype not in DESCRIPTIONS:
            raise BadRequest(f"Unknown event type: {etype}")
        base = f"{_base(request)}/{ch.id}/subscriptions"
        try:
            if etype == "metronome":
                spec = metronome_selector(
                    raw, max_hz=manager.metronome_max_hz, max_message=manager.metronome_max_message
                )
                sub = manager.metronome(ch, base, raw, spec)
                return _created(sub.url)
            sel = inotify_selector(raw)
        except SelectorError as exc:
            raise BadRequest(f"Bad selector: {exc}") from exc
        inode, internal = await _target(service, p, ch.confinement, sel.path, onlydir=sel.onlydir)
        sub, created = await manager.watch(ch, base, raw, sel, inode, internal)
        return _created(sub.url, 201 if created else 303)

    def _subscription(cid: str, etype: str, sid: str, p: Principal) -> Any:
        sub = get(cid, p).subs.get(f"{etype}/{sid}")
        if sub is None:
            raise NotFound("No such subscription")
        return sub

    @api.get(PREFIX + "/channels/{cid}/subscriptions/{etype}/{sid}", summary="A subscription's selector")
    async def subscription(cid: str, etype: str, sid: str, p: Principal = authenticated) -> Any:
        return JSONResponse(_subscription(cid, etype, sid, p).selector)

    @api.delete(PREFIX + "/channels/{cid}/subscriptions/{etype}/{sid}", status_code=204, summary="Unsubscribe")
    async def unsubscribe(cid: str, etype: str, sid: str, p: Principal = authenticated) -> Response:
        manager.unsubscribe(_subscription(cid, etype, sid, p))
        return Response(status_code=204)

    return api


def _check_confined(conf: Confinement | None, internal: str, path: str) -> None:
    """403 unless a watch on the namespace path `internal` lies wholly within a confinement: within its root
    and its paths (not merely on the way to them, as listings allow), with LIST or READ_METADATA allowed."""
    if conf is None:
        return
    if conf.activities is not None and not conf.activities & {"LIST", "READ_METADATA"}:
        raise Forbidden("Permission denied: the token allows neither LIST nor READ_METADATA")
    if not is_within(internal, conf.root) or not all(is_within(internal, allowed) for allowed in conf.paths):
        raise Forbidden(f"Permission denied: the token does not allow watching {path}")
    if not all(any(is_within(internal, allowed) for allowed in g) for g in conf.grants):
        raise Forbidden(f"Permission denied: the token does not allow watching {path}")


async def _target(
    service: Storage, p: Principal, channel: Confinement | None, path: str, *, onlydir: bool
) -> tuple[int, str]:
    """The inode a watch on `path` (as the principal names it) follows, and its namespace path. 403 outside
    the confinement of the caller's credential or of the one that made the channel; 400 with dCache's
    wording otherwise."""
    try:
        internal = p.internal(path)
    except HeadraceError as exc:
        raise BadRequest(f"Not found: Problem with path: {path}: {exc.detail}") from exc
    _check_confined(Confinement.of(p.restrictions), internal, path)
    _check_confined(channel, internal, path)
    try:
        p.check_reach(internal)
        node = await service.db.read(service.namespace.stat, internal, p.subject, sums=False)
        p.check("LIST" if node.is_dir else "READ_METADATA", internal)
    except NotFound as exc:
        raise BadRequest(f"Not found: Problem with path: {path}") from exc
    except (Forbidden, Unauthorized) as exc:
        raise BadRequest(f"Permission denied: {exc.detail}") from exc
    except HeadraceError as exc:
        raise BadRequest(f"Not found: Problem with path: {path}: {exc.detail}") from exc
    if onlydir and not node.is_dir:
        raise BadRequest(f"Failed condition: IN_ONLYDIR given and {path} is not a directory")
    return node.id, internal


class _Raw(Response):
    """Hands the ASGI call to a streaming app (FastAPI returns Response objects as they are)."""

    def __init__(self, app: ChannelStream) -> None:
        super().__init__()
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
