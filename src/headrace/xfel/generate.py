"""European XFEL-format runs with known answers: what a DAQ writes, small enough to make in a test.

The files have the layout EuXFEL's DAQ writes and EXtra-data reads (data format 1.2): `INDEX/trainId`
(with `flag`, `timestamp`, `origin`) and per source `INDEX/<source>/first|count` (CONTROL) or
`INDEX/<source>/<group>/first|count` (INSTRUMENT); `CONTROL/<source>/<key>/value|timestamp`, one entry per
train; `INSTRUMENT/<source>/<group>/<key>` with `trainId`; `RUN/<source>/<key>/value|timestamp`, the values at
the start of the run; and `METADATA`: `proposalNumber`, `runNumber`, `sequenceNumber`, `dataFormatVersion`,
`creationDate`, `updateDate`, `daqLibrary`, `karaboFramework`, `runType`, `sample`, and the source list
`dataSources/dataSourceId|root|deviceId`.

A run is split per aggregator into sequence files of `trains_per_sequence` consecutive trains each:

- `RAW-R0042-DA01-S00000.h5`: the XGM, `SA1_XTD2_XGM/XGM/DOOCS` (CONTROL: `pulseEnergy/photonFlux`,
  `pulseEnergy/wavelengthUsed`, `beamPosition/ixPos|iyPos`) and `SA1_XTD2_XGM/XGM/DOOCS:output` with
  `data.intensityTD` (1000 values per train: the first `pulses_per_train` are pulse energies in µJ, the rest
  1.0, as the XGM writes them);
- `RAW-R0042-JNGFR01-S00000.h5`: JUNGFRAU raw frames, `SPB_IRDA_JF4M/DET/JNGFR01:daqOutput`, `data.adc`
  (uint16), with `data.memoryCell`, `data.frameNumber`, `data.timestamp`;
- `CORR-R0042-JNGFR01-S00000.h5`: the same frames corrected, `SPB_IRDA_JF4M/CORR/JNGFR01:output`, `data.adc`
  (float32, photons) and `data.mask` (uint32, 0 = good);
- `RAW-R0042-AGIPD00-S00000.h5` (only with `agipd=True`): one AGIPD module, `SPB_DET_AGIPD1M-1/DET/0CH0:xtdf`,
  `image.data` (uint16, 2 x 512 x 128 per frame).

JUNGFRAU data has one entry per train of shape (frames_per_train, rows, cols), as the real detector's memory
cells. The frames show the powder rings of LaB6 (NIST SRM 660c, a = 4.156826 Å) on a flat detector at
`distance_m` perpendicular to the beam, with `pixel_size_m` pixels and the beam at `beam_center_px`: the
rings' exact 2θ, q and radius in pixels are in `expected(spec).rings`, and `expected(spec).geometry` is
enough for pyFAI. Each pixel's mean is a background plus Gaussian rings in 2θ, scaled by the train's mean
pulse energy over `pulse_energy_uj` (no solid-angle or polarisation factor: integrate with
`correctSolidAngle=False`); the count is drawn from a Poisson law. A dead column (0 photons) and a few hot pixels
(5000 photons) are flagged in `data.mask`. Raw ADC values are `raw_pedestal_adu + photons * raw_adu_per_photon`
plus a little Gaussian noise, so `round((adc - pedestal) / gain)` gives back the corrected photons.

The run holds `sequences * trains_per_sequence` trains: the train ids from `first_train_id` on, but for
`missing_trains` (offsets from `first_train_id`), which no file has, as when the DAQ loses trains;
`detector_gaps` (offsets too) are trains that every file lists but where JUNGFRAU has no data (INDEX count 0).
Everything comes from `seed`: the same spec gives the same bytes.

Where runs live in headrace (EuXFEL's layout, with `/exp` for `/gpfs/exfel/exp`)::

    /exp/<INSTRUMENT>/<cycle>/p<proposal>/              proposal_dir(spec), e.g. /exp/SPB/202601/p700000
        raw/r0042/RAW-R0042-<aggregator>-S00000.h5      what the DAQ writes (RAW-*)
        proc/r0042/CORR-R0042-JNGFR01-S00000.h5         corrected detector data (CORR-*), as calibration writes it
        proc/r0042/<KIND>-R0042-<aggregator>-S00000.h5  what functions derive from a file of the run, e.g. AZINT-*

A function that processes `.../raw/r0042/X-R0042-AGG-S00001.h5` or `.../proc/r0042/X-R0042-AGG-S00001.h5`
writes `.../proc/r0042/<KIND>-R0042-AGG-S00001.h5`. `file_path(base, name)` gives a file's place.

    spec = RunSpec(sequences=3, missing_trains=(5,), seed=1)     # or spec_for_files(20)
    for name, data in run_files(spec): ...                        # the files, in the order they are closed
    write_run(spec, tmp_path)                                     # or into a directory
    upload_run("http://127.0.0.1:2880", token, proposal_dir(spec), spec)   # or through the door
    answer = expected(spec)   # .run: trains, missing, sources, mean pulse energy; .files; .rings; .geometry
"""

