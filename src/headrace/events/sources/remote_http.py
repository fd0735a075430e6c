"""HTTP to another dCache or headrace frontend for the source kinds: the credentials a source was given (a token
file re-read when it changes, since tokens expire) and reading the remote's files through its WebDAV door
(`RemoteFiles`)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from headrace.events.sources.base import SourceConfigError
from headrace.tls import tls_context

CREDENTIAL_KEYS = ("bearer", "token_file", "basic")


class Credentials:
    """One of `bearer` (a token), `token_file` (a file holding one, re-read whenever its mtime or size changes)
    or `basic` ("user:key"), as the `Authorization` header the remote takes."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        given = [k for k in CREDENTIAL_KEYS if config.get(k) not in (None, "")]
        if len(given) != 1:
            raise SourceConfigError(
                "Give exactly one of bearer, token_file or basic"
                + (f" (given: {', '.join(given)})" if given else " (the remote needs an authenticated user)")
            )
        self.kind = given[0]
        value = config[self.kind]
        if not isinstance(value, str):
            raise SourceConfigError(f"{self.kind} must be a string")
        if self.kind == "basic" and ":" not in value:
            raise SourceConfigError('basic must be "user:key"')
        if self.kind == "token_file" and not os.path.isabs(value):
            raise SourceConfigError("token_file must be an absolute path")
        self.value = value
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def header(self) -> str:
        """The `Authorization` header value now (a token file is read again when it has changed); OSError when
        the token file cannot be read."""
        if self.kind == "basic":
            return "Basic " + base64.b64encode(self.value.encode()).decode()
        if self.kind == "bearer":
            return "Bearer " + self.value.strip()
        st = os.stat(self.value)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with open(self.value, encoding="utf-8") as f:
                self._token = f.read().strip()
            self._stamp = stamp
        return "Bearer " + self._token

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.header()}


def client(timeout: float = 30.0) -> httpx.AsyncClient:
    """An async client on this process's TLS context, with no read deadline for streams given per request."""
    return httpx.AsyncClient(verify=tls_context(), timeout=httpx.Timeout(timeout), follow_redirects=False)


def detail_of(response: httpx.Response) -> str:
    """A remote error's detail (dCache's {"status","title","detail"} body), else its status line."""
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("detail"):
            return f"{response.status_code} {body['detail']}"
    except ValueError:
        pass
    return f"{response.status_code} {response.reason_phrase}"


def raise_for(response: httpx.Response, what: str) -> None:
    """FileNotFoundError for 404, PermissionError for 401/403, RuntimeError for any other failure."""
    if response.is_success:
        return
    message = f"{what}: {detail_of(response)}"
    if response.status_code == 404:
        raise FileNotFoundError(message)
    if response.status_code in (401, 403):
        raise PermissionError(message)
    raise RuntimeError(message)


def range_header(start: int, end: int | None) -> dict[str, str]:
    """The `Range` header asking for bytes [start, end) of a file (end None: to its end; an empty range asks for
    the byte at `start`), or none when that is the whole file."""
    if not start and end is None:
        return {}
    return {"Range": f"bytes={start}-" + ("" if end is None else str(max(end - 1, start)))}


def ranged_size(response: httpx.Response) -> int | None:
    """The whole file's size from the response to a (possibly ranged) GET: the total of its Content-Range, else
    the Content-Length of a 200 (the whole file); None when the response says neither."""
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    if response.status_code == 200 and response.headers.get("content-length", "").isdigit():
        return int(response.headers["content-length"])
    return None


async def empty_body() -> AsyncIterator[bytes]:
    """The body of a ranged GET answered 416 (nothing at or past the range's start)."""
    return
    yield b""  # pragma: no cover - makes this an async generator


def door_url(door: str, path: str) -> str:
    """The URL of the remote `path` under the WebDAV base `door`."""
    return door.rstrip("/") + quote(path, safe="/")


async def discover_door(http: httpx.AsyncClient, api: str, credentials: Credentials) -> str | None:
    """The remote's WebDAV door from its `/doors` (dCache's login broker), the first that speaks http(s);
    None when the remote answers none (or has no such resource)."""
    response = await http.get(api.rstrip("/") + "/doors", headers=credentials.headers())
    if response.status_code in (404, 405):
        return None
    raise_for(response, "GET /doors")
    doors = response.json()
    for door in doors if isinstance(doors, list) else []:
        protocol = door.get("protocol")
        addresses = door.get("addresses") or []
        if protocol in ("http", "https") and addresses and door.get("port"):
            host = addresses[0]
            host = f"[{host}]" if ":" in host else host
            root = str(door.get("root") or "/").rstrip("/")
            # a door rooted below "/" names paths below its root: the remote path without the root's prefix
            return f"{protocol}://{host}:{door['port']}" + ("#root=" + root if root else "")
    return None


def split_door(door: str) -> tuple[str, str]:
    """A discovered door's base URL and root ("" for "/")."""
    base, _, root = door.partition("#root=")
    return base, root


class DoorFiles:
    """`RemoteFiles` through a WebDAV door: a streaming GET with the source's credentials and a Range."""

    def __init__(self, door: str, credentials: Credentials) -> None:
        self.base, self.root = split_door(door)
        self.credentials = credentials

    def url(self, path: str) -> str:
        if self.root and (path == self.root or path.startswith(self.root + "/")):
            path = path[len(self.root) :] or "/"
        return door_url(self.base, path)

    async def open(self, path: str, start: int = 0, end: int | None = None) -> tuple[int | None, AsyncIterator[bytes]]:
        headers = {**self.credentials.headers(), **range_header(start, end)}
        http = httpx.AsyncClient(verify=tls_context(), timeout=httpx.Timeout(30, read=300), follow_redirects=True)
        try:
            request = http.build_request("GET", self.url(path), headers=headers)
            response = await http.send(request, stream=True)
            if response.status_code == 416:  # nothing at or past `start`
                await response.aclose()
                await http.aclose()
                return None, empty_body()
            if not response.is_success:
                await response.aread()
                raise_for(response, f"GET {path}")
        except BaseException:
            await http.aclose()
            raise
        size = ranged_size(response)
        skip = start if response.status_code == 200 else 0  # a door that ignored the Range
        limit = None if end is None else end - start

        async def body() -> AsyncIterator[bytes]:
            nonlocal skip, limit
            try:
                async for chunk in response.aiter_raw():
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                    if limit is not None:
                        chunk = chunk[:limit]
                        limit -= len(chunk)
                    if chunk:
                        yield chunk
                    if limit == 0:
                        break
            finally:
                await response.aclose()
                await http.aclose()

        return size, body()
