"""The WLCG Tape REST API v1 on the frontend, `/api/v1/tape`: stage (201 with the request id), a stage
request's status, cancel, delete, release, and archive information (locality per path); and its discovery
document, `/.well-known/wlcg-tape-rest-api`, served by the frontend and by the door (gfal2 asks the host and
port of the file's URL, the door's). As dCache answers them and gfal2 (gfal-bringonline, gfal-archivepoll,
gfal-evict, `gfal-xattr FILE user.status`) and FTS read them. HTTP only: the logic is in `tape.requests`.

Stage requests are bulk requests of activity STAGE (`api` "tape"); a release is a RELEASE bulk request of
the paths with the stage request's id, cleared once it succeeded (dCache's ephemeral request).
"""

from __future__ import annotations

import socket
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response

from headrace.auth.access import Principal
from headrace.config import Settings
from headrace.errors import BadRequest, HeadraceError, NotFound
from headrace.http_common import principal_of
from headrace.storage.service import StorageService
from headrace.tape.bulk_api import json_object, shown, signed_in
from headrace.tape.requests import DEFAULT_PIN_MS, NewRequest, RequestStore, duration_ms, split_error

PREFIX = "/api/v1/tape"
WELL_KNOWN = "/.well-known/wlcg-tape-rest-api"
#: Paths one archiveinfo call answers for (dCache's default `archiveinfo maxpaths`); more are refused (400).
MAX_ARCHIVEINFO_PATHS = 10_000
#: Target states as the Tape REST API names them (dCache's StagedFileInfo).
FILE_STATE = {
    "CREATED": "SUBMITTED",
    "READY": "SUBMITTED",
    "RUNNING": "STARTED",
    "CANCELLED": "CANCELLED",
    "FAILED": "FAILED",
    "SKIPPED": "FAILED",
    "COMPLETED": "COMPLETED",
}
#: dCache's file locality as the Tape REST API's archiveinfo names it (and gfal2 reads it).
ARCHIVE_LOCALITY = {
    "ONLINE": "DISK",
    "NEARLINE": "TAPE",
    "ONLINE_AND_NEARLINE": "DISK_AND_TAPE",
    "NONE": "NONE",
    "LOST": "LOST",
    "UNAVAILABLE": "UNAVAILABLE",
}


def discovery(settings: Settings) -> dict[str, Any]:
    """The discovery document: the site's name and where v1 of the API is (the frontend)."""
    return {
        "sitename": f"headrace-{socket.gethostname()}",
        "description": "headrace's WLCG Tape REST API endpoint",
        "endpoints": [{"uri": f"{settings.api_url}{PREFIX}", "version": "v1", "metadata": {}}],
    }


def discovery_response(settings: Settings) -> Response:
    return JSONResponse(discovery(settings))


def _paths(body: dict[str, Any], principal: Principal) -> list[str]:
    paths = body.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise BadRequest("paths must be a non-empty array of paths")
    return [principal.internal(p) for p in paths]


def parse_stage(body: dict[str, Any], principal: Principal) -> NewRequest:
    """`{"files": [{"path", "diskLifetime"?, "targetedMetadata"?}]}`: one pin lifetime per request, the
    longest asked (an ISO-8601 duration; none: one day); targeted metadata is accepted and not used."""
    files = body.get("files")
    extra = sorted(set(body) - {"files"})
    if extra:
        raise BadRequest(f"unrecognized payload element(s): {extra}")
    if not isinstance(files, list) or not files:
        raise BadRequest("request contains no files.")
    paths: list[str] = []
    lifetimes: list[int] = []
    for i, f in enumerate(files):
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not f["path"]:
            raise BadRequest(f"file object {i} has no path.")
        paths.append(principal.internal(f["path"]))
        if f.get("diskLifetime") not in (None, ""):
            lifetimes.append(duration_ms(f["diskLifetime"]))
        meta = f.get("targetedMetadata")
        if meta is not None and not isinstance(meta, dict):
            raise BadRequest(f"file object {i}: targetedMetadata must be an object")
    return NewRequest(
        activity="STAGE",
        paths=paths,
        arguments={"pin_ms": max(lifetimes, default=DEFAULT_PIN_MS)},
        api="tape",
    )


def file_info(principal: Principal, t: Any) -> dict[str, Any]:
    """A file of a stage request; `error` only when there is one (gfal2 takes its presence as a failure)."""
    out: dict[str, Any] = {"path": shown(principal, t.path), "state": FILE_STATE.get(t.state, "FAILED")}
    started = t.started if t.started is not None else t.finished
    if started is not None:
        out["startedAt"] = started
    if t.finished is not None:
        out["finishedAt"] = t.finished
    if t.error:
        out["error"] = split_error(t.error)[1]
    elif t.state == "SKIPPED":
        out["error"] = "Not a file"
    return out


