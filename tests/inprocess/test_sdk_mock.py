"""The SDK against answers no healthy server gives (httpx.MockTransport): how failures become its errors, and
what it sends. tests/test_client.py holds the SDK against the real door and frontend."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from headrace.client import Client, ClientConfig, HeadraceClientError, HeadraceConnectionError

CONFIG = ClientConfig(door="http://door.mock", api="http://api.mock", username="u", key="k")


def client(handler: Callable[[httpx.Request], httpx.Response], config: ClientConfig = CONFIG) -> Client:
    return Client(config, transport=httpx.MockTransport(handler))


def test_a_problem_body_becomes_the_errors_detail() -> None:
    def problem(request: httpx.Request) -> httpx.Response:
        body = {"status": "412", "title": "Precondition Failed", "detail": "File exists: /a"}
        return httpx.Response(412, json=body)

    with client(problem) as c, pytest.raises(HeadraceClientError) as err:
        c.mkdir("/a")
    assert (err.value.status, err.value.detail, err.value.path) == (412, "File exists: /a", "/a")
    assert str(err.value) == "/a: File exists: /a (412)"


def test_an_openwhisk_error_and_a_text_body_are_read_too() -> None:
    def whisk(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "This frontend runs no activations.", "code": "x1"})

    with client(whisk) as c, pytest.raises(HeadraceClientError) as err:
        c.stat("/f")
    assert err.value.status == 503 and err.value.detail == "This frontend runs no activations."

    def text(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad gateway\nupstream gone\n")

    with client(text) as c, pytest.raises(HeadraceClientError) as err:
        c.stat("/f")
    assert err.value.status == 502 and err.value.detail == "Bad gateway"  # its first line only


def test_a_malformed_answer_is_an_error_not_a_crash() -> None:
    for answer in (httpx.Response(200, text="<html>not json</html>"), httpx.Response(200, json=[1, 2])):
        with client(lambda r, a=answer: a) as c, pytest.raises(HeadraceClientError, match="Malformed answer"):
            c.stat("/f")


def test_transport_failures_name_the_server() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with client(refused) as c, pytest.raises(HeadraceConnectionError) as err:
        c.stat("/f")
    assert err.value.url == "http://api.mock" and "not reachable" in str(err.value) and "headrace up" in str(err.value)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with client(slow) as c, pytest.raises(HeadraceConnectionError, match="did not answer in time"):
        c.stat("/f")


def test_credentials_it_sends() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"fileType": "DIR", "fileName": "", "size": 0, "mtime": 0})

    with client(record) as c:
        c.stat("/")
    with client(record, ClientConfig(door="http://door.mock", api="http://api.mock", token="TOKEN")) as c:
        c.stat("/")
    assert seen[0].headers["authorization"].startswith("Basic ")
    assert seen[1].headers["authorization"] == "Bearer TOKEN"
    assert all(r.headers["user-agent"] == "headrace-client" for r in seen)

    def unauthorized(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"status": "401", "title": "Unauthorized", "detail": "Unauthorized"})

    anonymous = ClientConfig(door="http://d.mock", api="http://a.mock")
    with client(unauthorized, anonymous) as c, pytest.raises(HeadraceClientError) as err:
        c.stat("/")
    assert err.value.status == 401 and "no credentials" in err.value.detail  # it says what to set
