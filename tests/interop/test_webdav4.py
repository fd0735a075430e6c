"""The webdav4 Python client (httpx-based, used by fsspec and DVC) against a real door."""

from __future__ import annotations

import io
import os
import random
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from webdav4.client import Client, IsACollectionError, ResourceAlreadyExists, ResourceConflict, ResourceNotFound

from harness import Server

from .tools import api_path

pytestmark = pytest.mark.interop

# webdav4 puts paths into URLs without escaping '#', '?' or '%' (a client limitation), so those stay out.
ODD_NAMES = [
    "sp ace",
    "ünïcödé",
    "日本語",
    "amp&x",
    "plus+x",
    "it's",
    "semi;c",
    "colon:x",
    "br[1]",
    "e\u0301",
    "~t@$,=",
]


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Client]:
    c = Client(server.door_url, auth=server.auth, timeout=30)
    yield c
    c.http.close()


@pytest.fixture
def base(client: Client, request: pytest.FixtureRequest) -> str:
    """A fresh directory per test."""
    path = f"w4-{request.node.name}"
    client.mkdir(path)
    return path


def test_options_and_features(client: Client) -> None:
    assert "1" in client.options("")
    assert client.detected_features.dav_compliances >= {"1"}


def test_upload_download_files(client: Client, base: str, tmp_path: Path) -> None:
    rnd = random.Random(3)
    for size in (0, 1, 65536, 2 * 1024 * 1024 + 3):
        src = tmp_path / f"in-{size}"
        src.write_bytes(rnd.randbytes(size))
        client.upload_file(src, f"{base}/f-{size}.bin")
        dst = tmp_path / f"out-{size}"
        client.download_file(f"{base}/f-{size}.bin", dst)
        assert dst.read_bytes() == src.read_bytes()
        assert client.content_length(f"{base}/f-{size}.bin") == size
    with pytest.raises(ResourceAlreadyExists):
        client.upload_file(tmp_path / "in-1", f"{base}/f-1.bin")
    client.upload_file(tmp_path / "in-65536", f"{base}/f-1.bin", overwrite=True)
    assert client.content_length(f"{base}/f-1.bin") == 65536


class Unsized(io.RawIOBase):
    """A readable stream with no length to peek at (no fileno, not seekable), like a socket or generator."""

    def __init__(self, data: bytes, piece: int = 50_000) -> None:
        self.data, self.pos, self.piece = data, 0, piece

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.piece, len(self.data) - self.pos)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_chunked_upload_of_unknown_length(client: Client, base: str, server: Server) -> None:
    """A stream of unknown length makes webdav4 send Transfer-Encoding: chunked."""
    data = random.Random(5).randbytes(3 * 1024 * 1024 + 11)
    client.upload_fileobj(Unsized(data), f"{base}/piped.bin")  # type: ignore[arg-type]
    out = io.BytesIO()
    client.download_fileobj(f"{base}/piped.bin", out)
    assert out.getvalue() == data
    with server.api() as api:
        info = api.get(api_path(f"/{base}/piped.bin"), params={"checksum": "true"}).json()
    assert info["size"] == len(data)
    assert {"type": "ADLER32", "value": f"{zlib.adler32(data):08x}"} in info["checksums"]


def test_ls_with_detail_and_info(client: Client, base: str) -> None:
    client.mkdir(f"{base}/sub")
    for name in ODD_NAMES:
        client.upload_fileobj(io.BytesIO(name.encode()), f"{base}/{name}")
    entries = {e["name"]: e for e in client.ls(base, detail=True)}
    assert set(entries) == {f"{base}/{n}" for n in [*ODD_NAMES, "sub"]}
    sub = entries[f"{base}/sub"]
    assert sub["type"] == "directory" and sub["display_name"] == "sub"
    now = datetime.now(UTC)
    for name in ODD_NAMES:
        e = entries[f"{base}/{name}"]
        assert e["type"] == "file"
        assert e["content_length"] == len(name.encode())
        assert e["display_name"] == name
        assert e["etag"] and e["etag"].startswith('"')
        assert abs(e["modified"] - now) < timedelta(minutes=5)
    assert client.ls(base, detail=False) == sorted(entries)
    info = client.info(f"{base}/{ODD_NAMES[0]}")
    assert info["content_length"] == len(ODD_NAMES[0]) and info["type"] == "file"
    assert client.info(base)["type"] == "directory"
    assert client.isdir(f"{base}/sub") and not client.isfile(f"{base}/sub")
    with pytest.raises(ResourceNotFound):
        client.ls(f"{base}/missing")
    with pytest.raises(ResourceNotFound):
        client.info(f"{base}/missing")


