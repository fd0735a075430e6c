"""dCache's frontend namespace API, `/api/v1/namespace/<path>`: stat and list, mkdir, mv, chmod, QoS,
extended attributes, labels, delete. Children of big directories are streamed as they are read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select

from headrace.auth.access import Principal
from headrace.db import schema
from headrace.db.engine import MAX_INTEGER, Database
from headrace.errors import BadRequest
from headrace.http_common import principal_of
from headrace.storage.namespace import Inode
from headrace.storage.paths import check_name, join, normalize, parent_and_name
from headrace.storage.service import StorageService
from headrace.storage.webdav_xml import content_type
from headrace.tape.catalog import flush_failures_of

PREFIX = "/api/v1/namespace"
SUCCESS = {"status": "success"}


def _path(request: Request, principal: Principal) -> str:
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    rest = raw[len(PREFIX) :] if raw.startswith(PREFIX.encode()) else b"/"
    return principal.resolve(rest or b"/")


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() in ("true", "1", "yes")


#: The query flags that add fields to a stat or to each child of a listing (dCache's names).
FLAGS = ("locality", "locations", "qos", "xattr", "labels", "checksum", "optional")


def render(
    node: Inode,
    *,
    name: bool,
    locality: bool = False,
    locations: bool = False,
    qos: bool = False,
    xattr: bool = False,
    labels: bool = False,
    checksum: bool = False,
    optional: bool = False,
) -> dict[str, Any]:
    """One entry as dCache's frontend renders it. xattrs and labels appear when loaded on `node` (None: not
    asked for); `labels` and `xattr` then say whether to show an empty set as such."""
    out: dict[str, Any] = {}
    if name:
        out["fileName"] = node.name
    out["fileMimeType"] = "application/vnd.dcache.folder" if node.is_dir else content_type(node.name)
    out["fileType"] = node.type
    out["pnfsId"] = node.pnfsid
    out["nlink"] = 2 if node.is_dir else 1
    out["mtime"] = node.mtime
    out["creationTime"] = node.ctime
    out["size"] = node.size
    out["mode"] = node.mode
    out["uid"] = node.uid
    out["gid"] = node.gid
    if locality and not node.is_dir:
        out["fileLocality"] = node.locality
    if locations or optional:
        # The pools holding a disk copy: none for a file only on tape (its pool and blob are dropped on eviction).
        out["locations"] = [node.pool] if node.pool and node.blob and not node.is_dir else []
    if optional:
        out.update(_optional(node))
    if qos:
        out.update(qos_of(node))
    if node.xattrs is not None:
        out["extendedAttributes"] = node.xattrs
    elif xattr:
        out["extendedAttributes"] = {}
    if node.labels is not None:
        out["labels"] = node.labels
    elif labels:
        out["labels"] = []
    if checksum and not node.is_dir:
        out["checksums"] = [{"type": t, "value": v} for t, v in sorted(node.checksums.items())]
    return out


def qos_of(node: Inode) -> dict[str, str]:
    """dCache's `currentQos`, and `targetQos` only while the file is changing to it (as dCache: a file at its
    QoS has no target). A directory's QoS is the one its new entries get."""
    if node.is_dir:
        return {"currentQos": node.qos}
    current = node.current_qos
    return {"currentQos": current} if current == node.qos else {"currentQos": current, "targetQos": node.qos}


def _optional(node: Inode) -> dict[str, Any]:
    """What dCache adds with `optional=true`: access latency and retention policy (from the QoS: disk means
    ONLINE, tape CUSTODIAL), access and change times, owner and group, and a file's storage info with its tape
    copy (`suris`, the HSM's URI)."""
    latency = "ONLINE" if "disk" in node.qos else "NEARLINE"
    retention = "CUSTODIAL" if "tape" in node.qos else "REPLICA"
    out: dict[str, Any] = {
        "accessLatency": latency,
        "retentionPolicy": retention,
        "atime": node.accessed if node.accessed is not None else node.mtime,
        "ctime": node.mtime,  # no separate change time is kept: the last change of the data
        "owner": node.uid,
        "group": node.gid,
    }
    if not node.is_dir:
        info: dict[str, Any] = {"stored": node.hsm_uri is not None}
        if node.hsm_uri:
            hsm = urlsplit(node.hsm_uri).scheme
            out["hsm"] = info["hsm"] = hsm
        info.update(legacyAccessLatency=latency, legacyRetentionPolicy=retention, legacySize=node.size)
        out["storageInfo"] = info
        out["suris"] = [node.hsm_uri] if node.hsm_uri else []
    return out