from __future__ import annotations

import io
import itertools
import math
import posixpath
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from headrace.client import Client

__all__ = [
    "AGIPD_SOURCE",
    "JF_CORR_SOURCE",
    "JF_RAW_SOURCE",
    "XGM_OUTPUT",
    "XGM_SOURCE",
    "Expected",
    "FileAnswer",
    "Geometry",
    "Ring",
    "RunAnswer",
    "RunSpec",
    "expected",
    "file_path",
    "proposal_dir",
    "run_files",
    "spec_for_files",
    "upload_run",
    "write_run",
]

XGM_SOURCE = "SA1_XTD2_XGM/XGM/DOOCS"
XGM_OUTPUT = "SA1_XTD2_XGM/XGM/DOOCS:output"
JF_RAW_SOURCE = "SPB_IRDA_JF4M/DET/JNGFR01:daqOutput"
JF_CORR_SOURCE = "SPB_IRDA_JF4M/CORR/JNGFR01:output"
AGIPD_SOURCE = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"

#: h·c in keV·Å: λ[Å] = HC_KEV_ANGSTROM / E[keV].
HC_KEV_ANGSTROM = 12.398419843320026
#: LaB6's cubic lattice constant (NIST SRM 660c), Å. Every (h, k, l) reflects.
LAB6_A_ANGSTROM = 4.156826
CALIBRANT = "LaB6 (NIST SRM 660c)"
#: Peak heights of the rings relative to the strongest, by order of 2θ (chosen for the tests, not structure
#: factors); rings beyond the list have the last value.
RING_HEIGHTS = (0.6, 1.0, 0.45, 0.3, 0.55, 0.35, 0.2, 0.4, 0.3, 0.25, 0.15, 0.2)
XGM_SLOTS = 1000
FORMAT_VERSION = "1.2"
#: A hot pixel's corrected value (photons), and a dead one's.
HOT_VALUE = 5000.0
N_HOT = 16
TRAIN_NS = 100_000_000  # 10 Hz

_VLEN = h5py.special_dtype(vlen=bytes)
_XGM_CONTROL = ("beamPosition/ixPos", "beamPosition/iyPos", "pulseEnergy/photonFlux", "pulseEnergy/wavelengthUsed")
_JF_RAW_KEYS = ("adc", "frameNumber", "memoryCell", "timestamp")
_JF_CORR_KEYS = ("adc", "frameNumber", "mask", "memoryCell")
_AGIPD_KEYS = ("cellId", "data", "length", "pulseId", "status")


# -- the spec and its answers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """A flat detector perpendicular to the beam, as pyFAI describes it (no tilts). The centre of pixel
    (i, j) is at ((i + 0.5) · pixel, (j + 0.5) · pixel) from the frame's corner; `poni1` (rows) and `poni2`
    (columns) are where the beam hits, in metres from that corner."""

    distance_m: float
    energy_kev: float
    wavelength_m: float
    pixel_size_m: float
    beam_center_px: tuple[float, float]  # (row, column), in pixel units from the frame's corner
    shape: tuple[int, int]

    @property
    def poni1_m(self) -> float:
        return self.beam_center_px[0] * self.pixel_size_m

    @property
    def poni2_m(self) -> float:
        return self.beam_center_px[1] * self.pixel_size_m

    def pyfai(self) -> dict[str, float]:
        """Keyword arguments for `pyFAI.integrator.azimuthal.AzimuthalIntegrator` (with a `Detector` of
        `pixel1`, `pixel2` and `max_shape=shape`)."""
        return {
            "dist": self.distance_m,
            "poni1": self.poni1_m,
            "poni2": self.poni2_m,
            "rot1": 0.0,
            "rot2": 0.0,
            "rot3": 0.0,
            "wavelength": self.wavelength_m,
            "pixel1": self.pixel_size_m,
            "pixel2": self.pixel_size_m,
        }

    def two_theta_deg(self) -> npt.NDArray[np.float64]:
        """Each pixel centre's scattering angle 2θ in degrees, shape `shape`."""
        rows, cols = np.indices(self.shape, dtype=np.float64)
        y = (rows + 0.5 - self.beam_center_px[0]) * self.pixel_size_m
        x = (cols + 0.5 - self.beam_center_px[1]) * self.pixel_size_m
        return np.degrees(np.arctan2(np.hypot(y, x), self.distance_m))

    def radius_px(self, two_theta_deg: float) -> float:
        """The radius in pixels of a ring at 2θ."""
        return self.distance_m * math.tan(math.radians(two_theta_deg)) / self.pixel_size_m


