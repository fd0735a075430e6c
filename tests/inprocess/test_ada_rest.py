"""What SURF's ada reads from dCache's frontend besides the namespace's basics, in this process: `/cells`
(--whoami), `/doors` (--upload's door discovery), `/poolgroups` and a group's space (--space); and the
namespace API's per-child labels and xattrs (--findlabel, --findxattr), locations, optional attributes and
QoS on a stat (--stat, --longlist). A non-admin user beside the admin in each; the tape states a file goes
through are set on its inode as the tape agent leaves them (tests/test_tape.py runs the agent itself)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import execute, wait_for
from headrace import __version__
from headrace.storage import pool_registry
from inprocess_harness import InProcess

NS = "/api/v1/namespace"


@pytest.fixture
def user(apps: InProcess) -> Iterator[httpx.Client]:
    """A client of the frontend as a new non-admin user."""
    name, key = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    apps.service.users.create(name, key)
    with apps.api(auth=(name, key)) as c:
        yield c


@pytest.fixture
def base(door: httpx.Client) -> str:
    d = f"/ada-{uuid.uuid4().hex[:8]}"
    assert door.request("MKCOL", d).status_code == 201
    return d


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    assert set(body) == {"status", "title", "detail"}, body
    return body


def set_inode(apps: InProcess, path: str, **values: Any) -> None:
    """Put a file's inode in the state the tape agent leaves it in (flushed, evicted...)."""
    name = path.rsplit("/", 1)[1]
    sets = ", ".join(f"{k} = :{k}" for k in values)
    execute(apps.data, f"UPDATE inodes SET {sets} WHERE name = :name", [{**values, "name": name}])


def test_cells_give_the_version_ada_whoami_prints(apps: InProcess, api: httpx.Client, user: httpx.Client) -> None:
    for client in (api, user):
        cells = client.get("/api/v1/cells").json()
        names = [c["cellName"] for c in cells]
        assert names == sorted(names) and {"PnfsManager", "pool0", "WebDAV-door"} <= set(names)
        assert {c["version"] for c in cells} == {__version__}  # ada: map(.version) | unique
        assert all(c["domainName"] and isinstance(c["creationTime"], int) for c in cells)
    with apps.api(auth=None) as anonymous:
        problem(anonymous.get("/api/v1/cells"), 401)


def test_doors_describe_the_webdav_door_and_who_runs_it_only_to_an_admin(api: httpx.Client, user: httpx.Client) -> None:
    for client, admin in ((api, True), (user, False)):
        doors = client.get("/api/v1/doors").json()
        assert len(doors) == 1
        door = doors[0]
        # The in-process door's public URL is http://door.inprocess (a TLS terminator in front makes it https).
        assert door["protocol"] == "http" and door["protocols"] == ["http"]
        assert door["addresses"] == ["door.inprocess"] and door["port"] == 80
        assert door["root"] == "/" and door["readPaths"] == ["/"] and door["writePaths"] == ["/"]
        assert door["tags"] and door["load"] == 0.0
        assert ("cellName" in door) is admin and ("identifier" in door) is admin


def test_doors_give_the_https_door_ada_upload_picks(fresh_apps: InProcess) -> None:
    # Behind a TLS terminator (HEADRACE_PUBLIC_DOOR_URL): the https door ada --upload looks for.
    service = fresh_apps.service
    service.settings = dataclasses.replace(service.settings, public_door_url="https://webdav.example.org")
    with fresh_apps.api() as api:
        door = api.get("/api/v1/doors").json()[0]
    assert (door["protocol"], door["addresses"], door["port"]) == ("https", ["webdav.example.org"], 443)


