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

# dCache allows metronomes up to 1 MHz; ten of those held the shared event loop at 100 % CPU, so headrace's
# default is 100 Hz per subscription, and a message of at most 1 KiB (a channel holds 16383 events for replay,
# so a channel's held metronome messages stay under 16 MiB). The server may set both (events.channels).
METRONOME_MAX_HZ = 100.0
METRONOME_MAX_MESSAGE = 1024  # bytes of UTF-8
METRONOME_MAX_DELAY = 300.0  # seconds, as dCache
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


_PATH = re.compile(r"^/(.*[^/])?$")


def inotify_selector(raw: Any) -> InotifySelector:
    sel = _object(raw, {"path", "flags", "recursive", "format"})
    path = sel.get("path")
    if not isinstance(path, str):
        raise SelectorError('"path" is required and must be a string')
    if not _PATH.match(path):  # dCache's pattern: absolute, no trailing slash
        raise SelectorError(f'"path" must be an absolute path without a trailing slash: {path!r}')
    # empty names ("//", which dCache's pattern lets through and ada sends) read as the namespace API reads them
    path = "/" + "/".join(name for name in path.split("/") if name)
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


def metronome_selector(
    raw: Any, *, max_hz: float = METRONOME_MAX_HZ, max_message: int | None = METRONOME_MAX_MESSAGE
) -> MetronomeSelector:
    """A metronome selector, with its frequency at most `max_hz` (its delay at least 1/`max_hz` and at most
    METRONOME_MAX_DELAY seconds) and its message at most `max_message` bytes (None: any)."""
    sel = _object(raw, {"frequency", "delay", "message", "count"})
    has_f, has_d = "frequency" in sel, "delay" in sel
    if has_f == has_d:
        raise SelectorError('exactly one of "frequency" and "delay" must be given')
    value = sel["frequency"] if has_f else sel["delay"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SelectorError(f'"{"frequency" if has_f else "delay"}" must be a positive number')
    if has_f and value > max_hz:
        raise SelectorError(f'"frequency" is too big (more than {max_hz:g} Hz)')
    if has_d and value * max_hz < 1:
        raise SelectorError(f'"delay" is too small (less than {1 / max_hz:g} s)')
    if has_d and value > METRONOME_MAX_DELAY and math.isfinite(max_hz):
        raise SelectorError(f'"delay" is too big (more than {METRONOME_MAX_DELAY:g} s)')
    message = sel.get("message", "tick")
    if not isinstance(message, str):
        raise SelectorError('"message" must be a string')
    if message == "":
        raise SelectorError('"message" cannot be empty')
    if max_message is not None and len(message.encode("utf-8", "surrogatepass")) > max_message:
        raise SelectorError(f'"message" is too long (more than {max_message} bytes)')
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
            "delay": {"type": "number", "minimum": 1 / METRONOME_MAX_HZ, "maximum": METRONOME_MAX_DELAY},
            "message": {
                "type": "string",
                "minLength": 1,
                "maxLength": METRONOME_MAX_MESSAGE,
                "description": "${username} and ${count} are substituted; at most 1024 bytes of UTF-8.",
            },
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
