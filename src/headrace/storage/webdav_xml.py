"""WebDAV (RFC 4918) XML bodies: parsing PROPFIND/PROPPATCH requests and rendering 207 Multi-Status.

Pure encode/decode, no I/O. Property names are Clark notation, `{namespace}local`. Parsing uses defusedxml
(no entity expansion, no external entities): a hostile body is a 400, not a resource exhaustion.
"""

from __future__ import annotations

import functools
import mimetypes
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Protocol
from urllib.parse import quote
from xml.sax.saxutils import escape

from defusedxml import ElementTree as SafeET

from headrace.errors import BadRequest

DAV = "DAV:"
DCACHE = "http://www.dcache.org/2013/webdav"

LIVE_ALLPROP = [
    f"{{{DAV}}}creationdate",
    f"{{{DAV}}}displayname",
    f"{{{DAV}}}getcontentlength",
    f"{{{DAV}}}getcontenttype",
    f"{{{DAV}}}getetag",
    f"{{{DAV}}}getlastmodified",
    f"{{{DAV}}}resourcetype",
]
LIVE_EXTRA = [
    f"{{{DAV}}}supportedlock",
    f"{{{DAV}}}lockdiscovery",
    f"{{{DAV}}}quota-used-bytes",
    f"{{{DAV}}}quota-available-bytes",
    f"{{{DCACHE}}}Checksums",
]
PROTECTED = set(LIVE_ALLPROP) | set(LIVE_EXTRA)
SUPPORTED_LOCK = "".join(
    f"<D:lockentry><D:lockscope><D:{scope}/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>"
    for scope in ("exclusive", "shared")
)


@dataclass
class Propfind:
    kind: str  # allprop | propname | prop
    props: list[str] = field(default_factory=list)  # for "prop"; for allprop: <include> extras


@dataclass
class PropOp:
    action: str  # set | remove
    name: str
    value: str  # inner XML for set


def parse_xml(body: bytes, what: str) -> ET.Element:
    """Parse a WebDAV request body; malformed or hostile XML (entities, DTDs) is a 400 naming `what`."""
    try:
        root = SafeET.fromstring(body)
    except ET.ParseError as exc:
        raise BadRequest(f"Malformed XML in {what} body: {exc}") from exc
    except Exception as exc:  # defusedxml's refusals (entities, DTDs)
        raise BadRequest(f"Refused XML in {what} body: {type(exc).__name__}") from exc
    return root


def parse_propfind(body: bytes) -> Propfind:
    """An empty body means allprop (RFC 4918 9.1)."""
    if not body.strip():
        return Propfind("allprop")
    root = parse_xml(body, "PROPFIND")
    if root.tag != f"{{{DAV}}}propfind":
        raise BadRequest(f"PROPFIND body must be a DAV:propfind element, not {root.tag}")
    children = list(root)
    if not children:
        raise BadRequest("PROPFIND body is an empty DAV:propfind")
    first = children[0]
    if first.tag == f"{{{DAV}}}allprop":
        extra = [_clark(e.tag) for inc in root.findall(f"{{{DAV}}}include") for e in inc]
        return Propfind("allprop", extra)
    if first.tag == f"{{{DAV}}}propname":
        return Propfind("propname")
    if first.tag == f"{{{DAV}}}prop":
        return Propfind("prop", [_clark(e.tag) for e in first])
    raise BadRequest(f"PROPFIND body has an unknown element {first.tag}")


def parse_proppatch(body: bytes) -> list[PropOp]:
    root = parse_xml(body, "PROPPATCH")
    if root.tag != f"{{{DAV}}}propertyupdate":
        raise BadRequest(f"PROPPATCH body must be a DAV:propertyupdate element, not {root.tag}")
    ops: list[PropOp] = []
    for action in root:
        if action.tag not in (f"{{{DAV}}}set", f"{{{DAV}}}remove"):
            raise BadRequest(f"PROPPATCH body has an unknown element {action.tag}")
        kind = "set" if action.tag.endswith("set") else "remove"
        prop = action.find(f"{{{DAV}}}prop")
        if prop is None:
            raise BadRequest(f"PROPPATCH {kind} without DAV:prop")
        for p in prop:
            ops.append(PropOp(kind, _clark(p.tag), _inner_xml(p) if kind == "set" else ""))
    if not ops:
        raise BadRequest("PROPPATCH body changes nothing")
    return ops


def _clark(tag: str) -> str:
    """Clark notation with an explicit empty namespace, `{}local`, for an element in no namespace: dead
    properties are told apart from plain extended attributes by their leading brace."""
    return tag if tag.startswith("{") else "{}" + tag


def _inner_xml(el: ET.Element) -> str:
    parts = [escape(el.text or "")]
    for child in el:
        parts.append(ET.tostring(child, encoding="unicode"))
    return "".join(parts)


# -- rendering -------------------------------------------------------------------------------------------

MULTISTATUS_OPEN = f'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:" xmlns:d="{DCACHE}">'
MULTISTATUS_CLOSE = "</D:multistatus>\n"
STATUS_TEXT = {200: "OK", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 424: "Failed Dependency"}


def href_for(path: str, is_dir: bool) -> str:
    h = quote(path, safe="/")
    return h + "/" if is_dir and not h.endswith("/") else h


