"""The /whisk.system/alarms feeds: `alarm` (cron), `interval` (minutes) and `once` (date), with
openwhisk-package-alarms' parameters, messages and payload, and their durable scheduler.

Each alarm feed is a row of `fn_alarms` with its next due tick (ms). The controller's `AlarmScheduler` looks
every `poll` seconds for active alarms whose tick is due and fires each tick in ONE transaction: the alarm's
`next_due` moves on only if it still holds the tick being fired (compare-and-set: a second controller, or a
feed changed meanwhile, makes the transaction roll back), the tick's row (alarm id, due time: its primary
key) is inserted, and the trigger's activation and its rules' activations are written. So a tick fires once
whatever the number of controllers and restarts; no lease is needed for correctness.

A tick that fell due while no controller ran is fired when one starts, each in its order, up to `catchup`
per alarm (HEADRACE_ALARM_CATCHUP, default 10); older missed ones are skipped (and logged). A tick fires the
trigger with the feed's `trigger_payload` (a string one as {"payload": ...}), as the alarms provider does.

`HEADRACE_ALARM_MINUTE_SECONDS` (default 60) is how long the `interval` feed's minute lasts: tests shorten it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection

from headrace.db.engine import Database
from headrace.db.schema import fn_alarm_ticks, fn_alarms
from headrace.functions.model import JSONObject
from headrace.tasks import stop_task

log = logging.getLogger("headrace.alarms")

FEEDS = ("alarm", "interval", "once")
DELETE_AFTER_FIRE = ("false", "true", "rules")


class FeedError(ValueError):
    """A feed's parameters refused: str() is OpenWhisk's sentence, `status` the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def minute_ms() -> int:
    return int(float(os.environ.get("HEADRACE_ALARM_MINUTE_SECONDS") or 60) * 1000)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def parse_date(raw: Any, name: str, *, after: int | None = None, after_name: str = "startDate") -> int:
    """A date parameter as ms since epoch (ISO 8601 text, or a number of ms): in the future, and after
    `after` when given (the alarms provider's validateDate and its messages)."""
    try:
        if isinstance(raw, bool):
            raise ValueError
        if isinstance(raw, int | float) or (isinstance(raw, str) and raw.strip().lstrip("-").isdigit()):
            ms = int(raw)
        elif isinstance(raw, str):
            text = raw.strip().replace("Z", "+00:00")
            d = datetime.fromisoformat(text)
            if d.tzinfo is None:
                d = d.replace(tzinfo=UTC)
            ms = int(d.timestamp() * 1000)
        else:
            raise ValueError
    except (ValueError, OverflowError):
        raise FeedError(f"{name} parameter '{raw}' is not a valid Date") from None
    if now_ms() >= ms:
        raise FeedError(f"{name} parameter '{raw}' must be in the future")
    if after is not None and ms <= after:
        raise FeedError(f"{name} parameter '{raw}' must be greater than the {after_name} parameter '{after}'")
    return ms


def _cron(expr: str) -> tuple[str, bool]:
    """A cron expression as croniter takes it: 5 fields, or 6 with seconds first (node-cron's, which the
    alarms provider uses)."""
    fields = expr.split()
    return " ".join(fields), len(fields) == 6


def check_cron(expr: Any, timezone: Any = None) -> None:
    if timezone is not None and timezone != "":
        try:
            ZoneInfo(str(timezone))
        except (ZoneInfoNotFoundError, ValueError):
            raise FeedError("Invalid timezone.") from None
    text, seconds = _cron(str(expr)) if isinstance(expr, str) else ("", False)
    if not text or len(text.split()) not in (5, 6) or not croniter.is_valid(text, second_at_beginning=seconds):
        raise FeedError(f"cron pattern '{expr}' is not valid")


def cron_after(expr: str, timezone: str | None, after_ms: int) -> int:
    """The first time (ms) the cron expression names after `after_ms`, in `timezone` (UTC when none)."""
    text, seconds = _cron(expr)
    tz = ZoneInfo(timezone) if timezone else UTC
    start = datetime.fromtimestamp(after_ms / 1000, tz)
    nxt = croniter(text, start, second_at_beginning=seconds).get_next(datetime)
    return int(nxt.timestamp() * 1000)


class AlarmConfig(TypedDict, total=False):
    """What an alarm feed keeps (the alarms provider's trigger document, less its credentials)."""

    payload: JSONObject
    cron: str
    timezone: str
    strict: bool
    minutes: int
    date: int
    deleteAfterFire: str
    startDate: int
    stopDate: int
    maxTriggers: int


