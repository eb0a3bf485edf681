"""How much memory a reconstruction will need, estimated before anything big is allocated.

A translation a metre off (an object of 10^8 x 10^8 pixels) or a sparse HDF5 dataset
with a huge declared shape must end in a clear refusal that names the number and the
limit, not in a ``MemoryError`` (or the kernel's OOM killer) after minutes.

The estimate is a model fitted to measured peaks of the NumPy solver (peak RSS less the
interpreter and imports, ``bench/memory_estimate.py``): the Siemens star, 516x128x128,
peaks at 755 MiB with one probe mode (model 832) and 1011 MiB with two (model 1122); a
simulated 1000x128x128 view at 1426 MiB (model 1536); 256x64x64 at 159 MiB (model 159).
That is a fixed 64 MiB plus about 22 float32 copies of the patterns (the counts as read,
as float32, shifted; per mode the far fields, the probe at every position, the
line-search direction and work arrays; intensities, cost terms, cached object patches),
about 9 more per extra probe mode, plus the object side (object, gradients, CG
directions, double-precision accumulators), bounded by
:data:`BYTES_PER_OBJECT_PIXEL`.
The limit is the smallest of: ``PTYCHOFLOW_MEMORY_LIMIT`` (bytes, or with a unit:
``64GiB``, ``500MB``) when set, else the memory the kernel reports as available
(``MemAvailable`` in ``/proc/meminfo``); the address space this process may still
grow by (``ulimit -v``, ``RLIMIT_AS``, less what it maps already); and what its
cgroup still allows (``memory.max`` less ``memory.current`` in cgroup v2,
``memory.limit_in_bytes`` less ``memory.usage_in_bytes`` in v1, the tightest along the
path). A view that does not fit any of them is refused naming that limit, instead of
dying in a ``MemoryError`` or by the OOM killer (issue 16).

**GPU memory.** On the GPU path (CuPy, or NumPy with ``PTYCHOFLOW_GPU_PATH_ON_CPU=1``) every
claimed GPU holds its partitions' patterns, far fields and work arrays and the object
(:func:`estimate_gpu_bytes`). The model is fitted to traced peaks of the GPU path on NumPy
(tracemalloc: the NumPy twins allocate what the CuPy kernels allocate, see
``recon.primitives``; ``bench/memory_estimate.py`` prints them) plus one far field per
mode for cuFFT's plan work areas, which CuPy keeps in its memory pool. A view that would
not fit on the claimed GPUs is refused before its patterns are read: the loaders' memory
check also checks the GPUs while :func:`gpu_claim` is active (``recon.api`` wraps the
load in it), and :func:`recon.ptycho.reconstruct` checks before it allocates. The limit
per GPU is ``PTYCHOFLOW_GPU_MEMORY_LIMIT`` when set, else the free memory CuPy reports
(device and pool), else none (the GPU path on NumPy without the variable).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
import re
from collections.abc import Iterator, Sequence

from recon.errors import InputTooLargeError, OptionsError

#: Environment variable holding the memory limit.
MEMORY_LIMIT_ENV = "PTYCHOFLOW_MEMORY_LIMIT"
#: Environment variable holding the memory limit of each GPU.
GPU_MEMORY_LIMIT_ENV = "PTYCHOFLOW_GPU_MEMORY_LIMIT"

#: Bytes per diffraction-pattern pixel over the whole reconstruction with one probe mode
#: (about 22 float32 copies; measured 84-88 with the stored counts' 4 included).
BYTES_PER_PATTERN_PIXEL = 88
#: Bytes per diffraction-pattern pixel for each probe mode beyond the first (measured 30).
BYTES_PER_EXTRA_MODE_PIXEL = 36
#: Bytes per object pixel: complex64 object and CG vectors, complex128 accumulators.
BYTES_PER_OBJECT_PIXEL = 128
#: Work space any reconstruction needs whatever its size (FFT plans, chunk buffers):
#: a 256x64x64 view peaks at 157 MiB where its patterns and object explain 95.
FIXED_OVERHEAD_BYTES = 64 * 2**20
#: Extra pixels around the scanned area (the loaders' and the solver's margins).
OBJECT_MARGIN_PIXELS = 4

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str, setting: str = MEMORY_LIMIT_ENV) -> int:
    """``"64GiB"``, ``"500 MB"``, ``"2e9"`` -> bytes; an OptionsError naming ``setting``."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise OptionsError(
            f"{setting}={text!r} is not a size; expected bytes or a number with a unit "
            "(e.g. 64GiB, 500MB)"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise OptionsError(f"{setting}={text!r} must be at least one byte")
    return int(value)


