"""Event sources: other systems' storage events entering headrace's event log.

A *source* is a named, durable subscription to another storage system's events (a dCache or headrace
frontend's SSE, a Kafka topic of dCache billing records or CloudEvents, S3 bucket notifications, a POSIX
directory tree). Each kind turns what it receives into `RemoteEvent`s and hands them, in order, to a `Sink`
together with the position to resume from; the sink appends them to the event log and stores the position in
one transaction, skipping any event whose `key` the log already holds for that source. So an event enters the
log exactly once however often a kind re-delivers it (after a crash between receiving and storing, after a
remote restart, a Kafka rebalance, a re-listing), and from the log on the controller, the Kafka relay and
retries treat it like a local event (the source is named in it: `StorageEvent.source`, CloudEvents `source`).

This module is the interface every kind is written against; `sink.py` holds the database implementation,
`runner.py` the supervisor that runs each configured source (restarts with backoff, records the last error),
and one module per kind (`dcache_sse.py`, `kafka.py`, `s3.py`, `directory.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from headrace.events.model import EventKind

#: Source names: what `PUT /api/v1/sources/{name}` accepts (also a CloudEvents `source` path segment).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class SourceConfigError(ValueError):
    """A source's configuration is wrong (an unknown option, a missing url, ...): a 400 at `PUT`, never retried."""


@dataclass(frozen=True)
class RemoteEvent:
    """One change in the remote system, in the words of headrace's canonical event (events.model).

    `path` is the remote path (as the remote names it: the dCache path, the S3 key as `/bucket/key`, the path
    below a directory source's root, always absolute). `key` identifies the event within its source so that a
    re-delivery is recognised: the remote's event id (SSE `id`), the topic/partition/offset (Kafka), the
    object's version or sequencer (S3), the (path, size, mtime, inode) of a directory scan. `url` is where a
    function reads the file (`ctx.storage`); `detail` carries what else the remote said (checksums, etag,
    the remote event verbatim under "remote"). Kinds use only the event kinds that describe what happened
    (CLOSE_WRITE for a complete file, DELETE, MOVE with `old_path`, CREATE for a directory, ATTRIB)."""

    key: str
    kind: EventKind
    path: str
    is_dir: bool = False
    size: int | None = None
    old_path: str | None = None
    time: int | None = None  # µs since epoch as the remote reports it; None: when received
    url: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class Sink(Protocol):
    """Where a running source delivers. One per source; calls come from the source's own task only."""

    async def position(self) -> str | None:
        """The position stored with the last delivered batch (None before the first): an SSE event id, a
        JSON of Kafka offsets, a scan state's version... opaque to everything but the kind that wrote it."""
        ...

    async def deliver(self, events: Sequence[RemoteEvent], position: str | None) -> int:
        """Append `events` (in order) to the event log, skipping keys already there for this source, and store
        `position`, all in one transaction; returns how many were new. Raises `Fenced` when another process
        has taken this source over (the caller must stop)."""
        ...

    async def state(self, key: str) -> Any:
        """Kind-specific durable state (a directory scan's snapshot, an SSE channel's URL), JSON-able."""
        ...

    async def set_state(self, key: str, value: Any) -> None: ...

    async def mark(self) -> int:
        """Where the log stands: an offset at or after this source's last event there, and before any it
        delivers later (0: an empty log). A kind that saves its view less often than it delivers stores the
        mark with the view and, at start, replays `since(mark)` onto it: the log, not a view saved some time
        before a crash, says what was announced."""
        ...

    async def since(self, mark: int) -> list[RemoteEvent]:
        """This source's events in the log after `mark`, in order."""
        ...


class Fenced(RuntimeError):
    """This process no longer holds the source (another controller took it over)."""


class RemoteFiles(Protocol):
    """How a function reads a file its source's events name (`ctx.storage` through the frontend's
    `/api/v1/sources/{name}/files/{path}`, which streams it with the source's credentials: a function never
    holds them). `path` is as the source's events name it."""

    async def open(self, path: str, start: int = 0, end: int | None = None) -> tuple[int | None, AsyncIterator[bytes]]:
        """The file's size (None when unknown) and its bytes from `start` up to `end` (exclusive; None: to the
        end). Raises FileNotFoundError when it is not there, PermissionError when the remote refuses."""
        ...


class Source(Protocol):
    """One configured source of one kind: built from its stored configuration (the kind module's
    `build(name, config) -> Source`, see kinds.py), then run by the runner."""

    name: str

    def files(self) -> RemoteFiles | None:
        """How functions read this source's files (None: they cannot)."""
        ...

    async def run(self, sink: Sink) -> None:
        """Receive and deliver until cancelled. Return or raise to be restarted with backoff (the error is
        shown in `GET /api/v1/sources/{name}` as `lastError`); raise SourceConfigError for a configuration
        that cannot work (not restarted until the source is changed)."""
        ...
