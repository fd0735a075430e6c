"""The `s3` source kind: S3 bucket notifications, the `Records[]` JSON that AWS (through a webhook relay), MinIO
and Ceph RGW send (eventVersion 2.x).

Configuration: `secret` (required: what a notification POST must carry), optionally `endpoint`, `access_key`,
`secret_key`, `region` (the S3 service functions read the objects from: GetObject signed with SigV4 by
botocore, `pip install 'headrace[s3]'`), and optionally `bootstrap`, `topic`, `group` to read the same JSON
from a Kafka topic MinIO publishes to (the `kafka` kind's consuming loop, kafka.Feed).

Notifications are POSTed to `/api/v1/sources/{name}/s3` (the sources API hands the body to `receive`) with
`Authorization: Bearer SECRET`, MinIO's webhook `auth_token` (sent as "Bearer TOKEN", or verbatim by older
MinIO) or Basic credentials whose password is the secret (Ceph RGW's push endpoint with user:password in its
URL); compared in constant time. AWS's `s3:TestEvent` is accepted and ignored.

Each record becomes one event: ObjectCreated:* (Put, Post, Copy, CompleteMultipartUpload) a CLOSE_WRITE,
ObjectRemoved:* (Delete, DeleteMarkerCreated) and LifecycleExpiration:* a DELETE, ObjectTagging:* and
ObjectAcl:* an ATTRIB; others none. The path is "/" + bucket + "/" + the key URL-decoded; the event's key is
"bucket/key/versionId-or-sequencer/eventName", so a retried notification enters the log once (the event name
keeps a versioned bucket's removal of version V apart from its creation, which carry the same versionId).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import importlib.util
import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from headrace.errors import Unauthorized
from headrace.events.model import EventKind
from headrace.events.sources.base import RemoteEvent, RemoteFiles, Sink, SourceConfigError
from headrace.events.sources.kafka import (
    Feed,
    Undecodable,
    feed_options,
    http_url,
    iso_time_us,
    reject_unknown,
    text_option,
)
from headrace.events.sources.remote_http import empty_body, range_header, ranged_size
from headrace.tls import tls_context

KEYS = {"secret", "endpoint", "access_key", "secret_key", "region", "bootstrap", "topic", "group"}

#: eventName (without MinIO's and older RGW's "s3:" prefix) up to its first ":" -> the kind it is.
_KINDS = {
    "ObjectCreated": EventKind.CLOSE_WRITE,
    "ObjectRemoved": EventKind.DELETE,
    "LifecycleExpiration": EventKind.DELETE,
    "ObjectTagging": EventKind.ATTRIB,
    "ObjectAcl": EventKind.ATTRIB,
}


# -- notifications -> events --------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def record_event(record: Any, endpoint: str | None = None) -> RemoteEvent | None:
    """The event of one `Records[]` entry (None for an event name that is none of ours); Undecodable for a
    record without bucket, key or event name."""
    if not isinstance(record, dict):
        raise Undecodable("a record is not a JSON object")
    name = _text(record.get("eventName"))
    s3 = record.get("s3")
    if name is None or not isinstance(s3, dict):
        raise Undecodable("a record without eventName or s3")
    bucket_obj, obj = s3.get("bucket"), s3.get("object")
    bucket = _text(bucket_obj.get("name")) if isinstance(bucket_obj, dict) else None
    raw_key = _text(obj.get("key")) if isinstance(obj, dict) else None
    if bucket is None or raw_key is None or not isinstance(obj, dict):
        raise Undecodable("a record without s3.bucket.name or s3.object.key")
    event_name = name.removeprefix("s3:")
    kind = _KINDS.get(event_name.partition(":")[0])
    if kind is None:
        return None
    key = urllib.parse.unquote_plus(raw_key)
    version = _text(obj.get("versionId"))
    sequencer = _text(obj.get("sequencer"))
    ident = version or sequencer or _text(record.get("eventTime")) or ""
    size = obj.get("size")
    size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
    detail: dict[str, Any] = {"remote": record, "eventName": event_name, "bucket": bucket, "key": key}
    for field, value in (("eTag", obj.get("eTag")), ("versionId", version), ("sequencer", sequencer)):
        if _text(value):
            detail[field] = value
    path = "/" + bucket + "/" + key.lstrip("/")
    return RemoteEvent(
        key=f"{bucket}/{key}/{ident}/{event_name}",
        kind=kind,
        path=path,
        size=size if kind is EventKind.CLOSE_WRITE else None,
        time=iso_time_us(record.get("eventTime")),
        url=object_url(endpoint, bucket, key) if endpoint and kind is not EventKind.DELETE else None,
        detail=detail,
    )


def is_test_event(body: Mapping[str, Any]) -> bool:
    """AWS's s3:TestEvent, sent when notifications are configured."""
    return body.get("Event") == "s3:TestEvent" and "Records" not in body


def notification_events(body: Any, endpoint: str | None = None) -> list[RemoteEvent]:
    """The events of one notification (`{"Records": [...]}`, as AWS, MinIO and RGW send it)."""
    if not isinstance(body, dict):
        raise Undecodable("a notification is a JSON object")
    if is_test_event(body):
        return []
    records = body.get("Records")
    if not isinstance(records, list):
        raise Undecodable("a notification without Records")
    return [ev for ev in (record_event(r, endpoint) for r in records) if ev is not None]


def _decode(value: bytes | None) -> Any:
    if not value:
        raise Undecodable("an empty notification")
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Undecodable(f"not JSON: {exc}") from exc


# -- authentication -------------------------------------------------------------------------------------------------