@dataclass(frozen=True)
class Ring:
    """One Debye-Scherrer ring of the calibrant."""

    hkl: str  # "110"; reflections at the same d joined: "300/221"
    d_angstrom: float
    two_theta_deg: float
    q_inv_nm: float  # 4π sin θ / λ = 2π / d
    radius_px: float  # from the beam centre, on the detector
    arc_fraction: float  # the part of the ring's circumference that falls on the frame
    height: float  # peak photons per pixel per frame at the nominal pulse energy


@dataclass(frozen=True)
class RunSpec:
    """What to generate. The run has `sequences * trains_per_sequence` trains: the first train ids from
    `first_train_id` on that are not in `missing_trains`. Offsets in `missing_trains` and `detector_gaps`
    count from `first_train_id`; those beyond the run's last train have no effect."""

    proposal: int = 700000
    run: int = 42
    instrument: str = "SPB"
    cycle: str = "202601"
    sequences: int = 2
    trains_per_sequence: int = 10
    first_train_id: int = 1_900_000_000
    missing_trains: tuple[int, ...] = (5, 14, 15)
    detector_gaps: tuple[int, ...] = (8,)
    seed: int = 0
    start: str = "2026-01-15T10:00:00+00:00"  # the time of the train at first_train_id
    # XGM
    pulses_per_train: int = 10
    pulse_energy_uj: float = 1500.0
    pulse_energy_rms_uj: float = 150.0
    # JUNGFRAU and the powder pattern
    frames_per_train: int = 2
    frame_shape: tuple[int, int] = (256, 256)
    energy_kev: float = 12.0
    distance_m: float = 0.030
    pixel_size_m: float = 75e-6
    beam_center_px: tuple[float, float] = (40.5, 30.25)
    ring_sigma_deg: float = 0.1
    ring_photons: float = 20.0
    background_photons: float = 1.0
    raw_pedestal_adu: float = 1000.0
    raw_adu_per_photon: float = 100.0
    raw_noise_adu: float = 4.0
    corrected: bool = True  # also the CORR-* files
    agipd: bool = False  # also RAW-*-AGIPD00-* (one module, 512 x 128 pixels)
    agipd_frames_per_train: int = 1

    def geometry(self) -> Geometry:
        return Geometry(
            distance_m=self.distance_m,
            energy_kev=self.energy_kev,
            wavelength_m=HC_KEV_ANGSTROM / self.energy_kev * 1e-10,
            pixel_size_m=self.pixel_size_m,
            beam_center_px=(float(self.beam_center_px[0]), float(self.beam_center_px[1])),
            shape=(int(self.frame_shape[0]), int(self.frame_shape[1])),
        )

    def name(self, category: str, aggregator: str, sequence: int) -> str:
        """A file's name: `RAW-R0042-DA01-S00000.h5`."""
        return f"{category}-R{self.run:04d}-{aggregator}-S{sequence:05d}.h5"


@dataclass(frozen=True)
class FileAnswer:
    """What one file holds."""

    name: str
    category: str  # RAW | CORR
    aggregator: str  # DA01 | JNGFR01 | AGIPD00
    sequence: int
    trains: int
    train_ids: tuple[int, ...]
    first_train_id: int
    last_train_id: int
    #: source -> entries of its data in this file (CONTROL: one per train; INSTRUMENT: the sum of INDEX counts)
    sources: dict[str, int]
    #: source -> its keys as EXtra-data names them (`data.adc`; CONTROL keys with `.value` and `.timestamp`)
    keys: dict[str, frozenset[str]]
    frames: int  # detector frames (JUNGFRAU: entries * frames_per_train; AGIPD: entries); 0 for DA01
    mean_pulse_energy_uj: float | None  # DA01: the mean of the file's pulse energies; None for the others


@dataclass(frozen=True)
class RunAnswer:
    """What the whole run holds."""

    proposal: int
    run: int
    trains: int
    train_ids: tuple[int, ...]
    first_train_id: int
    last_train_id: int
    missing_trains: tuple[int, ...]  # train ids between the first and the last that no file has
    detector_gaps: tuple[int, ...]  # train ids every file has, but where JUNGFRAU has no data (count 0)
    sources: dict[str, int]  # source -> entries in the whole run
    keys: dict[str, frozenset[str]]
    mean_pulse_energy_uj: float  # over the first pulses_per_train pulses of every train, as stored (float32)
    jungfrau_frames: int
    files: int


@dataclass(frozen=True)
class Expected:
    """The known answers of a spec: the run, each file (in the order `run_files` yields them), and the
    detector: its geometry, the calibrant's rings on it, its flagged pixels and raw-data constants."""

    run: RunAnswer
    files: tuple[FileAnswer, ...]
    geometry: Geometry
    calibrant: str
    rings: tuple[Ring, ...]  # every ring that touches the frame, by 2θ
    bad_pixels: int  # flagged in data.mask (the same in every frame)
    raw_pedestal_adu: float
    raw_adu_per_photon: float

    def file(self, name: str) -> FileAnswer:
        return next(f for f in self.files if f.name == name)


