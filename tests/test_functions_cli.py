"""`headrace fn | activations | deadletters | deploy -f` against a real server with real workers, run as a
user's shell would (a subprocess with the CLI config the server wrote).

The storage feed is tested end to end here: files PUT through the door run the function deployed on
their directory, with the event's fields as arguments.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import ADMIN_KEY, Server, wait_for
from headrace.client import Client, ClientConfig
from headrace.client.functions import Functions, FunctionSpec
from test_cli import ok, one_line_error, run

ECHO = """\
def main(args):
    print("event for", args.get("path"))
    return {"args": args}
"""


@pytest.fixture(scope="module")
def fn(server: Server) -> Iterator[Functions]:
    """The SDK in this process: for setting up and checking what the command under test is not about."""
    config = ClientConfig(door=server.door_url, api=server.api_url, username="admin", key=ADMIN_KEY)
    with Client(config) as c:
        yield Functions(c)


def activations(srv: Server, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(ok(run(srv, "activations", "list", "--json", *args))))


def finished(srv: Server, name: str, n: int = 1) -> list[dict[str, Any]]:
    """The function's activations once `n` of them have finished (newest first)."""

    def probe() -> list[dict[str, Any]] | None:
        with srv.api() as api:
            rows = api.get("/api/v1/namespaces/_/activations", params={"name": name, "limit": 200}).json()
        return rows if sum(a["state"] in ("done", "dead") for a in rows) >= n else None

    return wait_for(probe, f"{n} finished activation(s) of {name}")


def put(srv: Server, path: str, data: bytes) -> None:
    with srv.door() as door:
        assert door.put(path, content=data).status_code in (201, 204)


def mkdir(srv: Server, path: str) -> None:
    with srv.door() as door:
        assert door.request("MKCOL", path).status_code == 201


def test_deploy_on_storage_events_end_to_end(server: Server, tmp_path: Path) -> None:
    code = tmp_path / "echo.py"
    code.write_text(ECHO)
    deploy = ("fn", "deploy", "cli-h5", str(code), "--path", "/cli-raw", "--pattern", "*.h5", "--param", "beam=2")
    assert ok(run(server, *deploy)).splitlines() == [
        "action cli-h5: created",
        "trigger cli-h5-trigger: created",
        "rule cli-h5-rule: created",
    ]
    again = json.loads(ok(run(server, *deploy, "--json")))
    assert [c["status"] for c in again] == ["unchanged"] * 3
    assert [c["name"] for c in again] == ["cli-h5", "cli-h5-trigger", "cli-h5-rule"]

    mkdir(server, "/cli-raw")
    # a.h5 last: the feed reads events in order, so once a.h5 has run, the others have been matched (or not)
    data = b"detector frame " * 100
    put(server, "/cli-raw/b.txt", b"not for us")
    put(server, "/cli-raw-elsewhere.h5", data)  # not in /cli-raw
    put(server, "/cli-raw/a.h5", data)
    (run_record,) = finished(server, "cli-h5")
    assert run_record["state"] == "done" and run_record["attempt"] == 1

    record = json.loads(ok(run(server, "activations", "get", "--json", run_record["activationId"])))
    args = record["response"]["result"]["args"]
    assert args["path"] == "/cli-raw/a.h5" and args["name"] == "a.h5"
    assert args["mask"] == ["IN_CLOSE_WRITE"] and args["size"] == len(data)
    assert args["checksums"]["ADLER32"] == f"{zlib.adler32(data):08x}"
    assert isinstance(args["offset"], int) and record["eventOffset"] == args["offset"]
    assert args["beam"] == 2  # the action's parameter
    assert record["logs"][0].endswith("stdout: event for /cli-raw/a.h5")
    result = json.loads(ok(run(server, "activations", "result", run_record["activationId"])))
    assert result["args"]["name"] == "a.h5"
    assert ok(run(server, "activations", "logs", run_record["activationId"])).endswith(
        "stdout: event for /cli-raw/a.h5\n"
    )

    # exactly one: b.txt and the file outside /cli-raw ran nothing
    assert [a["activationId"] for a in activations(server, "--name", "cli-h5")] == [run_record["activationId"]]

    # running deploy again with another setting updates only what changed
    changed = json.loads(ok(run(server, *deploy, "--memory", "512", "--json")))
    assert [c["status"] for c in changed] == ["updated", "unchanged", "unchanged"]
    got = json.loads(ok(run(server, "fn", "get", "cli-h5", "--json")))
    assert got["action"]["limits"]["memory"] == 512 and got["action"]["version"] == "0.0.2"
    assert got["trigger"]["feedParameters"] == {
        "path": "/cli-raw",
        "recursive": False,
        "flags": ["IN_CLOSE_WRITE"],
        "pattern": "*.h5",
    }
    assert got["rule"]["status"] == "active"


