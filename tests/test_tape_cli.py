"""`headrace stage | release | qos | locality | bulk` against a real server with the tape simulator, as a
user's shell runs them (HEADRACE_CONFIG the server wrote): output, --json, one-line errors and exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from harness import Server, wait_for
from tape_harness import locality, tape_server
from test_cli import ok, one_line_error, run


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = tape_server(tmp_path_factory.mktemp("tapecli")).start()
    yield srv
    srv.stop()


def test_stage_release_and_bulk_requests(tape: Server) -> None:
    with tape.door() as door:
        assert door.put("/c1", content=b"1").status_code == 201
        assert door.put("/c2", content=b"2").status_code == 201
    # a file on disk is staged at once (the tape agent completes it); --wait prints every target
    data = json.loads(ok(run(tape, "stage", "/c1", "/c2", "--lifetime", "2h", "--wait", "--json")))
    assert data["status"] == "COMPLETED"
    assert [(t["target"], t["state"]) for t in data["targets"]] == [("/c1", "COMPLETED"), ("/c2", "COMPLETED")]
    rid = data["uid"]
    out = ok(run(tape, "bulk", "get", rid))
    assert out.splitlines()[0] == f"request {rid}: STAGE COMPLETED"
    assert "COMPLETED  /c1" in out
    listed = json.loads(ok(run(tape, "bulk", "list", "--json", "--status", "completed")))
    assert rid in [r["uid"] for r in listed]
    assert rid in ok(run(tape, "bulk", "list"))
    # release: the pins of that request
    out = ok(run(tape, "release", "/c1", "--request-id", rid))
    assert "COMPLETED  /c1" in out
    # without --wait: the request id, and its progress with `bulk get`
    out = ok(run(tape, "stage", "/c2"))
    assert out.startswith("stage request ") and "headrace bulk get" in out
    # a missing file: the request's lines say which, one error line, exit 1
    result = run(tape, "stage", "/nothing", "--wait")
    assert "FAILED     /nothing" in result.stdout
    assert "1 of 1 targets" in one_line_error(result)
    # clear; a cleared request is gone
    assert json.loads(ok(run(tape, "bulk", "clear", rid, "--json")))["uid"] == rid
    assert "No such request" in one_line_error(run(tape, "bulk", "get", rid))
    assert "--lifetime" in one_line_error(run(tape, "stage", "/c1", "--lifetime", "soon"), code=2)


def test_cancel_and_clear_with_force(tape: Server) -> None:
    """Cancel answers for a request whatever its state (nothing left to cancel is no error, as in dCache)."""
    rid = ok(run(tape, "stage", "/c1")).split()[2]
    assert json.loads(ok(run(tape, "bulk", "cancel", rid, "--json")))["status"] == "success"
    assert ok(run(tape, "bulk", "clear", rid, "--force")) == ""
    assert "No such request" in one_line_error(run(tape, "bulk", "cancel", rid))


def test_qos_and_locality(tape: Server) -> None:
    with tape.api() as api, tape.door() as door:
        assert api.post("/api/v1/namespace/", json={"action": "mkdir", "name": "q"}).is_success
        assert door.put("/q/f", content=b"q" * 1000).status_code == 201
        assert ok(run(tape, "qos", "/q/f")) == "/q/f: disk  (ONLINE)\n"
        info = json.loads(ok(run(tape, "qos", "/q/f", "disk+tape", "--json")))
        assert info["path"] == "/q/f"
        wait_for(lambda: locality(api, "/q/f") == "ONLINE_AND_NEARLINE", "the flush")
    assert ok(run(tape, "locality", "/q/f")).split() == ["/q/f", "ONLINE_AND_NEARLINE"]
    assert json.loads(ok(run(tape, "locality", "/q/f", "--json"))) == [
        {"path": "/q/f", "locality": "ONLINE_AND_NEARLINE"}
    ]
    result = run(tape, "locality", "/q/f", "/q/none")
    assert "/q/none" in one_line_error(result) and "ONLINE_AND_NEARLINE" in result.stdout
    assert "QoS must be one of" in one_line_error(run(tape, "qos", "/q/f", "fast"), code=2)
