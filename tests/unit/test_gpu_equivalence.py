"""The CuPy path equals the NumPy path (run with ``pytest -m gpu`` on a GPU machine)."""

import numpy as np
import pytest

from recon.backend import gpu_count
from recon.options import ReconOptions
from recon.ptycho import reconstruct
from recon.simulate import simulate_view

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def view():
    if gpu_count() < 1:
        pytest.skip("no CUDA GPU usable by CuPy")
    return simulate_view(detector=64, n_positions=156, photons=1e6, seed=3)


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_cupy_matches_numpy(view, devices):
    if devices > gpu_count():
        pytest.skip(f"needs {devices} GPUs")
    options = ReconOptions(iterations=30, devices=devices)
    cpu = reconstruct(view.scan, options.replace(backend="numpy"))
    gpu = reconstruct(view.scan, options.replace(backend="cupy"))
    assert gpu.backend == "cupy" and gpu.devices == list(range(devices))
    for name in ("object", "probe"):
        a, b = getattr(cpu, name), getattr(gpu, name)
        assert np.linalg.norm(b - a) <= 1e-4 * np.linalg.norm(a), name
    np.testing.assert_allclose(gpu.cost, cpu.cost, rtol=1e-4)
