"""Azimuthal integration of corrected JUNGFRAU frames with pyFAI.

On IN_CLOSE_WRITE of a corrected sequence file, `.../proc/r0042/CORR-R0042-JNGFR01-S00000.h5` (or the same
name in `.../raw/r0042/`), it averages the file's frames, integrates the average and each train's frames
over the azimuth, finds the powder rings in the average's profile, and writes
`.../proc/r0042/AZINT-R0042-JNGFR01-S00000.h5` (EuXFEL's layout: results in the run's proc/ directory):

- `radial` (the unit's values: 2θ in degrees by default), `two_theta_deg`, `q_nm` (nm⁻¹), `intensity`,
  `sigma` (of the mean, from Poisson statistics) for the average of all frames;
- `train_ids`, `frames_per_train`, `intensity_per_train` (trains x npt);
- `peaks/two_theta_deg`, `peaks/q_nm`, `peaks/radius_px`, `peaks/height`, `peaks/snr`;
- the geometry, source, frame count and pyFAI version as attributes of the root group.

Pixels with a non-zero `data.mask` (or a value that is not finite) are left out. The result names the output,
the frame count and the peaks found.

Parameters (the action's; all optional): `dist`, `poni1`, `poni2`, `rot1`, `rot2`, `rot3` (m, rad),
`wavelength` (m) or `energy` (keV), `pixel1`, `pixel2` (m), as pyFAI names them (defaults: the geometry of
`headrace.xfel.generate.RunSpec()`); `npt` (1000 radial bins), `unit` (`2th_deg` or `q_nm^-1`), `source` (a
glob on the source name, default `*JNGFR*`), `threshold` (peaks stand this many sigmas above the baseline,
default 5), `solid_angle` (false: the generated frames have no solid-angle factor), `per_train` (true),
`out_dir` (instead of the run's proc/).

Self-contained (numpy, h5py, pyFAI, stdlib): deployable as one file with `headrace fn deploy`.
"""

from __future__ import annotations

import fnmatch
import io
import posixpath
import re
import time
from typing import Any

try:
    import h5py
    import numpy as np
    import pyFAI
    from pyFAI.detectors import Detector
except ImportError as exc:  # the server's Python has not got the science extra
    raise ImportError(f"needs pip install 'headrace[science]' on the server: {exc}") from exc

try:
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
except ImportError:  # pyFAI before 2024.1
    from pyFAI.azimuthalIntegrator import AzimuthalIntegrator  # type: ignore[no-redef,unused-ignore]

HC_KEV_ANGSTROM = 12.398419843320026
#: headrace.xfel.generate.RunSpec()'s detector: 30 mm, 12 keV, 75 µm pixels, beam at pixel (40.5, 30.25).
DEFAULT_GEOMETRY = {
    "dist": 0.030,
    "poni1": 40.5 * 75e-6,
    "poni2": 30.25 * 75e-6,
    "rot1": 0.0,
    "rot2": 0.0,
    "rot3": 0.0,
    "wavelength": HC_KEV_ANGSTROM / 12.0 * 1e-10,
    "pixel1": 75e-6,
    "pixel2": 75e-6,
}
RUN_FILE = re.compile(r"^(?P<kind>[A-Z]+)-(?P<rest>R\d{4}-\w+-S\d{5}\.h5)$")
ENTRIES_PER_READ = 8  # entries (trains) read at a time: what the function holds of the file in memory

_integrators: dict[tuple[Any, ...], AzimuthalIntegrator] = {}  # kept across activations of a warm worker
_matrices: dict[tuple[Any, ...], Any] = {}  # pyFAI's CSR matrices as scipy's, likewise


def output_path(path: str, kind: str = "AZINT", out_dir: str | None = None) -> str:
    """`.../raw/r0042/CORR-R0042-JNGFR01-S00000.h5` (or `.../proc/r0042/...`) ->
    `.../proc/r0042/AZINT-R0042-JNGFR01-S00000.h5`; a file outside that layout gets its result beside it."""
    name = posixpath.basename(path)
    match = RUN_FILE.match(name)
    out_name = f"{kind}-{match['rest']}" if match else f"{kind}-{name}"
    if out_dir is None:
        run_dir = posixpath.dirname(path)
        proposal, category = posixpath.split(posixpath.dirname(run_dir))
        if category in ("raw", "proc"):
            out_dir = posixpath.join(proposal, "proc", posixpath.basename(run_dir))
        else:
            out_dir = run_dir
    return posixpath.join(out_dir, out_name)


