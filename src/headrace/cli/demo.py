"""`headrace demo`: see headrace do a facility's job on a synthetic European XFEL run.

It uses the server the CLI is configured for, or starts the embedded one (`headrace up --data DIR`) when none
answers; deploys the four example functions of examples/xfel (run summary, catalogue, azimuthal integration,
cache); writes a run through the door as a DAQ would, one sequence file after the other; shows the events and
the activations as they happen; and ends with a summary table. Exit status 0 when every activation succeeded
and the results are what the generated data says they must be, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer

from headrace.cli.catalogue import default_catalogue, search_records
from headrace.cli.common import CliError, usage_error
from headrace.cli.functions import table
from headrace.client import Client, ClientConfig, HeadraceClientError
from headrace.client.events import EventStream
from headrace.client.functions import FINAL_STATES, Functions, load_deploy_file
from headrace.extras import require
from headrace.tls import tls_context

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "xfel"
DEPLOY_FILE = "headrace.yaml"
QUIET_SECONDS = 1.5  # no activation queued or running for this long: the run's work is done


def examples_dir() -> Path:
    """examples/xfel of the source tree headrace runs from (HEADRACE_EXAMPLES overrides)."""
    where = Path(os.environ.get("HEADRACE_EXAMPLES") or EXAMPLES)
    if not (where / DEPLOY_FILE).is_file():
        raise CliError(f"{where}: the XFEL example functions are not here (set HEADRACE_EXAMPLES to examples/xfel)")
    return where


# -- the server ---------------------------------------------------------------------------------------------


def _healthy(config: ClientConfig) -> bool:
    try:
        return httpx.get(f"{config.api}/healthz", timeout=1, verify=tls_context()).status_code == 200
    except httpx.HTTPError:
        return False


def state_dirs(examples: Path, catalogue: Path | None, cache_dir: Path | None) -> tuple[Path, Path]:
    """The catalogue's database and the cache directory, as absolute host paths (a function's `~` is its
    sandbox's /tmp)."""
    cat = (catalogue or default_catalogue()).expanduser().resolve()
    if cache_dir is None:
        specs = load_deploy_file(examples / DEPLOY_FILE)
        cache_dir = Path(next(f.params["cache_dir"] for f in specs if "cache_dir" in f.params))
    return cat, cache_dir.expanduser().resolve()


def sandbox_binds(dirs: list[Path]) -> dict[str, str]:
    """The environment that binds `dirs` into the admin's function sandboxes (HEADRACE_SANDBOX_BIND), made
    and, when we are root, given to the sandbox's uid so that the example functions can write there."""
    from headrace.functions.sandbox import SandboxSettings

    uid = SandboxSettings.from_env().uid_base  # the admin's (uid 0) functions
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(d, uid, uid)
    return {"HEADRACE_SANDBOX_BIND": ",".join(f"admin:{d}" for d in dirs)}


def ensure_server(
    data: Path, timeout: float = 30.0, binds: list[Path] | None = None
) -> tuple[subprocess.Popen[bytes] | None, ClientConfig]:
    """The configured server if it answers; otherwise the embedded one started on the configured ports (with
    `binds` writable in the admin's function sandboxes)."""
    config = ClientConfig.load()
    if _healthy(config):
        return None, config
    door, api = urlsplit(config.door), urlsplit(config.api)
    if door.hostname not in ("127.0.0.1", "localhost") or api.hostname not in ("127.0.0.1", "localhost"):
        raise CliError(f"no headrace server answers at {config.api}, and it is not one this machine can start")
    # the functions import pyFAI and matplotlib in the server's sandboxes, which run this Python
    require("pyFAI", "matplotlib", needed_for="headrace demo (its functions, on the embedded server)")
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "demo-server.log", "ab")  # noqa: SIM115 - the server's output, for as long as it runs
    cmd = [
        sys.executable, "-m", "headrace.cli.main", "up", "--data", str(data), "--host", "127.0.0.1",
        "--door-port", str(door.port or 2880), "--api-port", str(api.port or 3880),
    ]  # fmt: skip
    env = {**os.environ, **sandbox_binds(binds or [])}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while not _healthy(config):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise CliError(f"the embedded server did not start; its log is {data / 'demo-server.log'}")
        time.sleep(0.1)
    print(f"started the embedded server, pid {proc.pid} (data in {data}; log {data / 'demo-server.log'})", flush=True)
    return proc, ClientConfig.load()  # `up` wrote the admin's key into the CLI config if it made one


