"""Maximum-likelihood ptychography by conjugate gradients, on one or many devices.

The hybrid multi-device model (PtyGer): scan positions are split into spatial
tiles, one per device; each device keeps its tile's patterns, far fields and a
copy of the object region its patches touch, plus the probe. Every iteration
refines the object by one nonlinear CG step, then the probe (every mode) by two
(PROBE_STEPS), then (optionally) the scan positions. A staged start (``probe_warmup``,
``amplitude_start``, ``modes_start``) takes a rough probe guess to a fit first.
Each CG step runs in four phases:

GRAD    each device computes its partial gradient (and preconditioner);
DIR     the partial gradients are summed on the first device, in partition order,
        the Dai–Yuan direction is formed there and copied to every device;
LS      backtracking line search: each device evaluates its partial cost of a
        trial step from cached forward products (the far field is linear in the
        step, so a trial costs no FFT), the scalars are summed in partition order;
UPDATE  every device applies the same step to its copies.

Probe modes are orthogonalised after each iteration's probe steps by a unitary
mixing of the modes, which leaves every modelled intensity unchanged; the same small
matrix is applied on every device. Position corrections are computed per position, their
mean is removed on the host, and every device rebuilds its operators.

Because every reduction runs in a fixed order, N partitions give the single
partition result up to floating-point summation order. With NumPy the same code
runs N partitions on the CPU; with CuPy each partition lives on its own GPU.
All arithmetic goes through the operators of :mod:`recon.operators`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recon.backend import (
    COMPLEX,
    REAL,
    check_devices,
    copy_to,
    device_context,
    get_array_module,
    gpu_names,
    real_inner,
    resolve_backend,
    synchronize,
    to_device,
    to_host,
)
from recon.cost import PoissonCost, dark_floor, make_cost, poisson_noise_terms
from recon.errors import DeviceError, InputError
from recon.memory import GpuClaim, check_gpu_memory, gpu_chunks_for, object_shape_estimate
from recon.operators import Ptycho
from recon.options import CostFunction, ReconOptions
from recon.primitives import (
    add_scaled,
    backend_name,
    chunk_patterns,
    cost_terms,
    cost_value,
    gather_windows,
    gpu_path,
    gradient_farfield,
    line_search_terms,
    line_trial_costs,
    mode_intensity,
    trial_batch,
    update_farfield,
    window_blocks,
)
from recon.regularise import tv_gradient, tv_value, tv_weight
from recon.scan import ScanData
from recon.solver import CGState, batched_backtracking, dai_yuan_beta

#: Pixels of object added beyond the furthest patch (the bilinear window needs one).
OBJECT_MARGIN = 2
#: Preconditioner regularisation, relative to the largest illumination.
PRECONDITIONER_ALPHA = 0.05
#: Sums over overlapping patches and over partitions are accumulated in these dtypes and
#: rounded once, so the result does not depend on the summation order (partition count).
ACCUMULATE_COMPLEX = np.complex128
ACCUMULATE_REAL = np.float64
#: Power of each extra probe mode when it enters, relative to the first mode. Extra modes
#: start as the first times complex Gaussian noise (seeded), as in Tike and Pty-chi.
EXTRA_MODE_POWER = 0.15
EXTRA_MODE_SEED = 0
#: Without ``modes_start``, the extra probe modes enter after this fraction of the
#: iterations: until then one mode is fitted. Started with the others from the first
#: iteration, the extra modes soak up the early misfit of a rough probe guess and the
#: mode split then converges slowly and depends on their starting noise. Measured on the
#: independent 80/20 two-mode scan, 60 iterations, three seeds of the extra mode's noise:
#: every mode from the start 0.67-0.98 phase SSIM; entering at 40 % 0.995-1.000, at 50 %
#: 0.998-0.999 (power split 0.77-0.80 / 0.20-0.23), at 60 % 0.995-0.998 (split 0.80-0.90
#: / 0.10-0.20). One mode alone reaches 0.994 on that scan.
MODES_START_FRACTION = 0.5
#: Probe CG steps per iteration. A rough guess (a Gaussian spot of the wrong width)
#: grows into a defocused beam only through probe steps; with one step per iteration it
#: lags and the object absorbs its errors (independent scans, 60 iterations, two noise
#: seeds: tomography views 0.75-0.99 phase SSIM with one step, 0.985-0.997 with two;
#: noise-free star 0.998 and 1.000). Two probe steps cost about 40 % more per iteration.
PROBE_STEPS = 2
#: Largest total correction of a scan position, object pixels (``coarse_levels``' coarse
#: levels keep the reported positions; the full view refines them).
#: The object grows by this much so corrected windows still fit.
MAX_POSITION_CORRECTION = 4.0
#: Without ``probe_warmup``, this fraction of the iterations refines only the probe.
PROBE_WARMUP_FRACTION = 0.05
#: Without ``position_start``, positions are refined from this fraction of the iterations.
POSITION_START_FRACTION = 0.5
#: Largest change of a position in one iteration, object pixels.
MAX_POSITION_STEP = 0.5
#: Over-relaxation of the per-position Gauss-Newton step: while the object is still being
#: formed it absorbs part of each misplacement, so the plain step under-estimates the move
#: (measured on independently simulated scans: 1 px RMS errors fall to 0.13 px in 100
#: iterations with 3, to 0.34 px with 1).
POSITION_STEP_GAIN = 3.0
#: Regularisation of the per-position 2 x 2 Gauss-Newton system, relative to its trace.
POSITION_REGULARISATION = 1e-3

#: Position search (``position_search``), for errors of several pixels, which the
#: Gauss-Newton steps cannot capture: each pass moves every position to the integer offset
#: within the radius (then a parabola's sub-pixel minimum) with the least amplitude misfit
#: of its pattern under the current object and probe; the affine part of the moves is
#: removed. Passes run every POSITION_SEARCH_EVERY iterations from START to END of the run
#: (at most PASSES), and the Gauss-Newton steps then start at END, or right after the
#: search has settled when that is earlier (unless ``position_start``). The default radius
#: is this fraction of the detector's side (8 px at 64 px); up to FINE_RADIUS every offset
#: is tried, beyond it a grid of 2 px first.
#: Measured (``recon.simulate_hard``, 64 px, 150 positions, 100 iterations): see
#: ``tests/unit/test_hard_cases.py`` and README; a first pass at 10-20 % of the run moved
#: positions further off (the object has no form yet), one at 30 % brought 65 % of them
#: closer, at 50 % 89 %; passes every 3 iterations beat every 5 or 8.
POSITION_SEARCH_DETECTOR_FRACTION = 0.125
POSITION_SEARCH_START_FRACTION = 0.3
#: ... but not before this iteration when the passes' window allows: in a 60-iteration run
#: a first pass at 18 iterations left 1 px errors at 1.1 px (phase SSIM 0.988, against
#: 0.997 without the search); the object had no form yet.
POSITION_SEARCH_MIN_START = 30
#: By default the search runs in runs of at least this many iterations. The independent
#: 1 px case (``bench/recon.py --cases positions``, 150 positions): 100 iterations 0.9991
#: phase SSIM with the search and without (positions 0.03 px against 0.22 px); 60
#: iterations 0.993 with it (passes at 30 and 33) against 0.997 without.
POSITION_SEARCH_MIN_ITERATIONS = 100
#: The passes run to 80 % of the run, up to 30 of them: with 2.5 px RMS errors at 64 px
#: (5 px at 128 px) the passes often stall for several passes (moves of 0.03-0.1 px) in a
#: warped state (a sector of the star's rim and its object shifted together by 1-2 px)
#: and then get out of it (seed 13: 1.14 px until the 14th pass, 0.21 px after the 21st;
#: seed 14: 0.66 px until the 16th, 0.37 after the 20th; the gradient steps take the rest).
#: To 60 %, at most 10 passes, seeds 11-14 ended at 0.026 / 0.86 / 1.18 / 0.20 px (README).
POSITION_SEARCH_END_FRACTION = 0.8
POSITION_SEARCH_EVERY = 3
POSITION_SEARCH_PASSES = 30
POSITION_SEARCH_FINE_RADIUS = 8
#: The search stops early once SETTLED_PASSES passes in a row moved the positions by less
#: than SETTLED_PX RMS (pixels), and the gradient steps start then: what is left is within
#: their reach (about a pixel), and every further pass costs about 10 iterations. Two such
#: passes (the rule before) stopped the 2.5 px cases inside the stalls above (seed 13 had
#: four in a row before it got out). Measured with the rule of two (64 px, seed 11, 1e6
#: photons; RMS move per pass -> final RMS error): 0.3 px errors 0.27, 0.10, 0.04 -> 0.013
#: px (all ten passes: 0.013); 1.5 px 1.45, 0.21, 0.10, 0.06 -> 0.019 (all ten: 0.015). On
#: the real Siemens star with ``--refine-positions``, all ten passes made a 100-iteration CPU
#: run 3 times as long (2.6 s against 0.86 s an iteration). At 32 px the sub-pixel fit
#: jitters by about 0.05 px.
POSITION_SEARCH_SETTLED_PX = 0.1
POSITION_SEARCH_SETTLED_PASSES = 5

#: ``coarse_levels``: each coarser level runs this fraction of the iterations (at a
#: quarter of the cost per iteration); patterns are not binned below this size.
COARSE_ITERATION_FRACTION = 0.5
MIN_COARSE_DETECTOR = 16
#: ``coarse_levels=None``: one coarse level when the central half of the patterns (the
#: half-resolution view) holds at least this fraction of their counts, none otherwise.
#: Measured fractions: 0.77 on the 2.5 pi star (the coarse start lifts it from 0.58 to
#: 0.999), 0.94-0.97 on the other simulated cases, 0.22 on the beamline layouts'
#: zone-plate beam (a defocused pupil that fills the detector: the half-resolution model,
#: a probe band-limited to the central half, cannot represent it, 0.80 -> 0.10).
COARSE_MIN_CENTRAL_FRACTION = 0.5

#: ``object_tv=None``: below this many mean counts per pattern the data are low dose and
#: the object's total variation is penalised with weight LOW_DOSE_OBJECT_TV.
LOW_DOSE_COUNTS = 3e4
#: Measured (``recon.simulate_hard``, 64 px, 1e3 photons, 200 iterations, seeds 11 / 12):
#: no penalty 0.904 / 0.917 phase SSIM, held-out stopping (5 %) 0.895 / 0.911, weight 0.1
#: 0.920 / 0.924, weight 0.3 0.913 / 0.920, weight 1 (60 iterations) 0.83.
LOW_DOSE_OBJECT_TV = 0.1
#: The penalty acts from this fraction of the iterations: from the first iteration it kept
#: a rough probe guess from growing (the object stays flat where the guess is too small;
#: 1e3 photons, 60 iterations, weight 1: 0.31 from the start, 0.83 from half way).
TV_START_FRACTION = 0.5

#: ``defocus_search=None``: the scan is sparse, and the search runs, when the median
#: distance from a position to its nearest neighbour is at least this fraction of the
#: detector width (the simulated and real scans of the tests: 0.06-0.09; 30 % linear
#: overlap of a beam a quarter of the window wide: 0.17, 40 %: 0.14, 50 %: 0.12).
SPARSE_STEP_FRACTION = 0.13
#: ``defocus_search``: the candidate beams' geometric spot diameters, fractions of the
#: probe window, each in both directions of focus (plus the guess itself), and the
#: iterations each candidate is reconstructed for before the costs are compared.
DEFOCUS_SPOT_FRACTIONS = (0.25, 0.5)
DEFOCUS_SEARCH_ITERATIONS = 20
#: The far-field pupil's radius is measured from the mean pattern's pixels brighter than
#: this fraction of its brightest.
PUPIL_THRESHOLD = 0.1

#: progress(iteration, cost, seconds of that iteration)
ProgressCallback = Callable[[int, float, float], None]
#: monitor(iteration, object, probe) after every iteration, with the solver's own arrays
#: (on its home device; do not modify them); returning True stops the iterations.
IterationMonitor = Callable[[int, Any, Any], bool]


@dataclasses.dataclass
class ReconResult:
    """A finished reconstruction, on the host.

    object : (OBJ_H, OBJ_W) complex64, on the positions' object-pixel grid
    probe : (MODES, H, W) complex64, modes orthogonal and ordered by power
    cost : (ITERATIONS + 1,) float64, mean cost per measured pixel; cost[0] is the start
    positions : (N_POS, 2) float32, as reported by the input (object pixels, top-left corners)
    refined_positions : (N_POS, 2) float32, the positions the object was solved with,
        when positions were refined (None otherwise)
    """

    object: np.ndarray
    probe: np.ndarray
    cost: np.ndarray
    positions: np.ndarray
    object_steps: list[float]
    probe_steps: list[float]
    seconds_per_iteration: list[float]
    devices: list[int]
    backend: str
    refined_positions: np.ndarray | None = None
    position_affine: np.ndarray | None = None
    """(2, 3) [A | t] when positions were refined: the least-squares global map from the
    reported to the refined positions about their centre (``fit_affine``), i.e. the
    stage's scale, rotation and shear error; None otherwise."""
    device_names: list[str] = dataclasses.field(default_factory=list)
    """The GPU model of each device (CuPy), e.g. ``NVIDIA H200``; empty on the CPU."""
    object_tv: float = 0.0
    """The total-variation weight applied (``object_tv``, or the low-dose default; 0: none)."""
    start_defocus_px: float | None = None
    """With ``defocus_search``: the geometric spot diameter (pixels; 0 the guess itself,
    negative the other side of the focus) of the probe guess the solver started from;
    None when no search ran."""
    coarse_levels: int = 0
    """The half-resolution levels run before the full view (``coarse_levels``; with None
    chosen from the patterns' central fraction)."""
    fit_to_noise: float | None = None
    """The final Poisson cost over the cost that shot noise alone would leave if the final
    model were exactly right (``recon.cost.poisson_noise_terms``): about 1 when the model
    explains the counts to their noise, several when it does not (positions, probe or
    sample wrong, or a scan stuck part-way, such as a sector of positions moved with its
    object). None with the Gaussian cost, and after held-out stopping kept an earlier
    iterate. Assumes the patterns are photon counts."""

    @property
    def mode_power_fractions(self) -> list[float]:
        """Each probe mode's share of the total probe power."""
        power = np.sum(np.abs(self.probe) ** 2, axis=(-2, -1), dtype=np.float64).reshape(-1)
        return (power / power.sum()).tolist()


