"""The headrace Python SDK: stat, list, mkdir, move, remove, upload, download and macaroons over HTTP.

Metadata goes to the frontend's dCache namespace API (`/api/v1/namespace`), data and token requests to
the WebDAV door. Transfers stream in bounded chunks and are checked end to end with ADLER32: an upload
sends `Digest: adler32=...` so the server refuses bytes that do not match the local file; a download
asks for `Want-Digest: adler32` and lands in a temporary file that is renamed into place only when its
checksum matches the server's.

    with Client.from_config() as hr:
        hr.upload("run1.h5", "/data/run1.h5")
        for entry in hr.listdir("/data"):
            print(entry.name, entry.size)
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from headrace.tls import CAFileError, tls_context

__all__ = [
    "Client",
    "ClientConfig",
    "DownloadResult",
    "Entry",
    "HeadraceClientError",
    "HeadraceConnectionError",
    "UploadResult",
    "default_config_path",
    "normalize_remote",
]

#: Bytes read from disk or the network at a time; what a transfer holds in memory.
CHUNK = 1024 * 1024
#: Children fetched per listing request.
PAGE_SIZE = 1000
DEFAULT_DOOR = "http://127.0.0.1:2880"
DEFAULT_API = "http://127.0.0.1:3880"
NAMESPACE = "/api/v1/namespace"

Progress = Callable[[int], None]
"""Called with the number of bytes just transferred (a delta, as `rich.progress.Progress.advance` takes)."""


class HeadraceClientError(Exception):
    """A request failed. `status` is the HTTP status (0 when no server answer is involved), `detail` the
    server's sentence (dCache's `{"status","title","detail"}`), `path` the remote path concerned."""

    def __init__(self, status: int, detail: str, *, title: str = "", path: str | None = None) -> None:
        self.status = status
        self.detail = detail
        self.title = title
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.detail}" if self.path else self.detail
        return f"{text} ({self.status})" if self.status else text


class HeadraceConnectionError(HeadraceClientError):
    """The server could not be reached (refused, timed out, connection dropped)."""

    def __init__(self, detail: str, *, url: str) -> None:
        super().__init__(0, detail)
        self.url = url


def default_config_path() -> Path:
    """Where `headrace up` writes the CLI's settings: $HEADRACE_CONFIG, else ~/.config/headrace/config.json."""
    env = os.environ.get("HEADRACE_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "headrace" / "config.json"


def normalize_remote(path: str) -> str:
    """A remote path in canonical form: absolute, no empty, '.' or '..' segments, no trailing slash.

    Relative paths are taken from the root ('data/x' is '/data/x'); '..' is resolved lexically, as a shell
    would, since the server refuses it rather than resolve it."""
    if "\x00" in path:
        raise HeadraceClientError(0, "Invalid path: NUL character", path=path.replace("\x00", "\\0"))
    norm = posixpath.normpath("/" + path)
    # normpath keeps a leading '//' (POSIX allows it a meaning); the namespace does not.
    return "/" + norm.lstrip("/")


def _one_line(text: str) -> str:
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").strip()


def _parent(path: str) -> str:
    return posixpath.dirname(path) or "/"


@dataclass(frozen=True)
class ClientConfig:
    """Where the servers are and who we are: an API key (Basic) or a macaroon (Bearer)."""

    door: str = DEFAULT_DOOR
    api: str = DEFAULT_API
    username: str | None = None
    key: str | None = None
    token: str | None = None
    source: Path | None = None
    #: A CA bundle to trust besides the system's (HEADRACE_CA_FILE, the config's "ca_file").
    ca_file: str | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> ClientConfig:
        """Read the CLI config JSON (missing file: defaults), then apply the HEADRACE_* environment."""
        file = Path(path) if path is not None else default_config_path()
        data: dict[str, Any] = {}
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise HeadraceClientError(0, f"Cannot read config {file}: {exc.strerror or exc}") from exc
        if text.strip():
            try:
                loaded = json.loads(text)
            except ValueError as exc:
                raise HeadraceClientError(0, f"Config {file} is not valid JSON: {exc}") from exc
            if not isinstance(loaded, dict):
                raise HeadraceClientError(0, f"Config {file} must hold a JSON object")
            data = loaded

        def pick(env: str, key: str, default: str | None) -> str | None:
            value = os.environ.get(env) or data.get(key) or default
            if value is not None and not isinstance(value, str):
                raise HeadraceClientError(0, f"Config {file}: {key!r} must be a string")
            return value

        return cls(
            door=(pick("HEADRACE_DOOR_URL", "door", DEFAULT_DOOR) or DEFAULT_DOOR).rstrip("/"),
            api=(pick("HEADRACE_API_URL", "api", DEFAULT_API) or DEFAULT_API).rstrip("/"),
            username=pick("HEADRACE_USER", "username", None),
            key=pick("HEADRACE_KEY", "key", None),
            token=pick("HEADRACE_TOKEN", "token", None),
            source=file,
            ca_file=pick("HEADRACE_CA_FILE", "ca_file", None),
        )


@dataclass(frozen=True)
class Entry:
    """A file or directory as the namespace API describes it; `raw` is the server's JSON object."""

    path: str
    name: str
    type: str  # DIR | REGULAR | LINK
    size: int
    mtime: int  # milliseconds since the epoch
    creation_time: int
    pnfsid: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    locality: str | None = None
    mime_type: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.type == "DIR"

    @property
    def adler32(self) -> str | None:
        return self.checksums.get("ADLER32")

    @classmethod
    def from_json(cls, path: str, data: dict[str, Any]) -> Entry:
        sums = {
            str(c.get("type", "")).upper(): str(c.get("value", ""))
            for c in data.get("checksums") or []
            if isinstance(c, dict)
        }

        def opt_int(key: str) -> int | None:
            value = data.get(key)
            return int(value) if isinstance(value, int | float) else None

        return cls(
            path=path,
            name=str(data.get("fileName") or posixpath.basename(path) or "/"),
            type=str(data.get("fileType", "")),
            size=int(data.get("size") or 0),
            mtime=int(data.get("mtime") or 0),
            creation_time=int(data.get("creationTime") or 0),
            pnfsid=str(data.get("pnfsId", "")),
            mode=opt_int("mode"),
            uid=opt_int("uid"),
            gid=opt_int("gid"),
            locality=data.get("fileLocality"),
            mime_type=data.get("fileMimeType"),
            checksums=sums,
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        """The server's object with the entry's full path added, for `--json` output."""
        return {"path": self.path, **{k: v for k, v in self.raw.items() if k != "children"}}


@dataclass(frozen=True)
class UploadResult:
    remote_path: str
    size: int
    adler32: str
    created: bool


@dataclass(frozen=True)
class DownloadResult:
    local_path: Path
    size: int
    adler32: str
    #: The server's `Digest` matched; False only when the server sent no adler32 digest to compare with.
    verified: bool


def _file_adler32(f: Any) -> tuple[int, str]:
    """Size and ADLER32 (8 lower-case hex digits) of an open binary file, read from where it stands."""
    value, size = 1, 0
    while chunk := f.read(CHUNK):
        value = zlib.adler32(chunk, value)
        size += len(chunk)
    return size, f"{value & 0xFFFFFFFF:08x}"


def _digest_adler32(header: str | None) -> str | None:
    """The adler32 value of an RFC 3230 `Digest:` header, as 8 lower-case hex digits."""
    for item in (header or "").split(","):
        name, sep, value = item.strip().partition("=")
        if sep and name.strip().lower() == "adler32":
            return value.strip().lower().rjust(8, "0")
    return None


class _FileChanged(Exception):
    pass


class Client:
    """A connection to one headrace service (its door and its frontend). Use as a context manager."""

    def __init__(self, config: ClientConfig, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        self.config = config
        auth: httpx.Auth | None = None
        headers = {"User-Agent": "headrace-client", "Accept": "application/json"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        elif config.username and config.key is not None:
            auth = httpx.BasicAuth(config.username, config.key)
        try:
            verify = tls_context(config.ca_file)
        except CAFileError as exc:
            raise HeadraceClientError(0, str(exc)) from exc
        self._http = httpx.Client(
            auth=auth,
            verify=verify,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_config(cls, path: str | Path | None = None, **kwargs: Any) -> Client:
        """A client for the service in the CLI config (see `ClientConfig.load` for the environment)."""
        return cls(ClientConfig.load(path), **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- URLs and requests ---------------------------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        """The authenticated httpx client, for requests this SDK has no method for (e.g. SSE streams)."""
        return self._http

    def request(self, method: str, url: str, *, about: str | None = None, **kw: Any) -> httpx.Response:
        """One request to an absolute URL of this service; HeadraceClientError for any status outside 2xx
        (naming `about`, if given) and for a connection that fails."""
        return self._send(method, url, path=about, **kw)

    def status_error(self, response: httpx.Response, about: str | None = None) -> HeadraceClientError:
        """The error a non-2xx answer stands for, with the server's `detail` sentence (read the body first)."""
        return self._status_error(response, about)

    def connection_error(self, exc: Exception, url: str) -> HeadraceClientError:
        """The error an httpx transport failure stands for, in one line."""
        return self._connection_error(exc, url)

    @staticmethod
    def _quote(path: str) -> str:
        try:
            return quote(path.encode("utf-8"), safe="/")
        except UnicodeEncodeError as exc:
            raise HeadraceClientError(
                0, "Invalid path: not valid UTF-8", path=path.encode(errors="replace").decode()
            ) from exc

    def _api_url(self, path: str) -> str:
        return f"{self.config.api}{NAMESPACE}{self._quote(path)}"

    def _door_url(self, path: str) -> str:
        return f"{self.config.door}{self._quote(path)}"

    def _send(self, method: str, url: str, *, path: str | None, **kw: Any) -> httpx.Response:
        """One request; raises HeadraceClientError for any status outside 2xx, naming `path`."""
        try:
            response = self._http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise self._connection_error(exc, url) from exc
        if not response.is_success:
            raise self._status_error(response, path)
        return response

    def _connection_error(self, exc: Exception, url: str) -> HeadraceClientError:
        base = httpx.URL(url)
        server = f"{base.scheme}://{base.host}:{base.port}" if base.port else f"{base.scheme}://{base.host}"
        if isinstance(exc, httpx.ConnectError):
            reason = str(exc).split("] ")[-1] or "connection failed"
            hint = " — start one with `headrace up`" if "refused" in reason.lower() else ""
            if "certificate" in reason.lower():
                hint = " — trust its CA with --ca-file FILE or HEADRACE_CA_FILE"
            if self.config.source is not None and not self.config.source.exists():
                hint += f" (no CLI config at {self.config.source}; `headrace up` writes it)"
            return HeadraceConnectionError(f"the server at {server} is not reachable ({reason}){hint}", url=server)
        if isinstance(exc, httpx.TimeoutException):
            return HeadraceConnectionError(f"the server at {server} did not answer in time", url=server)
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return HeadraceConnectionError(f"the connection to {server} broke: {exc or type(exc).__name__}", url=server)
        return HeadraceConnectionError(f"request to {server} failed: {exc or type(exc).__name__}", url=server)

    def _status_error(self, response: httpx.Response, path: str | None) -> HeadraceClientError:
        status = response.status_code
        title = response.reason_phrase or ""
        detail = ""
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            detail = str(body.get("detail") or body.get("error") or body.get("title") or "")
            title = str(body.get("title") or title)
        elif response.text.strip():
            detail = response.text.strip().splitlines()[0][:200]
        detail = detail or title or f"HTTP {status}"
        if status == 401 and not (self.config.token or self.config.key):
            where = self.config.source or default_config_path()
            detail += (
                " (no credentials: set HEADRACE_USER and HEADRACE_KEY or HEADRACE_TOKEN,"
                f" or run `headrace up`, which writes {where})"
            )
        return HeadraceClientError(status, _one_line(detail), title=title, path=path)

    # -- namespace -------------------------------------------------------------------------------------------

    def _get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        response = self._send("GET", self._api_url(path), path=path, params=params)
        try:
            data = response.json()
        except ValueError as exc:
            raise HeadraceClientError(
                response.status_code, f"Malformed answer from the server: {exc}", path=path
            ) from exc
        if not isinstance(data, dict):
            raise HeadraceClientError(response.status_code, "Malformed answer from the server", path=path)
        return data

    @staticmethod
    def _flags(**flags: bool) -> dict[str, str]:
        return {k: "true" for k, v in flags.items() if v}

    def stat(
        self, path: str, *, checksum: bool = True, locality: bool = True, qos: bool = False, xattr: bool = False
    ) -> Entry:
        """The entry at `path` (404 as HeadraceClientError when there is none)."""
        path = normalize_remote(path)
        data = self._get_json(path, self._flags(checksum=checksum, locality=locality, qos=qos, xattr=xattr))
        return Entry.from_json(path, data)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path, checksum=False, locality=False)
        except HeadraceClientError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def listing(
        self, path: str, *, checksum: bool = True, locality: bool = True, page_size: int = PAGE_SIZE
    ) -> tuple[Entry, Iterator[Entry]]:
        """The entry at `path` and an iterator over its children (none for a file), in name order.

        This needs only the LIST right (what a `DOWNLOAD,LIST` macaroon gives), not READ_METADATA. The
        first page is fetched now, so errors surface here; later pages of `page_size` children are fetched
        as the iterator is consumed."""
        path = normalize_remote(path)
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        params = self._flags(children=True, checksum=checksum, locality=locality)

        def page(offset: int) -> tuple[dict[str, Any], list[Any]]:
            data = self._get_json(path, {**params, "limit": str(page_size), "offset": str(offset)})
            children = data.pop("children", None)
            return data, children if isinstance(children, list) else []

        head, first = page(0)

        def entries(children: list[Any]) -> Iterator[Entry]:
            offset = 0
            while True:
                for child in children:
                    if isinstance(child, dict):
                        yield Entry.from_json(posixpath.join(path, str(child.get("fileName", ""))), child)
                if len(children) < page_size:
                    return
                offset += len(children)
                children = page(offset)[1]

        return Entry.from_json(path, head), entries(first) if head.get("fileType") == "DIR" else iter(())

    def listdir(
        self, path: str, *, checksum: bool = True, locality: bool = True, page_size: int = PAGE_SIZE
    ) -> Iterator[Entry]:
        """The children of a directory, in name order, fetched `page_size` at a time as they are consumed
        (so 100,000 entries never sit in memory at once). Raises 409 for a file."""
        head, children = self.listing(path, checksum=checksum, locality=locality, page_size=page_size)
        if not head.is_dir:
            raise HeadraceClientError(409, f"Not a directory: {head.path}", title="Conflict", path=head.path)
        return children

    def probe(self, path: str) -> Entry | None:
        """The entry at `path`, by whichever of stat (READ_METADATA) or listing (LIST) the credentials
        allow; None when there is nothing there or the credentials may not look."""
        try:
            return self.stat(path, checksum=False, locality=False)
        except HeadraceClientError as exc:
            if exc.status == 404:
                return None
            if exc.status != 403:
                raise
        try:
            return self.listing(path, checksum=False, locality=False, page_size=1)[0]
        except HeadraceClientError as exc:
            if exc.status in (403, 404):
                return None
            raise

    def tree(self, path: str, *, checksum: bool = True) -> Iterator[Entry]:
        """Every entry below the directory `path`, each directory before its contents. Listings are paged
        and only the paths of directories still to visit are kept, so a tree of any size streams past."""
        stack = [normalize_remote(path)]
        while stack:
            subdirs: list[str] = []
            for entry in self.listdir(stack.pop(), checksum=checksum):
                if entry.is_dir:
                    subdirs.append(entry.path)
                yield entry
            stack.extend(reversed(subdirs))

    def _post(self, path: str, body: dict[str, Any], *, about: str | None = None) -> None:
        self._send("POST", self._api_url(path), path=about or path, json=body)

    def mkdir(self, path: str, *, parents: bool = False) -> None:
        """Create a directory; with `parents`, also any missing ancestors, and no error if it exists."""
        path = normalize_remote(path)
        if path == "/":
            if parents:
                return
            raise HeadraceClientError(412, "File exists: /", title="Precondition Failed", path="/")
        if parents:
            self._mkdirs(path)
            return
        # The POST goes to the parent, but an error is about the directory the caller asked for.
        self._post(_parent(path), {"action": "mkdir", "name": posixpath.basename(path)}, about=path)

    def _mkdirs(self, path: str) -> None:
        # Try to create first and go up only when the parent is missing: unlike a stat-first walk from the
        # root, this works for a macaroon confined to a path below existing directories.
        try:
            self.mkdir(path)
        except HeadraceClientError as exc:
            if exc.status == 412:
                self._check_dir(path, exc)
            elif exc.status == 409 and _parent(path) != "/":
                self._mkdirs(_parent(path))
                try:
                    self.mkdir(path)
                except HeadraceClientError as again:
                    if again.status != 412:  # made meanwhile by someone else: fine if it is a directory
                        raise
                    self._check_dir(path, again)
            else:
                raise

    def _check_dir(self, path: str, cause: HeadraceClientError) -> None:
        """After "File exists": fine if a directory (or if the credentials may not tell), else 409."""
        entry = self.probe(path)
        if entry is not None and not entry.is_dir:
            raise HeadraceClientError(409, f"Not a directory: {path}", title="Conflict", path=path) from cause

    def ensure_dir(self, path: str) -> None:
        """mkdir that accepts an existing directory (one request when the parent exists)."""
        try:
            self.mkdir(path)
        except HeadraceClientError as exc:
            if exc.status != 412:
                raise
            self._check_dir(normalize_remote(path), exc)

    def move(self, src: str, dst: str) -> None:
        """Rename `src` to `dst` with rename(2)'s rules: an existing file at `dst` is replaced by a file, an
        existing empty directory by a directory; anything else at `dst` is an error (409)."""
        src, dst = normalize_remote(src), normalize_remote(dst)
        # The frontend's mv replaces whatever is at the destination, a whole tree included; refuse here
        # what rename(2) refuses, so that a typo cannot delete a directory full of data.
        target = self.probe(dst) if src != dst else None
        if target is not None:
            source = self.probe(src)
            if target.is_dir:
                if source is not None and not source.is_dir:
                    raise HeadraceClientError(409, f"Is a directory: {dst}", title="Conflict", path=dst)
                if next(self.listing(dst, checksum=False, locality=False, page_size=1)[1], None) is not None:
                    raise HeadraceClientError(409, f"Directory not empty: {dst}", title="Conflict", path=dst)
            elif source is not None and source.is_dir:
                raise HeadraceClientError(409, f"Not a directory: {dst}", title="Conflict", path=dst)
        self._post(src, {"action": "mv", "destination": dst})

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file or an empty directory; with `recursive`, a whole tree."""
        path = normalize_remote(path)
        params = {"recursive": "true"} if recursive else None
        self._send("DELETE", self._api_url(path), path=path, params=params)

    # -- data ------------------------------------------------------------------------------------------------

    def upload(
        self, local_file: str | os.PathLike[str], remote_path: str, progress: Progress | None = None
    ) -> UploadResult:
        """Stream a local file to `remote_path` (replacing a file there). The ADLER32 of the file is sent as
        `Digest`, so the server stores the upload only if the bytes it received match it."""
        remote_path = normalize_remote(remote_path)
        url = self._door_url(remote_path)
        with open(local_file, "rb") as f:
            # The Digest header precedes the body, so the checksum takes a first pass over the file; the
            # second pass, which sends, checks it again so that a file changed in between is caught.
            size, adler = _file_adler32(f)
            f.seek(0)

            def body() -> Iterator[bytes]:
                value, left = 1, size
                while left > 0:
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:
                        raise _FileChanged(f"{os.fspath(local_file)} shrank while it was being uploaded")
                    value = zlib.adler32(chunk, value)
                    left -= len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(len(chunk))
                if f"{value & 0xFFFFFFFF:08x}" != adler:
                    # The server will refuse it (Digest mismatch); say why.
                    raise _FileChanged(f"{os.fspath(local_file)} changed while it was being uploaded")

            headers = {
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
                "Digest": f"adler32={adler}",
                "Want-Digest": "adler32",
            }
            try:
                response = self._send(
                    "PUT", url, path=remote_path, content=body(), headers=headers,
                    timeout=httpx.Timeout(600.0, connect=10.0),
                )  # fmt: skip
            except _FileChanged as exc:
                raise HeadraceClientError(0, str(exc)) from exc
        stored = _digest_adler32(response.headers.get("digest"))
        if stored is not None and stored != adler:
            raise HeadraceClientError(
                0, f"Server stored adler32 {stored}, but the local file has {adler}", path=remote_path
            )
        return UploadResult(remote_path, size, adler, created=response.status_code == 201)

    def read_bytes(self, remote_path: str, *, source: str | None = None) -> bytes:
        """The whole content of a (small) file, in memory. With `source`, the file of that event source (the
        path its events name), read through the frontend with the source's credentials (a reader's right)."""
        remote_path = normalize_remote(remote_path)
        if source is not None:
            url = f"{self.config.api}/api/v1/sources/{quote(source, safe='')}/files{self._quote(remote_path)}"
            return self._send("GET", url, path=remote_path).content
        return self._send("GET", self._door_url(remote_path), path=remote_path, follow_redirects=True).content

    def download(
        self,
        remote_path: str,
        local_file: str | os.PathLike[str],
        progress: Progress | None = None,
        *,
        on_start: Progress | None = None,
    ) -> DownloadResult:
        """Stream `remote_path` into `local_file`. Bytes land in a temporary file beside it that is renamed
        into place only when complete and its ADLER32 matches the server's `Digest`. `on_start` is called
        with the size the server announces, before the first byte."""
        remote_path = normalize_remote(remote_path)
        target = Path(local_file)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        url = self._door_url(remote_path)
        size, value = 0, 1
        try:
            # A door may redirect a read to the pool that holds the file (HEADRACE_DOOR_REDIRECT).
            headers = {"Want-Digest": "adler32", "Accept": "*/*"}
            with self._http.stream("GET", url, headers=headers, follow_redirects=True) as response:
                if not response.is_success:
                    response.read()
                    raise self._status_error(response, remote_path)
                if "etag" not in response.headers and response.headers.get("content-type", "").startswith("text/html"):
                    # The door answers GET on a directory with an HTML listing (files always have an ETag).
                    raise HeadraceClientError(409, f"Is a directory: {remote_path}", title="Conflict", path=remote_path)
                expected = _digest_adler32(response.headers.get("digest"))
                length = response.headers.get("content-length")
                if on_start is not None and length is not None and length.isdigit():
                    on_start(int(length))
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror, os.fspath(target)) from exc
                with os.fdopen(fd, "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        value = zlib.adler32(chunk, value)
                        size += len(chunk)
                        if progress is not None:
                            progress(len(chunk))
            adler = f"{value & 0xFFFFFFFF:08x}"
            if expected is not None and expected != adler:
                raise HeadraceClientError(
                    0, f"Checksum mismatch: the server says adler32 {expected}, received {adler}", path=remote_path
                )
            os.replace(tmp, target)
        except httpx.HTTPError as exc:
            raise self._connection_error(exc, url) from exc
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()
        return DownloadResult(target, size, adler, verified=expected is not None)

    # -- tokens ----------------------------------------------------------------------------------------------

    def create_token(
        self,
        path: str = "/",
        activities: Iterable[str] | None = ("DOWNLOAD", "LIST"),
        validity: str = "PT1H",
        caveats: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Ask the door for a macaroon confined to `path`, limited to `activities` (None: all of the user's
        rights), valid for `validity` (ISO-8601 duration) and bound by extra `caveats` ("ip:<cidr>",
        "before:<time>", "root:<path>"). Returns the door's answer: {"macaroon", "uri": {...}}."""
        path = normalize_remote(path)
        wanted = list(caveats)
        if activities is not None:
            acts = [a.strip().upper() for a in activities if a.strip()]
            wanted.insert(0, f"activity:{','.join(acts)}")
        response = self._send(
            "POST",
            self._door_url(path),
            path=path,
            content=json.dumps({"caveats": wanted, "validity": validity}).encode(),
            headers={"Content-Type": "application/macaroon-request"},
        )
        try:
            data = response.json()
        except ValueError as exc:
            raise HeadraceClientError(
                response.status_code, "Malformed macaroon answer from the door", path=path
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("macaroon"), str):
            raise HeadraceClientError(response.status_code, "Malformed macaroon answer from the door", path=path)
        return data
