"""Running activations on this process's warm workers: what the embedded controller and a `headrace invoker`
share. One `Runner` keeps an `ActionPool` per action version (code written out of the database into
`code_root/<namespace>/<name>/<version>/`, each pool in its sandbox: functions/sandbox.py), gives each
activation its environment (the `__OW_*` variables and, for an action with storage access, a macaroon minted
for that activation, acting as the action's owner until its deadline), runs sequences component by
component, turns an `Outcome` into the activation record's fields, and sizes the pools (the autoscaler).

It decides nothing about queues, retries or where records go: its callers do.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import logging
import math
import os
import shutil
import time
import zipfile
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Gauge

from headrace.auth.macaroons import MacaroonAuthority
from headrace.auth.users import Users
from headrace.db.engine import Database
from headrace.functions import names
from headrace.functions.entities import ActionRow, ActivationFields, ActivationRow, Scaling
from headrace.functions.invoker import ActionPool, ActionSpec, Outcome
from headrace.functions.model import KeyValue, as_dict
from headrace.functions.sandbox import BUBBLEWRAP, INSTALL_HINT, Sandbox
from headrace.functions.store import FunctionStore, new_activation_id, now_ms
from headrace.metrics import FN_QUEUED, FN_RUNNING, FN_WORKERS

log = logging.getLogger("headrace.functions")

OWNER_CACHE_SECONDS = 600.0  # how long an owner's uid and groups are reused for minting
TOKEN_GRACE_MS = 5_000  # an activation's credential outlives its deadline by this much
SCALE_DOWN_WINDOW = 10.0  # seconds a pool must have been larger than needed before it shrinks

#: An action by (namespace, name), or None when there is none.
ActionLookup = Callable[[str, str], Awaitable[ActionRow | None]]


class Host(Protocol):
    """What running activations needs of the storage service: the database, users and token minting."""

    db: Database
    users: Users
    macaroons: MacaroonAuthority


@dataclass
class ActionQueue:
    items: deque[Mapping[str, Any]] = field(default_factory=deque)  # activation_id, order_key and the caller's
    running: int = 0
    busy_keys: set[str] = field(default_factory=set)
    surplus_since: float | None = None
    last_work: float = field(default_factory=time.monotonic)


def next_runnable(aq: ActionQueue, ordered: bool) -> Mapping[str, Any] | None:
    """The next activation of `aq` that may start: the first; with `ordered`, the first whose path (order
    key) has no activation running or waiting ahead of it."""
    if not ordered:
        return aq.items.popleft()
    waiting: set[str] = set()
    for i, row in enumerate(aq.items):
        k = row.get("order_key") or row["activation_id"]
        if k in aq.busy_keys or k in waiting:
            waiting.add(k)
            continue
        del aq.items[i]
        return row
    return None


def capacity(action: Mapping[str, Any] | None) -> int:
    """Activations of one action that run at once: maxScale workers times their concurrency."""
    if action is None:
        return 1  # finishes at once as dead
    return max(1, Scaling.of(action).max_scale) * max(1, int(action["limits"].get("concurrency", 1)))


def default_worker_cap() -> int:
    """Workers the server runs at once: four per CPU, and no more than memory holds at 256 MB each."""
    cpus = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        by_memory = max(1, total_kb // (256 * 1024))
    except (OSError, StopIteration, ValueError):
        by_memory = 64
    return max(2, min(4 * cpus, by_memory))


def storage_access(action: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the action's `storage` annotation asks for: None (no storage access: no sockets, no token),
    or {"path": str | None, "activities": list[str] | None} (true: all its owner may do)."""
    value = next((a.get("value") for a in action.get("annotations", []) if a.get("key") == "storage"), None)
    if not value:
        return None
    if isinstance(value, dict):
        path = value.get("path")
        acts = value.get("activities") or value.get("activity")
        if isinstance(acts, str):
            acts = [a.strip() for a in acts.split(",") if a.strip()]
        return {"path": str(path) if path else None, "activities": [str(a) for a in acts] if acts else None}
    return {"path": None, "activities": None}


