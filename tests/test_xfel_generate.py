"""headrace.xfel.generate: EuXFEL-format runs whose contents are known, checked with EuXFEL's own reader."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from extra_data import H5File, RunDirectory
from extra_data.components import JUNGFRAU
from extra_data.validation import RunValidator

from harness import Server
from headrace.client import Client, ClientConfig
from headrace.xfel.generate import (
    AGIPD_SOURCE,
    JF_CORR_SOURCE,
    JF_RAW_SOURCE,
    XGM_OUTPUT,
    XGM_SOURCE,
    RunSpec,
    expected,
    file_path,
    proposal_dir,
    run_files,
    spec_for_files,
    upload_run,
    write_run,
)

SPEC = RunSpec(agipd=True)  # 2 sequences of 10 trains; missing offsets 5, 14, 15; a detector gap at 8

pytestmark = pytest.mark.db_independent("the generator's files; its one upload test needs any server")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("r0042")
    write_run(SPEC, directory)
    return directory


def test_the_defaults_are_what_the_docs_say() -> None:
    answer = expected(SPEC).run
    first = SPEC.first_train_id
    assert answer.missing_trains == (first + 5, first + 14, first + 15)
    assert answer.trains == 20
    assert answer.first_train_id == first and answer.last_train_id == first + 22
    assert answer.detector_gaps == (first + 8,)
    assert [f.name for f in expected(SPEC).files] == [
        "RAW-R0042-DA01-S00000.h5",
        "RAW-R0042-JNGFR01-S00000.h5",
        "RAW-R0042-AGIPD00-S00000.h5",
        "CORR-R0042-JNGFR01-S00000.h5",
        "RAW-R0042-DA01-S00001.h5",
        "RAW-R0042-JNGFR01-S00001.h5",
        "RAW-R0042-AGIPD00-S00001.h5",
        "CORR-R0042-JNGFR01-S00001.h5",
    ]


def test_the_run_reads_in_extra_data_as_expected(run_dir: Path) -> None:
    answer = expected(SPEC)
    run = RunDirectory(str(run_dir), parallelize=False)
    assert list(run.train_ids) == list(answer.run.train_ids)
    assert set(run.all_sources) == set(answer.run.sources) == {
        XGM_SOURCE, XGM_OUTPUT, JF_RAW_SOURCE, JF_CORR_SOURCE, AGIPD_SOURCE,
    }  # fmt: skip
    for source, entries in answer.run.sources.items():
        assert run[source].keys() == answer.run.keys[source], source
        counts = run[source].data_counts(labelled=False)
        assert int(counts.sum()) == entries, source
    jf_counts = run[JF_CORR_SOURCE].data_counts()
    assert sorted(int(t) for t in jf_counts.index[jf_counts.values == 0]) == list(answer.run.detector_gaps)
    present = set(int(t) for t in run.train_ids)
    assert not present & set(answer.run.missing_trains)
    assert present | set(answer.run.missing_trains) == set(
        range(answer.run.first_train_id, answer.run.last_train_id + 1)
    )
    meta = run.run_metadata()
    assert (int(meta["proposalNumber"]), int(meta["runNumber"])) == (700000, 42)
    assert str(meta["dataFormatVersion"]).startswith("1.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jf = JUNGFRAU(run, raw=False)
    frames = jf.get_array("data.adc")
    assert frames.shape == (1, answer.run.trains - len(answer.run.detector_gaps), SPEC.frames_per_train, 256, 256)
    assert frames.dtype == np.float32
    assert answer.run.jungfrau_frames == frames.shape[1] * frames.shape[2]
    RunValidator(str(run_dir)).validate()  # EXtra-data's own checks of the index: raises on any problem


def test_each_file_holds_what_expected_says(run_dir: Path) -> None:
    answer = expected(SPEC)
    for fa in answer.files:
        f = H5File(str(run_dir / fa.name))
        assert [int(t) for t in f.train_ids] == list(fa.train_ids), fa.name
        assert (fa.trains, fa.first_train_id, fa.last_train_id) == (len(f.train_ids), f.train_ids[0], f.train_ids[-1])
        assert set(f.all_sources) == set(fa.sources), fa.name
        for source, entries in fa.sources.items():
            assert f[source].keys() == fa.keys[source]
            assert int(f[source].data_counts(labelled=False).sum()) == entries, (fa.name, source)
        access = f.files[0]
        assert (access.data_category, access.run, access.aggregator, access.sequence) == (
            fa.category, 42, fa.aggregator, fa.sequence,
        )  # fmt: skip
        meta = f.run_metadata()
        assert (int(meta["proposalNumber"]), int(meta["runNumber"]), int(meta["sequenceNumber"])) == (
            700000, 42, fa.sequence,
        )  # fmt: skip
        assert meta["dataFormatVersion"] == "1.2"
        # the sequence files of a run follow each other without overlap
    by_aggregator: dict[tuple[str, str], list[int]] = {}
    for fa in answer.files:
        by_aggregator.setdefault((fa.category, fa.aggregator), []).extend(fa.train_ids)
    for ids in by_aggregator.values():
        assert ids == list(answer.run.train_ids)


def test_xgm_pulse_energies_have_the_expected_mean(run_dir: Path) -> None:
    answer = expected(SPEC)
    run = RunDirectory(str(run_dir), parallelize=False)
    energies = run[XGM_OUTPUT, "data.intensityTD"].ndarray()
    assert energies.shape == (answer.run.trains, 1000)
    assert np.all(energies[:, SPEC.pulses_per_train :] == 1.0)  # unused slots, as the XGM writes them
    pulses = energies[:, : SPEC.pulses_per_train].astype(np.float64)
    assert pulses.mean() == pytest.approx(answer.run.mean_pulse_energy_uj, rel=1e-12)
    standard_error = SPEC.pulse_energy_rms_uj / math.sqrt(pulses.size)
    assert abs(answer.run.mean_pulse_energy_uj - SPEC.pulse_energy_uj) < 4 * standard_error
    flux = run[XGM_SOURCE, "pulseEnergy.photonFlux"].ndarray()
    np.testing.assert_allclose(flux, pulses.mean(axis=1), rtol=1e-6)
    for fa in answer.files:
        if fa.aggregator == "DA01":
            data = H5File(str(run_dir / fa.name))[XGM_OUTPUT, "data.intensityTD"].ndarray()
            assert data[:, : SPEC.pulses_per_train].astype(np.float64).mean() == pytest.approx(
                fa.mean_pulse_energy_uj, rel=1e-12
            )


def test_rings_are_where_the_geometry_puts_them(run_dir: Path) -> None:
    """The mean corrected frame's radial profile, binned by the distance of each pixel centre from the beam
    (numpy only, independent of pyFAI), peaks at each ring's radius within half a pixel."""
    answer = expected(SPEC)
    geo = answer.geometry
    wavelength_a = geo.wavelength_m * 1e10
    for ring in answer.rings:  # Bragg's law and a flat detector
        assert ring.two_theta_deg == pytest.approx(math.degrees(2 * math.asin(wavelength_a / (2 * ring.d_angstrom))))
        assert ring.radius_px * geo.pixel_size_m == pytest.approx(
            geo.distance_m * math.tan(math.radians(ring.two_theta_deg))
        )
        assert ring.q_inv_nm == pytest.approx(
            4 * math.pi * math.sin(math.radians(ring.two_theta_deg / 2)) / (wavelength_a / 10)
        )
    assert [r.hkl for r in answer.rings] == ["100", "110", "111", "200", "210", "211"]
    frames, good = [], None
    for fa in answer.files:
        if fa.category == "CORR":
            with h5py.File(run_dir / fa.name) as f:
                frames.append(f[f"INSTRUMENT/{JF_CORR_SOURCE}/data/adc"][:].reshape(-1, 256, 256))
                good = f[f"INSTRUMENT/{JF_CORR_SOURCE}/data/mask"][0, 0] == 0
    assert good is not None
    assert int(np.count_nonzero(~good)) == answer.bad_pixels
    mean = np.concatenate(frames).mean(axis=0)
    rows, cols = np.indices(mean.shape)
    radius = np.hypot(rows + 0.5 - geo.beam_center_px[0], cols + 0.5 - geo.beam_center_px[1])
    step = 0.1
    bins = np.floor(radius[good] / step).astype(int)
    total = np.bincount(bins, weights=mean[good])
    count = np.bincount(bins)
    for ring in answer.rings:
        if ring.arc_fraction < 0.05:
            continue  # too few pixels for this simple profile
        window = np.arange(int((ring.radius_px - 2) / step), int((ring.radius_px + 2) / step))
        profile = total[window] / np.maximum(count[window], 1)
        # a centroid over ±1.5 px of the maximum
        top = int(np.argmax(np.convolve(profile, np.ones(5) / 5, mode="same")))
        around = slice(max(top - 15, 0), top + 16)
        weights = np.clip(profile[around] - profile.min(), 0, None)
        found = float(np.sum(weights * (window[around] + 0.5) * step) / np.sum(weights))
        assert found == pytest.approx(ring.radius_px, abs=0.5), ring.hkl


