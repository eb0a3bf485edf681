"""The GPU's algorithmic path, run on NumPy (``PTYCHOFLOW_GPU_PATH_ON_CPU=1``), against the
default CPU path: each primitive's twins, the solver step by step, whole runs, and the
result file's ``backend``. A fault in a GPU-only path of the solver shows here on a
machine without a GPU; CuPy's own kernels are compared with these twins by the ``gpu``
tests (``test_gpu_equivalence.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from recon import backend, primitives
from recon.options import ReconOptions
from recon.ptycho import reconstruct
from recon.simulate import simulate_view
from recon.simulate_fourier import simulate_scan
from tests.unit.equivalence import compare_stepwise, random_windows, rel, stepwise


@pytest.fixture
def gpu_path(monkeypatch):
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")


@pytest.fixture
def cpu_path(monkeypatch):
    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)


@pytest.fixture(scope="module")
def view():
    return simulate_scan(
        detector=64, n_positions=100, seed=5, mode_powers=(0.8, 0.2), position_error_px=1.0
    ).to_scan()


def test_gather_windows_twins_agree_exactly(monkeypatch):
    obj, corner, _ = random_windows()
    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)
    strided = primitives.gather_windows(np, obj, corner, (12, 9))
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    fancy = primitives.gather_windows(np, obj, corner, (12, 9))
    np.testing.assert_array_equal(fancy, strided)
    r, c = corner[3]
    np.testing.assert_array_equal(fancy[3], obj[r : r + 12, c : c + 9])


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.float32, np.float64])
def test_scatter_windows_twins_agree(monkeypatch, dtype):
    """Overlapping windows summed: one block add per window (CPU) against ``add.at`` on the
    real and imaginary parts (the GPU's algorithm), into a float32 or double accumulator."""
    _, corner, windows = random_windows(seed=1, n=60)
    if not np.iscomplexobj(np.zeros(1, dtype)):
        windows = np.ascontiguousarray(windows.real)
    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)
    blocks = np.zeros((50, 47), dtype)
    primitives.scatter_windows(np, blocks, windows, corner)
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    atomic = np.zeros((50, 47), dtype)
    primitives.scatter_windows(np, atomic, windows, corner)
    rtol = 1e-6 if dtype in (np.complex64, np.float32) else 1e-14
    np.testing.assert_allclose(atomic, blocks, rtol=rtol, atol=1e-5)
    assert abs(atomic.sum() - windows.astype(dtype).sum()) < 1e-3  # nothing lost


def test_chunks_and_backend_names(monkeypatch):
    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)
    assert primitives.chunk_patterns(np, 1000, 64 * 64 * 8) == 128
    assert primitives.backend_name(np) == "numpy"
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    assert primitives.chunk_patterns(np, 1000, 64 * 64 * 8) == 1000
    assert primitives.backend_name(np) == "numpy-gpu-path"


def test_gpu_path_takes_the_default_paths_steps(view, monkeypatch):
    """Construction, cost switches, object, probe and position steps, add_modes and the
    mode orthogonalisation: the GPU's algorithm on NumPy equals the CPU's to float32."""
    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)
    cpu = stepwise(view, np)
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    gpu_path = stepwise(view, np)
    assert compare_stepwise(cpu, gpu_path) == []


def test_two_fft_libraries_agree_step_by_step_with_a_dark_floor(view, monkeypatch):
    """FFTW and pocketfft round differently, as cuFFT does. With the dark floor every step
    agrees to float32 rounding; this is what makes CPU and GPU comparable at all."""
    pytest.importorskip("pyfftw")
    monkeypatch.delenv("PTYCHOFLOW_FFT", raising=False)
    backend._cpu_fft.cache_clear()
    try:
        fftw = stepwise(view, np)
        monkeypatch.setenv("PTYCHOFLOW_FFT", "scipy")
        backend._cpu_fft.cache_clear()
        pocketfft = stepwise(view, np)
    finally:
        backend._cpu_fft.cache_clear()
    assert compare_stepwise(fftw, pocketfft) == []