def _page_extras(db: Database, nodes: list[Inode], *, xattr: bool, label: bool) -> None:
    """Load the xattrs and/or labels of one page of children, in one query each."""
    ids = [n.id for n in nodes]
    with db.reader.connect() as conn:
        if xattr:
            found: dict[int, dict[str, str]] = {}
            for r in conn.execute(select(schema.xattrs).where(schema.xattrs.c.inode_id.in_(ids))):
                found.setdefault(r.inode_id, {})[r.name] = r.value
            for n in nodes:
                n.xattrs = found.get(n.id, {})
        if label:
            tags: dict[int, list[str]] = {}
            t = schema.labels
            for r in conn.execute(select(t).where(t.c.inode_id.in_(ids)).order_by(t.c.label)):
                tags.setdefault(r.inode_id, []).append(r.label)
            for n in nodes:
                n.labels = tags.get(n.id, [])


def router(service: StorageService) -> APIRouter:
    api = APIRouter()
    ns, db = service.namespace, service.db
    authenticated = Depends(principal_of(service))

    @api.get(PREFIX + "/{path:path}", summary="Stat a file or directory; list a directory's children")
    async def get(request: Request, principal: Principal = authenticated) -> Any:
        path = _path(request, principal)
        flags = {k: _flag(request, k) for k in FLAGS}
        children = _flag(request, "children")
        want_labels = flags["labels"] or flags["xattr"]
        try:
            limit = int(request.query_params.get("limit", "0") or 0)
            offset = int(request.query_params.get("offset", "0") or 0)
        except ValueError as exc:
            raise BadRequest("limit and offset must be integers") from exc
        if not (0 <= limit <= MAX_INTEGER and 0 <= offset <= MAX_INTEGER):  # checked before the listing streams
            raise BadRequest(f"limit and offset must be between 0 and {MAX_INTEGER}")
        principal.check("LIST" if children else "READ_METADATA", path)
        node = await db.read(ns.stat, path, principal.subject, xattr=flags["xattr"], label=want_labels)
        head = render(node, name=True, **flags)
        if (flags["qos"] or flags["locality"]) and not node.is_dir and "tape" in node.qos:
            failed = (await db.read(flush_failures_of, ns, [node.id])).get(node.id)
            if failed is not None:  # a flush that failed and will be tried again (headrace's own field)
                head["flushError"] = failed
        if not (children and node.is_dir):
            return JSONResponse(head)
        ns.check_readable(node, principal.subject)

        async def stream() -> AsyncIterator[bytes]:
            yield json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"children":['
            first = True
            after: str | None = None
            skip, remaining = offset, (limit or None)
            while True:
                # The first page skips `offset` rows in SQL; later pages continue by name (keyset).
                page = await db.read(ns.children, node, after=after, offset=skip, limit=1000)
                skip = 0
                if not page:
                    break
                after = page[-1].name
                page = [c for c in page if principal.visible(c.path)]
                if remaining is not None:
                    page = page[:remaining]
                    remaining -= len(page)
                if page:
                    if flags["xattr"] or flags["labels"]:
                        await db.read(_page_extras, db, page, xattr=flags["xattr"], label=flags["labels"])
                    parts = [json.dumps(render(c, name=True, **flags), separators=(",", ":")) for c in page]
                    yield (b"" if first else b",") + ",".join(parts).encode()
                    first = False
                if remaining == 0:
                    break
            yield b"]}"
            if offset == 0:  # one listing, one OPEN/CLOSE_NOWRITE: not one per page a client fetches
                await db.group.run(ns.record_read_in, node, principal.subject)

        return StreamingResponse(stream(), media_type="application/json")

    @api.post(PREFIX + "/{path:path}", summary="mkdir, mv, qos, chmod, chown, set-xattr, rm-xattr, set-label, rm-label")
    async def post(request: Request, principal: Principal = authenticated) -> Any:
        path = _path(request, principal)
        body = await _json_object(request)
        action = body.get("action")
        subject = principal.subject

        def fields(*allowed: str) -> None:
            unknown = set(body) - {"action", *allowed}
            if unknown:
                raise BadRequest(f"Unknown fields for {action}: {', '.join(sorted(unknown))}")

        if action == "mkdir":
            fields("name")
            name = _str(body, "name")
            target = join(path, check_name(name))
            principal.check("MANAGE", target)
            await db.write(ns.mkdir, target, subject, cause=principal.cause)
        elif action == "mv":
            fields("destination")
            dest = _str(body, "destination")
            target = (
                principal.internal(dest) if dest.startswith("/") else normalize(join(parent_and_name(path)[0], dest))
            )
            principal.check("MANAGE", path)
            principal.check("MANAGE", target)
            _, blobs, _ = await db.write(ns.rename, path, target, subject, posix=True, cause=principal.cause)
            await service.drop_blobs(blobs)
        elif action == "qos":
            fields("target")
            principal.check("UPDATE_METADATA", path)
            await db.write(ns.set_qos, path, subject, _str(body, "target"), cause=principal.cause)
        elif action == "chmod":
            fields("mode")
            mode = body.get("mode")
            if not isinstance(mode, int) or isinstance(mode, bool):
                raise BadRequest("mode must be an integer")
            principal.check("UPDATE_METADATA", path)
            await db.write(ns.chmod, path, subject, mode, cause=principal.cause)
        elif action == "chown":
            fields("uid", "gid")
            ids = {k: body.get(k) for k in ("uid", "gid")}
            if all(v is None for v in ids.values()) or not all(
                v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) for v in ids.values()
            ):
                raise BadRequest("chown needs uid and/or gid as non-negative integers")
            principal.check("UPDATE_METADATA", path)
            await db.write(ns.chown, path, subject, ids["uid"], ids["gid"], cause=principal.cause)
        elif action == "set-xattr":
            fields("attributes", "mode")
            attrs = body.get("attributes")
            if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
                raise BadRequest("attributes must be an object of strings")
            how = str(body.get("mode", "EITHER")).upper()
            if how not in ("CREATE", "MODIFY", "EITHER"):
                raise BadRequest("mode must be CREATE, MODIFY or EITHER")
            principal.check("UPDATE_METADATA", path)
            await db.write(ns.set_xattrs, path, subject, attrs, how=how, cause=principal.cause)
        elif action == "rm-xattr":
            fields("names")
            names = body.get("names")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise BadRequest("names must be a list of strings")
            principal.check("UPDATE_METADATA", path)
            await db.write(ns.remove_xattrs, path, subject, names, cause=principal.cause)
        elif action in ("set-label", "rm-label"):
            fields("label")
            label = _str(body, "label")
            principal.check("UPDATE_METADATA", path)
            add, rm = ([label], []) if action == "set-label" else ([], [label])
            await db.write(ns.set_labels, path, subject, add, rm, cause=principal.cause)
        else:
            raise BadRequest(f"Unknown action: {action!r}")
        return SUCCESS

    @api.delete(PREFIX + "/{path:path}", summary="Delete a file or an empty directory")
    async def delete(request: Request, principal: Principal = authenticated) -> Any:
        path = _path(request, principal)
        principal.check("DELETE", path)
        recursive = _flag(request, "recursive")
        blobs = await db.write(ns.delete, path, principal.subject, recursive=recursive, cause=principal.cause)
        await service.drop_blobs(blobs)
        return SUCCESS

    return api


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        raise BadRequest("Missing JSON entity in POST request")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's limit
        raise BadRequest(f"Malformed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("The JSON entity must be an object")
    return body


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key} must be a non-empty string")
    return value
