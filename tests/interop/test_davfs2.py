"""davfs2 (a FUSE file system over WebDAV, as on Linux desktops and HPC login nodes) mounted on a real door.

davfs2 locks a file while it is open for writing, uploads it on close, and unlocks it; so this exercises
class 2 locking with tagged If headers. Needs root (mount) and /dev/fuse. Directory listings are left out:
on this test machine's kernel davfs2's readdir fails with EINVAL against any server (wsgidav too).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from harness import Server

from .tools import run

pytestmark = pytest.mark.interop


@pytest.fixture
def mounted(server: Server, tmp_path: Path) -> Iterator[Path]:
    if shutil.which("mount.davfs") is None:
        pytest.skip("davfs2 is not installed")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("mounting davfs2 needs root and /dev/fuse")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    secrets = tmp_path / "secrets"
    secrets.write_text(f"{mnt} {server.auth[0]} {server.auth[1]}\n")
    secrets.chmod(0o600)
    conf = tmp_path / "davfs2.conf"  # the cache stays in davfs2's own (its daemon runs as user davfs2)
    conf.write_text(f"secrets {secrets}\nuse_locks 1\ndelay_upload 0\n")
    run(["mount", "-t", "davfs", server.door_url + "/", str(mnt), "-o", f"conf={conf}"], timeout=60)
    try:
        yield mnt
    finally:
        try:
            subprocess.run(["umount", str(mnt)], timeout=120, check=True, capture_output=True)
        except (subprocess.SubprocessError, OSError):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(["umount", "-l", str(mnt)], timeout=30, capture_output=True)


def test_write_rename_read_delete(mounted: Path, server: Server) -> None:
    data = random.Random(2).randbytes(700_000)
    top = mounted / "davfs"
    top.mkdir()
    (top / "sub dir").mkdir()
    target = top / "sub dir" / "data ü.bin"
    target.write_bytes(data)
    with open(target, "ab") as f:
        f.write(b"tail")
    assert target.stat().st_size == len(data) + 4
    moved = top / "moved.bin"
    target.rename(moved)
    assert moved.read_bytes() == data + b"tail"
    (top / "gone.txt").write_text("bye")
    (top / "gone.txt").unlink()
    # Unmounting flushes everything and releases davfs2's locks.
    subprocess.run(["umount", str(mounted)], timeout=120, check=True, capture_output=True)

    with server.door() as door:
        assert door.get("/davfs/moved.bin").content == data + b"tail"
        assert door.get(quote("/davfs/sub dir/data ü.bin")).status_code == 404
        assert door.get("/davfs/gone.txt").status_code == 404
        r = door.request(
            "PROPFIND",
            "/davfs/moved.bin",
            content='<D:propfind xmlns:D="DAV:"><D:prop><D:lockdiscovery/></D:prop></D:propfind>',
            headers={"Depth": "0"},
        )
        assert r.status_code == 207
        assert ET.fromstring(r.content).findall(".//{DAV:}activelock") == []
        # The lock is really gone: a plain PUT goes through.
        assert door.put("/davfs/moved.bin", content=b"after").status_code == 204