def record_of(action: ActionRow, row: ActivationRow, outcome: Outcome) -> ActivationFields:
    """The activation record's fields for one finished attempt (OpenWhisk's annotations included)."""
    annotations: list[KeyValue] = [
        {"key": "path", "value": f"{action['namespace']}/{action['name']}"},
        {"key": "waitTime", "value": max(0, outcome.start - int(row["created"]))},
        {"key": "kind", "value": action["exec"].get("kind", "python:3")},
        {"key": "limits", "value": action["limits"]},
        {"key": "attempt", "value": row["attempt"]},
    ]
    if outcome.cold and outcome.init_ms is not None:
        annotations.append({"key": "initTime", "value": round(outcome.init_ms)})
    if row.get("event_offset") is not None:
        annotations.append({"key": "eventOffset", "value": row["event_offset"]})
        # the file and flag of the storage event that made it (the console links the activation to its file)
        args = row.get("args") or {}
        if isinstance(args.get("path"), str):
            annotations.append({"key": "event", "value": {"path": args["path"], "mask": args.get("mask")}})
    if row.get("trigger"):
        annotations.append({"key": "causedBy", "value": "trigger"})
    if outcome.sandbox is not None:
        annotations.append({"key": "sandbox", "value": outcome.sandbox})
    return {
        "start": outcome.start,
        "end": outcome.end,
        "status_code": outcome.status,
        "result": outcome.result,
        "logs": outcome.logs,
        "annotations": annotations,
        "attempt": row["attempt"],
    }


def internal(message: str, code: int = 3) -> ActivationFields:
    """The record of an attempt that never reached a worker (an internal or a developer error)."""
    stamp = now_ms()
    return {"start": stamp, "end": stamp, "status_code": code, "result": {"error": message}, "logs": []}


