"""Object metrics: invariances (global phase, phase ramp, small shifts, array size),
and that they do drop for a poor reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from recon.metrics import compare_objects, deramp_phase, illuminated_region
from recon.simulate import simulate_view


@pytest.fixture(scope="module")
def truth():
    view = simulate_view(detector=64, n_positions=156)
    region = illuminated_region(view.scan.positions, view.true_probe, view.true_object.shape)
    return view.true_object, region


def fourier_shifted(image, shift):
    spectrum = scipy.ndimage.fourier_shift(np.fft.fft2(image), shift)
    return np.fft.ifft2(spectrum).astype(np.complex64)


def test_illuminated_region_covers_the_scan_and_not_the_margins(truth):
    object_, region = truth
    assert region.shape == object_.shape
    assert 0.3 < region.mean() < 0.95
    assert not region[0].any() and not region[:, 0].any()
    assert region[object_.shape[0] // 2, object_.shape[1] // 2]


def test_illuminated_region_threshold_and_clipping():
    probe = np.zeros((8, 8), complex)
    probe[2:6, 2:6] = 1
    region = illuminated_region(np.array([[0.0, 0.0], [20.0, 20.0]]), probe, (24, 24))
    assert region.sum() == 16 + 4  # the second patch is cut by the edge
    assert region[2:6, 2:6].all() and region[22:24, 22:24].all()


def test_identical_objects(truth):
    object_, region = truth
    metrics = compare_objects(object_, object_, region)
    assert metrics["phase_ssim"] == pytest.approx(1.0)
    assert metrics["amplitude_ssim"] == pytest.approx(1.0)
    assert metrics["phase_psnr"] == float("inf")
    assert metrics["shift"] == (0.0, 0.0)


def test_global_phase_ramp_and_amplitude_scale_are_removed(truth):
    object_, region = truth
    rows, cols = np.indices(object_.shape)
    changed = 1.7 * object_ * np.exp(1j * (2.5 + 0.06 * rows - 0.045 * cols))
    metrics = compare_objects(changed, object_, region)
    assert metrics["phase_ssim"] > 0.999
    assert metrics["amplitude_ssim"] > 0.999
    assert metrics["phase_ramp"] == pytest.approx((0.06, -0.045), abs=1e-4)
    assert metrics["global_phase"] == pytest.approx(2.5, abs=1e-3)


def test_shifted_copy_of_another_size_is_located(truth):
    object_, region = truth
    shifted = fourier_shifted(object_, (1.5, -1.5))
    # The reconstruction's array is larger (the solver's own margin), same origin.
    larger = np.ones((object_.shape[0] + 9, object_.shape[1] + 13), np.complex64)
    larger[: object_.shape[0], : object_.shape[1]] = shifted
    metrics = compare_objects(larger, object_, region)
    assert metrics["shift"] == pytest.approx((1.5, -1.5), abs=0.1)
    assert metrics["phase_ssim"] > 0.9
    # The array size does not matter, only the shared origin.
    same_size = compare_objects(shifted, object_, region)
    assert same_size["phase_ssim"] == pytest.approx(metrics["phase_ssim"], abs=1e-6)
    # The copy really is misaligned: compared in place its phase is far off.
    in_place = np.angle(shifted[region] * object_[region].conj())
    assert np.abs(in_place).mean() > 0.05


def test_noise_lowers_the_score(truth):
    object_, region = truth
    rng = np.random.default_rng(1)
    noisy = object_ * np.exp(1j * rng.normal(0, 0.3, object_.shape))
    metrics = compare_objects(noisy, object_, region)
    assert metrics["phase_ssim"] < 0.9
    assert metrics["phase_psnr"] < 25
    blank = compare_objects(np.ones_like(object_), object_, region)
    assert blank["phase_ssim"] < 0.5


def test_default_region_and_bad_input(truth):
    object_, _ = truth
    assert compare_objects(object_, object_)["phase_ssim"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected 2-D"):
        compare_objects(object_[None], object_)
    with pytest.raises(ValueError, match="region has shape"):
        compare_objects(object_, object_, np.ones((3, 3), bool))


def test_the_reported_score_is_ramp_free_and_the_ramp_costs_without_removal(truth):
    object_, region = truth
    rows, cols = np.indices(object_.shape)
    ramped = object_ * np.exp(1j * (0.8 + 0.05 * rows + 0.03 * cols))
    fair = compare_objects(ramped, object_, region)
    raw = compare_objects(ramped, object_, region, remove_ramp=False)
    assert fair["phase_ssim"] > 0.999
    assert raw["phase_ssim"] < 0.9 and raw["phase_ramp"] == (0.0, 0.0)
    assert raw["global_phase"] != 0.0
    # Without a ramp, both agree.
    plain = object_ * np.exp(0.4j)
    assert compare_objects(plain, object_, region, remove_ramp=False)[
        "phase_ssim"
    ] == pytest.approx(1.0, abs=1e-6)


def test_deramp_phase_removes_a_ramp_from_one_image_without_a_truth(truth):
    object_, region = truth
    rows, cols = np.indices(object_.shape)
    ramped = (object_ * np.exp(1j * (2.0 + 0.2 * rows - 0.15 * cols))).astype(np.complex64)
    flat, slopes, _ = deramp_phase(ramped, region)
    reference, reference_slopes, _ = deramp_phase(object_, region)
    assert flat.dtype == np.complex64
    assert slopes == pytest.approx(
        (reference_slopes[0] + 0.2, reference_slopes[1] - 0.15), abs=1e-5
    )
    difference = np.angle(flat * reference.conj())[region]
    assert np.abs(difference).max() < 1e-3
    with pytest.raises(ValueError, match="expected"):
        deramp_phase(object_[None])