# -- the plan: which trains go where -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sequence:
    index: int
    offsets: npt.NDArray[np.int64]  # from first_train_id
    train_ids: npt.NDArray[np.uint64]
    timestamps: npt.NDArray[np.uint64]  # ns since the epoch
    jf_counts: npt.NDArray[np.uint64]  # 1, or 0 for a detector gap
    run_start_ns: int  # the time of the run's first train: RUN values are from then


def _sequences(spec: RunSpec) -> list[_Sequence]:
    if spec.sequences < 1 or spec.trains_per_sequence < 1:
        raise ValueError("a run needs at least one sequence of at least one train")
    if spec.frames_per_train < 1 or spec.pulses_per_train < 1 or spec.pulses_per_train > XGM_SLOTS:
        raise ValueError("frames_per_train must be >= 1 and pulses_per_train 1 .. 1000")
    missing, gaps = set(spec.missing_trains), set(spec.detector_gaps)
    if min(missing | gaps, default=0) < 0:
        raise ValueError("missing_trains and detector_gaps are offsets from first_train_id: not negative")
    if missing & gaps:
        raise ValueError(f"trains cannot be both missing and detector gaps: {sorted(missing & gaps)}")
    # The DAQ records the first sequences * trains_per_sequence trains that are not missing; offsets beyond the
    # last of them never come up.
    total = spec.sequences * spec.trains_per_sequence
    recorded = np.array([o for o in range(total + len(missing)) if o not in missing][:total], dtype=np.int64)
    start_ns = int(datetime.fromisoformat(spec.start).timestamp()) * 1_000_000_000
    out = []
    for seq in range(spec.sequences):
        offsets = recorded[seq * spec.trains_per_sequence : (seq + 1) * spec.trains_per_sequence]
        out.append(
            _Sequence(
                index=seq,
                offsets=offsets,
                train_ids=(offsets + spec.first_train_id).astype(np.uint64),
                timestamps=(offsets * TRAIN_NS + start_ns).astype(np.uint64),
                jf_counts=np.array([0 if o in gaps else 1 for o in offsets.tolist()], dtype=np.uint64),
                run_start_ns=int(recorded[0]) * TRAIN_NS + start_ns,
            )
        )
    return out


def _pulse_energies(spec: RunSpec, seq: int, n: int) -> npt.NDArray[np.float32]:
    """The XGM's pulse energies (µJ) of a sequence's trains, shape (n, pulses_per_train)."""
    rng = np.random.default_rng([spec.seed, 1, seq])
    energies = rng.normal(spec.pulse_energy_uj, spec.pulse_energy_rms_uj, (n, spec.pulses_per_train))
    return np.clip(energies, 0.05 * spec.pulse_energy_uj, None).astype(np.float32)


def _reflections(max_sum: int = 80) -> list[tuple[int, str]]:
    """(h² + k² + l², label) of every cubic reflection, by d descending."""
    labels: dict[int, list[str]] = {}
    top = math.isqrt(max_sum) + 1
    for h in range(top):
        for k in range(h + 1):
            for ll in range(k + 1):
                s = h * h + k * k + ll * ll
                if 0 < s <= max_sum:
                    labels.setdefault(s, []).append(f"{h}{k}{ll}")
    return [(s, "/".join(sorted(labels[s], reverse=True))) for s in sorted(labels)]


def _arc_fraction(geometry: Geometry, radius_px: float) -> float:
    phi = np.linspace(0.0, 2 * np.pi, 7200, endpoint=False)
    y = geometry.beam_center_px[0] + radius_px * np.sin(phi)
    x = geometry.beam_center_px[1] + radius_px * np.cos(phi)
    rows, cols = geometry.shape
    inside = (y >= 0) & (y < rows) & (x >= 0) & (x < cols)
    return float(np.mean(inside))


def _rings(spec: RunSpec) -> list[Ring]:
    geometry = spec.geometry()
    wavelength_a = geometry.wavelength_m * 1e10
    max_tth = float(geometry.two_theta_deg().max()) + 1.0
    rings: list[Ring] = []
    for index, (s, label) in enumerate(_reflections()):
        d = LAB6_A_ANGSTROM / math.sqrt(s)
        if wavelength_a / (2 * d) >= 1:
            break
        tth = math.degrees(2 * math.asin(wavelength_a / (2 * d)))
        if tth > max_tth or tth >= 90:
            break
        radius = geometry.radius_px(tth)
        height = spec.ring_photons * RING_HEIGHTS[min(index, len(RING_HEIGHTS) - 1)]
        rings.append(Ring(label, d, tth, 2 * math.pi / (d / 10), radius, _arc_fraction(geometry, radius), height))
    return [r for r in rings if r.arc_fraction > 0]


