"""The multi-resolution start (``coarse_levels``): the half-resolution view and the
band-limited resampling that carries its object and probe to the full view."""

import dataclasses

import numpy as np
import pytest

from recon.errors import OptionsError
from recon.options import ReconOptions
from recon.ptycho import (
    COARSE_MIN_CENTRAL_FRACTION,
    _fourier_resample,
    central_fraction,
    coarse_levels_for,
    coarse_scan,
    reconstruct,
)
from recon.simulate_fourier import simulate_scan


def test_fourier_resample_keeps_samples_of_a_band_limited_image():
    rows, cols = np.indices((16, 16))
    image = np.exp(2j * np.pi * (2 * rows + 3 * cols) / 16)  # well inside the band
    fine = _fourier_resample(image, (32, 32))
    # Sample (2r, 2c) of the upsampled image is sample (r, c) of the original.
    np.testing.assert_allclose(fine[::2, ::2], image, atol=1e-12)
    np.testing.assert_allclose(_fourier_resample(fine, (16, 16)), image, atol=1e-12)
    np.testing.assert_allclose(_fourier_resample(np.ones((8, 8)), (16, 16)), 1, atol=1e-12)


def test_coarse_scan_keeps_the_low_frequencies_and_halves_the_positions():
    simulation = simulate_scan(detector=32, n_positions=20, seed=0)
    scan = simulation.to_scan()
    coarse = coarse_scan(scan)
    assert coarse.detector_shape == (16, 16)
    # The zero frequency stays at the centre: the central half of every pattern.
    np.testing.assert_array_equal(coarse.data, scan.data[:, 8:24, 8:24])
    np.testing.assert_allclose(coarse.positions, scan.positions / 2, rtol=1e-6)
    assert coarse.probe.shape == (16, 16)
    assert coarse.pixel_size == pytest.approx(2 * scan.pixel_size)


def test_coarse_start_runs_and_reports_the_full_views_positions():
    simulation = simulate_scan(detector=32, n_positions=40, seed=1, position_error_px=0.5)
    scan = simulation.to_scan()
    options = ReconOptions(iterations=6, refine_positions=True, backend="numpy", coarse_levels=1)
    result = reconstruct(scan, options)
    flat = reconstruct(scan, options.replace(coarse_levels=0))
    # Same grid origin; it may extend further where the coarse level moved positions out.
    assert result.object.shape[0] >= flat.object.shape[0] - 1
    assert result.object.shape[1] >= flat.object.shape[1] - 1
    assert len(result.cost) == 7  # the fine level's iterations only
    np.testing.assert_array_equal(result.positions, scan.positions)
    assert result.refined_positions.shape == scan.positions.shape
    assert result.position_affine.shape == (2, 3)  # the stage's fitted global map
    assert np.all(np.isfinite(result.object))


def test_coarse_levels_must_be_a_count():
    with pytest.raises(OptionsError, match="coarse_levels"):
        ReconOptions(coarse_levels=-1)
    assert ReconOptions().coarse_levels is None  # chosen from the data


def test_default_uses_one_level_unless_the_beam_fills_the_detector():
    scan = simulate_scan(detector=32, n_positions=20, seed=0).to_scan()
    options = ReconOptions()
    # A focused beam: most counts in the central half (the simulated cases: 0.77-0.97).
    assert central_fraction(scan) > 0.9
    assert coarse_levels_for(scan, options) == 1
    # Light spread evenly over the detector: the central half holds a quarter of it.
    flat = dataclasses.replace(scan, data=np.ones_like(scan.data))
    assert central_fraction(flat) == pytest.approx(0.25)
    assert coarse_levels_for(flat, options) == 0
    # The same light, but the pixels outside the central half masked: all of it kept.
    mask = np.zeros(scan.detector_shape, dtype=bool)
    mask[8:24, 8:24] = True
    assert central_fraction(dataclasses.replace(flat, mask=mask)) == pytest.approx(1.0)
    # Just above and below the threshold.
    edge = np.ones_like(scan.data)
    inner = COARSE_MIN_CENTRAL_FRACTION / (1 - COARSE_MIN_CENTRAL_FRACTION) * 3  # x outer/inner px
    edge[:, 8:24, 8:24] = inner * 1.01
    assert coarse_levels_for(dataclasses.replace(scan, data=edge), options) == 1
    edge[:, 8:24, 8:24] = inner * 0.99
    assert coarse_levels_for(dataclasses.replace(scan, data=edge), options) == 0
    # An explicit count wins; patterns under 32 px are not binned by default.
    assert coarse_levels_for(flat, options.replace(coarse_levels=2)) == 2
    assert coarse_levels_for(scan, options.replace(coarse_levels=0)) == 0
    small = simulate_scan(detector=16, n_positions=10, seed=0).to_scan()
    assert coarse_levels_for(small, options) == 0
