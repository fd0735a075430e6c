"""Values PostgreSQL refuses to store (SQLite stores them all) are the request's fault: a 400 with the usual
JSON problem body, never a 500, and nothing of the request is kept."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from harness import Server
from test_bad_input import server_state

pytestmark = pytest.mark.postgresql_only("SQLite stores strings of any length, NUL characters and 64-bit integers")

NS = "/api/v1/namespace"


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with server.door() as door:
        assert door.put("/pgv.txt", content=b"x").status_code == 201
    with server.api() as client:
        yield client


@pytest.mark.parametrize(
    "body",
    [
        {"action": "set-label", "label": "L" * 300},  # labels.label is VARCHAR(255)
        {"action": "set-xattr", "attributes": {"X" * 600: "v"}},  # xattrs.name is VARCHAR(512)
        {"action": "set-xattr", "attributes": {"a": "v\x00w"}},  # text cannot hold NUL
        {"action": "chown", "uid": 2**40},  # inodes.uid is INTEGER
    ],
    ids=["long-label", "long-xattr-name", "nul-in-xattr", "uid-out-of-range"],
)
def test_unstorable_values_are_400_and_change_nothing(
    server: Server, api: httpx.Client, body: dict[str, object]
) -> None:
    before = server_state(server)
    r = api.post(f"{NS}/pgv.txt", json=body)
    assert r.status_code == 400, r.text
    problem = r.json()
    assert problem["title"] == "Bad Request" and "cannot store" in problem["detail"]
    assert server_state(server) == before


def test_an_unstorable_dead_property_is_400(server: Server) -> None:
    name = "p" * 600
    body = (
        '<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop>'
        f"<Z:{name}>v</Z:{name}></D:prop></D:set></D:propertyupdate>"
    )
    with server.door() as door:
        r = door.request("PROPPATCH", "/pgv.txt", content=body)
    assert r.status_code == 400, r.text
