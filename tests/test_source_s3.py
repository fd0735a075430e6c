"""The `s3` event source on a real server: bucket notifications in the shapes AWS documents (and MinIO and Ceph
RGW send) POSTed to `/api/v1/sources/{name}/s3`, entering the event log once each; objects read through the
source from an S3 emulator (moto's server mode, a real HTTP S3 API on 127.0.0.1 that checks the SigV4
request's form, not its keys); the same JSON read from a Kafka topic as MinIO publishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import ManagedProcess, Server, add_user, free_port, http, kill_at_exit
from headrace.events.model import EventKind
from headrace.events.sources import kinds
from headrace.events.sources.base import SourceConfigError
from headrace.events.sources.s3 import S3Files, S3Source
from outbox import rows
from test_cli import ok, one_line_error
from test_cli import run as cli

SECRET = "n0t1f1cat10n-" + secrets.token_hex(8)

# -- AWS's documented shapes (Amazon S3 User Guide, "Event message structure") --------------------------------------


def aws_record(
    event_name: str,
    key: str,
    *,
    bucket: str = "amzn-s3-demo-bucket",
    size: int | None = 1024,
    version: str | None = "096fKKXTRTtl3on89fVO.nfljtsv6qko",
    sequencer: str = "0055AED6DCD90281E5",
) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "sequencer": sequencer}
    if size is not None:
        obj.update(size=size, eTag="d41d8cd98f00b204e9800998ecf8427e")
    if version is not None:
        obj["versionId"] = version
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-west-2",
        # The documentation's example says 1970; a notification of now, so the log's retention keeps it
        "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventName": event_name,
        "userIdentity": {"principalId": "AIDAJDPLRKLG7UEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
            "x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "testConfigRule",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


AWS_TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2014-10-13T15:57:02.089Z",
    "Bucket": "amzn-s3-demo-bucket",
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YCmTZWcL0pBrp4w8NWgJeYo0WYp+3y8=",
}


def minio_notification(event_name: str, bucket: str, key: str, **kw: Any) -> dict[str, Any]:
    """MinIO's webhook/Kafka body: EventName and Key beside the Records, event names prefixed "s3:"."""
    record = aws_record("s3:" + event_name, key, bucket=bucket, **kw)
    record["eventSource"] = "minio:s3"
    return {"EventName": "s3:" + event_name, "Key": f"{bucket}/{key}", "Records": [record]}


# -- helpers ------------------------------------------------------------------------------------------------------


def post(
    server: Server, name: str, body: Any, *, auth: str | None = "Bearer " + SECRET, media: str = "application/json"
) -> httpx.Response:
    headers = {"Content-Type": media}
    if auth is not None:
        headers["Authorization"] = auth
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http("POST", f"{server.api_url}/api/v1/sources/{name}/s3", content=raw, headers=headers)


def source_rows(server: Server, name: str) -> list[dict[str, Any]]:
    return [r for r in rows(server.data) if r.get("source") == name]


def make_source(server: Server, config: dict[str, Any]) -> str:
    name = "s3-" + uuid.uuid4().hex[:8]
    with server.api() as api:
        r = api.put(f"/api/v1/sources/{name}", json={"kind": "s3", "secret": SECRET, **config})
        assert r.status_code == 201, r.text
    return name


def problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == str(status) and body["title"] and body["detail"]
    return str(body["detail"])


# -- notifications --------------------------------------------------------------------------------------------------