def presented(headers: Mapping[str, str]) -> list[str]:
    """The secrets a request presents: a Bearer token, a verbatim Authorization (older MinIO's auth_token),
    Basic credentials' password."""
    auth = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, value = auth.strip().partition(" ")
    out = [auth.strip()] if auth.strip() else []
    if scheme.lower() == "bearer" and value.strip():
        out.append(value.strip())
    elif scheme.lower() == "basic" and value.strip():
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            out.append(base64.b64decode(value.strip(), validate=True).decode().partition(":")[2])
    return out


def authentic(secret: str, headers: Mapping[str, str]) -> bool:
    expected = secret.encode()
    ok = False
    for candidate in presented(headers):
        ok |= hmac.compare_digest(candidate.encode(), expected)  # every candidate compared: no early exit
    return ok


# -- reading objects ------------------------------------------------------------------------------------------------


def object_url(endpoint: str, bucket: str, key: str) -> str:
    """The path-style URL of an object (the form MinIO, RGW and AWS all answer)."""
    return f"{endpoint.rstrip('/')}/{urllib.parse.quote(bucket, safe='')}/{urllib.parse.quote(key, safe='/-_.~')}"


class S3Files:
    """`RemoteFiles` through an S3 endpoint: GetObject (path-style) with a Range, signed with SigV4 (botocore's
    signer) when keys are given, anonymous otherwise. Paths are "/bucket/key"."""

    def __init__(self, endpoint: str, access_key: str | None, secret_key: str | None, region: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region

    def url(self, path: str) -> str:
        bucket, _, key = path.lstrip("/").partition("/")
        if not bucket or not key:
            raise FileNotFoundError(path)
        return object_url(self.endpoint, bucket, key)

    def signed(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        """`headers` with SigV4's (Authorization, X-Amz-Date, X-Amz-Content-SHA256) for `method url`."""
        if not self.access_key or not self.secret_key:
            return headers
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        request = AWSRequest(method=method, url=url, headers=headers)
        S3SigV4Auth(Credentials(self.access_key, self.secret_key), "s3", self.region).add_auth(request)
        return {k: str(v) for k, v in request.headers.items()}

    async def open(self, path: str, start: int = 0, end: int | None = None) -> tuple[int | None, AsyncIterator[bytes]]:
        url = self.url(path)
        headers = self.signed("GET", url, range_header(start, end))
        http = httpx.AsyncClient(verify=tls_context(), timeout=httpx.Timeout(30, read=300))
        try:
            response = await http.send(http.build_request("GET", url, headers=headers), stream=True)
            if response.status_code == 416:
                await response.aclose()
                await http.aclose()
                return None, empty_body()
            if not response.is_success:
                error = (await response.aread())[:2000].decode(errors="replace")
                message = f"GET {path}: {response.status_code} {_s3_error(error)}"
                if response.status_code == 404:
                    raise FileNotFoundError(message)
                if response.status_code in (401, 403):
                    raise PermissionError(message)
                raise RuntimeError(message)
        except BaseException:
            await http.aclose()
            raise
        size = ranged_size(response)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()
                await http.aclose()

        return size, body()


def _s3_error(body: str) -> str:
    """The <Code> of an S3 error document, else its start."""
    if "<Code>" in body and "</Code>" in body:
        return body.split("<Code>", 1)[1].split("</Code>", 1)[0]
    return body[:200]


# -- the kind -------------------------------------------------------------------------------------------------------


class S3Source:
    def __init__(self, name: str, secret: str, files: S3Files | None, feed: Feed | None) -> None:
        self.name = name
        self.secret = secret
        self._files = files
        self.feed = feed

    def files(self) -> RemoteFiles | None:
        return self._files

    def events(self, body: Any) -> list[RemoteEvent]:
        return notification_events(body, self._files.endpoint if self._files else None)

    async def receive(self, body: bytes, headers: Mapping[str, str], sink: Sink) -> int:
        """A notification POSTed to the source: authenticated by the secret (401), decoded (ValueError: 400),
        delivered through `sink` (returns once committed); how many events were new."""
        if not authentic(self.secret, headers):
            raise Unauthorized("The notification does not carry the source's secret")
        events: Sequence[RemoteEvent] = self.events(_decode(body))
        if not events:
            return 0
        return await sink.deliver(events, None)

    async def run(self, sink: Sink) -> None:
        if self.feed is None:
            await asyncio.Event().wait()  # notifications arrive through receive(); nothing to run
        else:
            await self.feed.run(sink)


def build(name: str, config: Mapping[str, Any]) -> S3Source:
    reject_unknown(name, "s3", config, KEYS)
    secret = text_option(name, config, "secret", required=True)
    assert secret is not None
    endpoint = http_url(name, "endpoint", text_option(name, config, "endpoint"))
    access_key = text_option(name, config, "access_key")
    secret_key = text_option(name, config, "secret_key")
    region = text_option(name, config, "region") or "us-east-1"
    if (access_key is None) != (secret_key is None):
        raise SourceConfigError(f"Source {name!r}: give 'access_key' and 'secret_key' together.")
    if endpoint is None and (access_key or text_option(name, config, "region")):
        raise SourceConfigError(f"Source {name!r}: 'access_key', 'secret_key' and 'region' go with 'endpoint'.")
    if access_key and importlib.util.find_spec("botocore") is None:
        raise SourceConfigError(
            f"Source {name!r}: signing S3 requests needs botocore, which is not installed: pip install 'headrace[s3]'"
        )
    files = S3Files(endpoint, access_key, secret_key, region) if endpoint else None
    options = feed_options(name, config, required=False)
    source = S3Source(name, secret, files, None)
    if options is not None:
        bootstrap, topic, group = options

        def decode(value: bytes | None, _key: str) -> Sequence[RemoteEvent]:
            return source.events(_decode(value))

        source.feed = Feed(name, bootstrap=bootstrap, topic=topic, group=group, decode=decode)
    return source