def geometry(params: dict[str, Any]) -> dict[str, float]:
    """pyFAI's geometry from the parameters, with DEFAULT_GEOMETRY for what they leave out."""
    geo = {k: float(params.get(k, v)) for k, v in DEFAULT_GEOMETRY.items()}
    if "energy" in params and "wavelength" not in params:
        geo["wavelength"] = HC_KEV_ANGSTROM / float(params["energy"]) * 1e-10
    return geo


def integrator(geo: dict[str, float], shape: tuple[int, int]) -> AzimuthalIntegrator:
    """One integrator per geometry and frame shape; pyFAI keeps its look-up tables in it between calls."""
    key = (*sorted(geo.items()), shape)
    ai = _integrators.get(key)
    if ai is None:
        detector = Detector(pixel1=geo["pixel1"], pixel2=geo["pixel2"], max_shape=shape)
        ai = AzimuthalIntegrator(
            dist=geo["dist"], poni1=geo["poni1"], poni2=geo["poni2"], rot1=geo["rot1"], rot2=geo["rot2"],
            rot3=geo["rot3"], wavelength=geo["wavelength"], detector=detector,
        )  # fmt: skip
        _integrators[key] = ai
    return ai


def find_source(f: h5py.File, pattern: str) -> tuple[str, str]:
    """The INSTRUMENT source (and its index group) matching `pattern` that has `<group>/adc`."""
    listing = f.get("METADATA/dataSources/dataSourceId")
    if listing is None:
        listing = f.get("METADATA/dataSourceId")  # data format 0.5
    ids = [x.decode() if isinstance(x, bytes) else str(x) for x in (listing[:] if listing is not None else [])]
    for source_id in ids:
        root, _, rest = source_id.partition("/")
        source, _, group = rest.rpartition("/")
        if root == "INSTRUMENT" and fnmatch.fnmatchcase(source, pattern) and f"{root}/{rest}/adc" in f:
            return source, group
    raise ValueError(f"no INSTRUMENT source matching {pattern!r} with an adc dataset")


def to_two_theta(x: np.ndarray, unit: str, wavelength_m: float) -> np.ndarray:
    if unit == "2th_deg":
        return np.asarray(x, dtype=np.float64)
    if unit == "q_nm^-1":
        return np.asarray(np.degrees(2 * np.arcsin(np.asarray(x) * wavelength_m * 1e9 / (4 * np.pi))), np.float64)
    raise ValueError(f"unit must be 2th_deg or q_nm^-1, not {unit!r}")