def _mean_image(spec: RunSpec) -> npt.NDArray[np.float64]:
    """Photons per pixel per frame at the nominal pulse energy."""
    tth = spec.geometry().two_theta_deg()
    image = spec.background_photons * (0.3 + np.exp(-tth / 15.0))
    for ring in _rings(spec):
        image += ring.height * np.exp(-0.5 * ((tth - ring.two_theta_deg) / spec.ring_sigma_deg) ** 2)
    return image


def _bad_pixels(spec: RunSpec) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(dead, hot): a dead column and N_HOT hot pixels, the same in every frame."""
    rows, cols = spec.frame_shape
    dead = np.zeros((rows, cols), dtype=bool)
    dead[:, (cols * 25) // 32] = True
    rng = np.random.default_rng([spec.seed, 9])
    candidates = np.flatnonzero(~dead)
    hot = np.zeros(rows * cols, dtype=bool)
    hot[rng.choice(candidates, size=min(N_HOT, candidates.size), replace=False)] = True
    return dead, hot.reshape(rows, cols)


# -- writing HDF5 -----------------------------------------------------------------------------------------


def _stamp(ns: int) -> bytes:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y%m%dT%H%M%SZ").encode("ascii")


class _Builder:
    """One EuXFEL file being written: the train index, then sources, then METADATA."""

    def __init__(self, f: h5py.File, seq: _Sequence) -> None:
        self.f = f
        self.seq = seq
        self.sources: list[str] = []
        n = len(seq.train_ids)
        for group in ("CONTROL", "INSTRUMENT", "RUN"):
            f.create_group(group)
        f.create_dataset("INDEX/trainId", data=seq.train_ids, dtype="u8")
        f.create_dataset("INDEX/timestamp", data=seq.timestamps, dtype="u8")
        f.create_dataset("INDEX/flag", data=np.ones(n, dtype="i4"))
        f.create_dataset("INDEX/origin", data=np.full(n, -1, dtype="i4"))

    def control(self, source: str, values: dict[str, npt.NDArray[Any]], run: dict[str, Any]) -> None:
        """A CONTROL source with one value per train for each key, and its RUN values."""
        n = len(self.seq.train_ids)
        self.f.create_dataset(f"INDEX/{source}/first", data=np.arange(n, dtype="u8"))
        self.f.create_dataset(f"INDEX/{source}/count", data=np.ones(n, dtype="u8"))
        for key, value in values.items():
            self.f.create_dataset(f"CONTROL/{source}/{key}/value", data=value)
            self.f.create_dataset(f"CONTROL/{source}/{key}/timestamp", data=self.seq.timestamps)
        for key, value in run.items():
            data = np.array([value.encode("ascii")], dtype=_VLEN) if isinstance(value, str) else np.array([value])
            self.f.create_dataset(f"RUN/{source}/{key}/value", data=data)
            self.f.create_dataset(f"RUN/{source}/{key}/timestamp", data=np.array([self.seq.run_start_ns], "u8"))
        self.sources.append(f"CONTROL/{source}")

    def instrument(
        self,
        source: str,
        group: str,
        counts: npt.NDArray[np.uint64],
        data: dict[str, npt.NDArray[Any]],
        *,
        compress: frozenset[str] = frozenset(),
    ) -> dict[str, h5py.Dataset]:
        """An INSTRUMENT source's group: `counts` entries per train; `data` has sum(counts) entries."""
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint64)
        self.f.create_dataset(f"INDEX/{source}/{group}/first", data=first, dtype="u8")
        self.f.create_dataset(f"INDEX/{source}/{group}/count", data=counts, dtype="u8")
        base = f"INSTRUMENT/{source}/{group}"
        self.f.create_dataset(f"{base}/trainId", data=np.repeat(self.seq.train_ids, counts.astype(np.int64)))
        made = {}
        for key, value in data.items():
            opts: dict[str, Any] = {}
            if key in compress:
                opts = {"chunks": (1, *value.shape[1:]), "maxshape": (None, *value.shape[1:]), "compression": "gzip"}
                opts["compression_opts"] = 1
            made[key] = self.f.create_dataset(f"{base}/{key}", data=value, **opts)
        self.sources.append(f"INSTRUMENT/{source}/{group}")
        return made

    def finish(self, spec: RunSpec, sample: str) -> None:
        meta = self.f.require_group("METADATA")
        ids = np.array([s.encode() for s in self.sources], dtype=_VLEN)
        roots = np.array([s.split("/", 1)[0].encode() for s in self.sources], dtype=_VLEN)
        devices = np.array([s.split("/", 1)[1].encode() for s in self.sources], dtype=_VLEN)
        meta.create_dataset("dataSources/dataSourceId", data=ids)
        meta.create_dataset("dataSources/root", data=roots)
        meta.create_dataset("dataSources/deviceId", data=devices)

        def text(name: str, value: str | bytes) -> None:
            raw = value.encode("ascii") if isinstance(value, str) else value
            meta.create_dataset(name, data=np.array([raw], dtype=_VLEN))

        text("dataFormatVersion", FORMAT_VERSION)
        text("creationDate", _stamp(int(self.seq.timestamps[0])))
        text("updateDate", _stamp(int(self.seq.timestamps[-1]) + 1_000_000_000))
        text("daqLibrary", "headrace.xfel.generate")
        text("karaboFramework", "2.19.0")
        text("runType", "Powder calibration")
        text("sample", sample)
        meta.create_dataset("proposalNumber", data=np.array([spec.proposal], dtype=np.uint32))
        meta.create_dataset("runNumber", data=np.array([spec.run], dtype=np.uint32))
        meta.create_dataset("sequenceNumber", data=np.array([self.seq.index], dtype=np.uint32))


