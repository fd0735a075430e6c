"""The door's HTTP third-party copy (see `tpc` for the protocol): `COPY` with `Source:` pulls a remote file
into the request's path, `COPY` with a `Destination:` on another server pushes the request's file there.

Everything that can be refused before any byte moves is refused with an ordinary HTTP error (400 for a
source or destination that is not http(s), an unsupported `Credential:`; 401/403 exactly as a PUT (pull)
or GET (push) of the path by this user, macaroon caveats included: UPLOAD for a pull, DOWNLOAD for a push;
403 for a remote whose addresses the transfer policy does not permit (tpc_policy: HEADRACE_TPC_DENY/ALLOW);
409/412/423 as a PUT; 429 past the user's concurrent copies, 503 past the door's). Then the answer is 202
with performance markers while the copy runs and a last `success: Created` or `failure: <reason>` line.

A pulled file takes the upload path (a pool's tmp/, hashed as it arrives, committed with the same events
as a PUT, owned by the requesting user) and becomes visible only when complete and verified: with
`RequireChecksumVerification` (true unless the client says false, as dCache) the remote must name a
checksum (its `Digest` answer to our `Want-Digest`), and a mismatch leaves nothing behind. A pushed file
is sent with its `Digest`, and the remote's answer (or its HEAD) is compared with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from sqlalchemy import Connection
from starlette.responses import Response

from headrace.auth.subject import Subject, W, X
from headrace.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    HeadraceError,
    PreconditionFailed,
    TooManyRequests,
)
from headrace.metrics import DOOR_BYTES
from headrace.storage.checksums import WIRE_NAMES, format_digest
from headrace.storage.local_store import LocalStore
from headrace.storage.namespace import Inode, Namespace
from headrace.storage.paths import from_destination
from headrace.storage.tpc import (
    MEDIA_TYPE,
    TpcSettings,
    compare,
    credential_mode,
    failure_line,
    perf_marker,
    remote_digest,
    remote_url,
    require_verification,
    success_line,
    transfer_headers,
    want_digest,
)
from headrace.storage.tpc_policy import TransferRefused
from headrace.storage.tpc_transfer import Progress, RemoteClient, RemoteFailure, blob_chunks
from headrace.storage.webdav_base import Call, DoorBase

log = logging.getLogger("headrace.door.tpc")


class TransfersBusy(HeadraceError):
    """The door runs as many third-party copies as it may."""

    status = 503
    title = "Service Unavailable"


def _writable_for_upload(conn: Connection, ns: Namespace, path: str, subject: Subject, overwrite: bool) -> Inode | None:
    """Refuse, before any data moves, what committing an upload at `path` would refuse (it checks again):
    the existing file's entry, or None."""
    parent, node = ns._dir_for_create(conn, path, subject)
    if node is None:
        Namespace._need(subject, W | X, parent)
        return None
    if node.is_dir:
        raise Conflict(f"Is a directory: {node.path}")
    if not overwrite:
        raise PreconditionFailed(f"Destination exists: {node.path}")
    Namespace._need(subject, W, node)
    return node


