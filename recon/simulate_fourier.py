"""An independent simulator of far-field ptychography scans, for tests and benchmarks.

It models a scan the way a real beamline produces one, and shares no forward-model code
with the solver (``recon.operators``, ``recon.ptycho``) nor with the solver's own test
simulator (``recon.simulate``):

- **band-limited objects** on a periodic canvas (a Siemens star, or the projection of a
  random set of spheres seen from a chosen rotation angle, as in a tomographic series),
  anti-aliased by 4x supersampling and low-passed in Fourier space, phase and amplitude;
- **exact sub-pixel positions**: each patch is cut from the canvas after a Fourier shift
  of the whole canvas (a phase ramp on its spectrum), which is exact for a band-limited
  periodic object; the canvas extends :data:`CANVAS_MARGIN` pixels (plus the largest
  position error) beyond the scanned area, so the periodic wrap never reaches a patch;
- **a defocused, tilted probe**: a zone-plate pupil (circular aperture with a central
  stop) brought to focus and Fresnel-propagated out of focus, with a linear phase (beam
  tilt) that moves its far field off the detector centre;
- optional **partial coherence**: a second probe mode (the focus of a laterally displaced
  source point), orthogonalised against the first, with a given power split (e.g. 80/20);
  the intensity is the incoherent sum over modes;
- optional **position errors**: the true positions differ from the reported ones by a
  zero-mean random displacement of a given RMS length, in pixels;
- optional **Poisson noise** at a given mean number of photons per pattern.

The CXI file is written here with h5py, following the data contract in ``DESIGN.md``
(not through ``recon.cxi.write_cxi``), with a flat-phase Gaussian probe guess of the wrong
width, as a beamline without an optics model would give. :func:`simulate_scan` returns the
ground truth: object, probe modes, true and reported positions.

Grid: ``true_object`` is on the object-pixel grid of the REPORTED positions as our loader
returns them (top-left corner of each patch, smallest row and column at
:data:`recon.cxi.POSITION_MARGIN`); ``true_positions`` are on the same grid, so the patch
that made pattern ``i`` is ``true_object[r:r+D, c:c+D]`` at ``(r, c) = true_positions[i]``
(sub-pixel, band-limited interpolation).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Literal

import h5py
import numpy as np

#: Planck constant (J s) and the speed of light (m/s), exact SI values.
PLANCK = 6.62607015e-34
LIGHT_SPEED = 299_792_458.0
#: Photon energy (8.8 keV), in joules.
ENERGY_J = 8.8e3 * 1.602176634e-19
#: Sample-to-detector distance, metres.
DISTANCE_M = 1.9
#: Detector pixel pitch, metres.
DETECTOR_PIXEL_M = 75e-6
#: The loader puts the smallest reported row and column this many pixels in
#: (must equal ``recon.cxi.POSITION_MARGIN``; a test checks that).
POSITION_MARGIN = 2
#: Canvas pixels beyond the scanned area on every side (plus the largest position error).
CANVAS_MARGIN = 12
#: Supersampling factor used to anti-alias the objects before band-limiting.
SUPERSAMPLE = 4
#: The object's spectrum is kept below BAND_START and tapered (raised cosine) to zero at
#: BAND_STOP, in cycles per pixel (Nyquist is 0.5).
BAND_START = 0.3
BAND_STOP = 0.42
#: Zone-plate pupil: outer diameter as a fraction of the detector, central stop as a
#: fraction of the outer diameter.
PUPIL_DIAMETER_FRACTION = 0.3
CENTRAL_STOP_FRACTION = 0.3
#: Defocus: the geometric beam diameter at the sample as a fraction of the detector window.
DEFOCUS_SPOT_FRACTION = 0.25
#: Beam tilt: the far-field centre of the probe moves by this many detector pixels (row, col).
TILT_PX = (1.5, -2.25)
#: Second probe mode: a source point displaced by this many object pixels (row, col).
SECOND_MODE_DISPLACEMENT_PX = (1.5, 1.0)
#: Linear overlap of neighbouring positions, relative to the geometric beam diameter.
OVERLAP = 0.75
#: Mean total counts per pattern when no Poisson noise is asked for.
NOISE_FREE_PHOTONS = 1e6
#: The Gaussian probe guess's RMS radius relative to the true probe's (a wrong width).
GUESS_WIDTH_FACTOR = 0.55
#: Patterns per inverse-FFT batch while cutting patches.
BATCH = 32

ObjectKind = Literal["star", "spheres"]


@dataclasses.dataclass
class FourierSimulation:
    """A simulated view and the truth it was made from.

    data : (N_POS, D, D) float32 counts, zero frequency at the centre (index D // 2).
    reported_positions : (N_POS, 2) float64 (row, col) top-left corners in object pixels,
        the smallest row and column at POSITION_MARGIN: what the file says.
    true_positions : (N_POS, 2) float64, where the patches really were (same grid).
    true_object : (OBJ_H, OBJ_W) complex64 on the grid of the reported positions.
    true_probe : (MODES, D, D) complex64, scaled to the counts: the noise-free data are
        sum over modes of |unitary FFT(probe[m] x patch)|^2.
    probe_guess : (D, D) complex64, the flat-phase Gaussian written to the file.
    pixel_size : object pixel size, metres; wavelength : metres.
    path : the CXI file, when one was written.
    """

    data: np.ndarray
    reported_positions: np.ndarray
    true_positions: np.ndarray
    true_object: np.ndarray
    true_probe: np.ndarray
    probe_guess: np.ndarray
    pixel_size: float
    wavelength: float
    energy_j: float = ENERGY_J
    distance_m: float = DISTANCE_M
    path: pathlib.Path | None = None

    @property
    def mode_power_fractions(self) -> np.ndarray:
        """(MODES,) each probe mode's share of the total power."""
        power = np.sum(np.abs(self.true_probe) ** 2, axis=(-2, -1))
        return power / power.sum()

    def to_scan(self):
        """The view as a validated ``recon.scan.ScanData`` (reported positions, the
        Gaussian guess), without going through a file."""
        from recon.cxi import validated_scan

        return validated_scan(
            self.data,
            self.reported_positions,
            probe=self.probe_guess,
            pixel_size=self.pixel_size,
            wavelength=self.wavelength,
            distance=self.distance_m,
            source="<fourier simulation>",
        )


# --------------------------------------------------------------------------- objects


def band_limit(image: np.ndarray) -> np.ndarray:
    """Low-pass a (periodic) image: spectrum kept below BAND_START cycles/pixel and tapered
    to zero at BAND_STOP (radially), so the Nyquist frequency carries nothing.

    image : (H, W) real or complex. Returns (H, W) complex128.
    """
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    radius = np.hypot(fy, fx)
    taper = np.clip((radius - BAND_START) / (BAND_STOP - BAND_START), 0, 1)
    window = 0.5 * (1 + np.cos(math.pi * taper))
    return np.fft.ifft2(np.fft.fft2(image) * window)


def _supersampled_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (pixel units) of SUPERSAMPLE x SUPERSAMPLE sub-pixel
    centres of every pixel of ``shape``; arrays of shape (H*S, W*S)."""
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    rows = (np.arange(shape[0])[:, None] + offsets[None, :]).ravel()
    cols = (np.arange(shape[1])[:, None] + offsets[None, :]).ravel()
    return np.meshgrid(rows, cols, indexing="ij")


def _pixel_average(fine: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Average SUPERSAMPLE x SUPERSAMPLE blocks back to ``shape`` (box anti-aliasing)."""
    return fine.reshape(shape[0], SUPERSAMPLE, shape[1], SUPERSAMPLE).mean(axis=(1, 3))


def siemens_star(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radius: float,
    *,
    spokes: int = 36,
    phase: float = 1.2,
    absorption: float = 0.25,
    rotation_deg: float = 0.0,
) -> np.ndarray:
    """A band-limited Siemens star: ``spokes`` bright/dark sector pairs out to ``radius``
    pixels around ``centre`` (row, col), with a thin ring at the rim.

    Where there is material the phase is ``phase`` radians and the amplitude
    ``1 - absorption``; elsewhere the object is empty (1). Returns ``shape`` complex128.
    """
    rows, cols = _supersampled_grid(shape)
    dy, dx = rows - centre[0], cols - centre[1]
    angle = np.arctan2(dy, dx) - math.radians(rotation_deg)
    distance = np.hypot(dy, dx)
    material = (np.cos(spokes * angle) > 0) & (distance < radius)
    material |= np.abs(distance - radius * 1.04) < 1.5
    thickness = _pixel_average(material.astype(np.float64), shape)
    transmission = (1 - absorption * thickness) * np.exp(1j * phase * thickness)
    return band_limit(transmission)


def sphere_phantom(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radius: float,
    *,
    angle_deg: float = 0.0,
    spheres: int = 30,
    seed: int = 0,
    phase_per_pixel: float = 0.02,
    absorption_ratio: float = 0.1,
) -> np.ndarray:
    """The projection of random spheres in a cylinder of ``radius`` pixels around the
    vertical axis through ``centre``, seen after rotating the sample by ``angle_deg`` about
    that axis (rows): one view of a tomographic series. The same ``seed`` gives the same
    3-D sample at every angle.

    Phase = -phase_per_pixel x projected thickness (pixels); amplitude =
    exp(-absorption_ratio x |phase|). Returns ``shape`` complex128, band-limited.
    """
    rng = np.random.default_rng(seed)
    sphere_radius = rng.uniform(0.06, 0.2, spheres) * radius
    # Centres inside the cylinder (|x|, |z| within radius - r) and the field's height.
    reach = radius - sphere_radius
    polar_r = reach * np.sqrt(rng.uniform(0, 1, spheres))
    polar_t = rng.uniform(0, 2 * math.pi, spheres)
    x, z = polar_r * np.cos(polar_t), polar_r * np.sin(polar_t)
    y = rng.uniform(-1, 1, spheres) * reach
    theta = math.radians(angle_deg)
    x_view = x * math.cos(theta) + z * math.sin(theta)
    rows, cols = _supersampled_grid(shape)
    thickness = np.zeros(rows.shape)
    for r, yy, xx in zip(sphere_radius, y, x_view, strict=True):
        squared = r**2 - (rows - centre[0] - yy) ** 2 - (cols - centre[1] - xx) ** 2
        thickness += 2 * np.sqrt(np.maximum(squared, 0))
    thickness = _pixel_average(thickness, shape)
    phase = -phase_per_pixel * thickness
    return band_limit(np.exp(-absorption_ratio * np.abs(phase)) * np.exp(1j * phase))


# --------------------------------------------------------------------------- probe


def zone_plate_probe(
    detector: int,
    *,
    spot_fraction: float | None = None,
    tilt_px: tuple[float, float] = TILT_PX,
    source_displacement_px: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """A defocused zone-plate probe with a tilt, in the sample plane.

    The pupil (in detector pixels, centred): a disc of PUPIL_DIAMETER_FRACTION x detector
    with a central stop. Fresnel propagation by a defocus distance multiplies it by
    exp(i pi (k / k_edge)^2 phi_edge); phi_edge is chosen so the geometric beam is
    ``spot_fraction`` x detector wide. The tilt moves the pupil by ``tilt_px`` (a linear
    phase on the probe); ``source_displacement_px`` moves the focus laterally (a source
    point off axis, for a second coherent mode).

    Returns (detector, detector) complex128 with unit total power, centred.
    """
    k = np.fft.fftshift(np.fft.fftfreq(detector)) * detector  # detector pixels, 0 at centre
    ky = k[:, None] - tilt_px[0]
    kx = k[None, :] - tilt_px[1]
    k_edge = PUPIL_DIAMETER_FRACTION * detector / 2
    radius = np.hypot(ky, kx)
    pupil = ((radius <= k_edge) & (radius >= CENTRAL_STOP_FRACTION * k_edge)).astype(complex)
    # A ray at pupil frequency k (cycles/pixel) lands at x = (1 / 2 pi) d phase / dk; at the
    # edge that is phi_edge / (pi k_edge / D) pixels, which should be spot_fraction x D / 2.
    if spot_fraction is None:
        spot_fraction = DEFOCUS_SPOT_FRACTION
    phi_edge = math.pi * (k_edge / detector) * spot_fraction * detector / 2
    pupil *= np.exp(1j * phi_edge * (radius / k_edge) ** 2)
    shift_row, shift_col = source_displacement_px
    pupil *= np.exp(-2j * math.pi * (ky * shift_row + kx * shift_col) / detector)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
    return probe / math.sqrt(float(np.sum(np.abs(probe) ** 2)))


def probe_modes(detector: int, powers: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """Orthogonal probe modes with the given power fractions (normalised to sum 1).

    Mode 0 is :func:`zone_plate_probe`; mode m > 0 comes from a source point displaced by
    m x SECOND_MODE_DISPLACEMENT_PX, Gram-Schmidt orthogonalised against the earlier modes.
    Returns (MODES, detector, detector) complex128, total power 1.
    """
    fractions = np.asarray(powers, dtype=np.float64)
    if fractions.ndim != 1 or len(fractions) < 1 or np.any(fractions <= 0):
        raise ValueError(f"powers must be positive fractions, one per mode; got {powers}")
    fractions = fractions / fractions.sum()
    modes: list[np.ndarray] = []
    for index in range(len(fractions)):
        shift = tuple(index * s for s in SECOND_MODE_DISPLACEMENT_PX)
        mode = zone_plate_probe(detector, source_displacement_px=shift)
        for earlier in modes:
            mode = mode - np.vdot(earlier, mode) * earlier
        mode /= math.sqrt(float(np.sum(np.abs(mode) ** 2)))
        modes.append(mode)
    return np.stack(modes) * np.sqrt(fractions)[:, None, None]


def gaussian_probe_guess(true_probe: np.ndarray, width_factor: float) -> np.ndarray:
    """A flat-phase Gaussian, centred, whose RMS radius is ``width_factor`` times the true
    probe's (intensity-weighted, about its own centroid), with the true total power.

    true_probe : (MODES, D, D). Returns (D, D) complex64.
    """
    intensity = np.sum(np.abs(true_probe) ** 2, axis=0)
    detector = intensity.shape[-1]
    rows, cols = np.indices(intensity.shape, dtype=np.float64)
    total = intensity.sum()
    centroid = (np.sum(rows * intensity) / total, np.sum(cols * intensity) / total)
    spread = np.sum(((rows - centroid[0]) ** 2 + (cols - centroid[1]) ** 2) * intensity) / total
    sigma = width_factor * math.sqrt(spread / 2)  # per axis, of the intensity
    centre = detector // 2
    gaussian = np.exp(-((rows - centre) ** 2 + (cols - centre) ** 2) / (4 * sigma**2))
    gaussian *= math.sqrt(total / float(np.sum(gaussian**2)))
    return gaussian.astype(np.complex64)


def rms_radius(probe: np.ndarray) -> float:
    """Intensity-weighted RMS distance from the centroid, pixels; probe (..., D, D)."""
    intensity = np.abs(probe) ** 2
    if intensity.ndim == 3:
        intensity = intensity.sum(axis=0)
    rows, cols = np.indices(intensity.shape, dtype=np.float64)
    total = intensity.sum()
    mean_r, mean_c = np.sum(rows * intensity) / total, np.sum(cols * intensity) / total
    return math.sqrt(
        float(np.sum(((rows - mean_r) ** 2 + (cols - mean_c) ** 2) * intensity) / total)
    )


# --------------------------------------------------------------------------- scan


def fermat_spiral(n_positions: int, step: float) -> np.ndarray:
    """(n_positions, 2) (row, col) points of a Fermat spiral whose nearest neighbours are
    about ``step`` pixels apart, centred on (0, 0)."""
    golden = math.pi * (3 - math.sqrt(5))
    index = np.arange(n_positions, dtype=np.float64)
    radius = step / math.sqrt(math.pi) * np.sqrt(index + 0.5)
    return np.stack([radius * np.sin(golden * index), radius * np.cos(golden * index)], axis=1)


def shifted_patches(canvas: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """Patches of a periodic band-limited canvas at sub-pixel top-left corners.

    canvas : (C_H, C_W) complex; corners : (N, 2) (row, col) canvas pixels, sub-pixel;
    size : patch side D. Patch i is canvas(corner_i + (j, k)) for j, k in 0..D-1,
    evaluated exactly: the whole canvas is shifted by the fractional part with a phase
    ramp on its spectrum, then cut at the integer part. Returns (N, D, D) complex128.
    """
    corners = np.asarray(corners, dtype=np.float64)
    spectrum = np.fft.fft2(canvas)
    freq_r = np.fft.fftfreq(canvas.shape[0])[:, None]
    freq_c = np.fft.fftfreq(canvas.shape[1])[None, :]
    whole = np.floor(corners).astype(int)
    fraction = corners - whole
    if np.any(whole < 0) or np.any(whole + size > np.array(canvas.shape)):
        raise ValueError("a patch reaches outside the canvas; enlarge its margin")
    patches = np.empty((len(corners), size, size), dtype=np.complex128)
    for first in range(0, len(corners), BATCH):
        block = slice(first, first + BATCH)
        ramps = np.exp(
            2j
            * math.pi
            * (
                fraction[block, 0, None, None] * freq_r[None]
                + fraction[block, 1, None, None] * freq_c[None]
            )
        )
        moved = np.fft.ifft2(spectrum[None] * ramps)
        for offset, (row, col) in enumerate(whole[block]):
            patches[first + offset] = moved[offset, row : row + size, col : col + size]
    return patches


def diffraction_intensity(patches: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """Sum over modes of |unitary 2-D FFT(probe[m] x patch)|^2, zero frequency centred.

    patches : (N, D, D) complex; probes : (MODES, D, D) complex. Returns (N, D, D) float64.
    """
    total = np.zeros(patches.shape, dtype=np.float64)
    for mode in probes:
        far = np.fft.fft2(mode[None] * patches, norm="ortho")
        total += far.real**2 + far.imag**2
    return np.fft.fftshift(total, axes=(-2, -1))


def simulate_scan(
    path: str | os.PathLike[str] | None = None,
    *,
    detector: int = 64,
    n_positions: int = 200,
    object_kind: ObjectKind = "star",
    view_angle_deg: float = 0.0,
    mode_powers: tuple[float, ...] = (1.0,),
    position_error_px: float = 0.0,
    photons: float | None = None,
    guess_width_factor: float = GUESS_WIDTH_FACTOR,
    seed: int = 0,
) -> FourierSimulation:
    """Simulate one view; write it as a CXI file to ``path`` when given.

    detector : pattern side D; n_positions : points on a Fermat spiral with OVERLAP
    object_kind : ``star`` (Siemens star) or ``spheres`` (projection of random spheres at
        ``view_angle_deg``; the 3-D sample depends on ``seed`` only, not on the angle)
    mode_powers : probe mode power fractions, e.g. (0.8, 0.2) for two modes
    position_error_px : RMS length of the (zero-mean) true-minus-reported displacement
    photons : mean counts per pattern with Poisson noise; None: noise-free, scaled to
        NOISE_FREE_PHOTONS
    guess_width_factor : RMS radius of the Gaussian guess relative to the true probe's
    seed : seeds the spiral's rotation, position errors, phantom and noise
    """
    if object_kind not in ("star", "spheres"):
        raise ValueError(f"object_kind must be 'star' or 'spheres', got {object_kind!r}")
    if position_error_px < 0:
        raise ValueError(f"position_error_px must be >= 0, got {position_error_px}")
    rng = np.random.default_rng(seed)
    probes = probe_modes(detector, mode_powers)
    step = (1 - OVERLAP) * DEFOCUS_SPOT_FRACTION * detector
    spiral = fermat_spiral(n_positions, step)
    reported = spiral - spiral.min(axis=0) + POSITION_MARGIN
    errors = np.zeros_like(reported)
    if position_error_px > 0:
        errors = rng.normal(size=reported.shape)
        errors -= errors.mean(axis=0)
        errors *= position_error_px / math.sqrt(float(np.mean(np.sum(errors**2, axis=1))))
    true_positions = reported + errors
    object_shape = tuple(
        math.ceil(float(extent)) + detector + POSITION_MARGIN for extent in reported.max(axis=0)
    )
    pad = CANVAS_MARGIN + math.ceil(float(np.abs(errors).max(initial=0.0)))
    canvas_shape = (object_shape[0] + 2 * pad, object_shape[1] + 2 * pad)
    centre = (pad + object_shape[0] / 2, pad + object_shape[1] / 2)
    field_radius = min(object_shape) / 2 - POSITION_MARGIN
    if object_kind == "star":
        canvas = siemens_star(canvas_shape, centre, 0.92 * field_radius)
    else:
        canvas = sphere_phantom(
            canvas_shape, centre, 0.95 * field_radius, angle_deg=view_angle_deg, seed=seed
        )
    patches = shifted_patches(canvas, true_positions + pad, detector)
    intensity = diffraction_intensity(patches, probes)
    target = NOISE_FREE_PHOTONS if photons is None else float(photons)
    scale = target / float(intensity.sum(axis=(1, 2)).mean())
    intensity *= scale
    probes = probes * math.sqrt(scale)
    if photons is not None:
        intensity = rng.poisson(intensity).astype(np.float64)
    wavelength = PLANCK * LIGHT_SPEED / ENERGY_J
    pixel_size = wavelength * DISTANCE_M / (detector * DETECTOR_PIXEL_M)
    simulation = FourierSimulation(
        data=intensity.astype(np.float32),
        reported_positions=reported,
        true_positions=true_positions,
        true_object=canvas[pad : pad + object_shape[0], pad : pad + object_shape[1]].astype(
            np.complex64
        ),
        true_probe=probes.astype(np.complex64),
        probe_guess=gaussian_probe_guess(probes, guess_width_factor),
        pixel_size=pixel_size,
        wavelength=wavelength,
    )
    if path is not None:
        simulation.path = write_cxi_file(path, simulation)
    return simulation


def write_cxi_file(path: str | os.PathLike[str], simulation: FourierSimulation) -> pathlib.Path:
    """Write the view as CXI (``DESIGN.md``, "CXI input"), with the Gaussian probe guess;
    translations in metres, x = columns, y = rows. Returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_patterns, height, width = simulation.data.shape
    translation = np.zeros((n_patterns, 3))
    translation[:, 0] = simulation.reported_positions[:, 1] * simulation.pixel_size
    translation[:, 1] = simulation.reported_positions[:, 0] * simulation.pixel_size
    with h5py.File(path, "w") as handle:
        handle.attrs["cxi_version"] = 150
        entry = handle.create_group("entry_1")
        entry.create_dataset("data_1/data", data=simulation.data, chunks=(1, height, width))
        entry.create_dataset("sample_1/geometry_1/translation", data=translation)
        detector = entry.create_group("instrument_1/detector_1")
        detector["distance"] = simulation.distance_m
        detector["x_pixel_size"] = DETECTOR_PIXEL_M
        detector["y_pixel_size"] = DETECTOR_PIXEL_M
        source = entry.create_group("instrument_1/source_1")
        source["energy"] = simulation.energy_j
        source["probe"] = simulation.probe_guess
    return path