def _h5_bytes(build: Callable[[h5py.File], None]) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        build(f)
    return buffer.getvalue()


def _da01(spec: RunSpec, seq: _Sequence) -> bytes:
    n = len(seq.train_ids)
    pulses = _pulse_energies(spec, seq.index, n)
    wavelength_nm = np.float32(HC_KEV_ANGSTROM / spec.energy_kev / 10)
    rng = np.random.default_rng([spec.seed, 5, seq.index])

    def build(f: h5py.File) -> None:
        b = _Builder(f, seq)
        values = {
            "beamPosition/ixPos": rng.normal(0.0, 0.05, n).astype(np.float32),
            "beamPosition/iyPos": rng.normal(0.0, 0.05, n).astype(np.float32),
            "pulseEnergy/photonFlux": pulses.mean(axis=1, dtype=np.float64).astype(np.float32),
            "pulseEnergy/wavelengthUsed": np.full(n, wavelength_nm, dtype=np.float32),
        }
        run = {
            "beamPosition/ixPos": np.float32(0.0),
            "beamPosition/iyPos": np.float32(0.0),
            "pulseEnergy/photonFlux": np.float32(spec.pulse_energy_uj),
            "pulseEnergy/wavelengthUsed": wavelength_nm,
            "classId": "DoocsXGM",
        }
        b.control(XGM_SOURCE, values, run)
        intensity = np.ones((n, XGM_SLOTS), dtype=np.float32)
        intensity[:, : spec.pulses_per_train] = pulses
        made = b.instrument(XGM_OUTPUT, "data", np.ones(n, dtype=np.uint64), {"intensityTD": intensity})
        made["intensityTD"].attrs.update(
            {"unitName": b"joule", "unitSymbol": b"J", "metricPrefixName": b"micro", "metricPrefixSymbol": b"u"}
        )
        b.finish(spec, CALIBRANT)

    return _h5_bytes(build)


def _photons(spec: RunSpec, seq: _Sequence) -> npt.NDArray[np.int64]:
    """The photons JUNGFRAU saw in a sequence: (entries, frames_per_train, rows, cols)."""
    with_data = seq.jf_counts.astype(bool)
    pulses = _pulse_energies(spec, seq.index, len(seq.train_ids))[with_data]
    scale = pulses.mean(axis=1, dtype=np.float64) / spec.pulse_energy_uj
    rng = np.random.default_rng([spec.seed, 2, seq.index])
    lam = scale[:, None, None, None] * _mean_image(spec)[None, None]
    lam = np.broadcast_to(lam, (len(scale), spec.frames_per_train, *spec.frame_shape))
    return rng.poisson(lam)


def _jf_per_frame(spec: RunSpec, seq: _Sequence) -> dict[str, npt.NDArray[Any]]:
    entries = int(seq.jf_counts.sum())
    cells = np.broadcast_to(np.arange(spec.frames_per_train, dtype=np.uint8), (entries, spec.frames_per_train))
    offsets = seq.offsets[seq.jf_counts.astype(bool)]
    frame_numbers = offsets[:, None] * spec.frames_per_train + np.arange(spec.frames_per_train)
    return {"memoryCell": np.ascontiguousarray(cells), "frameNumber": frame_numbers.astype(np.uint64)}


def _jf_raw(spec: RunSpec, seq: _Sequence, photons: npt.NDArray[np.int64]) -> bytes:
    dead, hot = _bad_pixels(spec)
    rng = np.random.default_rng([spec.seed, 3, seq.index])
    adc = spec.raw_pedestal_adu + photons * spec.raw_adu_per_photon
    adc = adc + rng.normal(0.0, spec.raw_noise_adu, adc.shape)
    adc[..., dead] = 0
    adc[..., hot] = 0x3FFF
    per_frame = _jf_per_frame(spec, seq)
    times = seq.timestamps[seq.jf_counts.astype(bool)].astype(np.float64) / 1e9
    data = {
        "adc": np.clip(np.rint(adc), 0, 0x3FFF).astype(np.uint16),
        "frameNumber": per_frame["frameNumber"],
        "memoryCell": per_frame["memoryCell"],
        "timestamp": np.repeat(times[:, None], spec.frames_per_train, axis=1),
    }

    def build(f: h5py.File) -> None:
        b = _Builder(f, seq)
        b.instrument(JF_RAW_SOURCE, "data", seq.jf_counts, data)
        b.finish(spec, CALIBRANT)

    return _h5_bytes(build)


