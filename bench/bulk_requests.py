"""Bulk requests of files on disk through dCache's bulk API: how long from submit to COMPLETED.

Run from the repository root::

    HEADRACE_TEST_DB=sqlite .venv/bin/python bench/bulk_requests.py [--files 1000]
    HEADRACE_TEST_DB=postgresql .venv/bin/python bench/bulk_requests.py

Starts a real `headrace up` (tests/support/harness.py; PostgreSQL from its cluster harness), writes N small
files into one directory through the door, then for PIN (one hour), UNPIN and LOG_TARGET submits one request
for the directory (expand TARGETS: the directory SKIPPED, its N files run by the frontend's runner) and polls
its status until COMPLETED. Prints the time to create the request (resolving and writing its targets) and
to complete it. Staging from tape is bench/tape.py's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from harness import Server, db_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=1000)
    n = parser.parse_args().files
    base = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    srv = Server(data=base / "data", cli_config=base / "cli.json").start()
    try:
        with srv.api() as api, srv.door() as door:
            assert api.post("/api/v1/namespace/", json={"action": "mkdir", "name": "b"}).is_success
            for i in range(n):
                assert door.put(f"/b/f{i:06d}", content=b"x").status_code == 201
            for activity, args in (
                ("PIN", {"lifetime": 1, "lifetimeUnit": "HOURS"}),
                ("UNPIN", {}),
                ("LOG_TARGET", {}),
            ):
                body = {"activity": activity, "target": ["/b"], "expand_directories": "TARGETS", "arguments": args}
                t0 = time.perf_counter()
                r = api.post("/api/v1/bulk-requests", json=body)
                created = time.perf_counter() - t0
                assert r.status_code == 201, r.text
                url = r.headers["request-url"]
                while api.get(url).json()["status"] != "COMPLETED":
                    time.sleep(0.02)
                done = time.perf_counter() - t0
                print(
                    f"{db_kind()} {activity} {n} files: request made in {created:.3f} s, "
                    f"COMPLETED {done:.3f} s after submit ({n / done:.0f} targets/s)"
                )
    finally:
        srv.stop()
        if db_kind() == "postgresql":
            from pg_harness import stop_session_cluster

            stop_session_cluster()


if __name__ == "__main__":
    main()
