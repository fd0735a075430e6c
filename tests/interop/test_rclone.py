"""rclone's WebDAV backend (vendor "other", configured from the environment only) against a real door.

A local tree with nested directories, empty and multi-megabyte files, names with spaces, non-ASCII and
URL-special characters goes in with `rclone copy`, is listed, comes back out, and must match byte for byte;
the ADLER32 checksums the server computed on the way in must match the local files.
"""

from __future__ import annotations

import json
import os
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import Server

from .tools import api_path, require, run

pytestmark = pytest.mark.interop

SIZES = [0, 1, 100, 4096, 65536, 1024 * 1024 + 7, 3 * 1024 * 1024]
DIRS = ["", "a b", "a b/ünï cödé", "a b/ünï cödé/deep/er", "x", "sp#ec%ial & chars+"]
NAMES = ["f{i}.dat", "file {i} ñ€.bin", "日本語 {i}", "it's #{i} 100%", "semi;{i}[a]=b,c"]


@dataclass
class Remote:
    env: dict[str, str]
    srv: Server

    def rclone(self, *args: str, check: bool = True, timeout: float = 180) -> tuple[int, str, str]:
        out = run(["rclone", *args], env=self.env, timeout=timeout, check=check)
        return out.returncode, out.stdout, out.stderr

    def stat(self, path: str, **flags: str) -> dict[str, object] | None:
        with self.srv.api() as api:
            r = api.get(api_path(path), params=flags)
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        data: dict[str, object] = r.json()
        return data


def make_tree(root: Path, n: int = 50, seed: int = 7) -> dict[str, bytes]:
    """~n files across nested directories; returns relative path -> content."""
    rnd = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(n):
        d = DIRS[i % len(DIRS)]
        name = NAMES[i % len(NAMES)].format(i=i)
        rel = f"{d}/{name}" if d else name
        data = rnd.randbytes(SIZES[i % len(SIZES)])
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[rel] = data
    return files


def local_files(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def remote(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Remote:
    require("rclone")
    home = tmp_path_factory.mktemp("rclone-home")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CACHE_DIR": str(home / "cache"),
        "RCLONE_CONFIG_HR_TYPE": "webdav",
        "RCLONE_CONFIG_HR_URL": server.door_url,
        "RCLONE_CONFIG_HR_VENDOR": "other",
        "RCLONE_CONFIG_HR_USER": server.auth[0],
    }
    obscured = run(["rclone", "obscure", server.auth[1]], env=env, timeout=30).stdout.strip()
    env["RCLONE_CONFIG_HR_PASS"] = obscured
    return Remote(env, server)


@pytest.fixture(scope="module")
def uploaded(remote: Remote, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, bytes]]]:
    """The local tree, copied in once to hr:/tree with several parallel transfers."""
    src = tmp_path_factory.mktemp("src")
    files = make_tree(src)
    remote.rclone("copy", str(src), "hr:/tree", "--transfers", "8", "--retries", "1")
    yield src, files


