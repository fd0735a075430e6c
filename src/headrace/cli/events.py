"""`headrace events tail`: follow storage events as they happen, through the frontend's SSE API.

The command makes a channel, subscribes it to an inotify watch on PATH and prints one line per event until
it is stopped (Ctrl-C, SIGTERM), `--count` events have been printed, or `--timeout` seconds have passed. A
dropped connection or a server restart is survived: the stream reconnects with `Last-Event-ID`, so no event
is lost or printed twice (`headrace.client.events.EventStream`). The channel is deleted on the way out.

stdout carries only events; warnings (lost events, reconnections) and the reason for stopping go to stderr.
Exit status: 0 when stopped by --count, --timeout (alone) or because the watched path went away; 1 for an
error, including --timeout passing before --count events; 130 on Ctrl-C; 143 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import socket
import sys
import time
from enum import StrEnum
from types import FrameType
from typing import Annotated, Any

import typer

from headrace.cli.common import CliError, report, usage_error
from headrace.client import ClientConfig, normalize_remote
from headrace.client.events import EventStream, SseEvent

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Storage events: follow changes as they happen.")

#: Self events: about the watched object itself, so they carry no name.
SELF_FLAGS = frozenset({"IN_DELETE_SELF", "IN_MOVE_SELF", "IN_IGNORED", "IN_Q_OVERFLOW"})
EXIT_TERMINATED = 128 + signal.SIGTERM


class Format(StrEnum):
    inotify = "inotify"
    cloudevents = "cloudevents"
    json = "json"


class _Terminated(BaseException):
    """SIGTERM: unwinds like Ctrl-C does, so that the channel is deleted on the way out."""


class _SigTerm:
    """SIGTERM handler that unwinds only while the tail waits for the next event. Raised anywhere else (in
    the middle of an HTTP exchange, as the subscription's answer is read, or while an event is printed) the
    exception would leave the client's connections or stdout half-used, and the channel's deletion on the
    way out could then fail: there it is noted, and raised at the next wait."""

    def __init__(self) -> None:
        self.pending = False
        self.armed = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True
        if self.armed:
            self.armed = False
            raise _Terminated

    def arm(self) -> None:
        """From here until disarm(), SIGTERM unwinds at once; one that came before unwinds now."""
        self.armed = True
        if self.pending:
            self.armed = False
            raise _Terminated

    def disarm(self) -> None:
        self.armed = False


def parse_flags(values: list[str] | None) -> list[str]:
    """Flag names from repeated and comma-separated --flags, upper-cased, with IN_ added where missing
    (`close_write` is IN_CLOSE_WRITE). The server judges them: unknown ones are its 400."""
    out: list[str] = []
    for value in values or []:
        for item in value.split(","):
            name = item.strip().upper()
            if not name:
                continue
            if not name.startswith("IN_"):
                name = "IN_" + name
            if name not in out:
                out.append(name)
    return out


def _printable(text: str) -> str:
    """One line whatever the name holds: control characters become \\xNN escapes."""
    return "".join(c if c >= " " and c != "\x7f" else f"\\x{ord(c):02x}" for c in text)


def inotify_line(payload: dict[str, Any], watched: str) -> str:
    """`/raw/a.h5 IN_CLOSE_WRITE`: the watched path joined with the event's name, the mask, and for moves the
    cookie that pairs IN_MOVED_FROM with IN_MOVED_TO."""
    name = payload.get("name")
    path = posixpath.join(watched, name) if isinstance(name, str) and name else watched
    line = f"{_printable(path)} {','.join(str(m) for m in payload.get('mask') or [])}"
    cookie = payload.get("cookie")
    if cookie:
        line += f" cookie={cookie}"
    return line


def json_record(cloudevent: dict[str, Any], watched: str) -> dict[str, Any]:
    """The `--format json` object of one event: path (the old path for IN_MOVED_FROM), name (as inotify names
    it: relative to the watched directory; absent for events on the watched object itself), mask, then the
    event's data fields (kind, isDir, pnfsId, size, checksums, offset, time, user, ...)."""
    data = cloudevent.get("data")
    data = data if isinstance(data, dict) else {}
    mask = [m for m in str(cloudevent.get("inotifymask") or "").split(",") if m]
    path = str(data.get("path") or cloudevent.get("subject") or watched)
    if mask and mask[0] == "IN_MOVED_FROM" and data.get("oldPath"):
        path = str(data["oldPath"])
    out: dict[str, Any] = {"path": path}
    if path != watched and not (mask and mask[0] in SELF_FLAGS):
        prefix = watched.rstrip("/") + "/"
        out["name"] = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
    out["mask"] = mask
    out.update((k, v) for k, v in data.items() if k not in ("path", "name"))
    return out


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _warn(text: str) -> None:
    report(f"warning: {text}")


def _default_client_id() -> str:
    return f"headrace-events-tail@{socket.gethostname()}:{os.getpid()}"


class _Tail:
    """Turns the stream's events into output lines, and says when to stop."""

    def __init__(self, stream: EventStream, watched: str, fmt: Format) -> None:
        self.stream = stream
        self.watched = watched
        self.fmt = fmt
        self.printed = 0
        self.ended: str | None = None  # why the watch ended, once it has
        self.last_mask: list[str] = []

    def handle(self, event: SseEvent) -> None:
        kind = event.system
        if kind is not None:
            self._system(kind, event.data)
            return
        payload = event.payload
        if event.type != "inotify" or not isinstance(payload, dict):
            return
        if event.subscription is not None and event.subscription not in self.stream.subscriptions:
            return  # a subscription of an earlier channel (cannot happen with one watch, but be exact)
        if "specversion" in payload:
            mask = [m for m in str(payload.get("inotifymask") or "").split(",") if m]
        else:
            mask = [str(m) for m in payload.get("mask") or []]
        if mask == ["IN_Q_OVERFLOW"]:
            _warn(f"{self.watched}: the server's queue for this watch overflowed; events were lost")
            return
        if mask == ["IN_IGNORED"]:
            self._watch_ended()
            return
        self.last_mask = mask
        if self.fmt is Format.inotify:
            line = inotify_line(payload, self.watched)
        elif self.fmt is Format.cloudevents:
            line = _compact(payload)
        else:
            line = _compact(json_record(payload, self.watched))
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        self.printed += 1

    def _system(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "EVENT_LOSS":
            detail = data.get("detail") or "the server no longer held every event since the last one received"
            _warn(f"events were lost: {detail}")
        elif kind == "SUBSCRIPTION_CLOSED" and data.get("subscription") in self.stream.subscriptions:
            self._watch_ended()

    def _watch_ended(self) -> None:
        if self.ended is None:
            why = "was deleted" if "IN_DELETE_SELF" in self.last_mask else "is no longer watched (the server closed it)"
            self.ended = f"{self.watched} {why}; stopping"


@app.command("tail")
def tail(
    path: Annotated[str, typer.Argument(help="Remote file or directory to watch")] = "/",
    flags: Annotated[
        list[str] | None,
        typer.Option(
            "--flags",
            help="inotify flags to report (IN_CLOSE_WRITE, IN_CREATE, IN_MOVE, ...; the IN_ may be left out); "
            "repeatable or comma-separated. Default: all events.",
        ),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="Also events of every directory below PATH")
    ] = False,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            help="inotify: `PATH MASK` lines (and cookie=C for moves); cloudevents: one CloudEvents 1.0 JSON per line; "
            "json: one object per line with path, name, mask and the event's data (size, checksums, offset...)",
        ),
    ] = Format.inotify,
    count: Annotated[int | None, typer.Option("--count", "-n", help="Exit after N events", min=1)] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Exit after S seconds")] = None,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="Name the channel (GET /api/v1/events/channels?client-id=)")
    ] = None,
) -> None:
    """Print storage events under PATH as they happen; survives dropped connections and server restarts."""
    if timeout is not None and not timeout > 0:
        usage_error("--timeout: must be a positive number of seconds")
    watched = normalize_remote(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    stream = EventStream(ClientConfig.load(), client_id=client_id or _default_client_id(), on_notice=_warn)
    term = _SigTerm()
    previous = signal.signal(signal.SIGTERM, term)
    try:
        stream.open()
        stream.subscribe_inotify(
            watched,
            flags=parse_flags(flags),
            recursive=recursive,
            format="inotify" if fmt is Format.inotify else "cloudevents",
        )
        t = _Tail(stream, watched, fmt)
        while (count is None or t.printed < count) and t.ended is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            term.arm()
            try:
                event = stream.next(left)
            finally:
                term.disarm()
            if event is not None:
                t.handle(event)
        if term.pending:
            raise _Terminated
    except _Terminated:
        raise typer.Exit(EXIT_TERMINATED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        stream.close()
    if t.ended is not None:
        report(t.ended)
    elif count is not None and t.printed < count:
        raise CliError(f"timed out after {timeout:g} s with {t.printed} of {count} events")
