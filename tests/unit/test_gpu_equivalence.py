"""The CuPy path computes what the NumPy path computes (run with ``pytest -m gpu`` on a GPU
machine; ``bench/gpu.py`` runs these first).

1. Each primitive of ``recon.primitives`` on CuPy against its NumPy twin (the GPU's
   algorithm on NumPy) and against the CPU path.
2. The solver step by step (construction, cost switches, object, probe and position
   steps, ``add_modes``, the mode orthogonalisation) with a dark floor, to the tolerances
   of ``tests/unit/equivalence.py`` (justified there from float32 and measured between two
   CPU FFT libraries); also with two partitions sharing the one GPU.
3. Whole runs of 30 iterations. Iterates of nonlinear CG from different rounding do not
   stay within float32 of each other: a backtracking line search accepts a step or halves
   it on a comparison of two costs, and a rounding-level difference that flips one such
   decision sends the runs apart (two CPU FFT libraries end 4e-1 apart in the object from
   a rough guess, see ``test_gpu_path_on_cpu.py``). What a user sees must agree: the
   image's fidelity against the simulated truth and the final cost.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recon import primitives
from recon.backend import cupy_module, to_host
from recon.metrics import compare_objects, illuminated_region
from recon.options import ReconOptions
from recon.ptycho import reconstruct
from recon.simulate import simulate_view
from recon.simulate_fourier import simulate_scan
from tests.unit.equivalence import compare_stepwise, phase_ssim, random_windows, rel, stepwise
from tests.unit.fused_cases import (
    COST_CASES,
    COST_IDS,
    STEPS,
    cost_for,
    far_fields,
    plain_intensity,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    module = cupy_module()
    if module is None:
        pytest.skip("no CUDA GPU usable by CuPy")
    return module


@pytest.fixture(scope="module")
def fourier_view(cp):
    return simulate_scan(
        detector=64, n_positions=100, seed=5, mode_powers=(0.8, 0.2), position_error_px=1.0
    ).to_scan()


# -- 1. primitives ---------------------------------------------------------------------


def test_gather_windows_matches_both_numpy_paths(cp, monkeypatch):
    obj, corner, _ = random_windows()
    gpu = to_host(primitives.gather_windows(cp, cp.asarray(obj), cp.asarray(corner), (12, 9)))
    monkeypatch.delenv(primitives.GPU_PATH_ON_CPU, raising=False)
    np.testing.assert_array_equal(gpu, primitives.gather_windows(np, obj, corner, (12, 9)))
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    np.testing.assert_array_equal(gpu, primitives.gather_windows(np, obj, corner, (12, 9)))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.float32, np.float64])
def test_scatter_windows_matches_the_numpy_twin(cp, monkeypatch, dtype):
    """Atomic adds into views of the real and imaginary parts (CuPy) against ``np.add.at``
    (the twin): overlapping windows, single and double accumulators."""
    _, corner, windows = random_windows(seed=1)
    if not np.iscomplexobj(np.zeros(1, dtype)):
        windows = np.ascontiguousarray(windows.real)
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    host = np.zeros((50, 47), dtype)
    primitives.scatter_windows(np, host, windows, corner)
    device = cp.zeros((50, 47), dtype)
    primitives.scatter_windows(cp, device, cp.asarray(windows), cp.asarray(corner))
    # Atomic adds land in any order: float32 sums differ by rounding, float64 by less.
    rtol = 1e-6 if dtype in (np.complex64, np.float32) else 1e-13
    np.testing.assert_allclose(to_host(device), host, rtol=rtol, atol=1e-5)


def test_ffts_match_the_cpu_ffts(cp):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((7, 2, 64, 64)) + 1j * rng.standard_normal((7, 2, 64, 64))).astype(
        np.complex64
    )
    for transform in (primitives.fft2, primitives.ifft2):
        gpu = transform(cp.asarray(x))
        assert gpu.dtype == np.complex64
        assert rel(gpu, transform(x)) < 1e-6


@pytest.mark.parametrize("modes", [1, 3])
def test_fused_mode_passes_match_the_numpy_twins(cp, monkeypatch, modes):
    """``mode_intensity``, ``line_terms`` and ``update_farfield``: the kernels round each
    float32 operation where NumPy does (no FMA contraction), so they agree to 1 ulp."""
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    psi, far, _ = far_fields(modes=modes)
    gpu_psi, gpu_far = cp.asarray(psi), cp.asarray(far)
    np.testing.assert_allclose(
        to_host(primitives.mode_intensity(cp, gpu_psi)),
        primitives.mode_intensity(np, psi),
        rtol=2e-7,
    )
    for gpu, host in zip(
        primitives.line_terms(cp, gpu_psi, gpu_far),
        primitives.line_terms(np, psi, far),
        strict=True,
    ):
        np.testing.assert_allclose(to_host(gpu), host, rtol=2e-7, atol=1e-12)
    gpu_out = primitives.update_farfield(cp, gpu_psi, gpu_far, 0.375)
    host_out = primitives.update_farfield(np, psi, far, 0.375)
    np.testing.assert_allclose(to_host(gpu_psi), psi, rtol=2e-7, atol=1e-12)
    np.testing.assert_allclose(to_host(gpu_out), host_out, rtol=2e-7, atol=1e-12)


def test_conjugate_and_ramp_products_match_the_numpy_twins(cp, monkeypatch):
    """``multiply_conj``, ``add_scaled`` and ``apply_ramp`` (the Fourier shift's ramps, never
    stored whole): complex64 products rounded per operation as NumPy's, to a few ulp."""
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    psi, far, _ = far_fields(modes=2)
    for b in (far[:, :1], far[:1]):
        host = primitives.multiply_conj(np, psi.copy(), b)
        gpu = primitives.multiply_conj(cp, cp.asarray(psi), cp.asarray(b))
        np.testing.assert_allclose(to_host(gpu), host, rtol=1e-6, atol=1e-6 * np.abs(host).max())
    host = primitives.add_scaled(np, psi.copy(), far, 0.375)
    gpu = primitives.add_scaled(cp, cp.asarray(psi), cp.asarray(far), 0.375)
    np.testing.assert_allclose(to_host(gpu), host, rtol=1e-6, atol=1e-6 * np.abs(host).max())
    rng = np.random.default_rng(4)
    rows = np.exp(1j * rng.uniform(-3, 3, (9, 1, 16, 1))).astype(np.complex64)
    cols = np.exp(1j * rng.uniform(-3, 3, (9, 1, 1, 12))).astype(np.complex64)
    for spectrum in (psi, psi[:1]):
        for conj in (False, True):
            host = primitives.apply_ramp(np, spectrum, rows, cols, conj)
            gpu = primitives.apply_ramp(
                cp, cp.asarray(spectrum), cp.asarray(rows), cp.asarray(cols), conj
            )
            scale = np.abs(host).max()
            np.testing.assert_allclose(to_host(gpu), host, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize(("kind", "floor", "masked"), COST_CASES, ids=COST_IDS)
def test_fused_cost_passes_match_the_numpy_twins(cp, monkeypatch, kind, floor, masked):
    """``gradient_farfield`` (elementwise: to a few ulp, ``sqrtf`` and division are correctly
    rounded) and ``trial_costs`` (``logf``/``atanf`` within 2 ulp of NumPy's, summed in
    float64 in another order: relative to the sum of the terms' magnitudes, 1e-6)."""
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    psi, far, counts = far_fields()
    cost = cost_for(kind, floor, masked, counts)
    gpu_cost = cost_for(kind, floor, masked, cp.asarray(counts))
    assert gpu_cost.tau == pytest.approx(cost.tau, rel=1e-12)
    intensity = plain_intensity(psi)
    gpu_intensity = cp.asarray(intensity)
    host = primitives.gradient_farfield(np, primitives.cost_terms(cost), intensity, psi)
    gpu = primitives.gradient_farfield(
        cp, primitives.cost_terms(gpu_cost), gpu_intensity, cp.asarray(psi)
    )
    assert gpu.dtype == np.complex64
    np.testing.assert_allclose(to_host(gpu), host, rtol=1e-6, atol=1e-6 * np.abs(host).max())
    cross, far2 = primitives.line_terms(np, psi, far)
    cross[:, 7] -= 20  # clipped trials (fused_cases)
    host_costs = primitives.trial_costs(
        np, primitives.cost_terms(cost), intensity, cross, far2, STEPS
    )
    gpu_costs = primitives.trial_costs(
        cp,
        primitives.cost_terms(gpu_cost),
        gpu_intensity,
        cp.asarray(cross),
        cp.asarray(far2),
        STEPS,
    )
    assert gpu_costs.dtype == np.float64 and gpu_costs.shape == (len(STEPS),)
    scale = np.abs(host_costs).max()
    np.testing.assert_allclose(to_host(gpu_costs), host_costs, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("modes", [1, 2])
@pytest.mark.parametrize(("kind", "floor", "masked"), COST_CASES, ids=COST_IDS)
def test_farfield_trial_costs_and_cost_value_match_the_numpy_twins(
    cp, monkeypatch, kind, floor, masked, modes
):
    """The trial-cost kernel that forms the line terms from the far fields (and takes
    ``sqrt(d)`` of the counts itself), and the one-pass cost value, against the twins: to
    the tolerance of ``trial_costs`` above."""
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    psi, far, counts = far_fields(modes=modes)
    far[:, :, 7] *= 30  # clipped trials
    cost = cost_for(kind, floor, masked, counts)
    gpu_cost = cost_for(kind, floor, masked, cp.asarray(counts))
    intensity = plain_intensity(psi)
    terms, gpu_terms = primitives.cost_terms(cost), primitives.cost_terms(gpu_cost)
    host = primitives.farfield_trial_costs(np, terms, intensity, psi, far, STEPS)
    gpu = primitives.farfield_trial_costs(
        cp, gpu_terms, cp.asarray(intensity), cp.asarray(psi), cp.asarray(far), STEPS
    )
    scale = np.abs(host).max()
    np.testing.assert_allclose(to_host(gpu), host, rtol=1e-6, atol=1e-6 * scale)
    value = primitives.cost_value(np, cost, intensity)
    gpu_value = primitives.cost_value(cp, gpu_cost, cp.asarray(intensity))
    assert gpu_value == pytest.approx(value, rel=1e-6, abs=1e-6 * abs(value))


@pytest.mark.parametrize("inverse", [False, True])
def test_in_place_ffts_and_mode_sums_match_numpy(cp, inverse):
    """cuFFT in place (``cupyx.scipy.fft`` with ``overwrite_x``) shares the input's memory
    and gives the out-of-place numbers to float32 rounding; ``sum_modes`` in place is the
    mode sum."""
    psi, _, _ = far_fields(modes=3)
    transform = primitives.ifft2 if inverse else primitives.fft2
    work = cp.asarray(psi)
    pointer = work.data.ptr
    out = transform(work, overwrite=True)
    assert out.data.ptr == pointer
    expected = transform(psi)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(to_host(out), expected, rtol=1e-5, atol=1e-6 * scale)
    summed = primitives.sum_modes(cp, cp.asarray(psi))
    np.testing.assert_array_equal(to_host(summed), psi.sum(axis=1))


# -- 2. step by step -----------------------------------------------------------------------


def test_every_step_agrees_with_numpy(cp, fourier_view):
    assert compare_stepwise(stepwise(fourier_view, np), stepwise(fourier_view, cp)) == []


def test_every_step_agrees_with_the_gpu_path_on_numpy(cp, fourier_view, monkeypatch):
    monkeypatch.setenv(primitives.GPU_PATH_ON_CPU, "1")
    assert compare_stepwise(stepwise(fourier_view, np), stepwise(fourier_view, cp)) == []


def test_unfused_fallback_steps_like_the_kernels(cp, fourier_view, monkeypatch):
    """``PTYCHOFLOW_FUSED_KERNELS=0`` (the twins' code on CuPy arrays) against the kernels,
    and the streamed line search (4 chunks) against one chunk, step by step."""
    kernels = stepwise(fourier_view, cp)
    monkeypatch.setenv(primitives.FUSED_KERNELS_ENV, "0")
    assert compare_stepwise(kernels, stepwise(fourier_view, cp)) == []
    monkeypatch.delenv(primitives.FUSED_KERNELS_ENV)
    monkeypatch.setenv("PTYCHOFLOW_GPU_CHUNKS", "4")
    assert compare_stepwise(kernels, stepwise(fourier_view, cp)) == []


def test_two_partitions_sharing_one_gpu_step_like_two_numpy_partitions(cp, fourier_view):
    """The PtyGer hybrid (gather-scatter of the direction, all-reduce of the line search)
    runs on one GPU when partitions share it."""
    numpy = stepwise(fourier_view, np, devices=(0, 1))
    shared = stepwise(fourier_view, cp, devices=(0, 0))
    assert compare_stepwise(numpy, shared) == []


# -- 3. whole runs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def view(cp):
    return simulate_view(detector=64, n_positions=156, photons=1e6, seed=3)


def _view_ssim(result, view) -> float:
    truth = view.true_object
    h, w = truth.shape
    region = illuminated_region(view.scan.positions, view.true_probe, truth.shape)
    return compare_objects(result.object[:h, :w], truth, region)["phase_ssim"]


#: Whole-run agreement after 30 iterations, in what a user would notice: phase SSIM
#: against the truth and the final cost. Measured between FFTW and pocketfft on the CPU
#: (two correct float32 FFTs, the same code), 30 iterations: SSIM 0.010 apart on this
#: view, 0.007 with two modes and 0.056 with positions refined; final costs 11 %, 0.7 %
#: and 30 % apart; the two-mode power split 0.006; and after 100 iterations on this view
#: SSIM 4e-4 and cost 8e-4 apart. The tolerances are about twice those: 30 iterations of
#: nonlinear CG from a rough start are not a converged answer, and rounding steers them.
SSIM_TOLERANCE = 0.1
COST_RTOL = 0.4
CONVERGED_SSIM_TOLERANCE = 0.01
CONVERGED_COST_RTOL = 0.01


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_whole_run_matches_numpy_in_fidelity(cp, view, devices):
    """30 iterations, default options, 1, 2 and 4 partitions (sharing one GPU when the
    node has fewer)."""
    ids = [d % cp.cuda.runtime.getDeviceCount() for d in range(devices)]
    options = ReconOptions(iterations=30, devices=devices)
    cpu = reconstruct(view.scan, options.replace(backend="numpy"))
    gpu = reconstruct(view.scan, options.replace(backend="cupy"), device_ids=ids)
    assert gpu.backend == "cupy" and gpu.devices == ids
    assert gpu.device_names and all(gpu.device_names)
    assert abs(_view_ssim(gpu, view) - _view_ssim(cpu, view)) <= SSIM_TOLERANCE
    assert abs(gpu.cost[-1] / cpu.cost[-1] - 1) <= COST_RTOL


def test_converged_run_matches_numpy(cp, view):
    """100 iterations: the runs have converged, and agree closely in what a user sees."""
    options = ReconOptions(iterations=100)
    cpu = reconstruct(view.scan, options.replace(backend="numpy"))
    gpu = reconstruct(view.scan, options.replace(backend="cupy"))
    assert abs(_view_ssim(gpu, view) - _view_ssim(cpu, view)) <= CONVERGED_SSIM_TOLERANCE
    assert abs(gpu.cost[-1] / cpu.cost[-1] - 1) <= CONVERGED_COST_RTOL


@pytest.fixture(scope="module")
def true_probe_view(cp):
    simulation = simulate_scan(
        detector=64, n_positions=120, seed=5, mode_powers=(0.8, 0.2), position_error_px=1.0
    )
    return simulation, dataclasses.replace(simulation.to_scan(), probe=simulation.true_probe[0])


@pytest.mark.parametrize(
    "changes",
    [
        {"probe_modes": 2},
        {"refine_positions": True},
        {"refine_positions": True, "position_search": 4},  # one search pass, at 17
    ],
    ids=["two-modes", "positions", "position-search"],
)
def test_whole_run_with_modes_or_positions_matches_numpy(cp, true_probe_view, changes):
    simulation, scan = true_probe_view
    options = ReconOptions(iterations=30, **changes)
    cpu = reconstruct(scan, options.replace(backend="numpy"))
    gpu = reconstruct(scan, options.replace(backend="cupy"))
    assert abs(phase_ssim(gpu, simulation) - phase_ssim(cpu, simulation)) <= SSIM_TOLERANCE
    assert abs(gpu.cost[-1] / cpu.cost[-1] - 1) <= COST_RTOL
    if changes.get("probe_modes"):
        np.testing.assert_allclose(gpu.mode_power_fractions, cpu.mode_power_fractions, atol=0.05)
    if changes.get("refine_positions"):
        assert np.abs(gpu.refined_positions - cpu.refined_positions).max() <= 1.0
