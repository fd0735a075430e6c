"""The WebDAV door: RFC 4918 classes 1 and 2 over HTTP, with RFC 3230 digests and dCache's macaroon requests.

A plain ASGI application (no router: WebDAV dispatches on the method, not the path). Data streams both
ways in bounded chunks: an upload is written to a pool's tmp/ as it arrives and becomes visible only when
complete and committed; a download is read from the blob a chunk at a time, paced by the client.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from html import escape as html_escape
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from headrace.auth.access import Principal
from headrace.auth.macaroons import check_caveat, parse_validity
from headrace.auth.subject import W
from headrace.config import Settings
from headrace.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    Exists,
    Forbidden,
    HeaderTooLarge,
    HeadraceError,
    IncompleteUpload,
    MethodNotAllowed,
    PayloadTooLarge,
    PreconditionFailed,
    RangeNotSatisfiable,
    RequestTimeout,
    UnsupportedMediaType,
)
from headrace.http import conditionals
from headrace.http.body import ClientGone, RequestBody, read_small
from headrace.http.ranges import answer_range, unsatisfiable_headers
from headrace.http_common import (
    CONTENT_HEADERS,
    acknowledge_lifespan,
    addressed_as,
    authority,
    client_ip,
    content_length,
    error_response,
    header,
    header_bytes,
    query_param,
)
from headrace.metrics import DOOR_BYTES, DOOR_REQUESTS
from headrace.storage import locks
from headrace.storage import webdav_xml as dav
from headrace.storage.blobstore import BlobStore, Stored, StoreUnreachable
from headrace.storage.checksums import format_digest, parse_digest, parse_want_digest
from headrace.storage.namespace import Blob, CopyItem, Inode
from headrace.storage.paths import from_destination
from headrace.storage.pool import new_blob_name
from headrace.storage.pool_protocol import Commit
from headrace.storage.service import StorageService

log = logging.getLogger("headrace.door")


ALLOW = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH, LOCK, UNLOCK, POST"
#: The largest body of a request other than PUT (PROPFIND/PROPPATCH/LOCK XML, macaroon requests): 413 past it.
MAX_XML_BODY = 1024 * 1024
#: A client that sends this (yes) with a PUT asks to be redirected to the pool, as `Expect: 100-continue` does.
REDIRECT_HEADER = "x-headrace-redirect"


@dataclass
class Call:
    scope: Scope
    receive: Receive
    send: Send
    principal: Principal
    path: str  # namespace path (after the token's root view)
    tokens: set[str] = field(default_factory=set)  # lock tokens submitted in an If header

    def header(self, name: str) -> str | None:
        return header(self.scope, name.lower().encode())

    @property
    def subject(self) -> Any:
        return self.principal.subject

    @property
    def cause(self) -> str | None:
        """The activation a change is made for (`Principal.cause`: from the token, never a header)."""
        return self.principal.cause

    def href(self, path: str, is_dir: bool) -> str:
        return dav.href_for(self.principal.external(path), is_dir)


class Door:
    def __init__(self, service: StorageService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.ns = service.namespace
        self.db = service.db
        self.locks = locks.LockManager()
        self.handlers: dict[str, Callable[[Call], Awaitable[Response | None]]] = {
            "GET": self.get,
            "HEAD": self.head,
            "PUT": self.put,
            "DELETE": self.delete,
            "MKCOL": self.mkcol,
            "COPY": self.copy,
            "MOVE": self.move,
            "PROPFIND": self.propfind,
            "PROPPATCH": self.proppatch,
            "LOCK": self.lock,
            "UNLOCK": self.unlock,
            "POST": self.post,
        }

    # -- ASGI entry ----------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                DOOR_REQUESTS.labels(method, str(message["status"])).inc()
            await send(message)

        try:
            if header_bytes(scope) > self.settings.max_header_bytes:
                raise HeaderTooLarge(f"Request headers exceed {self.settings.max_header_bytes} bytes")
            if method == "OPTIONS":
                response: Response | None = Response(
                    status_code=200,
                    headers={"Allow": ALLOW, "DAV": "1, 2", "MS-Author-Via": "DAV", "Content-Length": "0"},
                )
            else:
                handler = self.handlers.get(method)
                if handler is None:
                    raise MethodNotAllowed(f"Method {method} is not supported here")
                principal = await self.service.auth.authenticate(
                    header(scope, b"authorization"), query_param(scope, "authz"), client_ip(scope)
                )
                path = principal.resolve(scope.get("raw_path") or scope["path"].encode())
                call = Call(scope, receive, tracking_send, principal, path)
                if_header = header(scope, b"if")
                if if_header and method != "POST":
                    call.tokens = await self._evaluate_if(call, if_header)
                response = await handler(call)
        except HeadraceError as exc:
            if started:
                log.warning("%s %s failed after the response started: %s", method, scope.get("path"), exc.detail)
                return
            headers = {"Allow": ALLOW} if isinstance(exc, MethodNotAllowed) else None
            if isinstance(exc, (PayloadTooLarge, RequestTimeout)):
                headers = {"Connection": "close"}  # the rest of the body is not read
            response = error_response(exc, headers)
        except ClientGone:
            # The HTTP server also reports a body it could not read (bad chunk framing, a body cut short
            # and half-closed) as a disconnect: answer in case the client is still there to read it.
            if not started:
                with contextlib.suppress(Exception):
                    gone = IncompleteUpload("The request body ended early or could not be read")
                    await error_response(gone)(scope, receive, tracking_send)
            return
        except Exception:
            # The HTTP server logs nothing of an exception that escapes (its log is off) and answers in plain
            # text: log what broke, and answer in dCache's shape if nothing was sent yet.
            log.exception("%s %s: internal error", method, scope.get("path"))
            if started:
                return
            response = error_response(HeadraceError("The server could not complete the request"))
        if response is not None:
            await response(scope, receive, tracking_send)

    # -- reading -------------------------------------------------------------------------------------------

    async def head(self, call: Call) -> Response | None:
        return await self.get(call, head=True)

    async def get(self, call: Call, head: bool = False) -> Response | None:
        want_header = call.header("want-digest")
        node = await self.db.read(self.ns.stat, call.path, call.subject, sums=bool(want_header))
        if node.is_dir:
            call.principal.check("READ_METADATA" if head else "LIST", node.path)
            if head:
                return Response(status_code=200, media_type="text/html; charset=utf-8")
            return await self._html_listing(call, node)
        call.principal.check("READ_METADATA" if head else "DOWNLOAD", node.path)
        if not head or want_header:
            # A digest is computed from, and tells about, the content: only for those who may read it.
            self.ns.check_readable(node, call.subject)
        headers = {
            "ETag": node.etag,
            "Last-Modified": dav.http_date(node.mtime),
            "Accept-Ranges": "bytes",
            "Content-Type": dav.content_type(node.name),
            **CONTENT_HEADERS,
        }
        not_modified = self._preconditions(call, node)
        if not_modified:
            return Response(status_code=304, headers={k: headers[k] for k in ("ETag", "Last-Modified")})
        if want_header:
            want = parse_want_digest(want_header)
            if want and not any(w in node.checksums for w in want):
                await self._compute_checksums(node, {want[0]})
            digest = format_digest(node.checksums, want)
            if digest:
                headers["Digest"] = digest
        store = None
        if not head and node.pool is not None:
            store = await self.service.stores.get(node.pool)
            if self.settings.door_redirect:
                redirected = await self._redirect_read(call, node, store, headers)
                if redirected is not None:
                    return redirected
        rng = call.header("range")
        honoured = conditionals.if_range_holds(call.header("if-range"), node.etag, node.mtime // 1000)
        try:
            start, length, status = answer_range(rng if honoured else None, node.size, headers)
        except RangeNotSatisfiable as exc:
            return error_response(exc, unsatisfiable_headers(node.size))
        if head:
            return Response(status_code=status, headers=headers)
        assert store is not None and node.blob is not None
        sent = await store.send(
            call.scope, call.send, call.receive, node.blob, status, headers, start, length, label=node.path
        )
        DOOR_BYTES.labels("out").inc(sent)
        await self.db.group.run(self.ns.record_read_in, node, call.subject, call.cause)
        return None

    def _preconditions(self, call: Call, node: Inode) -> bool:
        """RFC 9110 conditionals for GET/HEAD: raises 412, or returns True for 304 Not Modified."""
        return conditionals.check_read(
            node.etag,
            node.mtime // 1000,
            if_match=call.header("if-match"),
            if_unmodified_since=call.header("if-unmodified-since"),
            if_none_match=call.header("if-none-match"),
            if_modified_since=call.header("if-modified-since"),
        )

    async def _compute_checksums(self, node: Inode, types: set[str]) -> None:
        if node.pool is None or node.blob is None:
            return
        sums = await (await self.service.stores.get(node.pool)).checksums(node.blob, types)
        await self.db.write(self.ns.add_checksums, node, {t: sums[t] for t in types if t in sums})

    async def _target(self, length: int | None) -> BlobStore:
        """Where a new file goes: a pool process when any is registered, else this process's own pool."""
        store = await self.service.stores.choose(length)
        assert store is not None  # without exclusions there is always one
        return store

    @staticmethod
    def _origin(call: Call) -> str:
        return f"{call.scope.get('scheme', 'http')}://{call.header('host') or ''}"

    async def _redirect_read(
        self, call: Call, node: Inode, store: BlobStore, headers: dict[str, str]
    ) -> Response | None:
        """302 to a store that clients can reach, with a token good for this blob only, for
        `pool_token_seconds`; the pool repeats the file's headers (ETag, Digest...) from the token. The read is
        recorded now: the door sees no more. None when the store is not reachable by clients."""
        assert node.blob is not None
        path = call.principal.external(node.path)
        location = await store.client_url("read", node.blob, path, self.settings.pool_token_seconds, headers=headers)
        if location is None:
            return None
        await self.db.group.run(self.ns.record_read_in, node, call.subject, call.cause)
        return Response(status_code=302, headers={"Location": location, "Content-Length": "0"})

    def _redirects_put(self, call: Call) -> bool:
        if not self.settings.door_redirect:
            return False
        expect = (call.header("expect") or "").strip().lower()
        opted = (call.header(REDIRECT_HEADER) or "").strip().lower() in ("1", "yes", "true", "on")
        return expect == "100-continue" or opted

    async def _redirect_write(
        self, call: Call, store: BlobStore, want: list[str], if_match: str | None, inm_any: bool
    ) -> Response | None:
        """307 (method and body kept) to a store that clients can reach, with a token that tells it to commit
        the upload as this user, with these preconditions, once the data is durable and its checksum verified.
        None when the store is not reachable by clients."""
        commit = Commit(
            path=call.path,
            username=call.subject.username,
            uid=call.subject.uid,
            gids=tuple(call.subject.gids),
            admin=call.subject.admin,
            if_match=if_match,
            if_none_match_any=inm_any,
            cause=call.cause,
            want=tuple(want),
            location=self._origin(call) + call.href(call.path, False),
        )
        path = call.principal.external(call.path)
        seconds = self.settings.pool_token_seconds
        location = await store.client_url("write", new_blob_name(), path, seconds, commit=commit)
        if location is None:
            return None
        if (call.header("expect") or "").strip().lower() != "100-continue":
            # The client is sending its body regardless: read it to the end (and drop it), for a connection
            # closed on unread data is reset, and the reset can destroy the 307 before the client reads it.
            await self._discard_body(call)
        return Response(status_code=307, headers={"Location": location, "Content-Length": "0"})

    async def _discard_body(self, call: Call) -> None:
        await RequestBody(call.receive, content_length(call.scope), self.settings.upload_idle_timeout).discard()

    async def _receive(
        self, call: Call, store: BlobStore, types: set[str], expected: dict[str, str], length: int | None
    ) -> tuple[BlobStore, Stored]:
        """Stream the request body into a new blob. A store that cannot be connected to before any byte was
        read from the client is passed over for the next one."""
        body = RequestBody(call.receive, length, self.settings.upload_idle_timeout)
        tried: set[str] = set()
        while True:
            try:
                return store, await store.receive(body, types, expected)
            except StoreUnreachable:
                tried.add(store.name)
                following = None if body.started else await self.service.stores.choose(length, exclude=tried)
                if following is None:
                    raise
                store = following

    async def _commit(self, call: Call, store: BlobStore, stored: Stored, **kw: Any) -> tuple[Inode, Blob | None, bool]:
        """Make a stored blob the file at the call's path; the blob is dropped if that fails."""
        try:
            return await self.db.group.run(
                self.ns.commit_upload_in,
                call.path,
                call.subject,
                pool=store.name,
                blob=stored.blob,
                size=stored.size,
                sums=stored.checksums,
                **kw,
            )
        except BaseException:
            await self.service.drop_blobs([Blob(store.name, stored.blob, stored.size)])
            raise

    async def _html_listing(self, call: Call, node: Inode) -> Response | None:
        self.ns.check_readable(node, call.subject)
        title = html_escape(call.principal.external(node.path))
        listing_headers = {"Content-Type": "text/html; charset=utf-8", **CONTENT_HEADERS}
        raw_headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in listing_headers.items()]
        await call.send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        head = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body><h1>{title}</h1><ul>"
        )
        await call.send({"type": "http.response.body", "body": head.encode(), "more_body": True})
        children = self.ns.iter_children(node)
        while page := await self.db.read(_next_page, children):
            items = "".join(
                f"<li><a href='{call.href(c.path, c.is_dir)}'>{html_escape(c.name)}{'/' if c.is_dir else ''}</a></li>"
                for c in page
                if call.principal.visible(c.path)
            )
            await call.send({"type": "http.response.body", "body": items.encode(), "more_body": True})
        await call.send({"type": "http.response.body", "body": b"</ul></body></html>", "more_body": False})
        await self.db.group.run(self.ns.record_read_in, node, call.subject, call.cause)
        return None

    # -- writing -------------------------------------------------------------------------------------------

    async def put(self, call: Call) -> Response | None:
        call.principal.check("UPLOAD", call.path)
        if call.path == "/":
            raise Conflict("Cannot PUT onto the root directory")
        existing = await self.db.read(self.ns.entry_for_create, call.path, call.subject)
        if existing is not None and existing.is_dir:
            raise Conflict(f"Is a directory: {call.principal.external(existing.path)}")
        self.locks.check_write(call.path, call.tokens, call.subject.username, membership=existing is None)
        inm = call.header("if-none-match")
        if inm and inm.strip() == "*" and existing is not None:
            raise PreconditionFailed("The file exists (If-None-Match: *)")
        if_match = call.header("if-match")
        if if_match and existing is None:
            raise PreconditionFailed("The file does not exist (If-Match)")
        if if_match and existing is not None and not conditionals.if_match_holds(if_match, existing.etag):
            raise PreconditionFailed("If-Match does not match the current ETag")
        try:
            expected = parse_digest(call.header("digest") or "")
        except ValueError as exc:
            raise BadRequest(f"Malformed Digest header: {exc}") from exc
        want = parse_want_digest(call.header("want-digest") or "")
        length = content_length(call.scope)
        if_match_value = if_match.strip() if if_match else None
        inm_any = bool(inm and inm.strip() == "*")
        target = await self._target(length)
        if self._redirects_put(call):
            redirected = await self._redirect_write(call, target, want, if_match_value, inm_any)
            if redirected is not None:
                return redirected
        store, stored = await self._receive(call, target, set(want), expected, length)
        node, old, created = await self._commit(
            call, store, stored, if_match=if_match_value, if_none_match_any=inm_any, cause=call.cause
        )
        return await self._put_done(call, node, old, created, stored.checksums, want, stored.size)

    async def _put_done(
        self,
        call: Call,
        node: Inode,
        old: Blob | None,
        created: bool,
        sums: dict[str, str],
        want: list[str],
        size: int,
    ) -> Response:
        DOOR_BYTES.labels("in").inc(size)
        if old is not None:
            await self.service.drop_blobs([old])
        headers = {"ETag": node.etag}
        digest = format_digest(sums, want)
        if digest:
            headers["Digest"] = digest
        if created:
            headers["Location"] = call.href(node.path, False)
        return Response(status_code=201 if created else 204, headers=headers)

    async def mkcol(self, call: Call) -> Response | None:
        call.principal.check("MANAGE", call.path)
        if (content_length(call.scope) or 0) > 0 or call.header("transfer-encoding"):
            raise UnsupportedMediaType("MKCOL with a body is not supported")
        if call.path == "/":
            raise MethodNotAllowed("The root exists")
        existing = await self.db.read(self.ns.try_stat, call.path, call.subject)
        if existing is not None:
            raise MethodNotAllowed(f"Already exists: {call.principal.external(call.path)}")
        self.locks.check_write(call.path, call.tokens, call.subject.username, membership=True)
        try:
            await self.db.write(self.ns.mkdir, call.path, call.subject, cause=call.cause)
        except Exists as exc:  # a concurrent MKCOL or PUT made it since the check above
            raise MethodNotAllowed(f"Already exists: {call.principal.external(call.path)}") from exc
        return Response(status_code=201, headers={"Location": call.href(call.path, True)})

    async def delete(self, call: Call) -> Response | None:
        call.principal.check("DELETE", call.path)
        depth = (call.header("depth") or "infinity").lower()
        node = await self.db.read(self.ns.stat, call.path, call.subject)
        if node.is_dir and depth != "infinity":
            raise BadRequest("DELETE of a collection needs Depth: infinity")
        self.locks.check_write(call.path, call.tokens, call.subject.username, membership=True, subtree=node.is_dir)
        blobs = await self.db.write(self.ns.delete, call.path, call.subject, recursive=True, cause=call.cause)
        self.locks.drop(call.path)
        await self.service.drop_blobs(blobs)
        return Response(status_code=204)

    def _destination(self, call: Call) -> tuple[str, bool]:
        dest = call.header("destination")
        if not dest:
            raise BadRequest("Missing Destination header")
        named = from_destination(dest)  # a malformed path is a 400 wherever it points
        self._check_same_server(call, dest)
        target = call.principal.internal(named)
        ow = (call.header("overwrite") or "T").strip().upper()
        if ow not in ("T", "F"):
            raise BadRequest("Overwrite must be T or F")
        if ow == "T" and call.path.startswith(target.rstrip("/") + "/"):
            # Overwriting an ancestor would delete the source first (as mod_dav, 403; Overwrite: F gives 412).
            raise Forbidden("The destination contains the source and Overwrite is T")
        return target, ow == "T"

    def _check_same_server(self, call: Call, dest: str) -> None:
        """502 for a Destination URL on another server (RFC 4918 9.8.5, 9.9.4): this door acts only on its
        own namespace. The destination's host and port must be those the client addressed (Host, or a
        proxy's X-Forwarded-Host), or this door's public URL (http_common.addressed_as)."""
        parts = urlsplit(dest)
        if not parts.netloc:
            return  # an absolute path: on this server
        try:
            wanted = authority(parts.netloc, parts.scheme)
        except ValueError as exc:
            raise BadRequest(f"Invalid Destination: {dest!r}") from exc
        public = urlsplit(self.settings.door_url)
        if addressed_as(call.scope, wanted, (public.netloc, public.scheme)):
            return
        raise BadGateway(f"Destination {parts.netloc} is another server; this door copies and moves only within itself")

    async def move(self, call: Call) -> Response | None:
        target, overwrite = self._destination(call)
        call.principal.check("MANAGE", call.path)
        call.principal.check("MANAGE", target)
        depth = (call.header("depth") or "infinity").lower()
        if depth != "infinity":
            raise BadRequest("MOVE needs Depth: infinity")
        for path in (call.path, target):
            self.locks.check_write(path, call.tokens, call.subject.username, membership=True, subtree=True)
        _, blobs, existed = await self.db.write(
            self.ns.rename, call.path, target, call.subject, overwrite=overwrite, cause=call.cause
        )
        # Locks stay with paths, not resources: the source's are released, an overwritten target's go with it.
        self.locks.drop(call.path)
        if existed:
            self.locks.drop(target)
        await self.service.drop_blobs(blobs)
        return Response(status_code=204 if existed else 201)

    async def copy(self, call: Call) -> Response | None:
        target, overwrite = self._destination(call)
        if target == call.path:
            raise Forbidden("Source and destination are the same")
        if target.startswith(call.path + "/"):
            raise Conflict("Cannot copy a directory into itself")
        call.principal.check("DOWNLOAD", call.path)
        call.principal.check("UPLOAD", target)
        depth = (call.header("depth") or "infinity").lower()
        if depth not in ("0", "infinity"):
            raise BadRequest("COPY needs Depth: 0 or infinity")
        self.locks.check_write(target, call.tokens, call.subject.username, membership=True, subtree=True)
        # Refuse what commit_copy would refuse before copying any data (it checks again, for races).
        existing = await self.db.read(self.ns.entry_for_create, target, call.subject)
        if existing is not None and not overwrite:
            raise PreconditionFailed(f"Destination exists: {call.principal.external(target)}")
        plan = await self.db.read(self.ns.copy_plan, call.path, call.subject, depth_infinity=depth == "infinity")
        made: list[tuple[CopyItem, str | None, str | None]] = []
        copies: list[Blob] = []
        try:
            for item in plan:
                if item.type == "REGULAR" and item.pool and item.blob:
                    copied = await (await self.service.stores.get(item.pool)).copy(item.blob)
                    copies.append(Blob(item.pool, copied.blob, copied.size))
                    made.append((item, item.pool, copied.blob))
                else:
                    made.append((item, None, None))
            blobs, existed = await self.db.write(
                self.ns.commit_copy, target, call.subject, made, overwrite=overwrite, cause=call.cause
            )
            if existed:
                self.locks.drop(target)
        except BaseException:
            await self.service.drop_blobs(copies)
            raise
        await self.service.drop_blobs(blobs)
        return Response(status_code=204 if existed else 201)

    # -- properties ----------------------------------------------------------------------------------------

    async def _small_body(self, call: Call) -> bytes:
        """A non-PUT body, whole: 413 past MAX_XML_BODY, 408 when the client sends nothing for `body_timeout`."""
        length = content_length(call.scope)
        return await read_small(call.receive, length, limit=MAX_XML_BODY, timeout=self.settings.body_timeout)

    def _quota(self) -> tuple[int, int]:
        return self.service.stores.quota()

    async def propfind(self, call: Call) -> Response | None:
        request = dav.parse_propfind(await self._small_body(call))
        depth = (call.header("depth") or "1").lower()
        if depth not in ("0", "1"):
            return Response(dav.render_error("propfind-finite-depth"), status_code=403, media_type="application/xml")
        node = await self.db.read(self.ns.stat, call.path, call.subject, xattr=True)
        listing = node.is_dir and depth == "1"
        call.principal.check("LIST" if listing else "READ_METADATA", node.path)
        if listing:
            self.ns.check_readable(node, call.subject)
        quota = self._quota() if any("quota" in p for p in request.props) else None
        want_locks = f"{{{dav.DAV}}}lockdiscovery" in request.props
        first = dav.render_response(
            node,
            call.href(node.path, node.is_dir),
            request,
            _dead(node.xattrs),
            quota=quota,
            lockdiscovery=self._lockdiscovery(call, node.path) if want_locks else "",
        )
        if not listing:
            return Response(
                dav.MULTISTATUS_OPEN + first + dav.MULTISTATUS_CLOSE,
                status_code=207,
                media_type="application/xml; charset=utf-8",
            )
        await call.send(
            {
                "type": "http.response.start",
                "status": 207,
                "headers": [(b"content-type", b"application/xml; charset=utf-8")],
            }
        )
        opening = (dav.MULTISTATUS_OPEN + first).encode()
        await call.send({"type": "http.response.body", "body": opening, "more_body": True})
        want_dead = request.kind != "prop" or any(not p.startswith("{DAV:}") for p in request.props)
        children = self.ns.iter_children(node)
        while True:
            page = await self.db.read(_next_page, children)
            if not page:
                break
            page = [c for c in page if call.principal.visible(c.path)]
            dead = await self.db.read(self.ns.xattrs_for, [c.id for c in page]) if want_dead else {}
            chunk = "".join(
                dav.render_response(
                    c,
                    call.href(c.path, c.is_dir),
                    request,
                    _dead(dead.get(c.id)),
                    quota=quota,
                    lockdiscovery=self._lockdiscovery(call, c.path) if want_locks else "",
                )
                for c in page
            )
            await call.send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
        await call.send({"type": "http.response.body", "body": dav.MULTISTATUS_CLOSE.encode(), "more_body": False})
        await self.db.group.run(self.ns.record_read_in, node, call.subject, call.cause)
        return None

    async def proppatch(self, call: Call) -> Response | None:
        ops = dav.parse_proppatch(await self._small_body(call))
        call.principal.check("UPDATE_METADATA", call.path)
        node = await self.db.read(self.ns.stat, call.path, call.subject)
        self.locks.check_write(call.path, call.tokens, call.subject.username)
        protected = [op.name for op in ops if op.name in dav.PROTECTED]
        href = call.href(node.path, node.is_dir)
        if protected:
            results = [(op.name, 403 if op.name in dav.PROTECTED else 424) for op in ops]
            return Response(dav.render_proppatch(href, results), status_code=207, media_type="application/xml")
        to_set: dict[str, str] = {}
        to_remove: list[str] = []
        for op in ops:  # document order: a later op on the same name wins
            if op.action == "set":
                to_set[op.name] = op.value
                if op.name in to_remove:
                    to_remove.remove(op.name)
            else:
                to_set.pop(op.name, None)
                to_remove.append(op.name)
        await self.db.write(self.ns.change_xattrs, call.path, call.subject, to_set, to_remove, cause=call.cause)
        return Response(
            dav.render_proppatch(href, [(op.name, 200) for op in ops]), status_code=207, media_type="application/xml"
        )

    # -- locks (WebDAV class 2) ----------------------------------------------------------------------------

    async def _evaluate_if(self, call: Call, value: str) -> set[str]:
        """RFC 4918 10.4: 412 unless some list of the If header holds; returns the lock tokens it submits."""
        lists = locks.parse_if(value)

        def resolve(tag: str) -> str | None:
            try:
                return call.principal.internal(from_destination(tag))
            except HeadraceError:
                return None  # a tag this principal cannot name applies to nothing here

        async def etag_of(path: str) -> str | None:
            try:
                node = await self.db.read(self.ns.try_stat, path, call.subject)
            except HeadraceError:
                return None
            return node.etag if node is not None else None

        if not await locks.if_holds(lists, call.path, self.locks, resolve=resolve, etag_of=etag_of):
            raise PreconditionFailed("No condition list of the If header holds")
        return locks.submitted_tokens(lists)

    def _lockdiscovery(self, call: Call, path: str) -> str:
        now = self.locks.now()
        return "".join(locks.render_activelock(lk, self._lock_href(call, lk), now) for lk in self.locks.covering(path))

    def _lock_href(self, call: Call, lock: locks.Lock) -> str:
        try:
            return call.href(lock.root, lock.is_dir)
        except HeadraceError:  # rooted above this token's view, so it covers all of it: show its root
            return dav.href_for("/", True)

    def _lock_reply(self, call: Call, lock: locks.Lock, status: int, *, new: bool) -> Response:
        body = locks.render_lock_response(lock, self._lock_href(call, lock), self.locks.now())
        headers = {"Lock-Token": f"<{lock.token}>"} if new else None
        return Response(body, status_code=status, headers=headers, media_type="application/xml; charset=utf-8")

    async def lock(self, call: Call) -> Response | None:
        call.principal.check("UPLOAD", call.path)
        body = await self._small_body(call)
        timeout = locks.parse_timeout(call.header("timeout"))
        username = call.subject.username
        if not body.strip():
            # A refresh: the If header names the lock (RFC 4918 9.10.2).
            held = [lk for t in call.tokens if (lk := self.locks.get(t)) is not None and lk.covers(call.path)]
            if not held:
                raise PreconditionFailed("A lock refresh needs the token of a lock on this resource in an If header")
            for lk in held:
                if lk.username != username:
                    raise Forbidden("Only the lock's owner may refresh it")
                self.locks.refresh(lk, timeout)
            return self._lock_reply(call, held[0], 200, new=False)
        request = locks.parse_lockinfo(body)
        depth = (call.header("depth") or "infinity").lower()
        if depth not in ("0", "infinity"):
            raise BadRequest("LOCK needs Depth: 0 or infinity")
        infinite = depth == "infinity"
        clash = self.locks.conflicts(call.path, exclusive=request.exclusive, infinite=infinite)
        if clash:
            raise locks.Locked(f"{call.principal.external(call.path)} conflicts with a lock on {clash[0].root}")
        node = await self.db.read(self.ns.try_stat, call.path, call.subject)
        created = node is None
        if node is None:
            # RFC 4918 7.3: locking an unmapped URL creates an empty resource (as macOS Finder expects).
            self.locks.check_write(call.path, call.tokens, username, membership=True)
            node = await self._create_empty(call)
        elif not call.subject.may(W, mode=node.mode, uid=node.uid, gid=node.gid):
            raise Forbidden(f"Permission denied: {call.principal.external(node.path)}")
        lock = self.locks.lock(
            call.path,
            is_dir=node.is_dir,
            exclusive=request.exclusive,
            infinite=infinite,
            owner=request.owner,
            username=username,
            timeout=timeout,
        )
        return self._lock_reply(call, lock, 201 if created else 200, new=True)

    async def _create_empty(self, call: Call) -> Inode:
        target = await self._target(0)
        stored = await target.write(b"")
        node, _, _ = await self._commit(call, target, stored, if_none_match_any=True)
        return node

    async def unlock(self, call: Call) -> Response | None:
        token = locks.parse_lock_token(call.header("lock-token"))
        lock = self.locks.get(token)
        if lock is None or not lock.covers(call.path):
            raise Conflict("The Lock-Token does not name a lock on this resource")  # RFC 4918 9.11.1
        if lock.username != call.subject.username and not call.subject.admin:
            raise Forbidden("Only the lock's owner may remove it")
        self.locks.unlock(lock)
        return Response(status_code=204)

    # -- tokens --------------------------------------------------------------------------------------------

    async def post(self, call: Call) -> Response | None:
        ctype = (call.header("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/macaroon-request":
            raise MethodNotAllowed("POST is only for macaroon requests (Content-Type: application/macaroon-request)")
        raw = await self._small_body(call)
        try:
            req = json.loads(raw or b"{}")
        except ValueError as exc:
            raise BadRequest(f"Macaroon request is not JSON: {exc}") from exc
        if not isinstance(req, dict):
            raise BadRequest("Macaroon request must be a JSON object")
        unknown = set(req) - {"caveats", "validity"}
        if unknown:
            raise BadRequest(f"Unknown fields in macaroon request: {', '.join(sorted(unknown))}")
        caveats_in = req.get("caveats", [])
        if not isinstance(caveats_in, list) or not all(isinstance(c, str) for c in caveats_in):
            raise BadRequest("caveats must be a list of strings")
        caveats = [check_caveat(c) for c in caveats_in]
        validity = parse_validity(str(req.get("validity", "PT1H")))
        # The token is confined to the path it was asked at; a token minted from a token keeps its limits.
        if call.path != "/":
            caveats.insert(0, f"path:{call.path}")
        if call.principal.restrictions is not None:
            caveats = call.principal.restrictions.caveats + caveats
        subject = call.subject
        token = self.service.macaroons.mint(
            username=subject.username,
            uid=subject.uid,
            gids=subject.gids,
            caveats=caveats,
            validity=validity,
            cause=call.cause,
        )
        scheme = call.scope.get("scheme", "http")
        host = call.header("host") or f"{self.settings.host}:{self.settings.door_port}"
        base = f"{scheme}://{host}/"
        target = f"{scheme}://{host}{quote(call.principal.external(call.path), safe='/')}"
        body = {
            "macaroon": token,
            "uri": {
                "targetWithMacaroon": f"{target}?authz={token}",
                "baseWithMacaroon": f"{base}?authz={token}",
                "target": target,
                "base": base,
            },
        }
        return Response(json.dumps(body), status_code=200, media_type="application/json")


# -- helpers -----------------------------------------------------------------------------------------------


def _dead(xattrs: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (xattrs or {}).items() if k.startswith("{")}


def _next_page(it: Any, n: int = 500) -> list[Inode]:
    page: list[Inode] = []
    for item in it:
        page.append(item)
        if len(page) >= n:
            break
    return page