def test_poolgroups_and_their_space(fresh_apps: InProcess) -> None:
    apps = fresh_apps
    name, key = "spaceuser", uuid.uuid4().hex
    apps.service.users.create(name, key)
    with apps.door() as door, apps.api() as api, apps.api(auth=(name, key)) as user:
        door.request("MKCOL", "/t")
        for f, size in (("a", 1000), ("b", 2000), ("c", 4000), ("d", 8000)):
            assert door.put(f"/t/{f}", content=b"x" * size).status_code == 201
        for client in (api, user):
            groups = client.get("/api/v1/poolgroups").json()
            assert groups == [
                {"name": "default", "links": ["default-link"], "pools": ["pool0"], "nestedPoolGroups": []}
            ]
            assert client.get("/api/v1/poolgroups/default").json() == groups[0]
            assert client.get("/api/v1/poolgroups/default/pools").json() == ["pool0"]
            problem(client.get("/api/v1/poolgroups/nope/space"), 404)
            problem(client.get("/api/v1/poolgroups/nope"), 404)

        def space() -> dict[str, Any]:
            body: dict[str, Any] = user.get("/api/v1/poolgroups/default/space").json()
            return body

        s = space()["groupSpaceData"]
        assert s["total"] - s["free"] == 15000 and s["precious"] == 0 and s["removable"] == 0
        # b waits for its tape copy (precious); c is on tape and disk, of QoS tape (removable); d too, but pinned.
        set_inode(apps, "/t/b", qos="tape")
        set_inode(apps, "/t/c", qos="tape", locality="ONLINE_AND_NEARLINE", hsm_uri="osm://headrace/c")
        set_inode(apps, "/t/d", qos="tape", locality="ONLINE_AND_NEARLINE", hsm_uri="osm://headrace/d")
        d_id = api.get(f"{NS}/t/d").json()["pnfsId"]
        execute(
            apps.data,
            "INSERT INTO pins (inode_id, owner, request_id, expires) "
            "SELECT id, 'admin', NULL, NULL FROM inodes WHERE pnfsid = :p",
            [{"p": d_id}],
        )
        body = space()
        s = body["groupSpaceData"]
        assert (s["precious"], s["removable"]) == (2000, 4000)
        assert body["costDataForPools"]["pool0"]["space"] == s
        # A registered pool process joins the group and its space (a dead one only the group).
        pool_registry.register(apps.service.db, "remote1", "http://127.0.0.1:1", free=10**9, used=5000, lifetime=3600)
        wait_for(lambda: "remote1" in user.get("/api/v1/poolgroups/default/pools").json(), "the registered pool")
        body = space()
        assert body["costDataForPools"]["remote1"]["space"]["total"] == 10**9 + 5000
        assert body["groupSpaceData"]["total"] == sum(p["space"]["total"] for p in body["costDataForPools"].values())


def test_listing_gives_each_childs_labels_and_xattrs(
    door: httpx.Client, api: httpx.Client, user: httpx.Client, base: str
) -> None:
    for f in ("a.h5", "b.h5", "c.h5"):
        door.put(f"{base}/{f}", content=b"1")
    door.request("MKCOL", f"{base}/sub")
    api.post(f"{NS}{base}/a.h5", json={"action": "set-label", "label": "raw"})
    api.post(f"{NS}{base}/a.h5", json={"action": "set-label", "label": "calib"})
    api.post(f"{NS}{base}/b.h5", json={"action": "set-xattr", "attributes": {"run": "42", "det": "AGIPD"}})
    api.post(f"{NS}{base}/sub", json={"action": "set-label", "label": "raw"})
    for client in (api, user):  # the directory is 0755: the user lists it too
        kids = {
            c["fileName"]: c
            for c in client.get(f"{NS}{base}", params={"children": "true", "labels": "true"}).json()["children"]
        }
        assert kids["a.h5"]["labels"] == ["calib", "raw"] and kids["sub"]["labels"] == ["raw"]
        assert kids["b.h5"]["labels"] == [] and "extendedAttributes" not in kids["b.h5"]
        body = client.get(f"{NS}{base}", params={"children": "true", "xattr": "true"}).json()
        kids = {c["fileName"]: c for c in body["children"]}
        assert kids["b.h5"]["extendedAttributes"] == {"run": "42", "det": "AGIPD"}
        assert kids["a.h5"]["extendedAttributes"] == {} and kids["sub"]["extendedAttributes"] == {}
        plain = client.get(f"{NS}{base}", params={"children": "true"}).json()["children"]
        assert not any("labels" in c or "extendedAttributes" in c for c in plain)
        page = client.get(f"{NS}{base}", params={"children": "true", "labels": "true", "offset": 1, "limit": 2}).json()
        assert [(c["fileName"], c["labels"]) for c in page["children"]] == [("b.h5", []), ("c.h5", [])]
    # A directory the user may not read: refused as any listing is, whatever the flags.
    door.request("MKCOL", f"{base}/private")
    api.post(f"{NS}{base}/private", json={"action": "chmod", "mode": 0o700})
    for params in ({"children": "true"}, {"children": "true", "labels": "true", "xattr": "true", "optional": "true"}):
        problem(user.get(f"{NS}{base}/private", params=params), 403)


