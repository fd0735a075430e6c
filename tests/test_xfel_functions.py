"""The XFEL example functions (examples/xfel) on a real server, fired by real storage events: the catalogue
follows a mix of creates, moves and deletes; the cache keeps copies, drops them and evicts the least recently
used. (The run summary and the azimuthal integration run end to end in test_xfel_demo.py.)"""

from __future__ import annotations

import os
import sqlite3
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import ADMIN_KEY, Server, wait_for
from headrace.cli.catalogue import search_records
from headrace.client import Client, ClientConfig
from headrace.client.functions import FeedSpec, Functions, FunctionSpec

pytestmark = pytest.mark.db_independent("the example functions and their own SQLite catalogue, not the server database")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "xfel"
ALL_CHANGES = ("IN_CLOSE_WRITE", "IN_DELETE", "IN_MOVED_FROM", "IN_MOVED_TO")


SANDBOX_UID = 100_000  # the admin's functions' uid in the sandbox (HEADRACE_SANDBOX_UID_BASE + uid 0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the catalogue and the cache keep their state: a directory the operator binds into the admin's
    sandboxes (HEADRACE_SANDBOX_BIND), writable by their uid."""
    d = tmp_path_factory.mktemp("xfel-state")
    os.chown(d, SANDBOX_UID, SANDBOX_UID)
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("srv")
    srv = Server(
        data=base / "data", cli_config=base / "cli.json", env_extra={"HEADRACE_SANDBOX_BIND": f"admin:{shared}"}
    )
    yield srv.start()
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Client]:
    with Client(ClientConfig(door=server.door_url, api=server.api_url, username="admin", key=ADMIN_KEY)) as c:
        yield c


def deploy(client: Client, name: str, code: str, root: str, params: dict[str, Any], **scaling: Any) -> None:
    spec = FunctionSpec.from_file(
        name,
        EXAMPLES / code,
        params={**params, "root": root},
        scaling=scaling,
        feed=FeedSpec(path=root, recursive=True, flags=ALL_CHANGES),
        storage=True,
    )
    Functions(client).deploy(spec)


def settle(client: Client, name: str, at_least: int, quiet: float = 1.0, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The activations of `name` once at least `at_least` have finished and none has been queued or running
    for `quiet` seconds."""
    fn = Functions(client)
    state: dict[str, Any] = {"n": -1, "since": 0.0}

    def probe() -> list[dict[str, Any]] | None:
        records = fn.activations(name=name, limit=200, docs=True)
        pending = [r for r in records if r.get("state") not in ("done", "dead")]
        if pending or len(records) < at_least or len(records) != state["n"]:
            state.update(n=len(records), since=time.monotonic())
            return None
        return records if time.monotonic() - state["since"] >= quiet else None

    return wait_for(probe, f"{name} to settle", timeout)


def put(client: Client, tmp: Path, path: str, data: bytes) -> None:
    local = tmp / "upload.bin"
    local.write_bytes(data)
    client.upload(local, path)


def test_catalogue_follows_creates_moves_and_deletes(client: Client, tmp_path: Path, shared: Path) -> None:
    from headrace.xfel import generate

    db = shared / "catalogue.sqlite"
    deploy(client, "catalogue", "catalogue.py", "/cat", {"catalogue": str(db)})
    client.mkdir("/cat/raw/r0042", parents=True)
    client.mkdir("/cat/raw/r0043", parents=True)
    spec = generate.RunSpec(run=42, proposal=700123, sequences=1)
    h5 = {name: body for name, body in generate.run_files(spec)}
    names = sorted(h5)[:2]
    for name in names:
        put(client, tmp_path, f"/cat/raw/r0042/{name}", h5[name])
    for i in range(6):
        put(client, tmp_path, f"/cat/raw/r0043/file{i}.dat", os.urandom(1000 + i))
    # Moves and deletes follow at once, while the closes are still being catalogued.
    client.move("/cat/raw/r0043/file0.dat", "/cat/raw/r0043/renamed0.dat")
    client.move("/cat/raw/r0043/file1.dat", "/cat/raw/r0042/file1.dat")
    client.remove("/cat/raw/r0043/file2.dat")
    client.move("/cat/raw/r0043/file3.dat", "/outside.dat")  # out of the catalogued tree
    client.move("/cat/raw/r0042", "/cat/raw/r0044")  # a directory, with files in it
    put(client, tmp_path, "/cat/raw/r0043/file2.dat", b"again")  # a new file where one was deleted
    runs = settle(client, "catalogue", at_least=12)
    assert [r for r in runs if not r["response"]["success"]] == []

    stored = {e.path: e for e in client.tree("/cat", checksum=True) if not e.is_dir}
    records = {r["datablocks"][0]["path"]: r for r in search_records(db)}
    assert sorted(records) == sorted(stored)
    for path, entry in stored.items():
        rec = records[path]
        assert rec["size"] == entry.size
        assert rec["datablocks"][0]["chk"] == entry.adler32
        assert rec["sourceFolder"] + "/" + rec["datasetName"] == path
    for name in names:  # run and proposal come from the HDF5 file's METADATA, and follow the directory move
        meta = records[f"/cat/raw/r0044/{name}"]["scientificMetadata"]
        assert (meta["proposal"], meta["runNumber"]) == (700123, 42)
    assert records["/cat/raw/r0043/file2.dat"]["size"] == 5
    removed = [r for r in search_records(db, removed=True) if r["removed"]]
    assert len(removed) == 2  # the deleted file2.dat and the one moved out of the tree


