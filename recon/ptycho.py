"""Maximum-likelihood ptychography by conjugate gradients, on one or many devices.

The hybrid multi-device model (PtyGer): scan positions are split into spatial
tiles, one per device; each device keeps its tile's patterns, far fields and a
copy of the object region its patches touch, plus the probe. Every iteration
refines the object and then the probe, each by one nonlinear CG step:

GRAD    each device computes its partial gradient (and preconditioner);
DIR     the partial gradients are summed on the first device, in partition order,
        the Dai–Yuan direction is formed there and copied to every device;
LS      backtracking line search: each device evaluates its partial cost of a
        trial step from cached forward products (the far field is linear in the
        step, so a trial costs no FFT), the scalars are summed in partition order;
UPDATE  every device applies the same step to its copies.

Because every reduction runs in a fixed order, N partitions give the single
partition result up to floating-point summation order. With NumPy the same code
runs N partitions on the CPU; with CuPy each partition lives on its own GPU.
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
    copy_to,
    device_context,
    fft2,
    ifft2,
    is_cupy,
    real_inner,
    resolve_backend,
    synchronize,
    to_device,
    to_host,
)
from recon.cost import make_cost
from recon.errors import DeviceError, InputError
from recon.operators import Patches, Ptycho
from recon.options import ReconOptions
from recon.scan import ScanData
from recon.solver import CGState, backtracking, dai_yuan_beta

#: Pixels of object added beyond the furthest patch (the bilinear window needs one).
OBJECT_MARGIN = 2
#: Preconditioner regularisation, relative to the largest illumination.
PRECONDITIONER_ALPHA = 0.05
#: Sums over overlapping patches and over partitions are accumulated in these dtypes and
#: rounded once, so the result does not depend on the summation order (partition count).
ACCUMULATE_COMPLEX = np.complex128
ACCUMULATE_REAL = np.float64

#: progress(iteration, cost, seconds of that iteration)
ProgressCallback = Callable[[int, float, float], None]
#: monitor(iteration, object, probe) after every iteration, with the solver's own arrays
#: (on its home device; do not modify them); returning True stops the iterations.
IterationMonitor = Callable[[int, Any, Any], bool]


@dataclasses.dataclass
class ReconResult:
    """A finished reconstruction, on the host.

    object : (OBJ_H, OBJ_W) complex64, on the positions' object-pixel grid
    probe : (H, W) complex64
    cost : (ITERATIONS + 1,) float64, mean cost per measured pixel; cost[0] is the start
    positions : (N_POS, 2) float32, as used (object pixels, top-left corners)
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


def object_shape_for(positions: np.ndarray, detector_shape: tuple[int, int]) -> tuple[int, int]:
    """Object array shape that holds every patch with a margin."""
    high = np.ceil(positions.max(axis=0)).astype(int)
    return (
        int(high[0]) + detector_shape[0] + OBJECT_MARGIN,
        int(high[1]) + detector_shape[1] + OBJECT_MARGIN,
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


def initial_probe(scan: ScanData) -> np.ndarray:
    """The file's probe guess, or one made from the data, scaled to the data's intensity.

    Without a guess, the probe is the inverse FFT of the mean pattern's amplitude
    (zero phase), centred: it has the right size and total flux. Its intensity is
    then rescaled so that |FFT(probe * 1)|^2 carries the mean pattern's counts.
    """
    if scan.probe is not None:
        probe = np.asarray(scan.probe, dtype=COMPLEX)
    else:
        mean_amplitude = np.sqrt(np.maximum(scan.data.mean(axis=0), 0))
        probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(mean_amplitude), norm="ortho"))
        probe = probe.astype(COMPLEX)
    power = float(np.sum(np.abs(probe) ** 2))
    counts = float(scan.data.sum(axis=(1, 2)).mean())
    if not power > 0:
        raise InputError(f"{scan.source}: the probe guess is zero everywhere")
    return (probe * np.sqrt(counts / power)).astype(COMPLEX)


#: On the CPU each partition is processed in chunks of patterns whose complex arrays
#: are about this large, so temporaries stay in cache and are reused by the allocator
#: instead of being mapped and zeroed anew by the kernel. On GPUs one chunk per device.
CPU_CHUNK_BYTES = 4 * 2**20


