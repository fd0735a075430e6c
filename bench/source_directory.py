"""The directory event source: events/s into the log through one source, and the cost of its walk and snapshot.

Run from the repository root::

    HEADRACE_TEST_DB=sqlite .venv/bin/python bench/source_directory.py [--files 5000] [--tree 100000]
    HEADRACE_TEST_DB=postgresql .venv/bin/python bench/source_directory.py

1. **Live**, for mode inotify and for mode scan (interval 0.5 s): a real `headrace up` (tests/support/harness.py)
   with a directory source on an empty tree (no trigger on it); once it has its first view, N files of 4 KiB
   are written into 10 subdirectories by this process; events/s = (N files + 10 directories) / (the first
   write -> the source's `received` counter, polled every 20 ms, reaching them).
2. **Walk and snapshot**, without a server: a tree of --tree empty files in 100 directories walked as a scan
   does (os.scandir + lstat), and its snapshot encoded and decoded as the source stores it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from harness import Server, db_kind
from headrace.events.sources import directory_tree


def live(srv: Server, base: Path, mode: str, n: int) -> float:
    root = base / f"tree-{mode}"
    root.mkdir()
    name = f"bench-{mode}"
    with srv.api() as api:
        body = {"kind": "directory", "root": str(root), "mode": mode, "interval": 0.5}
        assert api.put(f"/api/v1/sources/{name}", json=body).status_code == 201
        while not (api.get(f"/api/v1/sources/{name}").json()["state"]["position"] or _snapshot(srv, name)):
            time.sleep(0.02)
        want = n + 10
        started = time.monotonic()
        for d in range(10):
            (root / f"d{d}").mkdir()
        data = b"x" * 4096
        for i in range(n):
            (root / f"d{i % 10}" / f"f{i:06d}.h5").write_bytes(data)
        written = time.monotonic() - started
        while api.get(f"/api/v1/sources/{name}").json()["state"]["received"] < want:
            time.sleep(0.02)
        took = time.monotonic() - started
        rate = want / took
        print(f"{mode:8s} {want} events in {took:.2f} s = {rate:.0f} events/s (files written in {written:.2f} s)")
        assert api.delete(f"/api/v1/sources/{name}").status_code == 204
    return want / took


def _snapshot(srv: Server, name: str) -> bool:
    from harness import query

    rows = query(srv.data, "SELECT state FROM sources WHERE name = :n", n=name)
    return bool(rows and rows[0][0] and "snapshot" in rows[0][0])


def walk_and_snapshot(base: Path, files: int) -> None:
    root = base / "big"
    per = max(1, files // 100)
    for d in range(100):
        (root / f"r{d:04d}").mkdir(parents=True)
        for i in range(per):
            (root / f"r{d:04d}" / f"RAW-R{d:04d}-DA01-S{i:05d}.h5").touch()
    flt = directory_tree.Filter()
    started = time.monotonic()
    tree = directory_tree.walk(str(root), flt)
    walked = time.monotonic() - started
    started = time.monotonic()
    value = directory_tree.encode(tree, 1)
    encoded = time.monotonic() - started
    started = time.monotonic()
    assert directory_tree.decode(value) == tree
    decoded = time.monotonic() - started
    print(
        f"walk of {len(tree)} entries: {walked:.2f} s; snapshot {len(value['z'])} bytes, "
        f"encoded in {encoded:.2f} s, decoded in {decoded:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--tree", type=int, default=100_000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-dirsrc-"))
    try:
        print(f"database: {db_kind()}")
        srv = Server(data=base / "data", cli_config=base / "cli.json").start()
        try:
            for mode in ("inotify", "scan"):
                live(srv, base, mode, args.files)
        finally:
            srv.stop()
        walk_and_snapshot(base, args.tree)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
