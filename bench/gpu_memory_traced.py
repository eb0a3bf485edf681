"""Traced peak memory of the GPU's algorithmic path on NumPy, bytes per pattern pixel:
prints a table, asserts nothing.

The NumPy twins of ``recon.primitives`` allocate what the CuPy kernels allocate, so the
traced peak (tracemalloc) of ``PTYCHOFLOW_GPU_PATH_ON_CPU=1`` stands in for the GPU's
memory-pool peak, less cuFFT's work areas. pocketfft is used because FFTW's plan cache
keeps arrays on the host that a GPU does not. Two iterations of simulated views
(``recon.simulate_fourier``), with defaults, two modes, positions refined and the bilinear
model, after one untraced warm-up run (modules imported on first use are not counted);
``PTYCHOFLOW_GPU_CHUNKS=N`` splits each partition into N chunks. What the proxy cannot
show: cuFFT's work areas, CuPy's pool rounding, copies CuPy might make of non-contiguous
FFT inputs (``bench/gpu_notes.md``).

    python bench/gpu_memory_traced.py
    PTYCHOFLOW_GPU_CHUNKS=8 python bench/gpu_memory_traced.py
"""

from __future__ import annotations

import os
import pathlib
import sys
import tracemalloc

REPO = pathlib.Path(__file__).resolve().parents[1]

VARIANTS = (
    ("defaults", {}),
    ("2 modes", {"probe_modes": 2, "modes_start": 0}),
    ("positions", {"refine_positions": True, "position_start": 0}),
    ("bilinear", {"patch_model": "bilinear"}),
)


def main() -> None:
    os.environ["PTYCHOFLOW_GPU_PATH_ON_CPU"] = "1"
    os.environ["PTYCHOFLOW_FFT"] = "scipy"
    sys.path.insert(0, str(REPO))
    from recon.memory import estimate_gpu_bytes, gpu_chunks_for, object_shape_estimate
    from recon.options import ReconOptions
    from recon.ptycho import reconstruct
    from recon.simulate_fourier import simulate_scan

    # One untraced run first, so modules imported on first use and caches filled once are
    # not counted against the view (the estimate's fixed part covers them).
    warm = simulate_scan(detector=32, n_positions=20, seed=5).to_scan()
    reconstruct(warm, ReconOptions(iterations=1, backend="numpy", refine_positions=True))
    print(f"{'view':<12} {'options':<10} {'chunks':>6} {'traced B/px':>11} {'estimate B/px':>13}")
    for n, detector in ((400, 64), (150, 128)):
        scan = simulate_scan(detector=detector, n_positions=n, seed=5).to_scan()
        pixels = n * detector * detector
        extent = tuple(float(e) for e in scan.positions.max(axis=0) - scan.positions.min(axis=0))
        shape = object_shape_estimate(extent, (detector, detector))
        for name, changes in VARIANTS:
            options = ReconOptions(iterations=2, backend="numpy", **changes)
            chunks = gpu_chunks_for(n, (detector, detector), shape, options.probe_modes, (0,))
            estimate = estimate_gpu_bytes(
                n, (detector, detector), shape, options.probe_modes, chunks=chunks
            )[0]
            tracemalloc.start()
            reconstruct(scan, options)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(
                f"{f'{n}x{detector}^2':<12} {name:<10} {chunks:>6} {peak / pixels:>11.1f} "
                f"{estimate / pixels:>13.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
