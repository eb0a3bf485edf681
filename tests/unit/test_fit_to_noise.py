"""How far a fit is from the shot noise (``ReconResult.fit_to_noise``): the final Poisson
cost over the cost that Poisson noise alone leaves at the final model. Checked against
Monte Carlo counts, and on the independent simulator: about 1 where the model is right,
several where the positions are wrong."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recon.cost import PoissonCost, poisson_noise_terms
from recon.options import ReconOptions
from recon.ptycho import reconstruct
from recon.simulate_fourier import simulate_scan


@pytest.mark.parametrize("mean", [0.01, 0.3, 1.0, 3.0, 19.9, 20.1, 200.0])
def test_the_noise_terms_are_what_poisson_counts_cost(mean):
    """Counts drawn with the model's mean cost, on average, what the table says (the
    exact sum below 20 counts, the asymptotic series above)."""
    intensity = np.full(1_000_000, mean, np.float32)
    counts = np.random.default_rng(7).poisson(intensity).astype(np.float32)
    drawn = PoissonCost(counts).value(intensity) / intensity.size
    expected = float(poisson_noise_terms(intensity[:1])[0])
    # the sample mean's standard error is below 1e-3 at a million pixels
    assert drawn == pytest.approx(expected, abs=2e-3)


def test_no_counts_cost_nothing():
    assert poisson_noise_terms(np.zeros(3, np.float32)).tolist() == [0.0, 0.0, 0.0]


def _scan(position_error_px: float):
    simulation = simulate_scan(
        detector=64, n_positions=120, seed=1, photons=1e5, position_error_px=position_error_px
    )
    return dataclasses.replace(simulation.to_scan(), probe=simulation.true_probe[0])


def test_a_right_model_fits_to_the_noise_and_wrong_positions_do_not():
    """True probe, Poisson counts of 1e5 photons per pattern, 30 iterations: measured 0.92
    (a little below 1: the object's pixels also fit some of the noise). The same scan
    with its positions 1.5 px RMS off and not refined: 2.8."""
    options = ReconOptions(iterations=30, backend="numpy")
    right = reconstruct(_scan(0.0), options)
    wrong = reconstruct(_scan(1.5), options)
    assert 0.8 <= right.fit_to_noise <= 1.1, right.fit_to_noise
    assert wrong.fit_to_noise >= 2.0, wrong.fit_to_noise


def test_the_gaussian_cost_has_no_noise_ratio():
    result = reconstruct(_scan(0.0), ReconOptions(iterations=2, cost="gaussian"))
    assert result.fit_to_noise is None


def test_the_result_file_and_the_summary_record_it(tmp_path):
    from recon.api import reconstruct_file
    from recon.result import read_result
    from recon.simulate import write_simulated_scan

    views = write_simulated_scan(tmp_path / "v", n_views=1, n_positions=36, detector=32)
    summary = reconstruct_file(
        views[0], tmp_path / "out.h5", ReconOptions(iterations=4, backend="numpy")
    )
    assert summary["fit_to_noise"] > 0
    assert read_result(summary["output"])["fit_to_noise"] == pytest.approx(summary["fit_to_noise"])