class _Chunk:
    """A run of consecutive patterns of one partition, with their far fields."""

    def __init__(self, model: Ptycho, cost: Any):
        self.model = model
        self.cost = cost
        self.farfield: Any = None
        self.intensity: Any = None
        self.patches: Any = None  # object patches during a probe step
        self.line: tuple[Any, Any, Any] | None = None  # (far, cross, |far|^2) during LS


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
    ):
        self.xp = xp
        self.device = device
        self.indices = indices
        det = scan.detector_shape
        positions = scan.positions[indices]
        corner = np.floor(positions).astype(int)
        r0, c0 = corner.min(axis=0)
        r1 = min(int(corner[:, 0].max()) + det[0] + 1, object_shape[0])
        c1 = min(int(corner[:, 1].max()) + det[1] + 1, object_shape[1])
        self.region = (slice(int(r0), r1), slice(int(c0), c1))
        self.shape = (r1 - int(r0), c1 - int(c0))
        local = (positions - np.array([r0, c0], dtype=REAL)).astype(REAL)
        if is_cupy(xp):
            size = len(indices)
        else:
            size = max(1, CPU_CHUNK_BYTES // (det[0] * det[1] * np.dtype(COMPLEX).itemsize))
        self.chunks: list[_Chunk] = []
        with device_context(xp, device):
            mask = None if mask_corner is None else to_device(mask_corner, xp, device)
            for first in range(0, len(indices), size):
                block = slice(first, first + size)
                data = to_device(np.ascontiguousarray(data_corner[indices[block]]), xp, device)
                patches = Patches(to_device(local[block], xp, device), self.shape, det)
                self.chunks.append(_Chunk(Ptycho(patches), make_cost(options.cost, data, mask)))

    def context(self) -> Any:
        return device_context(self.xp, self.device)


class _Reconstruction:
    """State and steps of the hybrid model; :func:`reconstruct` drives it."""

    def __init__(self, scan: ScanData, options: ReconOptions, xp: Any, devices: list[int]):
        self.xp = xp
        self.options = options
        self.devices = devices
        self.home = devices[0]
        self.object_shape = object_shape_for(scan.positions, scan.detector_shape)
        data_corner = np.fft.ifftshift(scan.data, axes=(-2, -1)).astype(REAL)
        mask_corner = None
        if scan.mask is not None and not scan.mask.all():
            mask_corner = np.fft.ifftshift(scan.mask.astype(REAL))
        self.n_measured = scan.n_positions * (
            int(scan.mask.sum())
            if scan.mask is not None
            else scan.detector_shape[0] * scan.detector_shape[1]
        )
        groups = partition_positions(scan.positions, len(devices))
        self.parts = [
            _Partition(xp, dev, idx, scan, data_corner, mask_corner, self.object_shape, options)
            for dev, idx in zip(devices, groups, strict=True)
        ]
        probe = initial_probe(scan)
        with device_context(xp, self.home):
            self.object = xp.ones(self.object_shape, dtype=COMPLEX)
            self.probe = to_device(probe, xp, self.home)
        for part in self.parts:
            with part.context():
                part.object = copy_to(self.object[part.region], xp, part.device).copy()
                part.probe = copy_to(self.probe, xp, part.device).copy()
                for chunk in part.chunks:
                    chunk.farfield = chunk.model.fwd_object(part.object, part.probe)
                    chunk.intensity = _abs2(chunk.farfield)
        self.cost = self._total(lambda chunk: chunk.cost.value(chunk.intensity))
        self.object_cg = CGState()
        self.probe_cg = CGState()
        self._object_precond: Any = None  # depends on the probe only; reset when it changes

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
    ) -> tuple[Any, list[Any], float]:
        """DIR, LS: returns (direction on home, per-partition pieces, accepted step)."""
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
                    far = far_direction(part, chunk, piece)
                    # |psi + t b|^2 = |psi|^2 + t (2 Re(conj(psi) b) + t |b|^2): no FFT per trial.
                    psi = chunk.farfield
                    cross = psi.real * far.real
                    cross += psi.imag * far.imag
                    cross *= 2
                    chunk.line = (far, cross, _abs2(far))
            pieces.append(piece)

        def trial_cost(step: float) -> Callable[[_Chunk], float]:
            def cost(chunk: _Chunk) -> float:
                _, cross, far2 = chunk.line
                intensity = far2 * step
                intensity += cross
                intensity *= step
                intensity += chunk.intensity
                # Exactly >= 0; rounding can dip below where the model is dark.
                return chunk.cost.value(xp.maximum(intensity, 0, out=intensity))

            return cost

        search = backtracking(
            lambda step: self._total(trial_cost(step)), self.cost, slope, first_step=2 * state.step
        )
        for part in self.parts:
            with part.context():
                for chunk in part.chunks:
                    if search.step > 0:
                        chunk.farfield += search.step * chunk.line[0]
                        chunk.intensity = _abs2(chunk.farfield)
                    chunk.line = None
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
                probe_conj = part.probe.conj()
                power = _abs2(part.probe)
                for chunk in part.chunks:
                    back = ifft2(chunk.cost.gradient_factor(chunk.intensity) * chunk.farfield)
                    back *= probe_conj
                    chunk.model.patches.adj(back, out=grad)
                    if illum is not None:
                        chunk.model.patches.adj(xp.broadcast_to(power, back.shape), out=illum)
                grads.append(grad)
                illums.append(illum)
        grad = self._gather_object(grads, COMPLEX)
        if self._object_precond is None:
            illumination = self._gather_object(illums, REAL)
            with device_context(xp, self.home):
                self._object_precond = 1 / (
                    illumination + PRECONDITIONER_ALPHA * illumination.max()
                )

        def scatter(part: _Partition, direction: Any) -> Any:
            return copy_to(direction[part.region], xp, part.device).copy()

        def far_direction(part: _Partition, chunk: _Chunk, piece: Any) -> Any:
            return chunk.model.fwd_object(piece, part.probe)

        direction, pieces, step = self._step(
            self.object_cg, grad, self._object_precond, scatter, far_direction
        )
        if step > 0:  # UPDATE
            with device_context(xp, self.home):
                self.object += step * direction
            for part, piece in zip(self.parts, pieces, strict=True):
                with part.context():
                    part.object += step * piece
        return step

    def probe_step(self) -> float:
        xp = self.xp
        grads, powers = [], []
        for part in self.parts:  # GRAD
            with part.context():
                grad = xp.zeros(part.probe.shape, dtype=ACCUMULATE_COMPLEX)
                power = xp.zeros(part.probe.shape, dtype=ACCUMULATE_REAL)
                for chunk in part.chunks:
                    chunk.patches = chunk.model.patches.fwd(part.object)
                    back = ifft2(chunk.cost.gradient_factor(chunk.intensity) * chunk.farfield)
                    back *= chunk.patches.conj()
                    grad += back.sum(axis=0, dtype=ACCUMULATE_COMPLEX)
                    power += _abs2(chunk.patches).sum(axis=0, dtype=ACCUMULATE_REAL)
                grads.append(grad)
                powers.append(power)
        grad = self._gather_probe(grads, COMPLEX)
        power = self._gather_probe(powers, REAL)
        with device_context(xp, self.home):
            precond = 1 / (power + PRECONDITIONER_ALPHA * power.max())

        def scatter(part: _Partition, direction: Any) -> Any:
            return copy_to(direction, xp, part.device)

        def far_direction(part: _Partition, chunk: _Chunk, piece: Any) -> Any:
            return fft2(chunk.patches * piece)

        direction, pieces, step = self._step(self.probe_cg, grad, precond, scatter, far_direction)
        for part in self.parts:
            for chunk in part.chunks:
                chunk.patches = None
        if step > 0:  # UPDATE
            with device_context(xp, self.home):
                self.probe += step * direction
            for part, piece in zip(self.parts, pieces, strict=True):
                with part.context():
                    part.probe += step * piece
            self._object_precond = None
        return step

    def synchronize(self) -> None:
        for part in self.parts:
            synchronize(self.xp, part.device)


