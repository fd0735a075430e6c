"""The XFEL example functions called in-process: each examples/xfel module loaded by path, and a stand-in
for `ctx` whose storage is a local directory (what the functions call of ctx.storage, and nothing else).
Its conditional writes hold an flock, so that threads and processes (the bench's peer pool) sharing a
directory see them atomic as the door's are."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import IO

from headrace.functions.storage import StorageConflict, StorageError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "xfel"


def load_example(name: str) -> ModuleType:
    """examples/xfel/<name>.py as a module of its own (`<name>_under_test`)."""
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class DirStorage:
    """ctx.storage on a local directory; `local=False` makes the function read through `read` as it does on a
    host without the pool's files."""

    def __init__(self, root: Path, local: bool = True) -> None:
        self.root, self.local = root, local
        self.writes: list[str] = []

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def local_path(self, path: str) -> str | None:
        return str(self._p(path)) if self.local and self._p(path).exists() else None

    def read(self, path: str) -> bytes:
        return self._p(path).read_bytes()

    def open(self, path: str) -> IO[bytes]:
        return io.BytesIO(self.read(path))

    def list(self, path: str) -> list[str]:
        return sorted(p.name for p in self._p(path).iterdir())

    def read_tagged(self, path: str) -> tuple[bytes, str] | None:
        try:
            with self._p(path).open("rb") as f:
                return f.read(), _etag(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None

    def write(
        self, path: str, data: bytes | str, *, if_match: str | None = None, if_absent: bool = False
    ) -> str | None:
        target = self._p(path)
        if not target.parent.is_dir():
            raise StorageError(f"PUT {path}: 409 Parent directory does not exist")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{id(data)}.tmp")
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        with self._locked():  # the check and the rename as one step, as the door's commit is
            try:
                current: str | None = _etag(target.stat())
            except FileNotFoundError:
                current = None
            if (if_absent and current is not None) or (if_match is not None and if_match != current):
                tmp.unlink()
                raise StorageConflict(f"PUT {path}: 412 (now {current}, expected {if_match or 'none'})")
            tmp.replace(target)
            etag = _etag(target.stat())
        self.writes.append(path)
        return etag

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".dirstorage.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def mkdir(self, path: str, parents: bool = True) -> None:
        self._p(path).mkdir(parents=parents, exist_ok=True)


def _etag(st: os.stat_result) -> str:
    """A new inode per write (written aside and renamed), and its time: a new tag for every version."""
    return f'"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"'


class Ctx:
    def __init__(self, storage: DirStorage) -> None:
        self.storage = storage
        self.logger = logging.getLogger("xfel-example-test")
        self.activation_id = "0" * 32
