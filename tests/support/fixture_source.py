"""A source kind for tests only, `fixture` (registered by $HEADRACE_SOURCE_KINDS=fixture=fixture_source, with
tests/support on the server's PYTHONPATH): it follows a JSON-lines file of events that a test appends to, as
a remote system would emit them, and serves files from a directory.

Configuration: `root` (a directory holding `events.jsonl` and `files/`), optionally `replay` (true: start from
the first line whatever the stored position says, as a kind re-delivering after a loss would), `batch` (events
per delivery, default 1), `pace` (seconds between deliveries), `fail` (a sentence: every run raises it),
`refuse` (every run raises it as a SourceConfigError), `bearer` and `basic` (taken and unused: credentials for
the API to keep and hide). Each run adds a line to `runs.log` in the root. Each line of events.jsonl:
{"key", "kind", "path", and optionally "size", "old_path", "is_dir", "url", "detail"}. The position is the
number of lines delivered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from headrace.events.model import EventKind
from headrace.events.sources.base import RemoteEvent, RemoteFiles, Sink, SourceConfigError


class FixtureFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    async def open(self, path: str, start: int = 0, end: int | None = None) -> tuple[int | None, AsyncIterator[bytes]]:
        target = (self.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.root.resolve()) or not target.is_file():
            raise FileNotFoundError(path)
        if target.name.startswith("forbidden"):
            raise PermissionError(path)
        if target.name.startswith("broken"):
            raise ConnectionError("the remote went away")
        size = target.stat().st_size

        async def chunks() -> AsyncIterator[bytes]:
            with target.open("rb") as f:
                f.seek(start)
                left = (end if end is not None else size) - start
                while left > 0:
                    data = f.read(min(left, 65536))
                    if not data:
                        return
                    left -= len(data)
                    yield data

        return size, chunks()


class FixtureSource:
    def __init__(
        self, name: str, root: Path, *, replay: bool, batch: int, fail: str | None, refuse: str | None, pace: float
    ) -> None:
        self.name = name
        self.root = root
        self.replay = replay
        self.batch = batch
        self.fail = fail
        self.refuse = refuse
        self.pace = pace

    def files(self) -> RemoteFiles | None:
        return FixtureFiles(self.root / "files")

    async def run(self, sink: Sink) -> None:
        with (self.root / "runs.log").open("a") as f:
            f.write("run\n")  # how often the runner started it
        if self.refuse:
            raise SourceConfigError(self.refuse)
        if self.fail:
            raise RuntimeError(self.fail)
        stored = await sink.position()
        done = 0 if self.replay or stored is None else int(stored)
        log = self.root / "events.jsonl"
        while True:
            lines = log.read_text().splitlines() if log.exists() else []
            complete = [line for line in lines if line.strip()]
            if len(complete) > done:
                take = complete[done : done + self.batch]
                events = [_event(json.loads(line)) for line in take]
                await sink.deliver(events, str(done + len(take)))
                done += len(take)
                await sink.set_state("lag", len(complete) - done)
                if self.pace:
                    await asyncio.sleep(self.pace)  # a remote that sends its events one by one
                continue
            await asyncio.sleep(0.05)


def _event(raw: dict[str, Any]) -> RemoteEvent:
    return RemoteEvent(
        key=raw["key"],
        kind=EventKind(raw.get("kind", "CLOSE_WRITE")),
        path=raw["path"],
        is_dir=bool(raw.get("is_dir", False)),
        size=raw.get("size"),
        old_path=raw.get("old_path"),
        url=raw.get("url", f"fixture://{raw['path']}"),
        detail=raw.get("detail", {}),
    )


def build(name: str, config: Mapping[str, Any]) -> FixtureSource:
    unknown = sorted(set(config) - {"root", "replay", "batch", "fail", "refuse", "pace", "bearer", "basic"})
    if unknown:
        raise SourceConfigError(f"The fixture kind takes no option {unknown[0]!r}")
    root = config.get("root")
    if not isinstance(root, str) or not root:
        raise SourceConfigError("The fixture kind needs root: a directory")
    batch = config.get("batch", 1)
    if not isinstance(batch, int) or batch < 1:
        raise SourceConfigError("batch must be a positive integer")
    return FixtureSource(
        name, Path(root), replay=bool(config.get("replay")), batch=batch, fail=config.get("fail") or None,
        refuse=config.get("refuse") or None, pace=float(config.get("pace") or 0),
    )  # fmt: skip
