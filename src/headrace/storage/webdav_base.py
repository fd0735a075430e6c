"""The WebDAV door's shared parts: the request being answered (`Call`) and `DoorBase`, which the door's
concerns (webdav_read, webdav_write, webdav_props, webdav_locks, macaroon_request) extend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

from headrace.auth.access import Principal
from headrace.config import Settings
from headrace.errors import HeadraceError
from headrace.http.body import RequestBody, read_small
from headrace.http_common import content_length, header
from headrace.storage import locks
from headrace.storage import webdav_xml as dav
from headrace.storage.blobstore import BlobStore, Stored, StoreUnreachable
from headrace.storage.namespace import Blob, Inode
from headrace.storage.service import StorageService

#: The largest body of a request other than PUT (PROPFIND/PROPPATCH/LOCK XML, macaroon requests): 413 past it.
MAX_XML_BODY = 1024 * 1024


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


class DoorBase:
    """What every part of the door shares: the service, the lock table, request bodies, and new files."""

    def __init__(self, service: StorageService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.ns = service.namespace
        self.db = service.db
        self.locks = locks.LockManager()

    @staticmethod
    def _origin(call: Call) -> str:
        return f"{call.scope.get('scheme', 'http')}://{call.header('host') or ''}"

    async def _small_body(self, call: Call) -> bytes:
        """A non-PUT body, whole: 413 past MAX_XML_BODY, 408 when the client sends nothing for `body_timeout`."""
        length = content_length(call.scope)
        return await read_small(call.receive, length, limit=MAX_XML_BODY, timeout=self.settings.body_timeout)

    async def _discard_body(self, call: Call) -> None:
        await RequestBody(call.receive, content_length(call.scope), self.settings.upload_idle_timeout).discard()

    async def _target(self, length: int | None) -> BlobStore:
        """Where a new file goes: a pool process when any is registered, else this process's own pool."""
        store = await self.service.stores.choose(length)
        assert store is not None  # without exclusions there is always one
        return store

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

    async def _create_empty(self, call: Call) -> Inode:
        target = await self._target(0)
        stored = await target.write(b"")
        node, _, _ = await self._commit(call, target, stored, if_none_match_any=True)
        return node

    def _quota(self) -> tuple[int, int]:
        return self.service.stores.quota()

    def _lockdiscovery(self, call: Call, path: str) -> str:
        now = self.locks.now()
        return "".join(locks.render_activelock(lk, self._lock_href(call, lk), now) for lk in self.locks.covering(path))

    def _lock_href(self, call: Call, lock: locks.Lock) -> str:
        try:
            return call.href(lock.root, lock.is_dir)
        except HeadraceError:  # rooted above this token's view, so it covers all of it: show its root
            return dav.href_for("/", True)


def next_page(it: Any, n: int = 500) -> list[Inode]:
    page: list[Inode] = []
    for item in it:
        page.append(item)
        if len(page) >= n:
            break
    return page
