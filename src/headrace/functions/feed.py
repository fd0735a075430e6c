"""The built-in storage feed, /whisk.system/storage/changes: which storage events fire a trigger, and the
payload they fire it with. Pure functions over the canonical event.

A trigger's filter is by path (like an S3 prefix), not by inode: it names a directory, optionally every
directory below it, and the inotify flags of the events "in the parent" that fire it (IN_CLOSE_WRITE by
default). A rename is IN_MOVED_FROM at the old place and IN_MOVED_TO at the new one.

An event fires a trigger only as far as the trigger's owner may read it at delivery (events.access, the rule
SSE channels deliver by): a rename whose other side they may not read fires only the side they may, and its
payload leaves the other place out.
"""

from __future__ import annotations

import posixpath

from headrace.events.access import Directories, Reader, sides, view_seen
from headrace.events.model import EventKind, StorageEvent
from headrace.events.render import PLAIN_FLAGS, event_data
from headrace.functions.model import FeedFilter, JSONObject

# The flag of each kind in the parent directory's view (a rename has two views: see `views`).
_FLAG = {**PLAIN_FLAGS, EventKind.CREATE: "IN_CREATE", EventKind.DELETE: "IN_DELETE"}


def _under(path: str, f: FeedFilter) -> bool:
    parent = posixpath.dirname(path) or "/"
    if parent == f.path:
        return True
    return f.recursive and (f.path == "/" or parent.startswith(f.path + "/"))


def views(event: StorageEvent) -> list[tuple[str, str, str | None]]:
    """(flag, path, name) of each view an event has in its parent directory."""
    if event.kind is EventKind.MOVE:
        out = []
        if event.old_path:
            out.append(("IN_MOVED_FROM", event.old_path, event.old_name))
        out.append(("IN_MOVED_TO", event.path, event.name))
        return out
    return [(_FLAG[event.kind], event.path, event.name)]


def matches(event: StorageEvent, f: FeedFilter) -> list[str]:
    """The flags with which `event` fires a trigger with filter `f` (empty: it does not), permissions aside.
    A trigger follows one source: headrace's own namespace (`f.source` None) or the source it names."""
    if event.source != f.source:
        return []
    if f.tape and not (event.kind is EventKind.ATTRIB and (event.detail or {}).get("tape") in f.tape):
        return []
    out = []
    for flag, path, name in views(event):
        if flag in f.flags and _under(path, f) and f.matches_name(name, event.size):
            out.append(flag)
    return out


def deliverable(
    event: StorageEvent, f: FeedFilter, reader: Reader, dirs: Directories, *, source_readable: bool = False
) -> list[tuple[str, bool]]:
    """The flags with which `event` fires a trigger with filter `f` owned by `reader`, each with whether the
    reader may also see the rename's other side (for `payload`); `dirs` loaded for the event's batch. An
    event of another system (`event.source`) fires only for a reader of its source (`source_readable`, the
    caller's judgement: an administrator or one the source names); this namespace's permissions do not apply
    to its paths."""
    flags = matches(event, f)
    if not flags:
        return []
    if event.source is not None:
        return [(flag, True) for flag in flags] if source_readable and reader.subject is not None else []
    old, new = sides(reader, dirs, event)
    return [(flag, old and new) for flag in flags if view_seen(flag, old, new)]


def payload(event: StorageEvent, flag: str, *, both_sides: bool = True) -> JSONObject:
    """The event fields a trigger fires with: the event's data as CloudEvents carry it (path, name, size,
    checksums, offset, time, ...; render.event_data) with the inotify `mask` of this view instead of the kind,
    and for a rename both places (`oldPath`, `newPath`; `path` is the place this view is about), or, without
    `both_sides` (the owner may not read the other), only this view's place."""
    out = event_data(event)
    del out["kind"]
    if flag == "IN_MOVED_FROM" and event.old_path:
        out["path"] = event.old_path
        out["name"] = event.old_name
    if event.kind is EventKind.MOVE:
        out["newPath"] = event.path
        if not both_sides:
            out.pop("oldPath" if flag == "IN_MOVED_TO" else "newPath", None)
    out["mask"] = [flag, "IN_ISDIR"] if event.is_dir else [flag]
    return {k: v for k, v in out.items() if v is not None}