def find_peaks(
    x: np.ndarray, y: np.ndarray, sigma: np.ndarray, threshold: float, half_width: int = 3
) -> list[dict[str, float]]:
    """Maxima of a radial profile that stand `threshold` sigmas above a running-median baseline, each placed
    at the centroid of its ±half_width bins above the baseline."""
    n = y.size
    window = max(4 * half_width + 1, (n // 25) | 1)
    padded = np.pad(y, window // 2, mode="edge")
    baseline = np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)
    signal = y - baseline
    noise = np.where(np.isfinite(sigma) & (sigma > 0), sigma, np.inf)
    peaks: list[dict[str, float]] = []
    for i in range(half_width, n - half_width):
        lo, hi = i - half_width, i + half_width + 1
        if signal[i] < threshold * noise[i] or signal[i] < signal[lo:hi].max():
            continue
        if peaks and i - peaks[-1]["index"] <= half_width:  # a flat top: keep the first bin
            continue
        w = np.clip(signal[lo:hi], 0, None)
        centre = float(np.sum(w * x[lo:hi]) / np.sum(w))
        peaks.append({"index": i, "x": centre, "height": float(signal[i]), "snr": float(signal[i] / noise[i])})
    return peaks


def _mean_frames(adc: np.ndarray, bad: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Sum of good values and number of good frames per pixel, over the leading axes of (..., rows, cols)."""
    frames = adc.reshape(-1, *adc.shape[-2:]).astype(np.float64)
    good = np.isfinite(frames)
    if bad is not None:
        good &= bad.reshape(frames.shape) == 0
    return np.where(good, frames, 0.0).sum(axis=0), good.sum(axis=0)


def _csr_matrix(ai: AzimuthalIntegrator, shape: tuple[int, int], npt: int, unit: str, radial_range: Any) -> Any:
    """pyFAI's sparse integration matrix (bins x pixels, bounding-box splitting, as integrate1d's default) as a
    scipy matrix, or None where this pyFAI does not show it."""
    key = (id(ai), shape, npt, unit, radial_range)
    if key not in _matrices:
        try:
            import scipy.sparse

            engine = ai.setup_sparse_integrator(
                shape, npt, pos0_range=radial_range, unit=unit, split="bbox", algo="CSR", scale=True
            )
            csr = (np.asarray(engine.data, np.float64), np.asarray(engine.indices), np.asarray(engine.indptr))
            _matrices[key] = scipy.sparse.csr_matrix(csr, shape=(npt, shape[0] * shape[1]))
        except (ImportError, AttributeError, TypeError):
            _matrices[key] = None
    return _matrices[key]


def _profiles(
    ai: AzimuthalIntegrator,
    sums: list[tuple[int, np.ndarray, np.ndarray]],
    npt: int,
    unit: str,
    radial_range: Any,
    solid: bool,
) -> np.ndarray:
    """Each train's profile (trains x npt): pyFAI's integrate1d of each train's mean frame, all at once as one
    sparse product with its integration matrix (weights over the pixels each bin covers, the pixels without a
    good value left out) where it can (3 ms for 10 trains, not 70 ms)."""
    shape = sums[0][1].shape if sums else (0, 0)
    matrix = None if solid or not sums else _csr_matrix(ai, shape, npt, unit, radial_range)
    if matrix is None:
        return np.array([_integrate(ai, t, c, npt, unit, radial_range, solid).intensity for _, t, c in sums])
    good = np.stack([(c > 0).ravel() for _, _, c in sums], axis=1).astype(np.float64)
    means = np.stack([np.where(c > 0, t / np.maximum(c, 1), 0.0).ravel() for _, t, c in sums], axis=1)
    signal, norm = matrix @ (means * good), matrix @ good
    return np.asarray(np.where(norm > 0, signal / np.where(norm > 0, norm, 1), 0.0).T, dtype=np.float64)


def _integrate(
    ai: AzimuthalIntegrator, total: np.ndarray, n: np.ndarray, npt: int, unit: str, radial_range: Any, solid: bool
) -> Any:
    image = np.where(n > 0, total / np.maximum(n, 1), 0.0)
    variance = np.clip(image, 0, None) / np.maximum(n, 1)  # Poisson counts: the variance of a mean of n frames
    return ai.integrate1d(
        image, npt, unit=unit, mask=(n == 0).astype(np.int8), variance=variance, correctSolidAngle=solid,
        radial_range=radial_range,
    )  # fmt: skip


def main(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    started = time.perf_counter()
    path = event.get("path")
    if not path:
        raise ValueError("no 'path' in the event")
    if "IN_ISDIR" in (event.get("mask") or []) or not posixpath.basename(path).startswith("CORR-"):
        return {"skipped": path}
    geo = geometry(event)
    npt = int(event.get("npt", 1000))
    unit = str(event.get("unit", "2th_deg"))
    threshold = float(event.get("threshold", 5.0))
    solid = bool(event.get("solid_angle", False))
    per_train = bool(event.get("per_train", True))
    out = output_path(path, "AZINT", event.get("out_dir"))

    local = ctx.storage.local_path(path)
    handle: Any = local if local is not None else io.BytesIO(ctx.storage.read(path))
    with h5py.File(handle, "r") as f:
        source, group = find_source(f, str(event.get("source", "*JNGFR*")))
        base = f"INSTRUMENT/{source}/{group}"
        adc = f[f"{base}/adc"]
        mask = f.get(f"{base}/mask")
        train_ids = np.asarray(f["INDEX/trainId"][:], dtype=np.uint64)
        count = np.asarray(f[f"INDEX/{source}/{group}/count"][: train_ids.size], dtype=np.int64)
        first = np.asarray(f[f"INDEX/{source}/{group}/first"][: train_ids.size], dtype=np.int64)
        shape = (int(adc.shape[-2]), int(adc.shape[-1]))
        frames_per_entry = int(np.prod(adc.shape[1:-2], dtype=np.int64))
        ai = integrator(geo, shape)
        total = np.zeros(shape)
        n = np.zeros(shape, dtype=np.int64)
        per_train_sums: list[tuple[int, np.ndarray, np.ndarray]] = []
        with_data = [(int(t), int(s), int(c)) for t, s, c in zip(train_ids, first, count, strict=True) if t and c]
        for block in range(0, len(with_data), ENTRIES_PER_READ):
            trains = with_data[block : block + ENTRIES_PER_READ]
            start, stop = trains[0][1], trains[-1][1] + trains[-1][2]
            data = adc[start:stop]
            bad = mask[start:stop] if mask is not None else None
            for tid, s, c in trains:
                t_total, t_n = _mean_frames(
                    data[s - start : s - start + c], None if bad is None else bad[s - start : s - start + c]
                )
                total += t_total
                n += t_n
                if per_train:
                    per_train_sums.append((tid, t_total, t_n))
    if not with_data:
        raise ValueError(f"{path}: {source} has no frames")
    frames = sum(c for _, _, c in with_data) * frames_per_entry

    coverage = ai.array_from_unit(shape=shape, typ="center", unit=unit, scale=True)[n > 0]
    radial_range = (float(coverage.min()), float(coverage.max()))
    result = _integrate(ai, total, n, npt, unit, radial_range, solid)
    radial = np.asarray(result.radial, dtype=np.float64)
    intensity = np.asarray(result.intensity, dtype=np.float64)
    sigma = np.asarray(result.sigma, dtype=np.float64)
    two_theta = to_two_theta(radial, unit, geo["wavelength"])
    q_nm = 4 * np.pi * np.sin(np.radians(two_theta) / 2) / (geo["wavelength"] * 1e9)
    peaks = find_peaks(radial, intensity, sigma, threshold)
    peak_tth = to_two_theta(np.array([p["x"] for p in peaks]), unit, geo["wavelength"])
    peak_q = 4 * np.pi * np.sin(np.radians(peak_tth) / 2) / (geo["wavelength"] * 1e9)
    peak_r = geo["dist"] * np.tan(np.radians(peak_tth)) / geo["pixel1"]
    rows = _profiles(ai, per_train_sums, npt, unit, radial_range, solid)

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as out_file:
        out_file["radial"] = radial
        out_file["radial"].attrs["unit"] = unit
        out_file["two_theta_deg"] = two_theta
        out_file["q_nm"] = q_nm
        out_file["intensity"] = intensity
        out_file["sigma"] = sigma
        out_file["train_ids"] = np.array([t for t, _, _ in per_train_sums], dtype=np.uint64)
        out_file["frames_per_train"] = np.array([c for _, _, c in with_data], dtype=np.int64) * frames_per_entry
        out_file["intensity_per_train"] = np.array(rows, dtype=np.float64).reshape(len(rows), radial.size)
        out_file["peaks/two_theta_deg"] = peak_tth
        out_file["peaks/q_nm"] = peak_q
        out_file["peaks/radius_px"] = peak_r
        out_file["peaks/height"] = np.array([p["height"] for p in peaks])
        out_file["peaks/snr"] = np.array([p["snr"] for p in peaks])
        out_file.attrs.update({k: v for k, v in geo.items()})
        out_file.attrs.update(
            {"input": path, "source": source, "frames": frames, "npt": npt, "pyFAI": pyFAI.version, "unit": unit}
        )
    body = buffer.getvalue()
    try:
        ctx.storage.write(out, body)
    except Exception:  # most likely the proc/ directory does not exist yet: make it and try once more
        ctx.storage.mkdir(posixpath.dirname(out))
        ctx.storage.write(out, body)
    elapsed = time.perf_counter() - started
    ctx.logger.info("%s: %d frames of %s -> %s, %d peaks, %.2f s", path, frames, source, out, len(peaks), elapsed)
    return {
        "input": path,
        "output": out,
        "source": source,
        "frames": frames,
        "trains": len(with_data),
        "peaks_2th_deg": [round(float(v), 4) for v in peak_tth],
        "peaks_q_nm": [round(float(v), 4) for v in peak_q],
        "seconds": round(elapsed, 3),
    }
