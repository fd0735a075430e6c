"""/whisk.system/alarms through a real `headrace up`: an `interval` and a `once` alarm fire through a server
restart with no tick lost or doubled (the trigger's activations counted by their due time); the feed
lifecycle (CREATE, READ, UPDATE, PAUSE, UNPAUSE, DELETE); refusals in OpenWhisk's {"error", "code"} shape.
An alarm "minute" lasts one second here (HEADRACE_ALARM_MINUTE_SECONDS)."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from harness import Server, add_user, client, query, wait_for

FEEDS = "/api/v1/namespaces/whisk.system/actions/alarms"
ECHO = "def main(args):\n    return args\n"


def feed(c: httpx.Client, name: str, event: str, trigger: str, key: str | None, **params: Any) -> httpx.Response:
    body = {"lifecycleEvent": event, "triggerName": trigger, **params}
    if key is not None:
        body["authKey"] = key
    return c.post(f"{FEEDS}/{name}", params={"blocking": "true"}, json=body)


def ticks(srv: Server, trigger: str) -> list[tuple[int, str | None]]:
    rows = query(
        srv.data,
        "SELECT t.due, t.activation_id FROM fn_alarm_ticks t JOIN fn_alarms a ON a.id = t.alarm_id "
        "WHERE a.trigger = :t ORDER BY t.due",
        t=trigger,
    )
    return [(int(d), a) for d, a in rows]


def trigger_dues(c: httpx.Client, trigger: str) -> list[int]:
    acts = c.get("/api/v1/namespaces/_/activations", params={"name": trigger, "limit": 200, "docs": "true"}).json()
    out = []
    for a in acts:
        full = c.get(f"/api/v1/namespaces/_/activations/{a['activationId']}").json()
        due = [x["value"] for x in full.get("annotations", []) if x["key"] == "alarmDue"]
        out += due
    return sorted(out)


def setup_user(srv: Server) -> tuple[httpx.Client, str]:
    name, key, _ = add_user(srv, "alice")
    c = client(base_url=srv.api_url, auth=(name, key), timeout=60)
    assert (
        c.put("/api/v1/namespaces/_/actions/echo", json={"exec": {"kind": "python:3", "code": ECHO}}).status_code == 200
    )
    for t in ("tick", "once", "cronned"):
        assert c.put(f"/api/v1/namespaces/_/triggers/{t}", json={}).status_code == 200
        r = c.put(f"/api/v1/namespaces/_/rules/r-{t}", json={"trigger": f"/_/{t}", "action": "/_/echo"})
        assert r.status_code == 200, r.text
    return c, f"{name}:{key}"


def test_interval_and_once_through_a_restart(fresh_server: Server) -> None:
    fresh_server.env_extra.update({"HEADRACE_ALARM_MINUTE_SECONDS": "1", "HEADRACE_ALARM_POLL_SECONDS": "0.1"})
    srv = fresh_server.start()
    c, key = setup_user(srv)
    r = feed(c, "interval", "CREATE", "/_/tick", key, minutes=1, trigger_payload={"n": 1})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["response"]["result"] == {"status": "success"}
    once_at = int(time.time() * 1000) + 4000
    iso = datetime.fromtimestamp(once_at / 1000, UTC).isoformat()
    assert feed(c, "once", "CREATE", "/alice/once", key, date=iso, trigger_payload="hello").status_code == 200
    wait_for(lambda: len(ticks(srv, "tick")) >= 2 or None, "two interval ticks")
    srv.stop()
    before = ticks(srv, "tick")
    assert not ticks(srv, "once")
    (next_due,) = query(srv.data, "SELECT next_due FROM fn_alarms WHERE \"trigger\" = 'tick'")[0]
    # the server is down while two more ticks and the once alarm fall due: wait on the clock, not on work
    while time.time() * 1000 < max(int(next_due) + 1500, once_at + 200):
        time.sleep(0.1)
    srv.start()
    wait_for(lambda: len(ticks(srv, "tick")) >= len(before) + 3 or None, "the missed ticks and one more")
    wait_for(lambda: ticks(srv, "once") or None, "the once alarm")
    srv.stop()
    got = ticks(srv, "tick")
    dues = [d for d, _ in got]
    assert len(set(dues)) == len(dues)
    assert all(b - a == 1000 for a, b in itertools.pairwise(dues)), dues  # none lost
    assert all(aid for _, aid in got)
    ((once_due, once_aid),) = ticks(srv, "once")
    assert once_due == once_at
    srv.start()
    c = client(base_url=srv.api_url, auth=c.auth, timeout=60)
    seen = trigger_dues(c, "tick")
    assert seen[: len(dues)] == dues  # one trigger activation per due time
    assert len(set(seen)) == len(seen)
    once = c.get(f"/api/v1/namespaces/_/activations/{once_aid}").json()
    assert once["response"]["result"] == {"payload": "hello"}

    # the rule's action ran with the payload
    def echoed() -> list[Any] | None:
        acts = c.get("/api/v1/namespaces/_/activations", params={"name": "echo", "limit": 200}).json()
        return acts if len(acts) >= len(dues) + 1 else None

    wait_for(echoed, "the rules' activations")
    assert feed(c, "once", "READ", "/_/once", key).json()["response"]["result"]["status"]["active"] is False
    # deleteAfterFire rules: the trigger and its rules go once it has fired
    at = datetime.fromtimestamp(time.time() + 1, UTC).isoformat()
    r = feed(c, "once", "UPDATE", "/_/once", key, date=at, deleteAfterFire="rules")
    assert r.status_code == 200, r.text
    wait_for(lambda: c.get("/api/v1/namespaces/_/triggers/once").status_code == 404 or None, "the trigger deleted")
    assert c.get("/api/v1/namespaces/_/rules/r-once").status_code == 404
    assert c.get("/api/v1/namespaces/_/rules/r-tick").status_code == 200


def test_lifecycle_and_refusals(fresh_server: Server) -> None:
    fresh_server.env_extra.update({"HEADRACE_ALARM_MINUTE_SECONDS": "1", "HEADRACE_ALARM_POLL_SECONDS": "0.1"})
    srv = fresh_server.start()
    c, key = setup_user(srv)
    r = feed(c, "alarm", "CREATE", "/_/cronned", key, cron="not a cron")
    assert r.status_code == 400
    assert r.json()["error"] == "cron pattern 'not a cron' is not valid" and r.json()["code"]
    r = feed(c, "interval", "CREATE", "/_/tick", key, minutes="x")
    assert (r.status_code, r.json()["error"]) == (400, "the minutes parameter must be an integer")
    r = feed(c, "once", "CREATE", "/_/once", key, date="2001-01-01T00:00:00Z")
    assert r.status_code == 400 and "must be in the future" in r.json()["error"]
    # a cron with seconds (node-cron's 6 fields): every second
    r = feed(c, "alarm", "CREATE", "/_/cronned", key, cron="* * * * * *", trigger_payload={"x": 1})
    assert r.status_code == 200, r.text
    assert feed(c, "alarm", "CREATE", "/_/cronned", key, cron="* * * * *").status_code == 409
    wait_for(lambda: ticks(srv, "cronned") or None, "a cron tick")
    read = feed(c, "alarm", "READ", "/_/cronned", key).json()["response"]["result"]
    assert read["config"]["cron"] == "* * * * * *" and read["config"]["payload"] == {"x": 1}
    assert read["status"]["active"] is True
    # another user (the admin here) may not read, attach to or delete alice's trigger's feed
    with srv.api() as admin:
        r = feed(admin, "alarm", "READ", "/alice/cronned", None)
        assert r.status_code == 403 and r.json()["code"]
        r = feed(admin, "interval", "CREATE", "/alice/tick", None, minutes=1)
        assert r.status_code == 403
        assert feed(admin, "alarm", "DELETE", "/alice/cronned", None).status_code == 403
        # nor with their own trigger and alice's key
        assert admin.put("/api/v1/namespaces/_/triggers/mine", json={}).status_code == 200
        assert feed(admin, "interval", "CREATE", "/_/mine", key, minutes=1).status_code == 403
    assert feed(c, "alarm", "PAUSE", "/_/cronned", key).status_code == 200
    paused = len(ticks(srv, "cronned"))
    read = feed(c, "alarm", "READ", "/_/cronned", key).json()["response"]["result"]
    assert read["status"]["active"] is False
    assert feed(c, "alarm", "UNPAUSE", "/_/cronned", key).status_code == 200
    wait_for(lambda: len(ticks(srv, "cronned")) > paused or None, "ticks again after UNPAUSE")
    r = feed(c, "alarm", "UPDATE", "/_/cronned", key, cron="0 0 1 1 *")
    assert r.status_code == 200, r.text
    assert feed(c, "alarm", "READ", "/_/cronned", key).json()["response"]["result"]["config"]["cron"] == "0 0 1 1 *"
    assert feed(c, "alarm", "UPDATE", "/_/cronned", key).json()["error"] == "no updatable parameters were specified"
    assert feed(c, "alarm", "DELETE", "/_/cronned", key).status_code == 200
    assert feed(c, "alarm", "READ", "/_/cronned", key).status_code == 404
    assert feed(c, "alarm", "CREATE", "/_/cronned", key, cron="0 0 1 1 *", lifecycleEvent="NOPE").status_code == 400
    assert json.loads(c.post(f"{FEEDS}/nope", json={}).text)["code"]


def test_two_schedulers_fire_each_tick_once(db_url: str, monkeypatch: Any) -> None:
    """Two controllers' schedulers (each with its own engines) on one database: every due tick is fired by
    exactly one of them (the compare-and-set on next_due and the tick's key)."""
    import asyncio

    from headrace.db.engine import Database
    from headrace.functions.alarms import AlarmRow, AlarmScheduler, AlarmStore, now_ms

    monkeypatch.setenv("HEADRACE_ALARM_MINUTE_SECONDS", "0.05")
    monkeypatch.setenv("HEADRACE_ALARM_CATCHUP", "1000")
    first = Database(db_url, durable=False)
    first.migrate()
    second = Database(db_url, durable=False)
    fired: list[tuple[str, int]] = []

    def firer(who: str, db: Database) -> Any:
        def tick(conn: Any, alarm: AlarmRow, due: int, nxt: int | None) -> None:
            AlarmStore.tick_in(conn, alarm, due, nxt, None)
            # noted in the tick's own transaction: `stop` may cancel the awaiting caller after the write
            # was taken, and the tick still commits (the scheduler's fire is one transaction, as here)
            fired.append((who, due))

        async def fire(alarm: AlarmRow, due: int, nxt: int | None) -> str | None:
            await db.group.run(tick, alarm, due, nxt)
            return None

        return fire

    async def go() -> None:
        config = {"payload": {}, "minutes": 1, "startDate": now_ms() - 10_000}
        await first.group.run(AlarmStore.create_in, "ns", "t", "interval", config)
        a = AlarmScheduler(first, firer("a", first), poll=0.01)
        b = AlarmScheduler(second, firer("b", second), poll=0.01)
        await a.start()
        await b.start()
        deadline = now_ms() + 30_000
        while len(fired) < 40 and now_ms() < deadline:
            await asyncio.sleep(0.05)
        await a.stop()
        await b.stop()

    try:
        asyncio.run(go())
        alarm = AlarmStore(first).get("ns", "t")
        assert alarm is not None
        dues = [d for d, _ in AlarmStore(first).ticks(alarm["id"])]
        assert len(fired) >= 40
        assert sorted(d for _, d in fired) == dues  # every tick fired once, by one of them
        assert all(b - a == 50 for a, b in itertools.pairwise(dues))
    finally:
        first.close()
        second.close()
