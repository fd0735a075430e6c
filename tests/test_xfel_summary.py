"""examples/xfel/summary.py in-process on a generated run (headrace.xfel.generate): train counts, first and
last train ids, missing trains and sources' entry counts exactly as the generator made them, the mean pulse
energy to float32 precision, whatever order the files' summaries are made in. (It runs through the server in
test_xfel_demo.py.)"""

from __future__ import annotations

import json
import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import pytest

from headrace.functions.storage import StorageConflict
from headrace.xfel.generate import RunSpec, expected, file_path, proposal_dir, run_files, write_run
from xfel_ctx import Ctx, DirStorage, load_example

pytestmark = pytest.mark.db_independent("the function on local files, no server")

summary = load_example("summary")
SPEC = RunSpec(sequences=3, trains_per_sequence=12, missing_trains=(3, 17, 18, 30), seed=7)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_run(SPEC, root / proposal_dir(SPEC).lstrip("/"), tree=True)
    return root


def raw_paths() -> list[str]:
    return [file_path(proposal_dir(SPEC), n) for n, _ in run_files(SPEC) if n.startswith("RAW-")]


@pytest.mark.parametrize("local", [True, False], ids=["pool-file", "through-read"])
def test_run_summary_has_the_generated_answers(store: Path, tmp_path: Path, local: bool) -> None:
    root = tmp_path / "s"
    shutil.copytree(store, root)
    ctx = Ctx(DirStorage(root, local=local))
    paths = raw_paths()
    random.Random(1).shuffle(paths)  # activations finish in any order
    for path in paths:
        out = summary.main({"path": path}, ctx)
        assert out["file"] == path.rsplit("/", 1)[1]
    answer = expected(SPEC)
    proc = root / proposal_dir(SPEC).lstrip("/") / "proc" / f"r{SPEC.run:04d}"
    check_run(json.loads((proc / "run-summary.json").read_text()), len(paths))
    png = (proc / "preview.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    per_file = json.loads((proc / "run-summary.json").read_text())["perFile"]
    assert sorted(per_file) == sorted(p.rsplit("/", 1)[1] for p in paths)
    for name, entry in per_file.items():  # each file's part, with that file's train ids
        trains = [t for first, last in entry["trains"] for t in range(first, last + 1)]
        assert trains == list(answer.file(name).train_ids)
    assert not (proc / "summary").exists()  # one object for the run, none per file


def check_run(run: dict[str, Any], files: int) -> None:
    """The run summary says what the generator made."""
    answer = expected(SPEC)
    assert run["trains"] == answer.run.trains
    assert (run["firstTrainId"], run["lastTrainId"]) == (answer.run.first_train_id, answer.run.last_train_id)
    assert run["missingTrains"] == list(answer.run.missing_trains)
    raw_sources = {s: n for f in answer.files if f.category == "RAW" for s, n in f.sources.items()}
    totals = {s: answer.run.sources[s] for s in raw_sources}
    assert run["sources"] == totals
    assert run["meanPulseEnergy"] == pytest.approx(answer.run.mean_pulse_energy_uj, rel=1e-6)
    assert (run["proposal"], run["run"]) == (SPEC.proposal, SPEC.run)
    assert len(run["files"]) == files


def test_other_files_are_skipped() -> None:
    out = summary.main({"path": "/exp/SPB/202601/p700000/proc/r0042/CORR-R0042-JNGFR01-S00000.h5"}, None)
    assert "skipped" in out


def test_a_file_outside_a_raw_run_directory_is_an_error(store: Path) -> None:
    with pytest.raises(ValueError, match="not in a raw/ run directory"):
        summary.proc_dir("/elsewhere/RAW-R0042-DA01-S00000.h5")


class RacingStorage(DirStorage):
    """DirStorage whose activations all read the run summary before any writes it (a barrier at each
    thread's first read): every conditional write but one per round meets a newer version."""

    def __init__(self, root: Path, parties: int) -> None:
        super().__init__(root)
        self.barrier = threading.Barrier(parties)
        self.first_read = threading.local()
        self.conflicts = 0
        self.lock = threading.Lock()

    def read_tagged(self, path: str) -> tuple[bytes, str] | None:
        found = super().read_tagged(path)
        if path.endswith("/run-summary.json") and not getattr(self.first_read, "done", False):
            self.first_read.done = True
            self.barrier.wait(timeout=120)  # only catches a hang
        return found

    def write(
        self, path: str, data: bytes | str, *, if_match: str | None = None, if_absent: bool = False
    ) -> str | None:
        try:
            return super().write(path, data, if_match=if_match, if_absent=if_absent)
        except StorageConflict:
            with self.lock:
                self.conflicts += 1
            raise


def test_concurrent_and_repeated_activations_give_the_whole_run(store: Path, tmp_path: Path) -> None:
    """The run's files processed at once, one of them twice at the same time (at-least-once delivery): no file
    is lost to a concurrent update, none counts twice, and the preview is the final run summary's. Run once
    more afterwards, a file changes nothing."""
    root = tmp_path / "s"
    shutil.copytree(store, root)
    paths = raw_paths()
    jobs = [*paths, paths[2]]  # the third file twice
    storage = RacingStorage(root, parties=len(jobs))
    ctx = Ctx(storage)
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda p: summary.main({"path": p}, ctx), jobs))
    assert storage.conflicts >= len(jobs) - 1  # all but one lost the first round
    assert max(r["runTrains"] for r in results) == expected(SPEC).run.trains
    proc = root / proposal_dir(SPEC).lstrip("/") / "proc" / f"r{SPEC.run:04d}"
    check_run(json.loads((proc / "run-summary.json").read_text()), len(paths))
    run_file = proc / "run-summary.json"
    assert (proc / "preview.png").read_bytes() == summary.preview_png(json.loads(run_file.read_text()))

    before = (run_file.stat().st_ino, run_file.read_bytes())
    again = summary.main({"path": paths[0]}, Ctx(DirStorage(root)))
    assert again["runTrains"] == expected(SPEC).run.trains
    assert (run_file.stat().st_ino, run_file.read_bytes()) == before  # found there already: not rewritten


def test_a_run_summary_of_the_first_version_is_taken_over(store: Path, tmp_path: Path) -> None:
    """A run begun under the function's first version (a summary/<file>.json per file, a run summary without
    perFile) goes on from those file summaries."""
    root = tmp_path / "s"
    shutil.copytree(store, root)
    paths = raw_paths()
    proc = root / proposal_dir(SPEC).lstrip("/") / "proc" / f"r{SPEC.run:04d}"
    (proc / "summary").mkdir(parents=True)
    for path in paths[:-1]:
        name = path.rsplit("/", 1)[1]
        with h5py.File(root / path.lstrip("/"), "r") as f:
            old = summary.summarise_file(f, name)
        (proc / "summary" / (name[:-3] + ".json")).write_text(json.dumps(old))
    (proc / "run-summary.json").write_text(json.dumps({"files": [], "trains": 0}))
    summary.main({"path": paths[-1]}, Ctx(DirStorage(root)))
    check_run(json.loads((proc / "run-summary.json").read_text()), len(paths))