def _jf_corr(spec: RunSpec, seq: _Sequence, photons: npt.NDArray[np.int64]) -> bytes:
    dead, hot = _bad_pixels(spec)
    adc = photons.astype(np.float32)
    adc[..., dead] = 0.0
    adc[..., hot] = HOT_VALUE
    mask = np.zeros(adc.shape, dtype=np.uint32)
    mask[..., dead] = 1
    mask[..., hot] = 2
    per_frame = _jf_per_frame(spec, seq)

    def build(f: h5py.File) -> None:
        b = _Builder(f, seq)
        data: dict[str, npt.NDArray[Any]] = {"adc": adc, "mask": mask, **per_frame}
        b.instrument(JF_CORR_SOURCE, "data", seq.jf_counts, data, compress=frozenset({"mask"}))
        b.finish(spec, CALIBRANT)

    return _h5_bytes(build)


def _agipd(spec: RunSpec, seq: _Sequence) -> bytes:
    n, per = len(seq.train_ids), spec.agipd_frames_per_train
    frames = n * per
    rng = np.random.default_rng([spec.seed, 4, seq.index])
    image = np.empty((frames, 2, 512, 128), dtype=np.uint16)
    image[:, 0] = 5000 + rng.integers(0, 16, (frames, 512, 128), dtype=np.uint16)
    image[:, 1] = 4000
    pulse = np.tile(np.arange(per, dtype=np.uint64), n)
    data: dict[str, npt.NDArray[Any]] = {
        "cellId": pulse.astype(np.uint16),
        "data": image,
        "length": np.full(frames, 262144, dtype=np.uint32),
        "pulseId": pulse,
        "status": np.zeros(frames, dtype=np.uint16),
    }

    def build(f: h5py.File) -> None:
        b = _Builder(f, seq)
        b.instrument(AGIPD_SOURCE, "image", np.full(n, per, dtype=np.uint64), data)
        b.finish(spec, CALIBRANT)

    return _h5_bytes(build)


# -- the public functions -----------------------------------------------------------------------------------


def run_files(spec: RunSpec) -> Iterator[tuple[str, bytes]]:
    """The run's files as (name, HDF5 bytes), in the order they are closed: per sequence, the DAQ's
    aggregators (DA01, JNGFR01, AGIPD00), then that sequence's corrected JUNGFRAU file (online correction)."""
    for seq in _sequences(spec):
        photons = _photons(spec, seq)
        yield spec.name("RAW", "DA01", seq.index), _da01(spec, seq)
        yield spec.name("RAW", "JNGFR01", seq.index), _jf_raw(spec, seq, photons)
        if spec.agipd:
            yield spec.name("RAW", "AGIPD00", seq.index), _agipd(spec, seq)
        if spec.corrected:
            yield spec.name("CORR", "JNGFR01", seq.index), _jf_corr(spec, seq, photons)


