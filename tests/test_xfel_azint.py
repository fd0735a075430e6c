"""examples/xfel/azint.py, called in-process with a stand-in for ctx whose storage is a directory: the powder
rings it finds are those the generator drew (headrace.xfel.generate's known answers).

Tolerance: each ring's 2θ within one radial bin of the output (≈0.043° for the default 1000 bins over the
frame's 0.3°..43°) and within 0.3 % (its q too); its radius within 0.5 pixel. Every ring that covers at least
3 % of its circumference on the frame must be found (6 rings for the default spec), and nothing else."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from headrace.xfel.generate import Expected, RunSpec, expected, file_path, proposal_dir, run_files, write_run
from xfel_ctx import Ctx, DirStorage, load_example

pytestmark = pytest.mark.db_independent("the function on local files, no server")

AZINT = Path(__file__).resolve().parents[1] / "examples" / "xfel" / "azint.py"
SPEC = RunSpec()
REL_TOLERANCE = 0.003
MIN_ARC = 0.03


azint = load_example("azint")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default run, stored as headrace stores it: RAW-* in raw/r0042, CORR-* in proc/r0042."""
    root = tmp_path_factory.mktemp("store")
    write_run(SPEC, root / proposal_dir(SPEC).lstrip("/"), tree=True)
    return root


def corr_path(seq: int) -> str:
    return file_path(proposal_dir(SPEC), SPEC.name("CORR", "JNGFR01", seq))


def check_rings(answer: Expected, two_theta: np.ndarray, bin_width: float) -> list[str]:
    """Match found peaks to the generator's rings one to one; the rings matched."""
    rings = [r for r in answer.rings if r.arc_fraction >= MIN_ARC]
    assert len(rings) >= 3
    assert len(two_theta) == len(rings), (list(two_theta), [r.two_theta_deg for r in rings])
    for ring, found in zip(rings, sorted(two_theta), strict=True):
        error = abs(found - ring.two_theta_deg)
        assert error <= bin_width, (ring.hkl, found, ring.two_theta_deg)
        assert error <= REL_TOLERANCE * ring.two_theta_deg, ring.hkl
    return [r.hkl for r in rings]


def test_default_geometry_is_the_generators() -> None:
    assert pytest.approx(SPEC.geometry().pyfai()) == azint.DEFAULT_GEOMETRY


def test_finds_the_rings_of_a_corrected_file(store: Path) -> None:
    answer = expected(SPEC)
    ctx = Ctx(DirStorage(store))
    result = azint.main({"path": corr_path(0), "name": SPEC.name("CORR", "JNGFR01", 0)}, ctx)
    out = "/exp/SPB/202601/p700000/proc/r0042/AZINT-R0042-JNGFR01-S00000.h5"
    assert result["output"] == out and ctx.storage.writes == [out]
    fa = answer.file(SPEC.name("CORR", "JNGFR01", 0))
    assert result["frames"] == fa.frames == 18  # 10 trains, one without JUNGFRAU data, 2 frames each
    assert result["trains"] == 9
    with h5py.File(store / out.lstrip("/")) as f:
        radial = f["radial"][:]
        bin_width = float(np.median(np.diff(radial)))
        assert 0.03 < bin_width < 0.05
        hkls = check_rings(answer, f["peaks/two_theta_deg"][:], bin_width)
        assert hkls == ["100", "110", "111", "200", "210", "211"]
        rings = [r for r in answer.rings if r.arc_fraction >= MIN_ARC]
        np.testing.assert_allclose(f["peaks/radius_px"][:], [r.radius_px for r in rings], atol=0.5)
        np.testing.assert_allclose(f["peaks/q_nm"][:], [r.q_inv_nm for r in rings], rtol=REL_TOLERANCE)
        assert result["peaks_2th_deg"] == pytest.approx(list(f["peaks/two_theta_deg"][:]), abs=1e-4)
        # the profile itself: at each ring, well above the background between rings
        intensity = f["intensity"][:]
        for ring in rings:
            at = intensity[np.argmin(abs(radial - ring.two_theta_deg))]
            assert at > 2 * np.median(intensity), ring.hkl
        assert f.attrs["frames"] == 18 and f.attrs["source"] == "SPB_IRDA_JF4M/CORR/JNGFR01:output"
        assert f.attrs["dist"] == pytest.approx(answer.geometry.distance_m)
        tids = [t for t in fa.train_ids if t not in answer.run.detector_gaps]
        assert list(f["train_ids"][:]) == tids
        assert f["intensity_per_train"].shape == (9, radial.size)
        assert list(f["frames_per_train"][:]) == [2] * 9
        # the mean of the trains' profiles is the profile of the mean (every train has the same frame count)
        np.testing.assert_allclose(f["intensity_per_train"][:].mean(axis=0), intensity, rtol=1e-6, atol=1e-9)


def test_q_unit_and_a_file_read_through_the_door(store: Path) -> None:
    """In q (nm⁻¹), and with no local pool file (ctx.storage.read), the second sequence."""
    answer = expected(SPEC)
    ctx = Ctx(DirStorage(store, local=False))
    result = azint.main({"path": corr_path(1), "unit": "q_nm^-1", "npt": 800}, ctx)
    assert result["frames"] == 20
    with h5py.File(store / result["output"].lstrip("/")) as f:
        assert f["radial"].attrs["unit"] == "q_nm^-1"
        q_bin = float(np.median(np.diff(f["radial"][:])))
        rings = [r for r in answer.rings if r.arc_fraction >= MIN_ARC]
        found = f["peaks/q_nm"][:]
        assert len(found) == len(rings)
        for ring, q in zip(rings, found, strict=True):
            assert abs(q - ring.q_inv_nm) <= min(q_bin, REL_TOLERANCE * ring.q_inv_nm), ring.hkl


