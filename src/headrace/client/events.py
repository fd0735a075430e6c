"""Following storage events through the frontend's SSE API (`/api/v1/events`): `EventStream`.

    with EventStream(ClientConfig.load(), client_id="my-tool") as stream:
        stream.subscribe_inotify("/raw", flags=["IN_CLOSE_WRITE"], recursive=True)
        for event in stream:
            print(event.id, event.data)

An `EventStream` creates a channel (with a client-id, so that `GET /events/channels?client-id=` finds it),
subscribes it, and reads its server-sent events on a thread of its own; the caller takes them with
`next(timeout)` or by iterating. It remembers the id of the last event it received, and when the connection
drops or the server restarts (SYSTEM `SHUTDOWN`; channels survive a restart) it reconnects with
`Last-Event-ID`, with exponential backoff, so that no event is lost or repeated. `close()` deletes the
channel. Only the initial `open()` and `subscribe()` fail fast; after that the stream keeps trying until it
is closed, except for answers no retry can change (401, 403, another client taking the channel).

If the channel itself is gone when reconnecting (it expired after its timeout without a client, 300 s by
default), the stream makes a new one with the same subscriptions and hands out a SYSTEM `EVENT_LOSS` event
with `"detail"`, since what happened in between is lost.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from headrace.client.storage import Client, ClientConfig, HeadraceClientError, normalize_remote

__all__ = ["EVENTS", "EventStream", "SseEvent", "SseParser"]

EVENTS = "/api/v1/events"
#: Answers to a reconnection worth retrying: the server is starting, stopping or overloaded.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: `type` is the SSE event name ("inotify", "metronome", "SYSTEM"), `data` the
    parsed JSON of its data field, `id` the channel's event number (None for SYSTEM events)."""

    type: str
    data: Any
    id: int | None = None

    @property
    def system(self) -> str | None:
        """The kind of a SYSTEM event (SHUTDOWN, EVENT_LOSS, SUBSCRIPTION_CLOSED, ...); None for others."""
        if self.type != "SYSTEM" or not isinstance(self.data, dict):
            return None
        kind = self.data.get("type")
        return kind if isinstance(kind, str) else None

    @property
    def payload(self) -> Any:
        """The event itself: the "event" member of a subscription's data ({"event": ..., "subscription"})."""
        return self.data.get("event") if isinstance(self.data, dict) else None

    @property
    def subscription(self) -> str | None:
        sub = self.data.get("subscription") if isinstance(self.data, dict) else None
        return sub if isinstance(sub, str) else None


@dataclass
class SseParser:
    """Server-sent events framing (the WHATWG rules): feed it lines, it returns an event at each blank line
    that ends one. Comment lines (":...") and unknown fields are skipped; "data" lines are joined with
    newlines; an "id" applies to the event it is part of only (dCache's SYSTEM events carry none)."""

    _type: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._data:
            self._type, self._id = "", None
            return None
        text = "\n".join(self._data)
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        event_id: int | None = None
        if self._id is not None and self._id.strip().lstrip("-").isdigit():
            event_id = int(self._id)
        event = SseEvent(self._type or "message", data, event_id)
        self._type, self._data, self._id = "", [], None
        return event


@dataclass(frozen=True)
class _Notice:
    text: str


class _Fatal(Exception):
    def __init__(self, error: HeadraceClientError) -> None:
        super().__init__(str(error))
        self.error = error