# -- watching --------------------------------------------------------------------------------------------------


@dataclass
class Watch:
    """What the demo has seen: uploads, events, finished activations."""

    t0: float = field(default_factory=time.time)
    closed: dict[str, float] = field(default_factory=dict)  # uploaded path -> when its PUT completed (s)
    activations: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(f"{time.time() - self.t0:7.3f}s  {text}\n")
            sys.stdout.flush()


def follow_events(config: ClientConfig, base: str, watch: Watch, stop: threading.Event) -> EventStream:
    stream = EventStream(config, keepalive=2.0)
    stream.subscribe_inotify(base, flags=["IN_CLOSE_WRITE", "IN_MOVED_TO", "IN_DELETE"], recursive=True)

    def run() -> None:
        while not stop.is_set():
            try:
                ev = stream.next(timeout=0.2)
            except HeadraceClientError:
                return
            if ev is None or ev.type == "SYSTEM":
                continue
            payload = ev.payload
            if isinstance(payload, dict) and payload.get("name"):
                watch.events += 1
                flags = ",".join(payload.get("mask") or []) or ev.type
                watch.say(f"event       {flags:<15} {payload['name']}")

    threading.Thread(target=run, name="demo-events", daemon=True).start()
    return stream


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return str(result["error"])[:100]
    text = json.dumps(result, separators=(",", ":"))
    return text if len(text) <= 100 else text[:97] + "..."


def poll_activations(fn: Functions, since_ms: int, watch: Watch) -> int:
    """Record newly finished activations (printing each); the number still queued or running."""
    pending = 0
    skip = 0
    while True:
        page = fn.activations(limit=200, skip=skip, since=since_ms, docs=True)
        for a in page:
            if a.get("state") not in FINAL_STATES:
                pending += 1
                continue
            if a["activationId"] in watch.activations:
                continue
            watch.activations[a["activationId"]] = a
            resp = a.get("response") or {}
            status = "ok" if resp.get("success") else resp.get("status", "failed")
            brief = _brief(resp.get("result") or {})
            watch.say(f"activation  {a['name']:<15} {status:<6} {a.get('duration', 0):5d} ms  {brief}")
        if len(page) < 200:
            return pending
        skip += 200


# -- the summary -----------------------------------------------------------------------------------------------


def input_of(result: dict[str, Any]) -> str | None:
    for key in ("input", "file", "upserted", "cached"):
        value = result.get(key)
        if isinstance(value, str):
            return posixpath.basename(value)
    return None


def latencies(watch: Watch) -> dict[str, list[float]]:
    """Per function: ms from a file's PUT completing to the end of the activation it fired."""
    closed = {posixpath.basename(p): t for p, t in watch.closed.items()}
    out: dict[str, list[float]] = {}
    for a in watch.activations.values():
        name = input_of((a.get("response") or {}).get("result") or {})
        if name in closed and a.get("end"):
            out.setdefault(a["name"], []).append(a["end"] - closed[name] * 1000)
    return out


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.0f}"


