"""`ctx.storage`: how a function reads and writes headrace paths, as the action's owner, with every change it
makes naming its activation as the cause (so that the events it causes carry it, and loops are cut).

On the same host as the pools, reads open the pool file directly (the frontend says where it is, to loopback
clients only): no copy through HTTP, and `local_path()` gives h5py a file name. Elsewhere they stream through
the door. Runs inside worker processes; configured by the environment the controller sets.
"""

from __future__ import annotations

import io
import os
from typing import IO, Any
from urllib.parse import quote

import httpx

from headrace.tls import tls_context

CAUSE_HEADER = "X-Headrace-Cause"


class StorageError(Exception):
    """A storage call failed; str() holds the server's status and detail."""


def _url_path(path: str) -> str:
    if not path.startswith("/"):
        raise StorageError(f"paths are absolute, not {path!r}")
    return quote(path)


class _SharedTransport(httpx.BaseTransport):
    """One connection pool for every activation a worker process runs: an activation's clients are cheap to
    make (no SSL context of their own, ~40 ms of CPU each otherwise) and reuse kept-alive connections."""

    _instance: tuple[int, _SharedTransport] | None = None

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport(verify=tls_context())

    @classmethod
    def get(cls) -> _SharedTransport:
        pid = os.getpid()  # never a pool inherited across fork: its sockets are the parent's
        if cls._instance is None or cls._instance[0] != pid:
            cls._instance = (pid, cls())
        return cls._instance[1]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)

    def close(self) -> None:
        """Kept open: the next activation of this process uses it."""


class ActivationStorage:
    def __init__(self, door_url: str, api_url: str, token: str, activation_id: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        if activation_id:
            headers[CAUSE_HEADER] = activation_id
        transport = _SharedTransport.get()
        self.door = httpx.Client(
            base_url=door_url, headers=headers, timeout=httpx.Timeout(60, read=None), transport=transport
        )
        self.api = httpx.Client(base_url=api_url, headers=headers, timeout=60, transport=transport)

    @classmethod
    def from_env(cls, activation_id: str | None = None) -> ActivationStorage:
        env = os.environ
        missing = [k for k in ("HEADRACE_DOOR_URL", "HEADRACE_API_URL", "HEADRACE_TOKEN") if not env.get(k)]
        if missing:
            raise StorageError(f"ctx.storage needs {', '.join(missing)} in the environment")
        return cls(
            env["HEADRACE_DOOR_URL"],
            env["HEADRACE_API_URL"],
            env["HEADRACE_TOKEN"],
            activation_id or env.get("__OW_ACTIVATION_ID"),
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

    def local_path(self, path: str) -> str | None:
        """The pool file holding `path` when this host can open it directly; None otherwise."""
        r = self.api.get(f"/api/v1/namespace{_url_path(path)}", params={"blob": "true"})
        if r.status_code != 200:
            self._check(r, 200, 400)
            return None
        blob = r.json().get("headraceBlob")
        if blob and os.access(blob["path"], os.R_OK):
            return str(blob["path"])
        return None

    def open(self, path: str) -> IO[bytes]:
        """A binary file object with the content of `path` (the pool file itself when local)."""
        local = self.local_path(path)
        if local is not None:
            return open(local, "rb")
        return io.BytesIO(self.read(path))

    def read(self, path: str) -> bytes:
        local = self.local_path(path)
        if local is not None:
            with open(local, "rb") as f:
                return f.read()
        return self._check(self.door.get(_url_path(path), follow_redirects=True), 200).content

    # -- writing ----------------------------------------------------------------------------------------

    def write(self, path: str, data: bytes | str | IO[bytes]) -> None:
        body: Any = data.encode() if isinstance(data, str) else data
        self._check(self.door.put(_url_path(path), content=body), 201, 204)

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

    def close(self) -> None:
        self.door.close()
        self.api.close()
