"""An answer in OpenWhisk's error shape, raised anywhere under /api/v1/namespaces and /api/v1/web (the API's
routes turn it into `{"error", "code"}` with its status)."""

from __future__ import annotations

NOT_FOUND = "The requested resource does not exist."
FORBIDDEN = "The supplied authentication is not authorized to access this resource."


class WhiskError(Exception):
    """An answer in OpenWhisk's error shape: `status` and the sentence in `error`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
