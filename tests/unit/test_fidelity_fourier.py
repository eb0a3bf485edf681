"""The solver on scans it did not make: the independent Fourier-shift simulator.

Band-limited sub-pixel positions, a defocused tilted probe, a flat-phase Gaussian guess
of the wrong width, a second incoherent mode, position errors (``recon.simulate_fourier``).
"""

import dataclasses

import numpy as np
import pytest

from recon.metrics import compare_objects, illuminated_region
from recon.options import ReconOptions
from recon.ptycho import reconstruct
from recon.simulate_fourier import simulate_scan


def _phase_ssim(result, simulation):
    truth = simulation.true_object
    region = illuminated_region(simulation.true_positions, simulation.true_probe[0], truth.shape)
    h, w = truth.shape
    return compare_objects(result.object[:h, :w], truth, region)["phase_ssim"]


def _position_rms(positions, truth):
    """RMS distance to the truth after removing the mean offset (a global shift of the
    object is not an error), pixels."""
    error = np.asarray(positions, np.float64) - truth
    error -= error.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(error**2, axis=1))))


@pytest.fixture(scope="module")
def star():
    return simulate_scan(detector=64, n_positions=120, seed=1)


def test_fourier_model_beats_bilinear_with_the_true_probe(star):
    scan = dataclasses.replace(star.to_scan(), probe=star.true_probe[0])
    options = ReconOptions(iterations=60, refine_probe=False, backend="numpy")
    fourier = reconstruct(scan, options)
    bilinear = reconstruct(scan, options.replace(patch_model="bilinear"))
    assert _phase_ssim(fourier, star) >= 0.97, _phase_ssim(fourier, star)
    assert fourier.cost[-1] < 0.5 * bilinear.cost[-1]


@pytest.mark.slow
def test_gaussian_guess_of_the_wrong_width_reconstructs_a_defocused_beam(star):
    scan = star.to_scan()  # the file's probe: a flat-phase Gaussian, 0.55 x the true width
    result = reconstruct(scan, ReconOptions(iterations=100, backend="numpy"))
    assert _phase_ssim(result, star) >= 0.99


def test_positions_off_by_a_pixel_are_recovered():
    simulation = simulate_scan(detector=64, n_positions=100, seed=2, position_error_px=1.0)
    scan = dataclasses.replace(simulation.to_scan(), probe=simulation.true_probe[0])
    before = _position_rms(scan.positions, simulation.true_positions)
    result = reconstruct(
        scan,
        ReconOptions(
            iterations=100,
            refine_probe=False,
            refine_positions=True,
            position_start=5,
            backend="numpy",
        ),
    )
    after = _position_rms(result.refined_positions, simulation.true_positions)
    assert before == pytest.approx(1.0, rel=0.05)
    assert after <= 0.3, (before, after)
    np.testing.assert_array_equal(result.positions, scan.positions)  # reported ones kept
    # The drift constraint: the mean correction is zero.
    mean_move = np.mean(result.refined_positions - scan.positions, axis=0)
    assert np.all(np.abs(mean_move) < 1e-3)


@pytest.mark.slow
def test_positions_off_by_a_pixel_with_a_gaussian_guess():
    """Positions and probe together: 1 px RMS errors, the file's Gaussian guess, the
    default schedule (measured: phase SSIM 0.9991, 0.13 px RMS left)."""
    simulation = simulate_scan(detector=64, n_positions=120, seed=1, position_error_px=1.0)
    result = reconstruct(
        simulation.to_scan(),
        ReconOptions(iterations=100, refine_positions=True, backend="numpy"),
    )
    assert _phase_ssim(result, simulation) >= 0.985, _phase_ssim(result, simulation)
    after = _position_rms(result.refined_positions, simulation.true_positions)
    assert after <= 0.25, after


@pytest.mark.slow
def test_two_modes_find_the_beams_power_split():
    simulation = simulate_scan(detector=64, n_positions=120, seed=1, mode_powers=(0.8, 0.2))
    scan = simulation.to_scan()
    result = reconstruct(scan, ReconOptions(iterations=100, probe_modes=2, backend="numpy"))
    assert result.probe.shape == (2, 64, 64)
    fractions = result.mode_power_fractions
    assert fractions[0] > fractions[1]
    assert fractions[1] == pytest.approx(0.2, abs=0.03)  # the true split is 80 / 20
    # Measured 0.9992, split 0.80 / 0.20 (the extra modes enter at half the iterations).
    assert _phase_ssim(result, simulation) >= 0.97, _phase_ssim(result, simulation)
    overlap = abs(np.vdot(result.probe[0], result.probe[1]))
    assert overlap <= 1e-4 * np.linalg.norm(result.probe[0]) * np.linalg.norm(result.probe[1])
    single = reconstruct(scan, ReconOptions(iterations=100, backend="numpy"))
    assert result.cost[-1] < 0.5 * single.cost[-1]
