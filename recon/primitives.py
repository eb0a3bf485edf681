"""Backend primitives: every piece of the solver that is computed differently on a GPU.

The solver (``recon.ptycho``) and the operators (``recon.operators``) never ask which
array module they hold; where the CPU and the GPU need different algorithms, they call
one of these functions, each of which has a NumPy implementation of the GPU's algorithm:

=====================  ============================  ======================================
primitive              CPU path (NumPy)              GPU path (CuPy, or NumPy twin)
=====================  ============================  ======================================
``gather_windows``     strided view indexed by       fancy indexing with row and column
                       corner (copies whole rows)    index grids
``scatter_windows``    one contiguous block add      ``add.at`` on the real and imaginary
                       per window, in order          parts (CuPy: atomics; NumPy: ``np.add.at``)
``chunk_patterns``     chunks of about 4 MiB per     one chunk per partition
                       complex array (cache-sized)
``fft2`` / ``ifft2``   FFTW or pocketfft, unitary,   cuFFT, unitary, in place where the
                       out of place                  input is not needed again (NumPy twin:
                                                     the CPU FFT with ``overwrite_x``)
``window_blocks``      one block (the chunk)         object patches gathered a block of
                                                     patterns at a time where used
=====================  ============================  ======================================

``PTYCHOFLOW_GPU_PATH_ON_CPU=1`` makes NumPy arrays take the GPU path, so the GPU's
algorithm runs (and is tested) on a machine without a GPU: results then record the backend
``numpy-gpu-path``. What stays untested on the CPU is CuPy's own kernels, which the ``gpu``
tests compare against these twins.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from recon.backend import fft2 as _fft2
from recon.backend import get_array_module, is_cupy
from recon.backend import ifft2 as _ifft2

__all__ = [
    "CPU_CHUNK_BYTES",
    "GPU_PATH_ON_CPU",
    "CostTerms",
    "LineSearchTerms",
    "add_scaled",
    "apply_ramp",
    "backend_name",
    "chunk_patterns",
    "cost_terms",
    "cost_value",
    "farfield_trial_costs",
    "fft2",
    "gather_windows",
    "gpu_path",
    "gradient_farfield",
    "ifft2",
    "ifft2_into",
    "line_search_terms",
    "line_terms",
    "line_trial_costs",
    "mode_intensity",
    "multiply_conj",
    "scatter_windows",
    "sum_modes",
    "trial_batch",
    "trial_costs",
    "update_farfield",
    "window_blocks",
]

#: The environment variable that makes NumPy take the GPU's algorithmic path.
GPU_PATH_ON_CPU = "PTYCHOFLOW_GPU_PATH_ON_CPU"

#: On the CPU path each partition is processed in chunks of patterns whose complex arrays
#: are about this large, so temporaries stay in cache and are reused by the allocator
#: instead of being mapped and zeroed anew by the kernel. The GPU path uses one chunk.
CPU_CHUNK_BYTES = 4 * 2**20


def fft2(x: Any, overwrite: bool = False) -> Any:
    """Unitary 2-D FFT over the last two axes (``recon.backend.fft2``).

    ``overwrite=True``: the caller no longer needs ``x``. On the GPU path the transform then
    runs in place, so no second array of ``x``'s size is allocated (CuPy: cuFFT's in-place
    c2c through ``cupyx.scipy.fft``; the NumPy twin: the CPU FFT with ``overwrite_x``, in
    place with pocketfft, so the traced memory of the GPU path on NumPy shows it). The
    result may share ``x``'s memory; use the result, not ``x``. The default CPU path keeps
    its out-of-place transforms (an in-place FFTW plan may round differently)."""
    return _fft2(x, overwrite_x=overwrite and gpu_path(get_array_module(x)))


def ifft2(x: Any, overwrite: bool = False) -> Any:
    """Inverse of :func:`fft2`, with ``overwrite`` as there."""
    return _ifft2(x, overwrite_x=overwrite and gpu_path(get_array_module(x)))


def ifft2_into(x: Any) -> Any:
    """``x`` replaced by its inverse FFT, and returned: in place on the GPU path, copied
    back into ``x`` on the default CPU path (whose FFT is out of place)."""
    xp = get_array_module(x)
    result = ifft2(x, overwrite=True)
    if not xp.may_share_memory(result, x):
        x[...] = result
    return x


def gpu_path(xp: Any) -> bool:
    """True when arrays of ``xp`` take the GPU's algorithms: CuPy, or NumPy with
    ``PTYCHOFLOW_GPU_PATH_ON_CPU=1``."""
    return is_cupy(xp) or os.environ.get(GPU_PATH_ON_CPU, "") == "1"


def backend_name(xp: Any) -> str:
    """What ran, as results record it: ``cupy``, ``numpy-gpu-path`` or ``numpy``."""
    if is_cupy(xp):
        return "cupy"
    return "numpy-gpu-path" if gpu_path(xp) else "numpy"


def chunk_patterns(xp: Any, n_patterns: int, pattern_bytes: int, gpu_chunks: int = 1) -> int:
    """Patterns per chunk of a partition with ``n_patterns`` patterns of ``pattern_bytes``
    (one complex far field of every mode): on the GPU path all of them, or a
    ``gpu_chunks``-th when the view is split to fit the GPU's memory (``recon.memory``)."""
    if gpu_path(xp):
        return max(1, -(-n_patterns // max(gpu_chunks, 1)))
    return max(1, CPU_CHUNK_BYTES // max(pattern_bytes, 1))


def _index_grids(xp: Any, corner: Any, h: int, w: int) -> tuple[Any, Any]:
    rows = corner[:, 0, None, None] + xp.arange(h)[None, :, None]
    cols = corner[:, 1, None, None] + xp.arange(w)[None, None, :]
    return rows, cols


def _add_at(xp: Any) -> Any:
    """Unbuffered ``add.at``: ``np.add.at`` on NumPy; on CuPy ``cupyx.scatter_add``, the call
    measured on an H200 (CuPy 14.2) to equal ``np.add.at`` exactly through views of the real
    and imaginary parts (``bench/gpu_diagnose.py``). CuPy 14 marks it deprecated in favour of
    ``cupy.add.at``, which has not yet run on a GPU here."""
    if not is_cupy(xp):
        return np.add.at
    import warnings

    import cupyx  # type: ignore[import-not-found]

    def scatter_add(target: Any, indices: Any, values: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cupyx.scatter_add(target, indices, values)

    return scatter_add


def gather_windows(xp: Any, obj: Any, corner: Any, shape: tuple[int, int]) -> Any:
    """(N_POS, H, W) copies of the ``obj`` windows of ``shape`` at integer ``corner``
    (N_POS, 2) int64 (row, col of each window's top-left pixel)."""
    h, w = shape
    if _fused(xp):  # one gather kernel instead of fancy indexing's index grids
        obj = xp.ascontiguousarray(obj)
        out = xp.empty((corner.shape[0], h, w), dtype=obj.dtype)
        corner = xp.ascontiguousarray(corner, dtype=np.int64)
        _cupy_kernels(xp)["gather"](
            obj, corner, np.int64(h), np.int64(w), np.int64(obj.shape[1]), out
        )
        return out
    if gpu_path(xp):
        rows, cols = _index_grids(xp, corner, h, w)
        return obj[rows, cols]
    # A strided view indexed by corner copies whole rows: much faster on the CPU than
    # per-element fancy indexing.
    s0, s1 = obj.strides
    view = xp.lib.stride_tricks.as_strided(
        obj,
        shape=(obj.shape[0] - h + 1, obj.shape[1] - w + 1, h, w),
        strides=(s0, s1, s0, s1),
        writeable=False,
    )
    return view[corner[:, 0], corner[:, 1]]


def scatter_windows(xp: Any, out: Any, windows: Any, corner: Any) -> None:
    """Add (N_POS, H, W) ``windows`` into ``out`` at integer ``corner``; overlaps sum.

    ``out`` may have a wider dtype (complex128, float64) than the windows: overlapping
    contributions are then accumulated in double precision on both paths.
    """
    n, h, w = windows.shape
    if _fused(xp) and out.flags.c_contiguous:
        # One kernel: each element converted to the accumulator's precision in registers
        # and added by atomics on the real and imaginary parts; no converted copy.
        complex_out = xp.iscomplexobj(out)
        if xp.iscomplexobj(windows) and not complex_out:
            raise TypeError("complex windows cannot be added into a real array")
        target = out.view(out.real.dtype) if complex_out else out
        kernel = "scatter_complex" if xp.iscomplexobj(windows) else "scatter_real"
        if not xp.iscomplexobj(windows) and complex_out:
            kernel = "scatter_real_into_complex"
        _cupy_kernels(xp)[kernel](
            windows,
            xp.ascontiguousarray(corner, dtype=np.int64),
            np.int64(h),
            np.int64(w),
            np.int64(out.shape[1]),
            target,
        )
        return
    if gpu_path(xp):
        rows, cols = _index_grids(xp, corner, h, w)
        add_at = _add_at(xp)
        # A block of windows at a time, so the copy converted to the accumulator's dtype
        # stays small (the CuPy kernel converts in registers); each part's adds keep
        # their order, so the blocks change nothing.
        for part in _blocks(n, h * w, xp):
            block = windows[part].astype(out.dtype, copy=False)
            index = (
                xp.broadcast_to(rows[part], block.shape),
                xp.broadcast_to(cols[part], block.shape),
            )
            if xp.iscomplexobj(block):
                # No complex atomics: add the real and imaginary parts through views.
                add_at(out.real, index, block.real)
                add_at(out.imag, index, block.imag)
            else:
                add_at(out, index, block)
        return
    # Windows overlap, so add one at a time; each add is a contiguous block.
    for index, (r, c) in enumerate(corner.tolist()):
        out[r : r + h, c : c + w] += windows[index]


# -- fused elementwise passes (issue 20) ------------------------------------------------
#
# Each is one pass over the pattern-sized arrays on the GPU (a CuPy ElementwiseKernel or
# RawKernel, compiled once); its NumPy twin evaluates the same float32 expressions in the
# same order (the solver's plain-NumPy expressions of ``recon.cost`` and ``recon.ptycho``),
# a block of patterns at a time, so the GPU path on NumPy allocates what the GPU allocates:
# the outputs, no full-size temporaries. On the default CPU path a chunk is one block, so
# the results are those of the plain expressions bit for bit. The kernels use the
# round-to-nearest intrinsics (``__fmul_rn`` ...) so the compiler contracts nothing into
# an FMA: each float32 operation rounds where NumPy's does. What still differs is the
# last bit of ``logf``/``atanf`` against NumPy's and the order of float64 sums.

#: ``PTYCHOFLOW_FUSED_KERNELS=0`` runs the NumPy twins' code on CuPy arrays instead of the
#: fused kernels (one CuPy call per operation, as before the kernels): the same algorithm,
#: to compare speed on a GPU, or to step around a kernel that misbehaves.
FUSED_KERNELS_ENV = "PTYCHOFLOW_FUSED_KERNELS"


def _fused(xp: Any) -> bool:
    """True where the CuPy kernels run (CuPy, unless ``PTYCHOFLOW_FUSED_KERNELS=0``)."""
    return is_cupy(xp) and os.environ.get(FUSED_KERNELS_ENV, "1") != "0"


#: Trial steps a line search evaluates per pass over the data: one on the CPU path (a
#: trial costs a pass there and the first is usually accepted), several on the GPU path,
#: where a pass is bound by reading the data and K costs cost about what one does.
GPU_TRIAL_BATCH = 4
#: The CuPy trial-cost kernel keeps this many float64 accumulators per thread.
MAX_TRIAL_BATCH = 8

POISSON = "poisson"
AMPLITUDE = "amplitude"


@dataclasses.dataclass(frozen=True)
class CostTerms:
    """What the fused cost passes read of a cost (``recon.cost``):

    kind : ``poisson`` (``g(I) = I - d - d log(...)``) or ``amplitude``
        (``(sqrt(I) - sqrt(d))^2`` with the dark floor's arctan term);
    data : (N, H, W) float32, the counts ``d`` (both kinds: the amplitude passes take
        ``sqrt(d)`` per element, so no array of square roots is stored);
    data2 : ``d^2 + tau^2`` (poisson with a dark floor), else None;
    mask : (H, W) float32 0/1 or None; tau : the dark floor in counts (0: textbook).
    """

    kind: str
    data: Any
    data2: Any
    mask: Any
    tau: float


def cost_terms(cost: Any) -> CostTerms:
    """The :class:`CostTerms` of a ``recon.cost`` cost object (its value and gradient)."""
    from recon.cost import GaussianCost, PoissonCost

    if isinstance(cost, PoissonCost):
        return CostTerms(POISSON, cost.data, cost._data2, cost.mask, float(cost.tau))
    if isinstance(cost, GaussianCost):
        return CostTerms(AMPLITUDE, cost.data, None, cost.mask, float(cost.tau))
    raise TypeError(f"no fused cost terms for {type(cost).__name__}")


def trial_batch(xp: Any) -> int:
    """Trial steps per line-search pass: :data:`GPU_TRIAL_BATCH` on the GPU path, else 1."""
    return GPU_TRIAL_BATCH if gpu_path(xp) else 1


#: Blocks of the NumPy twins on the GPU path hold at most this many bytes of complex64
#: (when ``CPU_CHUNK_BYTES`` is not smaller): the fused kernels they stand for allocate no
#: temporaries, so the twins' per-block temporaries are an artefact of the traced memory
#: (``bench/gpu_memory_traced.py``) that is kept small against the views it measures.
GPU_TWIN_BLOCK_BYTES = 2**20


def _block(n_patterns: int, pattern_pixels: int, xp: Any = np) -> int:
    """Patterns per block of a NumPy twin: a default-path chunk is one block."""
    size = CPU_CHUNK_BYTES
    if gpu_path(xp):
        size = min(size, GPU_TWIN_BLOCK_BYTES)
    return max(1, size // max(8 * pattern_pixels, 1))


#: Where the GPU path gathers object patches a block of patterns at a time instead of
#: keeping them (:func:`window_blocks`), a block on CuPy holds this many bytes of complex64.
GPU_WINDOW_BLOCK_BYTES = 32 * 2**20


def window_blocks(xp: Any, n_patterns: int, pattern_pixels: int) -> list[slice]:
    """Blocks of patterns for work that gathers object patches a block at a time: on
    CuPy :data:`GPU_WINDOW_BLOCK_BYTES` of patches, on the GPU path's NumPy twin the
    twins' blocks, on the default CPU path one block (the chunk)."""
    if is_cupy(xp):
        size = max(1, GPU_WINDOW_BLOCK_BYTES // max(8 * pattern_pixels, 1))
    elif gpu_path(xp):
        size = _block(n_patterns, pattern_pixels, xp)
    else:
        size = max(n_patterns, 1)
    return [slice(first, first + size) for first in range(0, n_patterns, size)]


def _blocks(n_patterns: int, pattern_pixels: int, xp: Any = np) -> list[slice]:
    """Blocks of patterns for a twin: one on CuPy (the twins' code run unfused there)."""
    if is_cupy(xp):
        return [slice(0, n_patterns)]
    size = _block(n_patterns, pattern_pixels, xp)
    return [slice(first, first + size) for first in range(0, n_patterns, size)]


def _abs2(x: Any) -> Any:
    return x.real * x.real + x.imag * x.imag


def _mode_sum_numpy(far: Any) -> Any:
    if far.shape[1] == 1:
        return _abs2(far[:, 0])
    return _abs2(far).sum(axis=1)


# -- (c) |far|^2 summed over modes -------------------------------------------------------


def mode_intensity(xp: Any, far: Any) -> Any:
    """(N, H, W) float32 ``sum_m |far[:, m]|^2`` of (N, MODES, H, W) complex64 ``far``,
    summed in mode order."""
    if _fused(xp):
        far = xp.ascontiguousarray(far)
        n, modes, h, w = far.shape
        out = xp.empty((n, h, w), dtype=np.float32)
        _cupy_kernels(xp)["mode_intensity"](far, np.int32(modes), np.int64(h * w), out)
        return out
    n, _modes, h, w = far.shape
    parts = _blocks(n, h * w, xp)
    if len(parts) == 1:
        return _mode_sum_numpy(far)
    out = xp.empty((n, h, w), dtype=np.float32)
    for part in parts:
        out[part] = _mode_sum_numpy(far[part])
    return out


def line_terms(xp: Any, psi: Any, far: Any) -> tuple[Any, Any]:
    """(cross, far2), each (N, H, W) float32, of far fields ``psi`` and a direction's far
    fields ``far`` (N, MODES, H, W): ``cross = 2 Re sum_m conj(psi_m) far_m`` and ``far2 =
    sum_m |far_m|^2``, so ``sum_m |psi_m + t far_m|^2 = I + t (cross + t far2)``."""
    n, modes, h, w = far.shape
    if _fused(xp):
        psi = xp.ascontiguousarray(psi)
        far = xp.ascontiguousarray(far)
        cross = xp.empty((n, h, w), dtype=np.float32)
        far2 = xp.empty((n, h, w), dtype=np.float32)
        _cupy_kernels(xp)["line_terms"](psi, far, np.int32(modes), np.int64(h * w), cross, far2)
        return cross, far2

    def terms(p: Any, f: Any) -> Any:
        product = p.real * f.real
        product += p.imag * f.imag
        product = product.sum(axis=1)
        product *= 2
        return product

    parts = _blocks(n, h * w, xp)
    if len(parts) == 1:
        return terms(psi, far), _mode_sum_numpy(far)
    cross = xp.empty((n, h, w), dtype=np.float32)
    far2 = xp.empty((n, h, w), dtype=np.float32)
    for part in parts:
        cross[part] = terms(psi[part], far[part])
        far2[part] = _mode_sum_numpy(far[part])
    return cross, far2


def update_farfield(xp: Any, psi: Any, far: Any, step: float, out: Any = None) -> Any:
    """``psi += step * far`` in place (both (N, MODES, H, W) complex64, ``step`` rounded to
    float32); returns the new (N, H, W) float32 intensity ``sum_m |psi_m|^2``, written into
    ``out`` when given (the old intensity: no second intensity array)."""
    n, modes, h, w = psi.shape
    if _fused(xp):
        if out is None:
            out = xp.empty((n, h, w), dtype=np.float32)
        if not (psi.flags.c_contiguous and far.flags.c_contiguous):
            psi += step * far
            out[...] = mode_intensity(xp, psi)
            return out
        _cupy_kernels(xp)["update_farfield"](
            far, np.float32(step), np.int32(modes), np.int64(h * w), psi, out
        )
        return out
    parts = _blocks(n, h * w, xp)
    if len(parts) == 1 and out is None:
        psi += step * far
        return _mode_sum_numpy(psi)
    if out is None:
        out = xp.empty((n, h, w), dtype=np.float32)
    for part in parts:
        block = psi[part]
        block += step * far[part]
        out[part] = _mode_sum_numpy(block)
    return out


def add_scaled(xp: Any, y: Any, x: Any, step: float) -> Any:
    """``y += step * x`` in place (complex64, ``step`` rounded to float32) in one pass, and
    return ``y``; NumPy: a block of patterns at a time, so ``step * x`` is never whole."""
    if _fused(xp):
        return _cupy_kernels(xp)["add_scaled"](x, np.float32(step), y, y)
    parts = _blocks(y.shape[0], y.shape[-1] * y.shape[-2], xp)
    if len(parts) == 1:
        y += step * x
        return y
    for part in parts:
        y[part] += step * x[part]
    return y


def sum_modes(xp: Any, back: Any) -> Any:
    """(N, H, W) ``back.sum(axis=1)`` of (N, MODES, H, W) ``back``, which may be destroyed.

    One mode: the view ``back[:, 0]``, no copy. Several on the GPU path: accumulated in
    place into ``back[:, 0]`` in mode order (``((b0 + b1) + b2) ...``, the order of NumPy's
    sum over fewer than 8 terms and of CuPy's reduction over the axis), no new array. The
    default CPU path: ``back.sum(axis=1)``."""
    modes = back.shape[1]
    if modes == 1:
        return back[:, 0]
    if not gpu_path(xp) or modes >= 8:
        return back.sum(axis=1)
    total = back[:, 0]
    for mode in range(1, modes):
        total += back[:, mode]
    return total


# -- products with conjugates and phase ramps, in place ---------------------------------


def multiply_conj(xp: Any, a: Any, b: Any) -> Any:
    """``a *= conj(b)`` in place and return ``a``; ``b`` broadcasts against ``a`` (e.g.
    (N, 1, H, W) patches against (N, MODES, H, W)). No conjugated copy of ``b`` is made
    (NumPy: one block of patterns at a time)."""
    if _fused(xp):
        return _cupy_kernels(xp)["multiply_conj"](a, b, a)
    if b.shape[0] == 1:  # one b for every pattern: its conjugate is small
        a *= b.conj()
        return a
    for part in _blocks(a.shape[0], a.shape[-1] * a.shape[-2], xp):
        a[part] *= b[part].conj()
    return a


def apply_ramp(
    xp: Any, spectrum: Any, rows: Any, cols: Any, conj: bool = False, out: Any = None
) -> Any:
    """``spectrum * (rows * cols)`` (or times its conjugate): the separable phase ramps
    ``rows`` (N, 1, H, 1) and ``cols`` (N, 1, 1, W) complex64 of a Fourier shift, their
    product rounded to complex64 as a stored ramp would be, never stored whole.
    ``spectrum`` (N or 1, MODES, H, W); ``out``: where to write (may be ``spectrum``),
    else a new (N, MODES, H, W) array."""
    if _fused(xp):
        kernel = _cupy_kernels(xp)["apply_ramp"]
        if out is None:
            return kernel(spectrum, rows, cols, np.int32(conj))
        return kernel(spectrum, rows, cols, np.int32(conj), out)
    n = rows.shape[0]
    if out is None:
        shape = (n, *spectrum.shape[1:])
        out = xp.empty(shape, dtype=np.result_type(spectrum.dtype, rows.dtype))
    h, w = spectrum.shape[-2:]
    for part in _blocks(n, h * w * spectrum.shape[1], xp):
        ramp = rows[part] * cols[part]
        if conj:
            ramp = ramp.conj()
        source = spectrum if spectrum.shape[0] == 1 else spectrum[part]
        xp.multiply(source, ramp, out=out[part])
    return out


# -- (b) the gradient factor times the far field -----------------------------------------


def _gradient_factor_numpy(xp: Any, terms: CostTerms, intensity: Any, data: Any, mask: Any) -> Any:
    """``recon.cost``'s ``gradient_factor``, expression for expression (``data``: counts)."""
    from recon.cost import EPSILON

    tau = terms.tau
    if terms.kind == AMPLITUDE:
        data = xp.sqrt(data)
    if terms.kind == POISSON:
        if tau:
            denominator = intensity * intensity
            denominator += tau * tau
            factor = 1 - data * intensity / denominator
        else:
            factor = 1 - data / (intensity + EPSILON)
    elif tau:
        factor = xp.sqrt(intensity)
        factor *= data
        factor /= intensity + tau
        factor = 1 - factor
    else:
        factor = 1 - data / (xp.sqrt(intensity) + EPSILON)
    if mask is not None:
        factor *= mask
    return factor


def gradient_farfield(xp: Any, terms: CostTerms, intensity: Any, farfield: Any) -> Any:
    """(N, MODES, H, W) complex64 ``g'(I) * farfield``: the far field times the cost's
    gradient factor (``recon.cost``, masked), what the adjoint turns into the gradient.

    ``intensity`` (N, H, W) float32; ``farfield`` (N, MODES, H, W) complex64. One pass on
    the GPU: the factor is never stored.
    """
    if _fused(xp):
        mask = np.float32(1.0) if terms.mask is None else terms.mask
        kernel = _cupy_kernels(xp)[f"gradient_{terms.kind}"]
        return kernel(
            intensity[:, None],
            terms.data[:, None],
            mask,
            farfield,
            np.float32(terms.tau),
            np.float32(terms.tau * terms.tau),
        )
    n, _modes, h, w = farfield.shape
    parts = _blocks(n, h * w, xp)
    if len(parts) == 1:
        factor = _gradient_factor_numpy(xp, terms, intensity, terms.data, terms.mask)
        return factor[:, None] * farfield
    out = xp.empty(farfield.shape, dtype=np.result_type(farfield.dtype, np.float32))
    for part in parts:
        factor = _gradient_factor_numpy(xp, terms, intensity[part], terms.data[part], terms.mask)
        xp.multiply(factor[:, None], farfield[part], out=out[part])
    return out


# -- (a) the line search's trial costs ---------------------------------------------------


def _cost_terms_numpy(xp: Any, terms: CostTerms, intensity: Any, data: Any, data2: Any) -> Any:
    """``recon.cost``'s ``value`` terms (before the mask and the sum), expression for
    expression (``data``: counts). ``intensity`` may be overwritten."""
    from recon.cost import EPSILON

    tau = terms.tau
    if terms.kind == AMPLITUDE:
        data = xp.sqrt(data)
    if terms.kind == POISSON:
        if tau:
            ratio = intensity * intensity
            ratio += tau * tau
            ratio /= data2
            return intensity - data - 0.5 * data * xp.log(ratio)
        return intensity - data - data * xp.log((intensity + EPSILON) / (data + EPSILON))
    root = xp.sqrt(intensity)
    residual = root - data
    if tau:
        root *= data
        root += tau
        angle = xp.arctan(tau**0.5 * residual / root)
        angle *= 2 * tau**0.5
        angle *= data
    residual *= residual
    if tau:
        residual += angle
    return residual


def trial_costs(
    xp: Any,
    terms: CostTerms,
    intensity: Any,
    cross: Any,
    far2: Any,
    steps: Sequence[float],
) -> Any:
    """(K,) float64 array, on the arrays' device: the cost at each trial ``steps[k]`` of the
    intensity ``max(intensity + t (cross + t far2), 0)`` (all (N, H, W) float32, from
    :func:`line_terms`), summed in float64. The data are read once for all K steps (at
    most :data:`MAX_TRIAL_BATCH`); nothing is copied to the host, so a line search over
    several partitions synchronises once, when it reads the sums."""
    steps = [float(step) for step in steps]
    if not 1 <= len(steps) <= MAX_TRIAL_BATCH:
        raise ValueError(f"1 to {MAX_TRIAL_BATCH} trial steps per pass, got {len(steps)}")
    if _fused(xp):
        return _trial_costs_cupy(xp, terms, intensity, cross, far2, steps)
    n, h, w = intensity.shape
    parts = _blocks(n, h * w, xp)
    sums = xp.zeros(len(steps), dtype=np.float64)
    for k, step in enumerate(steps):
        for part in parts:
            trial = far2[part] * step
            trial += cross[part]
            trial *= step
            trial += intensity[part]
            # Exactly >= 0; rounding can dip below where the model is dark.
            xp.maximum(trial, 0, out=trial)
            data2 = None if terms.data2 is None else terms.data2[part]
            values = _cost_terms_numpy(xp, terms, trial, terms.data[part], data2)
            if terms.mask is not None:
                values *= terms.mask
            sums[k] += xp.sum(values, dtype=np.float64)
    return sums


def cost_value(xp: Any, cost: Any, intensity: Any) -> float:
    """The value of a ``recon.cost`` cost at ``intensity`` (N, H, W) float32, a Python float.

    The default CPU path: ``cost.value(intensity)`` itself. The GPU path: one trial-cost
    pass (:func:`trial_costs`) at step 0 with ``intensity`` as its own line terms, whose
    trial intensity ``max(((I t + I) t) + I, 0)`` at ``t = 0`` is ``I`` exactly (``I``
    finite and >= 0), so the terms are ``cost.value``'s; only the float64 summation order
    differs. No pattern-sized temporaries (``cost.value`` forms several on a GPU)."""
    if not gpu_path(xp):
        return cost.value(intensity)
    sums = trial_costs(xp, cost_terms(cost), intensity, intensity, intensity, [0.0])
    return float(sums[0])


def farfield_trial_costs(
    xp: Any,
    terms: CostTerms,
    intensity: Any,
    psi: Any,
    far: Any,
    steps: Sequence[float],
) -> Any:
    """:func:`trial_costs` with the line terms formed in the same pass from the far fields
    ``psi`` and the direction's far fields ``far`` (N, MODES, H, W) complex64, as
    :func:`line_terms` forms them: the line search stores no cross term and no ``|far|^2``
    (8 bytes per pattern pixel), at the price of reading the two far fields (16 bytes) in
    each pass instead of the two terms (8). Equal to ``trial_costs(..., *line_terms(xp,
    psi, far), steps)`` bit for bit on NumPy (the same blocks, in the same order)."""
    steps = [float(step) for step in steps]
    if not 1 <= len(steps) <= MAX_TRIAL_BATCH:
        raise ValueError(f"1 to {MAX_TRIAL_BATCH} trial steps per pass, got {len(steps)}")
    if _fused(xp):
        return _trial_costs_cupy(xp, terms, intensity, psi, far, steps, fields=True)
    n, h, w = intensity.shape
    sums = xp.zeros(len(steps), dtype=np.float64)
    for part in _blocks(n, h * w, xp):
        # One block's terms at a time (on the default path a chunk is one block).
        cross, far2 = line_terms(xp, psi[part], far[part])
        sub = CostTerms(
            terms.kind,
            terms.data[part],
            None if terms.data2 is None else terms.data2[part],
            terms.mask,
            terms.tau,
        )
        sums += trial_costs(xp, sub, intensity[part], cross, far2, steps)
        del cross, far2
    return sums


@dataclasses.dataclass
class LineSearchTerms:
    """What a line search keeps of a chunk besides its far fields (:func:`line_search_terms`):
    the direction's far fields ``far``, and either the stored ``cross`` and ``far2`` of
    :func:`line_terms` (the default CPU path: a trial then reads two float32 arrays) or
    none, the far fields ``psi`` being read again in every trial pass (the GPU path:
    8 bytes per pattern pixel less, and no pass to form the terms)."""

    psi: Any
    far: Any
    cross: Any = None
    far2: Any = None


def line_search_terms(xp: Any, psi: Any, far: Any) -> LineSearchTerms:
    """The line search's terms of far fields ``psi`` and a direction's far fields ``far``
    (both (N, MODES, H, W) complex64; neither may change until the line search ends)."""
    if gpu_path(xp):
        return LineSearchTerms(psi, far)
    cross, far2 = line_terms(xp, psi, far)
    return LineSearchTerms(psi, far, cross, far2)


def line_trial_costs(
    xp: Any, terms: CostTerms, intensity: Any, line: LineSearchTerms, steps: Sequence[float]
) -> Any:
    """The costs at ``steps`` (:func:`trial_costs`) from :func:`line_search_terms`: the
    same numbers whichever terms were kept."""
    if line.cross is None:
        return farfield_trial_costs(xp, terms, intensity, line.psi, line.far, steps)
    return trial_costs(xp, terms, intensity, line.cross, line.far2, steps)


#: Threads per block of the trial-cost kernel (a power of two: the block reduction halves).
_TRIAL_THREADS = 256
#: At most this many blocks: each thread strides over the arrays and the per-block float64
#: sums (blocks x K) are added in a fixed order, so the result is deterministic.
_TRIAL_BLOCKS = 1024


def _trial_costs_cupy(
    cp: Any,
    terms: CostTerms,
    intensity: Any,
    first: Any,
    second: Any,
    steps: list[float],
    fields: bool = False,
) -> Any:
    """``first``, ``second``: the terms ``cross``, ``far2`` (N, H, W) float32, or with
    ``fields`` the far fields ``psi``, ``far`` (N, MODES, H, W) complex64."""
    n = intensity.size
    hw = intensity.shape[-1] * intensity.shape[-2]
    dtype = np.complex64 if fields else np.float32
    arrays = [
        cp.ascontiguousarray(intensity, dtype=np.float32),
        cp.ascontiguousarray(first, dtype=dtype),
        cp.ascontiguousarray(second, dtype=dtype),
    ]
    modes = (np.int32(first.shape[1]),) if fields else ()
    data = cp.ascontiguousarray(terms.data, dtype=np.float32)
    aux = data if terms.data2 is None else cp.ascontiguousarray(terms.data2, dtype=np.float32)
    mask = data if terms.mask is None else cp.ascontiguousarray(terms.mask, dtype=np.float32)
    k = len(steps)
    padded = steps + [0.0] * (MAX_TRIAL_BATCH - k)
    blocks = max(1, min(_TRIAL_BLOCKS, -(-n // _TRIAL_THREADS)))
    partial = cp.empty((blocks, k), dtype=np.float64)
    tau = terms.tau
    # The float32 constants NumPy rounds the Python floats of recon.cost to.
    if terms.kind == POISSON:
        constants = (np.float32(tau * tau), np.float32(0.0), np.float32(0.0))
    else:
        constants = (np.float32(tau), np.float32(tau**0.5), np.float32(2 * tau**0.5))
    _cupy_kernels(cp)["trial_costs_fields" if fields else "trial_costs"](
        (blocks,),
        (_TRIAL_THREADS,),
        (
            *arrays,
            data,
            aux,
            mask,
            *(np.float64(step) for step in padded),
            np.int64(n),
            np.int64(hw),
            np.int32(k),
            np.int32(0 if terms.kind == POISSON else 1),
            np.int32(terms.mask is not None),
            np.int32(bool(tau)),
            *constants,
            *modes,
            partial,
        ),
    )
    return partial.sum(axis=0)


# -- the CuPy kernels --------------------------------------------------------------------

# ``i`` is the loop index over (N, H, W); ``n`` and ``i`` are reserved names in CuPy kernels.
_MODE_LOOP = """
    const long long pat = i / hw;
    const long long p = i - pat * hw;
"""

_ABS2 = "__fadd_rn(__fmul_rn(v.real(), v.real()), __fmul_rn(v.imag(), v.imag()))"

_GRADIENT_BODY = {
    # 1 - d / (inten + EPSILON), or 1 - d inten / (inten^2 + tau^2); times the mask.
    POISSON: """
    float f;
    if (tau == 0.0f) {
        f = __fsub_rn(1.0f, __fdiv_rn(d, __fadd_rn(inten, 1e-6f)));
    } else {
        const float den = __fadd_rn(__fmul_rn(inten, inten), tau2);
        f = __fsub_rn(1.0f, __fdiv_rn(__fmul_rn(d, inten), den));
    }
    """,
    # 1 - a / (sqrt(inten) + EPSILON), or 1 - sqrt(inten) a / (inten + tau), a = sqrt(d);
    # times the mask.
    AMPLITUDE: """
    float f;
    const float a = sqrtf(d);
    if (tau == 0.0f) {
        f = __fsub_rn(1.0f, __fdiv_rn(a, __fadd_rn(sqrtf(inten), 1e-6f)));
    } else {
        f = __fdiv_rn(__fmul_rn(sqrtf(inten), a), __fadd_rn(inten, tau));
        f = __fsub_rn(1.0f, f);
    }
    """,
}

_TRIAL_COSTS_SOURCE = r"""
extern "C" __global__ void %(name)s(
    const float* I0, %(line_args)s const float* d,
    const float* aux, const float* mask,
    const double s0, const double s1, const double s2, const double s3,
    const double s4, const double s5, const double s6, const double s7,
    const long long n, const long long hw, const int K, const int kind,
    const int has_mask, const int has_tau, const float c0, const float c1, const float c2,
    %(extra_args)s double* partial)
{
    __shared__ double shared[%(threads)d];
    // The steps come as scalars (no copy to the device); rounded to float32 as NumPy does.
    const float t[%(max_k)d] = {(float)s0, (float)s1, (float)s2, (float)s3,
                                (float)s4, (float)s5, (float)s6, (float)s7};
    double acc[%(max_k)d];
    for (int k = 0; k < K; ++k) acc[k] = 0.0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float i0 = I0[i];
%(load)s
        const float dd = (kind == 0) ? d[i] : sqrtf(d[i]);  // the amplitude sqrt(d)
        const float x = has_tau ? aux[i] : 0.0f;
        const float m = has_mask ? mask[i %% hw] : 1.0f;
        for (int k = 0; k < K; ++k) {
            // ((b t + c) t) + I0, clipped at 0 (NaN stays NaN, as with NumPy's maximum).
            float It = __fadd_rn(__fmul_rn(__fadd_rn(__fmul_rn(b, t[k]), c), t[k]), i0);
            if (It < 0.0f) It = 0.0f;
            float term;
            if (kind == 0) {  // Poisson
                const float diff = __fsub_rn(It, dd);
                if (has_tau) {  // (It - d) - (0.5 d) log((It^2 + tau^2) / (d^2 + tau^2))
                    const float ratio = __fdiv_rn(__fadd_rn(__fmul_rn(It, It), c0), x);
                    term = __fsub_rn(diff, __fmul_rn(__fmul_rn(0.5f, dd), logf(ratio)));
                } else {  // (It - d) - d log((It + EPSILON) / (d + EPSILON))
                    const float ratio = __fdiv_rn(__fadd_rn(It, 1e-6f), __fadd_rn(dd, 1e-6f));
                    term = __fsub_rn(diff, __fmul_rn(dd, logf(ratio)));
                }
            } else {  // amplitude; dd is sqrt(d), as NumPy's float32 sqrt rounds it
                const float root = sqrtf(It);
                const float r = __fsub_rn(root, dd);
                term = __fmul_rn(r, r);
                if (has_tau) {  // + 2 sqrt(tau) a arctan(sqrt(tau) r / (sqrt(It) a + tau))
                    const float s = __fadd_rn(__fmul_rn(root, dd), c0);
                    float angle = atanf(__fdiv_rn(__fmul_rn(c1, r), s));
                    angle = __fmul_rn(__fmul_rn(angle, c2), dd);
                    term = __fadd_rn(term, angle);
                }
            }
            if (has_mask) term = __fmul_rn(term, m);
            acc[k] += (double)term;
        }
    }
    for (int k = 0; k < K; ++k) {
        shared[threadIdx.x] = acc[k];
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half >>= 1) {
            if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
            __syncthreads();
        }
        if (threadIdx.x == 0) partial[(long long)blockIdx.x * K + k] = shared[0];
        __syncthreads();
    }
}
"""


# The line terms of the trial-cost kernel: read as stored, or formed from the far fields
# (complex64 as float pairs) in mode order as the ``line_terms`` kernel forms them.
_TRIAL_LOAD_TERMS = {
    "name": "ptychoflow_trial_costs",
    "line_args": "const float* cross, const float* bb,",
    "extra_args": "",
    "load": """
        const float c = cross[i];
        const float b = bb[i];""",
}
_TRIAL_LOAD_FIELDS = {
    "name": "ptychoflow_trial_costs_fields",
    "line_args": "const float* psi, const float* far,",
    "extra_args": "const int modes,",
    "load": """
        const long long pat = i / hw;
        const long long p = i - pat * hw;
        float c = 0.0f, b = 0.0f;
        for (int m = 0; m < modes; ++m) {
            const long long j = 2 * ((pat * modes + m) * hw + p);
            const float ur = psi[j], ui = psi[j + 1], vr = far[j], vi = far[j + 1];
            const float cm = __fadd_rn(__fmul_rn(ur, vr), __fmul_rn(ui, vi));
            const float a = __fadd_rn(__fmul_rn(vr, vr), __fmul_rn(vi, vi));
            c = (m == 0) ? cm : __fadd_rn(c, cm);
            b = (m == 0) ? a : __fadd_rn(b, a);
        }
        c = __fmul_rn(c, 2.0f);""",
}


def _trial_costs_source(load: dict[str, str]) -> str:
    return _TRIAL_COSTS_SOURCE % {"threads": _TRIAL_THREADS, "max_k": MAX_TRIAL_BATCH, **load}


@functools.cache
def _cupy_kernel_table(cp: Any) -> dict[str, Any]:
    kernels = {
        "mode_intensity": cp.ElementwiseKernel(
            "raw complex64 far, int32 modes, int64 hw",
            "float32 out",
            _MODE_LOOP
            + f"""
            float s = 0.0f;
            for (int m = 0; m < modes; ++m) {{
                const complex<float> v = far[(pat * modes + m) * hw + p];
                const float a = {_ABS2};
                s = (m == 0) ? a : __fadd_rn(s, a);
            }}
            out = s;
            """,
            "ptychoflow_mode_intensity",
        ),
        "line_terms": cp.ElementwiseKernel(
            "raw complex64 psi, raw complex64 far, int32 modes, int64 hw",
            "float32 cross, float32 far2",
            _MODE_LOOP
            + f"""
            float c = 0.0f, q = 0.0f;
            for (int m = 0; m < modes; ++m) {{
                const long long j = (pat * modes + m) * hw + p;
                const complex<float> u = psi[j];
                const complex<float> v = far[j];
                const float cm = __fadd_rn(__fmul_rn(u.real(), v.real()),
                                           __fmul_rn(u.imag(), v.imag()));
                const float a = {_ABS2};
                c = (m == 0) ? cm : __fadd_rn(c, cm);
                q = (m == 0) ? a : __fadd_rn(q, a);
            }}
            cross = __fmul_rn(c, 2.0f);
            far2 = q;
            """,
            "ptychoflow_line_terms",
        ),
        "update_farfield": cp.ElementwiseKernel(
            "raw complex64 far, float32 t, int32 modes, int64 hw",
            "raw complex64 psi, float32 out",
            _MODE_LOOP
            + f"""
            float s = 0.0f;
            for (int m = 0; m < modes; ++m) {{
                const long long j = (pat * modes + m) * hw + p;
                const complex<float> u = psi[j];
                const complex<float> b = far[j];
                const complex<float> v(__fadd_rn(u.real(), __fmul_rn(t, b.real())),
                                       __fadd_rn(u.imag(), __fmul_rn(t, b.imag())));
                psi[j] = v;
                const float a = {_ABS2};
                s = (m == 0) ? a : __fadd_rn(s, a);
            }}
            out = s;
            """,
            "ptychoflow_update_farfield",
        ),
        "trial_costs": cp.RawKernel(
            _trial_costs_source(_TRIAL_LOAD_TERMS), "ptychoflow_trial_costs"
        ),
        "trial_costs_fields": cp.RawKernel(
            _trial_costs_source(_TRIAL_LOAD_FIELDS), "ptychoflow_trial_costs_fields"
        ),
    }
    # Window gather and scatter: (N, H, W) windows at ``corner`` (N, 2) of a C-ordered
    # (OBJ_H, OW) array; element i is window k = i / (h w), row q / w, column q % w.
    window = """
            const long long k = i / (h * w);
            const long long q = i - k * h * w;
            const long long r = corner[2 * k] + q / w;
            const long long c = corner[2 * k + 1] + (q - (q / w) * w);
            const long long j = r * ow + c;
    """
    kernels["gather"] = cp.ElementwiseKernel(
        "raw T obj, raw int64 corner, int64 h, int64 w, int64 ow",
        "T out",
        window + "out = obj[j];",
        "ptychoflow_gather_windows",
    )
    kernels["scatter_complex"] = cp.ElementwiseKernel(
        "C v, raw int64 corner, int64 h, int64 w, int64 ow",
        "raw F out",
        window
        + """
            atomicAdd(&out[2 * j], (F)v.real());
            atomicAdd(&out[2 * j + 1], (F)v.imag());
        """,
        "ptychoflow_scatter_complex",
    )
    kernels["scatter_real"] = cp.ElementwiseKernel(
        "T v, raw int64 corner, int64 h, int64 w, int64 ow",
        "raw F out",
        window + "atomicAdd(&out[j], (F)v);",
        "ptychoflow_scatter_real",
    )
    kernels["scatter_real_into_complex"] = cp.ElementwiseKernel(
        "T v, raw int64 corner, int64 h, int64 w, int64 ow",
        "raw F out",
        window + "atomicAdd(&out[2 * j], (F)v);",
        "ptychoflow_scatter_real_into_complex",
    )
    # a * conj(b), rounded as NumPy's complex64 product: (ar br + ai bi, ai br - ar bi).
    kernels["multiply_conj"] = cp.ElementwiseKernel(
        "complex64 a, complex64 b",
        "complex64 out",
        """
        const float ar = a.real(), ai = a.imag(), br = b.real(), bi = b.imag();
        const float re = __fadd_rn(__fmul_rn(ar, br), __fmul_rn(ai, bi));
        const float im = __fsub_rn(__fmul_rn(ai, br), __fmul_rn(ar, bi));
        out = complex<float>(re, im);
        """,
        "ptychoflow_multiply_conj",
    )
    # y + t x, rounded as NumPy's y + (t x) with t converted to complex64 (t + 0i).
    kernels["add_scaled"] = cp.ElementwiseKernel(
        "complex64 x, float32 t, complex64 y",
        "complex64 out",
        """
        out = complex<float>(__fadd_rn(y.real(), __fmul_rn(t, x.real())),
                             __fadd_rn(y.imag(), __fmul_rn(t, x.imag())));
        """,
        "ptychoflow_add_scaled",
    )
    kernels["apply_ramp"] = cp.ElementwiseKernel(
        "complex64 s, complex64 r, complex64 c, int32 flip",
        "complex64 out",
        """
        const float rr = r.real(), ri = r.imag(), cr = c.real(), ci = c.imag();
        const float pr = __fsub_rn(__fmul_rn(rr, cr), __fmul_rn(ri, ci));
        float pi = __fadd_rn(__fmul_rn(rr, ci), __fmul_rn(ri, cr));
        if (flip) pi = -pi;
        const float re = __fsub_rn(__fmul_rn(s.real(), pr), __fmul_rn(s.imag(), pi));
        const float im = __fadd_rn(__fmul_rn(s.real(), pi), __fmul_rn(s.imag(), pr));
        out = complex<float>(re, im);
        """,
        "ptychoflow_apply_ramp",
    )
    for kind, body in _GRADIENT_BODY.items():
        kernels[f"gradient_{kind}"] = cp.ElementwiseKernel(
            "float32 inten, float32 d, float32 mask, complex64 psi, float32 tau, float32 tau2",
            "complex64 out",
            body
            + """
            f = __fmul_rn(f, mask);
            out = complex<float>(__fmul_rn(f, psi.real()), __fmul_rn(f, psi.imag()));
            """,
            f"ptychoflow_gradient_{kind}",
        )
    return kernels


def _cupy_kernels(cp: Any) -> dict[str, Any]:
    """The compiled CuPy kernels (built on first use; CuPy caches the binaries)."""
    return _cupy_kernel_table(cp)
