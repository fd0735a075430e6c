"""The feed actions of /whisk.system and their lifecycle, as OpenWhisk's feeds have it: the feed action is
invoked (blocking) with `lifecycleEvent` CREATE | READ | UPDATE | DELETE | PAUSE | UNPAUSE, `triggerName`
(`/namespace/name`, `_` for the caller's own) and `authKey` (the trigger owner's "user:key"), plus the
feed's own parameters; `wsk trigger create T --feed F -p ...` and the JS client's `feeds.create` send
exactly that.

- `alarms/alarm`, `alarms/interval`, `alarms/once`: a row of fn_alarms (functions/alarms.py) fired by the
  controller's AlarmScheduler.
- `storage/changes`: the trigger's storage-feed filter (fn_triggers.feed_params, what the trigger-annotation
  path writes and the controller's feed reads: one code path). PAUSE takes the filter off the trigger and
  keeps it in fn_alarms (feed "changes", never due); UNPAUSE puts it back.

Only the trigger's owner may attach, read or detach its feed: the trigger must be in the caller's namespace,
and an `authKey`, when sent, must be that user's key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from sqlalchemy.engine import Connection

from headrace.auth.access import Principal
from headrace.db.engine import Database
from headrace.events.sources.store import SourceStore
from headrace.functions import alarms, model
from headrace.functions.alarms import AlarmConfig, AlarmRow, AlarmStore, FeedError, Raced
from headrace.functions.dispatch import fire_plan
from headrace.functions.entities import ActionRow, ActivationRow, RuleRow, TriggerFields, TriggerRow
from headrace.functions.model import STORAGE_FEED, JSONObject
from headrace.functions.store import FunctionStore, new_activation_id, now_ms
from headrace.storage.service import StorageService

SYSTEM = "whisk.system"
EVENTS = ("CREATE", "READ", "UPDATE", "DELETE", "PAUSE", "UNPAUSE")
#: The feed actions: their package/name in /whisk.system.
ALARM_FEEDS = {"alarms/alarm": "alarm", "alarms/interval": "interval", "alarms/once": "once"}
STORAGE_CHANGES = "storage/changes"
FEED_ACTIONS = (*ALARM_FEEDS, STORAGE_CHANGES)
_LIFECYCLE_KEYS = {"lifecycleEvent", "triggerName", "authKey"}


class Backend(Protocol):
    """What the feeds need of the functions back end (the controller, or a frontend's remote one)."""

    store: FunctionStore

    async def reload(self) -> None: ...


class FiringBackend(Backend, Protocol):
    async def action(self, namespace: str, name: str) -> ActionRow | None: ...

    async def active_rules(self, namespace: str, trigger: str) -> list[RuleRow]: ...

    async def send(self, rows: list[ActivationRow], actions: dict[tuple[str, str], ActionRow]) -> None: ...


def trigger_of(raw: Any, caller: str) -> str:
    """The trigger a feed request names (`/ns/name`, `ns/name` or `name`), which must be the caller's."""
    if not isinstance(raw, str) or not raw.strip("/"):
        raise FeedError("no trigger name parameter was provided")
    parts = raw.strip("/").split("/")
    if len(parts) == 1:
        return model.check_name(parts[0], "trigger name")
    if len(parts) != 2:
        raise FeedError(f"The trigger name {raw!r} is not valid: use /namespace/name.")
    if parts[0] not in ("_", caller):
        raise FeedError(f"The supplied authentication is not authorized to access '{parts[0]}'.", 403)
    return model.check_name(parts[1], "trigger name")


class Feeds:
    def __init__(self, service: StorageService, backend: Backend) -> None:
        self.service = service
        self.db: Database = service.db
        self.backend = backend
        self.store = backend.store
        self.alarms = AlarmStore(self.db)

    async def _check_auth_key(self, raw: Any, owner: str) -> None:
        if raw is None or raw == "":
            return
        user, sep, key = str(raw).partition(":")
        if not sep or user != owner or await self.service.users.check_key(user, key) is None:
            raise FeedError("The supplied authKey is not the trigger owner's.", 403)

    async def lifecycle(self, p: Principal, feed: str, params: JSONObject) -> JSONObject:
        """Handle one invocation of a feed action; its result (FeedError: refused)."""
        event = str(params.get("lifecycleEvent") or "").upper()
        if event not in EVENTS:
            raise FeedError("unsupported lifecycleEvent")
        owner = p.subject.username
        name = trigger_of(params.get("triggerName"), owner)
        await self._check_auth_key(params.get("authKey"), owner)
        trigger = await self.db.read(lambda: self.store.get("triggers", owner, name))
        if trigger is None and event in ("CREATE", "UPDATE", "PAUSE", "UNPAUSE"):
            raise FeedError(f"The trigger /{owner}/{name} does not exist.", 404)
        own = {k: v for k, v in params.items() if k not in _LIFECYCLE_KEYS}
        if feed == STORAGE_CHANGES:
            return await self._storage(event, owner, name, trigger, own)
        return await self._alarm(event, ALARM_FEEDS[feed], owner, name, own)

    # -- alarms ---------------------------------------------------------------------------------------------

    async def _alarm(self, event: str, feed: str, owner: str, name: str, params: JSONObject) -> JSONObject:
        current = await self.db.read(self.alarms.get, owner, name)
        if event == "CREATE":
            config = alarms.create_config(feed, params)
            try:
                await self.db.group.run(AlarmStore.create_in, owner, name, feed, config)
            except Raced:
                raise FeedError(f"The trigger /{owner}/{name} has a feed already.", 409) from None
            return {"status": "success"}
        if current is None or current["feed"] != feed:
            raise FeedError(f"The trigger /{owner}/{name} has no {feed} feed.", 404)
        if event == "READ":
            return alarm_view(current)
        if event == "DELETE":
            await self.db.group.run(AlarmStore.remove_in, owner, name)
            return {"status": "success"}
        now = alarms.now_ms()
        if event == "UPDATE":
            config = alarms.update_config(feed, current["config"], params)
            values: dict[str, Any] = {"config": config, "next_due": alarms.first_due(feed, config, now)}
            if current["status"] == "done" and values["next_due"] is not None:
                values.update(status="active", changed=now)
        elif event == "PAUSE":
            values = {"status": "paused", "changed": now}
        else:  # UNPAUSE: from now on; what fell due while paused is not fired
            values = {"status": "active", "changed": now, "next_due": alarms.first_due(feed, current["config"], now)}
        await self.db.group.run(AlarmStore.change_in, current["id"], **values)
        return {"status": "success"}

    # -- storage/changes --------------------------------------------------------------------------------------

    async def _may_follow(self, namespace: str, source: str | None) -> None:
        if source is None:
            return
        readers = (await self.db.read(SourceStore(self.db).readers, {source})).get(source)
        if readers is None:
            raise FeedError(f"There is no event source {source!r}.", 404)
        subject = (await self.service.users.fetch(namespace)).subject
        if not readers.admit(subject):
            raise FeedError(f"The namespace {namespace!r} may not read the event source {source!r}.", 403)

    async def _set_filter(self, trigger: TriggerRow, feed_params: JSONObject | None) -> None:
        annotations = [a for a in trigger["annotations"] if a["key"] != "feed"]
        annotations.append({"key": "feed", "value": f"/{SYSTEM}/{STORAGE_CHANGES}"})
        values: TriggerFields = {
            "parameters": list(trigger["parameters"]),
            "annotations": annotations,
            "feed": STORAGE_FEED,
            "feed_params": feed_params,
        }
        ns, name = trigger["namespace"], trigger["name"]
        await self.db.write(lambda: self.store.put("triggers", ns, name, values, overwrite=True))
        await self.backend.reload()

    def _filter(self, params: JSONObject) -> JSONObject:
        try:
            return model.feed_filter(params).to_json()
        except model.ModelError as exc:
            raise FeedError(str(exc)) from None

    async def _storage(
        self, event: str, owner: str, name: str, trigger: TriggerRow | None, params: JSONObject
    ) -> JSONObject:
        paused = await self.db.read(self.alarms.get, owner, name)
        paused = paused if paused is not None and paused["feed"] == "changes" else None
        active = trigger is not None and trigger.get("feed") == STORAGE_FEED and trigger.get("feed_params") is not None
        if event == "CREATE":
            assert trigger is not None
            # `wsk trigger create --feed` puts the trigger with the feed's annotation first (a filter on "/"
            # by the annotation path): CREATE gives it its parameters
            if paused is not None:
                raise FeedError(f"The trigger /{owner}/{name} has a feed already.", 409)
            f = self._filter(params)
            await self._may_follow(owner, f.get("source"))
            await self._set_filter(trigger, f)
            return {"status": "success"}
        if not active and paused is None:
            raise FeedError(f"The trigger /{owner}/{name} has no storage feed.", 404)
        if event == "READ":
            shown: JSONObject = dict((trigger["feed_params"] if active and trigger else None) or {})
            if paused is not None:
                shown = dict(paused["config"])
            return {"config": {"name": name, "namespace": owner, **shown}, "status": {"active": active}}
        if event == "DELETE":
            if paused is not None:
                await self.db.group.run(AlarmStore.remove_in, owner, name)
            if trigger is not None and active:
                await self._set_filter(trigger, None)
            return {"status": "success"}
        assert trigger is not None
        if event == "UPDATE":
            base = dict(trigger["feed_params"] or {}) if active else dict(paused["config"] if paused else {})
            f = self._filter({**base, **params})
            await self._may_follow(owner, f.get("source"))
            if active:
                await self._set_filter(trigger, f)
            elif paused is not None:
                await self.db.group.run(AlarmStore.change_in, paused["id"], config=f)
            return {"status": "success"}
        if event == "PAUSE":
            if active:
                kept = cast(AlarmConfig, dict(trigger["feed_params"] or {}))

                def pause(conn: Connection) -> None:
                    AlarmStore.create_in(conn, owner, name, "changes", kept)
                    AlarmStore.change_in(conn, _id_in(conn, owner, name), next_due=None, status="paused")

                await self.db.group.run(pause)
                await self._set_filter(trigger, None)
            return {"status": "success"}
        # UNPAUSE
        if paused is not None:
            await self._set_filter(trigger, dict(paused["config"]))
            await self.db.group.run(AlarmStore.remove_in, owner, name)
        return {"status": "success"}


def _id_in(conn: Connection, namespace: str, trigger: str) -> int:
    from headrace.db.schema import fn_alarms

    t = fn_alarms
    return int(conn.execute(t.select().where(t.c.namespace == namespace, t.c.trigger == trigger)).one().id)


def alarm_view(a: AlarmRow) -> JSONObject:
    """A READ's answer: the alarms provider's {config, status}."""
    c = a["config"]
    done = a["status"] == "done"
    config: JSONObject = {"name": a["trigger"], "namespace": a["namespace"], "payload": c.get("payload", {})}
    if a["feed"] == "once":
        config["date"] = alarms.iso(c["date"])
        config["deleteAfterFire"] = c.get("deleteAfterFire")
    else:
        config["startDate"] = alarms.iso(c["startDate"]) if "startDate" in c else None
        config["stopDate"] = alarms.iso(c["stopDate"]) if "stopDate" in c else None
        if a["feed"] == "interval":
            config["minutes"] = c["minutes"]
        else:
            config["cron"] = c["cron"]
            config["timezone"] = c.get("timezone")
            config["strict"] = c.get("strict", False)
    return {
        "config": config,
        "status": {
            "active": a["status"] == "active",
            "dateChanged": a["changed"],
            "dateChangedISO": alarms.iso(a["changed"]),
            **({"reason": {"kind": "AUTO", "message": "the alarm has fired its last tick"}} if done else {}),
        },
        "nextDue": alarms.iso(a["next_due"]) if a["next_due"] is not None else None,
        "fired": a["fired"],
    }


def feed_record(p: Principal, feed: str, params: JSONObject, result: JSONObject, start: int) -> ActivationRow:
    """The finished activation of a feed action's invocation, in the caller's namespace."""
    end = now_ms()
    safe = {k: v for k, v in params.items() if k != "authKey"}
    return {
        "activation_id": new_activation_id(),
        "namespace": p.subject.username,
        "name": feed,
        "version": "0.0.1",
        "subject": p.subject.username,
        "state": "done",
        "created": start,
        "not_before": start,
        "start": start,
        "end": end,
        "status_code": 0,
        "result": result,
        "args": safe,
        "logs": [],
        "annotations": [
            {"key": "path", "value": f"{SYSTEM}/{feed}"},
            {"key": "kind", "value": "python:3"},
            {"key": "feed", "value": True},
        ],
    }


def alarm_firer(db: Database, backend: FiringBackend) -> Callable[[AlarmRow, int, int | None], Awaitable[str | None]]:
    """The scheduler's `fire`: the tick, the trigger's activation and its rules' activations in one
    transaction (the trigger's activation annotated with the tick's due time), then handed to where they run."""

    store = backend.store

    async def _delete_after_fire(db: Database, backend: FiringBackend, alarm: AlarmRow) -> None:
        """A `once` alarm's deleteAfterFire: "true" deletes the trigger, "rules" its rules too (the
        alarms provider's), after the trigger has fired."""
        mode = alarm["config"].get("deleteAfterFire", "false")
        if alarm["feed"] != "once" or mode == "false":
            return
        ns, name = alarm["namespace"], alarm["trigger"]

        def delete() -> None:
            if mode == "rules":
                for rule in store.entities("rules", ns, 0, 0):
                    if rule["trigger"] == name:
                        store.remove("rules", ns, rule["name"])
            store.remove("triggers", ns, name)

        await db.write(delete)
        await backend.reload()

    async def fire(alarm: AlarmRow, due: int, nxt: int | None) -> str | None:
        ns, name = alarm["namespace"], alarm["trigger"]
        trigger = await db.read(lambda: store.get("triggers", ns, name))
        rules = await backend.active_rules(ns, name) if trigger is not None else []
        if trigger is None or not rules:  # OpenWhisk's fire without a rule: nothing recorded but the tick
            # (a trigger deleted without its feed's DELETE: the alarm is done)
            await db.group.run(AlarmStore.tick_in, alarm, due, nxt if trigger is not None else None, None)
            return None
        actions: dict[tuple[str, str], ActionRow] = {}
        for rule in rules:
            found = await backend.action(ns, rule["action"])
            if found is not None:
                actions[(ns, rule["action"])] = found
        record, rows = fire_plan(ns, trigger, dict(alarm["config"].get("payload") or {}), rules, actions)
        record["annotations"] = [
            {"key": "feed", "value": f"/{SYSTEM}/alarms/{alarm['feed']}"},
            {"key": "alarmDue", "value": due},
        ]
        aid = str(record["activation_id"])

        def write(conn: Connection) -> None:
            AlarmStore.tick_in(conn, alarm, due, nxt, aid)
            store.record_in(conn, record)
            for row in rows:
                store.enqueue_in(conn, row)

        await db.group.run(write)
        await backend.send(rows, actions)
        await _delete_after_fire(db, backend, alarm)
        return aid

    return fire
