"""`ctx.storage`: how a function reads and writes headrace paths, as the action's owner, with every change it
makes naming its activation as the cause (so that the events it causes carry it, and loops are cut).

A function has no network: when its action asks for storage access (the annotation `storage`), its sandbox
has two UNIX sockets, door.sock and api.sock in $HEADRACE_SOCKET_DIR, that the invoker forwards to the door
and the frontend, and $HEADRACE_TOKEN is a macaroon minted for this activation alone. Every read streams
through the door; `local_path()` downloads into the sandbox's private /tmp for libraries that want a file
name (h5py), removed when the activation ends. Runs inside worker processes; configured by the
environment the invoker sets.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from headrace.tls import tls_context

CAUSE_HEADER = "X-Headrace-Cause"  # informative only: the server takes the cause from the token
NO_ACCESS = (
    "ctx.storage needs storage access: deploy the action with the annotation storage=true "
    "(`headrace fn deploy --storage`, or `storage: true` in headrace.yaml)"
)


class StorageError(Exception):
    """A storage call failed; str() holds the server's status and detail."""


class StorageConflict(StorageError):
    """A conditional write (`if_match`, `if_absent`) found the file changed since it was read: 412."""


def _url_path(path: str) -> str:
    if not path.startswith("/"):
        raise StorageError(f"paths are absolute, not {path!r}")
    return quote(path)


def _source_url(source: str, path: str) -> str:
    """Where the frontend streams a file of event source `source` (`/api/v1/sources/{name}/files/{path}`)."""
    return f"/api/v1/sources/{quote(source, safe='')}/files{_url_path(path)}"


class _SharedTransport(httpx.BaseTransport):
    """One connection pool per socket for every activation a worker process runs: an activation's clients are
    cheap to make (no SSL context of their own, ~40 ms of CPU each otherwise) and reuse kept-alive
    connections."""

    _instances: dict[tuple[int, str], _SharedTransport] = {}

    def __init__(self, uds: str | None) -> None:
        self._inner = httpx.HTTPTransport(verify=tls_context(), uds=uds)

    @classmethod
    def get(cls, uds: str | None) -> _SharedTransport:
        key = (os.getpid(), uds or "")  # never a pool inherited across fork: its sockets are the parent's
        found = cls._instances.get(key)
        if found is None:
            found = cls._instances[key] = cls(uds)
        return found

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)

    def close(self) -> None:
        """Kept open: the next activation of this process uses it."""


class _RangedFile(io.RawIOBase):
    """A door file read by ranges of whole BLOCKs, the last CACHED of them kept (h5py comes back to its
    metadata blocks), runs of missing blocks fetched in one GET."""

    BLOCK = 128 * 1024  # a small file in one GET; h5py's metadata of a 2.6 MB EuXFEL file in two
    CACHED = 32

    def __init__(self, storage: ActivationStorage, path: str, source: str | None = None) -> None:
        super().__init__()
        self._storage, self._path = storage, path
        # a file of an event source comes through the frontend, which reads it with the source's credentials
        self._client = storage.api if source else storage.door
        self._url = _source_url(source, path) if source else _url_path(path)
        self._pos = 0
        self._blocks: dict[int, bytes] = {}  # index -> data, oldest first
        self._etag: str | None = None
        self._first = True
        self._size = 0
        first = self._get(0, self.BLOCK - 1)
        if first is not None:
            self._keep(0, first)

    def _get(self, start: int, end: int) -> bytes | None:
        headers = {"Range": f"bytes={start}-{end}"}
        if self._etag is not None:
            headers["If-Match"] = self._etag
        r = self._client.get(self._url, headers=headers, follow_redirects=True)
        if r.status_code == 416 and self._first:  # an empty file
            return None
        if r.status_code == 412:
            raise StorageError(f"GET {self._path}: 412 the file was replaced while it was read")
        self._storage._check(r, 200, 206)
        if self._first:
            self._first = False
            self._etag = r.headers.get("etag")
            total = r.headers.get("content-range", "").rpartition("/")[2]
            self._size = int(total) if r.status_code == 206 and total.isdigit() else len(r.content)
        if r.status_code == 200:  # the whole file: keep it all
            for i in range(0, len(r.content), self.BLOCK):
                self._keep(i // self.BLOCK, r.content[i : i + self.BLOCK])
            return None
        return r.content

    def _keep(self, index: int, data: bytes) -> None:
        self._blocks.pop(index, None)
        self._blocks[index] = data
        while len(self._blocks) > self.CACHED:
            del self._blocks[next(iter(self._blocks))]

    def _block(self, index: int, last: int) -> bytes:
        if index not in self._blocks:
            stop = index
            while stop < last and stop + 1 not in self._blocks:
                stop += 1  # the run of missing blocks up to what this read needs
            data = self._get(index * self.BLOCK, min((stop + 1) * self.BLOCK, self._size) - 1)
            if data is not None:
                for i in range(index, stop + 1):
                    self._keep(i, data[(i - index) * self.BLOCK : (i - index + 1) * self.BLOCK])
        data = self._blocks[index]
        self._keep(index, data)  # recently used
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), self._size - self._pos))
        if n == 0:
            return 0
        first, last = self._pos // self.BLOCK, (self._pos + n - 1) // self.BLOCK
        done = 0
        for index in range(first, last + 1):
            data = self._block(index, last)
            start = self._pos + done - index * self.BLOCK
            part = data[start : start + n - done]
            if not part:  # the server sent less than it said the file holds
                break
            out[done : done + len(part)] = part
            done += len(part)
        self._pos += done
        return done


