"""The storage service as one object: database, namespace, pools, users and tokens, with start-up recovery.

`StorageService.open(settings)` migrates the database, creates the root and the admin user, and recovers
from an unclean stop: partial uploads in the pools' tmp/ are removed and, if the last stop was not clean,
blobs that no namespace entry refers to are removed too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select

from headrace.auth.access import Authenticator, FailedLogins
from headrace.auth.jwt_bearer import jwt_verifier
from headrace.auth.macaroons import MacaroonAuthority, load_root_key
from headrace.auth.users import Users, new_key
from headrace.config import Settings, private_dir, restrict_mode
from headrace.db.engine import Database
from headrace.db.schema import state
from headrace.errors import Exists
from headrace.events.log import EventLog
from headrace.storage.blobstore import Stores
from headrace.storage.local_store import LocalStore
from headrace.storage.namespace import Blob, Namespace
from headrace.storage.pool import Pool
from headrace.storage.pool_client import PoolDirectory

log = logging.getLogger("headrace.storage")

CLEAN_MARK = "clean-shutdown"


@dataclass
class StartReport:
    admin_key_generated: str | None
    partial_uploads_removed: int
    orphans_removed: int
    clean_before: bool


class StorageService:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.namespace = Namespace(db, read_events=settings.read_events)
        #: The outbox read as an ordered log; readers are woken on every commit.
        self.log = EventLog(db)
        self.users = Users(db)
        self.pools = {
            f"pool{i}": Pool(f"pool{i}", d, max_bytes=settings.pool_max_bytes, fsync=settings.fsync)
            for i, d in enumerate(settings.pool_dirs)
        }
        #: Pools running as processes of their own (`headrace pool`), as registered in the database. When any
        #: is registered, new files go to them; files in this process's own pools are still served from there.
        self.remote_pools = PoolDirectory(db, settings.pool_secret)
        #: Blocking file I/O of this process's own pools.
        self.io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="store-io")
        #: Every pool behind one interface: the door reads and writes through this.
        self.stores = Stores({n: LocalStore(p, self.io) for n, p in self.pools.items()}, self.remote_pools)
        self.macaroons = MacaroonAuthority(load_root_key(db))
        #: Whether this process recovers the pools at start and marks a clean stop (see `open`).
        self.recovers = True
        self.auth = Authenticator(
            self.users,
            self.macaroons,
            anonymous=settings.anonymous,
            failed_logins=FailedLogins(settings.auth_failures, settings.auth_failure_window),
            jwt=jwt_verifier(settings, self.users),
        )

    @classmethod
    def open(cls, settings: Settings, *, recover: bool = True) -> tuple[StorageService, StartReport]:
        """Open (and migrate) the database and start the service. `recover=False` is for a process that
        shares its pools and database with others that are running (`headrace door`, `frontend`,
        `controller`): it leaves the pools' tmp/ and blobs alone (another door's upload may be in
        progress) and the clean-stop mark too (it is the embedded server's)."""
        # The data directory holds the database (with the macaroon root key) and the pools: only ours to read.
        private_dir(settings.data_dir)
        restrict_mode(settings.cli_config, 0o600)
        db = Database(settings.database_url, durable=settings.fsync)
        db.migrate()
        service = cls(settings, db)
        service.macaroons.follow(lambda: load_root_key(db))  # `headrace token rotate-key` holds here too
        service.recovers = recover
        report = service._start()
        return service, report

    # -- state ---------------------------------------------------------------------------------------------

    def get_state(self, name: str) -> str | None:
        with self.db.reader.connect() as conn:
            row = conn.execute(select(state.c.value).where(state.c.name == name)).first()
        return None if row is None else str(row.value)

    def set_state(self, name: str, value: str | None) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(delete(state).where(state.c.name == name))
            if value is not None:
                conn.execute(insert(state).values(name=name, value=value))

    # -- start and stop ------------------------------------------------------------------------------------

    def _start(self) -> StartReport:
        self.namespace.bootstrap()
        generated = self._ensure_admin()
        if not self.recovers:
            for name, pool in self.pools.items():
                pool.used_bytes = self.namespace.bytes_in(name)
            return StartReport(generated, 0, 0, True)
        clean = self.get_state(CLEAN_MARK) is not None
        self.set_state(CLEAN_MARK, None)  # until the next clean stop
        partial = sum(p.clear_tmp() for p in self.pools.values())
        orphans = 0
        if not clean:
            for name, pool in self.pools.items():
                orphans += pool.remove_orphans(self.namespace.blobs_in(name))
        for name, pool in self.pools.items():
            pool.used_bytes = self.namespace.bytes_in(name)
        if partial or orphans:
            log.warning("recovery: removed %d partial uploads and %d orphaned blobs", partial, orphans)
        return StartReport(generated, partial, orphans, clean)

    def _ensure_admin(self) -> str | None:
        """Create or re-key the admin user; returns a newly generated key (to print once), if any. Processes
        starting at once on a new database (the roles of a deployment) may all find no admin: one creates
        it, the others then find it there."""
        key = self.settings.admin_key
        if not self.users.exists("admin"):
            made = key or new_key()
            with contextlib.suppress(Exists):  # another process starting at once made it first
                self.users.create("admin", made, uid=0, gids=(0,), admin=True, generated=not key)
                self.write_cli_config(made)
                return None if key else made
        if key:
            if self.users.authenticate("admin", key) is None:
                self.users.set_key("admin", key)
            self.write_cli_config(key)
        return None

    def write_cli_config(self, key: str) -> None:
        """Point the CLI at this server with the admin's key, so `headrace ls /` works straight away."""
        path: Path = self.settings.cli_config
        try:
            current = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            current = {}
        current.update({"door": self.settings.door_url, "api": self.settings.api_url, "username": "admin", "key": key})
        if self.settings.tls_cert and os.environ.get("HEADRACE_CA_FILE"):  # the CA a --tls-self-signed server made
            current["ca_file"] = os.environ["HEADRACE_CA_FILE"]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: roles may start at once
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(current, f, indent=2)
        os.replace(tmp, path)

    def close(self) -> None:
        """A clean stop: mark it so that the next start can skip the orphan scan."""
        self.macaroons.close()
        if self.recovers:
            self.set_state(CLEAN_MARK, "1")
        self.db.close()

    # -- tape --------------------------------------------------------------------------------------------------

    def tape_agents(self) -> list[Any]:
        """A tape agent (`headrace.tape.agent.TapeAgent`) for each of this process's pools, when an HSM is
        configured; the caller starts and stops them."""
        hsm = self.settings.tape.hsm()
        if hsm is None:
            return []
        from headrace.tape.agent import TapeAgent

        return [
            TapeAgent(self.db, self.namespace, pool, self.stores.local[name], hsm, self.settings.tape)  # type: ignore[arg-type]
            for name, pool in self.pools.items()
        ]

    # -- helpers for the transports ----------------------------------------------------------------------

    def choose_pool(self) -> Pool:
        return max(self.pools.values(), key=lambda p: p.free_bytes())

    def pool(self, name: str) -> Pool:
        return self.pools[name]

    async def drop_blobs(self, blobs: list[Blob]) -> None:
        """Remove data no longer referenced (after the transaction that dropped it has committed). A pool
        process that cannot be reached keeps the blob until its orphan sweep removes it."""
        await self.stores.drop(blobs)
