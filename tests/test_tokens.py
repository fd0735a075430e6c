"""Macaroon caveats beyond the bad-input cases: `root:` gives the token a view with that directory as '/'."""

from __future__ import annotations

from harness import Server, client, http


def mint(server: Server, at: str, caveats: list[str]) -> str:
    with server.door() as door:
        r = door.post(
            at,
            json={"caveats": caveats, "validity": "PT10M"},
            headers={"Content-Type": "application/macaroon-request"},
        )
    assert r.status_code == 200, r.text
    return str(r.json()["macaroon"])


def test_root_caveat_shifts_the_view_on_door_and_frontend(server: Server) -> None:
    with server.door() as door:
        door.request("MKCOL", "/tr")
        door.request("MKCOL", "/tr/home")
        door.put("/tr/home/f", content=b"inside")
        door.put("/tr/outside", content=b"outside")
    token = mint(server, "/", ["root:/tr/home", "activity:DOWNLOAD,LIST,READ_METADATA,UPLOAD"])
    bearer = {"Authorization": f"Bearer {token}"}
    door_c = client(base_url=server.door_url, headers=bearer)
    api_c = client(base_url=server.api_url, headers=bearer)
    # '/f' under the token is /tr/home/f in the namespace
    assert door_c.get("/f").content == b"inside"
    assert door_c.put("/new", content=b"n").status_code == 201
    with server.door() as door:
        assert door.get("/tr/home/new").content == b"n"
    # what lies outside the root cannot be named: '/outside' is /tr/home/outside, which does not exist
    assert door_c.get("/outside").status_code == 404
    assert door_c.get("/tr/outside").status_code == 404
    # listings show paths in the token's view
    listing = door_c.request("PROPFIND", "/", headers={"Depth": "1"}).text
    assert "<D:href>/</D:href>" in listing and "<D:href>/f</D:href>" in listing and "/tr/" not in listing
    children = api_c.get("/api/v1/namespace/", params={"children": "true"}).json()["children"]
    assert sorted(c["fileName"] for c in children) == ["f", "new"]
    me = api_c.get("/api/v1/user").json()
    assert me["rootDirectory"] == "/tr/home" and me["username"] == "admin"


def test_token_minted_from_a_token_keeps_its_limits(server: Server) -> None:
    with server.door() as door:
        door.request("MKCOL", "/tt")
        door.request("MKCOL", "/tt/a")
        door.put("/tt/a/f", content=b"a")
    first = mint(server, "/tt/a", ["activity:DOWNLOAD,LIST"])
    r = http(
        "POST",
        f"{server.door_url}/tt/a",
        json={"caveats": [], "validity": "PT1H"},
        headers={"Content-Type": "application/macaroon-request", "Authorization": f"Bearer {first}"},
    )
    assert r.status_code == 200
    second = {"Authorization": f"Bearer {r.json()['macaroon']}"}
    assert http("GET", f"{server.door_url}/tt/a/f", headers=second).content == b"a"
    assert http("PUT", f"{server.door_url}/tt/a/g", content=b"x", headers=second).status_code == 403
    assert http("GET", f"{server.door_url}/tt/other", headers=second).status_code == 403
