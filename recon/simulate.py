"""Simulated far-field ptychography views with a known object, for tests, demos and benchmarks.

The forward model here is written independently of the solver's operators (explicit
bilinear weights for sub-pixel patches, ``scipy.fft`` for the unitary FFT), so a
reconstruction that matches the truth checks the solver rather than repeating it.

Geometry: ``true_object`` uses the same object-pixel grid as ``scan.positions``:
position (r, c) is the top-left corner of the patch ``true_object[r:r+H, c:c+W]``
(sub-pixel), the smallest row and column are :data:`recon.cxi.POSITION_MARGIN`,
and the object extends :data:`recon.cxi.POSITION_MARGIN` pixels past the last patch.
A solver that places its object on the positions' grid therefore reconstructs
``true_object`` with at most a tiny residual shift.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib

import h5py
import numpy as np
import scipy.fft
import skimage.data
import skimage.transform

from recon.backend import COMPLEX, REAL
from recon.cxi import (
    POSITION_MARGIN,
    ROTATION_ANGLE_PATH,
    validated_scan,
    wavelength_from_energy,
    write_cxi,
)
from recon.scan import ScanData

#: Photon energy of the simulated beamline (10 keV), in joules.
ENERGY_J = 10e3 * 1.602176634e-19
#: Sample-to-detector distance, metres.
DISTANCE_M = 2.0
#: Detector pixel pitch, metres (a typical photon-counting detector).
DETECTOR_PIXEL_M = 75e-6
#: Diameter of the focusing aperture's image on the detector, in detector pixels. Fixed in
#: pixels so the real-space probe scales with the detector: about 0.2 x detector at half
#: its energy, 0.4 x detector at 90 % of its energy.
APERTURE_DIAMETER_PX = 24
#: Defocus as the phase at the aperture's edge, in units of pi: gives the probe its rings.
DEFOCUS_PI = 2.0
#: The probe guess written into simulated files is the optics model with this relative
#: defocus error, as a beamline's modelled probe would be: close, but to be refined.
GUESS_DEFOCUS_ERROR = 0.3
#: Nominal probe width as a fraction of the detector, used to choose the scan step.
PROBE_WIDTH_FRACTION = 1 / 3
#: Linear overlap of neighbouring probe positions.
OVERLAP = 0.7
#: Phase range of the object, radians: [-PHASE_HALF_RANGE, PHASE_HALF_RANGE].
PHASE_HALF_RANGE = 0.8 * math.pi / 2
#: Amplitude range of the object.
AMPLITUDE_RANGE = (0.6, 1.0)
#: Rotation of the sample between consecutive views of a 3-D scan, degrees.
DEGREES_PER_VIEW = 3.0
#: Mean total counts per pattern when no Poisson noise is asked for.
NOISE_FREE_PHOTONS = 1e6
#: Patterns per FFT batch (bounds memory for large views).
FFT_BATCH = 256


@dataclasses.dataclass
class SimulatedView:
    """A simulated view and the truth it was made from.

    scan : ScanData with ``data`` (N_POS, D, D) float32 counts (zero frequency centred),
        ``positions`` (N_POS, 2) float32, ``pixel_size`` and ``wavelength`` filled.
    true_object : (OBJ_H, OBJ_W) complex64, on the grid of ``scan.positions``.
    true_probe : (D, D) complex64, scaled so that the data are |FFT(probe x patch)|^2.
    The scan's ``probe`` is the modelled guess (defocus off by GUESS_DEFOCUS_ERROR), or None.
    """

    scan: ScanData
    true_object: np.ndarray
    true_probe: np.ndarray
    energy_j: float = ENERGY_J
    distance_m: float = DISTANCE_M


def focused_probe(detector: int, defocus_pi: float = DEFOCUS_PI) -> np.ndarray:
    """A probe focused by a circular aperture with some defocus: a bright core with rings.

    defocus_pi : phase at the aperture's edge in units of pi.
    Returns (detector, detector) complex64 with unit maximum amplitude, centred.
    """
    frequency = (np.arange(detector) - detector // 2) / detector
    ky, kx = np.meshgrid(frequency, frequency, indexing="ij")
    k_squared = kx**2 + ky**2
    radius = APERTURE_DIAMETER_PX / detector / 2
    pupil = (k_squared <= radius**2) * np.exp(1j * math.pi * defocus_pi * k_squared / radius**2)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
    probe /= np.abs(probe).max()
    return probe.astype(COMPLEX)


def raster_positions(
    n_positions: int, step: float, rng: np.random.Generator, jitter: float = 0.1
) -> np.ndarray:
    """A near-square raster of ``n_positions`` (row, col) with uniform jitter of
    +-``jitter * step``, shifted so the smallest row and column are POSITION_MARGIN.

    Returns (n_positions, 2) float64.
    """
    n_rows = math.ceil(math.sqrt(n_positions))
    n_cols = math.ceil(n_positions / n_rows)
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    grid = np.stack([rows.ravel(), cols.ravel()], axis=1)[:n_positions] * step
    grid = grid + rng.uniform(-jitter * step, jitter * step, size=grid.shape)
    return grid - grid.min(axis=0) + POSITION_MARGIN


def known_object(shape: tuple[int, int], view: int = 0) -> np.ndarray:
    """A complex object: phase from ``skimage.data.camera()``, amplitude from ``moon()``,
    both rotated by ``view * DEGREES_PER_VIEW`` degrees and resized to ``shape``.

    Returns ``shape`` complex64, phase within +-PHASE_HALF_RANGE, amplitude within
    AMPLITUDE_RANGE.
    """
    angle = view * DEGREES_PER_VIEW
    images = []
    for image in (skimage.data.camera(), skimage.data.moon()):
        image = image.astype(np.float64)
        if angle:
            image = skimage.transform.rotate(image, angle, mode="reflect", preserve_range=True)
        image = skimage.transform.resize(image, shape, anti_aliasing=True, preserve_range=True)
        low, high = np.percentile(image, [0.5, 99.5])
        images.append(np.clip((image - low) / (high - low), 0, 1))
    phase = (2 * images[0] - 1) * PHASE_HALF_RANGE
    low, high = AMPLITUDE_RANGE
    amplitude = low + (high - low) * images[1]
    return (amplitude * np.exp(1j * phase)).astype(COMPLEX)


def far_field_intensity(
    object_: np.ndarray, probe: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """|unitary FFT(probe x object patch)|^2 with the zero frequency centred.

    object_ : (OBJ_H, OBJ_W) complex; probe : (D, D) complex; positions : (N_POS, 2)
    (row, col) top-left corners, sub-pixel (bilinear interpolation; the patch plus one
    pixel must lie inside the object). Returns (N_POS, D, D) float32.
    """
    height, width = probe.shape
    corners = np.floor(positions).astype(int)
    fractions = (positions - corners).astype(np.float32)
    intensity = np.empty((len(positions), height, width), dtype=REAL)
    for start in range(0, len(positions), FFT_BATCH):
        stop = min(start + FFT_BATCH, len(positions))
        waves = np.empty((stop - start, height, width), dtype=COMPLEX)
        for index in range(start, stop):
            row, col = corners[index]
            fr, fc = fractions[index]
            window = object_[row : row + height + 1, col : col + width + 1]
            patch = (
                (1 - fr) * (1 - fc) * window[:-1, :-1]
                + (1 - fr) * fc * window[:-1, 1:]
                + fr * (1 - fc) * window[1:, :-1]
                + fr * fc * window[1:, 1:]
            )
            waves[index - start] = probe * patch
        far_field = scipy.fft.fft2(waves, norm="ortho", workers=1)
        intensity[start:stop] = np.fft.fftshift(np.abs(far_field) ** 2, axes=(-2, -1))
    return intensity


def simulate_view(
    *,
    detector: int = 64,
    n_positions: int = 156,
    photons: float | None = None,
    seed: int = 0,
    view: int = 0,
    jitter: float = 0.1,
    probe_guess: bool = True,
) -> SimulatedView:
    """Simulate one view of a far-field ptychography scan.

    detector : detector side D in pixels (patterns are D x D)
    n_positions : number of scan positions on a jittered raster with ~70 % overlap
    photons : mean total counts per pattern with Poisson noise; None for noise-free data
        (scaled to NOISE_FREE_PHOTONS mean counts)
    seed, view : the random generator is seeded with (seed, view); ``view`` also rotates
        the object by ``view * DEGREES_PER_VIEW`` degrees, as in a tomographic series
    jitter : position jitter as a fraction of the step
    probe_guess : give the scan a modelled probe guess (the optics model with a
        GUESS_DEFOCUS_ERROR relative defocus error), as a beamline would
    """
    rng = np.random.default_rng([seed, view])
    step = (1 - OVERLAP) * PROBE_WIDTH_FRACTION * detector
    positions = raster_positions(n_positions, step, rng, jitter)
    object_shape = tuple(
        math.ceil(float(extent)) + detector + POSITION_MARGIN for extent in positions.max(axis=0)
    )
    true_object = known_object(object_shape, view)
    probe = focused_probe(detector)
    intensity = far_field_intensity(true_object, probe, positions)
    target = NOISE_FREE_PHOTONS if photons is None else float(photons)
    scale = target / float(intensity.sum(axis=(1, 2)).mean())
    intensity *= scale
    probe = (probe * np.sqrt(scale)).astype(COMPLEX)
    if photons is not None:
        intensity = rng.poisson(intensity).astype(REAL)
    wavelength = wavelength_from_energy(ENERGY_J)
    pixel_size = wavelength * DISTANCE_M / (detector * DETECTOR_PIXEL_M)
    guess = None
    if probe_guess:
        guess = focused_probe(detector, DEFOCUS_PI * (1 - GUESS_DEFOCUS_ERROR)) * np.sqrt(scale)
    scan = validated_scan(
        intensity,
        positions,
        probe=guess,
        pixel_size=pixel_size,
        wavelength=wavelength,
        source=f"<simulated view {view}>",
    )
    return SimulatedView(scan=scan, true_object=true_object, true_probe=probe)


def write_simulated_scan(
    folder: str | os.PathLike[str],
    *,
    n_views: int = 3,
    detector: int = 64,
    n_positions: int = 156,
    photons: float | None = None,
    seed: int = 0,
    marker: str | None = None,
    probe_guess: bool = True,
) -> list[pathlib.Path]:
    """Write a simulated scan folder: ``view000.cxi``, ``view001.cxi``, ... (with the
    modelled probe guess unless ``probe_guess`` is False), the ground truth in
    ``truth/view000.npz`` (``object``, ``probe``, ``positions``), and last the marker
    file ``marker`` if given. Returns the CXI paths.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth_folder = folder / "truth"
    truth_folder.mkdir(exist_ok=True)
    paths = []
    for view in range(n_views):
        simulated = simulate_view(
            detector=detector,
            n_positions=n_positions,
            photons=photons,
            seed=seed,
            view=view,
            probe_guess=probe_guess,
        )
        scan = simulated.scan
        path = write_cxi(
            folder / f"view{view:03d}.cxi",
            scan.data,
            scan.positions,
            scan.pixel_size,
            energy_j=simulated.energy_j,
            distance_m=simulated.distance_m,
            probe=scan.probe,
        )
        with h5py.File(path, "a") as handle:  # the tomographic angle this view was seen at
            handle[ROTATION_ANGLE_PATH] = view * DEGREES_PER_VIEW
        np.savez(
            truth_folder / f"view{view:03d}.npz",
            object=simulated.true_object,
            probe=simulated.true_probe,
            positions=scan.positions,
        )
        paths.append(path)
    if marker:
        (folder / marker).touch()
    return paths
