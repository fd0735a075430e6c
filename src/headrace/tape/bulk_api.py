"""dCache's bulk API on the frontend, `/api/v1/bulk-requests`: submit (201 with a `request-url` header), list,
status with per-target states, cancel (PATCH), clear (DELETE). As dCache's frontend (`BulkResources`) reads
and answers them, so that ada's --stage/--unstage/--stat-request/--delete-request work. HTTP only: the logic
is in `tape.requests`."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response

from headrace.auth.access import Principal
from headrace.errors import BadRequest, HeadraceError, Unauthorized
from headrace.http_common import json_object_body, principal_of
from headrace.storage.service import StorageService
from headrace.tape.requests import (
    DEFAULT_PIN_MS,
    NewRequest,
    RequestStore,
    duration_ms,
    lifetime_ms,
    split_error,
)

PREFIX = "/api/v1/bulk-requests"
STATUSES = ("QUEUED", "STARTED", "COMPLETED", "CANCELLED")


def signed_in(principal: Principal) -> Principal:
    """dCache's bulk and tape resources refuse anonymous users (401)."""
    if principal.method == "anonymous":
        raise Unauthorized("User cannot be anonymous.")
    return principal


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, refused with dCache's messages."""
    return await json_object_body(
        request, empty="empty request payload.", not_object="The JSON entity must be an object"
    )


def _take(body: dict[str, Any], *names: str) -> Any:
    """The value under any one spelling of a top-level key (camelCase, snake_case, kebab-case, as dCache
    accepts them); 400 if given under more than one."""
    value = None
    for name in names:
        if name in body:
            v = body.pop(name)
            if value is not None and v is not None:
                raise BadRequest(f"value for {name} defined more than once.")
            value = v if value is None else value
    return value


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _targets(value: Any) -> list[str]:
    """`target`: a JSON array of paths, or (Bulk 1's ambiguous typing) a string "a,b" or "[a,b]"."""
    if isinstance(value, str):
        text = value.replace('"', "").strip()
        if "[" in text:
            text = text[text.index("[") + 1 : text.index("]") if "]" in text else len(text)]
        return [t.strip() for t in text.split(",") if t.strip()]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return [t.strip() for t in value if t.strip()]
    raise BadRequest("target must be an array of paths")


def _with_prefix(prefix: str | None, target: str) -> str:
    """dCache's computeFsPath: a target not under `targetPrefix` is taken relative to it."""
    path = "/" + target.lstrip("/")
    if not prefix:
        return path
    pref = "/" + prefix.strip("/")
    if pref == "/" or path == pref or path.startswith(pref + "/"):
        return path
    return pref + path


def pin_ms(activity: str, arguments: dict[str, Any]) -> int:
    """The pin lifetime (ms) of a STAGE or PIN: `lifetime` in `lifetimeUnit` (ada's PIN), or STAGE's
    `diskLifetime` (an ISO-8601 duration, or dCache's JSON object of path -> duration: the longest is
    taken, one lifetime per request). None given: one day."""
    if arguments.get("lifetime") not in (None, ""):
        return lifetime_ms(arguments["lifetime"], arguments.get("lifetimeUnit"))
    disk = arguments.get("diskLifetime")
    if activity == "STAGE" and disk not in (None, "", {}):
        if isinstance(disk, str) and disk.strip().startswith("{"):
            try:
                disk = json.loads(disk)
            except ValueError as exc:
                raise BadRequest(f"diskLifetime: malformed JSON: {exc}") from exc
        if isinstance(disk, dict):
            return max((duration_ms(v) for v in disk.values()), default=DEFAULT_PIN_MS)
        return duration_ms(disk)
    return DEFAULT_PIN_MS


def parse(body: dict[str, Any], principal: Principal) -> NewRequest:
    """A bulk request as dCache's frontend reads one (BulkResources.toBulkRequest)."""
    body = dict(body)
    arguments = body.pop("arguments", None) or {}
    if not isinstance(arguments, dict):
        raise BadRequest("arguments must be an object")
    targets = _targets(body.pop("target", None) or [])
    if not targets:
        raise BadRequest("request contains no targets.")
    activity = _take(body, "activity")
    if not isinstance(activity, str) or not activity:
        raise BadRequest("activity must be given: STAGE, RELEASE, PIN, UNPIN, UPDATE_QOS, DELETE or LOG_TARGET")
    activity = activity.upper()
    prefix = _take(body, "target_prefix", "target-prefix", "targetPrefix")
    if prefix is not None and not isinstance(prefix, str):
        raise BadRequest("targetPrefix must be a string")
    expand = _take(body, "expand_directories", "expand-directories", "expandDirectories") or "none"
    clear_on_success = _flag(_take(body, "clear_on_success", "clear-on-success", "clearOnSuccess"))
    clear_on_failure = _flag(_take(body, "clear_on_failure", "clear-on-failure", "clearOnFailure"))
    cancel_on_failure = _flag(_take(body, "cancel_on_failure", "cancel-on-failure", "cancelOnFailure"))
    _take(body, "pre_store", "pre-store", "prestore")  # deprecated in dCache, still allowed
    if body:
        raise BadRequest(f"unsupported arguments: [{', '.join(sorted(body))}]")
    args = dict(arguments)
    if activity in ("STAGE", "PIN"):
        args["pin_ms"] = pin_ms(activity, arguments)
    paths = [principal.internal(_with_prefix(prefix, t)) for t in targets]
    return NewRequest(
        activity=activity,
        paths=paths,
        arguments=args,
        expand=str(expand).lower(),
        api="bulk",
        clear_on_success=clear_on_success,
        clear_on_failure=clear_on_failure,
        cancel_on_failure=cancel_on_failure,
    )