def test_lsjson_lists_the_tree(remote: Remote, uploaded: tuple[Path, dict[str, bytes]]) -> None:
    _, files = uploaded
    _, out, _ = remote.rclone("lsjson", "-R", "hr:/tree")
    entries = json.loads(out)
    listed = {e["Path"]: e["Size"] for e in entries if not e["IsDir"]}
    assert listed == {rel: len(data) for rel, data in files.items()}
    dirs = {e["Path"] for e in entries if e["IsDir"]}
    expected_dirs = {p for rel in files for p in _parents(rel)}
    assert dirs == expected_dirs
    for e in entries:
        if not e["IsDir"]:
            assert e["Name"] == e["Path"].rsplit("/", 1)[-1]


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def test_copy_back_is_byte_identical(remote: Remote, uploaded: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    _, files = uploaded
    dst = tmp_path / "out"
    # Multi-thread downloads fetch the big files as parallel Range GETs.
    remote.rclone("copy", "hr:/tree", str(dst), "--multi-thread-cutoff", "1M", "--multi-thread-streams", "4")
    back = local_files(dst)
    assert sorted(back) == sorted(files)
    for rel, data in files.items():
        assert back[rel] == data, rel


def test_stored_adler32_matches_local(remote: Remote, uploaded: tuple[Path, dict[str, bytes]]) -> None:
    _, files = uploaded
    for rel, data in files.items():
        info = remote.stat(f"/tree/{rel}", checksum="true")
        assert info is not None, rel
        assert info["size"] == len(data)
        sums = {c["type"]: c["value"] for c in info["checksums"]}  # type: ignore[attr-defined]
        assert sums.get("ADLER32") == f"{zlib.adler32(data) & 0xFFFFFFFF:08x}", rel


def test_check_and_second_copy(remote: Remote, uploaded: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    src, files = uploaded
    # The webdav backend (vendor other) has no hash in common with local files: sizes are compared.
    remote.rclone("check", "--size-only", str(src), "hr:/tree")
    code, _, err = remote.rclone("check", str(src), "hr:/tree", "--download", check=False)
    assert code == 0, err
    # A second copy finds everything in place and transfers nothing.
    _, _, err = remote.rclone("copy", "-v", str(src), "hr:/tree")
    assert "Copied" not in err, err
    # A local change (same size, different bytes) is caught only by comparing contents.
    changed = tmp_path / "changed"
    changed.mkdir()
    rel = next(r for r, d in files.items() if len(d) == 100)
    (changed / "x.dat").write_bytes(bytes(100))
    remote.rclone("copy", str(changed), "hr:/check")
    (changed / "x.dat").write_bytes(files[rel])
    remote.rclone("check", "--size-only", str(changed), "hr:/check")
    code, _, err = remote.rclone("check", "--download", str(changed), "hr:/check", check=False)
    assert code != 0 and "1 differences found" in err, err


def test_cat_with_offset_and_count(remote: Remote, uploaded: tuple[Path, dict[str, bytes]]) -> None:
    _, files = uploaded
    rel, data = next((r, d) for r, d in files.items() if len(d) == 3 * 1024 * 1024)
    out = run(
        ["rclone", "cat", "--offset", "1000000", "--count", "4096", f"hr:/tree/{rel}"],
        env=remote.env,
        timeout=60,
        text=False,
    )
    assert out.stdout == data[1000000 : 1000000 + 4096]


def test_moveto_deletefile_purge(remote: Remote, tmp_path: Path) -> None:
    src = tmp_path / "small"
    files = make_tree(src, n=12, seed=11)
    remote.rclone("copy", str(src), "hr:/ops")
    rel, data = next((r, d) for r, d in files.items() if "/" in r and d)
    adler = f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"

    # moveto: a server-side MOVE into a new directory, under a new non-ASCII name.
    remote.rclone("moveto", f"hr:/ops/{rel}", "hr:/ops/moved/nämé mövéd.bin")
    assert remote.stat(f"/ops/{rel}") is None
    moved = remote.stat("/ops/moved/nämé mövéd.bin", checksum="true")
    assert moved is not None and moved["size"] == len(data)
    assert {"type": "ADLER32", "value": adler} in moved["checksums"]  # type: ignore[operator]

    # deletefile removes one file and nothing else.
    other = next(r for r in files if r != rel)
    remote.rclone("deletefile", f"hr:/ops/{other}")
    assert remote.stat(f"/ops/{other}") is None
    assert remote.stat("/ops/moved/nämé mövéd.bin") is not None

    # purge removes a whole tree.
    remote.rclone("purge", "hr:/ops/a b")
    assert remote.stat("/ops/a b") is None
    assert remote.stat("/ops") is not None
    remote.rclone("purge", "hr:/ops")
    assert remote.stat("/ops") is None


def test_mkdir_rmdir(remote: Remote) -> None:
    remote.rclone("mkdir", "hr:/made/one/two")
    info = remote.stat("/made/one/two")
    assert info is not None and info["fileType"] == "DIR"
    remote.rclone("rmdirs", "hr:/made")
    assert remote.stat("/made") is None
