"""examples/xfel/summary.py in-process on a generated run (headrace.xfel.generate): train counts, first and
last train ids, missing trains and sources' entry counts exactly as the generator made them, the mean pulse
energy to float32 precision, whatever order the files' summaries are made in. (It runs through the server in
test_xfel_demo.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

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
    import shutil

    shutil.copytree(store, root)
    ctx = Ctx(DirStorage(root, local=local))
    paths = raw_paths()
    random.Random(1).shuffle(paths)  # activations finish in any order
    for path in paths:
        out = summary.main({"path": path}, ctx)
        assert out["file"] == path.rsplit("/", 1)[1]
    answer = expected(SPEC)
    proc = root / proposal_dir(SPEC).lstrip("/") / "proc" / f"r{SPEC.run:04d}"
    run = json.loads((proc / "run-summary.json").read_text())
    assert run["trains"] == answer.run.trains
    assert (run["firstTrainId"], run["lastTrainId"]) == (answer.run.first_train_id, answer.run.last_train_id)
    assert run["missingTrains"] == list(answer.run.missing_trains)
    raw_sources = {s: n for f in answer.files if f.category == "RAW" for s, n in f.sources.items()}
    totals = {s: answer.run.sources[s] for s in raw_sources}
    assert run["sources"] == totals
    assert run["meanPulseEnergy"] == pytest.approx(answer.run.mean_pulse_energy_uj, rel=1e-6)
    assert (run["proposal"], run["run"]) == (SPEC.proposal, SPEC.run)
    assert len(run["files"]) == len(paths)
    png = (proc / "preview.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    for path in paths:  # one file summary each, with that file's train ids
        name = path.rsplit("/", 1)[1]
        mine = json.loads((proc / "summary" / (name[:-3] + ".json")).read_text())
        assert mine["trainIds"] == list(answer.file(name).train_ids)


def test_other_files_are_skipped() -> None:
    out = summary.main({"path": "/exp/SPB/202601/p700000/proc/r0042/CORR-R0042-JNGFR01-S00000.h5"}, None)
    assert "skipped" in out


def test_a_file_outside_a_raw_run_directory_is_an_error(store: Path) -> None:
    with pytest.raises(ValueError, match="not in a raw/ run directory"):
        summary.proc_dir("/elsewhere/RAW-R0042-DA01-S00000.h5")
