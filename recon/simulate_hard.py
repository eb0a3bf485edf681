"""Hard scans for fidelity work: low dose, sparse overlap, strong phase, large position
errors with a global affine error of the stage.

Built from the pieces of the independent simulator (:mod:`recon.simulate_fourier`: the
band-limited Siemens star, the defocused tilted zone-plate probe, the Fermat spiral, the
exact Fourier-shift patches, the flat-phase Gaussian guess of the wrong width); it shares
no forward-model code with the solver. :func:`simulate_hard_scan` adds what
``simulate_scan`` keeps fixed: the linear overlap of neighbouring positions, the star's
phase, and a global affine error of the stage (true = centre + A (reported - centre)
+ random errors), as encoders and interferometers drift.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from recon import simulate_fourier as sf

HardKind = Literal["low-dose", "sparse", "strong-phase", "positions"]


@dataclasses.dataclass(frozen=True)
class StageAffine:
    """A global error of the stage: scale (1 = none), rotation and shear."""

    scale: float = 1.0
    rotation_deg: float = 0.0
    shear: float = 0.0

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> StageAffine:
        """The scale, rotation and shear of a (2, 2) ``matrix`` (inverse of ``matrix``)."""
        scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
        angle = math.atan2(matrix[1, 0], matrix[0, 0])
        cos, sin = math.cos(angle), math.sin(angle)
        shear = (cos * matrix[0, 1] + sin * matrix[1, 1]) / scale
        return cls(scale=scale, rotation_deg=math.degrees(angle), shear=float(shear))

    def matrix(self) -> np.ndarray:
        """(2, 2) acting on (row, col) offsets from the scan's centre."""
        angle = math.radians(self.rotation_deg)
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = np.array([[cos, -sin], [sin, cos]])
        shear = np.array([[1.0, self.shear], [0.0, 1.0]])
        return self.scale * rotation @ shear


def simulate_hard_scan(
    *,
    detector: int = 64,
    n_positions: int = 150,
    overlap: float = sf.OVERLAP,
    phase: float = 1.2,
    absorption: float = 0.25,
    photons: float | None = None,
    position_error_px: float = 0.0,
    affine: StageAffine | None = None,
    seed: int = 0,
) -> sf.FourierSimulation:
    """One simulated view of a Siemens star (see :func:`recon.simulate_fourier.simulate_scan`).

    overlap : linear overlap of neighbouring positions relative to the geometric beam
        diameter (0.75 in ``simulate_scan``; smaller is sparser)
    phase : the star's phase where there is material, radians (2.5 pi wraps)
    photons : mean counts per pattern with Poisson noise; None: noise-free
    position_error_px : RMS of the zero-mean random true-minus-reported displacement
    affine : a global stage error applied to the reported positions about their centre
    """
    if not 0 < overlap < 1:
        raise ValueError(f"overlap must be between 0 and 1, got {overlap}")
    rng = np.random.default_rng(seed)
    probes = sf.probe_modes(detector)
    step = (1 - overlap) * sf.DEFOCUS_SPOT_FRACTION * detector
    spiral = sf.fermat_spiral(n_positions, step)
    reported = spiral - spiral.min(axis=0) + sf.POSITION_MARGIN
    centre_pos = reported.mean(axis=0)
    true_positions = reported.copy()
    if affine is not None:
        true_positions = centre_pos + (reported - centre_pos) @ affine.matrix().T
    if position_error_px > 0:
        errors = rng.normal(size=reported.shape)
        errors -= errors.mean(axis=0)
        errors *= position_error_px / math.sqrt(float(np.mean(np.sum(errors**2, axis=1))))
        true_positions = true_positions + errors
    displacement = true_positions - reported
    object_shape = tuple(
        math.ceil(float(extent)) + detector + sf.POSITION_MARGIN for extent in reported.max(axis=0)
    )
    pad = sf.CANVAS_MARGIN + math.ceil(float(np.abs(displacement).max(initial=0.0)))
    canvas_shape = (object_shape[0] + 2 * pad, object_shape[1] + 2 * pad)
    centre = (pad + object_shape[0] / 2, pad + object_shape[1] / 2)
    field_radius = min(object_shape) / 2 - sf.POSITION_MARGIN
    canvas = sf.siemens_star(
        canvas_shape, centre, 0.92 * field_radius, phase=phase, absorption=absorption
    )
    patches = sf.shifted_patches(canvas, true_positions + pad, detector)
    intensity = sf.diffraction_intensity(patches, probes)
    target = sf.NOISE_FREE_PHOTONS if photons is None else float(photons)
    scale = target / float(intensity.sum(axis=(1, 2)).mean())
    intensity *= scale
    probes = probes * math.sqrt(scale)
    if photons is not None:
        intensity = rng.poisson(intensity).astype(np.float64)
    wavelength = sf.PLANCK * sf.LIGHT_SPEED / sf.ENERGY_J
    pixel_size = wavelength * sf.DISTANCE_M / (detector * sf.DETECTOR_PIXEL_M)
    return sf.FourierSimulation(
        data=intensity.astype(np.float32),
        reported_positions=reported,
        true_positions=true_positions,
        true_object=canvas[pad : pad + object_shape[0], pad : pad + object_shape[1]].astype(
            np.complex64
        ),
        true_probe=probes.astype(np.complex64),
        probe_guess=sf.gaussian_probe_guess(probes, sf.GUESS_WIDTH_FACTOR),
        pixel_size=pixel_size,
        wavelength=wavelength,
    )


#: The hard cases of issue 18 at 64 px (the low-dose one also at 128 px in the benchmark).
HARD_CASES: dict[str, dict] = {
    "low dose 1e4": {"photons": 1e4},
    "low dose 1e3": {"photons": 1e3},
    # Step = 0.7 x the geometric beam diameter (simulate_scan: 0.25 x).
    "sparse overlap": {"overlap": 0.3, "photons": 1e6},
    "strong phase 2.5pi": {"phase": 2.5 * math.pi, "photons": 1e6},
    # 1.5 and 2.5 px at 64 px are the 3 and 5 px of a 128 px scan: the same errors
    # relative to the beam and the step (see README).
    "positions off 1.5 px": {"position_error_px": 1.5, "photons": 1e6},
    "positions off 2.5 px": {"position_error_px": 2.5, "photons": 1e6},
    "positions off 1.5 px + affine": {
        "position_error_px": 1.5,
        "affine": StageAffine(scale=1.02, rotation_deg=1.5, shear=0.01),
        "photons": 1e6,
    },
    "positions off 2.5 px + affine": {
        "position_error_px": 2.5,
        "affine": StageAffine(scale=1.02, rotation_deg=1.5, shear=0.01),
        "photons": 1e6,
    },
}