def format_bytes(count: float) -> str:
    """1536 -> ``"1.5 KiB"``; very large numbers stay readable (``"3.2e+06 TiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB" if count < 1e4 else f"{count:.3g} TiB"


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def address_space_left() -> int | None:
    """Bytes this process may still map under ``ulimit -v`` (``RLIMIT_AS`` less
    ``VmSize``); None without such a limit."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def _read_number(path: str) -> int | None:
    try:
        with open(path) as file:
            text = file.read().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


#: Values of a cgroup v1 memory limit that mean "none" (the page-rounded LONG_MAX).
_V1_UNLIMITED = 2**62


def cgroup_memory_left(
    proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup"
) -> int | None:
    """Bytes this process's cgroup still allows (its limit less its usage), the
    tightest along its path; None when no cgroup limits memory."""
    try:
        with open(proc_cgroup) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    tightest: int | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2
            base, limit_name, usage_name = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # cgroup v1
            base, limit_name = os.path.join(root, "memory"), "memory.limit_in_bytes"
            usage_name = "memory.usage_in_bytes"
        else:
            continue
        relative = path.strip("/")
        steps = relative.split("/") if relative else []
        folders = [os.path.join(base, *steps[:depth]) for depth in range(len(steps), -1, -1)]
        for folder in folders:
            limit = _read_number(os.path.join(folder, limit_name))
            if limit is None or limit >= _V1_UNLIMITED:
                continue
            usage = _read_number(os.path.join(folder, usage_name)) or 0
            left = max(0, limit - usage)
            tightest = left if tightest is None else min(tightest, left)
    return tightest


def memory_limit(explicit: int | None = None) -> tuple[int | None, str]:
    """(limit in bytes or None, where it came from) for the refusal message: the
    smallest of the limits in the module docstring (``explicit`` replaces the first)."""
    candidates: list[tuple[int, str]] = []
    if explicit is not None:
        candidates.append((explicit, "the memory_limit asked for"))
    else:
        text = os.environ.get(MEMORY_LIMIT_ENV)
        if text:
            candidates.append((parse_bytes(text), f"{MEMORY_LIMIT_ENV}={text}"))
        else:
            available = available_memory_bytes()
            if available is not None:
                candidates.append(
                    (
                        available,
                        f"the memory available on this machine; set {MEMORY_LIMIT_ENV} to change",
                    )
                )
    address_space = address_space_left()
    if address_space is not None:
        candidates.append(
            (address_space, "the address space this process may still use, ulimit -v")
        )
    cgroup = cgroup_memory_left()
    if cgroup is not None:
        candidates.append((cgroup, "what this process's cgroup still allows, memory.max"))
    if not candidates:
        return None, "no limit"
    return min(candidates, key=lambda candidate: candidate[0])


def object_shape_estimate(
    extent_pixels: tuple[float, float], detector_shape: tuple[int, int]
) -> tuple[float, float]:
    """Object (rows, cols) for positions spanning ``extent_pixels``; floats so absurd
    extents (1e12 pixels) do not overflow."""
    return (
        float(extent_pixels[0]) + detector_shape[0] + OBJECT_MARGIN_PIXELS,
        float(extent_pixels[1]) + detector_shape[1] + OBJECT_MARGIN_PIXELS,
    )


def estimate_reconstruction_bytes(
    n_patterns: int,
    detector_shape: tuple[int, int],
    object_shape: tuple[float, float],
    data_itemsize: int = 4,
    probe_modes: int = 1,
) -> float:
    """Peak bytes of one reconstruction: the patterns (as stored, plus the solver's
    float32 copies, more with every probe mode) and the object-sized arrays. A float: it
    may exceed any int64."""
    pattern_pixels = float(n_patterns) * detector_shape[0] * detector_shape[1]
    object_pixels = float(object_shape[0]) * float(object_shape[1])
    per_pattern_pixel = (
        BYTES_PER_PATTERN_PIXEL + data_itemsize + BYTES_PER_EXTRA_MODE_PIXEL * (probe_modes - 1)
    )
    return (
        FIXED_OVERHEAD_BYTES
        + pattern_pixels * per_pattern_pixel
        + object_pixels * BYTES_PER_OBJECT_PIXEL
    )