def demo(
    files: Annotated[int, typer.Option("--files", help="Sequence files in the run (all aggregators together)")] = 20,
    data: Annotated[Path, typer.Option("--data", help="Data directory, if the embedded server is started")] = Path(
        "headrace-data"
    ),
    base: Annotated[str, typer.Option(help="Where the experiment's data goes")] = "/exp/SPB/202601/p700000",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run's work to finish")] = 300.0,
    catalogue: Annotated[Path | None, typer.Option(help="Catalogue database (default $HEADRACE_CATALOGUE)")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache directory (default the example's)")] = None,
    keep: Annotated[bool, typer.Option("--keep/--stop", help="Leave a server the demo started running")] = False,
) -> None:
    """Write a synthetic XFEL run and watch headrace process it: events, activations, results."""
    if files < 1:
        usage_error("--files must be at least 1")
    if not base.startswith("/") or base.rstrip("/") == "":
        usage_error(f"--base must be an absolute directory, not {base!r}")
    base = base.rstrip("/")
    require("numpy", "h5py", needed_for="headrace demo (it writes the run's HDF5 files)")
    examples = examples_dir()
    catalogue, cache_dir = state_dirs(examples, catalogue, cache_dir)
    proc, config = ensure_server(data, binds=[catalogue.parent, cache_dir])
    try:
        code = _run(config, examples, files, base, timeout, catalogue, cache_dir)
    finally:
        if proc is not None and not keep:
            proc.terminate()
            proc.wait(30)
    raise typer.Exit(code)


def _run(
    config: ClientConfig,
    examples: Path,
    n_files: int,
    base: str,
    timeout: float,
    catalogue: Path | None,
    cache_dir: Path | None,
) -> int:
    from headrace.xfel import generate  # numpy and h5py: only when a demo runs

    catalogue = (catalogue or default_catalogue()).expanduser().resolve()
    specs = load_deploy_file(examples / DEPLOY_FILE)
    for f in specs:
        if "catalogue" in f.params:
            f.params["catalogue"] = str(catalogue)
        if "cache_dir" in f.params and cache_dir is not None:
            f.params["cache_dir"] = str(cache_dir.expanduser().resolve())
    cache = Path(next(f.params["cache_dir"] for f in specs if "cache_dir" in f.params)).expanduser()
    with Client(config) as client:
        fn = Functions(client)
        print(f"deploying {examples / DEPLOY_FILE}", flush=True)
        for f in specs:
            changes = fn.deploy(f)
            print(f"  {f.name}: " + ", ".join(f"{c.kind} {c.status}" for c in changes), flush=True)
        run = next_run(client, base)
        spec = generate.spec_for_files(n_files, run=run)
        expect = generate.expected(spec)
        raw_dir = posixpath.dirname(generate.file_path(base, spec.name("RAW", "DA01", 0)))
        proc_dir = posixpath.dirname(generate.file_path(base, spec.name("CORR", "JNGFR01", 0)))
        watch = Watch()
        since_ms = int(watch.t0 * 1000) - 1000
        stop = threading.Event()
        client.mkdir(raw_dir, parents=True)
        stream = follow_events(config, base, watch, stop)
        total = 0
        try:
            watch.say(f"writing run {run} ({n_files} files) into {base}")

            def closed(path: str, size: int) -> None:
                nonlocal total
                watch.closed[path] = time.time()
                total += size
                watch.say(f"closed      {posixpath.basename(path)} ({size / 1e6:.1f} MB)")

            generate.upload_run(client, base, spec, limit=n_files, on_closed=closed)
            written_s = time.time() - watch.t0
            wait_quiet(fn, since_ms, watch, at_least=3 * n_files, timeout=timeout)
        finally:
            stop.set()
            stream.close()
        return report(client, watch, expect, total, written_s, raw_dir, proc_dir, catalogue, cache)


def wait_quiet(fn: Functions, since_ms: int, watch: Watch, *, at_least: int, timeout: float) -> bool:
    """Until at least `at_least` activations have finished (every file fires a summary or an integration,
    the catalogue and the cache; the results' own files fire more) and none has been queued or running for
    QUIET_SECONDS. False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        pending = poll_activations(fn, since_ms, watch)
        if pending or len(watch.activations) < at_least:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS:
            return True
        time.sleep(0.2)
    watch.say(f"gave up waiting after {timeout:.0f} s")
    return False


def next_run(client: Client, base: str) -> int:
    """One more than the highest run number under BASE/raw (42 for the first)."""
    try:
        names = [e.name for e in client.listdir(f"{base}/raw")]
    except HeadraceClientError as exc:
        if exc.status == 404:
            return 42
        raise
    runs = [int(n[1:]) for n in names if n.startswith("r") and n[1:].isdigit()]
    return max(runs, default=41) + 1


def report(
    client: Client,
    watch: Watch,
    expect: Any,
    total_bytes: int,
    written_s: float,
    raw_dir: str,
    proc_dir: str,
    catalogue: Path,
    cache: Path,
) -> int:
    """Print the summary table and what was checked; 0 when every check held."""
    problems: list[str] = []
    by_action: dict[str, dict[str, int]] = {}
    for a in watch.activations.values():
        status = (a.get("response") or {}).get("status", "?")
        counts = by_action.setdefault(a["name"], {})
        counts[status] = counts.get(status, 0) + 1
        if status != "success":
            problems.append(f"{a['name']} {a['activationId']}: {status}")
    lat = latencies(watch)
    print()
    print(f"files written: {len(watch.closed)} ({total_bytes / 1e6:.1f} MB in {written_s:.1f} s)")
    print(f"events seen:   {watch.events}")
    print()
    rows = []
    for name, counts in sorted(by_action.items()):
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        rows.append((name, sum(counts.values()), statuses, _ms(lat.get(name, []), 0.5), _ms(lat.get(name, []), 1.0)))
    table(("function", "activations", "by status", "close->done p50 ms", "max ms"), rows)
    print()
    uploaded = set(watch.closed)
    outputs = []
    if client.probe(proc_dir) is not None:
        outputs = [e.path for e in client.tree(proc_dir, checksum=False) if not e.is_dir and e.path not in uploaded]
    azint = [p for p in outputs if posixpath.basename(p).startswith("AZINT-")]
    corr = [p for p in uploaded if posixpath.basename(p).startswith("CORR-")]
    print(f"outputs:       {len(outputs)} files in {proc_dir} ({len(azint)} AZINT-*.h5, run-summary.json, preview.png)")
    if len(azint) != len(corr):
        problems.append(f"{len(azint)} AZINT files for {len(corr)} CORR files")
    summary = _json(client, f"{proc_dir}/run-summary.json")
    if summary is None:
        problems.append("no run-summary.json")
    else:
        for key, want in (("trains", expect.run.trains), ("missingTrains", list(expect.run.missing_trains))):
            if summary.get(key) != want:
                problems.append(f"run summary {key} = {summary.get(key)!r}, expected {want!r}")
        trains = f"{summary.get('trains')} trains, {summary.get('firstTrainId')}..{summary.get('lastTrainId')}"
        energy = summary.get("meanPulseEnergy") or 0.0
        print(f"run summary:   {trains}, missing {summary.get('missingTrains')}, mean pulse energy {energy:.1f} uJ")
    ready = summary_ready_ms(watch, expect.run.trains)
    if ready is not None:
        print(f"last file closed -> complete run summary written: {ready:.0f} ms")
    records = {r["datablocks"][0]["path"] for r in search_records(catalogue)} if catalogue.exists() else set()
    print(f"catalogue:     {len(uploaded & records)} of the run's files have a record ({catalogue})")
    if not uploaded <= records:
        problems.append(f"{len(uploaded - records)} files have no catalogue record")
    cached = [p for p in uploaded if (cache / p.lstrip("/")).is_file()]
    print(f"cache:         {len(cached)} of the run's files are cached ({cache})")
    if len(cached) != len(uploaded):
        problems.append(f"{len(uploaded) - len(cached)} files are not in the cache")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("demo: every activation succeeded and every result checked" if not problems else
          f"demo: {len(problems)} problems", flush=True)  # fmt: skip
    return 0 if not problems else 1


def summary_ready_ms(watch: Watch, trains: int) -> float | None:
    """From the last file's PUT completing to the end of the first summary activation that saw all `trains`."""
    last = max(watch.closed.values(), default=None)
    ends = [
        a["end"]
        for a in watch.activations.values()
        if a["name"] == "xfel-summary" and ((a.get("response") or {}).get("result") or {}).get("runTrains") == trains
    ]
    return (min(ends) - last * 1000) if ends and last else None


def _json(client: Client, path: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(client.read_bytes(path)))
    except (HeadraceClientError, ValueError):
        return None
