"""Events reach only those who may read them (issue 10, finding 3), and event channels are bounded (finding 4).

Each test performs an attack from the issue as the non-admin `user2` against a real server: a recursive
watch on `/`, a storage-feed trigger on `/`, a path-confined macaroon reaching for its owner's other channels
and for `/`, and metronomes at any rate and size. Deliveries are proved to have gone past the events that must
not arrive by waiting for a later event that must (never by sleeping).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client, execute, wait_for
from sse_reader import SseReader

EV = "/api/v1/events"
NS = "/api/v1/namespaces/_"


@pytest.fixture(scope="module")
def user2(server: Server) -> tuple[str, str]:
    name, key, _ = add_user(server, "dpuser2")
    return name, key


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with server.door() as door, server.api() as api:
        yield door, api


def _mkdir(door: httpx.Client, api: httpx.Client, path: str, mode: int) -> None:
    assert door.request("MKCOL", path).status_code == 201
    r = api.post(f"/api/v1/namespace{path}", json={"action": "chmod", "mode": mode})
    assert r.status_code == 200, r.text


def _channel(api: httpx.Client) -> str:
    r = api.post(f"{EV}/channels")
    assert r.status_code == 201, r.text
    return r.headers["Location"]


def _subscribe(api: httpx.Client, ch: str, selector: dict[str, Any], status: int = 201) -> httpx.Response:
    r = api.post(f"{ch}/subscriptions/inotify", json=selector)
    assert r.status_code == status, r.text
    return r


def _problem(r: httpx.Response, status: int, detail: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == str(status) and detail in body["detail"], body


def _inotify(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f["data"]["event"] for f in frames if f["event"] == "inotify"]


def test_recursive_watch_on_root_sees_only_what_its_owner_may_read(
    server: Server, user2: tuple[str, str], admin: tuple[httpx.Client, httpx.Client]
) -> None:
    door, api = admin
    _mkdir(door, api, "/dp1s", 0o700)  # admin's secret directory: user2 gets 403 inside it
    _mkdir(door, api, "/dp1o", 0o755)
    _mkdir(door, api, "/dp1c", 0o755)  # readable when watched, closed before the events come
    assert door.put("/dp1o/draft-out.txt", content=b"draft").status_code == 201
    assert door.put("/dp1s/memo-in.txt", content=b"memo").status_code == 201
    with client(base_url=server.door_url, auth=user2) as door2:
        assert door2.get("/dp1s/memo-in.txt").status_code == 403

    with client(base_url=server.api_url, auth=user2) as api2:
        ch = _channel(api2)
        _subscribe(api2, ch, {"path": "/", "recursive": True})
        _subscribe(api2, ch, {"path": "/dp1c"})
        ce = _channel(api2)
        _subscribe(api2, ce, {"path": "/", "recursive": True, "format": "cloudevents"})
        mine = SseReader(ch, user2)
        mine_ce = SseReader(ce, user2)
    control_ch = _channel(api)  # admin's own watch sees all of it: the attack is real
    _subscribe(api, control_ch, {"path": "/", "recursive": True})
    control = SseReader(control_ch, server.auth)

    assert api.post("/api/v1/namespace/dp1c", json={"action": "chmod", "mode": 0o700}).status_code == 200
    assert door.put("/dp1c/late.txt", content=b"late").status_code == 201
    assert door.put("/dp1s/payroll.xlsx", content=b"salaries").status_code == 201
    assert door.request("MOVE", "/dp1s/memo-in.txt", headers={"Destination": "/dp1o/memo-in.txt"}).status_code == 201
    assert door.request("MOVE", "/dp1o/draft-out.txt", headers={"Destination": "/dp1s/draft-out.txt"}).status_code in (
        201,
        204,
    )
    assert door.put("/dp1o/last.txt", content=b"marker").status_code == 201

    def last(f: dict[str, Any]) -> bool:
        return f["event"] == "inotify" and f["data"]["event"] == {"name": "dp1o/last.txt", "mask": ["IN_ATTRIB"]}

    seen_by_admin = _inotify(control.until(last))
    assert {"name": "dp1s/payroll.xlsx", "mask": ["IN_CLOSE_WRITE"]} in seen_by_admin
    assert any(e.get("name") == "late.txt" or e.get("name") == "dp1c/late.txt" for e in seen_by_admin)

    frames = mine.until(last)
    seen = _inotify(frames)
    names = [e.get("name") or "" for e in seen]
    assert not [n for n in names if n.startswith("dp1s/") or "payroll" in n or "late.txt" in n], seen
    assert not any("payroll" in line or "dp1s/" in line for line in mine.lines)
    # a rename in from a directory user2 may not read is only its IN_MOVED_TO; out of one, only IN_MOVED_FROM
    moved_in = [e for e in seen if e.get("name") == "dp1o/memo-in.txt"]
    assert [e["mask"] for e in moved_in] == [["IN_MOVED_TO"]], moved_in
    moved_out = [e for e in seen if e.get("name") == "dp1o/draft-out.txt"]
    assert [e["mask"] for e in moved_out] == [["IN_MOVED_FROM"]], moved_out
    assert moved_in[0]["cookie"] not in [e.get("cookie") for e in seen if e is not moved_in[0]]
    # what user2 may read arrives
    assert {"name": "dp1o/last.txt", "mask": ["IN_CLOSE_WRITE"]} in seen

    # CloudEvents cannot show half a rename: the move in is a creation, the move out a deletion
    def last_ce(f: dict[str, Any]) -> bool:
        e = f["data"]["event"] if f["event"] == "inotify" else {}
        return e.get("subject") == "/dp1o/last.txt" and e.get("type") == "org.headrace.storage.attributes"

    events = [f["data"]["event"] for f in mine_ce.until(last_ce) if f["event"] == "inotify"]
    assert not [e for e in events if e["subject"].startswith(("/dp1s", "/dp1c/"))], events
    assert not any("dp1s" in line or "payroll" in line for line in mine_ce.lines)
    by_subject = {(e["subject"], e["type"]) for e in events}
    assert ("/dp1o/memo-in.txt", "org.headrace.storage.created") in by_subject
    assert ("/dp1o/draft-out.txt", "org.headrace.storage.deleted") in by_subject
    assert not [e for e in events if e["type"] == "org.headrace.storage.moved"]
    for reader in (mine, mine_ce, control):
        reader.close()
    with client(base_url=server.api_url, auth=user2) as api2:
        assert api2.delete(ch).status_code == 204 and api2.delete(ce).status_code == 204
    assert api.delete(control_ch).status_code == 204


STORE_PATH = """\
def main(args):
    return {"path": args.get("path"), "newPath": args.get("newPath"), "oldPath": args.get("oldPath"),
            "mask": args.get("mask")}
