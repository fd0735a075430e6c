"""The door's properties: PROPFIND (Depth 0 or 1, streamed) and PROPPATCH (dead properties)."""

from __future__ import annotations

from starlette.responses import Response

from headrace.storage import webdav_xml as dav
from headrace.storage.webdav_base import Call, DoorBase, next_page


class Properties(DoorBase):
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
            page = await self.db.read(next_page, children)
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
        self.ns.post_read(node, call.subject, call.cause)
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


def _dead(xattrs: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (xattrs or {}).items() if k.startswith("{")}
