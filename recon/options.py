"""Reconstruction options: one validated dataclass.

The same object is the flow input's ``recon`` section and the compute
function's keyword arguments, so it round-trips through JSON and rejects
unknown keys with a message that lists the known ones.
"""

from __future__ import annotations

import dataclasses
import json
from enum import StrEnum
from typing import Any

from recon.errors import OptionsError


class CostFunction(StrEnum):
    """The noise model the solver maximises the likelihood of."""

    POISSON = "poisson"  #: photon counting noise; the default
    GAUSSIAN = "gaussian"  #: Gaussian noise on the amplitudes (least squares on sqrt(counts))


class PatchModel(StrEnum):
    """How a probe is placed at a sub-pixel scan position."""

    FOURIER = "fourier"  #: band-limited: integer object windows, the probe shifted by a phase ramp
    BILINEAR = "bilinear"  #: object patches interpolated bilinearly


class ArrayBackend(StrEnum):
    """Where the arrays live."""

    AUTO = "auto"  #: CuPy when a GPU is usable, else NumPy
    NUMPY = "numpy"  #: CPU
    CUPY = "cupy"  #: NVIDIA GPUs through CuPy


#: More incoherent modes than this is a typo, not a beam.
MAX_PROBE_MODES = 16


@dataclasses.dataclass(frozen=True)
class ReconOptions:
    """Options of one reconstruction."""

    iterations: int = 100
    """Number of solver iterations; each refines the object and then the probe."""

    cost: CostFunction = CostFunction.POISSON
    """Noise model: ``poisson`` (maximum likelihood for counts) or ``gaussian`` (amplitudes)."""

    refine_probe: bool = True
    """Refine the probe as well as the object (alternating). False keeps the probe guess."""

    probe_start: int = 1
    """With ``probe_warmup=0``: first iteration (0-based) at which the probe is refined;
    early object-only iterations keep the probe from absorbing object structure."""

    probe_warmup: int | None = None
    """Staged start: the first ``probe_warmup`` iterations refine only the probe, against
    a flat object, so a rough guess (a Gaussian spot of the wrong size) first takes the
    beam's size and far-field footprint before the object can absorb its errors.
    None: 5 % of the iterations. With 0 the object is refined first and the probe from
    ``probe_start``."""

    amplitude_start: float = 0.8
    """Staged cost: this fraction of the iterations minimises the amplitude (Gaussian)
    cost before ``cost`` takes over. Far from the solution the Poisson gradient is
    dominated by pixels the model leaves dark; the amplitude cost is not. 0 turns it off.
    The cost history always reports ``cost``. The amplitude cost also converges faster
    from a rough guess (independent noise-free star, 60 iterations, one probe step: 0.2
    -> phase SSIM 0.69, 0.35 -> 0.89, 0.5 -> 0.97, 0.75 -> 0.999), and scores higher on
    noisy data (``bench/noise.py``), so most of the run uses it."""

    patch_model: PatchModel = PatchModel.FOURIER
    """Sub-pixel model: ``fourier`` (band-limited shift, the default) or ``bilinear``."""

    probe_modes: int = 1
    """Incoherent probe modes (mixed states) for a partially coherent beam. Extra modes
    enter at ``modes_start`` as the first times random noise (15 % of its power); they
    are kept orthogonal and ordered by power."""

    modes_start: int | None = None
    """Iteration (0-based) at which the extra probe modes enter; until then one mode is
    refined. None: after 50 % of the iterations. 0: every mode from the start."""

    refine_positions: bool = False
    """Refine every scan position by its cost gradient (``fourier`` model only), the mean
    correction removed so the object does not drift."""

    position_start: int | None = None
    """First iteration (0-based) at which positions are refined by gradient steps, once
    object and probe have form; None: with the position search (``position_search``) after
    80 % of the iterations, where its passes end, or as soon as it has settled; after 50 %
    without it (independent scans, 1 px RMS errors, Gaussian guess, 60 iterations, three
    noise seeds, without the search: from 30 % phase SSIM 0.944-0.999, from 40 %
    0.979-0.999, from 50 % 0.997-0.999; positions moved earlier follow an object that is
    still forming)."""

    position_search: int | None = None
    """With ``refine_positions``: radius in pixels of a search for errors of several pixels
    (random encoder errors, jumps), which the gradient steps alone cannot catch.
    From 30 % to 80 % of the iterations, every 3 iterations (at most 30 passes), each
    position is moved to the shift within this radius whose modelled pattern best matches
    its measured one (the amplitude misfit under the current object and probe); the scale,
    rotation and shear part of those moves is left to the gradient steps, which then run
    from 80 %, or from the end of the search once five passes in a row moved the positions
    by less than 0.1 px RMS. None: an eighth of the detector's side (8 px at 64 px) in
    runs of 100 iterations or more, no search in shorter ones (in 60 iterations the object
    has too little form by then: a 1 px error case fell from 0.997 to 0.993 phase SSIM);
    0: no search (the gradient steps from ``position_start``). The object grows by 1.5
    radii so moved windows fit. Each pass costs about as much as 10 iterations at the
    default radius. The coarse levels of
    ``coarse_levels`` neither search nor take position steps; the full view does both."""

    coarse_levels: int | None = None
    """Multi-resolution start: first reconstruct the view from the central half of every
    pattern (object pixels twice as large, phase steps half as steep) with the reported
    positions, and start the full view from that object and probe; repeated
    ``coarse_levels`` times. Positions are refined in the full view only (the coarse
    levels keep the reported ones). Each coarser level runs half the iterations at a
    quarter of the cost (about +20 % time at one level). None (the default): one level
    when the central half of the patterns holds at least half of their counts (summed
    over the scan; ``ReconResult.coarse_levels`` says what ran), none when the beam's
    light falls mostly outside it: there the half-resolution model, a probe band-limited
    to the central half, cannot represent the beam (a defocused zone-plate pupil filling
    the detector, 22 % in the central half, fell from 0.80 to 0.10 phase SSIM with a
    coarse level). Measured (64 px, ``recon.simulate_hard``, 60 iterations): a 2.5 pi
    phase star 0.39 / 0.36 phase SSIM at full resolution, 0.988 / 0.998 with the default
    level; the other simulated cases within 0.004 (README, issue 18). 0: always start at
    full resolution from a flat object."""

    dark_floor: float = 0.0
    """Fade the costs' pull in pixels the model leaves dark below this fraction of the data's
    mean intensity per pixel (e.g. 1e-5; see ``recon.cost``). There the textbook gradient
    follows the FFT's rounding noise, so two backends (or two FFT libraries) take different
    paths from a rough probe guess; with a floor they agree to float32 rounding step by
    step. 0 (the default) keeps the textbook costs, which converge faster from a rough
    guess on the independent tomography views (60 iterations: 0.99 against 0.88-0.98)."""

    holdout_fraction: float = 0.0
    """Fraction of the patterns (e.g. 0.05) held out of the fit to decide when to stop:
    their cost under the current object and probe is evaluated after every iteration,
    the iterate with the lowest held-out cost is returned, and the solver stops once it
    has not improved for ``holdout_patience`` iterations. It stops the fit before it
    follows the noise (see ``recon.holdout``). 0 (the default) fits every pattern for
    all ``iterations``."""

    holdout_patience: int = 10
    """Iterations without a new lowest held-out cost before stopping (with
    ``holdout_fraction`` > 0)."""

    defocus_search: bool | None = None
    """Start the probe from the best of several defocused versions of its guess: the guess,
    and the guess with the far-field quadratic phase of a beam whose geometric spot is a
    quarter or half of the probe window wide, in either direction (5 candidates), each
    reconstructed for ``recon.ptycho.DEFOCUS_SEARCH_ITERATIONS`` iterations and judged by
    its cost. A flat-phase guess is a focused beam, and the defocus does not show in the
    mean pattern; with sparse overlap the fit does not find it (30 % overlap: 0.05 phase
    SSIM from a flat-phase Gaussian, 0.998 with the search). It costs about 100 extra
    iterations. None (the default): on when the scan is sparse, i.e. the median step to
    the nearest position is at least ``recon.ptycho.SPARSE_STEP_FRACTION`` of the detector
    width (dense scans keep exactly their path)."""

    object_tv: float | None = None
    """Total-variation penalty on the object against fitting photon noise
    (``recon.regularise``): a dimensionless weight, scaled by the square root of the mean
    illumination so it smooths the same share of the shot noise at any dose. None (the
    default): chosen from the data's mean counts per pattern (``recon.ptycho.
    LOW_DOSE_COUNTS``, LOW_DOSE_OBJECT_TV). 0 turns it off."""

    devices: int | None = None
    """Number of devices (GPUs, or partitions on the CPU) to split the view over.
    None chooses from the view size (small views use one device)."""

    backend: ArrayBackend = ArrayBackend.AUTO
    """Array backend: ``auto`` (CuPy when a GPU is usable), ``numpy`` or ``cupy``."""

    def __post_init__(self) -> None:
        # Coerce strings to enums so JSON input works, and check ranges.
        for field, enum in (
            ("cost", CostFunction),
            ("backend", ArrayBackend),
            ("patch_model", PatchModel),
        ):
            value = getattr(self, field)
            try:
                object.__setattr__(self, field, enum(value))
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise OptionsError(f"option {field}={value!r} is not one of: {choices}") from None
        _check_int("iterations", self.iterations, minimum=1)
        _check_int("probe_start", self.probe_start, minimum=0)
        if self.probe_warmup is not None:
            _check_int("probe_warmup", self.probe_warmup, minimum=0)
        _check_int("probe_modes", self.probe_modes, minimum=1)
        if self.modes_start is not None:
            _check_int("modes_start", self.modes_start, minimum=0)
        if self.position_start is not None:
            _check_int("position_start", self.position_start, minimum=0)
        if self.probe_modes > MAX_PROBE_MODES:
            raise OptionsError(
                f"option probe_modes={self.probe_modes} is more than {MAX_PROBE_MODES}"
            )
        _check_int("holdout_patience", self.holdout_patience, minimum=1)
        if self.coarse_levels is not None:
            _check_int("coarse_levels", self.coarse_levels, minimum=0)
        if self.position_search is not None:
            _check_int("position_search", self.position_search, minimum=0)
        start = self.amplitude_start
        if isinstance(start, bool) or not isinstance(start, int | float) or not 0 <= start < 1:
            raise OptionsError(
                f"option amplitude_start={start!r} must be a number from 0 to below 1 "
                "(the fraction of iterations run with the amplitude cost; 0 turns it off)"
            )
        floor = self.dark_floor
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 <= floor < 1:
            raise OptionsError(
                f"option dark_floor={floor!r} must be a number from 0 to below 1 "
                "(a fraction of the mean intensity, e.g. 1e-5; 0 turns it off)"
            )
        tv = self.object_tv
        if tv is not None and (
            isinstance(tv, bool) or not isinstance(tv, int | float) or not 0 <= tv < 100
        ):
            raise OptionsError(
                f"option object_tv={tv!r} must be a number from 0 to below 100 "
                "(e.g. 0.5; 0 turns the total-variation penalty off, null chooses it "
                "from the counts)"
            )
        fraction = self.holdout_fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0 <= fraction <= 0.5
        ):
            raise OptionsError(
                f"option holdout_fraction={fraction!r} must be a number from 0 to 0.5 "
                "(e.g. 0.05; 0 turns stopping on held-out patterns off)"
            )
        if self.devices is not None:
            _check_int("devices", self.devices, minimum=1)
        if self.defocus_search is not None and not isinstance(self.defocus_search, bool):
            raise OptionsError(
                f"option defocus_search={self.defocus_search!r} must be true, false or null "
                "(null: on for sparse scans)"
            )
        for field in ("refine_probe", "refine_positions"):
            if not isinstance(getattr(self, field), bool):
                raise OptionsError(f"option {field}={getattr(self, field)!r} must be true or false")
        if self.refine_positions and self.patch_model is not PatchModel.FOURIER:
            raise OptionsError(
                "option refine_positions needs patch_model='fourier' (the position gradient "
                "is the derivative of the Fourier shift)"
            )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ReconOptions:
        """Options from a mapping; unknown keys are an error naming the known ones."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise OptionsError(
                f"unknown reconstruction option(s) {', '.join(unknown)}; "
                f"known options: {', '.join(cls.field_names())}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (enums as their string values)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, StrEnum):
                out[key] = value.value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReconOptions:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise OptionsError(f"reconstruction options are not valid JSON: {err}") from err
        if not isinstance(values, dict):
            raise OptionsError("reconstruction options must be a JSON object")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> ReconOptions:
        return self.from_dict({**self.to_dict(), **changes})


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionsError(f"option {name}={value!r} must be an integer >= {minimum}")
