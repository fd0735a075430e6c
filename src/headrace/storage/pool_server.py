"""`headrace pool`: one pool directory served over HTTP, for doors on this host or others.

The pool registers its name, URL and free space in the shared database's `pools` table and heartbeats there;
doors read the table to find it. It answers two kinds of request:

- a door's own, under `/.pool/blobs/<blob>` with `Authorization: Bearer <pool token>`: PUT (streamed to
  tmp/, hashed, fsynced and renamed into data/ before the 201, which carries size and checksums), GET/HEAD
  with Range, DELETE, POST `.../copy`, GET `.../checksums`; the door commits the namespace change itself;
- a redirected client's, on the file's path with `?token=<pool token>`: GET/HEAD with Range, and PUT, which
  the pool commits into the namespace itself (the token says as whom and with which preconditions), so that
  the file becomes visible, with its events, only after its data is durable here and its checksum verified.

At start, partial uploads left in tmp/ are removed, and (then every `orphan_sweep` seconds) blobs that no
namespace entry refers to and that are older than `orphan_grace` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from headrace.auth.subject import Subject
from headrace.db.engine import Database
from headrace.errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    RangeNotSatisfiable,
    Unauthorized,
)
from headrace.http import conditionals
from headrace.http.body import RequestBody
from headrace.http.ranges import answer_range, unsatisfiable_headers
from headrace.http_common import (
    CONTENT_HEADERS,
    acknowledge_lifespan,
    answer,
    content_length,
    error_response,
    granian_server,
    header,
    query_param,
)
from headrace.storage import pool_protocol as proto
from headrace.storage.blobstore import Stored, Stores
from headrace.storage.checksums import FROM_WIRE, SUPPORTED, expected_checksums, format_digest, parse_want_digest
from headrace.storage.local_store import LocalStore
from headrace.storage.namespace import Namespace
from headrace.storage.pool import BLOB_NAME, Pool
from headrace.storage.pool_client import PoolDirectory
from headrace.storage.pool_registry import heartbeat, mark_offline, pool_secret, register
from headrace.tasks import stop_task
from headrace.tls_server import ServerTLS

log = logging.getLogger("headrace.pool")

NAME_FILE = "pool.json"
#: (method, what follows the blob in the path) -> the token operation it needs.
_ROUTES = {
    ("PUT", ""): "write",
    ("GET", ""): "read",
    ("HEAD", ""): "read",
    ("DELETE", ""): "delete",
    ("POST", "copy"): "copy",
    ("GET", "checksums"): "sums",
}


@dataclass(frozen=True)
class PoolOptions:
    data: Path
    db_url: str
    host: str = "127.0.0.1"
    port: int = 2881
    name: str = ""
    #: The URL doors and redirected clients use; empty: http://HOST:PORT (https:// with TLS).
    url: str = ""
    max_bytes: int = 0
    fsync: bool = True
    #: HEADRACE_POOL_SECRET; empty: the shared database's.
    secret: str = field(default="", repr=False)
    heartbeat_seconds: float = 5.0
    orphan_grace: float = 600.0
    orphan_sweep: float = 3600.0
    upload_idle_timeout: float = 60.0
    #: Close a connection whose request head has not arrived in this many seconds.
    header_timeout: float = 30.0
    log_level: str = "info"
    #: TLS: `headrace.tls_server.ServerTLS` (None: plain HTTP).
    tls: ServerTLS | None = None

    @property
    def public_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return (self.url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    @property
    def lifetime(self) -> float:
        """How long a heartbeat keeps the pool alive for doors: three missed beats and it is offline."""
        return 3 * self.heartbeat_seconds


def resolve_name(data: Path, requested: str) -> str:
    """The pool's name, kept in DATA/pool.json so that it stays what the namespace calls it: a name given
    at first start (default: short host name and directory name) is kept; a different one is refused later."""
    path = data / NAME_FILE
    stored: str | None = None
    if path.exists():
        try:
            stored = str(json.loads(path.read_text())["name"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is unreadable: {exc}") from exc
    if stored and requested and requested != stored:
        raise ValueError(f"{data} holds pool {stored!r}; it cannot be served as {requested!r}")
    name = stored or requested or f"{socket.gethostname().split('.')[0]}-{data.resolve().name}"
    if not name or len(name) > 64 or any(c in name for c in "/ \t\n"):
        raise ValueError(f"Invalid pool name {name!r} (at most 64 characters, no spaces or slashes)")
    if not stored:
        data.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"name": name}) + "\n")
        os.replace(tmp, path)
    return name


class PoolServer:
    """The pool's ASGI application."""

    def __init__(self, pool: Pool, options: PoolOptions, db: Database, secret: str) -> None:
        self.pool = pool
        self.options = options
        self.db = db
        self.secret = secret
        self.ns = Namespace(db, read_events=False)  # a pool commits uploads; reads are recorded by doors
        self.io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="pool-io")
        self.store = LocalStore(pool, self.io)
        #: Other pools, for dropping the blob a redirected overwrite replaced when it lives elsewhere.
        self.directory = PoolDirectory(db, secret)
        self.stores = Stores({self.name: self.store}, self.directory)

    @property
    def name(self) -> str:
        return self.pool.name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        await answer(scope, receive, send, lambda tracking_send: self.dispatch(scope, receive, tracking_send), log=log)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> Response | None:
        method, path = scope["method"], scope["path"]
        client_token = query_param(scope, proto.TOKEN_PARAM)
        if client_token is not None:
            claims = proto.verify(self.secret, client_token, pool=self.name, aud="client")
            if not BLOB_NAME.fullmatch(claims.blob):
                raise Forbidden("The pool token names no blob")
            if method in ("GET", "HEAD") and claims.op == "read":
                return await self.serve(scope, receive, send, claims.blob, claims.headers, head=method == "HEAD")
            if method == "PUT" and claims.op == "write" and claims.commit is not None:
                return await self.client_put(scope, receive, claims)
            raise Forbidden(f"The pool token does not allow {method} here")
        if path == proto.HEALTH_PATH and method in ("GET", "HEAD"):
            body = {"name": self.name, "free": self.pool.free_bytes(), "used": self.pool.used_bytes}
            return Response(json.dumps(body), media_type="application/json")
        if not path.startswith(proto.API_PREFIX):
            raise NotFound(f"No such pool resource: {path}")
        blob, _, action = path[len(proto.API_PREFIX) :].partition("/")
        if not BLOB_NAME.fullmatch(blob):
            raise NotFound(f"Not a blob name: {blob!r}")
        auth = header(scope, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("A pool token is required (Authorization: Bearer)")
        claims = proto.verify(self.secret, token.strip(), pool=self.name, aud="door")
        if claims.blob != blob:
            raise Forbidden(f"The pool token is for blob {claims.blob}, not {blob}")
        need = _ROUTES.get((method, action))
        if need is None:
            raise MethodNotAllowed(f"{method} is not supported on {path}")
        if claims.op != need:
            raise Forbidden(f"The pool token is for {claims.op}, not {need}")
        if need == "write":
            return await self.door_put(scope, receive, blob)
        if need == "read":
            return await self.serve(scope, receive, send, blob, {}, head=method == "HEAD")
        if need == "delete":
            await self.store.delete(blob)
            return Response(status_code=204)
        if need == "copy":
            if not claims.dst:
                raise BadRequest("A copy token names its new blob")
            return await self.copy(blob, claims.dst)
        return await self.checksums(scope, blob)

    # -- writing -------------------------------------------------------------------------------------------

    async def _receive(self, scope: Scope, receive: Receive, blob: str, types: set[str]) -> Stored:
        """Stream the body into a new blob called `blob`; complete, durable and its Digest and Content-MD5
        verified, or nothing."""
        try:
            expected = expected_checksums(header(scope, b"digest") or "", header(scope, b"content-md5") or "")
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        body = RequestBody(receive, content_length(scope), self.options.upload_idle_timeout)
        return await self.store.receive(body, types, expected, blob=blob)

    async def door_put(self, scope: Scope, receive: Receive, blob: str) -> Response:
        types = _types(query_param(scope, "sums"))
        stored = await self._receive(scope, receive, blob, types)
        body = {"blob": blob, "size": stored.size, "checksums": stored.checksums}
        return Response(json.dumps(body), status_code=201, media_type="application/json")

    async def client_put(self, scope: Scope, receive: Receive, claims: proto.PoolToken) -> Response:
        commit = claims.commit
        assert commit is not None
        subject = Subject(commit.username, commit.uid, commit.gids, commit.admin)
        # What the client asked the door for, and what it asks here (a client repeats its headers on redirect).
        want = list(commit.want)
        want += [w for w in parse_want_digest(header(scope, b"want-digest") or "") if w not in want]
        stored = await self._receive(scope, receive, claims.blob, set(want))
        try:
            node, old, created = await self.db.group.run(
                self.ns.commit_upload_in,
                commit.path,
                subject,
                pool=self.name,
                blob=claims.blob,
                size=stored.size,
                sums=stored.checksums,
                if_match=commit.if_match,
                if_none_match_any=commit.if_none_match_any,
                cause=commit.cause,
            )
        except BaseException:
            await self.store.delete(stored.blob, stored.size)
            raise
        if old is not None:
            # The blob the overwrite replaced: here, or in the pool that holds it.
            await self.stores.drop([old])
        headers = {"ETag": node.etag}
        digest = format_digest(stored.checksums, want)
        if digest:
            headers["Digest"] = digest
        if created and commit.location:
            headers["Location"] = commit.location
        return Response(status_code=201 if created else 204, headers=headers)

    async def copy(self, src: str, dst: str) -> Response:
        if not BLOB_NAME.fullmatch(dst):
            raise BadRequest(f"Not a blob name: {dst!r}")
        stored = await self.store.copy(src, dst=dst)
        return Response(json.dumps({"blob": dst, "size": stored.size}), status_code=201, media_type="application/json")

    async def checksums(self, scope: Scope, blob: str) -> Response:
        sums = await self.store.checksums(blob, _types(query_param(scope, "types")))
        return Response(json.dumps({"checksums": sums}), media_type="application/json")

    # -- reading -------------------------------------------------------------------------------------------

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, blob: str, extra: dict[str, str], *, head: bool
    ) -> Response | None:
        path = self.pool.blob_path(blob)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"No blob {blob} in pool {self.name}") from exc
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **CONTENT_HEADERS, **extra}
        rng = header(scope, b"range")
        # The validators the door put in a client's token; a door's own request sends no If-Range.
        mtime = conditionals.parse_http_date(extra.get("Last-Modified", ""))
        honoured = conditionals.if_range_holds(header(scope, b"if-range"), extra.get("ETag"), mtime)
        try:
            start, length, status = answer_range(rng if honoured else None, size, headers)
        except RangeNotSatisfiable as exc:
            return error_response(exc, unsatisfiable_headers(size))
        if head:
            return Response(status_code=status, headers=headers)
        await self.store.send(scope, send, receive, blob, status, headers, start, length, label=f"blob {blob}")
        return None

    # -- life ----------------------------------------------------------------------------------------------

    async def beat_forever(self) -> None:
        """Heartbeat, and sweep orphans now and then; a database outage is logged, never fatal."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self.options.orphan_sweep
        while True:
            await asyncio.sleep(self.options.heartbeat_seconds)
            try:
                await self.db.write(
                    heartbeat,
                    self.db,
                    self.name,
                    self.options.public_url,
                    free=self.pool.free_bytes(),
                    used=self.pool.used_bytes,
                    lifetime=self.options.lifetime,
                )
            except Exception as exc:  # the database may be restarting: keep serving, try again
                log.warning("heartbeat failed: %s", exc)
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + self.options.orphan_sweep
                try:
                    await self.sweep()
                except Exception as exc:
                    log.warning("orphan sweep failed: %s", exc)

    async def sweep(self) -> int:
        referenced = await self.db.read(lambda: list(self.ns.blobs_in(self.name)))
        n = await asyncio.get_running_loop().run_in_executor(
            self.io, lambda: self.pool.remove_orphans(referenced, older_than=self.options.orphan_grace)
        )
        if n:
            log.warning("removed %d orphaned blobs", n)
        return n

    async def close(self) -> None:
        await self.directory.aclose()
        self.io.shutdown(wait=False)


# -- helpers -----------------------------------------------------------------------------------------------


def _types(value: str | None) -> set[str]:
    """Namespace checksum names from a comma-separated list of namespace or RFC 3230 names."""
    out: set[str] = set()
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        name = item if item in SUPPORTED else FROM_WIRE.get(item.lower())
        if name is None:
            raise BadRequest(f"Unknown checksum type {item!r}")
        out.add(name)
    return out


# -- the process -------------------------------------------------------------------------------------------


def check_listen(host: str, port: int) -> None:
    """ValueError, in one line, if nothing can listen at host:port (taken, or not an address of this host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ValueError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def tape_agent(db: Database, server: PoolServer, pool: Pool) -> Any:
    """This pool's tape agent when HEADRACE_HSM_COMMAND or HEADRACE_TAPE_SIMULATOR names an HSM (dCache's
    pools flush and stage their own files)."""
    from headrace.tape.agent import TapeAgent
    from headrace.tape.config import TapeSettings

    cfg = TapeSettings.from_env()
    hsm = cfg.hsm()
    if hsm is None:
        return None
    print(f"headrace: tape     {cfg.describe()}", flush=True)
    return TapeAgent(db, server.ns, pool, server.store, hsm, cfg)


async def run(options: PoolOptions) -> None:
    name = resolve_name(options.data, options.name)
    check_listen(options.host, options.port)  # before registering a URL that nothing would answer at
    db = Database(options.db_url, durable=options.fsync)
    db.migrate()
    secret = pool_secret(db, options.secret)
    pool = Pool(name, options.data, max_bytes=options.max_bytes, fsync=options.fsync)
    server = PoolServer(pool, options, db, secret)
    partial = pool.clear_tmp()
    pool.used_bytes = server.ns.bytes_in(name)
    register(db, name, options.public_url, free=pool.free_bytes(), used=pool.used_bytes, lifetime=options.lifetime)
    orphans = await server.sweep()
    print(f"headrace: pool {name} at {options.public_url}  (data {options.data.resolve()})", flush=True)
    if partial or orphans:
        print(f"headrace: recovered: removed {partial} partial uploads, {orphans} orphaned blobs", flush=True)
    tls = options.tls.granian() if options.tls is not None else None
    http = granian_server(server, options.host, options.port, header_timeout=options.header_timeout, tls=tls)
    beats = asyncio.create_task(server.beat_forever())
    tape = tape_agent(db, server, pool)
    if tape is not None:
        await tape.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, http.stop)
    try:
        await http.serve()
    finally:
        if tape is not None:
            await tape.stop()
        await stop_task(beats)
        with contextlib.suppress(Exception):
            mark_offline(db, name)
        await server.close()
        db.close()
    print(f"headrace: pool {name} stopped cleanly", flush=True)


def main(options: PoolOptions) -> None:
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.run(run(options))
    except ImportError:
        asyncio.run(run(options))