def object_shape_for(
    positions: np.ndarray, detector_shape: tuple[int, int], extra: int = 0
) -> tuple[int, int]:
    """Object array shape that holds every patch with a margin (plus ``extra`` pixels)."""
    high = np.ceil(positions.max(axis=0)).astype(int)
    return (
        int(high[0]) + detector_shape[0] + OBJECT_MARGIN + extra,
        int(high[1]) + detector_shape[1] + OBJECT_MARGIN + extra,
    )


def partition_positions(positions: np.ndarray, n: int) -> list[np.ndarray]:
    """Split scan positions into ``n`` spatial tiles of near-equal counts.

    Recursive bisection across the longer extent at the count-weighted
    quantile (4 tiles -> 2 x 2). Returns index arrays, in a fixed order, each sorted.
    """
    if n < 1:
        raise ValueError(f"number of partitions must be >= 1, got {n}")
    if n > len(positions):
        raise InputError(f"cannot split {len(positions)} scan positions over {n} devices")

    def split(indices: np.ndarray, parts: int) -> list[np.ndarray]:
        if parts == 1:
            return [np.sort(indices)]
        points = positions[indices]
        axis = int(np.argmax(np.ptp(points, axis=0)))
        order = indices[np.argsort(points[:, axis], kind="stable")]
        first = parts // 2
        cut = round(len(order) * first / parts)
        return split(order[:cut], first) + split(order[cut:], parts - first)

    return split(np.arange(len(positions)), n)


def initial_probe(scan: ScanData, modes: int = 1) -> np.ndarray:
    """The file's probe guess, or one made from the data, as (MODES, H, W) complex64.

    Without a guess, the probe is the inverse FFT of the mean pattern's amplitude
    (zero phase), centred: it has the right size and total flux. Extra modes are
    the first times seeded complex Gaussian noise, each with EXTRA_MODE_POWER of its
    power, then made orthogonal. The total power is scaled so the modes carry the mean
    pattern's counts.
    """
    if scan.probe is not None:
        first = np.asarray(scan.probe, dtype=COMPLEX)
        if first.ndim == 3:
            first = first[0]
    else:
        mean_amplitude = np.sqrt(np.maximum(scan.data.mean(axis=0), 0))
        first = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(mean_amplitude), norm="ortho"))
    first = first.astype(np.complex128)
    power = float(np.sum(np.abs(first) ** 2))
    if not power > 0:
        raise InputError(f"{scan.source}: the probe guess is zero everywhere")
    stacked = with_extra_modes(first, modes)
    counts = float(scan.data.sum(axis=(1, 2)).mean())
    total = float(np.sum(np.abs(stacked) ** 2))
    return (stacked * math.sqrt(counts / total)).astype(COMPLEX)


def with_extra_modes(first: np.ndarray, modes: int) -> np.ndarray:
    """(MODES, H, W) complex128 on the host: ``first`` (H, W) and ``modes - 1`` extra modes,
    each the first times seeded complex Gaussian noise with EXTRA_MODE_POWER of the
    first's power, made orthogonal and ordered by power. The total power is that of
    ``first``, so adding modes to a fitted probe keeps the modelled counts."""
    first = np.asarray(first, dtype=np.complex128)
    power = float(np.sum(np.abs(first) ** 2))
    probe = [first]
    rng = np.random.default_rng(EXTRA_MODE_SEED)
    for _ in range(1, modes):
        noise = rng.standard_normal(first.shape) + 1j * rng.standard_normal(first.shape)
        mode = first * noise
        mode *= math.sqrt(EXTRA_MODE_POWER * power / float(np.sum(np.abs(mode) ** 2)))
        probe.append(mode)
    stacked = np.stack(probe)
    stacked = np.tensordot(orthogonalising_mix(stacked), stacked, axes=(1, 0))
    return stacked * math.sqrt(power / float(np.sum(np.abs(stacked) ** 2)))