class EventStream:
    """A channel of the events API, its subscriptions, and a reconnecting reader of its SSE stream.

    `keepalive` asks the server for a comment line after that many idle seconds (a headrace extension) so
    that a connection that died silently is noticed after three of them; None turns it off. `on_notice` is
    called, in the thread that calls `next()`, with one-line descriptions of connection trouble
    ("connection lost ...; reconnecting", "reconnected")."""

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        client_id: str | None = None,
        keepalive: float | None = 15.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        on_notice: Callable[[str], None] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.config = config if config is not None else ClientConfig.load()
        self.client_id = client_id
        self.keepalive = keepalive
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_notice = on_notice
        self.timeout = timeout
        #: The id of the last numbered event received; sent as Last-Event-ID when reconnecting.
        self.last_id: int | None = None
        #: How many times the stream connected (1 after the first connection).
        self.connections = 0
        self._channel: str | None = None
        self._subs: dict[str, tuple[str, dict[str, Any]]] = {}  # subscription URL -> (event type, selector)
        self._lock = threading.Lock()
        self._control = Client(self.config, timeout=timeout)
        self._queue: queue.Queue[SseEvent | _Notice | HeadraceClientError] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: HeadraceClientError | None = None
        self._closed = False

    # -- channel and subscriptions ------------------------------------------------------------------------

    @property
    def channel_url(self) -> str | None:
        with self._lock:
            return self._channel

    @property
    def subscriptions(self) -> list[str]:
        """The URLs of this stream's subscriptions, as the server named them (its `Location` answers)."""
        with self._lock:
            return list(self._subs)

    def open(self) -> str:
        """Create the channel (once); its absolute URL."""
        with self._lock:
            if self._channel is not None:
                return self._channel
        url = self._create_channel(self._control)
        with self._lock:
            self._channel = url
        return url

    def subscribe(self, event_type: str, selector: dict[str, Any]) -> str:
        """Subscribe the channel to `event_type` with `selector`; the subscription's URL. The server's 400
        (unknown path, bad flags...) comes back as HeadraceClientError with its detail sentence."""
        channel = self.open()
        url = self._subscribe(self._control, channel, event_type, selector)
        with self._lock:
            self._subs[url] = (event_type, selector)
        return url

    def subscribe_inotify(
        self, path: str, *, flags: list[str] | None = None, recursive: bool = False, format: str = "inotify"
    ) -> str:
        """An inotify watch on `path`; `recursive` and `format="cloudevents"` are headrace's extensions and
        are sent only when asked for, so that the selector stays dCache's otherwise."""
        selector: dict[str, Any] = {"path": normalize_remote(path)}
        if flags:
            selector["flags"] = list(flags)
        if recursive:
            selector["recursive"] = True
        if format != "inotify":
            selector["format"] = format
        return self.subscribe("inotify", selector)

    def _create_channel(self, client: Client) -> str:
        body = {"client-id": self.client_id} if self.client_id is not None else None
        response = client.request("POST", f"{self.config.api}{EVENTS}/channels", json=body)
        location: str | None = response.headers.get("location")
        if response.status_code != 201 or not location:
            raise HeadraceClientError(response.status_code, "The server made no channel (no Location in its answer)")
        return location

    @staticmethod
    def _subscribe(client: Client, channel: str, event_type: str, selector: dict[str, Any]) -> str:
        url = f"{channel}/subscriptions/{quote(event_type, safe='')}"
        try:
            response = client.http.post(url, json=selector)
        except httpx.HTTPError as exc:
            raise client.connection_error(exc, url) from exc
        # 303 See Other: the same target is already subscribed in this channel; that subscription is ours.
        if response.status_code not in (201, 303):
            raise client.status_error(response)
        location: str | None = response.headers.get("location")
        if not location:
            raise HeadraceClientError(response.status_code, "The server made no subscription (no Location)")
        return location

    # -- reading ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading the stream (`next()` and iteration do this on first use)."""
        if self._thread is None:
            if self.channel_url is None:
                raise HeadraceClientError(0, "EventStream: open() and subscribe() before reading")
            self._thread = threading.Thread(target=self._run, name="headrace-events", daemon=True)
            self._thread.start()

    def next(self, timeout: float | None = None) -> SseEvent | None:
        """The next event (SYSTEM ones included), or None when `timeout` seconds pass without one. Raises
        HeadraceClientError when the stream cannot go on (COMPETING_CLIENT, 401/403 on reconnecting)."""
        if self._error is not None:
            raise self._error
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if deadline is None:
                    item = self._queue.get()
                else:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if isinstance(item, _Notice):
                if self.on_notice is not None:
                    self.on_notice(item.text)
                continue
            if isinstance(item, HeadraceClientError):
                self._error = item
                raise item
            return item

    def __iter__(self) -> Iterator[SseEvent]:
        while True:
            event = self.next()
            if event is not None:
                yield event

    def _run(self) -> None:
        client = Client(self.config, timeout=self.timeout)
        delay = self.backoff_initial
        trouble: str | None = None  # what broke the last connection, until a new one stands
        try:
            while not self._stop.is_set():
                before = self.connections
                try:
                    reason = self._read_once(client, trouble)
                except _Fatal as fatal:
                    self._queue.put(fatal.error)
                    return
                except HeadraceClientError as exc:  # a retryable answer or a transport failure
                    reason = str(exc)
                if self._stop.is_set():
                    return
                if self.connections > before:
                    delay = self.backoff_initial
                if trouble is None:
                    self._queue.put(_Notice(f"{reason}; reconnecting"))
                trouble = reason
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(self.backoff_max, delay * 2)
        finally:
            client.close()

    def _read_once(self, client: Client, trouble: str | None) -> str:
        """One connection: read until it ends; why it ended. Raises _Fatal when retrying cannot help."""
        channel = self.channel_url
        assert channel is not None
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        params = {"keepalive": f"{self.keepalive:g}"} if self.keepalive else None
        read = max(10.0, 3 * self.keepalive) if self.keepalive else None
        try:
            with client.http.stream(
                "GET", channel, headers=headers, params=params, timeout=httpx.Timeout(10.0, read=read)
            ) as response:
                if not response.is_success:
                    response.read()
                    return self._refused(client, response)
                self.connections += 1
                if trouble is not None:
                    self._queue.put(_Notice("reconnected"))
                parser = SseParser()
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is None:
                        continue
                    if event.id is not None:
                        self.last_id = event.id
                    self._queue.put(event)
                    kind = event.system
                    if kind == "SHUTDOWN":
                        return "the server is shutting down"
                    if kind == "COMPETING_CLIENT":
                        raise _Fatal(
                            HeadraceClientError(0, "another client connected to this event channel and took it over")
                        )
                return "the server ended the event stream"
        except httpx.HTTPError as exc:
            if self._stop.is_set():
                return "closed"
            raise client.connection_error(exc, channel) from exc

    def _refused(self, client: Client, response: httpx.Response) -> str:
        status = response.status_code
        if status in RETRY_STATUSES:
            raise client.status_error(response)
        if status == 404 and not self._stop.is_set():
            return self._recreate(client)
        raise _Fatal(client.status_error(response))

    def _recreate(self, client: Client) -> str:
        """The channel is gone (expired while no client was connected, or the server lost it): make a new one
        with the same subscriptions, and say that events were lost."""
        with self._lock:
            subs = list(self._subs.values())
        try:
            channel = self._create_channel(client)
            renamed = {self._subscribe(client, channel, t, sel): (t, sel) for t, sel in subs}
        except HeadraceClientError as exc:
            if exc.status in RETRY_STATUSES or exc.status == 0:
                raise
            raise _Fatal(exc) from exc
        with self._lock:
            self._channel, self._subs = channel, renamed
        self.last_id = None
        detail = "the event channel no longer existed on the server (expired?); made a new one"
        self._queue.put(SseEvent("SYSTEM", {"type": "EVENT_LOSS", "detail": detail}))
        return detail

    # -- closing ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading and delete the channel (its subscriptions go with it). Idempotent; never raises for a
        server that cannot be reached (the channel then expires by itself)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        channel = self.channel_url
        try:
            if channel is not None:
                self._control.http.delete(channel, timeout=5.0)
        except httpx.HTTPError:
            pass
        finally:
            if self._thread is not None:
                self._thread.join(2.0)
            self._control.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
