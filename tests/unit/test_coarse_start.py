"""The multi-resolution start (``coarse_levels``): the half-resolution view and the
band-limited resampling that carries its object and probe to the full view."""

import numpy as np
import pytest

from recon.errors import OptionsError
from recon.options import ReconOptions
from recon.ptycho import _fourier_resample, coarse_scan, reconstruct
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
    assert ReconOptions().coarse_levels == 0
