"""The XFEL example functions called in-process: each examples/xfel module loaded by path, and a stand-in
for `ctx` whose storage is a local directory (what the functions call of ctx.storage, and nothing else)."""

from __future__ import annotations

import importlib.util
import io
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import IO

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

    def write(self, path: str, data: bytes | str) -> None:
        if not self._p(path).parent.is_dir():
            raise RuntimeError(f"PUT {path}: 409 Parent directory does not exist")
        self._p(path).write_bytes(data.encode() if isinstance(data, str) else data)
        self.writes.append(path)

    def mkdir(self, path: str, parents: bool = True) -> None:
        self._p(path).mkdir(parents=parents, exist_ok=True)


class Ctx:
    def __init__(self, storage: DirStorage) -> None:
        self.storage = storage
        self.logger = logging.getLogger("xfel-example-test")
        self.activation_id = "0" * 32