def test_cache_copies_drops_moves_and_evicts_least_recently_used(client: Client, tmp_path: Path, shared: Path) -> None:
    cache = shared / "cache"
    deploy(client, "cache", "cache.py", "/cache", {"cache_dir": str(cache), "max_bytes": 100_000}, ordered=True)
    client.mkdir("/cache/run", parents=True)
    blobs = {n: os.urandom(40_000) for n in "ABCD"}
    done = 0

    def upload(name: str) -> None:
        nonlocal done
        put(client, tmp_path, f"/cache/run/{name}", blobs[name])
        done += 1
        settle(client, "cache", at_least=done, quiet=0.2)

    def held() -> dict[str, bytes]:
        return {
            str(p.relative_to(cache)): p.read_bytes() for p in cache.rglob("*") if p.is_file() and p.name != ".lock"
        }

    upload("A")
    upload("B")
    assert held() == {"cache/run/A": blobs["A"], "cache/run/B": blobs["B"]}
    upload("C")  # 120,000 bytes > 100,000: A, the least recently used, goes
    assert sorted(held()) == ["cache/run/B", "cache/run/C"]
    future = time.time() + 60
    os.utime(cache / "cache/run/B", (future, future))  # a reader used B: now C is the least recently used
    upload("D")
    assert held() == {"cache/run/B": blobs["B"], "cache/run/D": blobs["D"]}

    client.move("/cache/run/D", "/cache/run/E")
    client.remove("/cache/run/B")
    settle(client, "cache", at_least=done + 3)  # IN_MOVED_FROM, IN_MOVED_TO, IN_DELETE
    assert held() == {"cache/run/E": blobs["D"]}
    assert zlib.adler32(held()["cache/run/E"]) == zlib.adler32(blobs["D"])
    failures = [
        r for r in Functions(client).activations(name="cache", limit=200, docs=True) if not r["response"]["success"]
    ]
    assert failures == []


def test_catalogue_search_cli_reads_what_the_function_wrote(tmp_path: Path) -> None:
    """`headrace catalogue search` filters; a missing or foreign database is one clear line and exit 1."""
    import subprocess
    import sys

    db = tmp_path / "c.sqlite"
    conn = sqlite3.connect(db)
    sys.path.insert(0, str(EXAMPLES))
    try:
        import catalogue as fn  # examples/xfel/catalogue.py
    finally:
        sys.path.remove(str(EXAMPLES))
    conn.close()
    c = fn.connect(str(db))
    for i, (run, path) in enumerate([(42, "/exp/raw/r0042/A.h5"), (43, "/exp/raw/r0043/B.h5")]):
        event = {"pnfsId": f"id{i}", "size": 10 + i, "time": "2026-11-26T00:00:00Z", "checksums": {"ADLER32": "1"}}
        fn.put(c, f"headrace/id{i}", fn.record(event, path, {"proposal": 700000, "runNumber": run}), i + 1, path)
    c.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "headrace.cli.main", "catalogue", "search", *args], capture_output=True, text=True
        )

    out = cli("--db", str(db), "--run", "43")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["/exp/raw/r0043/B.h5", "11", "p700000/r0043", "raw"]
    out = cli("--db", str(db), "r0042", "--json")
    assert [r["datasetName"] for r in __import__("json").loads(out.stdout)] == ["A.h5"]
    missing = cli("--db", str(tmp_path / "none.sqlite"))
    assert missing.returncode == 1 and missing.stderr.startswith("headrace: ") and "no catalogue" in missing.stderr
    bad = cli("--db", str(db), "--type", "cooked")
    assert bad.returncode == 2 and "--type is raw or derived" in bad.stderr


def test_ctx_storage_reads_ranges_and_writes_conditionally(client: Client, server: Server, tmp_path: Path) -> None:
    """What the XFEL functions use of ctx.storage, on the real door: open() reads by ranges (seeks, reads
    across blocks, an empty file) and fails rather than mix two versions of a replaced file; a conditional
    write succeeds only over the version it names."""
    from headrace.functions.storage import ActivationStorage, StorageConflict, StorageError

    client.mkdir("/ranges", parents=True)
    body = os.urandom(700_000)
    put(client, tmp_path, "/ranges/big.bin", body)
    put(client, tmp_path, "/ranges/empty.bin", b"")
    token = client.create_token("/ranges", activities=None)["macaroon"]
    storage = ActivationStorage(server.door_url, server.api_url, token, None)
    try:
        with storage.open("/ranges/big.bin") as f:
            assert f.read(10) == body[:10]
            f.seek(300_000)
            assert f.read(200_000) == body[300_000:500_000]  # across blocks
            f.seek(-5, os.SEEK_END)
            assert f.read() == body[-5:]
            f.seek(0)
            assert f.read() == body
        with storage.open("/ranges/empty.bin") as f:
            assert f.read() == b""
        with storage.open("/ranges/big.bin") as f:
            f.read(10)
            put(client, tmp_path, "/ranges/big.bin", os.urandom(700_000))  # replaced while read
            f.seek(600_000)
            with pytest.raises(StorageError, match="412"):
                f.read(10)

        assert storage.read_tagged("/ranges/none.json") is None
        first = storage.write("/ranges/state.json", b"1", if_absent=True)
        with pytest.raises(StorageConflict):
            storage.write("/ranges/state.json", b"2", if_absent=True)
        found = storage.read_tagged("/ranges/state.json")
        assert found is not None and found == (b"1", first)
        second = storage.write("/ranges/state.json", b"2", if_match=first)
        with pytest.raises(StorageConflict):
            storage.write("/ranges/state.json", b"3", if_match=first)  # a version that is gone
        assert storage.read_tagged("/ranges/state.json") == (b"2", second)
    finally:
        storage.close()
