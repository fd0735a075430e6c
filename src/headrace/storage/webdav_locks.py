"""The door's WebDAV class 2: LOCK, UNLOCK and the If header's condition lists."""

from __future__ import annotations

from starlette.responses import Response

from headrace.auth.subject import W
from headrace.errors import BadRequest, Conflict, Forbidden, HeadraceError, PreconditionFailed
from headrace.storage import locks
from headrace.storage.paths import from_destination
from headrace.storage.webdav_base import Call, DoorBase


class Locking(DoorBase):
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

    async def unlock(self, call: Call) -> Response | None:
        token = locks.parse_lock_token(call.header("lock-token"))
        lock = self.locks.get(token)
        if lock is None or not lock.covers(call.path):
            raise Conflict("The Lock-Token does not name a lock on this resource")  # RFC 4918 9.11.1
        if lock.username != call.subject.username and not call.subject.admin:
            raise Forbidden("Only the lock's owner may remove it")
        self.locks.unlock(lock)
        return Response(status_code=204)