def test_raw_frames_correct_to_the_corrected_ones(run_dir: Path) -> None:
    answer = expected(SPEC)
    with (
        h5py.File(run_dir / "RAW-R0042-JNGFR01-S00001.h5") as raw,
        h5py.File(run_dir / "CORR-R0042-JNGFR01-S00001.h5") as corr,
    ):
        adc = raw[f"INSTRUMENT/{JF_RAW_SOURCE}/data/adc"][:]
        photons = corr[f"INSTRUMENT/{JF_CORR_SOURCE}/data/adc"][:]
        good = corr[f"INSTRUMENT/{JF_CORR_SOURCE}/data/mask"][:] == 0
    assert adc.dtype == np.uint16
    recovered = np.rint((adc.astype(np.float64) - answer.raw_pedestal_adu) / answer.raw_adu_per_photon)
    np.testing.assert_array_equal(recovered[good], photons[good])
    assert photons[good].sum() > 0


def test_same_seed_same_bytes_other_seed_other_data() -> None:
    spec = RunSpec(sequences=1, trains_per_sequence=4, missing_trains=(1,), detector_gaps=())
    first = list(run_files(spec))
    assert first == list(run_files(spec))
    other = list(run_files(replace(spec, seed=1)))
    assert [n for n, _ in other] == [n for n, _ in first]
    assert all(a != b for (_, a), (_, b) in zip(first, other, strict=True))
    assert expected(spec).run.mean_pulse_energy_uj != expected(replace(spec, seed=1)).run.mean_pulse_energy_uj