def http_date(ms: int) -> str:
    return _http_date(ms // 1000)


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def iso_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def content_type(name: str) -> str:
    """The media type for a file name, as mimetypes guesses it. It looks at the last suffixes only (an
    encoding such as .gz, then the type), so the guess is cached by the last two: names are many, suffixes few."""
    if ":" in name or "." not in name:  # a "data:" name is parsed as a URL by mimetypes; keep its answer
        return _guess(name)
    parts = name.rsplit(".", 2)
    return _content_type("." + ".".join(parts[1:]))


@functools.lru_cache(maxsize=1024)
def _content_type(suffixes: str) -> str:
    return _guess(f"x{suffixes}")


def _guess(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _element(name: str, inner: str | None) -> str:
    ns, _, local = name[1:].partition("}") if name.startswith("{") else ("", "", name)
    if ns == DAV:
        tag, decl = f"D:{local}", ""
    elif ns == DCACHE:
        tag, decl = f"d:{local}", ""
    elif ns:
        tag, decl = f"X:{local}", f' xmlns:X="{escape(ns, {chr(34): "&quot;"})}"'
    else:
        tag, decl = local, ' xmlns=""'
    return f"<{tag}{decl}/>" if inner is None or inner == "" else f"<{tag}{decl}>{inner}</{tag}>"


class Resource(Protocol):
    """What a PROPFIND answer tells about a file or directory (the namespace's Inode has it); a protocol, so
    that rendering XML needs nothing of the database layer."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def ctime(self) -> int: ...
    @property
    def mtime(self) -> int: ...
    @property
    def etag(self) -> str: ...
    @property
    def is_dir(self) -> bool: ...
    @property
    def checksums(self) -> Mapping[str, str]: ...


def live_value(
    node: Resource, name: str, *, quota: tuple[int, int] | None = None, lockdiscovery: str = ""
) -> str | None:
    """The XML content of a live property, or None when the node does not have it; `lockdiscovery` is the
    rendered DAV:activelock elements of the locks on the node."""
    local = name.rsplit("}", 1)[-1]
    if name.startswith(f"{{{DAV}}}"):
        if local == "creationdate":
            return iso_date(node.ctime)
        if local == "displayname":
            return escape(node.name or "/")
        if local == "getcontentlength":
            return None if node.is_dir else str(node.size)
        if local == "getcontenttype":
            return None if node.is_dir else content_type(node.name)
        if local == "getetag":
            return escape(node.etag)
        if local == "getlastmodified":
            return http_date(node.mtime)
        if local == "resourcetype":
            return "<D:collection/>" if node.is_dir else ""
        if local == "supportedlock":
            return SUPPORTED_LOCK
        if local == "lockdiscovery":
            return lockdiscovery
        # RFC 4331's quota properties, on collections only (as dCache): clients such as gfal2 and davix read
        # a file's quota-used-bytes as its size
        if local == "quota-used-bytes" and quota and node.is_dir:
            return str(quota[0])
        if local == "quota-available-bytes" and quota and node.is_dir:
            return str(quota[1])
        return None
    if name == f"{{{DCACHE}}}Checksums":
        if not node.checksums:
            return None
        return ",".join(f"{t.lower()}={v}" for t, v in sorted(node.checksums.items()))
    return None


def render_response(
    node: Resource,
    href: str,
    request: Propfind,
    dead: dict[str, str] | None = None,
    *,
    quota: tuple[int, int] | None = None,
    lockdiscovery: str = "",
) -> str:
    """One <D:response> for `node`, answering `request`; `dead` holds its dead properties (Clark names)."""
    dead = dead or {}
    found: list[str] = []
    missing: list[str] = []
    if request.kind == "propname":
        names = [n for n in LIVE_ALLPROP if live_value(node, n) is not None] + sorted(dead)
        found = [_element(n, None) for n in names]
    else:
        names = LIVE_ALLPROP + request.props + sorted(dead) if request.kind == "allprop" else request.props
        seen: set[str] = set()
        for n in names:
            if n in seen:
                continue
            seen.add(n)
            if n in dead:
                found.append(_element(n, dead[n]))
                continue
            value = live_value(node, n, quota=quota, lockdiscovery=lockdiscovery)
            if value is None:
                if request.kind == "prop":
                    missing.append(_element(n, None))
            else:
                found.append(_element(n, value))
    out = [f"<D:response><D:href>{escape(href)}</D:href>"]
    if found or not missing:
        out.append(f"<D:propstat><D:prop>{''.join(found)}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>")
    if missing:
        out.append(
            f"<D:propstat><D:prop>{''.join(missing)}</D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>"
        )
    out.append("</D:response>")
    return "".join(out)


def render_proppatch(href: str, results: Iterable[tuple[str, int]]) -> str:
    by_status: dict[int, list[str]] = {}
    for name, status in results:
        by_status.setdefault(status, []).append(_element(name, None))
    body = [MULTISTATUS_OPEN, f"<D:response><D:href>{escape(href)}</D:href>"]
    for status, elems in sorted(by_status.items()):
        body.append(
            f"<D:propstat><D:prop>{''.join(elems)}</D:prop>"
            f"<D:status>HTTP/1.1 {status} {STATUS_TEXT.get(status, '')}</D:status></D:propstat>"
        )
    body.append("</D:response>")
    body.append(MULTISTATUS_CLOSE)
    return "".join(body)


def render_error(condition: str) -> str:
    """An RFC 4918 <D:error> body with one precondition element (e.g. propfind-finite-depth)."""
    return f'<?xml version="1.0" encoding="utf-8"?>\n<D:error xmlns:D="DAV:"><D:{condition}/></D:error>\n'
