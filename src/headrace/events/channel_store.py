"""Where channels live between server starts: one small JSON file per channel for what it is (owner, the
confinement of the credential that made it, client-id, timeout, subscriptions) and an append-only journal
for what it holds (its numbered events, how far into the event log it has read, and the last id sent to a
client).

The journal is appended once per dispatch batch, not fsynced: a killed process loses nothing (the page
cache keeps it), and what a power cut loses is re-derived from the event log on the next start, with the
same ids, because a channel resumes reading the log from the last position the journal records.

Journal lines (tab-separated; JSON never holds a raw tab):
  e <id> <type> <subscription key> <data JSON>   an event the channel holds
  o <log offset> <next id>                       everything up to here is accounted for
  s <last id sent>
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Entry:
    """One numbered, non-SYSTEM event held by a channel for (re)sending."""

    id: int
    type: str
    sub: str  # the subscription's key: "<type>/<sid>"
    data: str  # the one-line JSON of the SSE data field


@dataclass
class Saved:
    meta: dict[str, Any]
    entries: list[Entry] = field(default_factory=list)
    offset: int = 0
    next_id: int = 0
    sent: int = -1


def entry_line(e: Entry) -> str:
    return f"e\t{e.id}\t{e.type}\t{e.sub}\t{e.data}\n"


def position_line(offset: int, next_id: int) -> str:
    return f"o\t{offset}\t{next_id}\n"


def sent_line(sent: int) -> str:
    return f"s\t{sent}\n"


class ChannelStore:
    def __init__(self, directory: Path, *, held: int) -> None:
        self.dir = directory
        self.held = held
        self.dir.mkdir(parents=True, exist_ok=True)

    def _meta(self, cid: str) -> Path:
        return self.dir / f"{cid}.json"

    def _journal(self, cid: str) -> Path:
        return self.dir / f"{cid}.journal"

    def save_meta(self, cid: str, meta: dict[str, Any]) -> None:
        path = self._meta(cid)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, separators=(",", ":")))
        os.replace(tmp, path)

    def append(self, cid: str, lines: Iterable[str]) -> None:
        with open(self._journal(cid), "a", encoding="utf-8") as f:
            f.write("".join(lines))

    def rewrite(self, cid: str, entries: Iterable[Entry], offset: int, next_id: int, sent: int) -> None:
        """Replace the journal by what the channel holds now (keeps journals bounded)."""
        path = self._journal(cid)
        tmp = path.with_suffix(".journal.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(entry_line(e) for e in entries))
            f.write(position_line(offset, next_id))
            f.write(sent_line(sent))
        os.replace(tmp, path)

    def remove(self, cid: str) -> None:
        for p in (self._meta(cid), self._journal(cid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def load(self) -> list[Saved]:
        out: list[Saved] = []
        for meta_path in sorted(self.dir.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue  # a torn write of a channel being created: it never answered 201
            saved = Saved(meta=meta, offset=int(meta.get("offset", 0)))
            self._read_journal(self._journal(meta_path.stem), saved)
            out.append(saved)
        return out

    def _read_journal(self, path: Path, saved: Saved) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        pending: list[Entry] = []
        held: list[Entry] = []
        for line in text.split("\n")[:-1]:  # a last line without its newline is a torn write: ignored
            parts = line.split("\t", 4)
            kind = parts[0]
            if kind == "e" and len(parts) == 5:
                pending.append(Entry(int(parts[1]), parts[2], parts[3], parts[4]))
            elif kind == "o" and len(parts) == 3:
                held.extend(pending)  # a batch counts only once its position line follows it
                pending = []
                saved.offset, saved.next_id = int(parts[1]), int(parts[2])
                if len(held) > 2 * self.held:
                    held = held[-self.held :]
            elif kind == "s" and len(parts) == 2:
                saved.sent = int(parts[1])
        saved.entries = [e for e in held[-self.held :] if e.id < saved.next_id]
        saved.sent = min(saved.sent, saved.next_id - 1)