def test_aws_notifications_enter_the_log_once(server: Server) -> None:
    name = make_source(server, {})
    created = {"Records": [aws_record("ObjectCreated:Put", "HappyFace.jpg")]}
    r = post(server, name, created)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 1}
    # A retried notification (AWS retries on any failure) enters once
    assert post(server, name, created).json() == {"received": 0}
    got = source_rows(server, name)
    assert len(got) == 1
    row = got[0]
    assert (row["kind"], row["path"], row["size"], row["name"]) == (
        "CLOSE_WRITE",
        "/amzn-s3-demo-bucket/HappyFace.jpg",
        1024,
        "HappyFace.jpg",
    )
    assert row["source_key"] == "amzn-s3-demo-bucket/HappyFace.jpg/096fKKXTRTtl3on89fVO.nfljtsv6qko/ObjectCreated:Put"
    detail = json.loads(row["detail"])
    assert detail["eTag"] == "d41d8cd98f00b204e9800998ecf8427e"
    assert detail["remote"]["eventSource"] == "aws:s3"

    # Every documented event name, several records in one notification; keys URL-encoded as AWS sends them
    many = {
        "Records": [
            aws_record("ObjectCreated:Post", "raw/run+7/image%C3%A9.h5", version=None, sequencer="01"),
            aws_record("ObjectCreated:Copy", "copy/a", version=None, sequencer="02"),
            aws_record("ObjectCreated:CompleteMultipartUpload", "big/file", version="v-big", sequencer="03"),
            aws_record("ObjectRemoved:Delete", "HappyFace.jpg", size=None),  # removes the version created above
            aws_record("ObjectRemoved:DeleteMarkerCreated", "copy/a", size=None, version="dm1", sequencer="05"),
            aws_record("ObjectRestore:Completed", "big/file", sequencer="06"),  # none of ours: passed over
        ]
    }
    assert post(server, name, many).json() == {"received": 5}
    assert post(server, name, many).json() == {"received": 0}
    got = [(r["kind"], r["path"], r["size"]) for r in source_rows(server, name)]
    assert got == [
        ("CLOSE_WRITE", "/amzn-s3-demo-bucket/HappyFace.jpg", 1024),
        ("CLOSE_WRITE", "/amzn-s3-demo-bucket/raw/run 7/imageé.h5", 1024),
        ("CLOSE_WRITE", "/amzn-s3-demo-bucket/copy/a", 1024),
        ("CLOSE_WRITE", "/amzn-s3-demo-bucket/big/file", 1024),
        ("DELETE", "/amzn-s3-demo-bucket/HappyFace.jpg", None),
        ("DELETE", "/amzn-s3-demo-bucket/copy/a", None),
    ]
    # AWS's test event (sent when notifications are configured) is accepted and ignored
    assert post(server, name, AWS_TEST_EVENT).json() == {"received": 0}
    with server.api() as api:
        state = api.get(f"/api/v1/sources/{name}").json()
    assert state["secret"] == "***"
    assert state["state"]["received"] == 6


def test_a_notification_posted_as_text_plain_is_taken(server: Server) -> None:
    """AWS SNS posts its JSON as text/plain: the notification route takes it (only that route: elsewhere a POST
    body must still say it is JSON)."""
    name = make_source(server, {})
    body = {"Records": [aws_record("ObjectCreated:Put", "sns/plain.h5")]}
    assert post(server, name, body, media="text/plain; charset=UTF-8").json() == {"received": 1}
    assert [r["path"] for r in source_rows(server, name)] == ["/amzn-s3-demo-bucket/sns/plain.h5"]
    assert post(server, name, body, media="text/plain", auth="Bearer wrong").status_code == 401
    with server.api() as api:
        r = api.post("/api/v1/namespace/", content=b"{}", headers={"Content-Type": "text/plain"})
        problem(r, 415)


def test_minio_and_rgw_forms_of_the_secret(server: Server) -> None:
    name = make_source(server, {})
    # MinIO's webhook auth_token: "Bearer TOKEN" (current), the token verbatim (older releases)
    body = minio_notification("ObjectCreated:Put", "daq", "run1/f.h5", version=None, sequencer="17A")
    assert post(server, name, body).json() == {"received": 1}
    body2 = minio_notification("ObjectCreated:Put", "daq", "run1/g.h5", version=None, sequencer="17B")
    assert post(server, name, body2, auth=SECRET).json() == {"received": 1}
    # Ceph RGW's push endpoint with user:password in its URL: Basic, the password is the secret. RGW's record:
    # eventVersion 2.2, an empty versionId on an unversioned bucket, eventId, metadata
    rgw = aws_record("ObjectCreated:Put", "run1/h.h5", bucket="daq", version="", sequencer="A5BEA263AA549339")
    rgw.update(eventVersion="2.2", eventSource="ceph:s3", awsRegion="my-store", eventId="1702.1234.x")
    rgw["s3"]["object"]["metadata"] = [{"key": "x-amz-content-sha256", "value": ""}]
    body3 = {"Records": [rgw]}
    basic = httpx.BasicAuth("rgw", SECRET)._auth_header
    assert post(server, name, body3, auth=basic).json() == {"received": 1}
    assert [r["path"] for r in source_rows(server, name)] == ["/daq/run1/f.h5", "/daq/run1/g.h5", "/daq/run1/h.h5"]
    assert source_rows(server, name)[2]["source_key"] == "daq/run1/h.h5/A5BEA263AA549339/ObjectCreated:Put"


