"""The canonical storage event: one outbox row per change to one object.

Each row names the object (inode, path) and its parent, so that the dCache inotify rendering can derive
both views a change has: the event "in the parent" (IN_CREATE with a name) and the event "on the target"
(IN_DELETE_SELF, IN_MOVE_SELF, IN_ATTRIB without a name). dCache's rules ("What makes which event"):

  create          CREATE                      upload     CREATE OPEN MODIFY CLOSE_WRITE ATTRIB
  attribute       ATTRIB                      overwrite  OPEN MODIFY CLOSE_WRITE ATTRIB
  delete          DELETE                      read       OPEN ACCESS CLOSE_NOWRITE
  rename          MOVE (old and new parent)   listing    OPEN CLOSE_NOWRITE (on the directory)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    CREATE = "CREATE"
    OPEN = "OPEN"
    ACCESS = "ACCESS"
    MODIFY = "MODIFY"
    CLOSE_WRITE = "CLOSE_WRITE"
    CLOSE_NOWRITE = "CLOSE_NOWRITE"
    ATTRIB = "ATTRIB"
    DELETE = "DELETE"
    MOVE = "MOVE"


UPLOAD_KINDS = (EventKind.CREATE, EventKind.OPEN, EventKind.MODIFY, EventKind.CLOSE_WRITE, EventKind.ATTRIB)
OVERWRITE_KINDS = UPLOAD_KINDS[1:]
READ_KINDS = (EventKind.OPEN, EventKind.ACCESS, EventKind.CLOSE_NOWRITE)
LIST_KINDS = (EventKind.OPEN, EventKind.CLOSE_NOWRITE)


@dataclass(frozen=True)
class StorageEvent:
    """One outbox row, as read back from the log."""

    offset: int
    time: int  # µs since epoch
    kind: EventKind
    is_dir: bool
    inode_id: int
    pnfsid: str
    path: str
    parent_id: int | None
    name: str | None
    old_path: str | None = None
    old_parent_id: int | None = None
    old_name: str | None = None
    cookie: str | None = None
    size: int | None = None
    detail: dict[str, Any] | None = None
    cause: str | None = None
    username: str | None = None
    #: The event source it came from (events/sources), None for headrace's own namespace; then `path` is the
    #: remote's path, `inode_id` 0, `parent_id` None, and `detail` holds "url" (where its file is read).
    source: str | None = None
    source_key: str | None = None
