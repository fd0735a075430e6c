"""The Python SDK (`headrace.client`) against the door and frontend in this process (tests/support/inprocess_harness.py:
the fast tier; the SDK's requests go through httpx's ASGI transport instead of sockets): paging, mkdir -p,
transfers with checksums, tokens, configuration and the shape of its errors."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import headrace.client.storage as hc
from harness import ADMIN_KEY, free_port
from headrace.client import Client, ClientConfig, HeadraceClientError, HeadraceConnectionError, normalize_remote
from inprocess_harness import API_URL, DOOR_URL, InProcess


@pytest.fixture
def client(apps: InProcess) -> Iterator[Client]:
    config = ClientConfig(door=DOOR_URL, api=API_URL, username="admin", key=ADMIN_KEY)
    with Client(config, transport=apps.transport) as c:
        yield c


def test_normalize_remote() -> None:
    assert normalize_remote("/") == "/"
    assert normalize_remote("") == "/"
    assert normalize_remote("data/x/") == "/data/x"
    assert normalize_remote("//a//b/./c/../d") == "/a/b/d"
    assert normalize_remote("/../..") == "/"


def test_config_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("HEADRACE_DOOR_URL", "HEADRACE_API_URL", "HEADRACE_USER", "HEADRACE_KEY", "HEADRACE_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"door": "http://d:1/", "api": "http://a:2", "username": "u", "key": "k"}))
    monkeypatch.setenv("HEADRACE_CONFIG", str(cfg))
    c = ClientConfig.load()
    assert (c.door, c.api, c.username, c.key, c.token) == ("http://d:1", "http://a:2", "u", "k", None)
    monkeypatch.setenv("HEADRACE_API_URL", "http://other:3")
    monkeypatch.setenv("HEADRACE_TOKEN", "tok")
    c = ClientConfig.load()
    assert (c.api, c.token) == ("http://other:3", "tok")
    assert ClientConfig.load(tmp_path / "absent.json").door == hc.DEFAULT_DOOR
    cfg.write_text("[1, 2]")
    with pytest.raises(HeadraceClientError, match="JSON object"):
        ClientConfig.load()


def test_listdir_pages(client: Client) -> None:
    client.mkdir("/sdk-page")
    names = [f"n{i:02d}" for i in range(23)]
    for n in names:
        client.mkdir(f"/sdk-page/{n}")
    for size in (1, 5, 23, 1000):
        assert [e.name for e in client.listdir("/sdk-page", page_size=size)] == names
    head, children = client.listing("/sdk-page/n00")
    assert head.is_dir and list(children) == []
    with pytest.raises(HeadraceClientError) as err:
        next(client.listdir("/sdk-page/missing"))
    assert err.value.status == 404 and err.value.path == "/sdk-page/missing"


def test_mkdir_parents_and_errors(client: Client, tmp_path: Path) -> None:
    client.mkdir("/sdk-mk/a/b/c", parents=True)
    client.mkdir("/sdk-mk/a/b/c", parents=True)
    assert client.stat("/sdk-mk/a/b/c").is_dir
    with pytest.raises(HeadraceClientError) as err:
        client.mkdir("/sdk-mk/a")
    assert (err.value.status, err.value.detail, err.value.path) == (412, "File exists: /sdk-mk/a", "/sdk-mk/a")
    assert str(err.value) == "/sdk-mk/a: File exists: /sdk-mk/a (412)"
    client.upload(_write(tmp_path / "f", b"x"), "/sdk-mk/file")
    with pytest.raises(HeadraceClientError, match="Not a directory"):
        client.mkdir("/sdk-mk/file/sub", parents=True)
    client.ensure_dir("/sdk-mk/a")
    with pytest.raises(HeadraceClientError, match="Not a directory"):
        client.ensure_dir("/sdk-mk/file")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_upload_download_with_checksums(client: Client, tmp_path: Path) -> None:
    data = os.urandom(3 * hc.CHUNK + 123)
    src = _write(tmp_path / "src.bin", data)
    client.mkdir("/sdk-io")
    seen: list[int] = []
    result = client.upload(src, "/sdk-io/f.bin", seen.append)
    assert sum(seen) == len(data) and result.created
    assert result.adler32 == f"{zlib.adler32(data):08x}" == client.stat("/sdk-io/f.bin").adler32
    assert not client.upload(src, "/sdk-io/f.bin").created  # replaced

    got: list[int] = []
    announced: list[int] = []
    dl = client.download("/sdk-io/f.bin", tmp_path / "dst.bin", got.append, on_start=announced.append)
    assert (tmp_path / "dst.bin").read_bytes() == data
    assert dl.verified and dl.adler32 == result.adler32 and sum(got) == len(data) and announced == [len(data)]

    with pytest.raises(HeadraceClientError) as err:
        client.download("/sdk-io/missing", tmp_path / "nothing")
    assert err.value.status == 404
    with pytest.raises(HeadraceClientError, match="Is a directory"):
        client.download("/sdk-io", tmp_path / "dir")
    with pytest.raises(FileNotFoundError) as missing:
        client.download("/sdk-io/f.bin", tmp_path / "no" / "such" / "dir")
    assert missing.value.filename == str(tmp_path / "no" / "such" / "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]  # no temporary files left


def test_upload_checksum_mismatch_leaves_nothing(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Digest sent does not match the bytes (as when a file changes during upload): nothing stored."""
    src = _write(tmp_path / "f", b"some bytes")
    real = hc._file_adler32
    monkeypatch.setattr(hc, "_file_adler32", lambda f: (real(f)[0], "00000001"))
    client.mkdir("/sdk-bad")
    with pytest.raises(HeadraceClientError, match="changed while it was being uploaded"):
        client.upload(src, "/sdk-bad/f")
    assert not client.exists("/sdk-bad/f")