def test_refusals(server: Server) -> None:
    name = make_source(server, {})
    good = {"Records": [aws_record("ObjectCreated:Put", "x")]}
    assert "secret" in problem(post(server, name, good, auth="Bearer wrong"), 401)
    problem(post(server, name, good, auth=None), 401)
    problem(post(server, name, good, auth=httpx.BasicAuth("rgw", "wrong")._auth_header), 401)
    problem(post(server, name, good, auth="Bearer " + SECRET + "x"), 401)
    # The secret is checked before the body is read: a wrong secret never learns whether the body was good
    problem(post(server, name, b"{not json", auth="Bearer wrong"), 401)
    problem(post(server, name, b"{not json"), 400)
    problem(post(server, name, {"Records": "nope"}), 400)
    problem(post(server, name, {"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}), 400)
    problem(post(server, name, [1, 2]), 400)
    problem(post(server, "no-such-source", good), 404)
    # A source of another kind takes no S3 notifications
    with server.api() as api:
        r = api.put("/api/v1/sources/not-s3", json={"kind": "kafka", "bootstrap": "127.0.0.1:9", "topic": "t"})
        assert r.status_code in (200, 201), r.text
    problem(post(server, "not-s3", good), 404)
    assert source_rows(server, name) == []


def test_only_admins_create_s3_sources(server: Server) -> None:
    user, key, _ = add_user(server, "s3user-" + uuid.uuid4().hex[:6])
    name = "s3-" + uuid.uuid4().hex[:8]
    r = http("PUT", f"{server.api_url}/api/v1/sources/{name}", auth=(user, key), json={"kind": "s3", "secret": "x"})
    problem(r, 403)
    problem(http("PUT", f"{server.api_url}/api/v1/sources/{name}", json={"kind": "s3", "secret": "x"}), 401)
    with server.api() as api:
        assert api.get(f"/api/v1/sources/{name}").status_code == 404
        problem(api.put(f"/api/v1/sources/{name}", json={"kind": "s3"}), 400)  # the secret is required
        problem(api.put(f"/api/v1/sources/{name}", json={"kind": "s3", "secret": "x", "url": "http://a"}), 400)


def test_configuration_is_checked() -> None:
    ok = {"secret": "s"}
    src = kinds.build("x", "s3", ok)
    assert isinstance(src, S3Source) and src.files() is None and src.feed is None
    for bad, message in [
        ({}, "'secret' is required"),
        ({**ok, "endpoint": "s3://x"}, "http"),
        ({**ok, "access_key": "a"}, "together"),
        ({**ok, "access_key": "a", "secret_key": "b"}, "go with 'endpoint'"),
        ({**ok, "topic": "t"}, "'bootstrap' and 'topic'"),
        ({**ok, "door": "http://x"}, "takes no 'door'"),
    ]:
        with pytest.raises(SourceConfigError, match=message):
            kinds.build("x", "s3", bad)
    src = kinds.build("x", "s3", {**ok, "bootstrap": "127.0.0.1:9", "topic": "minio"})
    assert isinstance(src, S3Source) and src.feed is not None and src.feed.group == "headrace-source-x"


# -- reading objects (an S3 emulator) -------------------------------------------------------------------------------


@dataclass
class S3Emulator(ManagedProcess):
    """moto's server mode: an S3 HTTP API on 127.0.0.1 (an emulator, not AWS: it does not check keys)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Emulator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "moto.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        kill_at_exit(self.proc)
        self.wait_until(lambda: http("GET", self.endpoint + "/moto-api/", timeout=2).status_code == 200, 60)
        return self

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            region_name="us-east-1",
        )


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Emulator]:
    pytest.importorskip("moto.server", reason="moto[server] (the S3 emulator) is in the dev extra")
    emulator = S3Emulator(tmp_path_factory.mktemp("moto")).start()
    yield emulator
    emulator.stop()


def test_files_read_from_s3(s3: S3Emulator) -> None:
    client = s3.client()
    client.create_bucket(Bucket="daq")
    data = bytes(range(256)) * 4000
    client.put_object(Bucket="daq", Key="run 1/frame+é.h5", Body=data)
    files = S3Files(s3.endpoint, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1")

    async def read(path: str, start: int = 0, end: int | None = None) -> tuple[int | None, bytes]:
        size, chunks = await files.open(path, start, end)
        return size, b"".join([c async for c in chunks])

    assert asyncio.run(read("/daq/run 1/frame+é.h5")) == (len(data), data)
    assert asyncio.run(read("/daq/run 1/frame+é.h5", 1000, 1010)) == (len(data), data[1000:1010])
    assert asyncio.run(read("/daq/run 1/frame+é.h5", len(data) - 5)) == (len(data), data[-5:])
    with pytest.raises(FileNotFoundError):
        asyncio.run(read("/daq/missing"))
    with pytest.raises(FileNotFoundError):
        asyncio.run(read("/no-bucket/x"))
    signed = files.signed("GET", files.url("/daq/a b"), {})
    assert signed["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "x-amz-content-sha256" in {k.lower() for k in signed}


def test_files_through_the_frontend(server: Server, s3: S3Emulator) -> None:
    s3.client().create_bucket(Bucket="shared")
    s3.client().put_object(Bucket="shared", Key="out/result.txt", Body=b"hello from s3\n")
    reader, reader_key, _ = add_user(server, "s3reader-" + uuid.uuid4().hex[:6])
    other, other_key, _ = add_user(server, "s3other-" + uuid.uuid4().hex[:6])
    name = "s3-" + uuid.uuid4().hex[:8]
    with server.api() as api:
        r = api.put(
            f"/api/v1/sources/{name}",
            json={
                "kind": "s3",
                "secret": SECRET,
                "endpoint": s3.endpoint,
                "access_key": "AKIDEXAMPLE",
                "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "readers": {"users": [reader]},
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["secret_key"] == "***"
    body = {"Records": [aws_record("ObjectCreated:Put", "out/result.txt", bucket="shared", size=14)]}
    assert post(server, name, body).json() == {"received": 1}
    detail = json.loads(source_rows(server, name)[0]["detail"])
    assert detail["url"] == f"{s3.endpoint}/shared/out/result.txt"

    url = f"{server.api_url}/api/v1/sources/{name}/files/shared/out/result.txt"
    r = http("GET", url, auth=(reader, reader_key))
    assert r.status_code == 200, r.text
    assert r.content == b"hello from s3\n"
    r = http("GET", url, auth=(reader, reader_key), headers={"Range": "bytes=6-9"})
    assert (r.status_code, r.content) == (206, b"from")
    problem(http("GET", url, auth=(other, other_key)), 404)  # not a reader: the source is not there for them
    problem(http("GET", url.replace("result", "nothing"), auth=(reader, reader_key)), 404)


# -- from a Kafka topic, as MinIO publishes -----------------------------------------------------------------------


def test_notifications_from_kafka(server: Server, kafka: Any) -> None:
    from confluent_kafka import Producer

    from kafka_harness import QUIET

    topic = "minio-" + uuid.uuid4().hex[:8]
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "logger": QUIET})
    bodies = [
        minio_notification("ObjectCreated:Put", "lab", f"k/{i}", version=None, sequencer=f"{i:04X}") for i in range(5)
    ]
    bodies.append(minio_notification("ObjectRemoved:Delete", "lab", "k/0", size=None, version=None, sequencer="00FF"))
    for body in bodies:
        producer.produce(topic, json.dumps(body).encode(), key=body["Key"])
    producer.produce(topic, b"garbage")
    assert producer.flush(30) == 0

    name = make_source(server, {"bootstrap": kafka.bootstrap, "topic": topic})
    # The same notification POSTed as well (MinIO configured with both targets) enters once
    assert post(server, name, bodies[0]).json() == {"received": 1}
    deadline = time.monotonic() + 60
    while len(source_rows(server, name)) < 6:
        assert time.monotonic() < deadline, (source_rows(server, name), server.log()[-3000:])
        time.sleep(0.2)
    got = sorted((r["kind"], r["path"]) for r in source_rows(server, name))
    assert got == sorted([("CLOSE_WRITE", f"/lab/k/{i}") for i in range(5)] + [("DELETE", "/lab/k/0")])
    with server.api() as api:
        deadline = time.monotonic() + 30
        while True:
            state = api.get(f"/api/v1/sources/{name}").json()["state"]
            position = json.loads(state["position"] or "{}")
            if sum(position.values()) == 7:
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
    with contextlib.suppress(Exception):
        producer.flush(1)


def test_kind_of_an_event() -> None:
    src = kinds.build("x", "s3", {"secret": "s"})
    assert isinstance(src, S3Source)
    (ev,) = src.events({"Records": [aws_record("ObjectTagging:Put", "t")]})
    assert ev.kind is EventKind.ATTRIB and ev.size is None


# -- end to end: a function triggered by a notification reads the object through ctx.storage -------------------------

READER = """\
def main(event, ctx):
    data = ctx.storage.read(event["path"], source=event["source"])
    return {"path": event["path"], "mask": event.get("mask"), "size": len(data), "head": data[:6].decode()}
"""
NS = "/api/v1/namespaces/_"


def test_a_function_reads_the_object_it_was_told_of(server: Server, s3: S3Emulator) -> None:
    s3.client().create_bucket(Bucket="e2e")
    s3.client().put_object(Bucket="e2e", Key="run 9/frame.h5", Body=b"HDF5..." + bytes(1000))
    alice, alice_key, _ = add_user(server, "s3fn-" + uuid.uuid4().hex[:6])
    name = "s3-" + uuid.uuid4().hex[:8]
    with server.api() as api:
        body = {
            "kind": "s3",
            "secret": SECRET,
            "endpoint": s3.endpoint,
            "access_key": "AKIDEXAMPLE",
            "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "readers": {"users": [alice]},
        }
        assert api.put(f"/api/v1/sources/{name}", json=body).status_code == 201
    with httpx.Client(base_url=server.api_url, auth=(alice, alice_key), timeout=60) as a:
        action = {"exec": {"kind": "python:3", "code": READER}, "annotations": [{"key": "storage", "value": True}]}
        assert a.put(f"{NS}/actions/s3reader?overwrite=true", json=action).status_code == 200
        feed = {"path": "/", "source": name, "recursive": True}
        assert a.put(f"{NS}/triggers/s3reader-t?overwrite=true", json={"feed": feed}).status_code == 200
        rule = {"trigger": "/_/s3reader-t", "action": "/_/s3reader"}
        assert a.put(f"{NS}/rules/s3reader-r?overwrite=true", json=rule).status_code == 200
        record = aws_record("ObjectCreated:Put", "run+9/frame.h5", bucket="e2e", size=1007, version=None)
        assert post(server, name, {"Records": [record]}).json() == {"received": 1}
        assert post(server, name, {"Records": [record]}).json() == {"received": 0}  # retried: no second run
        deadline = time.monotonic() + 90
        while True:
            r = a.get(f"{NS}/activations", params={"name": "s3reader", "docs": "true", "limit": 50})
            done = [x for x in r.json() if x.get("state") == "done"]
            if done:
                break
            assert time.monotonic() < deadline, (r.json(), server.log()[-3000:])
            time.sleep(0.2)
        assert [x["response"]["result"] for x in done] == [
            {"path": "/e2e/run 9/frame.h5", "mask": ["IN_CLOSE_WRITE"], "size": 1007, "head": "HDF5.."}
        ]


def test_the_cli_adds_an_s3_source(server: Server) -> None:
    name = "s3cli-" + uuid.uuid4().hex[:6]
    args = ("source", "add", name, "--kind", "s3", "--secret", SECRET)
    data = json.loads(ok(cli(server, *args, "-o", "endpoint=http://127.0.0.1:9", "-o", "region=eu-1", "--json")))
    assert (data["kind"], data["secret"], data["endpoint"], data["region"]) == (
        "s3",
        "***",
        "http://127.0.0.1:9",
        "eu-1",
    )
    assert "'secret' is required" in one_line_error(cli(server, "source", "add", name + "x", "--kind", "s3"))
    assert "http" in one_line_error(cli(server, *args, "-o", "endpoint=s3://bucket"))
    assert post(server, name, {"Records": [aws_record("ObjectCreated:Put", "cli")]}).json() == {"received": 1}
    ok(cli(server, "source", "rm", name))
    problem(post(server, name, {"Records": [aws_record("ObjectCreated:Put", "cli")]}), 404)
