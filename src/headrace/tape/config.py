"""Tape settings: which HSM, and when the pool flushes, evicts and stages (read from HEADRACE_TAPE_* / HSM)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from headrace.tape.hsm import SIMULATOR, HsmScript


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, not {raw!r}") from exc


@dataclass(frozen=True)
class TapeSettings:
    #: The facility's HSM executable (dCache's HSM script interface), with any fixed arguments; "" = no tape.
    hsm_command: str = ""
    #: Or: the shipped tape simulator, keeping its cartridges in this directory.
    simulator: str = ""
    #: The simulator's latencies (s) and rate (MB/s, 0: the disk's).
    mount: float = 0.0
    position: float = 0.0
    rate: float = 0.0
    drives: int = 1
    #: Flush a pool's queue when its oldest file has waited this long (s), or it holds this many files or
    #: bytes (dCache's flush queue triggers).
    flush_age: float = 60.0
    flush_count: int = 100
    flush_bytes: int = 1 << 30
    #: HSM calls at once per pool (dCache's `st set max active` / `rh set max active`).
    flush_concurrency: int = 2
    stage_concurrency: int = 2
    #: Evict cached disk copies once a pool is this full, down to `evict_low` (fractions of its capacity:
    #: its --pool-max-bytes, else its disk).
    evict_high: float = 0.9
    evict_low: float = 0.8
    #: How often (s) a pool looks for work other processes queued (work queued here wakes it at once).
    poll: float = 1.0
    #: A staging claim not renewed for this long (s) is taken over by another pool.
    lease: float = 60.0
    #: A GET of a file only on tape waits this long (s) for the stage before answering 503.
    read_wait: float = 3600.0

    @property
    def enabled(self) -> bool:
        return bool(self.hsm_command or self.simulator)

    def describe(self) -> str:
        return f"simulator in {self.simulator}" if self.simulator else self.hsm_command

    def hsm(self) -> HsmScript | None:
        if self.simulator:
            options = {"hsmBase": self.simulator, "mount": self.mount, "position": self.position}
            options |= {"rate": self.rate, "drives": self.drives}
            return HsmScript(SIMULATOR, options=options)
        if self.hsm_command:
            return HsmScript.parse(self.hsm_command)
        return None

    @classmethod
    def from_env(cls) -> TapeSettings:
        d = cls()
        return cls(
            hsm_command=os.environ.get("HEADRACE_HSM_COMMAND") or "",
            simulator=os.environ.get("HEADRACE_TAPE_SIMULATOR") or "",
            mount=_float("HEADRACE_TAPE_MOUNT", d.mount),
            position=_float("HEADRACE_TAPE_POSITION", d.position),
            rate=_float("HEADRACE_TAPE_RATE", d.rate),
            drives=int(_float("HEADRACE_TAPE_DRIVES", d.drives)),
            flush_age=_float("HEADRACE_TAPE_FLUSH_AGE", d.flush_age),
            flush_count=int(_float("HEADRACE_TAPE_FLUSH_COUNT", d.flush_count)),
            flush_bytes=int(_float("HEADRACE_TAPE_FLUSH_BYTES", d.flush_bytes)),
            flush_concurrency=int(_float("HEADRACE_TAPE_FLUSH_CONCURRENCY", d.flush_concurrency)),
            stage_concurrency=int(_float("HEADRACE_TAPE_STAGE_CONCURRENCY", d.stage_concurrency)),
            evict_high=_float("HEADRACE_TAPE_EVICT_HIGH", d.evict_high),
            evict_low=_float("HEADRACE_TAPE_EVICT_LOW", d.evict_low),
            poll=_float("HEADRACE_TAPE_POLL", d.poll),
            lease=_float("HEADRACE_TAPE_LEASE", d.lease),
            read_wait=_float("HEADRACE_TAPE_READ_WAIT", d.read_wait),
        )
