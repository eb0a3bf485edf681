"""Stopping on held-out patterns: the choice of patterns, a judge that uses the solver's
own model and cost, and early stopping that keeps the best iterate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recon.errors import InputError, OptionsError
from recon.holdout import HeldOutCost, choose_holdout, reconstruct_with_holdout
from recon.options import ReconOptions
from recon.ptycho import object_shape_for, reconstruct
from recon.simulate import simulate_view


@pytest.fixture(scope="module")
def noisy_view():
    # Few photons per pattern: a long fit follows the noise.
    return simulate_view(detector=32, n_positions=100, photons=2e3, seed=4)


def test_choose_holdout_is_interior_deterministic_and_sized():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 100, size=(400, 2))
    held = choose_holdout(positions, 0.05)
    assert len(held) == 20 and np.all(np.diff(held) > 0)
    np.testing.assert_array_equal(held, choose_holdout(positions, 0.05))
    chosen = positions[held]
    low, high = positions.min(0), positions.max(0)
    assert np.all(chosen > low + 0.05 * (high - low)) and np.all(
        chosen < high - 0.05 * (high - low)
    )
    assert len(choose_holdout(positions[:10], 0.01)) == 1
    with pytest.raises(InputError, match="cannot hold out"):
        choose_holdout(positions[:3], 0.5)


def test_options_validate_the_holdout_settings():
    assert ReconOptions(holdout_fraction=0.05, holdout_patience=3).holdout_fraction == 0.05
    for bad in (-0.1, 0.6, "a lot", True):
        with pytest.raises(OptionsError, match="holdout_fraction"):
            ReconOptions(holdout_fraction=bad)
    with pytest.raises(OptionsError, match="holdout_patience"):
        ReconOptions(holdout_patience=0)
    assert (
        ReconOptions.from_json(ReconOptions(holdout_fraction=0.1).to_json()).holdout_fraction == 0.1
    )


def test_the_judge_is_the_solver_s_own_cost(noisy_view):
    """Evaluated on every pattern at the solver's result, the held-out cost equals the
    cost the solver reports: same patch model, far field and noise model."""
    scan = noisy_view.scan
    for kind in ("poisson", "gaussian"):
        options = ReconOptions(iterations=3, backend="numpy", cost=kind)
        result = reconstruct(scan, options)
        judge = HeldOutCost(
            scan.data,
            scan.positions,
            object_shape_for(scan.positions, scan.detector_shape),
            options,
        )
        assert judge(result.object, result.probe) == pytest.approx(result.cost[-1], rel=1e-4)


def test_stops_on_held_out_patterns_and_keeps_the_best_iterate(noisy_view):
    scan = noisy_view.scan
    # A schedule that does not depend on the iteration count (no staged start, no
    # low-dose penalty from half way), so a shorter run reproduces the best iterate exactly.
    options = ReconOptions(
        object_tv=0,
        iterations=150,
        backend="numpy",
        holdout_fraction=0.1,
        holdout_patience=5,
        probe_warmup=0,
        amplitude_start=0,
        coarse_levels=0,
    )
    seen = []

    def progress(iteration, cost, seconds):
        seen.append(iteration)

    result, report = reconstruct_with_holdout(scan, options, progress=progress)
    assert len(report.indices) == 10
    # It stopped early, `patience` iterations after the best held-out cost.
    assert report.iterations_run < 150
    assert report.iterations_run == report.best_iteration + 5 == seen[-1]
    assert len(report.cost) == report.iterations_run + 1
    assert int(np.argmin(report.cost)) == report.best_iteration
    assert report.cost[report.best_iteration] < report.cost[0]
    # The returned object is the best iterate, on the full scan's grid and positions.
    np.testing.assert_array_equal(result.positions, scan.positions)
    fitted = np.setdiff1d(np.arange(scan.n_positions), report.indices)
    short = reconstruct(
        dataclasses.replace(scan, data=scan.data[fitted], positions=scan.positions[fitted]),
        options.replace(iterations=report.best_iteration, holdout_fraction=0.0),
    )
    np.testing.assert_allclose(result.object, short.object, rtol=0, atol=1e-5)
    # the last iterate's fit to the noise does not describe the iterate kept
    assert result.fit_to_noise is None and short.fit_to_noise is not None


def test_reconstruct_file_records_the_holdout(tmp_path):
    from recon.api import reconstruct_file
    from recon.result import read_result
    from recon.simulate import write_simulated_scan

    path = write_simulated_scan(
        tmp_path / "scan1", n_views=1, n_positions=64, detector=32, photons=1e3
    )[0]
    summary = reconstruct_file(
        path,
        tmp_path / "out.h5",
        ReconOptions(iterations=80, backend="numpy", holdout_fraction=0.1, holdout_patience=4),
    )
    written = read_result(summary["output"])
    holdout = written["holdout"]
    assert summary["holdout"]["best_iteration"] == holdout["best_iteration"]
    assert written["iterations"] == summary["iterations"] == holdout["iterations_run"]
    assert len(written["cost"]) == written["iterations"] + 1
    assert holdout["patterns"] == 6 and len(holdout["cost"]) == holdout["iterations_run"] + 1


def test_the_staged_start_is_not_judged(noisy_view):
    """With the default staged start (probe warm-up, then the amplitude cost for 80 % of
    the iterations) the held-out Poisson cost can rise before the Poisson fit begins; the
    stop and the kept iterate come from after the staged start."""
    from recon.ptycho import staged_start_end

    options = ReconOptions(iterations=60, backend="numpy", holdout_fraction=0.1, holdout_patience=3)
    staged = staged_start_end(options)
    assert staged == 48
    _, report = reconstruct_with_holdout(noisy_view.scan, options)
    assert report.best_iteration > staged
    assert report.iterations_run >= staged + options.holdout_patience
    assert report.cost[report.best_iteration] == report.cost[staged + 1 :].min()