def shown(principal: Principal, path: str) -> str:
    """A path as the caller names it (an admin reading another's request may see one outside its root)."""
    try:
        return principal.external(path)
    except HeadraceError:
        return path


def target_info(principal: Principal, t: Any) -> dict[str, Any]:
    kind, message = split_error(t.error)
    out: dict[str, Any] = {"id": t.id, "target": shown(principal, t.path), "state": t.state, "submittedAt": t.created}
    if t.started is not None:
        out["startedAt"] = t.started
    if t.finished is not None:
        out["finishedAt"] = t.finished
    if kind is not None:
        out["errorType"] = kind
        out["errorMessage"] = message
    return out


def request_info(principal: Principal, row: Any, targets: list[Any], next_id: int) -> dict[str, Any]:
    """dCache's BulkRequestInfo."""
    times = [row.created, row.started or 0, row.finished or 0]
    times += [max(t.created, t.started or 0, t.finished or 0) for t in targets]
    return {
        "uid": row.id,
        "activity": row.activity,
        "arrivedAt": row.created,
        "startedAt": row.started,
        "lastModified": max(times),
        "status": row.status,
        "targetPrefix": "/",
        "targets": [target_info(principal, t) for t in targets],
        "nextId": next_id,
    }


def _set(query: str | None, upper: bool = False) -> set[str] | None:
    if not query:
        return None
    return {(v.strip().upper() if upper else v.strip()) for v in query.split(",") if v.strip()}


def router(service: StorageService, store: RequestStore) -> APIRouter:
    api = APIRouter()
    db = service.db
    authenticated = Depends(principal_of(service))

    def url(request: Request, rid: str) -> str:
        return str(request.base_url).rstrip("/") + f"{PREFIX}/{rid}"

    @api.post(
        PREFIX,
        status_code=201,
        response_class=Response,
        summary="Submit a bulk request (STAGE, RELEASE, PIN, UNPIN, UPDATE_QOS, DELETE, LOG_TARGET)",
    )
    async def submit(request: Request, principal: Principal = authenticated) -> Any:
        signed_in(principal)
        new = parse(await json_object(request), principal)
        rid = await db.write(store.insert, await db.read(store.plan, principal, new))
        store.changed()
        response = Response(status_code=201)
        response.headers["request-url"] = url(request, rid)
        return response

    @api.get(PREFIX, summary="The caller's bulk requests (an admin: everyone's), by status and owner")
    async def listing(request: Request, principal: Principal = authenticated) -> Any:
        signed_in(principal)
        statuses = _set(request.query_params.get("status"), upper=True)
        if statuses and not statuses <= set(STATUSES):
            raise BadRequest(f"status must be a comma-separated list of {', '.join(s.lower() for s in STATUSES)}")
        owners = _set(request.query_params.get("owner"))
        if owners and not principal.subject.admin and owners != {principal.subject.username}:
            return JSONResponse([])
        rows = await db.read(store.listing, principal, statuses, owners)
        return JSONResponse(
            [
                {
                    "id": r.id,
                    "uid": r.id,
                    "url": url(request, r.id),
                    "owner": r.owner,
                    "activity": r.activity,
                    "status": r.status,
                    "active": r.active,
                }
                for r in rows
            ]
        )

    @api.get(PREFIX + "/{rid}", summary="A bulk request's status and its targets' states")
    async def status(rid: str, request: Request, principal: Principal = authenticated) -> Any:
        signed_in(principal)
        try:
            offset = int(request.query_params.get("offset", "0") or 0)
        except ValueError as exc:
            raise BadRequest("offset must be an integer") from exc
        row, targets, next_id = await db.read(store.get, principal, rid, offset=max(0, offset))
        return JSONResponse(request_info(principal, row, targets, next_id))

    @api.patch(
        PREFIX + "/{rid}",
        response_class=Response,
        summary='Cancel a bulk request ({"action": "cancel"}, optionally "paths")',
    )
    async def cancel(rid: str, request: Request, principal: Principal = authenticated) -> Any:
        signed_in(principal)
        body = await json_object(request)
        if "action" not in body:
            raise BadRequest("no action provided.")
        action = body.get("action")
        if not isinstance(action, str) or action.lower() != "cancel":
            raise BadRequest(f"{action} not supported.")
        paths = body.get("paths")
        if paths is not None:
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise BadRequest("paths must be an array of paths")
            paths = [principal.internal(p) for p in paths]
        await db.write(store.cancel, principal, rid, paths)
        store.changed()
        return Response(status_code=200)

    @api.delete(
        PREFIX + "/{rid}",
        status_code=204,
        summary="Clear a bulk request (cancelIfRunning=true cancels it first)",
    )
    async def clear(rid: str, request: Request, principal: Principal = authenticated) -> Response:
        signed_in(principal)
        cancel_first = _flag(request.query_params.get("cancelIfRunning", "false"))
        await db.write(store.clear, principal, rid, cancel_if_running=cancel_first)
        return Response(status_code=204)

    return api