def spec_for_files(n_files: int, **fields: Any) -> RunSpec:
    """A spec (`fields` as RunSpec's) with enough sequences for `n_files` files or a few more, at least one."""
    spec = RunSpec(**fields)
    per_sequence = 2 + int(spec.agipd) + int(spec.corrected)
    return replace(spec, sequences=max(1, -(-n_files // per_sequence)))


def write_run(spec: RunSpec, directory: str | Path, *, tree: bool = False) -> list[Path]:
    """Write the run's files into `directory` (made if missing), in `run_files`'s order; with `tree`,
    `directory` is the proposal directory and files go to its `raw/r0042/` and `proc/r0042/`."""
    out: list[Path] = []
    for name, data in run_files(spec):
        target = Path(file_path(str(directory), name)) if tree else Path(directory) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        out.append(target)
    return out


_NAME = re.compile(r"^(?P<kind>[A-Z]+)-R(?P<run>\d{4})-(?P<aggregator>\w+)-S(?P<sequence>\d{5})\.h5$")


def file_path(base: str, name: str) -> str:
    """Where a run file belongs below the proposal directory `base`: RAW-* in `raw/rNNNN/`, everything else
    (CORR-*, derived files) in `proc/rNNNN/`."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"not a EuXFEL run file name: {name!r}")
    kind = "raw" if match["kind"] == "RAW" else "proc"
    return posixpath.join(base, kind, f"r{match['run']}", name)


def proposal_dir(spec: RunSpec, root: str = "/exp") -> str:
    """The proposal directory: `/exp/SPB/202601/p700000`."""
    return posixpath.join(root, spec.instrument, spec.cycle, f"p{spec.proposal:06d}")


def _keys(group: str, names: tuple[str, ...]) -> frozenset[str]:
    return frozenset({f"{group}.trainId", *(f"{group}.{k}" for k in names)})


def expected(spec: RunSpec) -> Expected:
    """The known answers for `spec`, computed without making the detector frames."""
    seqs = _sequences(spec)
    control_keys = frozenset(f"{k.replace('/', '.')}.{part}" for k in _XGM_CONTROL for part in ("value", "timestamp"))
    keys = {
        XGM_SOURCE: control_keys,
        XGM_OUTPUT: _keys("data", ("intensityTD",)),
        JF_RAW_SOURCE: _keys("data", _JF_RAW_KEYS),
        JF_CORR_SOURCE: _keys("data", _JF_CORR_KEYS),
        AGIPD_SOURCE: _keys("image", _AGIPD_KEYS),
    }
    files: list[FileAnswer] = []
    totals: dict[str, int] = {}
    energy_sum, energy_n = 0.0, 0
    for seq in seqs:
        n = len(seq.train_ids)
        tids = tuple(int(t) for t in seq.train_ids)
        pulses = _pulse_energies(spec, seq.index, n).astype(np.float64)
        energy_sum += float(pulses.sum())
        energy_n += pulses.size
        jf_entries = int(seq.jf_counts.sum())
        made: list[tuple[str, str, dict[str, int], int, float | None]] = [
            ("RAW", "DA01", {XGM_SOURCE: n, XGM_OUTPUT: n}, 0, float(pulses.mean())),
            ("RAW", "JNGFR01", {JF_RAW_SOURCE: jf_entries}, jf_entries * spec.frames_per_train, None),
        ]
        if spec.agipd:
            frames = n * spec.agipd_frames_per_train
            made.append(("RAW", "AGIPD00", {AGIPD_SOURCE: frames}, frames, None))
        if spec.corrected:
            made.append(("CORR", "JNGFR01", {JF_CORR_SOURCE: jf_entries}, jf_entries * spec.frames_per_train, None))
        for category, aggregator, sources, frames, energy in made:
            files.append(
                FileAnswer(
                    name=spec.name(category, aggregator, seq.index),
                    category=category,
                    aggregator=aggregator,
                    sequence=seq.index,
                    trains=n,
                    train_ids=tids,
                    first_train_id=tids[0],
                    last_train_id=tids[-1],
                    sources=sources,
                    keys={s: keys[s] for s in sources},
                    frames=frames,
                    mean_pulse_energy_uj=energy,
                )
            )
            for source, count in sources.items():
                totals[source] = totals.get(source, 0) + count
    train_ids = tuple(int(t) for s in seqs for t in s.train_ids)
    present = set(train_ids)
    dead, hot = _bad_pixels(spec)
    run = RunAnswer(
        proposal=spec.proposal,
        run=spec.run,
        trains=len(train_ids),
        train_ids=train_ids,
        first_train_id=train_ids[0],
        last_train_id=train_ids[-1],
        missing_trains=tuple(t for t in range(train_ids[0], train_ids[-1] + 1) if t not in present),
        detector_gaps=tuple(int(t) for s in seqs for t in s.train_ids[s.jf_counts == 0]),
        sources=totals,
        keys={s: keys[s] for s in totals},
        mean_pulse_energy_uj=energy_sum / energy_n,
        jungfrau_frames=sum(int(s.jf_counts.sum()) for s in seqs) * spec.frames_per_train,
        files=len(files),
    )
    return Expected(
        run=run,
        files=tuple(files),
        geometry=spec.geometry(),
        calibrant=CALIBRANT,
        rings=tuple(_rings(spec)),
        bad_pixels=int(np.count_nonzero(dead | hot)),
        raw_pedestal_adu=spec.raw_pedestal_adu,
        raw_adu_per_photon=spec.raw_adu_per_photon,
    )


# -- through the door -----------------------------------------------------------------------------------------


def upload_run(
    client: Client,
    base_path: str,
    spec: RunSpec,
    *,
    limit: int | None = None,
    on_closed: Callable[[str, int], None] | None = None,
) -> list[str]:
    """Upload the run through the door as a DAQ would: file after file, each PUT only once it is complete
    (with its ADLER32 as `Digest`), into `file_path(base_path, name)` (`base_path` is the proposal directory,
    e.g. `proposal_dir(spec)`); directories are made as needed. `limit`: only the first that many files.
    `on_closed(path, size)` is called as each upload completes. Returns the remote paths in upload order."""
    paths: list[str] = []
    with tempfile.TemporaryDirectory(prefix="headrace-xfel-") as tmp:
        for name, data in itertools.islice(run_files(spec), limit):
            remote = file_path(base_path, name)
            client.mkdir(posixpath.dirname(remote), parents=True)
            local = Path(tmp) / name
            local.write_bytes(data)
            client.upload(local, remote)
            local.unlink()
            paths.append(remote)
            if on_closed is not None:
                on_closed(remote, len(data))
    return paths
