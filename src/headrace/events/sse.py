"""Server-sent events framing as dCache's clients accept it: only `event`, `id` and `data` lines.

Real dCache clients reject any other field (no `retry:`, no comment lines), so the one exception, a
keep-alive comment for proxies, is sent only to clients that ask for it.
"""

from __future__ import annotations

import json
from typing import Any

KEEPALIVE = b":\n\n"


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def frame(event: str, data: str, event_id: int | None = None) -> bytes:
    """One event: `data` must already be one line of JSON."""
    if event_id is None:
        return f"event: {event}\ndata: {data}\n\n".encode()
    return f"event: {event}\nid: {event_id}\ndata: {data}\n\n".encode()


def system(kind: str, **fields: Any) -> bytes:
    """A SYSTEM event: no id, never replayed."""
    return frame("SYSTEM", compact({"type": kind, **fields}))