"""


def test_storage_trigger_on_root_fires_only_for_what_its_owner_may_read(
    server: Server, user2: tuple[str, str], admin: tuple[httpx.Client, httpx.Client]
) -> None:
    door, api = admin
    _mkdir(door, api, "/dp2s", 0o700)
    _mkdir(door, api, "/dp2o", 0o755)
    assert door.put("/dp2o/out.txt", content=b"out").status_code == 201
    with client(base_url=server.api_url, auth=user2) as api2:
        r = api2.put(f"{NS}/actions/dp-spy", json={"exec": {"kind": "python:3", "code": STORE_PATH}})
        assert r.status_code == 200, r.text
        feed = {"path": "/", "recursive": True, "flags": ["IN_CLOSE_WRITE", "IN_MOVED_FROM", "IN_MOVED_TO"]}
        assert api2.put(f"{NS}/triggers/dp-all", json={"feed": feed}).status_code == 200
        r = api2.put(f"{NS}/rules/dp-all-spy", json={"trigger": "/_/dp-all", "action": "/_/dp-spy"})
        assert r.status_code == 200, r.text

        assert door.put("/dp2s/merger-memo.txt", content=b"confidential").status_code == 201
        assert door.request("MOVE", "/dp2o/out.txt", headers={"Destination": "/dp2s/out.txt"}).status_code in (201, 204)
        assert door.put("/dp2o/after.txt", content=b"public").status_code == 201

        def listing() -> list[dict[str, Any]]:
            r = api2.get(f"{NS}/activations", params={"name": "dp-spy", "docs": "true", "limit": 200})
            assert r.status_code == 200, r.text
            return list(r.json())

        def all_done() -> list[dict[str, Any]] | None:
            acts = listing()
            results = [a.get("response", {}).get("result", {}) for a in acts]
            if not any(res.get("path") == "/dp2o/after.txt" for res in results):
                return None  # the marker, after every event that must not fire, has not run yet
            if any(a["state"] not in ("done", "dead") for a in acts):
                return None
            return acts

        acts = wait_for(all_done, "user2's activation for /dp2o/after.txt", timeout=60)
        results = [a["response"]["result"] for a in acts]
        assert not [res for res in results if "dp2s" in str(res)], results
        # the rename out of a readable directory fires its IN_MOVED_FROM, without the hidden destination
        outs = [res for res in results if res.get("path") == "/dp2o/out.txt"]
        assert outs and all(res["mask"] == ["IN_MOVED_FROM"] and res["newPath"] is None for res in outs), results
        assert sorted(res["path"] for res in results) == ["/dp2o/after.txt", "/dp2o/out.txt"]
        for kind, name in (("rules", "dp-all-spy"), ("triggers", "dp-all"), ("actions", "dp-spy")):
            api2.delete(f"{NS}/{kind}/{name}")


def test_confined_macaroon_is_held_to_its_channels_and_paths(
    server: Server, user2: tuple[str, str], admin: tuple[httpx.Client, httpx.Client]
) -> None:
    door, api = admin
    _mkdir(door, api, "/dp3", 0o755)
    _mkdir(door, api, "/dp3/mine", 0o777)
    _mkdir(door, api, "/dp3/other", 0o777)
    with client(base_url=server.api_url, auth=user2) as api2:
        wide = _channel(api2)  # made with user2's key: it may watch everything user2 may read
        _subscribe(api2, wide, {"path": "/", "recursive": True})
    with client(base_url=server.door_url, auth=user2) as door2:  # user2 mints it with their own key
        r = door2.post(
            "/dp3/mine",
            json={"caveats": ["path:/dp3/mine", "activity:LIST,READ_METADATA,DOWNLOAD"], "validity": "PT10M"},
            headers={"Content-Type": "application/macaroon-request"},
        )
        assert r.status_code == 200, r.text
        token = r.json()["macaroon"]
    bearer = client(base_url=server.api_url, headers={"Authorization": f"Bearer {token}"})
    with bearer:
        assert bearer.get(f"{EV}/channels").json() == []  # user2's other channel is not listed
        _problem(bearer.get(wide, headers={"Accept": "application/json"}), 403, "Access denied")
        _problem(bearer.get(wide, headers={"Last-Event-ID": "-1"}), 403, "Access denied")  # no replay
        _problem(bearer.get(f"{wide}/subscriptions"), 403, "Access denied")
        _problem(bearer.patch(wide, json={"timeout": 60}), 403, "Access denied")
        _problem(bearer.delete(wide), 403, "Access denied")

        own = _channel(bearer)
        assert bearer.get(f"{EV}/channels").json() == [own]
        _problem(bearer.post(f"{own}/subscriptions/inotify", json={"path": "/", "recursive": True}), 403, "Permission")
        _problem(bearer.post(f"{own}/subscriptions/inotify", json={"path": "/dp3"}), 403, "Permission denied")
        _problem(bearer.post(f"{own}/subscriptions/inotify", json={"path": "/dp3/other"}), 403, "Permission denied")
        _subscribe(bearer, own, {"path": "/dp3/mine", "recursive": True})

    with client(base_url=server.api_url, auth=user2) as api2:
        assert set(api2.get(f"{EV}/channels").json()) >= {wide, own}  # the key sees all of user2's channels
        # ... but cannot widen a confined channel: it stays within the macaroon's paths
        _problem(api2.post(f"{own}/subscriptions/inotify", json={"path": "/", "recursive": True}), 403, "Permission")
        reader = SseReader(own, user2)
    assert door.put("/dp3/other/elsewhere.txt", content=b"x").status_code == 201
    assert door.put("/dp3/mine/here.txt", content=b"x").status_code == 201
    frames = reader.until(
        lambda f: f["event"] == "inotify" and f["data"]["event"] == {"name": "here.txt", "mask": ["IN_ATTRIB"]}
    )
    assert not any("elsewhere" in line for line in reader.lines), frames
    reader.close()
    with client(base_url=server.api_url, auth=user2) as api2:
        for ch in (wide, own):
            assert api2.delete(ch).status_code == 204


def test_channel_subscription_and_metronome_limits(
    server: Server, user2: tuple[str, str], admin: tuple[httpx.Client, httpx.Client]
) -> None:
    with client(base_url=server.api_url, auth=user2) as api2:
        ch = _channel(api2)
        metro = f"{ch}/subscriptions/metronome"
        # dCache allows 1 MHz; ten of those held the event loop at 100 % CPU
        _problem(api2.post(metro, json={"frequency": 1_000_000}), 400, '"frequency" is too big (more than 100 Hz)')
        _problem(api2.post(metro, json={"delay": 0.000001}), 400, '"delay" is too small')
        _problem(api2.post(metro, json={"frequency": 1, "message": "x" * 200_000}), 400, '"message" is too long')
        _problem(api2.post(metro, json={"frequency": 1, "message": ""}), 400, '"message" cannot be empty')
        schema = api2.get(f"{EV}/eventTypes/metronome/selector").json()
        assert schema["properties"]["frequency"]["maximum"] == 100
        assert schema["properties"]["message"]["maxLength"] == 1024
        assert api2.post(metro, json={"frequency": 100, "message": "x" * 1024}).status_code == 201
        # a user's metronomes together: at most 1000 ticks a second
        others = [_channel(api2) for _ in range(9)]
        for other in others:
            assert api2.post(f"{other}/subscriptions/metronome", json={"frequency": 100}).status_code == 201
        _problem(api2.post(f"{others[0]}/subscriptions/metronome", json={"frequency": 1}), 429, "metronome ticks")
        for other in others:
            assert api2.delete(other).status_code == 204
        # subscriptions per channel
        subs = api2.get(f"{ch}/subscriptions").json()
        for s in subs:
            api2.delete(s)
        for _ in range(64):
            assert api2.post(metro, json={"delay": 60}).status_code == 201
        _problem(api2.post(metro, json={"delay": 60}), 429, "Too many subscriptions: at most 64 per channel")
        _problem(api2.post(f"{ch}/subscriptions/inotify", json={"path": "/"}), 429, "Too many subscriptions")
        assert api2.delete(ch).status_code == 204
        # recursive watches per user: each is matched against every event of the server
        chans = [_channel(api2) for _ in range(17)]
        for c in chans[:16]:
            _subscribe(api2, c, {"path": "/", "recursive": True})
        r = api2.post(f"{chans[16]}/subscriptions/inotify", json={"path": "/", "recursive": True})
        _problem(r, 429, "Too many recursive watches: at most 16 per user")
        _subscribe(api2, chans[16], {"path": "/"})  # a plain watch is still fine
        for c in chans:
            assert api2.delete(c).status_code == 204
        # channels per user (dCache's 128)
        made = [_channel(api2) for _ in range(128 - len(api2.get(f"{EV}/channels").json()))]
        _problem(api2.post(f"{EV}/channels"), 429, "Too many channels")
        for url in made:
            assert api2.delete(url).status_code == 204


def test_channel_keeps_its_credentials_confinement_across_a_restart(fresh_server: Server) -> None:
    server = fresh_server.start()
    name, key, _ = add_user(server, "dprestart")
    with server.door() as door, server.api() as api:
        _mkdir(door, api, "/dp5", 0o777)
    with client(base_url=server.door_url, auth=(name, key)) as door2:
        r = door2.post(
            "/dp5",
            json={"caveats": ["path:/dp5"], "validity": "PT10M"},
            headers={"Content-Type": "application/macaroon-request"},
        )
        assert r.status_code == 200, r.text
        token = r.json()["macaroon"]
    with client(base_url=server.api_url, auth=(name, key)) as api2:
        wide = _channel(api2)
    with client(base_url=server.api_url, headers={"Authorization": f"Bearer {token}"}) as bearer:
        own = _channel(bearer)
    server.stop()
    server.start()
    with client(base_url=server.api_url, headers={"Authorization": f"Bearer {token}"}) as bearer:
        assert bearer.get(f"{EV}/channels").json() == [own]
        _problem(bearer.get(wide, headers={"Accept": "application/json"}), 403, "Access denied")
    with client(base_url=server.api_url, auth=(name, key)) as api2:
        _problem(api2.post(f"{own}/subscriptions/inotify", json={"path": "/"}), 403, "Permission denied")
        assert sorted(api2.get(f"{EV}/channels").json()) == sorted([wide, own])


def promote_then_demote(server: Server, name: str, reaches_secret: Callable[[], bool], what: str) -> None:
    """`reaches_secret()` (one round of writes, and whether the user's channel or trigger got the admin-only
    one) is false; the user is made an administrator in the database, and it becomes true; that is taken back,
    and it becomes false again."""
    set_admin = "UPDATE users SET admin = :admin WHERE username = :name"
    assert not reaches_secret()
    execute(server.data, set_admin, [{"admin": True, "name": name}])
    wait_for(reaches_secret, f"{what} to reach what its owner may read as an administrator")
    execute(server.data, set_admin, [{"admin": False, "name": name}])
    wait_for(lambda: not reaches_secret(), f"{what} to stop reaching what its owner may no longer read")


def test_a_channel_follows_its_owners_rights_as_they_change(
    server: Server, admin: tuple[httpx.Client, httpx.Client]
) -> None:
    """An operator makes a user an administrator, then takes it back (in the database, as any process may):
    the user's open channel sees the admin-only directory within seconds of the first, and stops seeing it
    within seconds of the second, instead of keeping the rights it had when it first got an event. Each
    round writes into the secret directory, then a marker the user may always read: the round's events are
    all in once the marker is."""
    door, api = admin
    name, key, _ = add_user(server, "dpuser9")
    _mkdir(door, api, "/dp9s", 0o700)  # admin's: the user gets 403 inside it
    _mkdir(door, api, "/dp9o", 0o755)
    with client(base_url=server.api_url, auth=(name, key)) as api9:
        ch = _channel(api9)
        _subscribe(api9, ch, {"path": "/", "recursive": True})
    reader = SseReader(ch, (name, key))
    rounds = iter(range(10_000))

    def sees_secret() -> bool:
        n = next(rounds)
        assert door.put(f"/dp9s/s{n}.txt", content=b"secret").status_code == 201
        assert door.put(f"/dp9o/m{n}.txt", content=b"marker").status_code == 201

        def marker(f: dict[str, Any]) -> bool:
            return f["event"] == "inotify" and f["data"]["event"] == {"name": f"dp9o/m{n}.txt", "mask": ["IN_ATTRIB"]}

        names = [e.get("name") for e in _inotify(reader.until(marker))]
        return f"dp9s/s{n}.txt" in names

    promote_then_demote(server, name, sees_secret, "the channel")
    reader.close()
    with client(base_url=server.api_url, auth=(name, key)) as api9:
        assert api9.delete(ch).status_code == 204


def test_a_storage_trigger_follows_its_owners_rights_as_they_change(
    server: Server, admin: tuple[httpx.Client, httpx.Client]
) -> None:
    """The storage feed's side of the channel test above: a user's trigger on `/` fires for the admin-only
    directory within seconds of the user being made an administrator (in the database), and stops within
    seconds of it being taken back. Each round writes into the secret directory, then a marker the user may
    always read; the feed makes activations in the log's order, so once the marker's has run, the secret's
    would be there too."""
    door, api = admin
    name, key, _ = add_user(server, "dpuser8")
    _mkdir(door, api, "/dp8s", 0o700)
    _mkdir(door, api, "/dp8o", 0o755)
    with client(base_url=server.api_url, auth=(name, key)) as api8:
        r = api8.put(f"{NS}/actions/dp8-spy", json={"exec": {"kind": "python:3", "code": STORE_PATH}})
        assert r.status_code == 200, r.text
        feed = {"path": "/", "recursive": True, "flags": ["IN_CLOSE_WRITE"]}
        assert api8.put(f"{NS}/triggers/dp8-all", json={"feed": feed}).status_code == 200
        r = api8.put(f"{NS}/rules/dp8-all-spy", json={"trigger": "/_/dp8-all", "action": "/_/dp8-spy"})
        assert r.status_code == 200, r.text
        rounds = iter(range(10_000))

        def fires_on_secret() -> bool:
            n = next(rounds)
            assert door.put(f"/dp8s/s{n}.txt", content=b"secret").status_code == 201
            assert door.put(f"/dp8o/m{n}.txt", content=b"marker").status_code == 201

            def ran() -> list[str] | None:
                r = api8.get(f"{NS}/activations", params={"name": "dp8-spy", "docs": "true", "limit": 200})
                assert r.status_code == 200, r.text
                acts = list(r.json())
                paths = [str((a.get("response") or {}).get("result", {}).get("path")) for a in acts]
                if f"/dp8o/m{n}.txt" not in paths or any(a["state"] not in ("done", "dead") for a in acts):
                    return None
                return paths

            return f"/dp8s/s{n}.txt" in wait_for(ran, f"the activation for /dp8o/m{n}.txt")

        promote_then_demote(server, name, fires_on_secret, "the trigger")
        for kind, entity in (("rules", "dp8-all-spy"), ("triggers", "dp8-all"), ("actions", "dp8-spy")):
            api8.delete(f"{NS}/{kind}/{entity}")
