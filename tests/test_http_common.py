"""headrace.http_common.answer: the error envelope the door and the pool server share, against scripted ASGI
calls (no server)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from starlette.responses import Response

from headrace.errors import MethodNotAllowed, NotFound, PayloadTooLarge
from headrace.http.body import ClientGone
from headrace.http_common import answer

SCOPE = {"type": "http", "method": "GET", "path": "/x", "headers": []}
log = logging.getLogger("test.envelope")


def run(handle: Any, **kw: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    asyncio.run(answer(SCOPE, receive, send, handle, log=log, **kw))
    return sent


def status_and_body(sent: list[dict[str, Any]]) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], headers, json.loads(body)


def test_a_response_is_sent_and_starts_are_seen() -> None:
    seen: list[int] = []

    async def handle(send: Any) -> Response:
        return Response(b"hi", status_code=201)

    sent = run(handle, on_start=seen.append)
    assert sent[0]["status"] == 201 and seen == [201]


def test_errors_in_dcache_shape() -> None:
    async def missing(send: Any) -> None:
        raise NotFound("no such file")

    status, _, body = status_and_body(run(missing))
    assert (status, body) == (404, {"status": "404", "title": "Not Found", "detail": "no such file"})

    async def not_allowed(send: Any) -> None:
        raise MethodNotAllowed("no")

    status, headers, _ = status_and_body(run(not_allowed, allow="GET, PUT"))
    assert status == 405 and headers["allow"] == "GET, PUT"

    async def too_large(send: Any) -> None:
        raise PayloadTooLarge("big")

    status, headers, _ = status_and_body(run(too_large))
    assert status == 413 and headers["connection"] == "close"

    async def cut(send: Any) -> None:
        raise ClientGone()

    status, _, body = status_and_body(run(cut))
    assert status == 400 and "ended early" in body["detail"]


def test_an_unexpected_exception_is_logged_and_tells_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(send: Any) -> None:
        raise KeyError("secret-internal-name")

    with caplog.at_level(logging.ERROR, logger="test.envelope"):
        status, _, body = status_and_body(run(broken))
    assert status == 500 and "secret" not in json.dumps(body)
    assert "secret-internal-name" in caplog.text and "Traceback" in caplog.text


def test_an_error_after_the_start_sends_nothing_more() -> None:
    async def half(send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise NotFound("gone midway")

    sent = run(half)
    assert [m["type"] for m in sent] == ["http.response.start"]
