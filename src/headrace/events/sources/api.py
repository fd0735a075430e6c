"""The sources API on the frontend, `/api/v1/sources`: administrators configure sources; readers (users and
groups a source names, and administrators) see them and read their files. dCache's error shape throughout.

  PUT    /api/v1/sources/{name}               {"kind": K, ...the kind's options..., "readers": {"users": [...],
                                              "groups": [gids]}}: 201 created, 200 replaced (admins; 403)
  GET    /api/v1/sources                      the sources the caller may read (admins: all)
  GET    /api/v1/sources/{name}               one (404 for a caller who may not read it)
  DELETE /api/v1/sources/{name}               204 (admins); the events already in the log stay
  GET    /api/v1/sources/{name}/files/{path}  the remote file, streamed with the source's credentials
                                              (Range: bytes=a-b, a-, -n); 404, 403, 502 when the remote fails
  POST   /api/v1/sources/{name}/{hook}        a notification pushed by the remote (a kind with `receive`, e.g.
                                              s3's bucket notifications), authenticated by the kind itself

Credentials in a source's configuration (bearer, basic, secret, passwords, a URL's password) are never
shown: only that they are set ("***"). A PUT that sends "***" back for one keeps the stored value.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from headrace.auth.access import Principal
from headrace.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    HeadraceError,
    NotFound,
    RangeNotSatisfiable,
    Unauthorized,
)
from headrace.events.sources import kinds
from headrace.events.sources.base import NAME_PATTERN, Fenced, Source, SourceConfigError
from headrace.events.sources.sink import DatabaseSink
from headrace.events.sources.store import Readers, SourceRow, SourceStore, now_us
from headrace.http_common import CONTENT_HEADERS, json_object_body, principal_of
from headrace.storage.service import StorageService

PREFIX = "/api/v1/sources"
MASK = "***"
_NAME = re.compile(NAME_PATTERN)
#: Configuration keys whose values are credentials (never shown); also any key naming a password or secret.
SECRET_KEYS = frozenset({"bearer", "basic", "secret", "token", "password", "sasl_password", "secret_key"})


def is_secret(key: str) -> bool:
    k = key.lower()
    return k in SECRET_KEYS or (k != "token_file" and any(w in k for w in ("password", "secret", "bearer")))


def _mask_url(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.scheme and parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return value


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` as anyone may see it: credentials replaced by "***"."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if is_secret(k) and v not in (None, ""):
            out[k] = MASK
        elif isinstance(v, str):
            out[k] = _mask_url(v)
        else:
            out[k] = v
    return out


def _ms(us: int | None) -> int | None:
    return None if us is None else us // 1000


def shown(row: SourceRow) -> dict[str, Any]:
    now = now_us()
    state: dict[str, Any] = {
        "running": row.holder is not None and (row.lease_until or 0) > now,
        "position": row.position,
        "received": row.received,
        "lastEvent": _ms(row.last_event),
        "lastError": row.last_error,
        "lastErrorTime": _ms(row.last_error_time),
    }
    for key in ("lag", "skipped", "lastSkipped"):  # kinds that report them (kafka: records not decodable)
        if key in row.state:
            state[key] = row.state[key]
    return {
        "name": row.name,
        "kind": row.kind,
        **masked(row.config),
        "readers": row.readers.to_json(),
        "created": _ms(row.created),
        "updated": _ms(row.updated),
        "version": row.version,
        "state": state,
    }


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise BadRequest(
            f"The source name {name!r} is not valid: a letter or digit, then letters, digits, '_', '.', '-', "
            "at most 64 characters."
        )
    return name


async def json_object(request: Request) -> dict[str, Any]:
    return await json_object_body(
        request, empty="The request needs a JSON object body", not_object="The JSON body must be an object"
    )


def parse_range(header: str | None, size: int | None) -> tuple[int, int | None] | None:
    """(start, end exclusive or None) of a `Range: bytes=...` header of one range; None: the whole file."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # not a range we serve: the whole file, as RFC 9110 allows
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:  # the last N bytes
            if size is None:
                return None
            n = int(last)
            return (max(0, size - n), size) if n > 0 else (size, size)
        start = int(first)
        end = int(last) + 1 if last else None
    except ValueError:
        return None
    if start < 0 or (end is not None and end <= start):
        return None
    if size is not None:
        end = min(end, size) if end is not None else size
    return start, end


