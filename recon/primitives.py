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
``fft2`` / ``ifft2``   FFTW or pocketfft, unitary    cuFFT, unitary (NumPy twin: the CPU FFT)
=====================  ============================  ======================================

``PTYCHOFLOW_GPU_PATH_ON_CPU=1`` makes NumPy arrays take the GPU path, so the GPU's
algorithm runs (and is tested) on a machine without a GPU: results then record the backend
``numpy-gpu-path``. What stays untested on the CPU is CuPy's own kernels, which the ``gpu``
tests compare against these twins.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from recon.backend import fft2, ifft2, is_cupy

__all__ = [
    "CPU_CHUNK_BYTES",
    "GPU_PATH_ON_CPU",
    "backend_name",
    "chunk_patterns",
    "fft2",
    "gather_windows",
    "gpu_path",
    "ifft2",
    "scatter_windows",
]

#: The environment variable that makes NumPy take the GPU's algorithmic path.
GPU_PATH_ON_CPU = "PTYCHOFLOW_GPU_PATH_ON_CPU"

#: On the CPU path each partition is processed in chunks of patterns whose complex arrays
#: are about this large, so temporaries stay in cache and are reused by the allocator
#: instead of being mapped and zeroed anew by the kernel. The GPU path uses one chunk.
CPU_CHUNK_BYTES = 4 * 2**20


def gpu_path(xp: Any) -> bool:
    """True when arrays of ``xp`` take the GPU's algorithms: CuPy, or NumPy with
    ``PTYCHOFLOW_GPU_PATH_ON_CPU=1``."""
    return is_cupy(xp) or os.environ.get(GPU_PATH_ON_CPU, "") == "1"


def backend_name(xp: Any) -> str:
    """What ran, as results record it: ``cupy``, ``numpy-gpu-path`` or ``numpy``."""
    if is_cupy(xp):
        return "cupy"
    return "numpy-gpu-path" if gpu_path(xp) else "numpy"


def chunk_patterns(xp: Any, n_patterns: int, pattern_bytes: int) -> int:
    """Patterns per chunk of a partition with ``n_patterns`` patterns of ``pattern_bytes``
    (one complex far field of every mode): all of them on the GPU path."""
    if gpu_path(xp):
        return max(1, n_patterns)
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
    _n, h, w = windows.shape
    if gpu_path(xp):
        rows, cols = _index_grids(xp, corner, h, w)
        rows = xp.broadcast_to(rows, windows.shape)
        cols = xp.broadcast_to(cols, windows.shape)
        windows = windows.astype(out.dtype, copy=False)
        add_at = _add_at(xp)
        if xp.iscomplexobj(windows):
            # No complex atomics: add the real and imaginary parts through views of ``out``.
            add_at(out.real, (rows, cols), windows.real)
            add_at(out.imag, (rows, cols), windows.imag)
        else:
            add_at(out, (rows, cols), windows)
        return
    # Windows overlap, so add one at a time; each add is a contiguous block.
    for index, (r, c) in enumerate(corner.tolist()):
        out[r : r + h, c : c + w] += windows[index]