def test_move_remove(client: Client) -> None:
    client.mkdir("/sdk-mv/d", parents=True)
    client.move("/sdk-mv/d", "/sdk-mv/e")
    assert [e.name for e in client.listdir("/sdk-mv")] == ["e"]
    client.mkdir("/sdk-mv/e/f")
    with pytest.raises(HeadraceClientError) as err:
        client.remove("/sdk-mv/e")
    assert err.value.status == 409
    client.remove("/sdk-mv/e", recursive=True)
    assert list(client.listdir("/sdk-mv")) == []

    # rename(2)'s rules, not the frontend's replace-anything: a non-empty directory is never replaced.
    client.mkdir("/sdk-mv/full/keep", parents=True)
    client.mkdir("/sdk-mv/src")
    with pytest.raises(HeadraceClientError) as full:
        client.move("/sdk-mv/src", "/sdk-mv/full")
    assert (full.value.status, full.value.detail) == (409, "Directory not empty: /sdk-mv/full")
    assert client.exists("/sdk-mv/full/keep")
    client.mkdir("/sdk-mv/empty")
    client.move("/sdk-mv/src", "/sdk-mv/empty")  # an empty directory is replaced
    assert [e.name for e in client.listdir("/sdk-mv")] == ["empty", "full"]


def test_tree_walks_depth_first(client: Client) -> None:
    for d in ("/sdk-tree/a/x", "/sdk-tree/b"):
        client.mkdir(d, parents=True)
    assert [e.path for e in client.tree("/sdk-tree")] == ["/sdk-tree/a", "/sdk-tree/b", "/sdk-tree/a/x"]


def test_token_confines_the_client(client: Client, apps: InProcess, tmp_path: Path) -> None:
    client.mkdir("/sdk-tok/mine", parents=True)
    client.mkdir("/sdk-tok/theirs", parents=True)
    answer = client.create_token("/sdk-tok/mine", ["DOWNLOAD", "LIST", "UPLOAD", "MANAGE"], "PT5M")
    assert answer["uri"]["target"].endswith("/sdk-tok/mine")
    with Client(ClientConfig(door=DOOR_URL, api=API_URL, token=answer["macaroon"]), transport=apps.transport) as t:
        t.mkdir("/sdk-tok/mine/a/b", parents=True)  # below the path: allowed without touching ancestors
        t.upload(_write(tmp_path / "f", b"data"), "/sdk-tok/mine/a/b/f")
        assert [e.name for e in t.listdir("/sdk-tok/mine/a/b")] == ["f"]
        with pytest.raises(HeadraceClientError) as err:
            t.mkdir("/sdk-tok/theirs/x")
        assert err.value.status == 403
    with pytest.raises(HeadraceClientError) as bad:
        client.create_token("/", None, "not-a-duration")
    assert bad.value.status == 400


def test_connection_refused() -> None:
    port = free_port()
    config = ClientConfig(api=f"http://127.0.0.1:{port}", door=f"http://127.0.0.1:{port}")
    with Client(config) as c, pytest.raises(HeadraceConnectionError) as err:
        c.stat("/")
    assert err.value.url == f"http://127.0.0.1:{port}"
    assert "not reachable" in str(err.value) and "headrace up" in str(err.value)