def router(service: StorageService) -> APIRouter:
    api = APIRouter(tags=["sources"])
    db = service.db
    store = SourceStore(db)
    authenticated = Depends(principal_of(service))
    built: dict[tuple[str, int], Source] = {}  # (name, version) -> the source, for reading its files

    def signed_in(principal: Principal) -> Principal:
        if principal.method == "anonymous":
            raise Unauthorized("Sources need an authenticated user")
        return principal

    def admin(principal: Principal) -> None:
        signed_in(principal)
        if not principal.subject.admin:
            raise Forbidden("Only administrators manage sources")

    async def visible(name: str, principal: Principal) -> SourceRow:
        signed_in(principal)
        row = await db.read(store.get, name)
        if row is None or not row.readers.admit(principal.subject):
            raise NotFound(f"No such source: {name}")
        return row

    def source_of(row: SourceRow) -> Source:
        key = (row.name, row.version)
        found = built.get(key)
        if found is None:
            try:
                found = kinds.build(row.name, row.kind, row.config)
            except SourceConfigError as exc:
                raise BadGateway(f"The source {row.name!r} cannot be used: {exc}") from exc
            for k in [k for k in built if k[0] == row.name]:
                del built[k]
            built[key] = found
        return found

    @api.put(
        PREFIX + "/{name}",
        summary="Create or replace a source (administrators)",
        responses={
            200: {"description": "The source was replaced", "content": {"application/json": {}}},
            201: {"description": "The source was created", "content": {"application/json": {}}},
        },
    )
    async def put(name: str, request: Request, principal: Principal = authenticated) -> Any:
        admin(principal)
        check_name(name)
        body = await json_object(request)
        kind = body.pop("kind", None)
        if not isinstance(kind, str) or not kind:
            raise BadRequest(f'A source needs "kind": one of {", ".join(sorted(kinds.known()))}')
        try:
            readers = Readers.parse(body.pop("readers", None))
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        for key in ("name", "state", "created", "updated", "version"):
            body.pop(key, None)  # what GET shows besides the configuration: a GET's body may be PUT back
        old = await db.read(store.get, name)
        if old is not None and old.kind == kind:
            for k, v in list(body.items()):
                if v == MASK and is_secret(k) and k in old.config:
                    body[k] = old.config[k]  # "***" sent back: keep the stored credential
        try:
            kinds.build(name, kind, body)
        except SourceConfigError as exc:
            raise BadRequest(str(exc)) from exc
        created = await db.write(store.put, name, kind, body, readers)
        row = await db.read(store.get, name)
        assert row is not None
        status = 201 if created else 200
        headers = {"Location": str(request.base_url).rstrip("/") + f"{PREFIX}/{name}"} if created else {}
        return JSONResponse(shown(row), status_code=status, headers=headers)

    @api.get(PREFIX, summary="The sources the caller may read (administrators: all)")
    async def listing(principal: Principal = authenticated) -> Any:
        signed_in(principal)
        rows = await db.read(store.all)
        return JSONResponse([shown(r) for r in rows if r.readers.admit(principal.subject)])

    @api.get(PREFIX + "/{name}", summary="A source's configuration (credentials hidden) and state")
    async def one(name: str, principal: Principal = authenticated) -> Any:
        return JSONResponse(shown(await visible(name, principal)))

    @api.delete(
        PREFIX + "/{name}",
        status_code=204,
        response_class=Response,
        summary="Delete a source (its events stay in the log)",
    )
    async def remove(name: str, principal: Principal = authenticated) -> Response:
        admin(principal)
        if not await db.write(store.delete, name):
            raise NotFound(f"No such source: {name}")
        return Response(status_code=204)

    @api.get(
        PREFIX + "/{name}/files/{path:path}",
        response_class=Response,
        summary="A file of the source, read from the remote with the source's credentials (Range honoured)",
        responses={
            200: {"description": "The whole file", "content": {"application/octet-stream": {}}},
            206: {"description": "The range asked for", "content": {"application/octet-stream": {}}},
        },
    )
    async def file(name: str, path: str, request: Request, principal: Principal = authenticated) -> Any:
        row = await visible(name, principal)
        r = principal.restrictions
        if r is not None:
            if r.activities is not None and "DOWNLOAD" not in r.activities:
                raise Forbidden("This credential may not download files")
            if (r.root != "/" or any(p != "/" for p in r.paths) or r.grants) and r.cause is None:
                raise Forbidden("A credential confined to paths of this namespace may not read other sources' files")
        files = source_of(row).files()
        if files is None:
            raise NotFound(f"The files of source {name!r} cannot be read through headrace")
        remote = "/" + path.lstrip("/")
        wanted = parse_range(request.headers.get("range"), None)
        start, end = wanted if wanted is not None else (0, None)
        try:
            size, chunks = await files.open(remote, start, end)
        except FileNotFoundError as exc:
            raise NotFound(f"No such file in source {name!r}: {remote}") from exc
        except PermissionError as exc:
            raise Forbidden(f"The remote refused to give {remote}: {exc}") from exc
        except HeadraceError:
            raise
        except Exception as exc:
            raise BadGateway(f"Reading {remote} from source {name!r} failed: {type(exc).__name__}: {exc}") from exc
        headers = {**CONTENT_HEADERS, "Accept-Ranges": "bytes"}
        if wanted is None:
            if size is not None:
                headers["Content-Length"] = str(size)
            return StreamingResponse(_guarded(chunks), media_type="application/octet-stream", headers=headers)
        if size is not None and start >= size:  # (an empty file too, as the door answers)
            await _close(chunks)
            raise RangeNotSatisfiable(
                f"The range starts past the file's {size} bytes", {"Content-Range": f"bytes */{size}"}
            )
        stop = min(end, size) if end is not None and size is not None else (end if end is not None else size)
        total = str(size) if size is not None else "*"
        if stop is not None:
            headers["Content-Range"] = f"bytes {start}-{max(start, stop) - 1}/{total}"
            headers["Content-Length"] = str(max(0, stop - start))
        else:
            headers["Content-Range"] = f"bytes {start}-*/{total}"
        return StreamingResponse(
            _guarded(chunks), status_code=206, media_type="application/octet-stream", headers=headers
        )

    @api.post(PREFIX + "/{name}/{hook}", summary="A notification the remote pushes (e.g. s3 bucket notifications)")
    async def push(name: str, hook: str, request: Request) -> Any:
        row = await db.read(store.get, name)
        receive = getattr(source_of(row), "receive", None) if row is not None else None
        if row is None or receive is None or hook != row.kind:
            raise NotFound(f"No source {name!r} takes notifications at {hook!r}")
        body = await request.body()
        try:
            new = await receive(body, dict(request.headers), DatabaseSink(db, name, None))
        except PermissionError as exc:
            raise Forbidden(str(exc) or "The notification's credential is wrong") from exc
        except Fenced as exc:
            raise NotFound(str(exc)) from exc
        except (ValueError, SourceConfigError) as exc:
            raise BadRequest(str(exc)) from exc
        return JSONResponse({"received": int(new or 0)})

    return api


async def _close(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):  # the remote stream is abandoned either way
            await close()


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The remote's bytes; an error once the response has started cuts it (the client sees a short body)."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await _close(chunks)