def orthogonalising_mix(probe: Any) -> np.ndarray:
    """The unitary (MODES, MODES) complex128 matrix U, on the host, that makes the modes
    ``U @ probe`` orthogonal and ordered by power (largest first).

    U is the conjugate-free transpose of the Gram matrix's eigenvectors; each eigenvector's
    largest entry is made real and positive, so U does not depend on the eigen solver.
    An incoherent sum of intensities is unchanged by any unitary mixing of its modes.
    """
    modes = probe.shape[0]
    flat = probe.reshape(modes, -1)
    gram = to_host(flat.conj() @ flat.T.astype(ACCUMULATE_COMPLEX)).astype(np.complex128)
    values, vectors = np.linalg.eigh(gram)
    vectors = vectors[:, np.argsort(-values, kind="stable")]
    for column in range(modes):
        largest = vectors[np.argmax(np.abs(vectors[:, column])), column]
        vectors[:, column] *= abs(largest) / largest
    return vectors.T


def _mix_modes(mix: Any, array: Any, axis: int) -> Any:
    """``mix`` (MODES, MODES) applied along the mode ``axis`` (0 or 1) of ``array``."""
    if axis == 0:
        shape = array.shape
        return (mix @ array.reshape(shape[0], -1)).reshape(shape)
    shape = array.shape
    return (mix[None] @ array.reshape(shape[0], shape[1], -1)).reshape(shape)


class _Chunk:
    """A run of consecutive patterns of one partition, with their far fields.

    probes_at : (N_CHUNK, MODES, H, W) (Fourier model) or (1, MODES, H, W) (bilinear)
    farfield : (N_CHUNK, MODES, H, W); intensity : (N_CHUNK, H, W), summed over modes
    """

    def __init__(self, model: Ptycho, cost: Any, indices: np.ndarray):
        self.model = model
        self.cost = cost
        self.indices = indices  # global indices of the chunk's positions
        self.probes_at: Any = None
        self.farfield: Any = None
        self.intensity: Any = None
        self.final_cost = cost  # the chosen noise model
        self.start_cost: Any = None  # the amplitude cost of a staged start, if any
        self.patches: Any = None  # object patches during a probe step
        self.direction_at: Any = None  # the probe direction at every position, during LS
        self.line: Any = None  # the line search's terms (recon.primitives), during LS


class _Partition:
    """One device's share: patterns, far fields and a copy of its object region."""

    def __init__(
        self,
        xp: Any,
        device: int,
        indices: np.ndarray,
        scan: ScanData,
        data_corner: np.ndarray,
        mask_corner: np.ndarray | None,
        object_shape: tuple[int, int],
        options: ReconOptions,
        reach: int,
        floor: float,
        gpu_chunks: int = 1,
    ):
        self.xp = xp
        self.device = device
        self.indices = indices
        self.options = options
        det = scan.detector_shape
        self.patch_shape = det
        positions = scan.positions[indices]
        # Every window the positions may take (within ``reach`` of the start) fits the region.
        corner = np.floor(positions).astype(int)
        r0 = max(int(corner[:, 0].min()) - reach, 0)
        c0 = max(int(corner[:, 1].min()) - reach, 0)
        r1 = min(int(corner[:, 0].max()) + det[0] + 2 + reach, object_shape[0])
        c1 = min(int(corner[:, 1].max()) + det[1] + 2 + reach, object_shape[1])
        self.region = (slice(r0, r1), slice(c0, c1))
        self.shape = (r1 - r0, c1 - c0)
        self.origin = np.array([r0, c0], dtype=np.float64)
        modes = options.probe_modes
        pattern_bytes = det[0] * det[1] * np.dtype(COMPLEX).itemsize * modes
        size = chunk_patterns(xp, len(indices), pattern_bytes, gpu_chunks)
        self.chunks: list[_Chunk] = []
        with device_context(xp, device):
            mask = None if mask_corner is None else to_device(mask_corner, xp, device)
            for first in range(0, len(indices), size):
                block = indices[first : first + size]
                data = to_device(np.ascontiguousarray(data_corner[block]), xp, device)
                cost = make_cost(options.cost, data, mask, floor)
                chunk = _Chunk(None, cost, block)  # type: ignore[arg-type]
                chunk.final_cost = chunk.cost
                if options.amplitude_start > 0 and options.cost is not CostFunction.GAUSSIAN:
                    chunk.start_cost = make_cost(CostFunction.GAUSSIAN, data, mask, floor)
                self.chunks.append(chunk)
        self.set_positions(scan.positions)

    def set_positions(self, positions: np.ndarray) -> None:
        """(Re)build every chunk's operators for ``positions`` (N_POS_ALL, 2), host."""
        with self.context():
            for chunk in self.chunks:
                # float64 down to the model's split into an integer corner and a float32
                # sub-pixel rest: ``positions - origin`` is exact in float64, so the rest is
                # the global position's, rounded once, whatever this partition's origin.
                # Rounded to float32 first, it would carry an error of up to half a float32
                # ulp of ``positions - origin`` (1e-6 px at 30 px), different on every
                # partition layout and padding (the shifted probes then differ by ~1e-7).
                local = np.asarray(positions[chunk.indices], dtype=np.float64) - self.origin
                chunk.model = Ptycho(
                    to_device(local, self.xp, self.device),
                    self.shape,
                    self.patch_shape,
                    self.options.patch_model.value,
                )

    def context(self) -> Any:
        return device_context(self.xp, self.device)


