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


@pytest.fixture(scope="module")
def fourier_view():
    if gpu_count() < 1:
        pytest.skip("no CUDA GPU usable by CuPy")
    from recon.simulate_fourier import simulate_scan

    return simulate_scan(
        detector=64, n_positions=120, seed=5, mode_powers=(0.8, 0.2), position_error_px=1.0
    ).to_scan()


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("patch_model", ["fourier", "bilinear"])
def test_cupy_matches_numpy_with_modes(fourier_view, devices, patch_model):
    if devices > gpu_count():
        pytest.skip(f"needs {devices} GPUs")
    options = ReconOptions(iterations=20, devices=devices, probe_modes=2, patch_model=patch_model)
    cpu = reconstruct(fourier_view, options.replace(backend="numpy"))
    gpu = reconstruct(fourier_view, options.replace(backend="cupy"))
    assert gpu.probe.shape == (2, 64, 64)
    np.testing.assert_allclose(gpu.mode_power_fractions, cpu.mode_power_fractions, atol=1e-4)
    for name in ("object", "probe"):
        a, b = getattr(cpu, name), getattr(gpu, name)
        assert np.linalg.norm(b - a) <= 1e-3 * np.linalg.norm(a), name
    np.testing.assert_allclose(gpu.cost, cpu.cost, rtol=1e-4)


@pytest.mark.parametrize("devices", [1, 2])
def test_cupy_matches_numpy_with_position_refinement(fourier_view, devices):
    if devices > gpu_count():
        pytest.skip(f"needs {devices} GPUs")
    options = ReconOptions(iterations=20, devices=devices, refine_positions=True, position_start=5)
    cpu = reconstruct(fourier_view, options.replace(backend="numpy"))
    gpu = reconstruct(fourier_view, options.replace(backend="cupy"))
    np.testing.assert_allclose(gpu.refined_positions, cpu.refined_positions, atol=1e-3)
    assert np.linalg.norm(gpu.object - cpu.object) <= 1e-3 * np.linalg.norm(cpu.object)
    np.testing.assert_allclose(gpu.cost, cpu.cost, rtol=1e-4)