def _payload(raw: Any) -> JSONObject:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {"payload": raw}
        return parsed if isinstance(parsed, dict) else {"payload": raw}
    if isinstance(raw, dict):
        return raw
    return {"payload": raw}


def _minutes(raw: Any) -> int:
    try:
        ok = not isinstance(raw, bool) and float(raw) == int(str(raw).strip())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise FeedError("the minutes parameter must be an integer")
    minutes = int(str(raw).strip())
    if minutes <= 0:
        raise FeedError("the minutes parameter must be an integer greater than zero")
    return minutes


def _delete_after_fire(raw: Any) -> str:
    value = str(raw).strip().lower()
    if value not in DELETE_AFTER_FIRE:
        raise FeedError("deleteAfterFire parameter must be one of [false, true, rules].")
    return value


def create_config(feed: str, params: JSONObject) -> AlarmConfig:
    """The configuration of a new alarm feed from its CREATE parameters (alarmWebAction's POST)."""
    config: AlarmConfig = {"payload": _payload(params.get("trigger_payload"))}
    if feed == "once":
        if not params.get("date"):
            raise FeedError("alarms once trigger feed is missing the date parameter")
        config["date"] = parse_date(params["date"], "date")
        if params.get("deleteAfterFire"):
            config["deleteAfterFire"] = _delete_after_fire(params["deleteAfterFire"])
        return config
    if feed == "interval":
        if not params.get("minutes"):
            raise FeedError("interval trigger feed is missing the minutes parameter")
        config["minutes"] = _minutes(params["minutes"])
    else:
        if not params.get("cron"):
            raise FeedError("alarms trigger feed is missing the cron parameter")
        check_cron(params["cron"], params.get("timezone"))
        config["cron"] = str(params["cron"])
        if params.get("timezone"):
            config["timezone"] = str(params["timezone"])
        if "strict" in params:
            config["strict"] = bool(params["strict"])
    if params.get("startDate"):
        config["startDate"] = parse_date(params["startDate"], "startDate")
    elif feed == "interval":  # the provider starts an interval 30 s (half a minute) from now
        config["startDate"] = now_ms() + minute_ms() // 2
    if params.get("maxTriggers") and params.get("stopDate"):
        if feed == "interval":
            raise FeedError("maxTriggers is not supported for the interval trigger feed")
        raise FeedError("maxTriggers is not allowed when the stopDate parameter is specified")
    if params.get("stopDate"):
        config["stopDate"] = parse_date(params["stopDate"], "stopDate", after=config.get("startDate"))
        first = first_due(feed, config, now_ms())
        if first is None:
            raise FeedError("the first scheduled trigger fire is not until after the stop date")
    if params.get("maxTriggers") and feed == "alarm":
        try:
            config["maxTriggers"] = int(params["maxTriggers"])
        except (TypeError, ValueError):
            raise FeedError("maxTriggers must be an integer") from None
    return config


def update_config(feed: str, config: AlarmConfig, params: JSONObject) -> AlarmConfig:
    """An alarm feed's configuration after an UPDATE (alarmWebAction's PUT): only what it names changes."""
    out: AlarmConfig = {**config}
    changed = False
    if params.get("trigger_payload") is not None:
        out["payload"] = _payload(params["trigger_payload"])
        changed = True
    if feed == "once":
        if params.get("date"):
            out["date"] = parse_date(params["date"], "date")
            changed = True
        if params.get("deleteAfterFire"):
            out["deleteAfterFire"] = _delete_after_fire(params["deleteAfterFire"])
            changed = True
    else:
        if feed == "interval" and params.get("minutes"):
            out["minutes"] = _minutes(params["minutes"])
            changed = True
        if feed == "alarm" and (params.get("cron") or params.get("timezone")):
            cron = params.get("cron") or config.get("cron")
            timezone = params.get("timezone") or config.get("timezone")
            check_cron(cron, timezone)
            if params.get("cron"):
                out["cron"] = str(params["cron"])
            if params.get("timezone"):
                out["timezone"] = str(params["timezone"])
            changed = True
        if feed == "alarm" and "strict" in params:
            out["strict"] = bool(params["strict"])
            changed = True
        if params.get("startDate"):
            out["startDate"] = parse_date(params["startDate"], "startDate")
            changed = True
        if params.get("stopDate"):
            out["stopDate"] = parse_date(params["stopDate"], "stopDate", after=out.get("startDate"))
            changed = True
        elif params.get("startDate") and config.get("stopDate") and out["startDate"] >= config["stopDate"]:
            raise FeedError(
                f"startDate parameter '{params['startDate']}' must be less than the stopDate parameter "
                f"'{config['stopDate']}'"
            )
    if not changed:
        raise FeedError("no updatable parameters were specified")
    return out