def router(service: StorageService, store: RequestStore) -> APIRouter:
    api = APIRouter()
    db, ns = service.db, service.namespace
    authenticated = Depends(principal_of(service))

    @api.get(WELL_KNOWN, summary="Where the WLCG Tape REST API is, and its versions")
    async def well_known() -> Any:
        return discovery_response(service.settings)

    @api.post(PREFIX + "/stage", status_code=201, summary="Stage files from tape (bring them online)")
    async def stage(request: Request, principal: Principal = authenticated) -> Any:
        signed_in(principal)
        new = parse_stage(await json_object(request), principal)
        rid = await db.write(store.insert, await db.read(store.plan, principal, new))
        store.changed()
        location = str(request.base_url).rstrip("/") + f"{PREFIX}/stage/{rid}"
        return JSONResponse({"requestId": rid}, status_code=201, headers={"Location": location})

    @api.get(PREFIX + "/stage/{rid}", summary="A stage request's progress, file by file")
    async def stage_status(rid: str, principal: Principal = authenticated) -> Any:
        signed_in(principal)
        offset, targets = 0, []
        while True:
            row, page, offset = await db.read(store.get, principal, rid, offset=offset, activity="STAGE")
            targets += page
            if offset == -1:
                break
        out: dict[str, Any] = {"id": row.id, "createdAt": row.created, "startedAt": row.started or row.created}
        if row.status in ("COMPLETED", "CANCELLED") and row.finished is not None:
            out["completedAt"] = row.finished
        out["files"] = [file_info(principal, t) for t in targets]
        return JSONResponse(out)

    @api.post(
        PREFIX + "/stage/{rid}/cancel", response_class=Response, summary="Cancel the staging of some files of a request"
    )
    async def cancel(rid: str, request: Request, principal: Principal = authenticated) -> Any:
        signed_in(principal)
        paths = _paths(await json_object(request), principal)
        await db.write(store.cancel, principal, rid, paths, activity="STAGE")
        store.changed()
        return Response(status_code=200)

    @api.delete(PREFIX + "/stage/{rid}", response_class=Response, summary="Cancel a stage request and forget it")
    async def clear(rid: str, principal: Principal = authenticated) -> Any:
        signed_in(principal)
        await db.write(store.clear, principal, rid, cancel_if_running=True, activity="STAGE")
        store.changed()
        return Response(status_code=200)

    @api.post(
        PREFIX + "/release/{rid}",
        response_class=Response,
        summary="Release (unpin) files a stage request brought online",
    )
    async def release(rid: str, request: Request, principal: Principal = authenticated) -> Any:
        """The caller's pins of the files made by request `rid`; an id that is none of the caller's
        requests (gfal-evict without a token sends a placeholder) releases all of the caller's pins of them."""
        signed_in(principal)
        paths = _paths(await json_object(request), principal)
        try:
            await db.read(store.get, principal, rid, limit=0)
            pin_request: str | None = rid
        except NotFound:
            pin_request = None
        new = NewRequest(
            activity="RELEASE",
            paths=paths,
            arguments={"id": pin_request} if pin_request else {},
            api="tape",
            clear_on_success=True,
        )
        await db.write(store.insert, await db.read(store.plan, principal, new))
        store.changed()
        return Response(status_code=200)

    @api.post(PREFIX + "/archiveinfo", summary="Where files are: DISK, TAPE or DISK_AND_TAPE, or an error per path")
    async def archiveinfo(request: Request, principal: Principal = authenticated) -> Any:
        signed_in(principal)
        body = await json_object(request)
        given = body.get("paths")
        if not isinstance(given, list) or not all(isinstance(p, str) for p in given):
            raise BadRequest("request had no paths.")
        if len(given) > MAX_ARCHIVEINFO_PATHS:
            raise BadRequest(f"At most {MAX_ARCHIVEINFO_PATHS} paths per request")

        def look(paths: list[str]) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for p in paths:
                try:
                    path = principal.internal(p)
                    principal.check("READ_METADATA", path)
                    node = ns.stat(path, principal.subject, sums=False)
                    locality = "NONE" if node.is_dir else ARCHIVE_LOCALITY.get(node.locality, node.locality)
                    out.append({"path": p, "locality": locality})
                except HeadraceError as exc:
                    out.append({"path": p, "error": f"{exc.title}: {exc.detail}"})
            return out

        return JSONResponse(await db.read(look, given))

    return api
