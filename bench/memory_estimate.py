"""The memory estimate that guards the loaders against the measured peak: prints a table.

Each view is reconstructed (3 iterations, NumPy) in a fresh process; its peak resident
memory, less that of the interpreter with the imports, is set against the estimate
``recon.memory`` refuses views with. Asserts nothing.

With ``PTYCHOFLOW_GPU_PATH_ON_CPU=1`` the GPU's algorithm runs on NumPy and two more
columns compare its traced peak (tracemalloc: the arrays the GPU would hold, plus the
host's FFT plan cache unless ``PTYCHOFLOW_FFT=scipy``) with the GPU estimate, in bytes
per pattern pixel.

    python bench/memory_estimate.py
    PTYCHOFLOW_FFT=scipy PTYCHOFLOW_GPU_PATH_ON_CPU=1 python bench/memory_estimate.py
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
SIEMENS_STAR = REPO.parent / "shared" / "data" / "siemens-star-small.npz.bz2"

#: Peak resident memory from VmHWM (ru_maxrss would carry the parent's peak over exec).
MEASURE = """
import sys
import numpy as np
from recon.cxi import load_scan
from recon.memory import estimate_gpu_bytes, estimate_reconstruction_bytes, object_shape_estimate
from recon.options import ReconOptions
from recon.ptycho import reconstruct
def peak_bytes():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
baseline = peak_bytes()
scan = load_scan(sys.argv[1])
n, h, w = scan.data.shape
extent = tuple(float(e) for e in np.ptp(scan.positions, axis=0))
modes = int(sys.argv[2])
estimate = estimate_reconstruction_bytes(
    n, (h, w), object_shape_estimate(extent, (h, w)), probe_modes=modes
)
shape = object_shape_estimate(extent, (h, w))
gpu = sum(estimate_gpu_bytes(n, (h, w), shape, probe_modes=modes).values())
import os, tracemalloc
trace = os.environ.get("PTYCHOFLOW_GPU_PATH_ON_CPU") == "1"  # tracing costs host memory
if trace:
    tracemalloc.start()
reconstruct(scan, ReconOptions(iterations=3, backend="numpy", probe_modes=modes, modes_start=0))
traced = tracemalloc.get_traced_memory()[1] if trace else 0
tracemalloc.stop()
peak = peak_bytes() - baseline
print(f"{n}x{h}x{w}", estimate, peak, gpu / (n * h * w), traced / (n * h * w))
"""


def main() -> None:
    from recon.simulate import write_simulated_scan

    with tempfile.TemporaryDirectory() as folder:
        views = []
        if SIEMENS_STAR.exists():
            views.append(("Siemens star (real)", SIEMENS_STAR, 1))
            views.append(("  two probe modes", SIEMENS_STAR, 2))
        for positions, detector in ((256, 64), (1000, 128)):
            (path,) = write_simulated_scan(
                pathlib.Path(folder) / f"sim{positions}",
                n_views=1,
                n_positions=positions,
                detector=detector,
                photons=1e6,
            )
            views.append(("simulated", path, 1))
        gpu_path = os.environ.get("PTYCHOFLOW_GPU_PATH_ON_CPU") == "1"
        header = f"{'view':<22} {'patterns':>14} {'estimate MiB':>13} {'peak MiB':>9} {'ratio':>6}"
        if gpu_path:
            header += f" {'GPU est. B/px':>13} {'traced B/px':>11}"
        print(header)
        for name, path, modes in views:
            out = subprocess.run(
                [sys.executable, "-c", MEASURE, str(path), str(modes)],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            ).stdout.split()
            shape, estimate, peak = out[0], float(out[1]), float(out[2])
            gpu, traced = float(out[3]), float(out[4])
            line = (
                f"{name:<22} {shape:>14} {estimate / 2**20:>13.0f} {peak / 2**20:>9.0f} "
                f"{estimate / peak:>6.2f}"
            )
            if gpu_path:
                line += f" {gpu:>13.0f} {traced:>11.0f}"
            print(line)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