class Runner:
    def __init__(
        self,
        host: Host,
        *,
        code_root: Path,
        api_url: str,
        door_url: str,
        lookup: ActionLookup,
        max_workers: int = 0,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.host = host
        self.db = host.db
        self.store = FunctionStore(host.db)
        self.code_root = code_root
        self.api_url = api_url
        self.door_url = door_url
        self.lookup = lookup
        self.pools: dict[str, ActionPool] = {}
        self._owners: dict[str, tuple[float, str, int, tuple[int, ...]]] = {}  # ns -> (at, name, uid, gids)
        self._runs: set[asyncio.Task[None]] = set()
        self._gauges: dict[tuple[Gauge, str], Any] = {}  # (gauge, action) -> its child
        self._gauge_values: dict[tuple[Gauge, str], int] = {}  # what each was set to last
        #: The most workers this process runs at once: no pool grows past it, minScale included.
        self.max_workers = max_workers or default_worker_cap()
        if sandbox is None:
            from headrace.config import Settings

            # what a function must never see: the data directory (database, pools, code of other
            # namespaces) and the CLI config with its keys
            sandbox = Sandbox(forbidden=[code_root.resolve().parent, Settings.from_env().cli_config])
        self.sandbox = sandbox
        if sandbox.settings.mode == BUBBLEWRAP and shutil.which("bwrap") is None:
            log.warning("functions: %s", INSTALL_HINT)

    async def close(self) -> None:
        for t in list(self._runs):
            t.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        for pool in self.pools.values():
            await pool.close()
        self.sandbox.close()

    # -- running ------------------------------------------------------------------------------------------

    async def execute(self, action: ActionRow, aid: str, args: dict[str, Any], start: int) -> Outcome:
        """Run one action (a Python function, or a sequence of them) for activation `aid`."""
        params = {**as_dict(action["parameters"]), **args}
        if action["exec"].get("kind") == "sequence":
            return await self._sequence(action, aid, params, start)
        deadline = start + int(action["limits"].get("timeout", 60_000))
        request = {
            "id": aid,
            "args": params,
            "deadline": deadline,
            "action": f"/{action['namespace']}/{action['name']}",
            "namespace": action["namespace"],
            "env": self._env(action, aid, deadline),
        }
        return await self.pool(action).run(request)

    async def _sequence(self, seq: ActionRow, aid: str, args: dict[str, Any], start: int) -> Outcome:
        """Each component runs with the previous one's result; each gets an activation record of its own
        (caused by the sequence's), and the sequence's logs list their ids, as OpenWhisk's do."""
        ids: list[str] = []
        result: dict[str, Any] = args
        for name in seq["exec"]["components"]:
            home = names.parse(name, seq["namespace"])  # "/ns/name" or "/ns/pkg/name"
            component = await self.lookup(home.namespace, home.path)
            if component is None or component["exec"].get("kind") == "sequence":
                error = f"Sequence component {name} does not exist or is itself a sequence."
                return Outcome(2, {"error": error}, ids, start, now_ms())
            cid = new_activation_id()
            ids.append(cid)
            part = await self.execute(component, cid, result, now_ms())
            record: ActivationRow = {
                "activation_id": cid,
                "namespace": component["namespace"],
                "name": component["name"],
                "version": f"0.0.{component['version']}",
                "subject": seq["namespace"],
                "state": "done",
                "created": part.start,
                "not_before": part.start,
                "start": part.start,
                "end": part.end,
                "status_code": part.status,
                "result": part.result,
                "logs": part.logs,
                "cause": aid,
                "annotations": [{"key": "causedBy", "value": "sequence"}],
            }
            await self.db.group.run(self.store.record_in, record)
            if part.status != 0:
                return Outcome(part.status, part.result, ids, start, part.end)
            result = part.result
        return Outcome(0, result, ids, start, now_ms())

    def _env(self, action: ActionRow, aid: str, deadline: int) -> dict[str, str]:
        env = {
            "__OW_ACTIVATION_ID": aid,
            "__OW_ACTION_NAME": f"/{action['namespace']}/{action['name']}",
            "__OW_ACTION_VERSION": f"0.0.{action['version']}",
            "__OW_NAMESPACE": action["namespace"],
            "__OW_DEADLINE": str(deadline),
            "__OW_API_HOST": self.api_url,
            "HEADRACE_DOOR_URL": self.door_url,
            "HEADRACE_API_URL": self.api_url,
        }
        access = storage_access(action)
        token = self._token(action["namespace"], aid, deadline, access) if access is not None else None
        if token:
            env["HEADRACE_TOKEN"] = token
            if any(a.get("key") == "provide-api-key" and a.get("value") for a in action.get("annotations", [])):
                env["__OW_API_KEY"] = token
        return env

    def _owner(self, namespace: str) -> tuple[str, int, tuple[int, ...]] | None:
        """The action owner's name, uid and groups (looked up at most every OWNER_CACHE_SECONDS)."""
        cached = self._owners.get(namespace)
        if cached is not None and time.monotonic() - cached[0] < OWNER_CACHE_SECONDS:
            return cached[1:]
        try:
            user = self.host.users.get(namespace)
        except Exception:
            return None
        self._owners[namespace] = (time.monotonic(), user.username, user.uid, tuple(user.gids))
        return user.username, user.uid, tuple(user.gids)

    def _token(self, namespace: str, aid: str, deadline: int, access: dict[str, Any]) -> str | None:
        """A macaroon for this activation alone: acting as the action's owner, naming the activation as the
        cause of what it changes, good until the deadline (plus a grace), confined to the path and
        activities the action's storage annotation names."""
        owner = self._owner(namespace)
        if owner is None:
            return None
        username, uid, gids = owner
        caveats: list[str] = []
        if access.get("path"):
            caveats.append(f"path:{access['path']}")
        if access.get("activities"):
            caveats.append(f"activity:{','.join(access['activities'])}")
        mint = self.host.macaroons.mint
        extra: dict[str, Any] = {"cause": aid} if "cause" in inspect.signature(mint).parameters else {}
        return mint(
            username=username,
            uid=uid,
            gids=gids,
            caveats=caveats,
            validity=timedelta(milliseconds=max(1000, deadline - now_ms() + TOKEN_GRACE_MS)),
            **extra,
        )

    # -- workers ------------------------------------------------------------------------------------------

    @staticmethod
    def key(action: ActionRow) -> str:
        return f"{action['namespace']}/{action['name']}@{action['version']}"

    def pool(self, action: ActionRow) -> ActionPool:
        key = self.key(action)
        pool = self.pools.get(key)
        if pool is None:
            code_dir = self._materialize(action)
            limits = action["limits"]
            owner = self._owner(action["namespace"])
            spec = ActionSpec(
                key=key,
                code_dir=code_dir,
                main=action["exec"].get("main") or "main",
                timeout_ms=int(limits.get("timeout", 60_000)),
                memory_mb=int(limits.get("memory", 256)),
                logs_mb=int(limits.get("logs", 10)),
                concurrency=int(limits.get("concurrency", 1)),
                max_workers=self.worker_cap(action),
                owner_uid=owner[1] if owner is not None else 65534,
                storage=storage_access(action) is not None,
                door_url=self.door_url,
                api_url=self.api_url,
            )
            pool = self.pools[key] = ActionPool(spec, self.sandbox)
        return pool

    def worker_cap(self, action: Mapping[str, Any]) -> int:
        """The most workers one action's pool may have: its maxScale, within this process's cap."""
        return max(1, min(Scaling.of(action).max_scale, self.max_workers))

    def _materialize(self, action: ActionRow) -> Path:
        """The action's code as files: code_root/<namespace>/<name>/<version>/. Written to a directory of this
        process's own and renamed into place, so that processes sharing a code root never see half of it."""
        target = Path(self.code_root, str(action["namespace"]), str(action["name"]), str(action["version"]))
        if (target / ".complete").exists():
            return target
        if target.exists():  # left incomplete by an older server (before the rename)
            shutil.rmtree(target, ignore_errors=True)
        work = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        ex = action["exec"]
        try:
            if ex.get("binary"):
                with zipfile.ZipFile(io.BytesIO(base64.b64decode(ex["code"]))) as z:
                    for member in z.namelist():
                        dest = (work / member).resolve()
                        if not str(dest).startswith(str(work.resolve())):
                            raise ValueError(f"zip member escapes the action directory: {member}")
                    z.extractall(work)
            else:
                (work / "__main__.py").write_text(ex["code"])
            for root, dirs, files in os.walk(work):  # readable by the sandbox's uid, whatever the umask
                for d in dirs:
                    os.chmod(os.path.join(root, d), 0o755)
                for f in files:
                    p = os.path.join(root, f)
                    os.chmod(p, (os.stat(p).st_mode & 0o777) | 0o444)
            work.chmod(0o755)
            (work / ".complete").touch()
            try:
                os.rename(work, target)
            except OSError:  # another process put it there first
                if not (target / ".complete").exists():
                    raise
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        return target

    async def drop_pools_except(self, live: set[str]) -> None:
        """Close the idle pools of action versions not in `live` (busy ones: the autoscaler, once idle)."""
        for key in [k for k in self.pools if k not in live]:
            pool = self.pools.pop(key)
            if not pool.busy:
                await pool.close()
            else:
                self.pools[key] = pool

    async def autoscale(
        self, actions: Mapping[tuple[str, str], ActionRow], queues: Mapping[tuple[str, str], ActionQueue]
    ) -> None:
        """Size each action's warm workers: up at once (every activation takes or forks a worker), down to the
        demand after a stable window, to zero after `idleSeconds` without work, never below minScale."""
        now = time.monotonic()
        current = {self.key(a): a for a in actions.values()}
        for key, pool in list(self.pools.items()):
            action = current.get(key)
            if action is None:  # an old version: gone once idle
                if not pool.busy:
                    del self.pools[key]
                    await pool.close()
                continue
            aq = queues.get((action["namespace"], action["name"]), ActionQueue())
            sc = Scaling.of(action)
            concurrency = max(1, int(action["limits"].get("concurrency", 1)))
            high = self.worker_cap(action)
            low = min(sc.min_scale, high)  # minScale counts against the caps
            desired = min(high, max(low, math.ceil((len(aq.items) + aq.running) / concurrency)))
            if pool.size < low:
                self._background(pool.warm(low))
            if pool.size > desired:
                if aq.surplus_since is None:
                    aq.surplus_since = now
                idle = now - aq.last_work
                if desired == 0 and idle >= sc.idle_seconds:
                    pool.shrink(low)
                elif desired > 0 and now - aq.surplus_since >= SCALE_DOWN_WINDOW:
                    pool.shrink(max(desired, low))
            else:
                aq.surplus_since = None
        # actions with minScale but no pool yet
        for action in actions.values():
            min_scale = Scaling.of(action).min_scale
            if min_scale > 0 and action["exec"].get("kind") != "sequence" and self.key(action) not in self.pools:
                low = min(min_scale, self.worker_cap(action))
                self._background(self.pool(action).warm(low))
        self.publish_metrics(queues)

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    def publish_metrics(self, queues: Mapping[tuple[str, str], ActionQueue]) -> None:
        """The gauges of queued and running activations and of warm workers, per action. The scheduler calls
        this on every pass: each gauge's child is looked up once and set only when its value changed (a
        labels() call costs more than the rest of a pass)."""
        for (_, name), aq in queues.items():
            self._gauge(FN_QUEUED, name, len(aq.items))
            self._gauge(FN_RUNNING, name, aq.running)
        for key, pool in self.pools.items():
            self._gauge(FN_WORKERS, key.rsplit("/", 1)[-1].split("@")[0], pool.size)

    def _gauge(self, gauge: Gauge, name: str, value: int) -> None:
        k = (gauge, name)
        if self._gauge_values.get(k) == value:
            return
        child = self._gauges.get(k)
        if child is None:
            child = self._gauges[k] = gauge.labels(name)
        child.set(value)
        self._gauge_values[k] = value