def _abs2(x: Any) -> Any:
    return x.real * x.real + x.imag * x.imag


def reconstruct(
    scan: ScanData,
    options: ReconOptions | None = None,
    *,
    device_ids: Sequence[int] | None = None,
    progress: ProgressCallback | None = None,
    monitor: IterationMonitor | None = None,
) -> ReconResult:
    """Reconstruct object and probe of one view.

    scan : the validated view (see :class:`recon.scan.ScanData`).
    options : iterations, cost, probe refinement, devices, backend.
    device_ids : GPUs to use (CuPy), e.g. those claimed from the node's GPU lock;
        with NumPy only their count matters. Default: ``options.devices`` devices
        (0, 1, ...), or one.
    progress : called after every iteration with (iteration, cost, seconds).
    monitor : called after every iteration with (iteration, object, probe); stops the
        iterations when it returns True (``recon.holdout`` stops on held-out patterns).
    """
    options = options or ReconOptions()
    xp = resolve_backend(options.backend.value)
    count = options.devices or (len(device_ids) if device_ids else 1)
    devices = list(device_ids) if device_ids else list(range(count))
    if len(devices) < count:
        raise DeviceError(f"{count} devices were asked for but only {devices} were given")
    devices = devices[:count]
    if is_cupy(xp):
        available = xp.cuda.runtime.getDeviceCount()
        if max(devices) >= available:
            raise DeviceError(f"GPU {max(devices)} was asked for but this node has {available}")
    if scan.n_positions < 1:
        raise InputError(f"{scan.source}: the scan has no diffraction patterns")

    state = _Reconstruction(scan, options, xp, devices)
    costs = [state.cost / state.n_measured]
    object_steps: list[float] = []
    probe_steps: list[float] = []
    seconds: list[float] = []
    for iteration in range(options.iterations):
        start = time.perf_counter()
        object_steps.append(state.object_step())
        if options.refine_probe and iteration >= options.probe_start:
            probe_steps.append(state.probe_step())
        state.synchronize()
        elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        costs.append(state.cost / state.n_measured)
        if progress is not None:
            progress(iteration + 1, costs[-1], elapsed)
        if not math.isfinite(costs[-1]):
            raise InputError(
                f"{scan.source}: the cost became {costs[-1]} at iteration {iteration + 1}"
            )
        if monitor is not None and monitor(iteration + 1, state.object, state.probe):
            break

    return ReconResult(
        object=to_host(state.object),
        probe=to_host(state.probe),
        cost=np.asarray(costs, dtype=np.float64),
        positions=scan.positions,
        object_steps=object_steps,
        probe_steps=probe_steps,
        seconds_per_iteration=seconds,
        devices=devices,
        backend="cupy" if is_cupy(xp) else "numpy",
    )