#: GPU bytes per pattern pixel on a device with one probe mode. At the peak (the line
#: search, or a gradient) a device holds its partitions' counts (4), far fields (8), probes
#: at every position (8, Fourier model), intensities (4) and one work array of far-field
#: size (8: the direction's far fields, or the far field weighted by the gradient factor,
#: transformed in place): 32. Nothing else is pattern-sized: the line terms are formed in
#: the trial-cost pass, the amplitude ``sqrt(d)`` in registers, cost values in one pass,
#: object patches gathered a block of patterns at a time, the probe direction at every
#: position computed again for the update (``recon.ptycho``, ``recon.primitives``).
#: Measured as traced peaks of the GPU path on NumPy (pocketfft, whose plans hold no
#: arrays), 2 iterations: 36.0-36.1 with defaults, 36.3-36.4 with positions refined, 27.8-27.9
#: with the bilinear model (400 x 64^2 and 150 x 128^2, ``bench/gpu_memory_traced.py``; the
#: 4 above 32 are object-sized arrays and the twins' blocks); plus 8 for cuFFT's work areas
#: (up to one far field, kept in CuPy's pool with the plans; not measurable here).
GPU_BYTES_PER_PATTERN_PIXEL = 40
#: GPU bytes per pattern pixel for each probe mode beyond the first: far fields, probes at
#: every position and the work array, 8 each (measured 24.0-24.5), plus cuFFT's work area.
GPU_BYTES_PER_EXTRA_MODE_PIXEL = 32
#: GPU bytes per object pixel, on each device (the first holds the whole object, its
#: gradient, CG history and double-precision accumulators; the others their regions).
GPU_BYTES_PER_OBJECT_PIXEL = BYTES_PER_OBJECT_PIXEL
#: GPU work space whatever the view (CuPy's small arrays, FFT plans, kernel arguments); the
#: CUDA context is not counted, it is not part of the free memory CuPy reports.
GPU_FIXED_OVERHEAD_BYTES = 16 * 2**20


#: Chunks per partition on the GPU path when ``PTYCHOFLOW_GPU_CHUNKS`` sets them (default
#: one). Splitting a partition divides only the gradient's work array, which is no longer
#: above the line search's peak (traced: 36.0 B/px with 1, 2, 4 and 8 chunks), so the
#: estimate does not depend on it and the solver no longer splits on its own; each chunk
#: costs its own kernel launches.
GPU_CHUNKS_ENV = "PTYCHOFLOW_GPU_CHUNKS"


def _gpu_bytes_per_pattern_pixel(probe_modes: int) -> float:
    return GPU_BYTES_PER_PATTERN_PIXEL + GPU_BYTES_PER_EXTRA_MODE_PIXEL * (probe_modes - 1)


def estimate_gpu_bytes(
    n_patterns: int,
    detector_shape: tuple[int, int],
    object_shape: tuple[float, float],
    probe_modes: int = 1,
    devices: Sequence[int] = (0,),
    chunks: int = 1,
) -> dict[int, float]:
    """Peak bytes on each GPU (device id -> bytes) when the view's patterns are split over
    ``devices`` (one partition per entry; a GPU named twice holds both partitions), each
    partition in ``chunks`` chunks (which do not change the peak: :data:`GPU_CHUNKS_ENV`).
    Partitions hold near-equal counts
    (``recon.ptycho.partition_positions``); each is counted with the whole object, an
    upper bound for all but the first."""
    parts = max(len(devices), 1)
    pattern_pixels = float(math.ceil(n_patterns / parts)) * detector_shape[0] * detector_shape[1]
    object_pixels = float(object_shape[0]) * float(object_shape[1])
    per_pixel = _gpu_bytes_per_pattern_pixel(probe_modes)
    per_partition = pattern_pixels * per_pixel + object_pixels * GPU_BYTES_PER_OBJECT_PIXEL
    needed: dict[int, float] = {}
    for device in devices or (0,):
        needed[device] = needed.get(device, GPU_FIXED_OVERHEAD_BYTES) + per_partition
    return needed


@dataclasses.dataclass(frozen=True)
class GpuClaim:
    """The GPUs a reconstruction will run on: one partition per entry of ``devices``."""

    devices: tuple[int, ...]
    probe_modes: int = 1


_GPU_CLAIM: contextvars.ContextVar[GpuClaim | None] = contextvars.ContextVar(
    "ptychoflow_gpu_claim", default=None
)


@contextlib.contextmanager
def gpu_claim(claim: GpuClaim | None) -> Iterator[None]:
    """While active, :func:`check_memory` (the loaders' check before they read patterns)
    also checks that the view fits on the claimed GPUs. None: no GPU check."""
    token = _GPU_CLAIM.set(claim)
    try:
        yield
    finally:
        _GPU_CLAIM.reset(token)


def gpu_memory_limits(devices: Sequence[int]) -> tuple[dict[int, int | None], str]:
    """(bytes each GPU may use, where that came from): ``PTYCHOFLOW_GPU_MEMORY_LIMIT`` when
    set, else CuPy's free memory of the device plus its pool's free blocks, else None."""
    text = os.environ.get(GPU_MEMORY_LIMIT_ENV)
    if text:
        limit = parse_bytes(text, GPU_MEMORY_LIMIT_ENV)
        return {device: limit for device in devices}, f"{GPU_MEMORY_LIMIT_ENV}={text}"
    from recon.backend import cupy_module

    cp = cupy_module()
    if cp is None:
        return {device: None for device in devices}, "no GPU memory limit"
    limits: dict[int, int | None] = {}
    for device in devices:
        with cp.cuda.Device(device):
            free, _total = cp.cuda.runtime.memGetInfo()
            limits[device] = int(free) + int(cp.get_default_memory_pool().free_bytes())
    return limits, f"the free memory of the GPUs; set {GPU_MEMORY_LIMIT_ENV} to change"


