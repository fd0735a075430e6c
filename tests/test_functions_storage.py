"""`main(event, ctx)` with ctx.storage on a real server: the function (storage access asked for, so its
sandbox has the door's and frontend's sockets) reads the file that fired it through the door, into its own
/tmp for a file name, writes its result back into headrace, and the events of that write name the
activation as their cause, so they do not fire the same rule forever."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from harness import Server, http, query, wait_for

NS = "/api/v1/namespaces/_"
SUMMARY = """
def main(event, ctx):
    local = ctx.storage.local_path(event["path"])
    with ctx.storage.open(event["path"]) as f:
        data = f.read()
    ctx.storage.mkdir("/proc")
    out = "/proc/" + event["name"] + ".summary"
    ctx.storage.write(out, f"{len(data)} bytes; local={local is not None}; first={data[:5].decode()}")
    ctx.logger.info("wrote %s", out)
    with open(local, "rb") as f:
        same = f.read() == data
    return {"out": out, "local": local, "same": same, "remaining": ctx.remaining_ms() > 0}
"""


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with server.api() as c:
        yield c


def test_ctx_storage_reads_locally_writes_back_and_marks_the_cause(server: Server, api: httpx.Client) -> None:
    with server.door() as door:
        assert door.request("MKCOL", "/incoming").status_code == 201
    body = {"exec": {"kind": "python:3", "code": SUMMARY}, "annotations": [{"key": "storage", "value": True}]}
    assert api.put(f"{NS}/actions/summarise", json=body).status_code == 200
    feed = {"path": "/", "recursive": True}
    assert api.put(f"{NS}/triggers/everything", json={"feed": feed}).status_code == 200
    rule = {"trigger": "everything", "action": "summarise"}
    assert api.put(f"{NS}/rules/summarise-everything", json=rule).status_code == 200

    with server.door() as door:
        assert door.put("/incoming/run7.h5", content=b"HDF5 pretend").status_code == 201

    def summary() -> bytes | None:
        r = http("GET", f"{server.door_url}/proc/run7.h5.summary", auth=server.auth)
        return r.content if r.status_code == 200 else None

    assert wait_for(summary, "the summary") == b"12 bytes; local=True; first=HDF5 "

    def records() -> list[dict[str, object]] | None:
        recs = api.get(f"{NS}/activations", params={"name": "summarise", "docs": "true"}).json()
        done = [r for r in recs if r.get("state") in ("done", "dead")]
        return done if len(done) >= 2 else None

    # The summary's own close fired the (recursive) rule once more, as a chain of depth 1; that activation's
    # write of /proc/run7.h5.summary.summary would be depth 2, and so on until the chain limit (8) cuts it.
    recs = wait_for(records, "activations")
    first = next(r for r in recs if r["response"]["result"].get("out") == "/proc/run7.h5.summary")  # type: ignore[index, union-attr]
    result = first["response"]["result"]  # type: ignore[index]
    assert result["local"].startswith("/tmp/") and result["same"]  # type: ignore[index]  # a copy in its /tmp
    assert any(line.endswith("INFO wrote /proc/run7.h5.summary") for line in first["logs"])  # type: ignore[union-attr]

    causes = query(
        server.data, "SELECT DISTINCT cause FROM events WHERE path = '/proc/run7.h5.summary' AND kind = 'CLOSE_WRITE'"
    )
    assert causes == [(first["activationId"],)]

    def chain_cut() -> bool:
        depths = conn2_depths()
        return bool(depths) and max(depths) == 8

    def conn2_depths() -> list[int]:
        return [d for (d,) in query(server.data, "SELECT depth FROM fn_activations WHERE name = 'summarise'")]

    wait_for(chain_cut, "the chain to reach its limit", timeout=60)
    depths = sorted(conn2_depths())
    assert depths == list(range(9))  # one activation per depth 0..8, then nothing more fired
    api.delete(f"{NS}/rules/summarise-everything")
