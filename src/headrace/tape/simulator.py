"""A tape system to test against, driven through dCache's HSM script interface (see `hsm`):

    python -m headrace.tape.simulator put|get|remove ... -hsmBase=DIR [-mount=S] [-position=S] [-rate=MB/s]
        [-drives=N] [-cartridgeBytes=N]

Copies live as files in `DIR/cartridges/<cartridge>/`; a cartridge fills up to `cartridgeBytes` and the next
one is started. Each `put`/`get` takes one of `drives` drives (a lock file each; it waits for one to be free),
mounts the cartridge it needs (sleeping `mount` seconds unless that drive has it mounted already), positions
(`position` seconds) and copies at `rate` MB/s (0: as fast as the disks go). Written copies are fsynced.

Failures are injected at run time through `DIR/faults.json`: `{"put": N, "get": N, "remove": N}` fails the
next N calls of each operation with exit code `rc` (default 31, "retry later") and `message`;
`{"put_sleep": S}` makes each put sleep S seconds first (to kill a flush half-way). Every call is logged, one
line each, to `DIR/calls.log`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

CHUNK = 1024 * 1024


class Fail(Exception):
    def __init__(self, rc: int, message: str) -> None:
        super().__init__(message)
        self.rc = rc


def parse(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(positional arguments, -key=value options)."""
    args: list[str] = []
    keys: dict[str, str] = {}
    for a in argv:
        if a.startswith("-") and len(a) > 1:
            k, _, v = a[1:].partition("=")
            keys[k] = v
        else:
            args.append(a)
    return args, keys


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Library:
    def __init__(self, keys: dict[str, str]) -> None:
        base = keys.get("hsmBase")
        if not base:
            raise Fail(2, "-hsmBase=DIR is required")
        self.base = Path(base)
        self.mount = float(keys.get("mount", 0) or 0)
        self.position = float(keys.get("position", 0) or 0)
        self.rate = float(keys.get("rate", 0) or 0) * 1e6
        self.drives = max(1, int(keys.get("drives", 1) or 1))
        self.capacity = int(keys.get("cartridgeBytes", 1 << 30) or 1 << 30)
        self.hsm_type = keys.get("hsmType", "osm")
        self.instance = keys.get("hsmInstance", "headrace")
        for d in ("cartridges", "drives"):
            (self.base / d).mkdir(parents=True, exist_ok=True)

    def log(self, line: str) -> None:
        with open(self.base / "calls.log", "a") as f:
            f.write(f"{time.time():.3f} {line}\n")

    def fault(self, op: str) -> dict[str, Any]:
        """Consume one injected failure of `op`, if any; the faults file's settings."""
        path = self.base / "faults.json"
        with locked(self.base / "faults.lock"):
            try:
                faults = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                return {}
            n = int(faults.get(op, 0) or 0)
            if n > 0:
                faults[op] = n - 1
                path.write_text(json.dumps(faults))
                raise Fail(int(faults.get("rc", 31)), str(faults.get("message", f"injected {op} failure")))
            return dict(faults)

    @contextlib.contextmanager
    def drive(self, cartridge: str) -> Iterator[None]:
        """Hold a drive with `cartridge` mounted."""
        files = [open(self.base / "drives" / f"{i}.lock", "a+") for i in range(self.drives)]  # noqa: SIM115
        try:
            held = None
            while held is None:
                for f in files:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        held = f
                        break
                    except BlockingIOError:
                        continue
                if held is None:
                    time.sleep(0.01)
            assert held is not None
            mounted = self.base / "drives" / f"{Path(held.name).stem}.mounted"
            current = mounted.read_text() if mounted.exists() else ""
            if current != cartridge:
                time.sleep(self.mount)
                mounted.write_text(cartridge)
                self.log(f"mount {cartridge} drive {Path(held.name).stem}")
            time.sleep(self.position)
            yield
        finally:
            for f in files:
                f.close()  # closing releases the lock

    def copy(self, src: Path, dst: Path) -> int:
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}")
        n = 0
        started = time.monotonic()
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    fout.write(chunk)
                    n += len(chunk)
                    if self.rate:
                        ahead = n / self.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return n

    def write_cartridge(self, size: int) -> str:
        """The cartridge a new copy of `size` bytes goes to (a new one when the current one is full)."""
        with locked(self.base / "cartridges.lock"):
            current = self.base / "current"
            name = current.read_text().strip() if current.exists() else ""
            if name:
                used = _used(self.base / "cartridges" / name)
                if used + size > self.capacity and used > 0:
                    name = ""
            if not name:
                count = len(list((self.base / "cartridges").iterdir()))
                name = f"T{count + 1:05d}"
                (self.base / "cartridges" / name).mkdir()
                current.write_text(name)
            return name

    def put(self, pnfsid: str, path: str) -> str:
        faults = self.fault("put")
        time.sleep(float(faults.get("put_sleep", 0) or 0))
        src = Path(path)
        cartridge = self.write_cartridge(src.stat().st_size)
        name = f"{pnfsid}.{uuid.uuid4().hex[:12]}"
        with self.drive(cartridge):
            n = self.copy(src, self.base / "cartridges" / cartridge / name)
        self.log(f"put {pnfsid} {n} {cartridge}/{name}")
        return f"{self.hsm_type}://{self.instance}/?store={cartridge}&bfid={name}"

    def locate(self, uri: str) -> Path:
        q = parse_qs(urlsplit(uri).query)
        try:
            cartridge, bfid = q["store"][0], q["bfid"][0]
        except (KeyError, IndexError):
            raise Fail(2, f"not a URI of this tape system: {uri}") from None
        if "/" in cartridge + bfid or cartridge.startswith(".") or bfid.startswith("."):
            raise Fail(2, f"not a URI of this tape system: {uri}")
        return self.base / "cartridges" / cartridge / bfid

    def get(self, pnfsid: str, path: str, uri: str) -> None:
        self.fault("get")
        copy = self.locate(uri)
        if not copy.exists():
            raise Fail(2, f"no such copy on tape: {uri}")
        with self.drive(copy.parent.name):
            n = self.copy(copy, Path(path))
        self.log(f"get {pnfsid} {n} {uri}")

    def remove(self, uri: str) -> None:
        self.fault("remove")
        self.locate(uri).unlink(missing_ok=True)
        self.log(f"remove {uri}")


def _used(cartridge: Path) -> int:
    """The bytes on `cartridge`: its copies and the ones being written (a copy's temporary name may be gone,
    renamed by a concurrent put, between the listing and its stat)."""
    used = 0
    for p in cartridge.iterdir():
        with contextlib.suppress(FileNotFoundError):
            used += p.stat().st_size
    return used


def main(argv: list[str]) -> int:
    args, keys = parse(argv)
    try:
        lib = Library(keys)
        match args:
            case ["put", pnfsid, path]:
                print(lib.put(pnfsid, path), flush=True)
            case ["get", pnfsid, path]:
                if "uri" not in keys:
                    raise Fail(2, "get needs -uri=URI")
                lib.get(pnfsid, path, keys["uri"])
            case ["remove"]:
                if "uri" not in keys:
                    raise Fail(2, "remove needs -uri=URI")
                lib.remove(keys["uri"])
            case _:
                raise Fail(2, "usage: put|get <pnfsid> <file> | remove, with -uri=URI -hsmBase=DIR ...")
    except Fail as exc:
        print(str(exc), file=sys.stderr)
        return exc.rc
    except OSError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 42 if "put" in args[:1] else 43
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