class _Reconstruction:
    """State and steps of the hybrid model; :func:`reconstruct` drives it."""

    def __init__(
        self,
        scan: ScanData,
        options: ReconOptions,
        xp: Any,
        devices: list[int],
        start_object: np.ndarray | None = None,
    ):
        self.xp = xp
        self.options = options
        self.devices = devices
        self.home = devices[0]
        self.search_radius = (
            position_search_radius(options, scan.detector_shape) if options.refine_positions else 0
        )
        self.max_correction = max(MAX_POSITION_CORRECTION, 1.5 * self.search_radius)
        reach = math.ceil(self.max_correction) if options.refine_positions else 0
        # With the search, positions may move below the reported ones' smallest: the solver
        # works on a grid with ``pad`` more pixels before row and column 0 (``object_view``
        # and ``reported_grid`` give the reported positions' grid).
        self.pad = reach if self.search_radius else 0
        if self.pad:
            # In float64: the solver's positions stay float64 down to the split into an
            # integer window and a float32 sub-pixel rest, so the rest does not depend on
            # the pad or on a partition's origin.
            padded = np.asarray(scan.positions, dtype=np.float64) + self.pad
            scan = dataclasses.replace(scan, positions=padded)
        self.object_shape = object_shape_for(scan.positions, scan.detector_shape, extra=reach)
        self.initial_positions = np.asarray(scan.positions, dtype=np.float64)
        self.positions = self.initial_positions.copy()
        data_corner = np.fft.ifftshift(scan.data, axes=(-2, -1)).astype(REAL)
        mask_corner = None
        if scan.mask is not None and not scan.mask.all():
            mask_corner = np.fft.ifftshift(scan.mask.astype(REAL))
        self.n_measured = scan.n_positions * (
            int(scan.mask.sum())
            if scan.mask is not None
            else scan.detector_shape[0] * scan.detector_shape[1]
        )
        # One dark floor for the whole view, whatever the chunks and devices (recon.cost).
        floor = dark_floor(data_corner, mask_corner, options.dark_floor)
        groups = partition_positions(scan.positions, len(devices))
        # On the GPU path a partition is one chunk, or as many as PTYCHOFLOW_GPU_CHUNKS asks
        # for (recon.memory: they no longer lower the peak).
        gpu_chunks = 1
        if gpu_path(xp):
            extent = np.ptp(self.initial_positions, axis=0)
            gpu_chunks = gpu_chunks_for(
                scan.n_positions,
                scan.detector_shape,
                object_shape_estimate((float(extent[0]), float(extent[1])), scan.detector_shape),
                options.probe_modes,
                tuple(devices),
            )
        # Object patches cached over a probe step's gradient and line search and the next
        # probe step (the default CPU path), or gathered again where they are used (the
        # GPU path: 8 bytes per pattern pixel less at the line search's peak, for two
        # window gathers more per probe step, which move no more memory than one
        # elementwise pass).
        self.cache_patches = not gpu_path(xp)
        # The probe direction at every position, kept from the line search's far fields
        # to the update of the probes at every position (the default CPU path), or
        # computed again for the update (the GPU path: 8 bytes per pattern pixel less at
        # the line search's peak, for one FFT and one elementwise pass more per probe step).
        self.keep_probe_direction = not gpu_path(xp)
        self.parts = [
            _Partition(
                xp,
                dev,
                idx,
                scan,
                data_corner,
                mask_corner,
                self.object_shape,
                options,
                reach,
                floor,
                gpu_chunks,
            )
            for dev, idx in zip(devices, groups, strict=True)
        ]
        del data_corner, mask_corner  # the chunks hold their own copies of the patterns
        # Extra modes enter later (``add_modes``) when their start is staged.
        probe = initial_probe(scan, 1 if modes_start_iteration(options) else options.probe_modes)
        first_object = np.ones(self.object_shape, dtype=COMPLEX)
        if start_object is not None:
            rows = min(self.object_shape[0] - self.pad, start_object.shape[0])
            cols = min(self.object_shape[1] - self.pad, start_object.shape[1])
            first_object[self.pad : self.pad + rows, self.pad : self.pad + cols] = start_object[
                :rows, :cols
            ]
        with device_context(xp, self.home):
            self.object = to_device(first_object, xp, self.home)
            self.probe = to_device(probe, xp, self.home)
        for part in self.parts:
            with part.context():
                part.object = copy_to(self.object[part.region], xp, part.device).copy()
                part.probe = copy_to(self.probe, xp, part.device).copy()
        self._forward_all()
        self.object_cg = CGState()
        self.probe_cg = CGState()
        self._object_precond: Any = None  # depends on the probe only; reset when it changes
        # Total variation of the object (recon.regularise): its weight in counts is set
        # from the illumination at the first object step.
        self.object_tv = object_tv_weight(options, scan)
        self.tv_weight: float | None = None if self.object_tv else 0.0
        self.tv_active = False  # from TV_START_FRACTION of the iterations (reconstruct)
        self._probe_precond: Any = None  # depends on the object only; reset when it changes

    def object_view(self) -> Any:
        """The object on the reported positions' grid (a view of the solver's array)."""
        return self.object[self.pad :, self.pad :]

    def reported_grid(self, positions: np.ndarray) -> np.ndarray:
        """Solver-grid ``positions`` on the reported positions' grid."""
        return positions - self.pad

    def add_modes(self, modes: int) -> None:
        """Split the current probe into ``modes`` incoherent modes (``with_extra_modes``:
        same total power, the extras from the first times seeded noise) on every device,
        and restart the CG histories, which belong to the old variables."""
        xp = self.xp
        with device_context(xp, self.home):
            first = to_host(self.probe[0])
            self.probe = to_device(with_extra_modes(first, modes).astype(COMPLEX), xp, self.home)
        for part in self.parts:
            with part.context():
                part.probe = copy_to(self.probe, xp, part.device).copy()
        self._forward_all()
        self._object_precond = None
        self.object_cg.restart()
        self.probe_cg.restart()

    def reported_cost(self) -> float:
        """The chosen cost (``options.cost``) of the current iterate, whichever is in use."""
        chunk = self.parts[0].chunks[0]
        if chunk.cost is chunk.final_cost:
            return self.cost
        return self._total(lambda chunk: cost_value(self.xp, chunk.final_cost, chunk.intensity))

    def fit_to_noise(self) -> float | None:
        """The chosen cost over its expectation from shot noise at the current model
        (``ReconResult.fit_to_noise``); None unless the chosen cost is Poisson's."""
        if not isinstance(self.parts[0].chunks[0].final_cost, PoissonCost):
            return None
        xp = self.xp

        def noise(chunk: _Chunk) -> float:
            mask = chunk.final_cost.mask
            total = 0.0
            n, h, w = chunk.intensity.shape
            for block in window_blocks(xp, n, h * w):  # bounded temporaries on the GPU path
                terms = poisson_noise_terms(chunk.intensity[block])
                if mask is not None:
                    terms *= mask
                total += float(xp.sum(terms, dtype=xp.float64))
            return total

        expected = self._total(noise)
        return self.reported_cost() / expected if expected > 0 else None

    def use_cost(self, start: bool) -> None:
        """Switch every chunk to the start (amplitude) cost or the chosen one."""
        for part in self.parts:
            for chunk in part.chunks:
                chunk.cost = chunk.start_cost if start else chunk.final_cost
        self.cost = self._total(lambda chunk: cost_value(self.xp, chunk.cost, chunk.intensity))
        self.object_cg.restart()
        self.probe_cg.restart()

    def _forward_all(self) -> None:
        """Probes at every position, far fields, intensities and the cost from scratch."""
        for part in self.parts:
            with part.context():
                for chunk in part.chunks:
                    chunk.probes_at = chunk.model.probes_at(part.probe)
                    chunk.farfield = chunk.model.fwd_object(part.object, chunk.probes_at)
                    chunk.intensity = _intensity(chunk.farfield)
        self.cost = self._total(lambda chunk: cost_value(self.xp, chunk.cost, chunk.intensity))

    # -- reductions in a fixed order -------------------------------------------------

    def _total(self, partial: Callable[[_Chunk], float]) -> float:
        """Sum a scalar over partitions and their chunks, in order (LS all-reduce)."""
        total = 0.0
        for part in self.parts:
            with part.context():
                for chunk in part.chunks:
                    total += partial(chunk)
        return total

    def _gather_object(self, partial: Sequence[Any], dtype: Any) -> Any:
        """Sum per-partition object-region arrays (double precision) into one full
        array on the home device, in partition order, rounded once to ``dtype``."""
        xp = self.xp
        with device_context(xp, self.home):
            full = xp.zeros(self.object_shape, dtype=partial[0].dtype)
            for part, array in zip(self.parts, partial, strict=True):
                full[part.region] += copy_to(array, xp, self.home)
            return full.astype(dtype)

    def _gather_probe(self, partial: Sequence[Any], dtype: Any) -> Any:
        """Sum per-partition probe-shaped arrays on the home device, rounded once."""
        xp = self.xp
        with device_context(xp, self.home):
            total = copy_to(partial[0], xp, self.home).copy()
            for array in partial[1:]:
                total += copy_to(array, xp, self.home)
            return total.astype(dtype)

    # -- one CG step for one variable --------------------------------------------------

    def _step(
        self,
        state: CGState,
        grad: Any,
        precond: Any,
        scatter: Callable[[_Partition, Any], Any],
        far_direction: Callable[[_Partition, _Chunk, Any], Any],
        update_chunk: Callable[[_Partition, _Chunk, Any, float], None] | None = None,
        penalty: Callable[[Any, float], float] | None = None,
    ) -> tuple[Any, list[Any], float]:
        """DIR, LS: returns (direction on home, per-partition pieces, accepted step).

        ``update_chunk(part, chunk, piece, step)`` runs after each chunk's far fields took
        the step and its direction's far fields were dropped.
        ``penalty(direction, step)``: a term added to the cost in the line search (the
        object's regulariser at the trial step, on home); ``grad`` already holds its
        gradient. ``self.cost`` stays the data cost."""
        xp = self.xp
        with device_context(xp, self.home):
            precond_grad = precond * grad
            beta = dai_yuan_beta(
                grad, precond_grad, state.previous_grad, state.previous_direction, real_inner
            )
            direction = -precond_grad
            if beta:
                direction += beta * state.previous_direction
            slope = 2 * real_inner(grad, direction)
            if not slope < 0:  # not a descent direction: restart
                direction = -precond_grad
                slope = 2 * real_inner(grad, direction)
        pieces = []
        for part in self.parts:
            with part.context():
                piece = scatter(part, direction)
                for chunk in part.chunks:
                    # sum_m |psi_m + t b_m|^2 = I + t (2 Re sum_m conj(psi_m) b_m
                    # + t sum_m |b_m|^2): no FFT per trial. On the GPU path the terms are
                    # formed in each trial pass from the far fields (recon.primitives).
                    chunk.line = line_search_terms(
                        xp, chunk.farfield, far_direction(part, chunk, piece)
                    )
            pieces.append(piece)

        def trial_costs(steps: list[float]) -> list[float]:
            # Every trial of the batch in one pass per chunk (recon.primitives). The float64
            # sums stay on the devices and are added on the home device in the order of
            # ``_total`` (partitions, then chunks); they reach the host once per batch:
            # one sync per line search, not one per trial and partition.
            total = None
            for part in self.parts:
                with part.context():
                    for chunk in part.chunks:
                        costs = line_trial_costs(
                            xp, cost_terms(chunk.cost), chunk.intensity, chunk.line, steps
                        )
                        with device_context(xp, self.home):
                            costs = copy_to(costs, xp, self.home)
                            total = costs if total is None else total + costs
            return [float(cost) for cost in to_host(total)]

        if penalty is None:
            search = batched_backtracking(
                trial_costs, self.cost, slope, first_step=2 * state.step, batch=trial_batch(xp)
            )
        else:
            with device_context(xp, self.home):
                start_penalty = penalty(direction, 0.0)

            def penalised_costs(steps: list[float]) -> list[float]:
                data = trial_costs(steps)
                with device_context(xp, self.home):
                    return [
                        cost + penalty(direction, step)
                        for cost, step in zip(data, steps, strict=True)
                    ]

            search = batched_backtracking(
                penalised_costs,
                self.cost + start_penalty,
                slope,
                first_step=2 * state.step,
                batch=trial_batch(xp),
            )
            if search.step > 0:
                with device_context(xp, self.home):
                    search.cost -= penalty(direction, search.step)
            else:
                search.cost = self.cost
        for part, piece in zip(self.parts, pieces, strict=True):
            with part.context():
                for chunk in part.chunks:
                    far = chunk.line.far
                    chunk.line = None  # cross and |far|^2 go before the update
                    if search.step > 0:  # the new intensity overwrites the old
                        update_farfield(xp, chunk.farfield, far, search.step, out=chunk.intensity)
                    del far  # before the chunk's update: one direction far field at a time
                    if search.step > 0 and update_chunk is not None:
                        update_chunk(part, chunk, piece, search.step)
        if search.step > 0:
            self.cost = search.cost
            state.step = search.step
            state.previous_grad, state.previous_direction = grad, direction
        else:
            state.restart()
        return direction, pieces, search.step

    def object_step(self) -> float:
        xp = self.xp
        grads, illums = [], []
        for part in self.parts:  # GRAD
            with part.context():
                grad = xp.zeros(part.shape, dtype=ACCUMULATE_COMPLEX)
                illum = (
                    None
                    if self._object_precond is not None
                    else xp.zeros(part.shape, dtype=ACCUMULATE_REAL)
                )
                for chunk in part.chunks:
                    weighted = gradient_farfield(
                        xp, cost_terms(chunk.cost), chunk.intensity, chunk.farfield
                    )
                    chunk.model.adj_object(weighted, chunk.probes_at, out=grad, overwrite=True)
                    del weighted  # not held through the line search
                    if illum is not None:
                        power = _intensity(chunk.probes_at)
                        power = xp.broadcast_to(power, (chunk.model.n, *power.shape[1:]))
                        chunk.model.patches.adj(power, out=illum)
                        del power  # not held through the line search
                grads.append(grad)
                illums.append(illum)
        grad = self._gather_object(grads, COMPLEX)
        if self._object_precond is None:
            illumination = self._gather_object(illums, REAL)
            with device_context(xp, self.home):
                if self.tv_weight is None:  # fixed at the first step: one cost throughout
                    self.tv_weight = tv_weight(self.object_tv, illumination)
                self._object_precond = 1 / (
                    illumination + PRECONDITIONER_ALPHA * illumination.max()
                )
        penalty = None
        if self.tv_weight and self.tv_active:
            weight = self.tv_weight
            with device_context(xp, self.home):
                grad += tv_gradient(self.object, weight)

            def penalty(direction: Any, step: float) -> float:
                trial = self.object + step * direction if step else self.object
                return tv_value(trial, weight)

        def scatter(part: _Partition, direction: Any) -> Any:
            return copy_to(direction[part.region], xp, part.device).copy()

        def far_direction(part: _Partition, chunk: _Chunk, piece: Any) -> Any:
            return chunk.model.fwd_object(piece, chunk.probes_at)

        direction, pieces, step = self._step(
            self.object_cg, grad, self._object_precond, scatter, far_direction, penalty=penalty
        )
        if step > 0:  # UPDATE
            self._object_changed()
            with device_context(xp, self.home):
                self.object += step * direction
            for part, piece in zip(self.parts, pieces, strict=True):
                with part.context():
                    part.object += step * piece
        return step

    def probe_step(self) -> float:
        xp = self.xp
        grads, powers = [], []
        # Patches and the probe preconditioner depend on the object (and positions) only:
        # consecutive probe steps share them (the patches only on the CPU path; the GPU
        # path gathers them again where they are used: ``cache_patches``).
        fresh = self._probe_precond is None
        for part in self.parts:  # GRAD
            with part.context():
                grad = xp.zeros(part.probe.shape, dtype=ACCUMULATE_COMPLEX)
                power = xp.zeros(part.probe.shape[1:], dtype=ACCUMULATE_REAL) if fresh else None
                for chunk in part.chunks:
                    if self.cache_patches and fresh:
                        chunk.patches = chunk.model.patches.fwd(part.object)
                        power += _abs2(chunk.patches).sum(axis=0, dtype=ACCUMULATE_REAL)
                    weighted = gradient_farfield(
                        xp, cost_terms(chunk.cost), chunk.intensity, chunk.farfield
                    )
                    if self.cache_patches:
                        chunk.model.adj_probe(weighted, chunk.patches, out=grad, overwrite=True)
                    else:  # the patches gathered a block at a time, never whole
                        chunk.model.adj_probe_gathering(
                            weighted, part.object, out=grad, overwrite=True, power=power
                        )
                    del weighted  # not held through the line search
                grads.append(grad)
                powers.append(power)
        grad = self._gather_probe(grads, COMPLEX)
        if fresh:
            power = self._gather_probe(powers, REAL)
            with device_context(xp, self.home):
                self._probe_precond = 1 / (power + PRECONDITIONER_ALPHA * power.max())
        precond = self._probe_precond

        def scatter(part: _Partition, direction: Any) -> Any:
            return copy_to(direction, xp, part.device)

        def far_direction(part: _Partition, chunk: _Chunk, piece: Any) -> Any:
            direction_at = chunk.model.probes_at(piece)
            if self.keep_probe_direction:
                chunk.direction_at = direction_at
            if chunk.patches is not None:
                return chunk.model.farfield(direction_at, chunk.patches)
            if self.keep_probe_direction:
                patches = chunk.model.patches.fwd(part.object)  # not cached: gathered again
                return chunk.model.farfield(direction_at, patches, overwrite_patches=True)
            # Neither kept: the exit waves formed in the direction's memory, the patches
            # gathered a block at a time.
            return chunk.model.farfield_gathering(direction_at, part.object)

        def update_chunk(part: _Partition, chunk: _Chunk, piece: Any, step: float) -> None:
            # After the chunk's far fields took the step (and its direction's far fields
            # are gone): the probes at every position, linear in the probe.
            if chunk.model.shift is not None:
                direction_at = chunk.direction_at
                if direction_at is None:  # not kept: computed again, the same numbers
                    direction_at = chunk.model.probes_at(piece)
                add_scaled(xp, chunk.probes_at, direction_at, step)
            chunk.direction_at = None

        direction, pieces, step = self._step(
            self.probe_cg, grad, precond, scatter, far_direction, update_chunk
        )
        if step > 0:  # UPDATE
            with device_context(xp, self.home):
                self.probe += step * direction
            for part, piece in zip(self.parts, pieces, strict=True):
                with part.context():
                    part.probe += step * piece
                    for chunk in part.chunks:
                        if chunk.model.shift is None:
                            chunk.probes_at = part.probe[None]
            self._object_precond = None
        for part in self.parts:
            for chunk in part.chunks:
                chunk.direction_at = None
        return step

    def _object_changed(self) -> None:
        """Drop what was computed from the object: patches and the probe preconditioner."""
        self._probe_precond = None
        for part in self.parts:
            for chunk in part.chunks:
                chunk.patches = None

    def orthogonalise_modes(self) -> None:
        """Make the probe modes orthogonal and ordered by power by one unitary mixing,
        applied to the probe, the far fields and the CG history on every device."""
        xp = self.xp
        with device_context(xp, self.home):
            mix_host = orthogonalising_mix(self.probe)
            mix = to_device(mix_host.astype(COMPLEX), xp, self.home)
            self.probe = _mix_modes(mix, self.probe, axis=0)
            state = self.probe_cg
            if state.previous_grad is not None:
                state.previous_grad = _mix_modes(mix, state.previous_grad, axis=0)
                state.previous_direction = _mix_modes(mix, state.previous_direction, axis=0)
        for part in self.parts:
            with part.context():
                local_mix = to_device(mix_host.astype(COMPLEX), xp, part.device)
                part.probe = _mix_modes(local_mix, part.probe, axis=0)
                for chunk in part.chunks:
                    chunk.farfield = _mix_modes(local_mix, chunk.farfield, axis=1)
                    if chunk.model.shift is None:
                        chunk.probes_at = part.probe[None]
                    else:
                        chunk.probes_at = _mix_modes(local_mix, chunk.probes_at, axis=1)

    def position_step(self) -> float:
        """Move every position by a damped Gauss-Newton step on its exit-wave residual,
        remove the mean move, rebuild the operators. Returns the RMS move (pixels)."""
        xp = self.xp
        moves = np.zeros_like(self.positions)
        for part in self.parts:
            with part.context():
                for chunk in part.chunks:
                    model = chunk.model
                    h, w = part.patch_shape
                    pattern_pixels = 2 * part.probe.shape[0] * h * w  # slopes per position
                    # A block of positions at a time (one block on the default CPU path):
                    # the residual, patches and slopes are never whole on the GPU path.
                    for block in window_blocks(xp, model.n, pattern_pixels):
                        moves[chunk.indices[block]] = self._position_moves(part, chunk, block)
        moves *= POSITION_STEP_GAIN
        moves = np.clip(moves, -MAX_POSITION_STEP, MAX_POSITION_STEP)
        moves -= moves.mean(axis=0)  # no global drift
        low = np.zeros(2)
        high = (
            np.array(self.object_shape, dtype=np.float64) - np.array(self.parts[0].patch_shape) - 1
        )
        new = np.clip(
            self.positions + moves,
            self.initial_positions - self.max_correction,
            self.initial_positions + self.max_correction,
        )
        return self._move_positions(np.clip(new, low, high))

    def _position_moves(self, part: _Partition, chunk: _Chunk, block: slice) -> np.ndarray:
        """(N_BLOCK, 2) host: the Gauss-Newton moves of the positions ``block`` of
        ``chunk`` (before the gain, the clip and the mean's removal)."""
        xp = self.xp
        model = chunk.model
        cost = chunk.cost
        # The cost of the block's patterns (recon.cost), for its projection factor.
        block_cost = type(cost)(cost.data[block], cost.mask, cost.tau)
        # Exit-wave residual of an amplitude projection, (N_BLOCK, MODES, H, W).
        factor = block_cost.projection_factor(chunk.intensity[block])
        residual = model.propagation.adj(factor[:, None] * chunk.farfield[block], overwrite=True)
        del factor
        if chunk.patches is not None:
            patches = chunk.patches[block]
        else:
            patches = model.patches.fwd(part.object, block)
        slopes = model.shift.derivative(part.probe, block)  # (2, N_BLOCK, MODES, H, W)
        slopes *= patches[:, None][None]
        del patches
        axes = (1, 2, 3)
        a00 = _abs2(slopes[0]).sum(axis=axes, dtype=ACCUMULATE_REAL)
        a11 = _abs2(slopes[1]).sum(axis=axes, dtype=ACCUMULATE_REAL)
        a01 = _real_dot(slopes[0], slopes[1], axes)
        b0 = _real_dot(slopes[0], residual, axes)
        b1 = _real_dot(slopes[1], residual, axes)
        del slopes, residual
        ridge = POSITION_REGULARISATION * (a00 + a11) + 1e-30
        a00 += ridge
        a11 += ridge
        det = a00 * a11 - a01 * a01
        # Delta = -A^-1 b: the shift that best explains the residual.
        move = xp.stack([-(a11 * b0 - a01 * b1) / det, -(a00 * b1 - a01 * b0) / det])
        return to_host(move).T

    def _move_positions(self, new: np.ndarray) -> float:
        """Take the positions ``new`` (solver grid): every partition's model, the far
        fields and the object's preconditioner follow. Returns the RMS move (pixels)."""
        moved = float(np.sqrt(np.mean(np.sum((new - self.positions) ** 2, axis=1))))
        self.positions = new
        for part in self.parts:
            part.set_positions(self.positions)
        self._forward_all()
        self._object_precond = None
        self._object_changed()
        return moved

    def _search_misfit(self, part: _Partition, chunk: _Chunk, offsets: np.ndarray) -> Any:
        """(N_CHUNK,) float64 amplitude misfit ``sum (sqrt(I) - sqrt(d))^2`` of every
        pattern of ``chunk`` with its object window moved by the integer ``offsets``
        (N_CHUNK, 2) (host; each kept inside the partition's region), on the device."""
        xp = self.xp
        model = chunk.model
        limit = np.array(part.shape) - np.array(part.patch_shape)
        corner = to_host(model.patches.corner) + offsets
        corner = np.clip(corner, 0, limit)
        corner = to_device(corner.astype(np.int64), xp, part.device)
        cost = chunk.cost
        h, w = part.patch_shape
        sums = []
        # A block of patterns at a time (one block on the default CPU path): on the GPU path
        # no pattern-sized arrays beyond the chunk's own.
        for block in window_blocks(xp, model.n, h * w * chunk.probes_at.shape[1]):
            patches = gather_windows(xp, part.object, corner[block], part.patch_shape)
            probes_at = chunk.probes_at
            if probes_at.shape[0] != 1:
                probes_at = probes_at[block]
            far = model.farfield(probes_at, patches, overwrite_patches=True)
            del patches
            residual = xp.sqrt(_intensity(far))
            del far
            residual -= xp.sqrt(cost.data[block])
            residual *= residual
            if cost.mask is not None:
                residual *= cost.mask
            sums.append(residual.sum(axis=(1, 2), dtype=ACCUMULATE_REAL))
            del residual
        return sums[0] if len(sums) == 1 else xp.concatenate(sums)

    def _search_chunk(
        self,
        part: _Partition,
        chunk: _Chunk,
        radius: int,
        stride: int,
        low: np.ndarray,
        high: np.ndarray,
    ) -> np.ndarray:
        """(N_CHUNK, 2) host: the moves of ``position_search`` for one chunk, whose
        positions must stay within [``low``, ``high``] (N_CHUNK, 2)."""
        start = self.positions[chunk.indices]
        corner = to_host(chunk.model.patches.corner)
        limit = np.array(part.shape) - np.array(part.patch_shape)

        def misfit(offset: np.ndarray) -> np.ndarray:
            # offset: (N_CHUNK, 2) integers; inf where not allowed.
            values = to_host(self._search_misfit(part, chunk, offset))
            moved = start + offset
            window = corner + offset
            allowed = (
                np.all(moved >= low, axis=1)
                & np.all(moved <= high, axis=1)
                & np.all(window >= 0, axis=1)
                & np.all(window <= limit, axis=1)
            )
            return np.where(allowed, values, np.inf)

        grid = np.arange(-(radius // stride) * stride, radius + 1, stride)
        offsets = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
        near = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
        n = len(start)
        best = np.zeros((n, 2), dtype=np.int64)
        best_cost = misfit(best)
        for offset in offsets:
            if offset.any():
                value = misfit(np.broadcast_to(offset, (n, 2)))
                better = value < best_cost
                best[better] = offset
                best_cost[better] = value[better]
        around = {key: misfit(best + np.array(key)) for key in near}
        if stride > 1:  # the best of the neighbours, then its own neighbours
            stack = np.stack([best_cost] + [around[key] for key in near])
            pick = np.argmin(stack, axis=0)
            steps = np.array([(0, 0), *near])
            best = best + steps[pick]
            best_cost = stack[pick, np.arange(n)]
            around = {key: misfit(best + np.array(key)) for key in near}
        rest = np.zeros((n, 2))
        for axis, (minus, plus) in enumerate((((-1, 0), (1, 0)), ((0, -1), (0, 1)))):
            before, after = around[minus], around[plus]
            curvature = before - 2 * best_cost + after
            ok = np.isfinite(curvature) & (curvature > 0)
            safe = np.where(ok, curvature, 1.0)
            with np.errstate(invalid="ignore"):
                delta = np.where(ok, 0.5 * (before - after) / safe, 0.0)
            rest[:, axis] = np.clip(delta, -0.5, 0.5)
        return best + rest

    def position_search(self, radius: int, stride: int = 1) -> float:
        """Move every position to the shift within ``radius`` pixels that best explains
        its pattern under the current object and probe: the amplitude misfit is evaluated
        at integer offsets on a grid of ``stride`` pixels (then at the eight neighbours
        of the best when ``stride`` > 1), and a parabola through the best and its
        neighbours gives the sub-pixel rest. Offsets that leave the object or
        ``max_correction`` are skipped. The mean and the affine part of the moves are
        removed. Returns the RMS move (pixels)."""
        low = np.maximum(self.initial_positions - self.max_correction, 0)
        high = np.minimum(
            self.initial_positions + self.max_correction,
            np.array(self.object_shape, dtype=np.float64) - np.array(self.parts[0].patch_shape) - 1,
        )
        moves = np.zeros_like(self.positions)
        for part in self.parts:
            with part.context():
                for chunk in part.chunks:
                    moves[chunk.indices] = self._search_chunk(
                        part, chunk, radius, stride, low[chunk.indices], high[chunk.indices]
                    )
        # Only the non-affine part: early, the collective modes (scale, rotation, shear)
        # of the moves follow the object's self-similarity (a Siemens star looks the same
        # rotated), not the data (measured: rotations of 2-4 degrees appeared); the
        # Gauss-Newton steps fit them later.
        moves -= moves.mean(axis=0)
        centred = self.positions - self.positions.mean(axis=0)
        linear, *_ = np.linalg.lstsq(centred, moves, rcond=None)
        moves -= centred @ linear
        moved = self._move_positions(np.clip(self.positions + moves, low, high))
        self.object_cg.restart()
        self.probe_cg.restart()
        return moved

    def synchronize(self) -> None:
        for part in self.parts:
            synchronize(self.xp, part.device)


def _abs2(x: Any) -> Any:
    return x.real * x.real + x.imag * x.imag


def _intensity(farfield: Any) -> Any:
    """Incoherent sum over the mode axis: (N, MODES, H, W) -> (N, H, W)."""
    return mode_intensity(get_array_module(farfield), farfield)


def _real_dot(a: Any, b: Any, axes: tuple[int, ...]) -> Any:
    """Re sum(conj(a) * b) over ``axes``, in double precision."""
    product = a.real * b.real
    product += a.imag * b.imag
    return product.sum(axis=axes, dtype=ACCUMULATE_REAL)


def fit_affine(reported: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares affine map [A | t] with positions ~ c + A (reported - c) + t,
    c the reported positions' mean: the stage's global scale, rotation and shear."""
    centre = reported.mean(axis=0)
    design = np.concatenate([reported - centre, np.ones((len(reported), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, positions - centre, rcond=None)
    return solution.T


def object_tv_weight(options: ReconOptions, scan: ScanData) -> float:
    """The dimensionless total-variation weight (``recon.regularise``) for this view:
    ``options.object_tv``, or with None, LOW_DOSE_OBJECT_TV when the data's mean counts per
    pattern are below LOW_DOSE_COUNTS and 0 otherwise."""
    if options.object_tv is not None:
        return float(options.object_tv)
    counts = float(np.mean(np.sum(scan.data, axis=(1, 2), dtype=np.float64)))
    return LOW_DOSE_OBJECT_TV if counts < LOW_DOSE_COUNTS else 0.0


def position_search_radius(options: ReconOptions, detector_shape: tuple[int, int]) -> int:
    """Radius (pixels) of the position search: ``options.position_search``, or by default
    POSITION_SEARCH_DETECTOR_FRACTION of the detector's smaller side in runs of at least
    POSITION_SEARCH_MIN_ITERATIONS (0: no search)."""
    if not options.refine_positions:
        return 0
    if options.position_search is not None:
        return options.position_search
    if options.iterations < POSITION_SEARCH_MIN_ITERATIONS:
        return 0
    return int(POSITION_SEARCH_DETECTOR_FRACTION * min(detector_shape))


def position_search_iterations(options: ReconOptions, detector_shape: tuple[int, int]) -> set[int]:
    """Iterations (0-based) before whose position step a search pass runs: every
    POSITION_SEARCH_EVERY iterations from POSITION_SEARCH_START_FRACTION up to
    POSITION_SEARCH_END_FRACTION of the run (or ``position_start`` when given), at most
    POSITION_SEARCH_PASSES; none without a search radius."""
    if not position_search_radius(options, detector_shape):
        return set()
    first = round(POSITION_SEARCH_START_FRACTION * options.iterations)
    end = round(POSITION_SEARCH_END_FRACTION * options.iterations)
    if options.position_start is not None:
        end = max(options.position_start, first + 1)
    # The object needs about POSITION_SEARCH_MIN_START iterations to judge positions by.
    first = max(first, min(POSITION_SEARCH_MIN_START, end - 1))
    passes = range(first, end, POSITION_SEARCH_EVERY)
    return set(list(passes)[:POSITION_SEARCH_PASSES])


def amplitude_switch(options: ReconOptions) -> int:
    """Iterations run on the amplitude cost before ``options.cost`` takes over (0: none)."""
    if options.cost is CostFunction.GAUSSIAN:
        return 0
    return round(options.amplitude_start * options.iterations)


def probe_warmup_iterations(options: ReconOptions) -> int:
    """Iterations at the start that refine only the probe (0 without probe refinement)."""
    if not options.refine_probe:
        return 0
    if options.probe_warmup is not None:
        return options.probe_warmup
    return round(PROBE_WARMUP_FRACTION * options.iterations)


def modes_start_iteration(options: ReconOptions) -> int:
    """Iteration (0-based) at which the extra probe modes enter (0: from the start)."""
    if options.probe_modes == 1 or not options.refine_probe:
        return 0
    if options.modes_start is not None:
        return min(options.modes_start, options.iterations - 1)
    return round(MODES_START_FRACTION * options.iterations)


def staged_start_end(options: ReconOptions) -> int:
    """Iterations of the staged start (probe warm-up, amplitude cost, extra probe modes):
    the iterates before this count are not yet fits of ``options.cost`` with every mode."""
    return max(
        probe_warmup_iterations(options), amplitude_switch(options), modes_start_iteration(options)
    )


def claimed_devices(options: ReconOptions, device_ids: Sequence[int] | None = None) -> list[int]:
    """The device of each partition: ``options.devices`` of ``device_ids`` (default 0, 1,
    ...), or all of ``device_ids``, or one."""
    count = options.devices or (len(device_ids) if device_ids else 1)
    devices = list(device_ids) if device_ids else list(range(count))
    if len(devices) < count:
        raise DeviceError(f"{count} devices were asked for but only {devices} were given")
    return devices[:count]


def gpu_claim_for(
    options: ReconOptions, device_ids: Sequence[int] | None = None
) -> GpuClaim | None:
    """What a reconstruction with ``options`` will hold on GPUs (``recon.memory``), or None
    when it does not take the GPU path."""
    xp = resolve_backend(options.backend.value)
    if not gpu_path(xp):
        return None
    return GpuClaim(tuple(claimed_devices(options, device_ids)), options.probe_modes)


def reconstruct(
    scan: ScanData,
    options: ReconOptions | None = None,
    *,
    device_ids: Sequence[int] | None = None,
    progress: ProgressCallback | None = None,
    monitor: IterationMonitor | None = None,
    start_object: np.ndarray | None = None,
) -> ReconResult:
    """Reconstruct object and probe of one view.

    scan : the validated view (see :class:`recon.scan.ScanData`).
    options : iterations, cost, patch model, probe modes, probe and position refinement,
        devices, backend.
    device_ids : GPUs to use (CuPy), e.g. those claimed from the node's GPU lock;
        with NumPy only their count matters. Default: ``options.devices`` devices
        (0, 1, ...), or one. A GPU may be named more than once: its partitions then
        share it (``[0, 0]`` runs the two-partition hybrid model on one GPU).
    progress : called after every iteration with (iteration, cost, seconds).
    monitor : called after every iteration with (iteration, object, probe); stops the
        iterations when it returns True (``recon.holdout`` stops on held-out patterns).
    start_object : an object to start from (object pixels of ``scan``'s positions; cut or
        padded with ones to the solver's grid), instead of a flat one; with it,
        ``coarse_levels`` is not applied.
    """
    options = options or ReconOptions()
    xp = resolve_backend(options.backend.value)
    devices = claimed_devices(options, device_ids)
    check_devices(xp, devices)
    if scan.n_positions < 1:
        raise InputError(f"{scan.source}: the scan has no diffraction patterns")
    if gpu_path(xp) and start_object is None:  # before anything is put on a GPU
        extent = np.ptp(np.asarray(scan.positions, dtype=np.float64), axis=0)
        check_gpu_memory(
            str(scan.source),
            scan.n_positions,
            scan.detector_shape,
            (float(extent[0]), float(extent[1])),
            GpuClaim(tuple(devices), options.probe_modes),
        )

    defocus = None
    if start_object is None and searches_defocus(options, scan):
        scan, defocus = defocus_start(scan, options, devices)
        options = options.replace(defocus_search=False)
    levels = coarse_levels_for(scan, options) if start_object is None else 0
    if levels:
        result = _coarse_to_fine(scan, options, levels, devices, progress, monitor)
        result.start_defocus_px = defocus
        result.coarse_levels = levels
        return result
    state = _Reconstruction(scan, options, xp, devices, start_object)
    costs = [state.reported_cost() / state.n_measured]
    object_steps: list[float] = []
    probe_steps: list[float] = []
    seconds: list[float] = []
    # Staged cost: the amplitude (Gaussian) cost first, robust far from the solution.
    switch = amplitude_switch(options)
    if switch:
        state.use_cost(start=True)
    probe_warmup = probe_warmup_iterations(options)
    search_passes = position_search_iterations(options, scan.detector_shape)
    settled_passes = 0  # passes in a row that moved less than POSITION_SEARCH_SETTLED_PX
    position_start = options.position_start
    if position_start is None:
        fraction = POSITION_SEARCH_END_FRACTION if search_passes else POSITION_START_FRACTION
        position_start = round(fraction * options.iterations)
        # With the search, the gradient steps start when it has settled, if that is earlier.
        start_when_settled = bool(search_passes)
    else:
        start_when_settled = False
    modes_start = modes_start_iteration(options)
    tv_start = round(TV_START_FRACTION * options.iterations)
    for iteration in range(options.iterations):
        if iteration == tv_start and state.object_tv:
            state.tv_active = True
            state.object_cg.restart()  # the object's cost changes
        if switch and iteration == switch:
            state.use_cost(start=False)
        if modes_start and iteration == modes_start:
            state.add_modes(options.probe_modes)
        start = time.perf_counter()
        warming_up = options.refine_probe and iteration < probe_warmup
        if not warming_up:
            object_steps.append(state.object_step())
        if options.refine_probe and (warming_up or iteration >= options.probe_start):
            for _ in range(PROBE_STEPS):
                probe_steps.append(state.probe_step())
            if state.probe.shape[0] > 1:
                state.orthogonalise_modes()
        if iteration in search_passes and settled_passes < POSITION_SEARCH_SETTLED_PASSES:
            radius = state.search_radius
            moved = state.position_search(radius, 1 if radius <= POSITION_SEARCH_FINE_RADIUS else 2)
            settled_passes = settled_passes + 1 if moved < POSITION_SEARCH_SETTLED_PX else 0
            if start_when_settled and settled_passes == POSITION_SEARCH_SETTLED_PASSES:
                position_start = min(position_start, iteration + 1)
        if options.refine_positions and iteration >= position_start:
            state.position_step()
        state.synchronize()
        elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        costs.append(state.reported_cost() / state.n_measured)
        if progress is not None:
            progress(iteration + 1, costs[-1], elapsed)
        if not math.isfinite(costs[-1]):
            raise InputError(
                f"{scan.source}: the cost became {costs[-1]} at iteration {iteration + 1}"
            )
        if monitor is not None and monitor(iteration + 1, state.object_view(), state.probe):
            break

    return ReconResult(
        object=np.ascontiguousarray(to_host(state.object_view())),
        probe=to_host(state.probe),
        cost=np.asarray(costs, dtype=np.float64),
        positions=scan.positions,
        refined_positions=(
            state.reported_grid(state.positions).astype(REAL) if options.refine_positions else None
        ),
        position_affine=(
            fit_affine(state.initial_positions, state.positions)
            if options.refine_positions
            else None
        ),
        object_steps=object_steps,
        probe_steps=probe_steps,
        seconds_per_iteration=seconds,
        devices=devices,
        backend=backend_name(xp),
        device_names=gpu_names(xp, devices),
        object_tv=state.object_tv,
        start_defocus_px=defocus,
        fit_to_noise=state.fit_to_noise(),
    )


def median_step(positions: np.ndarray) -> float:
    """Median distance from a scan position to its nearest neighbour, pixels (0 for one)."""
    points = np.asarray(positions, dtype=np.float64)
    if len(points) < 2:
        return 0.0
    nearest = np.full(len(points), np.inf)
    for start in range(0, len(points), 512):  # bounded memory for large scans
        block = points[start : start + 512]
        distance = np.sqrt(((block[:, None] - points[None]) ** 2).sum(axis=-1))
        distance[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        nearest[start : start + len(block)] = distance.min(axis=1)
    return float(np.median(nearest))


def searches_defocus(options: ReconOptions, scan: ScanData) -> bool:
    """Whether the start searches the probe's defocus (``options.defocus_search``)."""
    if not options.refine_probe:
        return False
    if options.defocus_search is not None:
        return options.defocus_search
    width = min(scan.detector_shape)
    return median_step(scan.positions) >= SPARSE_STEP_FRACTION * width


def defocused_probe(probe: np.ndarray, spot_px: float, pupil_radius: float) -> np.ndarray:
    """``probe`` (H, W) with the far-field quadratic phase ``pi c |q|^2`` (q in cycles per
    pixel) that spreads a pupil of radius ``pupil_radius`` (cycles per pixel) into a
    geometric spot ``spot_px`` pixels wide at the sample: a ray at frequency q lands
    ``c q`` pixels off the axis, so ``c = spot_px / (2 pupil_radius)``. Negative
    ``spot_px``: the other side of the focus."""
    h, w = probe.shape
    q2 = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    far = np.fft.fft2(np.fft.ifftshift(probe.astype(np.complex128)))
    far *= np.exp(1j * np.pi * spot_px / (2 * pupil_radius) * q2)
    return np.fft.fftshift(np.fft.ifft2(far)).astype(COMPLEX)


def pupil_radius(scan: ScanData) -> float:
    """Radius of the mean pattern's bright disc (pixels above PUPIL_THRESHOLD of its
    brightest, as an equal-area disc), cycles per object pixel."""
    mean = scan.data.mean(axis=0, dtype=np.float64)
    if scan.mask is not None:
        mean = mean * scan.mask
    lit = float(np.count_nonzero(mean >= PUPIL_THRESHOLD * mean.max()))
    return max(math.sqrt(lit / math.pi) / min(scan.detector_shape), 1.0 / min(scan.detector_shape))


def defocus_start(
    scan: ScanData, options: ReconOptions, devices: list[int]
) -> tuple[ScanData, float]:
    """``defocus_search``: the scan with the best of the candidate probe guesses (the guess
    and its defocused versions, DEFOCUS_SPOT_FRACTIONS of the window either way), each
    reconstructed for DEFOCUS_SEARCH_ITERATIONS iterations with one mode, fixed positions
    and no held-out patterns, chosen by the lowest cost; and its spot diameter in pixels
    (0: the guess itself; the first candidate wins ties)."""
    guess = initial_probe(scan)[0]
    radius = pupil_radius(scan)
    width = min(scan.detector_shape)
    spots = [0.0]
    for fraction in DEFOCUS_SPOT_FRACTIONS:
        spots += [fraction * width, -fraction * width]
    trial_options = options.replace(
        iterations=min(DEFOCUS_SEARCH_ITERATIONS, options.iterations),
        defocus_search=False,
        coarse_levels=0,
        probe_modes=1,
        modes_start=None,
        refine_positions=False,
        position_start=None,
        holdout_fraction=0.0,
    )
    best_cost, best_spot, best_probe = math.inf, 0.0, guess
    for spot in spots:
        probe = guess if spot == 0 else defocused_probe(guess, spot, radius)
        trial = reconstruct(
            dataclasses.replace(scan, probe=probe), trial_options, device_ids=devices
        )
        cost = float(trial.cost[-1])
        if cost < best_cost:
            best_cost, best_spot, best_probe = cost, spot, probe
    return dataclasses.replace(scan, probe=best_probe), best_spot


def _fourier_resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (..., H, W) band-limited-resampled to (..., *shape) on the same field of view
    (sample 0 stays sample 0): its centred spectrum is cropped or zero-padded. Values are
    kept (an upsampled constant stays that constant)."""
    h, w = image.shape[-2:]
    spectrum = np.fft.fftshift(np.fft.fft2(image), axes=(-2, -1))
    out = np.zeros((*image.shape[:-2], *shape), dtype=np.complex128)
    rows, cols = min(h, shape[0]), min(w, shape[1])
    src = (
        slice(h // 2 - rows // 2, h // 2 - rows // 2 + rows),
        slice(w // 2 - cols // 2, w // 2 - cols // 2 + cols),
    )
    dst = (
        slice(shape[0] // 2 - rows // 2, shape[0] // 2 - rows // 2 + rows),
        slice(shape[1] // 2 - cols // 2, shape[1] // 2 - cols // 2 + cols),
    )
    out[(..., *dst)] = spectrum[(..., *src)]
    scale = shape[0] * shape[1] / (h * w)
    return np.fft.ifft2(np.fft.ifftshift(out, axes=(-2, -1))) * scale


def coarse_scan(scan: ScanData) -> ScanData:
    """The view at half the resolution: the central half of every pattern (the low
    spatial frequencies), so object pixels twice as large and positions halved. The
    counts are kept (the noise model still holds); the probe guess is resampled."""
    det = scan.detector_shape
    half = (det[0] // 2, det[1] // 2)
    crop = (
        slice(det[0] // 2 - half[0] // 2, det[0] // 2 - half[0] // 2 + half[0]),
        slice(det[1] // 2 - half[1] // 2, det[1] // 2 - half[1] // 2 + half[1]),
    )
    probe = None
    if scan.probe is not None:
        guess = np.asarray(scan.probe)
        guess = guess[0] if guess.ndim == 3 else guess
        probe = _fourier_resample(guess, half).astype(COMPLEX)
    return dataclasses.replace(
        scan,
        data=np.ascontiguousarray(scan.data[:, crop[0], crop[1]]),
        positions=(np.asarray(scan.positions, dtype=np.float64) / 2).astype(REAL),
        probe=probe,
        mask=None if scan.mask is None else np.ascontiguousarray(scan.mask[crop]),
        pixel_size=None if scan.pixel_size is None else 2 * scan.pixel_size,
    )


def central_fraction(scan: ScanData) -> float:
    """The fraction of the patterns' counts (summed over all positions, masked pixels
    left out) that lie in the central half of the detector: what the half-resolution view
    of ``coarse_scan`` keeps."""
    det = scan.detector_shape
    total = np.sum(np.asarray(scan.data), axis=0, dtype=np.float64)
    if scan.mask is not None:
        total = np.where(np.asarray(scan.mask, dtype=bool), total, 0.0)
    whole = float(total.sum())
    if whole <= 0:
        return 1.0
    top, left = det[0] // 2 - det[0] // 4, det[1] // 2 - det[1] // 4
    return float(total[top : top + det[0] // 2, left : left + det[1] // 2].sum()) / whole


def coarse_levels_for(scan: ScanData, options: ReconOptions) -> int:
    """The coarse levels a run uses: ``options.coarse_levels``, or with None one level
    when the patterns are at least twice ``MIN_COARSE_DETECTOR`` wide and their central
    half holds ``COARSE_MIN_CENTRAL_FRACTION`` of the counts, else none."""
    if options.coarse_levels is not None:
        return options.coarse_levels
    if min(scan.detector_shape) < 2 * MIN_COARSE_DETECTOR:
        return 0
    return int(central_fraction(scan) >= COARSE_MIN_CENTRAL_FRACTION)


def _coarse_to_fine(
    scan: ScanData,
    options: ReconOptions,
    levels: int,
    devices: list[int],
    progress: ProgressCallback | None,
    monitor: IterationMonitor | None,
) -> ReconResult:
    """``coarse_levels``: reconstruct the half-resolution view first (recursively), then
    start the full view from its object, probe and positions."""
    det = scan.detector_shape
    if min(det) < 2 * MIN_COARSE_DETECTOR:
        return reconstruct(
            scan,
            options.replace(coarse_levels=0),
            device_ids=devices,
            progress=progress,
            monitor=monitor,
        )
    coarse = coarse_scan(scan)
    coarse_options = options.replace(
        coarse_levels=levels - 1,
        iterations=max(1, round(COARSE_ITERATION_FRACTION * options.iterations)),
        probe_modes=1,
        modes_start=None,
        position_start=None,
        # Positions are refined in the full view only (search and gradient steps): moved
        # at half resolution, against an object twice as blurred, a 1.5 px error with a
        # 2 % stage scale error ended at 0.96 px and 0.79 phase SSIM (0.06 px, 0.999 when
        # the coarse level keeps the reported positions).
        refine_positions=False,
        position_search=0,
        holdout_fraction=0.0,
    )
    first = reconstruct(coarse, coarse_options, device_ids=devices)
    del coarse  # its patterns are not needed by the full view
    obj = first.object
    start_object = _fourier_resample(obj, (2 * obj.shape[0], 2 * obj.shape[1])).astype(COMPLEX)
    probe = _fourier_resample(first.probe[0], det).astype(COMPLEX)
    return reconstruct(
        dataclasses.replace(scan, probe=probe),
        options.replace(coarse_levels=0),
        device_ids=devices,
        progress=progress,
        monitor=monitor,
        start_object=start_object,
    )