def test_deploy_refuses_bad_code_and_options(server: Server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef main(args):\n    return {'x': 1\n")
    line = one_line_error(run(server, "fn", "deploy", "cli-bad", str(bad)))
    assert "syntax error" in line and "line 4" in line and "(400)" in line
    nomain = tmp_path / "nomain.py"
    nomain.write_text("def handler(args):\n    return {}\n")
    assert "'main'" in one_line_error(run(server, "fn", "deploy", "cli-bad", str(nomain)))
    good = tmp_path / "good.py"
    good.write_text(ECHO)
    line = one_line_error(run(server, "fn", "deploy", "cli-bad", str(good), "--timeout", "0.01"))
    assert "The timeout limit must be an integer between 100 and 300000 milliseconds, not 10." in line
    assert "No such file" in one_line_error(run(server, "fn", "deploy", "cli-bad", str(tmp_path / "none.py")))
    (tmp_path / "notes.txt").write_text("x")
    assert ".py file" in one_line_error(run(server, "fn", "deploy", "cli-bad", str(tmp_path / "notes.txt")))
    assert "--path" in one_line_error(run(server, "fn", "deploy", "cli-bad", str(nomain), "--pattern", "*.h5"), 2)
    assert "KEY=VALUE" in one_line_error(run(server, "fn", "deploy", "cli-bad", str(nomain), "--param", "x"), 2)
    line = one_line_error(run(server, "fn", "deploy", "cli-bad", str(good), "--path", "/x", "--on", "IN_EXPLODE"))
    assert "IN_EXPLODE" in line
    line = one_line_error(run(server, "fn", "deploy", "cli-bad", str(good), "--max-scale", "1000"))
    assert "scaling.maxScale" in line
    assert "does not exist" in one_line_error(run(server, "fn", "get", "cli-bad"))


DIRECTORY_MAIN = """\
from helper import shout

def main(event, ctx):
    ctx.logger.warning("via the logger")
    return {"said": shout(event.get("word", "hi")), "id": ctx.activation_id, "left": ctx.remaining_ms() > 0}
"""

FAILS = """\
def main(args):
    raise RuntimeError("it broke")
"""


def test_fn_list_get_invoke_delete(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "shouter"
    src.mkdir()
    (src / "__main__.py").write_text(DIRECTORY_MAIN)
    (src / "helper.py").write_text("def shout(word):\n    return word.upper() + '!'\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    assert ok(run(server, "fn", "deploy", "cli-shout", str(src))) == "action cli-shout: created\n"
    # the directory is zipped the same way each time: nothing to update
    assert ok(run(server, "fn", "deploy", "cli-shout", str(src))) == "action cli-shout: unchanged\n"
    failing = tmp_path / "fails.py"
    failing.write_text(FAILS)
    ok(run(server, "fn", "deploy", "cli-fails", str(failing), "--timeout", "5", "--max-scale", "2"))

    listed = json.loads(ok(run(server, "fn", "list", "--json")))
    by_name = {a["name"]: a for a in listed}
    assert by_name["cli-shout"]["exec"]["binary"] is True
    assert by_name["cli-fails"]["limits"]["timeout"] == 5000 and by_name["cli-fails"]["scaling"]["maxScale"] == 2
    table = ok(run(server, "fn", "list")).splitlines()
    assert table[0].split()[:3] == ["NAME", "VERSION", "KIND"]
    assert any(row.split()[0] == "cli-shout" for row in table[1:])
    text = ok(run(server, "fn", "get", "cli-fails"))
    assert "timeout 5 s" in text and "Trigger:    -" in text
    assert ok(run(server, "fn", "get", "cli-fails", "--code")) == FAILS
    got = json.loads(ok(run(server, "fn", "get", "cli-fails", "--json")))
    assert got["trigger"] is None and got["rule"] is None and got["action"]["exec"]["code"] == FAILS

    result = json.loads(ok(run(server, "fn", "invoke", "cli-shout", "--param", "word=hello", "--blocking")))
    assert result["said"] == "HELLO!" and result["left"] is True
    record = json.loads(ok(run(server, "fn", "invoke", "cli-shout", "-b", "--json")))
    assert record["response"]["result"]["id"] == record["activationId"]
    assert any("via the logger" in line for line in record["logs"])

    # non-blocking: the id; `activations logs --follow` waits for the run to end
    activation_id = ok(run(server, "fn", "invoke", "cli-shout")).strip()
    assert len(activation_id) == 32
    logs = ok(run(server, "activations", "logs", "--follow", activation_id))
    assert "via the logger" in logs
    assert json.loads(ok(run(server, "activations", "result", "--json", activation_id)))["success"] is True

    result_run = run(server, "fn", "invoke", "cli-fails", "--blocking", "--json")
    line = one_line_error(result_run)
    assert "failed: application error: RuntimeError: it broke" in line
    assert json.loads(result_run.stdout)["response"]["statusCode"] == 1
    line = one_line_error(run(server, "fn", "invoke", "cli-none", "--blocking"))
    assert line == "headrace: action cli-none: The requested resource does not exist. (404)"

    assert ok(run(server, "fn", "delete", "cli-fails")) == "action cli-fails: deleted\n"
    assert "does not exist" in one_line_error(run(server, "activations", "get", "0" * 32))


def test_activations_list_filters_and_follow(server: Server, fn: Functions) -> None:
    for name in ("cli-list-a", "cli-list-b"):
        fn.deploy(FunctionSpec(name, ECHO))
    ids = [fn.invoke("cli-list-a", {"n": i}, blocking=True).activation_id for i in range(3)]
    assert fn.invoke("cli-list-b", blocking=True).status == 200

    assert [a["activationId"] for a in activations(server, "--name", "cli-list-a")] == ids[::-1]
    assert [a["activationId"] for a in activations(server, "--name", "cli-list-a", "--limit", "2")] == ids[:0:-1]
    assert {a["name"] for a in activations(server, "--limit", "4")} >= {"cli-list-a", "cli-list-b"}
    assert len(activations(server, "--name", "cli-list-a", "--state", "done")) == 3
    assert activations(server, "--name", "cli-list-a", "--state", "dead") == []
    rows = ok(run(server, "activations", "list", "--name", "cli-list-a")).splitlines()
    assert rows[0].split() == ["ID", "NAME", "STATE", "STATUS", "START", "DURATION", "ATTEMPT"]
    assert [r.split()[0] for r in rows[1:]] == ids[::-1]
    assert "--limit" in one_line_error(run(server, "activations", "list", "--limit", "500"), 2)
    assert "state" in one_line_error(run(server, "activations", "list", "--state", "sleeping"))

    # --follow: what has finished, then each activation as it finishes, until interrupted
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    env["HEADRACE_CONFIG"] = str(server.cli_config)
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headrace.cli.main",
            "activations",
            "list",
            "--follow",
            "--json",
            "--name",
            "cli-list-b",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert follow.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout or ()], daemon=True).start()

    def next_line(what: str) -> dict[str, Any]:
        try:
            return dict(json.loads(lines.get(timeout=30)))
        except queue.Empty:
            follow.kill()
            _, err = follow.communicate()
            log = server.log()[-6000:]
            raise AssertionError(f"no line for {what} in 30 s; stderr: {err!r}\nserver log:\n{log}") from None

    try:
        first = next_line("the finished activation")
        assert first["name"] == "cli-list-b" and first["state"] == "done"
        new_id = fn.invoke("cli-list-b", {"n": 9}).activation_id
        seen = next_line(f"the new activation {new_id}")
        assert seen["activationId"] == new_id and seen["state"] == "done" and seen["statusCode"] == 0
    finally:
        follow.send_signal(signal.SIGINT)
        try:
            err = follow.communicate(timeout=30)[1] or ""
        except subprocess.TimeoutExpired:
            follow.kill()
            err = follow.communicate()[1] or ""
            raise AssertionError(f"--follow did not exit in 30 s after SIGINT; stderr: {err!r}") from None
    assert follow.returncode == 130 and "Traceback" not in err


UNTIL_FLAG = """\
import os

def main(args, ctx):
    flag = os.path.dirname(args["path"]) + "/READY"
    try:
        ctx.storage.stat(flag)
    except Exception as exc:
        raise RuntimeError(f"{flag} is missing ({exc})") from None
    return {"processed": args["path"]}
"""


def test_dead_letters_list_and_redrive(server: Server, fn: Functions, tmp_path: Path) -> None:
    code = tmp_path / "until.py"
    code.write_text(UNTIL_FLAG)
    deploy = ["fn", "deploy", "cli-dl", str(code), "--path", "/cli-dl", "--pattern", "*.dat", "--retries", "0"]
    ok(run(server, *deploy, "--storage"))
    mkdir(server, "/cli-dl")
    put(server, "/cli-dl/one.dat", b"1")
    put(server, "/cli-dl/two.dat", b"2")
    finished(server, "cli-dl", 2)

    letters = json.loads(ok(run(server, "deadletters", "list", "--name", "cli-dl", "--json")))
    assert sorted(d["args"]["path"] for d in letters) == ["/cli-dl/one.dat", "/cli-dl/two.dat"]
    assert all(d["state"] == "dead" and d["attempt"] == 1 for d in letters)
    assert all("/cli-dl/READY is missing" in d["response"]["result"]["error"] for d in letters)
    table = ok(run(server, "deadletters", "list", "--name", "cli-dl")).splitlines()
    assert table[0].split() == ["ID", "NAME", "ATTEMPT", "END", "PATH", "ERROR"] and len(table) == 3

    put(server, "/cli-dl/READY", b"")  # not *.dat: runs nothing
    one = next(d for d in letters if d["args"]["path"] == "/cli-dl/one.dat")
    assert ok(run(server, "deadletters", "redrive", one["activationId"])) == "redriven 1\n"
    wait_for(lambda: fn.activation(one["activationId"])["state"] == "done", "the redriven activation")
    left = json.loads(ok(run(server, "deadletters", "list", "--name", "cli-dl", "--json")))
    assert [d["args"]["path"] for d in left] == ["/cli-dl/two.dat"]
    assert json.loads(ok(run(server, "deadletters", "redrive", "--json"))) == {"redriven": 1}
    finished(server, "cli-dl", 2)
    wait_for(lambda: not list(fn.deadletters()), "no dead letters")
    results = [fn.result(d["activationId"]) for d in letters]  # both ran again and succeeded
    assert sorted(r["result"]["processed"] for r in results) == ["/cli-dl/one.dat", "/cli-dl/two.dat"]
    assert ok(run(server, "deadletters", "redrive")) == "redriven 0\n"


YAML = """\
functions:
  cli-yaml-scan:
    code: scan.py
    params: {threshold: 3}
    timeout: 20
    memory: {memory}
    max_scale: 2
    retries: 1
    trigger:
      path: /cli-yaml
      recursive: true
      pattern: "*.h5"
      on: [IN_CLOSE_WRITE, moved_to]
  cli-yaml-tool:
    code: tool
"""


def test_deploy_file(server: Server, fn: Functions, tmp_path: Path) -> None:
    (tmp_path / "scan.py").write_text(ECHO)
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "__main__.py").write_text("def main(args):\n    return {'tool': True}\n")
    spec = tmp_path / "headrace.yaml"
    spec.write_text(YAML.replace("{memory}", "256"))
    elsewhere = tmp_path.parent  # code paths are relative to the file, not the working directory
    result = subprocess.run(
        [sys.executable, "-m", "headrace.cli.main", "deploy", "-f", str(spec), "--json"],
        env={**server.env(), "HEADRACE_CONFIG": str(server.cli_config)},
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert [(c["kind"], c["name"], c["status"]) for c in made] == [
        ("action", "cli-yaml-scan", "created"),
        ("trigger", "cli-yaml-scan-trigger", "created"),
        ("rule", "cli-yaml-scan-rule", "created"),
        ("action", "cli-yaml-tool", "created"),
    ]
    assert ok(run(server, "deploy", "-f", str(spec))).count(": unchanged\n") == 4

    action = fn.action("cli-yaml-scan")
    assert action["parameters"] == [{"key": "threshold", "value": 3}]
    assert action["limits"]["timeout"] == 20_000
    assert action["scaling"]["maxScale"] == 2 and action["scaling"]["retries"] == 1
    assert fn.trigger("cli-yaml-scan-trigger")["feedParameters"] == {
        "path": "/cli-yaml",
        "recursive": True,
        "flags": ["IN_CLOSE_WRITE", "IN_MOVED_TO"],
        "pattern": "*.h5",
    }

    spec.write_text(YAML.replace("{memory}", "512"))
    changed = json.loads(ok(run(server, "deploy", "-f", str(spec), "--json")))
    assert [c["status"] for c in changed] == ["updated", "unchanged", "unchanged", "unchanged"]

    # the deployed function runs on the events of its directory tree
    mkdir(server, "/cli-yaml")
    mkdir(server, "/cli-yaml/run1")
    put(server, "/cli-yaml/run1/frame.h5", b"x")
    (run_record,) = finished(server, "cli-yaml-scan")
    args = fn.result(run_record["activationId"])["result"]["args"]
    assert args["path"] == "/cli-yaml/run1/frame.h5" and args["threshold"] == 3
    tool = fn.invoke("cli-yaml-tool", blocking=True).record
    assert tool is not None and tool["response"]["result"] == {"tool": True}

    broken = tmp_path / "broken.yaml"
    broken.write_text("functions:\n  x:\n    code: scan.py\n    colour: red\n")
    assert "unknown key 'colour'" in one_line_error(run(server, "deploy", "-f", str(broken)))
    broken.write_text("functions: [1, 2\n")
    assert "not valid YAML" in one_line_error(run(server, "deploy", "-f", str(broken)))
    broken.write_text("functions:\n  x:\n    trigger: {path: /x}\n")
    assert "code is required" in one_line_error(run(server, "deploy", "-f", str(broken)))
    assert "No such file" in one_line_error(run(server, "deploy", "-f", str(tmp_path / "none.yaml")))