def first_due(feed: str, config: AlarmConfig, now: int) -> int | None:
    """The first tick after `now` (a new or changed feed); None when there is none before its stopDate."""
    if feed == "once":
        return config["date"] if config["date"] > now else None
    if feed == "interval":
        start, period = config["startDate"], config["minutes"] * minute_ms()
        due = start + period if now < start else start + period * ((now - start) // period + 1)
    else:
        due = cron_after(config["cron"], config.get("timezone"), max(now, config.get("startDate", 0) - 1))
    stop = config.get("stopDate")
    return None if stop is not None and due > stop else due


def following(feed: str, config: AlarmConfig, due: int, fired: int) -> int | None:
    """The tick after `due` (the `fired`-th fired); None when the feed is done."""
    if feed == "once":
        return None
    if feed == "interval":
        nxt = due + config["minutes"] * minute_ms()
    else:
        limit = config.get("maxTriggers", -1)
        if limit > 0 and fired >= limit:
            return None
        nxt = cron_after(config["cron"], config.get("timezone"), due)
    stop = config.get("stopDate")
    return None if stop is not None and nxt > stop else nxt


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


# -- the table -----------------------------------------------------------------------------------------------


class AlarmRow(TypedDict):
    id: int
    namespace: str
    trigger: str
    feed: str
    config: AlarmConfig
    status: str
    next_due: int | None
    fired: int
    created: int
    changed: int


def _alarm(row: Any) -> AlarmRow:
    m = row._mapping
    return {
        "id": int(m["id"]), "namespace": m["namespace"], "trigger": m["trigger"], "feed": m["feed"],
        "config": json.loads(m["config"]), "status": m["status"], "next_due": m["next_due"],
        "fired": int(m["fired"]), "created": int(m["created"]), "changed": int(m["changed"]),
    }  # fmt: skip


class Raced(Exception):
    """The tick was fired or the feed changed by another transaction: this one rolls back."""


class AlarmStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, namespace: str, trigger: str) -> AlarmRow | None:
        t = fn_alarms
        with self.db.reader.connect() as conn:
            row = conn.execute(select(t).where(t.c.namespace == namespace, t.c.trigger == trigger)).first()
        return _alarm(row) if row else None

    def due(self, now: int, limit: int = 500) -> list[AlarmRow]:
        t = fn_alarms
        q = (
            select(t)
            .where(t.c.status == "active", t.c.next_due.is_not(None), t.c.next_due <= now)
            .order_by(t.c.next_due)
            .limit(limit)
        )
        with self.db.reader.connect() as conn:
            return [_alarm(r) for r in conn.execute(q)]

    def next_due(self) -> int | None:
        t = fn_alarms
        q = select(t.c.next_due).where(t.c.status == "active", t.c.next_due.is_not(None)).order_by(t.c.next_due)
        with self.db.reader.connect() as conn:
            row = conn.execute(q.limit(1)).first()
        return int(row[0]) if row else None

    def ticks(self, alarm_id: int) -> list[tuple[int, str | None]]:
        t = fn_alarm_ticks
        with self.db.reader.connect() as conn:
            rows = conn.execute(select(t.c.due, t.c.activation_id).where(t.c.alarm_id == alarm_id).order_by(t.c.due))
            return [(int(r.due), r.activation_id) for r in rows]

    @staticmethod
    def create_in(conn: Connection, namespace: str, trigger: str, feed: str, config: AlarmConfig) -> None:
        """A new alarm feed for the trigger; Raced if it has one."""
        t = fn_alarms
        found = conn.execute(select(t.c.status).where(t.c.namespace == namespace, t.c.trigger == trigger)).first()
        if found is not None and found.status != "done":
            raise Raced(trigger)
        if found is not None:  # a feed that has fired its last tick (or whose trigger went) makes way
            conn.execute(t.delete().where(t.c.namespace == namespace, t.c.trigger == trigger))
        stamp = now_ms()
        due = first_due(feed, config, stamp) if feed in FEEDS else None  # a paused storage feed: never due
        conn.execute(
            insert(t).values(
                namespace=namespace, trigger=trigger, feed=feed, config=json.dumps(config, separators=(",", ":")),
                status="active", next_due=due, fired=0, created=stamp, changed=stamp,
            )
        )  # fmt: skip

    @staticmethod
    def change_in(conn: Connection, alarm_id: int, **values: Any) -> bool:
        if "config" in values:
            values["config"] = json.dumps(values["config"], separators=(",", ":"))
        t = fn_alarms
        return bool(conn.execute(update(t).where(t.c.id == alarm_id).values(**values)).rowcount)

    @staticmethod
    def remove_in(conn: Connection, namespace: str, trigger: str) -> bool:
        t = fn_alarms
        return bool(conn.execute(t.delete().where(t.c.namespace == namespace, t.c.trigger == trigger)).rowcount)

    @staticmethod
    def tick_in(conn: Connection, alarm: AlarmRow, due: int, nxt: int | None, activation_id: str | None) -> None:
        """Mark the tick `due` fired and the alarm's next one; Raced if the alarm no longer holds `due`."""
        t = fn_alarms
        moved = conn.execute(
            update(t)
            .where(and_(t.c.id == alarm["id"], t.c.status == "active", t.c.next_due == due))
            .values(
                next_due=nxt,
                fired=t.c.fired + 1,
                **({"status": "done", "changed": now_ms()} if nxt is None else {}),
            )
        ).rowcount
        if not moved:
            raise Raced(alarm["trigger"])
        tick = {"alarm_id": alarm["id"], "due": due, "fired": now_ms(), "activation_id": activation_id}
        conn.execute(insert(fn_alarm_ticks).values(**tick))


