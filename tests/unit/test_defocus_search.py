"""The probe's defocus search at the start of sparse scans (``defocus_search``)."""

import numpy as np
import pytest

from recon.errors import OptionsError
from recon.options import ReconOptions
from recon.ptycho import (
    SPARSE_STEP_FRACTION,
    defocused_probe,
    median_step,
    pupil_radius,
    searches_defocus,
)
from recon.simulate_fourier import simulate_scan
from recon.simulate_hard import HARD_CASES, simulate_hard_scan


def test_median_step_of_a_grid():
    rows, cols = np.meshgrid(np.arange(5) * 3.0, np.arange(4) * 3.0, indexing="ij")
    positions = np.stack([rows.ravel(), cols.ravel()], axis=1)
    assert median_step(positions) == pytest.approx(3.0)
    assert median_step(positions[:1]) == 0.0


def test_on_for_sparse_scans_only_unless_asked():
    sparse = simulate_hard_scan(detector=32, n_positions=40, **HARD_CASES["sparse overlap"])
    dense = simulate_scan(detector=32, n_positions=40, seed=0)
    sparse_scan, dense_scan = sparse.to_scan(), dense.to_scan()
    assert median_step(sparse_scan.positions) >= SPARSE_STEP_FRACTION * 32
    assert median_step(dense_scan.positions) < SPARSE_STEP_FRACTION * 32
    assert searches_defocus(ReconOptions(), sparse_scan)
    assert not searches_defocus(ReconOptions(), dense_scan)
    assert searches_defocus(ReconOptions(defocus_search=True), dense_scan)
    assert not searches_defocus(ReconOptions(defocus_search=False), sparse_scan)
    assert not searches_defocus(ReconOptions(refine_probe=False), sparse_scan)
    with pytest.raises(OptionsError, match="defocus_search"):
        ReconOptions(defocus_search="yes")


def test_defocus_keeps_the_far_field_and_spreads_the_beam_to_the_spot():
    n = 64
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    pupil = (q <= 0.15).astype(np.complex128)  # a focused beam: flat-phase pupil
    focused = np.fft.fftshift(np.fft.ifft2(pupil))
    spread = defocused_probe(focused, 16.0, 0.15)
    far = np.abs(np.fft.fft2(np.fft.ifftshift(spread)))
    np.testing.assert_allclose(far, np.abs(pupil), atol=1e-5)
    # The geometric spot is a disc 16 px wide (plus diffraction at its rim); the focused
    # beam holds 84 % of its power within 4 px.
    rows, cols = np.indices((n, n)) - n // 2
    radius = np.hypot(rows, cols)
    power = np.abs(spread) ** 2
    within = power[radius <= 10].sum() / power.sum()
    assert within > 0.85
    assert power[radius <= 4].sum() / power.sum() < 0.5  # not the focused spot any more
    np.testing.assert_allclose(defocused_probe(focused, 0.0, 0.15), focused, atol=1e-6)


def test_pupil_radius_from_the_mean_pattern():
    scan = simulate_hard_scan(detector=64, n_positions=40, **HARD_CASES["sparse overlap"]).to_scan()
    assert pupil_radius(scan) == pytest.approx(0.15, abs=0.01)  # the simulator's pupil
