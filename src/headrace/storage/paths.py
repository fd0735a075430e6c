"""Validating and normalising namespace paths as clients send them (URL paths, Destination headers).

A path is absolute, '/'-separated, UTF-8; each name is 1..255 bytes with no NUL, '/', or backslash, and
'.' and '..' are refused rather than resolved, so that no spelling of a path can escape its root.

The bounds are enforced here, for every path any door or API is given: names of at most 255 bytes (400, as
dCache's Chimera and POSIX file systems), paths of at most 4096 bytes and 256 names deep (414). The depth
bound keeps a lookup's work (Namespace._walk) proportional to a small constant, whatever a client sends.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes, urlsplit

from headrace.errors import BadRequest, URITooLong

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 256


def check_name(name: str) -> str:
    """Return `name` if it is a valid single path component, else raise BadRequest."""
    if name in ("", ".", ".."):
        raise BadRequest(f"Invalid name: {name!r}")
    if "\x00" in name:
        raise BadRequest("Invalid path: NUL character")
    if "/" in name:
        raise BadRequest(f"Invalid name (contains '/'): {name!r}")
    if "\\" in name:
        raise BadRequest("Invalid path: backslash is not allowed")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadRequest(f"Name too long: over {MAX_NAME_BYTES} bytes")
    return name


def normalize(path: str) -> str:
    """Canonical form of an absolute path: no empty segments, no trailing slash ('/' for the root)."""
    if not path.startswith("/"):
        raise BadRequest(f"Path must be absolute: {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise URITooLong(f"Path too long: over {MAX_PATH_BYTES} bytes")
    parts = [p for p in path.split("/") if p != ""]
    if len(parts) > MAX_DEPTH:
        raise URITooLong(f"Path too deep: over {MAX_DEPTH} names")
    for part in parts:
        check_name(part)
    return "/" + "/".join(parts)


def from_url_path(raw: bytes | str) -> str:
    """Decode a percent-encoded URL path strictly (invalid UTF-8 is an error, not U+FFFD) and normalise it."""
    raw_bytes = raw.encode("latin-1") if isinstance(raw, str) else raw
    if b"?" in raw_bytes:
        raw_bytes = raw_bytes.split(b"?", 1)[0]
    decoded = unquote_to_bytes(raw_bytes)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("Invalid path: not valid UTF-8") from exc
    return normalize(text or "/")


def from_destination(header: str, *, prefix: str = "") -> str:
    """The namespace path named by a WebDAV Destination header (absolute URL or absolute path)."""
    try:
        parts = urlsplit(header)
    except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 host
        raise BadRequest(f"Invalid URL {header[:200]!r}: {exc}") from exc
    raw = parts.path or "/"
    if prefix and raw.startswith(prefix):
        raw = raw[len(prefix) :] or "/"
    try:
        return from_url_path(raw.encode("latin-1"))
    except UnicodeEncodeError as exc:
        # A client sent raw non-ASCII in the header; take it as the characters it shows.
        raise BadRequest("Invalid Destination: non-ASCII characters must be percent-encoded") from exc


def parent_and_name(path: str) -> tuple[str, str]:
    """Split a normalised path into its parent and last name; the root has no name."""
    if path == "/":
        raise BadRequest("The root has no parent")
    head, _, name = path.rpartition("/")
    return (head or "/"), name


def join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def is_within(path: str, root: str) -> bool:
    """True when `path` is `root` or below it."""
    return root == "/" or path == root or path.startswith(root + "/")