class ThirdPartyCopy(DoorBase):
    def __init__(self, service: Any, settings: Any) -> None:
        super().__init__(service, settings)
        self.tpc = TpcSettings.from_env()
        self.remote = RemoteClient(self.tpc)
        self._tpc_by_user: dict[str, int] = {}
        self._tpc_total = 0

    # -- which COPY ------------------------------------------------------------------------------------

    def third_party(self, call: Call) -> str | None:
        """ "pull" (a Source header), "push" (a Destination on another server) or None (a local COPY)."""
        if call.header("source") is not None:
            return "pull"
        dest = call.header("destination")
        if not dest:
            return None
        from_destination(dest)  # a malformed URL is a 400 wherever it points, as for a local COPY
        try:
            self._check_same_server(call, dest)  # type: ignore[attr-defined]  # Writing's
        except BadGateway:
            return "push"
        return None

    # -- limits -----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self, user: str) -> AsyncIterator[None]:
        if self._tpc_total >= self.tpc.total:
            raise TransfersBusy(
                f"This door is running {self._tpc_total} third-party copies, its limit; try again later",
                {"Retry-After": "10"},
            )
        if self._tpc_by_user.get(user, 0) >= self.tpc.per_user:
            raise TooManyRequests(
                f"User {user} is running {self.tpc.per_user} third-party copies, the most one user may run at "
                "once; try again when one has finished",
                {"Retry-After": "10"},
            )
        self._tpc_total += 1
        self._tpc_by_user[user] = self._tpc_by_user.get(user, 0) + 1
        try:
            yield
        finally:
            self._tpc_total -= 1
            left = self._tpc_by_user.pop(user) - 1
            if left:
                self._tpc_by_user[user] = left

    # -- the request ------------------------------------------------------------------------------------

    async def third_party_copy(self, call: Call, kind: str) -> Response | None:
        credential_mode(call.header("credential"))
        headers = transfer_headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in call.scope["headers"])
        verify = require_verification(call.header("requirechecksumverification"))
        want_value, wanted = want_digest(call.header("want-digest"))
        progress = Progress()
        job: Callable[[], Coroutine[Any, Any, None]]
        if kind == "pull":
            if call.header("destination"):
                raise BadRequest("A third-party pull names a Source, not a Destination too")
            source = remote_url(call.header("source") or "", "Source")
            call.principal.check("UPLOAD", call.path)
            await self._reachable(source, "Source")
            if call.path == "/":
                raise Conflict("Cannot copy onto the root directory")
            ow = (call.header("overwrite") or "T").strip().upper()
            if ow not in ("T", "F"):
                raise BadRequest("Overwrite must be T or F")
            existing = await self.db.read_short(_writable_for_upload, self.ns, call.path, call.subject, ow == "T")
            self.locks.check_write(call.path, call.tokens, call.subject.username, membership=existing is None)

            async def job() -> None:
                asked = {**headers, "Want-Digest": want_value}
                await self._pull(call, source, asked, wanted, verify, ow == "T", progress)

        else:
            dest = remote_url(call.header("destination") or "", "Destination")
            call.principal.check("DOWNLOAD", call.path)
            await self._reachable(dest, "Destination")
            node = await self.db.read_short(self.ns.stat_in, call.path, call.subject)
            if node.is_dir:
                raise Conflict(f"Is a directory: {call.principal.external(node.path)}; a third-party copy is of files")
            self.ns.check_readable(node, call.subject)
            if node.pool is None or node.blob is None:
                raise Conflict(f"{call.principal.external(node.path)} is on tape only: stage it first")

            async def job() -> None:
                await self._push(call, node, dest, headers, want_value, wanted, verify, progress)

        async with self._slot(call.subject.username):
            await self._markers(call, job, progress)
        return None

    async def _reachable(self, url: str, header: str) -> None:
        """403 when the transfer policy permits none of the remote's addresses (tpc_policy)."""
        try:
            await self.tpc.policy.check_url(url)
        except TransferRefused as exc:
            raise Forbidden(f"{header}: {exc}") from exc

    async def _markers(self, call: Call, job: Callable[[], Coroutine[Any, Any, None]], progress: Progress) -> None:
        """202 and the marker stream while `job` runs; its last line. A client that hangs up cancels the copy."""
        headers = [(b"content-type", MEDIA_TYPE.encode()), (b"cache-control", b"no-cache")]
        await call.send({"type": "http.response.start", "status": 202, "headers": headers})
        task: asyncio.Task[None] = asyncio.create_task(job())
        gone = asyncio.Event()

        async def watch() -> None:
            with contextlib.suppress(Exception):
                while (await call.receive())["type"] != "http.disconnect":
                    pass
                gone.set()
                task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await call.send({"type": "http.response.body", "body": perf_marker(0, time.time()), "more_body": True})
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=self.tpc.marker_interval)
                if not done:
                    marker = perf_marker(progress.transferred, time.time())
                    await call.send({"type": "http.response.body", "body": marker, "more_body": True})
            try:
                task.result()
                last = success_line()
            except asyncio.CancelledError:
                last = failure_line("the copy was cancelled")
            except RemoteFailure as exc:
                last = failure_line(str(exc))
            except HeadraceError as exc:
                last = failure_line(exc.detail)
            except Exception as exc:
                log.exception("third-party copy of %s failed", call.path)
                last = failure_line(f"internal error ({type(exc).__name__})")
            if not gone.is_set():
                body = perf_marker(progress.transferred, time.time()) + last
                await call.send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    # -- pull -------------------------------------------------------------------------------------------

    async def _pull(
        self,
        call: Call,
        source: str,
        headers: dict[str, str],
        wanted: list[str],
        verify: bool,
        overwrite: bool,
        progress: Progress,
    ) -> None:
        async with self.remote.get(source, headers, progress) as (body, response):
            sums = remote_digest(response.headers.get("digest"), wanted)
            if verify and not sums:
                raise RemoteFailure(
                    "the remote named no checksum (Digest) of the file to verify the copy against "
                    "(RequireChecksumVerification: false copies without)"
                )
            store = await self._target(body.length)
            # The remote's checksums are verified as the bytes arrive: a mismatch stores nothing.
            stored = await store.receive(body, set(wanted[:1]), sums)
        _, old, _ = await self._commit(call, store, stored, if_none_match_any=not overwrite, cause=call.cause)
        DOOR_BYTES.labels("in").inc(stored.size)
        if old is not None:
            await self.service.drop_blobs([old])

    # -- push -------------------------------------------------------------------------------------------

    async def _push(
        self,
        call: Call,
        node: Inode,
        dest: str,
        headers: dict[str, str],
        want_value: str,
        wanted: list[str],
        verify: bool,
        progress: Progress,
    ) -> None:
        assert node.pool is not None and node.blob is not None
        store = await self.service.stores.get(node.pool)
        sums = dict(node.checksums)
        missing = [t for t in wanted[:1] if t not in sums]
        if missing:
            sums.update(await store.checksums(node.blob, set(missing)))
        # One checksum type, sent and asked for: a remote computes each type it is asked for as it receives
        # (MD5 and SHA-256 of a large file cost it seconds), and one agreeing type is the verification.
        kind = next((t for t in wanted if t in sums), None) or next(iter(sums), None)
        sent = dict(headers)
        if kind is not None:
            sent["Want-Digest"] = WIRE_NAMES[kind]
            sent["Digest"] = format_digest(sums, [kind]) or ""  # verified as it arrives (dCache and headrace do)
        else:
            sent["Want-Digest"] = want_value
        label = call.principal.external(node.path)
        # A blob of this process's own pool goes by sendfile(2); a pool process's through the store's reads.
        body = store.pool.blob_path_str(node.blob) if isinstance(store, LocalStore) else None
        chunks = body or blob_chunks(store, node.blob, node.size, label)
        if isinstance(store, LocalStore):  # being read: a tape agent does not evict it meanwhile
            store.reading[node.blob] = store.reading.get(node.blob, 0) + 1
        try:
            answer = await self.remote.put(dest, sent, node.size, chunks, progress)
        finally:
            if isinstance(store, LocalStore):
                left = store.reading.pop(node.blob, 1) - 1
                if left:
                    store.reading[node.blob] = left
        DOOR_BYTES.labels("out").inc(node.size)
        theirs = remote_digest(answer.get("digest"), wanted)
        if not theirs and verify:
            theirs = remote_digest(await self.remote.head_digest(dest, headers, sent["Want-Digest"]), wanted)
        if theirs:
            for t in theirs:
                if t not in sums:
                    sums.update(await store.checksums(node.blob, {t}))
            why = compare(sums, theirs)
            if why is not None:
                await self.remote.delete(dest, headers)
                raise RemoteFailure(why)
        elif verify:
            raise RemoteFailure(
                "the remote named no checksum (Digest) of the copy to verify it against "
                "(RequireChecksumVerification: false copies without)"
            )
        self.ns.post_read(node, call.subject, call.cause)
