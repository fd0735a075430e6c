"""`headrace events tail` against a real server: the three output formats, stopping (--count, --timeout, the
watched path deleted, SIGTERM, Ctrl-C), errors, and resuming without losing or repeating an event across a
dropped connection and across a server restart.

The CLI runs as a subprocess, as a user's shell runs it. To drop its connection at will, it talks to the
frontend through `Proxy`, a TCP proxy the test can *blackhole* (swallow what the server sends while the
connection stays up, so the server believes events were delivered that never arrived), *cut* (close every
connection and refuse new ones) and *resume*. Uploads go straight to the door.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from harness import Server, free_port, http
from test_cli import CLI_ENV_KEYS, one_line_error, run

EV = "/api/v1/events"


# -- helpers --------------------------------------------------------------------------------------------------


class Proxy:
    """A TCP proxy in front of the frontend, on a port of its own that stays the same across cut/resume."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.blackholed = False
        self.dropped = bytearray()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.resume()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resume(self) -> None:
        """Forward again and accept new connections."""
        self.blackholed = False
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def blackhole(self) -> None:
        """Keep every connection open but drop what the server sends (kept in `dropped`)."""
        self.blackholed = True

    def cut(self) -> None:
        """Close every connection and refuse new ones (until `resume`)."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def wait_dropped(self, needle: bytes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.dropped:
            assert time.monotonic() < deadline, f"the server never sent {needle!r}"
            time.sleep(0.01)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if from_server and self.blackholed:
                with self._lock:
                    self.dropped += data
                continue
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class Tail:
    """`headrace events tail ARGS` running in the background; its stdout lines arrive in a queue."""

    def __init__(self, srv: Server, *args: str, api_url: str | None = None) -> None:
        self.srv = srv
        self.client_id = f"test-{uuid.uuid4().hex[:12]}"
        env = {k: v for k, v in os.environ.items() if k not in CLI_ENV_KEYS}
        env["HEADRACE_CONFIG"] = str(srv.cli_config)
        env["PYTHONIOENCODING"] = "utf-8"
        if api_url is not None:
            env["HEADRACE_API_URL"] = api_url
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "headrace.cli.main", "events", "tail", *args, "--client-id", self.client_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err.extend(self.proc.stderr)

    def channels(self) -> list[str]:
        r = http("GET", f"{self.srv.api_url}{EV}/channels", params={"client-id": self.client_id}, auth=self.srv.auth)
        assert r.status_code == 200, r.text
        return list(r.json())

    def wait_subscribed(self, timeout: float = 60.0) -> None:
        """Until its channel has its subscription: from then on every event is held for it."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"tail exited: {''.join(self.err)}"
            for ch in self.channels():
                if http("GET", f"{ch}/subscriptions", auth=self.srv.auth).json():
                    return
            assert time.monotonic() < deadline, "tail never subscribed"
            time.sleep(0.05)

    def take(self, n: int, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        got = [self.lines.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(n)]
        self.seen += got
        return got

    def finish(self, timeout: float = 30.0) -> tuple[int, list[str], str]:
        """Exit status, every stdout line, and stderr, once it has exited by itself."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            for t in self._readers:
                t.join(5)
            raise AssertionError(
                f"tail did not exit in {timeout} s; stderr: {''.join(self.err)!r}\n"
                f"server log:\n{self.srv.log()[-6000:]}"
            ) from None
        for t in self._readers:
            t.join(5)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.proc.returncode, self.seen, "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def put(srv: Server, path: str, data: bytes = b"x") -> None:
    with srv.door() as door:
        r = door.put(path, content=data)
        assert r.status_code in (201, 204), r.text


def mkdir(srv: Server, path: str) -> None:
    with srv.door() as door:
        assert door.request("MKCOL", path).status_code == 201


def move(srv: Server, src: str, dst: str) -> None:
    with srv.door() as door:
        r = door.request("MOVE", src, headers={"Destination": srv.door_url + dst})
        assert r.status_code in (201, 204), r.text


@pytest.fixture
def tails() -> Iterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for t in started:
        t.kill()


# -- output formats -------------------------------------------------------------------------------------------


def test_inotify_lines_with_flags_and_move_cookies(server: Server, tails: list[Tail]) -> None:
    d = "/tail-ino"
    mkdir(server, d)
    tail = Tail(server, d, "--flags", "IN_CLOSE_WRITE,moved_from", "--flags", "IN_MOVED_TO", "--flags", "create")
    tails.append(tail)
    tail.wait_subscribed()
    put(server, f"{d}/a.h5")
    mkdir(server, f"{d}/sub")
    move(server, f"{d}/a.h5", f"{d}/b.h5")
    put(server, f"{d}/sub/deep.h5")  # below: not seen without --recursive
    put(server, f"{d}/c.h5", b"")
    rest = tail.take(7)
    assert rest[:3] == [f"{d}/a.h5 IN_CREATE", f"{d}/a.h5 IN_CLOSE_WRITE", f"{d}/sub IN_CREATE,IN_ISDIR"]
    moved_from, moved_to = (re.fullmatch(r"(\S+) (\S+) cookie=(\S+)", line) for line in rest[3:5])
    assert moved_from and moved_to
    assert moved_from.group(1, 2) == (f"{d}/a.h5", "IN_MOVED_FROM")
    assert moved_to.group(1, 2) == (f"{d}/b.h5", "IN_MOVED_TO")
    assert moved_from.group(3) == moved_to.group(3)
    assert rest[5:] == [f"{d}/c.h5 IN_CREATE", f"{d}/c.h5 IN_CLOSE_WRITE"]
    tail.proc.send_signal(signal.SIGINT)
    code, _, err = tail.finish()
    assert code == 130 and "Traceback" not in err
    assert tail.channels() == []  # deleted on the way out


def test_json_format_recursive_with_data_fields(server: Server, tails: list[Tail]) -> None:
    d = "/tail-json"
    mkdir(server, d)
    mkdir(server, f"{d}/run1")
    tail = Tail(server, d, "--recursive", "--format", "json", "--flags", "IN_CLOSE_WRITE", "--count", "2")
    tails.append(tail)
    tail.wait_subscribed()
    put(server, f"{d}/top.h5", b"hello")
    put(server, f"{d}/run1/deep.h5", b"hello world")
    code, lines, err = tail.finish()
    assert (code, err) == (0, "")
    top, deep = (json.loads(line) for line in lines)
    assert list(top)[:3] == ["path", "name", "mask"]
    assert (top["path"], top["name"], top["mask"]) == (f"{d}/top.h5", "top.h5", ["IN_CLOSE_WRITE"])
    assert (deep["path"], deep["name"], deep["mask"]) == (f"{d}/run1/deep.h5", "run1/deep.h5", ["IN_CLOSE_WRITE"])
    assert deep["kind"] == "CLOSE_WRITE" and deep["size"] == 11 and deep["isDir"] is False
    assert deep["checksums"] == {"ADLER32": "1a0b045d"}
    assert isinstance(deep["offset"], int) and deep["offset"] > top["offset"]
    assert tail.channels() == []


def test_cloudevents_format(server: Server, tails: list[Tail]) -> None:
    d = "/tail-ce"
    mkdir(server, d)
    tail = Tail(server, d, "--format", "cloudevents", "--flags", "IN_CLOSE_WRITE", "-n", "1")
    tails.append(tail)
    tail.wait_subscribed()
    put(server, f"{d}/a.h5", b"abc")
    code, lines, err = tail.finish()
    assert (code, err) == (0, "")
    assert len(lines) == 1 and " " not in lines[0]  # compact
    ce = json.loads(lines[0])
    assert ce["specversion"] == "1.0"
    assert ce["type"] == "org.headrace.storage.closed.write"
    assert ce["subject"] == f"{d}/a.h5" and ce["inotifymask"] == "IN_CLOSE_WRITE"
    assert ce["data"]["size"] == 3 and ce["id"] == str(ce["data"]["offset"])


# -- stopping ---------------------------------------------------------------------------------------------------


def no_channel(srv: Server, client_id: str) -> bool:
    with srv.api() as api:
        return bool(api.get(f"{EV}/channels", params={"client-id": client_id}).json() == [])


def test_timeout_ends_quietly_or_fails_short_of_count(server: Server) -> None:
    r = run(server, "events", "tail", "/", "--timeout", "0.5", "--client-id", "t-timeout")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run(server, "events", "tail", "/", "--timeout", "0.5", "--count", "3", "--client-id", "t-timeout")
    assert "timed out after 0.5 s with 0 of 3 events" in one_line_error(r)
    assert no_channel(server, "t-timeout")


def test_watched_directory_deleted_ends_with_status_0(server: Server, tails: list[Tail]) -> None:
    d = "/tail-gone"
    mkdir(server, d)
    tail = Tail(server, d, "--timeout", "30")
    tails.append(tail)
    tail.wait_subscribed()
    with server.door() as door:
        assert door.delete(d).status_code == 204
    code, lines, err = tail.finish()
    assert code == 0
    assert lines == [f"{d} IN_DELETE_SELF"]
    assert err == f"headrace: {d} was deleted; stopping\n"


def test_sigterm_deletes_the_channel(server: Server, tails: list[Tail]) -> None:
    tail = Tail(server, "/")
    tails.append(tail)
    tail.wait_subscribed()
    tail.proc.send_signal(signal.SIGTERM)
    code, _, err = tail.finish()
    assert (code, err) == (143, "")
    assert tail.channels() == []


# -- errors -----------------------------------------------------------------------------------------------------


def test_errors_are_one_line_and_leave_no_channel(server: Server) -> None:
    line = one_line_error(run(server, "events", "tail", "/no/such/dir", "--client-id", "t-err"))
    assert line == "headrace: Not found: Problem with path: /no/such/dir (400)"
    line = one_line_error(
        run(server, "events", "tail", "/", "--flags", "IN_CLOSE_WRITE,IN_BOGUS", "--client-id", "t-err")
    )
    assert line == "headrace: Bad selector: Unknown flags: [IN_BOGUS] (400)"
    line = one_line_error(run(server, "events", "tail", "/", "--flags", "IN_DONT_FOLLOW"))
    assert "Unsupported flags: [IN_DONT_FOLLOW]" in line
    one_line_error(run(server, "events", "tail", "/", "--format", "xml"), code=2)
    down = run(server, "events", "tail", "/", env={"HEADRACE_API_URL": f"http://127.0.0.1:{free_port()}"})
    assert "is not reachable" in one_line_error(down)
    assert no_channel(server, "t-err")


# -- resuming ---------------------------------------------------------------------------------------------------


def test_resume_across_a_dropped_connection(server: Server, tails: list[Tail]) -> None:
    d = "/tail-drop"
    mkdir(server, d)
    proxy = Proxy(server.api_port)
    try:
        tail = Tail(server, d, "--flags", "IN_CLOSE_WRITE", "--count", "4", api_url=proxy.url)
        tails.append(tail)
        tail.wait_subscribed()
        put(server, f"{d}/f1.h5")
        assert tail.take(1) == [f"{d}/f1.h5 IN_CLOSE_WRITE"]
        # The server writes f2's event into a connection that no longer delivers: it counts it as sent.
        proxy.blackhole()
        put(server, f"{d}/f2.h5")
        proxy.wait_dropped(b"f2.h5")
        proxy.cut()
        put(server, f"{d}/f3.h5")  # while the client cannot connect
        proxy.resume()
        assert tail.take(2) == [f"{d}/f2.h5 IN_CLOSE_WRITE", f"{d}/f3.h5 IN_CLOSE_WRITE"]
        put(server, f"{d}/f4.h5")
        code, lines, err = tail.finish()
    finally:
        proxy.cut()
    assert code == 0, err
    assert lines == [f"{d}/f{i}.h5 IN_CLOSE_WRITE" for i in (1, 2, 3, 4)]
    assert "reconnecting" in err and "reconnected" in err and "lost" not in err.replace("connection lost", "")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
def test_resume_across_a_server_restart(fresh_server: Server, tails: list[Tail], how: signal.Signals) -> None:
    srv = fresh_server.start()
    d = "/restart"
    mkdir(srv, d)
    proxy = Proxy(srv.api_port)
    try:
        tail = Tail(srv, d, "--flags", "IN_CLOSE_WRITE", "--count", "4", api_url=proxy.url)
        tails.append(tail)
        tail.wait_subscribed()
        put(srv, f"{d}/f1.h5")
        assert tail.take(1) == [f"{d}/f1.h5 IN_CLOSE_WRITE"]
        proxy.blackhole()
        put(srv, f"{d}/f2.h5")
        proxy.wait_dropped(b"f2.h5")  # sent, never received
        srv.stop(how)
        proxy.cut()
        srv.start()
        put(srv, f"{d}/f3.h5")  # on the restarted server, before the client is back
        proxy.resume()
        assert tail.take(2) == [f"{d}/f2.h5 IN_CLOSE_WRITE", f"{d}/f3.h5 IN_CLOSE_WRITE"]
        put(srv, f"{d}/f4.h5")
        code, lines, err = tail.finish()
    finally:
        proxy.cut()
    assert code == 0, err
    assert lines == [f"{d}/f{i}.h5 IN_CLOSE_WRITE" for i in (1, 2, 3, 4)]


def test_server_shutdown_is_followed_by_a_reconnection(fresh_server: Server, tails: list[Tail]) -> None:
    """Without a proxy: the client reads SYSTEM SHUTDOWN, retries until the server is back, and goes on."""
    srv = fresh_server.start()
    d = "/shutdown"
    mkdir(srv, d)
    tail = Tail(srv, d, "--flags", "IN_CLOSE_WRITE", "--count", "3")
    tails.append(tail)
    tail.wait_subscribed()
    put(srv, f"{d}/f1.h5")
    assert tail.take(1) == [f"{d}/f1.h5 IN_CLOSE_WRITE"]
    srv.stop()
    srv.start()
    put(srv, f"{d}/f2.h5")
    put(srv, f"{d}/f3.h5")
    code, lines, err = tail.finish()
    assert code == 0, err
    assert lines == [f"{d}/f{i}.h5 IN_CLOSE_WRITE" for i in (1, 2, 3)]
    assert "headrace: warning: the server is shutting down; reconnecting\n" in err
    assert "headrace: warning: reconnected\n" in err
    assert tail.channels() == []
