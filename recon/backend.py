"""Array-module selection: NumPy on the CPU, CuPy on GPUs, same code.

A numerical function finds its module with :func:`get_array_module` from its
inputs and then uses only ``xp.*``. Host/device copies happen only at I/O
boundaries (:func:`to_device`, :func:`to_host`). CuPy is optional.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import numpy as np

from recon.errors import DeviceError

#: Default dtypes, in one place.
REAL = np.float32
COMPLEX = np.complex64


@functools.cache
def cupy_module() -> Any | None:
    """CuPy if it is installed and sees at least one GPU, else None."""
    try:
        import cupy  # type: ignore[import-not-found]

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # ImportError, or CUDA driver/runtime errors
        return None


def gpu_count() -> int:
    """Number of CUDA devices CuPy can use (0 without CuPy)."""
    cp = cupy_module()
    return 0 if cp is None else int(cp.cuda.runtime.getDeviceCount())


def get_array_module(*arrays: Any) -> Any:
    """The array module (numpy or cupy) of the given arrays."""
    cp = cupy_module()
    if cp is not None:
        return cp.get_array_module(*arrays)
    return np


def is_cupy(xp: Any) -> bool:
    return xp is not np


def resolve_backend(name: str) -> Any:
    """``"numpy"``, ``"cupy"`` or ``"auto"`` (CuPy when a GPU is usable) to a module."""
    if name == "numpy":
        return np
    cp = cupy_module()
    if name == "cupy":
        if cp is None:
            raise DeviceError(
                "backend 'cupy' was asked for, but CuPy is not installed or sees no GPU "
                "(install the 'gpu' extra on a CUDA 12 machine, or use --backend numpy)"
            )
        return cp
    if name == "auto":
        return np if cp is None else cp
    raise DeviceError(f"unknown array backend {name!r}; expected auto, numpy or cupy")


def check_devices(xp: Any, devices: list[int]) -> None:
    """Refuse GPU ordinals this node does not have (CuPy); NumPy partitions need none.
    An ordinal may repeat: partitions then share that GPU."""
    if is_cupy(xp):
        available = xp.cuda.runtime.getDeviceCount()
        if max(devices) >= available:
            raise DeviceError(f"GPU {max(devices)} was asked for but this node has {available}")


def gpu_names(xp: Any, devices: list[int]) -> list[str]:
    """The GPU model of each device, e.g. ``NVIDIA H200``; empty for NumPy."""
    if not is_cupy(xp):
        return []
    names = []
    for device in devices:
        name = xp.cuda.runtime.getDeviceProperties(device)["name"]
        names.append(name.decode() if isinstance(name, bytes) else str(name))
    return names


def device_context(xp: Any, device: int) -> Any:
    """Context manager that makes ``device`` current for CuPy; a no-op for NumPy."""
    if is_cupy(xp):
        return xp.cuda.Device(device)
    return contextlib.nullcontext()


def to_device(array: Any, xp: Any, device: int = 0) -> Any:
    """Copy a host array onto ``device`` of module ``xp`` (no copy for NumPy)."""
    if is_cupy(xp):
        with xp.cuda.Device(device):
            return xp.asarray(array)
    return np.asarray(array)


def to_host(array: Any) -> np.ndarray:
    """A NumPy copy of an array from any module."""
    if isinstance(array, np.ndarray):
        return array
    return array.get()


def synchronize(xp: Any, device: int = 0) -> None:
    """Wait for queued GPU work on ``device`` (for honest timings); no-op on NumPy."""
    if is_cupy(xp):
        with xp.cuda.Device(device):
            xp.cuda.Stream.null.synchronize()


#: Threads per CPU FFT call. One: the patterns are small (64-256 px), batched per chunk,
#: and a thread pool per call costs more than it gains on them (64 px star, 60
#: iterations: 84 ms/iteration with every core, 64 with one, on 2 cores).
CPU_FFT_THREADS = 1


@functools.cache
def _cpu_fft() -> Any:
    """FFTW (``pyfftw``, the ``fftw`` extra) when installed, with its plan cache; SciPy's
    pocketfft otherwise. Same unitary transforms, float32 kept; FFTW is about 1.7x
    faster on batches of small patterns. ``PTYCHOFLOW_FFT=scipy`` forces pocketfft."""
    if os.environ.get("PTYCHOFLOW_FFT", "").lower() != "scipy":
        try:
            import pyfftw  # type: ignore[import-untyped]
            import pyfftw.interfaces.scipy_fft as fftw  # type: ignore[import-untyped]
        except ImportError:
            pass
        else:
            pyfftw.interfaces.cache.enable()
            pyfftw.interfaces.cache.set_keepalive_time(300)
            return fftw
    import scipy.fft

    return scipy.fft


def cpu_fft_name() -> str:
    """Which CPU FFT runs: ``fftw`` or ``pocketfft``."""
    return "fftw" if "pyfftw" in _cpu_fft().__name__ else "pocketfft"


def fft2(x: Any, overwrite_x: bool = False) -> Any:
    """Unitary 2-D FFT over the last two axes (zero frequency at the corner), dtype kept.

    ``overwrite_x``: ``x`` may be destroyed; a complex ``x`` is then transformed in place
    where the library can (cuFFT through ``cupyx.scipy.fft``, pocketfft), and the result
    shares its memory. Without it, a new array."""
    xp = get_array_module(x)
    if is_cupy(xp):
        if overwrite_x:
            import cupyx.scipy.fft  # type: ignore[import-not-found]

            return cupyx.scipy.fft.fft2(x, norm="ortho", overwrite_x=True)
        return xp.fft.fft2(x, norm="ortho")
    if overwrite_x:
        return _cpu_fft().fft2(x, norm="ortho", workers=CPU_FFT_THREADS, overwrite_x=True)
    return _cpu_fft().fft2(x, norm="ortho", workers=CPU_FFT_THREADS)


def ifft2(x: Any, overwrite_x: bool = False) -> Any:
    """Inverse of :func:`fft2` (also its adjoint, since it is unitary); ``overwrite_x`` as
    there."""
    xp = get_array_module(x)
    if is_cupy(xp):
        if overwrite_x:
            import cupyx.scipy.fft  # type: ignore[import-not-found]

            return cupyx.scipy.fft.ifft2(x, norm="ortho", overwrite_x=True)
        return xp.fft.ifft2(x, norm="ortho")
    if overwrite_x:
        return _cpu_fft().ifft2(x, norm="ortho", workers=CPU_FFT_THREADS, overwrite_x=True)
    return _cpu_fft().ifft2(x, norm="ortho", workers=CPU_FFT_THREADS)


def copy_to(array: Any, xp: Any, device: int) -> Any:
    """The array on ``device``: a peer-to-peer copy between GPUs, or the array itself
    when it is already there (callers copy when they need their own memory).

    For NumPy this returns the array itself: partitions on the CPU share memory.
    """
    if not is_cupy(xp):
        return array
    source_device = array.device.id
    if source_device == device:
        return array
    with xp.cuda.Device(source_device):
        source = xp.ascontiguousarray(array)
    with xp.cuda.Device(device):
        out = xp.empty(source.shape, dtype=source.dtype)
        out.data.copy_from_device(source.data, source.nbytes)
    return out


def real_inner(a: Any, b: Any) -> float:
    """Re <a, b> = Re sum(conj(a) * b), accumulated in float64, as a Python float."""
    xp = get_array_module(a, b)
    return float(xp.sum(a.real * b.real + a.imag * b.imag, dtype=xp.float64))
