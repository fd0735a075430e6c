"""Subscription selectors of the events API, as dCache defines them: validation, inotify flag algebra, and the
JSON Schemas served under /api/v1/events/eventTypes. Pure functions, no I/O.

A selector that breaks a rule raises `SelectorError` with the sentence dCache's clients read after
"Bad selector: ".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# The twelve event flags of a dCache inotify watch, in Linux's bit order.
EVENT_FLAGS: tuple[str, ...] = (
    "IN_ACCESS",
    "IN_MODIFY",
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CLOSE_NOWRITE",
    "IN_OPEN",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_MOVE_SELF",
)
MACROS: dict[str, tuple[str, ...]] = {
    "IN_ALL_EVENTS": EVENT_FLAGS,
    "IN_CLOSE": ("IN_CLOSE_WRITE", "IN_CLOSE_NOWRITE"),
    "IN_MOVE": ("IN_MOVED_FROM", "IN_MOVED_TO"),
}
MODIFIERS = ("IN_ONESHOT", "IN_ONLYDIR", "IN_MASK_ADD")
REFUSED = ("IN_DONT_FOLLOW", "IN_EXCL_UNLINK")
# Flags that appear in event masks but are never asked for.
MANAGEMENT = ("IN_IGNORED", "IN_Q_OVERFLOW", "IN_ISDIR", "IN_UNMOUNT")

_PATH = re.compile(r"^/(.*[^/])?$")
METRONOME_MAX_HZ = 1_000_000.0
FORMATS = ("inotify", "cloudevents")


class SelectorError(ValueError):
    """A selector that cannot be accepted; str() is the detail after "Bad selector: "."""


@dataclass(frozen=True)
class InotifySelector:
    path: str
    flags: frozenset[str]  # expanded event flags
    oneshot: bool = False
    onlydir: bool = False
    mask_add: bool = False
    recursive: bool = False  # headrace's extension: also the events of every directory below `path`
    format: str = "inotify"  # headrace's extension: "cloudevents" sends each event as a CloudEvent


@dataclass(frozen=True)
class MetronomeSelector:
    interval: float  # seconds between ticks
    message: str = "tick"
    count: int | None = None


def _object(raw: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SelectorError("the selector must be a JSON object")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SelectorError(f'Unrecognized field "{unknown[0]}" (known fields: {", ".join(sorted(allowed))})')
    return raw


def parse_flags(raw: Any) -> tuple[frozenset[str], set[str]]:
    """Event flags (macros expanded) and modifiers named in a selector's "flags" list."""
    if not isinstance(raw, list) or not all(isinstance(f, str) for f in raw):
        raise SelectorError('"flags" must be a list of flag names')
    unsupported = [f for f in raw if f in REFUSED]
    if unsupported:
        raise SelectorError(f"Unsupported flags: [{', '.join(unsupported)}]")
    unknown = [f for f in raw if f not in EVENT_FLAGS and f not in MACROS and f not in MODIFIERS]
    if unknown:
        raise SelectorError(f"Unknown flags: [{', '.join(unknown)}]")
    events: set[str] = set()
    modifiers: set[str] = set()
    for f in raw:
        if f in MACROS:
            events.update(MACROS[f])
        elif f in MODIFIERS:
            modifiers.add(f)
        else:
            events.add(f)
    return frozenset(events), modifiers


def inotify_selector(raw: Any) -> InotifySelector:
    sel = _object(raw, {"path", "flags", "recursive", "format"})
    path = sel.get("path")
    if not isinstance(path, str):
        raise SelectorError('"path" is required and must be a string')
    if not _PATH.match(path) or "//" in path:
        raise SelectorError(f'"path" must be an absolute path without a trailing slash: {path!r}')
    flags, modifiers = parse_flags(sel["flags"]) if "flags" in sel else (frozenset(EVENT_FLAGS), set())
    if not flags:
        flags = frozenset(EVENT_FLAGS)  # only modifiers given: Linux's default of everything
    recursive = sel.get("recursive", False)
    if not isinstance(recursive, bool):
        raise SelectorError('"recursive" must be true or false')
    fmt = sel.get("format", "inotify")
    if fmt not in FORMATS:
        raise SelectorError(f'"format" must be one of {", ".join(FORMATS)}')
    return InotifySelector(
        format=fmt,
        path=path,
        flags=flags,
        oneshot="IN_ONESHOT" in modifiers,
        onlydir="IN_ONLYDIR" in modifiers,
        mask_add="IN_MASK_ADD" in modifiers,
        recursive=recursive,
    )


def metronome_selector(raw: Any) -> MetronomeSelector:
    sel = _object(raw, {"frequency", "delay", "message", "count"})
    has_f, has_d = "frequency" in sel, "delay" in sel
    if has_f == has_d:
        raise SelectorError('exactly one of "frequency" and "delay" must be given')
    value = sel["frequency"] if has_f else sel["delay"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SelectorError(f'"{"frequency" if has_f else "delay"}" must be a positive number')
    if has_f and value > METRONOME_MAX_HZ:
        raise SelectorError(f'"frequency" must not exceed {METRONOME_MAX_HZ:g} Hz')
    message = sel.get("message", "tick")
    if not isinstance(message, str):
        raise SelectorError('"message" must be a string')
    count = sel.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise SelectorError('"count" must be a positive integer')
    return MetronomeSelector(interval=1.0 / value if has_f else float(value), message=message, count=count)


DESCRIPTIONS = {
    "inotify": "Notification about changes in the namespace, following the Linux inotify API.",
    "metronome": "A configurable stream of messages, for testing and for keeping connections busy.",
}

_FLAG_LIST = list(EVENT_FLAGS) + list(MACROS) + list(MODIFIERS)

SELECTOR_SCHEMAS: dict[str, dict[str, Any]] = {
    "inotify": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "path": {"type": "string", "pattern": "^/(.*[^/])?$", "description": "The file or directory to watch."},
            "flags": {"type": "array", "items": {"type": "string", "enum": _FLAG_LIST}, "uniqueItems": True},
            "recursive": {
                "type": "boolean",
                "description": "headrace extension: also watch every directory below path (default false).",
            },
            "format": {
                "type": "string",
                "enum": list(FORMATS),
                "description": "headrace extension: 'cloudevents' sends each event as a CloudEvent (structured "
                "JSON, with the inotify mask in the extension attribute 'inotifymask') instead of the inotify "
                "payload (default 'inotify').",
            },
        },
        "required": ["path"],
        "additionalProperties": False,
    },
    "metronome": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "frequency": {"type": "number", "exclusiveMinimum": 0, "maximum": METRONOME_MAX_HZ},
            "delay": {"type": "number", "exclusiveMinimum": 0},
            "message": {"type": "string", "description": "${username} and ${count} are substituted."},
            "count": {"type": "integer", "minimum": 1},
        },
        "oneOf": [{"required": ["frequency"]}, {"required": ["delay"]}],
        "additionalProperties": False,
    },
}

EVENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "inotify": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "The child the event is about (absent for self events)."},
            "cookie": {"type": "string", "description": "Shared by the IN_MOVED_FROM and IN_MOVED_TO of a move."},
            "mask": {
                "type": "array",
                "items": {"type": "string", "enum": list(EVENT_FLAGS) + list(MANAGEMENT)},
                "minItems": 1,
            },
        },
        "required": ["mask"],
        "additionalProperties": False,
    },
    "metronome": {"$schema": "http://json-schema.org/draft-04/schema#", "type": "string"},
}