def test_a_wrong_geometry_is_noticed(store: Path, tmp_path: Path) -> None:
    """The check has teeth: with the beam centre 4 pixels off, the rings are not where they should be."""
    answer = expected(SPEC)
    wrong = dict(SPEC.geometry().pyfai(), poni1=(SPEC.beam_center_px[0] + 4) * SPEC.pixel_size_m)
    result = azint.main({"path": corr_path(0), "out_dir": "/elsewhere", **wrong}, Ctx(DirStorage(store)))
    assert result["output"] == "/elsewhere/AZINT-R0042-JNGFR01-S00000.h5"
    with pytest.raises(AssertionError):
        check_rings(answer, np.array(result["peaks_2th_deg"]), 0.043)


def test_masked_pixels_are_left_out(store: Path, tmp_path: Path) -> None:
    """Unmasked, the hot pixels make peaks of their own: the mask is what keeps them out."""
    answer = expected(SPEC)
    root = tmp_path / "store"
    source = store / corr_path(0).lstrip("/")
    target = root / corr_path(0).lstrip("/")
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        f["INSTRUMENT/SPB_IRDA_JF4M/CORR/JNGFR01:output/data/mask"][...] = 0
    result = azint.main({"path": corr_path(0)}, Ctx(DirStorage(root)))
    rings = [r for r in answer.rings if r.arc_fraction >= MIN_ARC]
    assert len(result["peaks_2th_deg"]) > len(rings)


def test_output_paths_follow_the_run_layout() -> None:
    assert azint.output_path("/exp/SPB/202601/p700000/raw/r0042/CORR-R0042-JNGFR01-S00003.h5") == (
        "/exp/SPB/202601/p700000/proc/r0042/AZINT-R0042-JNGFR01-S00003.h5"
    )
    assert azint.output_path("/exp/SPB/202601/p700000/proc/r0042/CORR-R0042-JNGFR01-S00003.h5") == (
        "/exp/SPB/202601/p700000/proc/r0042/AZINT-R0042-JNGFR01-S00003.h5"
    )
    assert azint.output_path("/scratch/CORR-R0007-JNGFR02-S00000.h5") == "/scratch/AZINT-R0007-JNGFR02-S00000.h5"


def test_other_files_are_skipped(store: Path) -> None:
    ctx = Ctx(DirStorage(store))
    raw = file_path(proposal_dir(SPEC), SPEC.name("RAW", "JNGFR01", 0))
    assert azint.main({"path": raw}, ctx) == {"skipped": raw}
    assert ctx.storage.writes == []
    with pytest.raises(ValueError):
        azint.main({}, ctx)


def test_makes_the_proc_directory_when_missing(tmp_path: Path) -> None:
    """A CORR file in raw/ (as a DAQ with online correction would put it): the result goes to proc/, which
    does not exist yet."""
    spec = RunSpec(sequences=1, trains_per_sequence=3, missing_trains=(), detector_gaps=())
    name = spec.name("CORR", "JNGFR01", 0)
    data = dict(run_files(spec))[name]
    path = f"/exp/SPB/202601/p700000/raw/r0042/{name}"
    (tmp_path / path.lstrip("/")).parent.mkdir(parents=True)
    (tmp_path / path.lstrip("/")).write_bytes(data)
    started = time.perf_counter()
    result = azint.main({"path": path}, Ctx(DirStorage(tmp_path)))
    assert time.perf_counter() - started < 60  # only catches a hang (or pyFAI falling back to a slow path)
    assert result["output"] == "/exp/SPB/202601/p700000/proc/r0042/AZINT-R0042-JNGFR01-S00000.h5"
    assert (tmp_path / result["output"].lstrip("/")).is_file()
    assert result["frames"] == 6
    assert len(result["peaks_2th_deg"]) >= 3


def test_energy_parameter_sets_the_wavelength() -> None:
    geo: dict[str, Any] = azint.geometry({"energy": 9.0})
    assert geo["wavelength"] == pytest.approx(12.398419843320026 / 9.0 * 1e-10)
    assert azint.geometry({"energy": 9.0, "wavelength": 1e-10})["wavelength"] == 1e-10


@pytest.mark.parametrize("unit", ["2th_deg", "q_nm^-1"])
def test_train_profiles_are_pyfai_integrate1d_of_each_train(unit: str) -> None:
    """The trains' profiles, made as one sparse product, are what integrate1d gives for each train's mean
    frame, each train with pixels of its own left out."""
    rng = np.random.default_rng(1)
    ai = azint.integrator(azint.geometry({}), (256, 256))
    sums = []
    for t in range(4):
        frames = np.full((256, 256), 2)
        frames[:, 7] = 0
        frames[rng.integers(0, 256, 30), rng.integers(0, 256, 30)] = 0
        sums.append((t, rng.poisson(5, (256, 256)).astype(float) * 2, frames))
    centres = ai.array_from_unit(shape=(256, 256), typ="center", unit=unit, scale=True)
    radial_range = (float(centres.min()), float(centres.max()))
    rows = azint._profiles(ai, sums, 700, unit, radial_range, False)
    each = [azint._integrate(ai, t, n, 700, unit, radial_range, False).intensity for _, t, n in sums]
    np.testing.assert_allclose(rows, np.array(each), rtol=1e-6, atol=1e-9)
