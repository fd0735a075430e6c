"""The door's changes: PUT (streamed into a blob store, or redirected to a pool process), MKCOL, DELETE,
MOVE and COPY (a Destination on this server only)."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import Response

from headrace.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    Exists,
    Forbidden,
    MethodNotAllowed,
    PreconditionFailed,
    UnsupportedMediaType,
)
from headrace.http import conditionals
from headrace.http_common import addressed_as, authority, content_length
from headrace.metrics import DOOR_BYTES
from headrace.storage.blobstore import BlobStore
from headrace.storage.checksums import expected_checksums, format_digest, parse_want_digest
from headrace.storage.namespace import Blob, CopyItem, Inode
from headrace.storage.paths import from_destination
from headrace.storage.pool import new_blob_name
from headrace.storage.pool_protocol import Commit
from headrace.storage.webdav_base import Call, DoorBase

#: A client that sends this (yes) with a PUT asks to be redirected to the pool, as `Expect: 100-continue` does.
REDIRECT_HEADER = "x-headrace-redirect"


class Writing(DoorBase):
    async def put(self, call: Call) -> Response | None:
        call.principal.check("UPLOAD", call.path)
        if call.path == "/":
            raise Conflict("Cannot PUT onto the root directory")
        existing = await self.db.read_short(self.ns.entry_for_create_in, call.path, call.subject)
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
            expected = expected_checksums(call.header("digest") or "", call.header("content-md5") or "")
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
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
        await self._put_done(call, node, old, created, stored.checksums, want, stored.size)
        return None

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

    async def _put_done(
        self,
        call: Call,
        node: Inode,
        old: Blob | None,
        created: bool,
        sums: dict[str, str],
        want: list[str],
        size: int,
    ) -> None:
        DOOR_BYTES.labels("in").inc(size)
        if old is not None:
            await self.service.drop_blobs([old])
        # Sent as ASGI messages straight away (what Starlette's Response would send, without building one).
        headers = [(b"etag", node.etag.encode("latin-1"))]
        digest = format_digest(sums, want)
        if digest:
            headers.append((b"digest", digest.encode("latin-1")))
        if created:
            headers.append((b"location", call.href(node.path, False).encode("latin-1")))
            headers.append((b"content-length", b"0"))  # a 204 has no body and no length
        await call.send({"type": "http.response.start", "status": 201 if created else 204, "headers": headers})
        await call.send({"type": "http.response.body", "body": b""})
        return None

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
                elif item.type == "REGULAR":
                    what = call.principal.external(f"{call.path}/{item.rel}" if item.rel else call.path)
                    raise Conflict(f"{what} is on tape only: stage it first")
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