STAT = {"children": "true", "locality": "true", "locations": "true", "qos": "true", "xattr": "true"}
STAT |= {"labels": "true", "checksum": "true", "optional": "true"}  # what ada --stat asks


def test_stat_gives_name_locations_optional_attributes_and_qos(
    apps: InProcess, door: httpx.Client, api: httpx.Client, user: httpx.Client, base: str
) -> None:
    door.put(f"{base}/f.h5", content=b"hello")

    def stat(client: httpx.Client = user, path: str = f"{base}/f.h5") -> dict[str, Any]:
        r = client.get(f"{NS}{path}", params=STAT)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    st = stat()
    assert st["fileName"] == "f.h5" and st["locations"] == ["pool0"] and st["fileLocality"] == "ONLINE"
    assert (st["accessLatency"], st["retentionPolicy"]) == ("ONLINE", "REPLICA")
    assert st["owner"] == st["uid"] == 0 and st["group"] == st["gid"] and st["atime"] == st["mtime"]
    assert st["storageInfo"]["stored"] is False and st["suris"] == [] and "hsm" not in st
    assert st["currentQos"] == "disk" and "targetQos" not in st  # at its QoS: no target, as dCache
    assert st["labels"] == [] and st["extendedAttributes"] == {}
    assert st["checksums"] == [{"type": "ADLER32", "value": "062c0215"}]
    plain = api.get(f"{NS}{base}/f.h5").json()
    assert plain["fileName"] == "f.h5" and not {"locations", "accessLatency", "storageInfo"} & set(plain)
    assert api.get(f"{NS}{base}/f.h5", params={"locations": "true"}).json()["locations"] == ["pool0"]

    # Asked for tape: changing to it until the copy is made; then on both; then evicted, on tape only.
    api.post(f"{NS}{base}/f.h5", json={"action": "qos", "target": "disk+tape"})
    st = stat()
    assert (st["currentQos"], st["targetQos"]) == ("disk", "disk+tape")
    assert (st["accessLatency"], st["retentionPolicy"]) == ("ONLINE", "CUSTODIAL")
    set_inode(apps, f"{base}/f.h5", locality="ONLINE_AND_NEARLINE", hsm_uri="osm://headrace/0001?bfid=7")
    st = stat()
    assert st["currentQos"] == "disk+tape" and "targetQos" not in st and st["locations"] == ["pool0"]
    assert st["suris"] == ["osm://headrace/0001?bfid=7"] and st["hsm"] == "osm" and st["storageInfo"]["stored"]
    set_inode(apps, f"{base}/f.h5", qos="tape", locality="NEARLINE", pool=None, blob=None, accessed=123)
    st = stat()
    assert st["fileLocality"] == "NEARLINE" and st["locations"] == [] and st["currentQos"] == "tape"
    assert (st["accessLatency"], st["retentionPolicy"], st["atime"]) == ("NEARLINE", "CUSTODIAL", 123)
    kid = next(c for c in stat(path=base)["children"] if c["fileName"] == "f.h5")
    assert kid["locations"] == [] and kid["currentQos"] == "tape" and kid["fileLocality"] == "NEARLINE"
    # Staging back: on tape now, disk+tape wanted.
    set_inode(apps, f"{base}/f.h5", qos="disk+tape")
    assert (stat()["currentQos"], stat()["targetQos"]) == ("tape", "disk+tape")

    d = stat(path=base)
    assert d["fileName"] == base[1:] and d["currentQos"] == "disk" and "targetQos" not in d
    assert d["locations"] == [] and "fileLocality" not in d and "storageInfo" not in d

    # A file the user may not read the directory of: the same refusal as a plain stat.
    door.request("MKCOL", f"{base}/private")
    door.put(f"{base}/private/g.h5", content=b"x")
    api.post(f"{NS}{base}/private", json={"action": "chmod", "mode": 0o700})
    assert user.get(f"{NS}{base}/private/g.h5").status_code == 403
    problem(user.get(f"{NS}{base}/private/g.h5", params=STAT), 403)
    problem(user.get(f"{NS}{base}/nope", params=STAT), 404)
