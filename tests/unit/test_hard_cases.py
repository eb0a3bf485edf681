"""Fidelity on the hard scans of issue 18 (``recon.simulate_hard``): one slow test per
kind, each with a floor below the score measured with the default options."""

import numpy as np
import pytest

from recon.metrics import compare_objects, illuminated_region
from recon.options import ReconOptions
from recon.ptycho import reconstruct
from recon.simulate_hard import HARD_CASES, StageAffine, simulate_hard_scan


def _phase_ssim(result, simulation):
    truth = simulation.true_object
    amplitude = np.sqrt(np.sum(np.abs(simulation.true_probe) ** 2, axis=0))
    region = illuminated_region(simulation.true_positions, amplitude, truth.shape)
    h, w = truth.shape
    return compare_objects(result.object[:h, :w], truth, region)["phase_ssim"]


def test_affine_stage_error_moves_the_true_positions():
    plain = simulate_hard_scan(detector=32, n_positions=30, seed=0)
    np.testing.assert_array_equal(plain.true_positions, plain.reported_positions)
    turned = simulate_hard_scan(
        detector=32, n_positions=30, seed=0, affine=StageAffine(rotation_deg=90.0)
    )
    centre = turned.reported_positions.mean(axis=0)
    offset = turned.reported_positions - centre
    expected = centre + np.stack([-offset[:, 1], offset[:, 0]], axis=1)
    np.testing.assert_allclose(turned.true_positions, expected, atol=1e-9)
    with pytest.raises(ValueError, match="overlap"):
        simulate_hard_scan(detector=32, n_positions=10, overlap=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_strong_phase_star_with_the_coarse_start(seed):
    """A 2.5 pi star (the phase wraps): measured 0.999 / 0.998 with the default one-level
    coarse start, 0.58 / 0.41 without it (60 iterations)."""
    simulation = simulate_hard_scan(seed=seed, **HARD_CASES["strong phase 2.5pi"])
    result = reconstruct(
        simulation.to_scan(), ReconOptions(iterations=60, backend="numpy", coarse_levels=1)
    )
    assert _phase_ssim(result, simulation) >= 0.98, _phase_ssim(result, simulation)
