"""Errors that core logic raises; each transport maps them to its own wire shape (HTTP status + JSON)."""

from __future__ import annotations


class HeadraceError(Exception):
    """Base: `status` is the HTTP status a client should see, `detail` the sentence it reads."""

    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        #: Response headers that belong to the answer (Retry-After on a 429).
        self.headers = dict(headers or {})


class BadRequest(HeadraceError):
    status = 400
    title = "Bad Request"


class Unauthorized(HeadraceError):
    status = 401
    title = "Unauthorized"


class Forbidden(HeadraceError):
    status = 403
    title = "Forbidden"


class NotFound(HeadraceError):
    status = 404
    title = "Not Found"


class MethodNotAllowed(HeadraceError):
    status = 405
    title = "Method Not Allowed"


class Conflict(HeadraceError):
    """The request conflicts with the namespace's state (missing parent, not a directory...)."""

    status = 409
    title = "Conflict"


class RequestTimeout(HeadraceError):
    """The client did not send its request body (or headers) in time."""

    status = 408
    title = "Request Timeout"


class PreconditionFailed(HeadraceError):
    status = 412
    title = "Precondition Failed"


class PayloadTooLarge(HeadraceError):
    status = 413
    title = "Payload Too Large"


class URITooLong(HeadraceError):
    """A path over the namespace's length or depth bound (paths.MAX_PATH_BYTES, paths.MAX_DEPTH)."""

    status = 414
    title = "URI Too Long"


class UnsupportedMediaType(HeadraceError):
    status = 415
    title = "Unsupported Media Type"


class RangeNotSatisfiable(HeadraceError):
    status = 416
    title = "Range Not Satisfiable"


class TooManyRequests(HeadraceError):
    status = 429
    title = "Too Many Requests"


class HeaderTooLarge(HeadraceError):
    status = 431
    title = "Request Header Fields Too Large"


class BadGateway(HeadraceError):
    """A request that would have to act on another server (RFC 4918 9.8.5: COPY/MOVE to another host)."""

    status = 502
    title = "Bad Gateway"


class InsufficientStorage(HeadraceError):
    status = 507
    title = "Insufficient Storage"


class Exists(HeadraceError):
    """The target already exists (MKCOL on an existing name, COPY/MOVE with Overwrite: F)."""

    status = 412
    title = "Precondition Failed"


class NotEmpty(Conflict):
    pass


class IncompleteUpload(BadRequest):
    """The body ended before Content-Length, or the client went away."""
