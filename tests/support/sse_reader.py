"""A test-side SSE client: reads a channel's stream on a thread, keeps every raw line, parses frames."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from harness import client


class SseReader:
    def __init__(
        self,
        url: str,
        auth: tuple[str, str],
        *,
        last_event_id: int | str | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        self.frames: queue.Queue[dict[str, Any]] = queue.Queue()
        self.lines: list[str] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self._sock: socket.socket | None = None
        self._ready = threading.Event()
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self._client = client(auth=auth)
        self._cm = self._client.stream("GET", url, headers=headers, params=params, timeout=httpx.Timeout(30, read=None))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the stream did not start"

    def _run(self) -> None:
        try:
            with self._cm as response:
                self.status = response.status_code
                self.headers = response.headers
                self._sock = response.extensions["network_stream"].get_extra_info("socket")
                self._ready.set()
                frame: dict[str, Any] = {}
                for line in response.iter_lines():
                    self.lines.append(line)
                    if line == "":
                        if frame:
                            self.frames.put(frame)
                        frame = {}
                        continue
                    name, _, value = line.partition(": ")
                    if name == "data":
                        frame["data"] = json.loads(value)
                    elif name == "id":
                        frame["id"] = int(value)
                    else:
                        frame[name] = value
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self._ready.set()
            self.ended.set()

    def next(self, timeout: float = 30.0) -> dict[str, Any]:
        return self.frames.get(timeout=timeout)

    def take(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [self.frames.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Frames up to and including the first that satisfies `pred`."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            f = self.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            out.append(f)
            if pred(f):
                return out

    def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Whatever arrives within `seconds` (used to check that nothing more comes)."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.frames.get(timeout=left))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        """Hang up (closing the socket under the blocked reader thread)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._client.close()
        self.ended.wait(5)


def masks(frames: list[dict[str, Any]]) -> list[tuple[str | None, list[str]]]:
    """(name, mask) of each inotify frame."""
    return [(f["data"]["event"].get("name"), f["data"]["event"]["mask"]) for f in frames if f["event"] == "inotify"]
