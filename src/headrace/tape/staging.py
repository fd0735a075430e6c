"""Waiting for a file to be on disk: a read of a file that is only on tape queues a stage and waits for it, as
a dCache door does (the GET is answered once the file is back, or 503 when the stage fails or takes longer
than `tape.read_wait`)."""

from __future__ import annotations

import time

from headrace.db.engine import Database
from headrace.storage.blobstore import StoreUnavailable
from headrace.storage.namespace import Inode, Namespace
from headrace.tape import catalog
from headrace.tape.agent import STAGED, wake_all

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "SKIPPED")


async def bring_online(db: Database, ns: Namespace, node: Inode, owner: str, *, wait: float, api: str) -> Inode:
    """`node` with a disk copy: staged first if it has none (the stage is `owner`'s, made through `api`)."""
    target = await db.write(catalog.queue_stage, ns, owner, node, api=api)
    wake_all()
    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        state, error = await db.read(catalog.target_state, ns, target)
        if state in FINAL:
            current = await db.read(catalog.file_by_pnfsid, ns, node.pnfsid)
            if current is not None and current.blob is not None:
                current.path = node.path  # as the caller named it
                return current
            if state == "COMPLETED":  # evicted again already: stage once more
                target = await db.write(catalog.queue_stage, ns, owner, node, api=api)
                wake_all()
                continue
            raise StoreUnavailable(f"Staging {node.path} from tape failed: {error or state.lower()}")
        if time.monotonic() >= deadline:
            raise StoreUnavailable(f"{node.path} is being staged from tape; try again later")
        await STAGED.wait(delay)  # a stage settled here, or time to look for one settled elsewhere
        delay = min(delay * 2, 0.25)
