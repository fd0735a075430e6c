"""Typed views of the functions layer's rows, as storage has `Inode`: read once from the row, with the
model's defaults for what the row does not name (functions/model.py), so that the engine's arithmetic on
them is checked by mypy instead of spread over `row["scaling"].get(...)` calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from headrace.functions.model import SCALING


def _default(name: str) -> float:
    return SCALING[name][2]


@dataclass(frozen=True)
class Scaling:
    """An action's scaling: its workers (minScale..maxScale, down to zero after idleSeconds without work),
    its retries, the oldest event it still runs for (maxEventAge, seconds), and `ordered` (one path's
    activations one at a time, in event order)."""

    min_scale: int = int(_default("minScale"))
    max_scale: int = int(_default("maxScale"))
    retries: int = int(_default("retries"))
    max_event_age: float = float(_default("maxEventAge"))
    idle_seconds: float = float(_default("idleSeconds"))
    ordered: bool = False

    @classmethod
    def of(cls, action: Mapping[str, Any] | None) -> Scaling:
        """The scaling of an action row (the defaults for None or a row without one)."""
        raw: Mapping[str, Any] = (action.get("scaling") if action is not None else None) or {}
        return cls(
            min_scale=int(raw.get("minScale", cls.min_scale)),
            max_scale=int(raw.get("maxScale", cls.max_scale)),
            retries=int(raw.get("retries", cls.retries)),
            max_event_age=float(raw.get("maxEventAge", cls.max_event_age)),
            idle_seconds=float(raw.get("idleSeconds", cls.idle_seconds)),
            ordered=bool(raw.get("ordered", False)),
        )
