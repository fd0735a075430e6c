"""headrace.http.body: reading ASGI request bodies with bounds and deadlines, against scripted receives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from headrace.errors import IncompleteUpload, PayloadTooLarge, RequestTimeout
from headrace.http.body import WRITE_BUFFER, ClientGone, RequestBody, read_small

Receive = Callable[[], Awaitable[dict[str, Any]]]


def scripted(*messages: dict[str, Any]) -> Receive:
    """A receive that yields `messages`, then waits forever (a client that sends nothing more)."""
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def chunks(*parts: bytes) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]


class ListSink:
    def __init__(self) -> None:
        self.reserved = 0
        self.written: list[bytes] = []

    def reserve_for(self, n: int) -> None:
        self.reserved += n

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_read_small_whole_body() -> None:
    body = asyncio.run(read_small(scripted(*chunks(b"<a", b"/>")), 4, limit=10, timeout=5))
    assert body == b"<a/>"


def test_read_small_bounds() -> None:
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_small(scripted(), 11, limit=10, timeout=5))  # refused from Content-Length alone
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_small(scripted(*chunks(b"x" * 6, b"x" * 6)), None, limit=10, timeout=5))
    with pytest.raises(RequestTimeout):
        asyncio.run(read_small(scripted(*chunks(b"x", b"x")[:1]), None, limit=10, timeout=0.05))
    with pytest.raises(ClientGone):
        asyncio.run(read_small(scripted({"type": "http.disconnect"}), None, limit=10, timeout=5))


def test_into_streams_in_large_chunks_and_checks_the_length() -> None:
    part = b"y" * (WRITE_BUFFER // 2 + 1)
    sink = ListSink()
    n = asyncio.run(RequestBody(scripted(*chunks(part, part, b"z")), 2 * len(part) + 1, 5).into(sink))
    assert n == 2 * len(part) + 1 and sink.reserved == n
    assert [len(w) for w in sink.written] == [2 * len(part), 1]
    with pytest.raises(IncompleteUpload, match="Content-Length"):
        asyncio.run(RequestBody(scripted(*chunks(b"abc")), 4, 5).into(ListSink()))


def test_into_idle_timeout_and_disconnect() -> None:
    with pytest.raises(IncompleteUpload, match="No data"):
        asyncio.run(RequestBody(scripted(*chunks(b"a", b"b")[:1]), None, 0.05).into(ListSink()))
    gone = [{"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.disconnect"}]
    with pytest.raises(ClientGone):
        asyncio.run(RequestBody(scripted(*gone), None, 5).into(ListSink()))


def test_chunks_regroups_and_discard_drains() -> None:
    async def collect(body: RequestBody, size: int) -> list[bytes]:
        return [c async for c in body.chunks(size)]

    got = asyncio.run(collect(RequestBody(scripted(*chunks(b"ab", b"cd", b"e")), 5, 5), 3))
    assert got == [b"abcd", b"e"]
    with pytest.raises(IncompleteUpload):
        asyncio.run(collect(RequestBody(scripted(*chunks(b"ab")), 3, 5), 3))
    receive = scripted(*chunks(b"a", b"b", b"c"))
    asyncio.run(RequestBody(receive, None, 5).discard())
    with pytest.raises(RequestTimeout):  # nothing left: the next read waits
        asyncio.run(read_small(receive, None, limit=1, timeout=0.05))