@pytest.mark.parametrize(
    ("missing", "gaps"),
    [((), ()), ((0,), (1,)), ((3, 4, 5, 6), (2, 7)), ((12,), (11,)), ((7, 9), ())],
)
def test_missing_trains_and_gaps_land_where_asked(
    tmp_path: Path, missing: tuple[int, ...], gaps: tuple[int, ...]
) -> None:
    spec = RunSpec(
        sequences=3, trains_per_sequence=4, missing_trains=missing, detector_gaps=gaps, corrected=False,
        frame_shape=(16, 16),
    )  # fmt: skip
    answer = expected(spec)
    first = spec.first_train_id
    ids = [first + o for o in range(12 + len(missing)) if o not in missing]
    assert list(answer.run.train_ids) == ids
    assert answer.run.detector_gaps == tuple(first + g for g in gaps)
    write_run(spec, tmp_path)
    run = RunDirectory(str(tmp_path), parallelize=False)
    assert [int(t) for t in run.train_ids] == ids
    counts = run[JF_RAW_SOURCE].data_counts()
    assert [int(t) for t in counts.index[counts.values == 0]] == [first + g for g in gaps]
    seqs = [[int(t) for t in H5File(str(tmp_path / spec.name("RAW", "DA01", s))).train_ids] for s in range(3)]
    assert seqs == [ids[0:4], ids[4:8], ids[8:12]]
    inner = [t for t in range(ids[0], ids[-1] + 1) if t not in ids]
    assert list(answer.run.missing_trains) == inner


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        expected(RunSpec(missing_trains=(2,), detector_gaps=(2,)))  # a gap in a train never recorded
    with pytest.raises(ValueError):
        expected(RunSpec(missing_trains=(-1,)))
    with pytest.raises(ValueError):
        expected(RunSpec(sequences=0))


def test_paths_follow_euxfel_layout() -> None:
    assert proposal_dir(RunSpec()) == "/exp/SPB/202601/p700000"
    base = proposal_dir(RunSpec())
    assert file_path(base, "RAW-R0042-DA01-S00003.h5") == "/exp/SPB/202601/p700000/raw/r0042/RAW-R0042-DA01-S00003.h5"
    assert file_path(base, "CORR-R0042-JNGFR01-S00000.h5") == (
        "/exp/SPB/202601/p700000/proc/r0042/CORR-R0042-JNGFR01-S00000.h5"
    )
    with pytest.raises(ValueError):
        file_path(base, "notes.txt")
    spec = spec_for_files(20)
    assert spec.sequences == 7 and len(expected(spec).files) == 21
    short = expected(RunSpec(sequences=1, trains_per_sequence=4))  # the default offsets 5, 8, 14, 15: past its end
    assert short.run.train_ids == tuple(range(SPEC.first_train_id, SPEC.first_train_id + 4))
    assert short.run.missing_trains == () and short.run.detector_gaps == ()
    one = expected(RunSpec(sequences=1)).run  # 10 trains: offsets 0..10 but 5; 8 is a gap
    assert one.missing_trains == (SPEC.first_train_id + 5,) and one.detector_gaps == (SPEC.first_train_id + 8,)
    assert one.last_train_id == SPEC.first_train_id + 10


def test_upload_run_puts_complete_files_in_order(server: Server) -> None:
    spec = RunSpec(sequences=2, trains_per_sequence=3, missing_trains=(1,), detector_gaps=(4,))
    base = "/xfel-upload/SPB/202601/p700000"
    config = ClientConfig(door=server.door_url, api=server.api_url, username=server.auth[0], key=server.auth[1])
    client = Client(config)
    paths = upload_run(client, base, spec)
    files = dict(run_files(spec))
    assert paths == [file_path(base, name) for name in files]
    with server.door() as door:
        for path, (name, data) in zip(paths, files.items(), strict=True):
            assert path.endswith(name)
            response = door.get(path)
            assert response.status_code == 200 and response.content == data
    with server.api() as api:
        listing = api.get("/api/v1/namespace/xfel-upload/SPB/202601/p700000/raw/r0042", params={"children": "true"})
        assert sorted(c["fileName"] for c in listing.json()["children"]) == sorted(
            n for n in files if n.startswith("RAW-")
        )
    again = upload_run(client, base, spec)  # existing directories and files are fine
    assert again == paths
