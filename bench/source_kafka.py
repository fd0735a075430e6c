"""Events/s through one `kafka` source and through one `s3` source's notification endpoint.

Run from the repository root::

    HEADRACE_TEST_DB=sqlite .venv/bin/python bench/source_kafka.py [--records 20000] [--posts 2000]
    HEADRACE_TEST_DB=postgresql .venv/bin/python bench/source_kafka.py

Starts a real Kafka broker (tests/support/kafka_harness.py) and a real `headrace up` (tests/support/harness.py).

1. **kafka, backlog**: N dCache billing records of completed writes (headrace's own renderer,
   events/billing.py) are produced to a new 3-partition topic first; then the source is created (PUT
   /api/v1/sources/k, format billing) and its `received` counter polled (every 20 ms) until it is N: events/s
   from the PUT to the last one received (the consumer's start and group lookup included).
2. **s3, notifications**: M POSTs of one AWS-shaped ObjectCreated:Put record each to
   /api/v1/sources/s/s3 from 8 threads (each answered after its transaction committed): notifications/s,
   and the same M again (retries: all already in the log, none new).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from harness import Server, db_kind  # noqa: E402
from headrace.events import billing  # noqa: E402
from headrace.events.model import EventKind, StorageEvent  # noqa: E402
from kafka_harness import QUIET, KafkaBroker  # noqa: E402

SECRET = "bench-" + uuid.uuid4().hex


def billing_record(i: int) -> bytes:
    ev = StorageEvent(
        offset=i,
        time=time.time_ns() // 1000,
        kind=EventKind.CLOSE_WRITE,
        is_dir=False,
        inode_id=i,
        pnfsid=f"{i:036X}",
        path=f"/bench/f{i:07d}",
        parent_id=1,
        name=f"f{i:07d}",
        size=4096,
        username="bench",
    )
    return billing.encode(billing.transfer(ev, door=billing.Door("door.example.org", 2880)))


def s3_body(i: int, rnd: str) -> bytes:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": now,
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": "bench"},
            "object": {"key": f"{rnd}/o{i:07d}", "size": 4096, "eTag": "x", "sequencer": f"{i:016X}"},
        },
    }
    return json.dumps({"Records": [record]}).encode()


def received(api: httpx.Client, name: str) -> int:
    return int(api.get(f"/api/v1/sources/{name}").json()["state"]["received"])


def bench_kafka(srv: Server, broker: KafkaBroker, n: int) -> None:
    topic = "bench-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "logger": QUIET})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "logger": QUIET, "linger.ms": 5})
    for i in range(n):
        while True:
            try:
                producer.produce(topic, billing_record(i))
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    with srv.api() as api:
        t0 = time.monotonic()
        r = api.put("/api/v1/sources/k", json={"kind": "kafka", "bootstrap": broker.bootstrap, "topic": topic})
        assert r.status_code == 201, r.text
        first = None
        while True:
            got = received(api, "k")
            if got and first is None:
                first = time.monotonic()
            if got >= n:
                break
            time.sleep(0.02)
        t1 = time.monotonic()
    print(
        f"kafka  {n} billing records: {n / (t1 - t0):,.0f} events/s from the PUT ({t1 - t0:.2f} s); "
        f"first received after {(first or t1) - t0:.2f} s; {n / (t1 - (first or t0)):,.0f} events/s after it"
    )


def bench_s3(srv: Server, m: int, threads: int = 8) -> None:
    with srv.api() as api:
        assert api.put("/api/v1/sources/s", json={"kind": "s3", "secret": SECRET}).status_code == 201
    rnd = uuid.uuid4().hex[:6]
    bodies = [s3_body(i, rnd) for i in range(m)]
    url = f"{srv.api_url}/api/v1/sources/s/s3"
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}

    def run() -> float:
        new = [0] * threads

        def worker(k: int) -> None:
            with httpx.Client(timeout=60) as client:
                for body in bodies[k::threads]:
                    r = client.post(url, content=body, headers=headers)
                    assert r.status_code == 200, r.text
                    new[k] += r.json()["received"]

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.monotonic() - t0
        print(f"s3     {m} notifications, {threads} threads: {m / elapsed:,.0f} /s ({elapsed:.2f} s), {sum(new)} new")
        return elapsed

    run()
    run()  # the same again: retried notifications, none new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--posts", type=int, default=2_000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-source-kafka-"))
    broker = KafkaBroker(base / "kafka").start()
    srv = Server(data=base / "data", cli_config=base / "cli.json").start()
    print(f"database: {db_kind()}")
    try:
        bench_kafka(srv, broker, args.records)
        bench_s3(srv, args.posts)
    finally:
        srv.stop()
        broker.stop()


if __name__ == "__main__":
    main()