def test_without_the_floor_fft_rounding_decides_the_first_object_step(monkeypatch):
    """The fault the first GPU run found, reproduced with two CPU FFT libraries: from a
    rough probe guess the textbook Poisson gradient follows FFT rounding in pixels the
    model leaves dark (recon.cost), and one object step lands far apart."""
    pytest.importorskip("pyfftw")
    scan = simulate_view(detector=64, n_positions=156, photons=1e6, seed=3).scan
    from recon.ptycho import _Reconstruction

    objects = []
    try:
        for fft in ("", "scipy"):
            monkeypatch.setenv("PTYCHOFLOW_FFT", fft)
            backend._cpu_fft.cache_clear()
            state = _Reconstruction(scan, ReconOptions(iterations=1, backend="numpy"), np, [0])
            state.object_step()
            objects.append(state.object.copy())
    finally:
        backend._cpu_fft.cache_clear()
    assert rel(objects[1], objects[0]) > 0.05


@pytest.mark.parametrize(
    "changes",
    [{}, {"probe_modes": 2}, {"refine_positions": True, "position_start": 5}, {"devices": 2}],
    ids=["one-mode", "two-modes", "positions", "two-partitions"],
)
def test_whole_runs_agree_with_the_default_cpu_path(view, monkeypatch, changes):
    """30 iterations with default options: the GPU path on NumPy ends where the CPU path
    ends (measured 0 to 3e-6 apart; the textbook costs' dark pixels would amplify any
    difference in the algorithm, so this is a sharp test)."""
    options = ReconOptions(iterations=30, backend="numpy", **changes)
    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)
    cpu = reconstruct(view, options)
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    gpu_path = reconstruct(view, options)
    assert gpu_path.backend == "numpy-gpu-path" and cpu.backend == "numpy"
    assert rel(gpu_path.object, cpu.object) <= 1e-4
    assert rel(gpu_path.probe, cpu.probe) <= 1e-4
    np.testing.assert_allclose(gpu_path.cost, cpu.cost, rtol=1e-4)
    if cpu.refined_positions is not None:
        np.testing.assert_allclose(gpu_path.refined_positions, cpu.refined_positions, atol=1e-3)


def test_result_file_names_the_path_that_ran(tmp_path, gpu_path):
    from recon.api import reconstruct_file
    from recon.result import read_result
    from recon.simulate import write_simulated_scan

    source = write_simulated_scan(tmp_path / "scan1", n_views=1, detector=32, n_positions=30)[0]
    summary = reconstruct_file(
        source, tmp_path / "out" / "view.h5", ReconOptions(iterations=2, backend="numpy")
    )
    assert summary["backend"] == "numpy-gpu-path"
    assert read_result(summary["output"])["backend"] == "numpy-gpu-path"


def test_partition_in_chunks_steps_like_one_chunk(view, monkeypatch):
    """A partition split into 4 chunks (``PTYCHOFLOW_GPU_CHUNKS``): every step agrees with
    one chunk to float32 rounding."""
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    monkeypatch.setenv("PTYCHOFLOW_GPU_CHUNKS", "1")
    whole = stepwise(view, np)
    monkeypatch.setenv("PTYCHOFLOW_GPU_CHUNKS", "4")
    assert compare_stepwise(whole, stepwise(view, np)) == []


def test_position_search_and_step_in_blocks_move_like_the_cpu_path(view, monkeypatch):
    """The GPU path runs the position search's misfits and the Gauss-Newton position step a
    block of patterns at a time (``recon.primitives.window_blocks``; here blocks of 8
    patterns): the same moves as the default path's whole chunk."""
    from recon.ptycho import _Reconstruction

    options = ReconOptions(iterations=100, backend="numpy", refine_positions=True)

    def moved() -> np.ndarray:
        state = _Reconstruction(view, options, np, [0])
        for _ in range(3):
            state.object_step()
            state.probe_step()
        state.position_search(3)
        state.position_step()
        return state.positions

    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)
    cpu = moved()
    assert np.abs(cpu - _Reconstruction(view, options, np, [0]).positions).max() > 0.05
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    monkeypatch.setattr(primitives, "GPU_TWIN_BLOCK_BYTES", 8 * 8 * 64 * 64)
    assert len(primitives.window_blocks(np, 100, 64 * 64)) == 13
    np.testing.assert_allclose(moved(), cpu, rtol=0, atol=1e-4)