#: Fires one tick: (alarm, due, next due) -> the trigger's activation id (None: no active rule), having
#: written the tick with AlarmStore.tick_in in the same transaction as the activations.
Firer = Callable[[AlarmRow, int, int | None], Awaitable[str | None]]


def catchup() -> int:
    return max(1, int(os.environ.get("HEADRACE_ALARM_CATCHUP") or 10))


class AlarmScheduler:
    """Fires the due ticks of every active alarm, once each (see the module's docstring)."""

    def __init__(self, db: Database, fire: Firer, *, poll: float | None = None) -> None:
        self.db = db
        self.store = AlarmStore(db)
        self.fire = fire
        self.poll = poll if poll is not None else float(os.environ.get("HEADRACE_ALARM_POLL_SECONDS") or 1.0)
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_due()
                nxt = await self.db.read(self.store.next_due)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alarms: firing due ticks failed; trying again")
                nxt = None
            wait = self.poll if nxt is None else min(self.poll, max(0.0, (nxt - now_ms()) / 1000))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(wait, 0.01))

    async def run_due(self) -> int:
        """Fire every tick due now; how many were fired."""
        fired = 0
        now = now_ms()
        for alarm in await self.db.read(self.store.due, now):
            fired += await self._catch_up(alarm, now)
        return fired

    async def _catch_up(self, alarm: AlarmRow, now: int) -> int:
        due = alarm["next_due"]
        assert due is not None
        feed, config = alarm["feed"], alarm["config"]
        # the ticks due by now, in order; past `catchup` of them, the oldest are skipped
        dues: list[int] = []
        count = alarm["fired"]
        d: int | None = due
        while d is not None and d <= now and len(dues) < 100_000:
            dues.append(d)
            count += 1
            d = following(feed, config, d, count)
        keep = catchup()
        if len(dues) > keep:
            skipped = dues[:-keep]
            log.warning(
                "alarms: %s/%s missed %d ticks from %s to %s while no controller ran; they are skipped",
                alarm["namespace"], alarm["trigger"], len(skipped), iso(skipped[0]), iso(skipped[-1]),
            )  # fmt: skip
            start = dues[-keep]

            def skip(conn: Connection) -> None:
                t = fn_alarms
                moved = conn.execute(
                    update(t).where(t.c.id == alarm["id"], t.c.next_due == due).values(next_due=start)
                ).rowcount
                if not moved:
                    raise Raced(alarm["trigger"])

            try:
                await self.db.group.run(skip)
            except Raced:
                return 0
            dues = dues[-keep:]
        fired = 0
        for i, d in enumerate(dues):
            nxt = dues[i + 1] if i + 1 < len(dues) else following(feed, config, d, alarm["fired"] + i + 1)
            try:
                await self.fire(alarm, d, nxt)
            except Raced:
                return fired
            fired += 1
        return fired
