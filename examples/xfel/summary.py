"""Run summary: on IN_CLOSE_WRITE of a RAW sequence file, what the run holds so far.

For `/exp/<INSTR>/<cycle>/p<proposal>/raw/r0042/RAW-R0042-DA01-S00000.h5` it writes

- `.../proc/r0042/run-summary.json`: the run so far: train count, first and last train id, the trains
  missing between them, each source with its count of entries, the mean XGM pulse energy, the files; and,
  under `perFile`, each file's part of it (its trains as ranges, its sources, its pulse energy per train),
  from which the rest is computed;
- `.../proc/r0042/preview.png`: pulse energy per train, missing trains marked.

Each activation does a fixed amount of work whatever the size of the run: it adds its file's part to the run
summary with a conditional write (read it and its ETag, replace this file's entry in `perFile`, recompute,
PUT with If-Match; on 412, because another file of the run got in first, read again and redo), so concurrent
activations lose no file, and a file processed twice (at-least-once delivery) replaces its own entry with the
same one: the result is the same whatever the order and the repeats. Each write is a `revision` up. The
preview says which revision it shows (in its PNG text), and is drawn by the newest revision's writer unless
it shows that one already, and written only over the preview that writer looked at (If-Match): previews
only move to newer revisions, and the last one is the newest run summary's; an activation draws once unless
another preview is written while it draws.

Self-contained (numpy, h5py, matplotlib, stdlib; ctx.storage's StorageConflict): deployable as one file
with `headrace fn deploy`.
"""

from __future__ import annotations

import io
import itertools
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

from headrace.functions.storage import StorageConflict, StorageError

RAW_NAME = re.compile(r"^RAW-R(?P<run>\d{4})-(?P<aggregator>[A-Z0-9]+)-S(?P<seq>\d{5})\.h5$")
XGM_KEY = "data/intensityTD"
#: What the XGM writes into the slots of its 1000 per train beyond the pulses of the train.
XGM_FILL = 1.0
ROUNDS = 100  # conditional writes tried before the activation gives up (and is retried later)
RUN_SUMMARY = "run-summary.json"


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


def file_entry(summary: dict[str, Any]) -> dict[str, Any]:
    """What the run summary keeps of one file summary (`perFile`): its trains as ranges, its sources and pulse
    energies; as JSON gives it back, so that an entry read can be compared with one made."""
    entry = {
        "proposal": summary.get("proposal"),
        "run": summary.get("run"),
        "trains": train_ranges(summary["trainIds"]),
        "sources": summary["sources"],
        "pulseEnergy": summary["pulseEnergy"],
    }
    return dict(json.loads(json.dumps(entry)))


def train_ranges(train_ids: list[int]) -> list[list[int]]:
    """Sorted train ids as [first, last] ranges of consecutive ids."""
    out: list[list[int]] = []
    for t in sorted(set(train_ids)):
        if out and t == out[-1][1] + 1:
            out[-1][1] = t
        else:
            out.append([t, t])
    return out


def combine(per_file: dict[str, dict[str, Any]], revision: int = 1) -> dict[str, Any]:
    """The run summary from its files' entries (`file_entry`), which it keeps under `perFile`; `revision`
    counts its writes."""
    spans = sorted((a, b) for e in per_file.values() for a, b in e["trains"])
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    sources: dict[str, int] = {}
    energies: dict[int, float] = {}
    for name in sorted(per_file):
        entry = per_file[name]
        for source, count in entry["sources"].items():
            sources[source] = sources.get(source, 0) + count
        energies.update({int(k): v for k, v in entry["pulseEnergy"].items()})
    missing = [t for (_, b), (a, _) in itertools.pairwise(merged) for t in range(b + 1, a)]
    first = next((per_file[n] for n in sorted(per_file) if per_file[n].get("run") is not None), {})
    return {
        "proposal": first.get("proposal"),
        "run": first.get("run"),
        "files": sorted(per_file),
        "trains": sum(b - a + 1 for a, b in merged),
        "firstTrainId": merged[0][0] if merged else None,
        "lastTrainId": merged[-1][1] if merged else None,
        "missingTrains": missing,
        "sources": dict(sorted(sources.items())),
        "meanPulseEnergy": float(np.mean(list(energies.values()))) if energies else None,
        "pulseEnergyUnit": "uJ",
        "revision": revision,
        "perFile": {n: per_file[n] for n in sorted(per_file)},
    }