def test_etag_and_modified_change_on_overwrite(client: Client, base: str) -> None:
    path = f"{base}/v.txt"
    client.upload_fileobj(io.BytesIO(b"one"), path)
    etag1, created1 = client.etag(path), client.created(path)
    client.upload_fileobj(io.BytesIO(b"two!"), path, overwrite=True)
    assert client.etag(path) != etag1
    assert client.content_length(path) == 4
    assert client.created(path) == created1  # same file, new content
    assert client.content_type(f"{base}/v.txt") == "text/plain"


def test_mkdir_exists_remove(client: Client, base: str) -> None:
    client.mkdir(f"{base}/d")
    assert client.exists(f"{base}/d")
    assert not client.exists(f"{base}/nope")
    with pytest.raises(ResourceAlreadyExists):
        client.mkdir(f"{base}/d")
    with pytest.raises(ResourceConflict):  # 409: the parent is missing (RFC 4918 9.3.1)
        client.mkdir(f"{base}/no/such/parent")
    client.upload_fileobj(io.BytesIO(b"x"), f"{base}/d/f")
    client.remove(f"{base}/d")  # recursive
    assert not client.exists(f"{base}/d")
    assert not client.exists(f"{base}/d/f")
    with pytest.raises(ResourceNotFound):
        client.remove(f"{base}/d")


def test_move_and_copy(client: Client, base: str) -> None:
    client.mkdir(f"{base}/tree")
    client.mkdir(f"{base}/tree/inner")
    for name in ODD_NAMES:
        client.upload_fileobj(io.BytesIO(name.encode() * 10), f"{base}/tree/inner/{name}")
    client.copy(f"{base}/tree", f"{base}/copy ü")
    assert client.ls(f"{base}/copy ü/inner", detail=False) == sorted(f"{base}/copy ü/inner/{n}" for n in ODD_NAMES)
    for name in ODD_NAMES:
        out = io.BytesIO()
        client.download_fileobj(f"{base}/copy ü/inner/{name}", out)
        assert out.getvalue() == name.encode() * 10
        client.move(f"{base}/copy ü/inner/{name}", f"{base}/copy ü/{name}.moved")
    assert client.ls(f"{base}/copy ü/inner", detail=False) == []
    assert len(client.ls(f"{base}/tree/inner", detail=False)) == len(ODD_NAMES)  # the source is untouched
    with pytest.raises(ResourceAlreadyExists):
        client.move(f"{base}/copy ü/{ODD_NAMES[0]}.moved", f"{base}/copy ü/{ODD_NAMES[1]}.moved")
    client.move(f"{base}/copy ü/{ODD_NAMES[0]}.moved", f"{base}/copy ü/{ODD_NAMES[1]}.moved", overwrite=True)
    assert client.content_length(f"{base}/copy ü/{ODD_NAMES[1]}.moved") == len(ODD_NAMES[0].encode()) * 10
    client.move(f"{base}/tree", f"{base}/renamed")
    assert not client.exists(f"{base}/tree") and client.isdir(f"{base}/renamed/inner")


def test_open_with_range_seeks(client: Client, base: str) -> None:
    data = random.Random(9).randbytes(1024 * 1024 + 123)
    client.upload_fileobj(io.BytesIO(data), f"{base}/big.bin")
    with client.open(f"{base}/big.bin", "rb") as f:
        assert f.read(10) == data[:10]
        for pos in (500_000, 7, len(data) - 5, 1024 * 1024, 0):
            f.seek(pos)
            assert f.tell() == pos
            assert f.read(100) == data[pos : pos + 100]
        f.seek(-50, os.SEEK_END)
        assert f.read() == data[-50:]
    with pytest.raises(IsACollectionError):
        client.open(base).__enter__()