class ActivationStorage:
    def __init__(
        self, door_url: str, api_url: str, token: str, activation_id: str | None, socket_dir: str | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if activation_id:
            headers[CAUSE_HEADER] = activation_id
        door_sock = os.path.join(socket_dir, "door.sock") if socket_dir else None
        api_sock = os.path.join(socket_dir, "api.sock") if socket_dir else None
        self.door = httpx.Client(
            base_url=door_url,
            headers=headers,
            timeout=httpx.Timeout(60, read=None),
            transport=_SharedTransport.get(door_sock),
        )
        self._downloads: list[str] = []  # local_path()'s files, removed at close (the activation's end)
        self.api = httpx.Client(base_url=api_url, headers=headers, timeout=60, transport=_SharedTransport.get(api_sock))

    @classmethod
    def from_env(cls, activation_id: str | None = None, env: Mapping[str, str] | None = None) -> ActivationStorage:
        env = os.environ if env is None else env
        if not env.get("HEADRACE_TOKEN"):
            raise StorageError(NO_ACCESS)
        missing = [k for k in ("HEADRACE_DOOR_URL", "HEADRACE_API_URL") if not env.get(k)]
        if missing:
            raise StorageError(f"ctx.storage needs {', '.join(missing)} in the environment")
        return cls(
            env["HEADRACE_DOOR_URL"],
            env["HEADRACE_API_URL"],
            env["HEADRACE_TOKEN"],
            activation_id or env.get("__OW_ACTIVATION_ID"),
            env.get("HEADRACE_SOCKET_DIR") or None,
        )

    @staticmethod
    def _check(r: httpx.Response, *ok: int) -> httpx.Response:
        if r.status_code not in ok:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise StorageError(f"{r.request.method} {r.request.url.path}: {r.status_code} {detail}")
        return r

    # -- reading ----------------------------------------------------------------------------------------

    def stat(self, path: str) -> dict[str, Any]:
        r = self._check(self.api.get(f"/api/v1/namespace{_url_path(path)}", params={"checksum": "true"}), 200)
        return dict(r.json())

    def list(self, path: str) -> list[str]:
        r = self._check(self.api.get(f"/api/v1/namespace{_url_path(path)}", params={"children": "true"}), 200)
        return [c["fileName"] for c in r.json().get("children", [])]

    def _reader(self, path: str, source: str | None) -> tuple[httpx.Client, str]:
        """Where `path` is read: the door, or for a file of event source `source` the frontend's sources API
        (the reading reaches the remote with the source's credentials; the function's own token says who it
        runs for, who must be a reader of the source)."""
        return (self.api, _source_url(source, path)) if source else (self.door, _url_path(path))

    def local_path(self, path: str, *, source: str | None = None) -> str:
        """A file in the sandbox's private /tmp with the content of `path` (downloaded through the door), for
        libraries that want a file name; it counts against the action's memory and /tmp limits. With
        `source`, the file of that event source (the path an event of it named: `args["source"]`)."""
        fd, name = tempfile.mkstemp(prefix="headrace-", suffix="-" + Path(path).name[-64:])
        http, url = self._reader(path, source)
        try:
            with os.fdopen(fd, "wb") as f, http.stream("GET", url, follow_redirects=True) as r:
                if r.status_code != 200:
                    r.read()
                    self._check(r, 200)
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
        except BaseException:
            os.unlink(name)
            raise
        self._downloads.append(name)
        return name

    def open(self, path: str, *, source: str | None = None) -> IO[bytes]:
        """A seekable binary file object with the content of `path`, read by ranges as it is read: h5py opening
        a file for its metadata reads some blocks of it, not the whole (2.6 MB through the door cost ~20 ms
        of CPU). Every range names the ETag of the first (If-Match): a file replaced while it is read is a
        StorageError, never a mix of two versions. With `source`, a file of that event source."""
        return io.BufferedReader(_RangedFile(self, path, source))

    def read(self, path: str, *, source: str | None = None) -> bytes:
        """The content of `path` (with `source`: of that event source's file)."""
        http, url = self._reader(path, source)
        return self._check(http.get(url, follow_redirects=True), 200).content

    def read_tagged(self, path: str) -> tuple[bytes, str] | None:
        """The content of `path` and its ETag (for `write(..., if_match=etag)`), or None if there is no file."""
        r = self.door.get(_url_path(path), follow_redirects=True)
        if r.status_code == 404:
            return None
        self._check(r, 200)
        return r.content, r.headers["etag"]

    # -- writing ----------------------------------------------------------------------------------------

    def write(
        self, path: str, data: bytes | str | IO[bytes], *, if_match: str | None = None, if_absent: bool = False
    ) -> str | None:
        """Write `path` whole; returns the new ETag. `if_match` (an ETag from `read_tagged`) writes only over
        that version, `if_absent` only where there is no file: else StorageConflict, and nothing is written."""
        body: Any = data.encode() if isinstance(data, str) else data
        headers = {"If-Match": if_match} if if_match is not None else {}
        if if_absent:
            headers["If-None-Match"] = "*"
        r = self.door.put(_url_path(path), content=body, headers=headers)
        if r.status_code == 412:
            raise StorageConflict(f"PUT {path}: 412 {r.text}")
        etag: str | None = self._check(r, 201, 204).headers.get("etag")
        return etag

    def mkdir(self, path: str, parents: bool = True) -> None:
        parts = [p for p in path.split("/") if p]
        targets = ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))] if parents else [path]
        for target in targets:
            r = self.door.request("MKCOL", _url_path(target))
            if r.status_code == 405 and parents:  # exists
                continue
            self._check(r, 201)

    def delete(self, path: str) -> None:
        self._check(self.door.delete(_url_path(path)), 204)

    def move(self, src: str, dst: str) -> None:
        destination = str(self.door.base_url).rstrip("/") + _url_path(dst)
        self._check(self.door.request("MOVE", _url_path(src), headers={"Destination": destination}), 201, 204)

    def copy_from(
        self, url: str, path: str, headers: Mapping[str, str] | None = None, *, verify_checksum: bool = True
    ) -> None:
        """Pull the file at `url` (http or https, e.g. another dCache or headrace door) into `path`, by an HTTP
        third-party copy the door makes: the bytes go from the remote to the door, never through the
        function. `headers` go to the remote (e.g. {"Authorization": "Bearer ..."}, sent as
        TransferHeaderAuthorization); the remote must name the file's checksum unless `verify_checksum` is
        False. Returns when the file is in place; StorageError with the door's failure line otherwise."""
        sent = {"Source": url, "Credential": "none"}
        sent.update({f"TransferHeader{k}": v for k, v in (headers or {}).items()})
        if not verify_checksum:
            sent["RequireChecksumVerification"] = "false"
        with self.door.stream("COPY", _url_path(path), headers=sent) as r:
            if r.status_code != 202:
                r.read()
                self._check(r, 202)
            for line in r.iter_lines():
                line = line.strip()
                if line.startswith("success"):
                    return
                if line.startswith("failure"):
                    raise StorageError(f"COPY {path} from {url}: {line}")
        raise StorageError(f"COPY {path} from {url}: the door's answer ended before the copy did")

    def qos(self, path: str, target: str) -> None:
        """Change the QoS of `path` (disk, tape, disk+tape): e.g. flush a file to tape once it is processed."""
        r = self.api.post(f"/api/v1/namespace{_url_path(path)}", json={"action": "qos", "target": target})
        self._check(r, 200)

    def close(self) -> None:
        self.door.close()
        self.api.close()
        for name in self._downloads:
            with contextlib.suppress(OSError):
                os.unlink(name)
        self._downloads.clear()
