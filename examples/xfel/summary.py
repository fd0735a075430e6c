"""Run summary: on IN_CLOSE_WRITE of a RAW sequence file, what the run holds so far.

For `/exp/<INSTR>/<cycle>/p<proposal>/raw/r0042/RAW-R0042-DA01-S00000.h5` it writes

- `.../proc/r0042/summary/RAW-R0042-DA01-S00000.json`: this file's trains, sources and pulse energies;
- `.../proc/r0042/run-summary.json`: the run so far, from every file summary beside it: train count,
  first and last train id, the trains missing between them, each source with its count of entries, the mean
  XGM pulse energy, the files;
- `.../proc/r0042/preview.png`: pulse energy per train, missing trains marked (drawn once per activation,
  after the run summary has settled).

Files of one run close one after the other and their activations run concurrently, so the run summary is
made from the file summaries listed after this one's was written, and made again if the list has changed
once it is written: the last writer has always seen every file summary written before its own.

Self-contained (numpy, h5py, matplotlib, stdlib): deployable as one file with `headrace fn deploy`.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from typing import Any

try:
    import h5py
    import numpy as np
    from matplotlib.figure import Figure  # at the top: the zygote imports it once per action version (~1 s)
except ImportError as exc:  # the server's Python has not got the science extra
    raise ImportError(f"needs pip install 'headrace[science]' on the server: {exc}") from exc

RAW_NAME = re.compile(r"^RAW-R(?P<run>\d{4})-(?P<aggregator>[A-Z0-9]+)-S(?P<seq>\d{5})\.h5$")
XGM_KEY = "data/intensityTD"
#: What the XGM writes into the slots of its 1000 per train beyond the pulses of the train.
XGM_FILL = 1.0
ROUNDS = 5  # times the run summary is made again if file summaries keep appearing while it is written


def proc_dir(raw_path: str) -> str:
    """`.../raw/r0042/X.h5` -> `.../proc/r0042` (EuXFEL's layout: proc/ beside raw/ in the proposal)."""
    run_dir = posixpath.dirname(raw_path)
    proposal_dir, kind = posixpath.split(posixpath.dirname(run_dir))
    if kind != "raw":
        raise ValueError(f"{raw_path} is not in a raw/ run directory")
    return posixpath.join(proposal_dir, "proc", posixpath.basename(run_dir))


def _text(value: Any) -> str:
    value = value[()] if hasattr(value, "shape") else value
    if isinstance(value, np.ndarray):
        value = value.flat[0] if value.size else b""
    return value.decode() if isinstance(value, bytes) else str(value)


def summarise_file(f: h5py.File, name: str, xgm_source: str | None = None) -> dict[str, Any]:
    """One sequence file: train ids, sources and their entry counts, per-train mean pulse energy."""
    train_ids = np.asarray(f["INDEX/trainId"][:], dtype=np.uint64)
    valid = train_ids > 0  # EuXFEL files may pad the index with zeros
    sources: dict[str, int] = {}
    for section in ("CONTROL", "INSTRUMENT"):
        if section not in f:
            continue
        for device in _sources(f[section]):
            counts = [f[posixpath.join("INDEX", device, g, "count")][:] for g in _index_groups(f, device)]
            count = max((int(np.sum(c[valid])) for c in counts), default=0)
            sources[device] = sources.get(device, 0) + count
    energies: dict[int, float] = {}
    source = xgm_source or next((s for s in sources if "XGM" in s and s.endswith(":output")), None)
    if source and f"INSTRUMENT/{source}/{XGM_KEY}" in f:
        index = f[f"INDEX/{source}/{XGM_KEY.split('/')[0]}"]
        first, count = index["first"][:], index["count"][:]
        data = np.asarray(f[f"INSTRUMENT/{source}/{XGM_KEY}"][:], dtype=np.float64)
        for tid, start, n in zip(train_ids, first, count, strict=True):
            if tid and n:
                pulses = data[int(start) : int(start) + int(n)].ravel()
                pulses = pulses[(pulses > 0) & (pulses != XGM_FILL)]
                if pulses.size:
                    energies[int(tid)] = float(pulses.mean())
    meta = f.get("METADATA")
    return {
        "file": name,
        "proposal": int(_text(meta["proposalNumber"])) if meta is not None and "proposalNumber" in meta else None,
        "run": int(_text(meta["runNumber"])) if meta is not None and "runNumber" in meta else None,
        "trainIds": [int(t) for t in train_ids[valid]],
        "sources": sources,
        "xgmSource": source,
        "pulseEnergy": {str(k): v for k, v in energies.items()},
    }


def _sources(section: h5py.Group) -> list[str]:
    """Device names below CONTROL/ or INSTRUMENT/ (`SA1_XTD2_XGM/XGM/DOOCS`, `...:output`): three levels."""
    out = []
    for a in section:
        for b in section[a]:
            for c in section[a][b]:
                out.append(f"{a}/{b}/{c}")
    return out


def _index_groups(f: h5py.File, device: str) -> list[str]:
    """INDEX/<device>/ holds first/count per key group (`data` for INSTRUMENT, none for old CONTROL)."""
    node = f.get(f"INDEX/{device}")
    if node is None:
        return []
    if "count" in node:  # pre-1.0 layout: first/count directly below the device
        return [""]
    return [g for g in node if "count" in node[g]]


def combine(files: list[dict[str, Any]]) -> dict[str, Any]:
    """The run from its file summaries."""
    trains = sorted({t for s in files for t in s["trainIds"]})
    sources: dict[str, int] = {}
    energies: dict[int, float] = {}
    for s in files:
        for name, count in s["sources"].items():
            sources[name] = sources.get(name, 0) + count
        energies.update({int(k): v for k, v in s["pulseEnergy"].items()})
    missing = sorted(set(range(trains[0], trains[-1] + 1)) - set(trains)) if trains else []
    first = next((s for s in files if s.get("run") is not None), {})
    return {
        "proposal": first.get("proposal"),
        "run": first.get("run"),
        "files": sorted(s["file"] for s in files),
        "trains": len(trains),
        "firstTrainId": trains[0] if trains else None,
        "lastTrainId": trains[-1] if trains else None,
        "missingTrains": missing,
        "sources": dict(sorted(sources.items())),
        "meanPulseEnergy": float(np.mean(list(energies.values()))) if energies else None,
        "pulseEnergyUnit": "uJ",
    }


def preview_png(files: list[dict[str, Any]], run: dict[str, Any]) -> bytes:
    energies = sorted((int(k), v) for s in files for k, v in s["pulseEnergy"].items())
    fig = Figure(figsize=(6, 2.5), dpi=80)
    ax = fig.add_subplot()
    if energies:
        ax.plot([t for t, _ in energies], [e for _, e in energies], ".", markersize=2)
    for t in run["missingTrains"][:500]:
        ax.axvline(t, color="tab:red", alpha=0.3, linewidth=0.5)
    ax.set_xlabel("train id")
    ax.set_ylabel("pulse energy / uJ")
    ax.set_title(f"p{run['proposal']} r{run['run']:04d}: {run['trains']} trains" if run["run"] else "run")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def main(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    path = event["path"]
    name = posixpath.basename(path)
    if not RAW_NAME.match(name):
        return {"skipped": f"{name} is not a RAW sequence file"}
    proc = proc_dir(path)
    summaries = posixpath.join(proc, "summary")
    with h5py.File(ctx.storage.local_path(path) or io.BytesIO(ctx.storage.read(path)), "r") as f:
        mine = summarise_file(f, name, event.get("xgm_source"))
    ctx.storage.mkdir(summaries)
    ctx.storage.write(posixpath.join(summaries, name[:-3] + ".json"), json.dumps(mine))
    known: dict[str, dict[str, Any]] = {}  # file summaries read so far, by name
    run: dict[str, Any] = {}
    for _ in range(ROUNDS):
        listed = {n for n in ctx.storage.list(summaries) if n.endswith(".json")}
        if listed == set(known):
            break
        for n in sorted(listed - set(known)):
            known[n] = json.loads(ctx.storage.read(posixpath.join(summaries, n)))
        run = combine(list(known.values()))
        ctx.storage.write(posixpath.join(proc, "run-summary.json"), json.dumps(run, indent=1))
    # The preview once, from the last run summary written (drawing it is the slow part of a round).
    ctx.storage.write(posixpath.join(proc, "preview.png"), preview_png(list(known.values()), run))
    ctx.logger.info("%s: %d trains in this file; run has %d trains", name, len(mine["trainIds"]), run["trains"])
    return {"file": name, "trains": len(mine["trainIds"]), "runTrains": run["trains"], "summary": proc}
