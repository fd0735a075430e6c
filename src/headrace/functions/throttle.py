"""OpenWhisk's per-namespace limits on what the API lets in: invocations and trigger fires per minute (a
sliding window), and invocations in flight. Activations made by the storage feed are not throttled: they
wait in the queue instead."""

from __future__ import annotations

import time
from collections import deque


class Throttle:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute  # 0: no limit
        self._seen: dict[str, deque[float]] = {}

    def admit(self, namespace: str) -> str | None:
        """None if one more is allowed now (and count it); otherwise OpenWhisk's sentence for the 429."""
        if self.per_minute <= 0:
            return None
        now = time.monotonic()
        seen = self._seen.setdefault(namespace, deque())
        while seen and now - seen[0] >= 60.0:
            seen.popleft()
        if len(seen) >= self.per_minute:
            return f"Too many requests in the last minute (count: {len(seen) + 1}, allowed: {self.per_minute})."
        seen.append(now)
        return None


def concurrency_refusal(in_flight: int, allowed: int) -> str | None:
    if allowed > 0 and in_flight >= allowed:
        return f"Too many concurrent requests in flight (count: {in_flight + 1}, allowed: {allowed})."
    return None
