"""The door's reads: GET and HEAD of a file (conditionals, Range, Want-Digest, a redirect to a pool process)
and the HTML listing of a directory."""

from __future__ import annotations

from html import escape as html_escape

from starlette.responses import Response

from headrace.errors import RangeNotSatisfiable
from headrace.http import conditionals
from headrace.http.ranges import answer_range, unsatisfiable_headers
from headrace.http_common import CONTENT_HEADERS, error_response
from headrace.metrics import DOOR_BYTES
from headrace.storage import webdav_xml as dav
from headrace.storage.blobstore import BlobStore
from headrace.storage.checksums import format_digest, parse_want_digest
from headrace.storage.namespace import Inode
from headrace.storage.webdav_base import Call, DoorBase, next_page


class Reading(DoorBase):
    async def head(self, call: Call) -> Response | None:
        return await self.get(call, head=True)

    async def get(self, call: Call, head: bool = False) -> Response | None:
        want_header = call.header("want-digest")
        node = await self.db.read_short(self.ns.stat_in, call.path, call.subject, sums=bool(want_header))
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
        if not head and node.blob is None and node.hsm_uri is not None:
            from headrace.tape.staging import bring_online

            node = await bring_online(
                self.db, self.ns, node, call.subject.username, wait=self.settings.tape.read_wait, api="door"
            )
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
        self.ns.post_read(node, call.subject, call.cause)
        if node.hsm_uri is not None:  # a cached copy: recently used ones are evicted last
            from headrace.tape.catalog import touch

            self.db.group.post(touch, node.id)
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
        self.ns.post_read(node, call.subject, call.cause)
        return Response(status_code=302, headers={"Location": location, "Content-Length": "0"})

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
        while page := await self.db.read(next_page, children):
            items = "".join(
                f"<li><a href='{call.href(c.path, c.is_dir)}'>{html_escape(c.name)}{'/' if c.is_dir else ''}</a></li>"
                for c in page
                if call.principal.visible(c.path)
            )
            await call.send({"type": "http.response.body", "body": items.encode(), "more_body": True})
        await call.send({"type": "http.response.body", "body": b"</ul></body></html>", "more_body": False})
        self.ns.post_read(node, call.subject, call.cause)
        return None