def gpu_chunks_for(
    n_patterns: int,
    detector_shape: tuple[int, int],
    object_shape: tuple[float, float],
    probe_modes: int,
    devices: Sequence[int],
    limits: dict[int, int | None] | None = None,
) -> int:
    """Chunks per partition on the GPU path: ``PTYCHOFLOW_GPU_CHUNKS`` when set, else one
    (more chunks do not lower the peak; :data:`GPU_CHUNKS_ENV`). The other arguments are
    those of :func:`estimate_gpu_bytes`, kept for callers that choose by memory."""
    text = os.environ.get(GPU_CHUNKS_ENV)
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            raise OptionsError(f"{GPU_CHUNKS_ENV}={text!r} is not a whole number") from None
    return 1


def check_gpu_memory(
    source: str,
    n_patterns: int,
    detector_shape: tuple[int, int],
    extent_pixels: tuple[float, float],
    claim: GpuClaim,
    limits: dict[int, int | None] | None = None,
) -> dict[int, float]:
    """Refuse (InputTooLargeError naming the GPU, the estimate, what is free and what to
    change) a view that would not fit on the claimed GPUs; return the estimates."""
    object_shape = object_shape_estimate(extent_pixels, detector_shape)
    where = "the limits asked for"
    if limits is None:
        limits, where = gpu_memory_limits(sorted(set(claim.devices)))
    chunks = gpu_chunks_for(
        n_patterns, detector_shape, object_shape, claim.probe_modes, claim.devices, limits
    )
    needed = estimate_gpu_bytes(
        n_patterns, detector_shape, object_shape, claim.probe_modes, claim.devices, chunks
    )
    for device, bytes_needed in needed.items():
        allowed = limits.get(device)
        if allowed is None or bytes_needed <= allowed:
            continue
        parts = claim.devices.count(device)
        modes = claim.probe_modes
        fix = (
            "use more GPUs (devices=...)"
            + (", fewer probe modes (probe_modes=...)" if modes > 1 else "")
            + f", or set {GPU_MEMORY_LIMIT_ENV} if the free memory is misreported"
        )
        raise InputTooLargeError(
            f"{source}: reconstructing this view needs about {format_bytes(bytes_needed)} on "
            f"GPU {device} ({n_patterns} patterns of {detector_shape[0]}x{detector_shape[1]} "
            f"over {len(claim.devices)} partition{'s' if len(claim.devices) > 1 else ''}, "
            f"{parts} of them on this GPU, each in {chunks} chunk{'s' if chunks > 1 else ''}, "
            f"{modes} probe mode{'s' if modes > 1 else ''}, an "
            f"object of {object_shape[0]:.4g}x{object_shape[1]:.4g} pixels), more than the "
            f"{format_bytes(allowed)} available there ({where}); {fix}"
        )
    return needed


def check_memory(
    source: str,
    n_patterns: int,
    detector_shape: tuple[int, int],
    extent_pixels: tuple[float, float],
    data_itemsize: int = 4,
    limit: int | None = None,
    hint: str = "",
    probe_modes: int = 1,
) -> float:
    """Refuse (InputTooLargeError naming the estimate and the limit) a view that would not
    fit; return the estimate in bytes otherwise.

    ``extent_pixels``: (rows, cols) spanned by the scan positions in object pixels.
    ``hint``: what to check in the file, appended to the message.
    """
    object_shape = object_shape_estimate(extent_pixels, detector_shape)
    needed = estimate_reconstruction_bytes(
        n_patterns, detector_shape, object_shape, data_itemsize, probe_modes
    )
    allowed, where = memory_limit(limit)
    if allowed is not None and needed > allowed:
        raise InputTooLargeError(
            f"{source}: reconstructing this view needs about {format_bytes(needed)} "
            f"({n_patterns} patterns of {detector_shape[0]}x{detector_shape[1]}"
            f"{f', {probe_modes} probe modes' if probe_modes > 1 else ''}, an object of "
            f"{object_shape[0]:.4g}x{object_shape[1]:.4g} pixels), more than the limit of "
            f"{format_bytes(allowed)} ({where}){hint}"
        )
    claim = _GPU_CLAIM.get()
    if claim is not None:
        check_gpu_memory(source, n_patterns, detector_shape, extent_pixels, claim)
    return needed
