"""`headrace demo --files 5` end to end: with no server running it starts the embedded one, deploys the four
XFEL functions, writes a synthetic run through the door and exits 0 only when every activation succeeded and
every result checked out; the test then looks at those results itself, through the server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from harness import free_port, http
from headrace.cli.catalogue import search_records
from headrace.xfel.generate import expected, spec_for_files

pytestmark = [pytest.mark.slow, pytest.mark.db_independent("`headrace demo` runs its own SQLite server")]
BASE = "/exp/SPB/202601/p700000"


def test_demo_starts_a_server_runs_the_four_functions_and_checks_their_results(tmp_path: Path) -> None:
    door, api = free_port(), free_port()
    env = {
        **os.environ,
        "HEADRACE_CONFIG": str(tmp_path / "cli.json"),
        "HEADRACE_DOOR_URL": f"http://127.0.0.1:{door}",
        "HEADRACE_API_URL": f"http://127.0.0.1:{api}",
        # a directory of its own: the demo binds it into the functions' sandboxes (never the data directory)
        "HEADRACE_CATALOGUE": str(tmp_path / "state" / "catalogue.sqlite"),
        "HEADRACE_CACHE_DIR": str(tmp_path / "cache"),
        "HEADRACE_LOG_LEVEL": "warning",
    }
    for key in ("HEADRACE_USER", "HEADRACE_KEY", "HEADRACE_TOKEN", "HEADRACE_ADMIN_KEY"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "headrace.cli.main",
        "demo",
        "--files",
        "5",
        "--data",
        str(tmp_path / "data"),
        "--keep",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    pid = re.search(r"started the embedded server, pid (\d+)", out.stdout)
    try:
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr
        assert pid is not None, out.stdout[:2000]
        assert "demo: every activation succeeded" in out.stdout
        assert re.search(r"^files written: 5 ", out.stdout, re.M)
        for name in ("xfel-summary", "xfel-catalogue", "xfel-azint", "xfel-cache"):
            assert re.search(rf"^{name}\s+\d+\s+success \d+\s", out.stdout, re.M), name

        # What the demo claims, checked here against the generator's answers for the run it wrote (run 42).
        answer = expected(spec_for_files(5, run=42))
        key = json.loads((tmp_path / "cli.json").read_text())["key"]
        auth = ("admin", key)
        summary = http("GET", f"{env['HEADRACE_DOOR_URL']}{BASE}/proc/r0042/run-summary.json", auth=auth).json()
        assert summary["trains"] == answer.run.trains
        assert summary["missingTrains"] == list(answer.run.missing_trains)
        azint = http("GET", f"{env['HEADRACE_DOOR_URL']}{BASE}/proc/r0042/AZINT-R0042-JNGFR01-S00000.h5", auth=auth)
        assert azint.status_code == 200
        (tmp_path / "azint.h5").write_bytes(azint.content)
        with h5py.File(tmp_path / "azint.h5", "r") as f:
            assert len(f) > 0
        uploaded = [f"{BASE}/raw/r0042/RAW-R0042-DA01-S00000.h5", f"{BASE}/proc/r0042/CORR-R0042-JNGFR01-S00000.h5"]
        records = {r["datablocks"][0]["path"]: r for r in search_records(tmp_path / "state" / "catalogue.sqlite")}
        for path in uploaded:
            assert records[path]["scientificMetadata"]["runNumber"] == 42
            assert (tmp_path / "cache" / path.lstrip("/")).is_file()
        activations = http(
            "GET",
            f"{env['HEADRACE_API_URL']}/api/v1/namespaces/_/activations",
            params={"limit": 200, "docs": "true"},
            auth=auth,
        ).json()
        assert activations and all(a["response"]["success"] for a in activations)
    finally:
        if pid is not None:
            os.kill(int(pid[1]), signal.SIGTERM)
