"""The object's total-variation penalty (``recon.regularise``) and its low-dose default."""

import numpy as np
import pytest

from recon.errors import OptionsError
from recon.options import ReconOptions
from recon.ptycho import LOW_DOSE_COUNTS, LOW_DOSE_OBJECT_TV, object_tv_weight, reconstruct
from recon.regularise import TV_EPSILON, tv_gradient, tv_value, tv_weight
from recon.simulate import simulate_view


def test_gradient_is_the_directional_derivative():
    rng = np.random.default_rng(0)
    shape = (20, 30)
    obj = 1 + 0.3 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    direction = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    h = 1e-6
    numeric = (tv_value(obj + h * direction, 2.0) - tv_value(obj - h * direction, 2.0)) / (2 * h)
    grad = tv_gradient(obj, 2.0)
    analytic = 2 * np.sum(grad.real * direction.real + grad.imag * direction.imag)
    assert analytic == pytest.approx(numeric, rel=1e-6)


def test_value_is_zero_on_a_flat_object_and_grows_with_an_edge():
    flat = np.full((8, 8), 0.5 + 0.5j)
    assert tv_value(flat, 3.0) == 0.0
    np.testing.assert_allclose(tv_gradient(flat, 3.0), 0.0)
    step = flat.copy()
    step[:, 4:] *= np.exp(1j)
    jump = abs(step[0, 4] - step[0, 3])
    # One column of 8 differences of size `jump`, each sqrt(jump^2 + eps^2) - eps.
    expected = 3.0 * 8 * (np.hypot(jump, TV_EPSILON) - TV_EPSILON)
    assert tv_value(step, 3.0) == pytest.approx(expected)


def test_weight_scales_with_the_square_root_of_the_illumination():
    illumination = np.zeros((10, 10))
    illumination[2:8, 2:8] = 400.0
    illumination[0, 0] = 1.0  # below LIT_FRACTION of the peak: not counted
    assert tv_weight(0.1, illumination) == pytest.approx(0.1 * 20.0)
    assert tv_weight(0.0, illumination) == 0.0
    assert tv_weight(0.1, 4 * illumination) == pytest.approx(2 * tv_weight(0.1, illumination))


def test_the_default_is_on_only_at_low_counts():
    low = simulate_view(detector=32, n_positions=36, photons=1e3, seed=0).scan
    high = simulate_view(detector=32, n_positions=36, photons=1e6, seed=0).scan
    assert float(low.data.sum(axis=(1, 2)).mean()) < LOW_DOSE_COUNTS
    assert object_tv_weight(ReconOptions(), low) == LOW_DOSE_OBJECT_TV > 0
    assert object_tv_weight(ReconOptions(), high) == 0.0
    assert object_tv_weight(ReconOptions(object_tv=0), low) == 0.0
    assert object_tv_weight(ReconOptions(object_tv=0.5), high) == 0.5
    # At high counts the default path is the unpenalised one, iterate for iterate.
    options = ReconOptions(iterations=6, backend="numpy")
    default = reconstruct(high, options)
    off = reconstruct(high, options.replace(object_tv=0))
    np.testing.assert_array_equal(default.object, off.object)
    # At low counts it acts (from TV_START_FRACTION of the iterations): a different object.
    on = reconstruct(low, options)
    plain = reconstruct(low, options.replace(object_tv=0))
    assert not np.array_equal(on.object, plain.object)


def test_options_validate_object_tv():
    assert ReconOptions(object_tv=0.2).object_tv == 0.2
    assert ReconOptions.from_json(ReconOptions(object_tv=0.2).to_json()).object_tv == 0.2
    for bad in (-1, 100, "smooth", True):
        with pytest.raises(OptionsError, match="object_tv"):
            ReconOptions(object_tv=bad)


def test_the_result_file_records_the_applied_weight(tmp_path):
    from recon.api import reconstruct_file
    from recon.result import read_result
    from recon.simulate import write_simulated_scan

    low = write_simulated_scan(
        tmp_path / "low", n_views=1, n_positions=36, detector=32, photons=1e3
    )
    summary = reconstruct_file(
        low[0], tmp_path / "low.h5", ReconOptions(iterations=4, backend="numpy")
    )
    assert read_result(summary["output"])["object_tv_applied"] == LOW_DOSE_OBJECT_TV
    high = write_simulated_scan(
        tmp_path / "high", n_views=1, n_positions=36, detector=32, photons=1e6
    )
    summary = reconstruct_file(
        high[0], tmp_path / "high.h5", ReconOptions(iterations=4, backend="numpy")
    )
    written = read_result(summary["output"])
    assert "object_tv_applied" not in written and "start_defocus_px" not in written