def preview_png(run: dict[str, Any]) -> bytes:
    """Pulse energy per train over the run, missing trains marked (~35 ms)."""
    energies = sorted((int(k), v) for e in run["perFile"].values() for k, v in e["pulseEnergy"].items())
    fig = Figure(figsize=(6, 2.5), dpi=80)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.2, top=0.88)  # fixed: tight_layout costs a draw
    ax = fig.add_subplot()
    if energies:
        ax.plot([t for t, _ in energies], [e for _, e in energies], ".", markersize=2)
    if run["missingTrains"]:  # one collection, not a line per train
        marks = run["missingTrains"][:500]
        ax.vlines(marks, 0, 1, transform=ax.get_xaxis_transform(), color="tab:red", alpha=0.3, linewidth=0.5)
    ax.set_xlabel("train id")
    ax.set_ylabel("pulse energy / uJ")
    ax.set_title(f"p{run['proposal']} r{run['run']:04d}: {run['trains']} trains" if run["run"] else "run")
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Description": f"run-summary revision {run.get('revision', 0)}"})
    return out.getvalue()


def _read_run(storage: Any, path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str | None]:
    """The run summary, its file entries and its ETag (None: no run summary yet)."""
    found = storage.read_tagged(path)
    if found is None:
        return {}, {}, None
    body, etag = found
    doc = json.loads(body)
    if "perFile" not in doc:  # made by this function's first version, from one summary/<file>.json per file
        summaries = posixpath.join(posixpath.dirname(path), "summary")
        try:
            names = [n for n in storage.list(summaries) if n.endswith(".json")]
        except StorageError:
            names = []
        read = [json.loads(storage.read(posixpath.join(summaries, n))) for n in names]
        return doc, {s["file"]: file_entry(s) for s in read}, etag
    return doc, dict(doc["perFile"]), etag


def add_file(storage: Any, path: str, name: str, entry: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Put `name`'s entry into the run summary at `path`, one revision up: the run summary as written (or as
    found, if it had this entry already) and its ETag."""
    for _ in range(ROUNDS):
        doc, per_file, etag = _read_run(storage, path)
        if per_file.get(name) == entry and etag is not None and "revision" in doc:  # done before (a repeat)
            return doc, etag
        per_file[name] = entry
        run = combine(per_file, int(doc.get("revision", 0)) + 1)
        try:
            new = storage.write(path, json.dumps(run, indent=1), if_match=etag, if_absent=etag is None)
        except StorageConflict:  # another file of the run was added meanwhile
            continue
        except StorageError:
            if etag is not None:
                raise
            storage.mkdir(posixpath.dirname(path))  # the run's first file, and no proc/rNNNN yet: again
            continue
        if new is None:  # no ETag in the answer: take the version there is now, with its content
            found = storage.read_tagged(path)
            return json.loads(found[0]), found[1]
        return run, new
    raise RuntimeError(f"{path}: changed under this activation {ROUNDS} times in a row")


def shown_revision(png: bytes) -> int:
    """The run summary revision a preview was drawn from (-1: none said)."""
    match = re.search(rb"run-summary revision (\d+)", png)
    return int(match[1]) if match else -1


def refresh_preview(storage: Any, path: str, proc: str, run: dict[str, Any], etag: str) -> int:
    """Draw the preview of run summary `run` (ETag `etag`) unless a newer revision has come (its writer draws
    that) or the preview shows this revision or a newer one already; write it only over the preview looked
    at (If-Match), so that previews only ever move to newer revisions. How many previews it wrote."""
    preview = posixpath.join(proc, "preview.png")
    for _ in range(ROUNDS):
        now = storage.read_tagged(path)
        if now is not None and now[1] != etag:
            return 0
        found = storage.read_tagged(preview)
        if found is not None and shown_revision(found[0]) >= run["revision"]:
            return 0
        png = preview_png(run)
        try:
            storage.write(preview, png, if_match=found[1] if found else None, if_absent=found is None)
        except StorageConflict:  # another preview came meanwhile: look again
            continue
        return 1
    raise RuntimeError(f"{preview}: changed under this activation {ROUNDS} times in a row")


def main(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    path = event["path"]
    name = posixpath.basename(path)
    if not RAW_NAME.match(name):
        return {"skipped": f"{name} is not a RAW sequence file"}
    proc = proc_dir(path)
    with ctx.storage.open(path) as source, h5py.File(source, "r") as f:  # reads the blocks h5py asks for
        mine = summarise_file(f, name, event.get("xgm_source"))
    run_path = posixpath.join(proc, RUN_SUMMARY)
    run, etag = add_file(ctx.storage, run_path, name, file_entry(mine))
    previews = refresh_preview(ctx.storage, run_path, proc, run, etag)
    ctx.logger.info("%s: %d trains in this file; run has %d trains", name, len(mine["trainIds"]), run["trains"])
    return {
        "file": name,
        "trains": len(mine["trainIds"]),
        "runTrains": run["trains"],
        "previews": previews,
        "summary": proc,
    }
