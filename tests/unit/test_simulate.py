"""The simulator: geometry, an independent check of its forward model, noise, files."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import scipy.ndimage

from recon.cxi import POSITION_MARGIN, load_scan
from recon.simulate import (
    AMPLITUDE_RANGE,
    PHASE_HALF_RANGE,
    focused_probe,
    simulate_view,
    write_simulated_scan,
)


@pytest.fixture(scope="module")
def view():
    return simulate_view(detector=64, n_positions=156)


def test_shapes_dtypes_and_geometry(view):
    scan = view.scan
    assert scan.data.shape == (156, 64, 64) and scan.data.dtype == np.float32
    assert scan.positions.shape == (156, 2) and scan.positions.dtype == np.float32
    np.testing.assert_allclose(scan.positions.min(axis=0), [POSITION_MARGIN] * 2, atol=1e-5)
    expected_shape = tuple(
        math.ceil(float(m)) + 64 + POSITION_MARGIN for m in scan.positions.max(axis=0)
    )
    assert view.true_object.shape == expected_shape
    assert view.true_object.dtype == np.complex64 and view.true_probe.shape == (64, 64)
    assert 1e-9 < scan.pixel_size < 1e-6 and 1e-11 < scan.wavelength < 1e-9
    phase, amplitude = np.angle(view.true_object), np.abs(view.true_object)
    assert phase.min() >= -PHASE_HALF_RANGE - 1e-5 and phase.max() <= PHASE_HALF_RANGE + 1e-5
    assert phase.max() - phase.min() > 2.0
    assert amplitude.min() >= AMPLITUDE_RANGE[0] - 1e-5
    assert amplitude.max() <= AMPLITUDE_RANGE[1] + 1e-5


def test_raster_step_gives_about_seventy_percent_overlap(view):
    positions = view.scan.positions.astype(float)
    distances = np.hypot(*(positions[:, None, :] - positions[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distances, np.inf)
    nearest = np.median(distances.min(axis=1))
    # step = (1 - 0.7) * probe width, probe width = detector / 3
    assert nearest == pytest.approx(0.3 * 64 / 3, rel=0.25)


def test_probe_is_structured_and_about_a_third_to_a_quarter_of_the_detector():
    probe = focused_probe(64)
    intensity = np.abs(probe) ** 2
    rows, cols = np.indices(intensity.shape)
    radius = np.hypot(rows - 32, cols - 32)
    order = np.argsort(radius.ravel())
    cumulative = np.cumsum(intensity.ravel()[order]) / intensity.sum()
    half_energy_diameter = 2 * radius.ravel()[order][np.searchsorted(cumulative, 0.5)]
    ninety_diameter = 2 * radius.ravel()[order][np.searchsorted(cumulative, 0.9)]
    assert 64 / 6 < half_energy_diameter < 64 / 3 < ninety_diameter < 64 / 2
    # Rings: the radial profile rises again after a minimum.
    profile = scipy.ndimage.mean(intensity, labels=np.rint(radius), index=np.arange(20))
    assert np.any(np.diff(profile) > 0.01 * profile.max())
    # The probe fits in the window: little energy at the edges.
    edges = intensity[[0, -1]].sum() + intensity[:, [0, -1]].sum()
    assert edges < 0.01 * intensity.sum()


def test_patterns_match_an_independent_forward_model(view):
    """Recompute three patterns with map_coordinates (order 1) and numpy's FFT."""
    scan = view.scan
    rows, cols = np.indices((64, 64), dtype=float)
    for index in (0, 77, 155):
        row, col = scan.positions[index].astype(float)
        coordinates = [rows + row, cols + col]
        patch = scipy.ndimage.map_coordinates(
            view.true_object.real, coordinates, order=1
        ) + 1j * scipy.ndimage.map_coordinates(view.true_object.imag, coordinates, order=1)
        far_field = np.fft.fftshift(np.fft.fft2(view.true_probe * patch, norm="ortho"))
        np.testing.assert_allclose(
            scan.data[index], np.abs(far_field) ** 2, rtol=2e-3, atol=1e-3 * scan.data[index].max()
        )


def test_noise_free_data_are_centred_and_scaled(view):
    totals = view.scan.data.sum(axis=(1, 2))
    assert totals.mean() == pytest.approx(1e6, rel=1e-3)
    mean_pattern = view.scan.data.mean(axis=0)
    rows, cols = np.indices(mean_pattern.shape)
    centroid = np.array([np.sum(rows * mean_pattern), np.sum(cols * mean_pattern)])
    np.testing.assert_allclose(centroid / mean_pattern.sum(), [32, 32], atol=2)


def test_poisson_noise(view):
    noisy = simulate_view(detector=64, n_positions=156, photons=1e4)
    data = noisy.scan.data
    assert np.all(data == np.rint(data))
    assert data.sum(axis=(1, 2)).mean() == pytest.approx(1e4, rel=0.02)
    # Expected counts follow the (rescaled) true probe: noise-free data scaled by 1e-2.
    expected = view.scan.data * 1e-2
    np.testing.assert_allclose(data.sum(axis=0), expected.sum(axis=0), rtol=0.2, atol=30)
    assert not np.allclose(data, expected, rtol=0.05)
    np.testing.assert_allclose(
        np.abs(noisy.true_probe) ** 2, np.abs(view.true_probe) ** 2 * 1e-2, rtol=1e-4, atol=1e-9
    )


def test_seed_and_view(view):
    again = simulate_view(detector=64, n_positions=156)
    np.testing.assert_array_equal(again.scan.data, view.scan.data)
    other = simulate_view(detector=64, n_positions=156, view=1)
    assert not np.allclose(other.scan.positions, view.scan.positions)
    shape = tuple(
        min(a, b) for a, b in zip(other.true_object.shape, view.true_object.shape, strict=True)
    )
    first = np.angle(view.true_object[: shape[0], : shape[1]])
    second = np.angle(other.true_object[: shape[0], : shape[1]])
    # A rotated copy: clearly different, still strongly correlated.
    assert 0.5 < np.corrcoef(first.ravel(), second.ravel())[0, 1] < 0.99


def test_benchmark_size_is_quick():
    start = time.perf_counter()
    big = simulate_view(detector=128, n_positions=1800)
    elapsed = time.perf_counter() - start
    assert big.scan.data.shape == (1800, 128, 128)
    assert elapsed < 20


def test_write_simulated_scan(tmp_path):
    paths = write_simulated_scan(tmp_path / "scan7", n_views=2, n_positions=150, marker="scan.done")
    folder = tmp_path / "scan7"
    assert [p.name for p in paths] == ["view000.cxi", "view001.cxi"]
    assert sorted(p.name for p in folder.glob("*.cxi")) == ["view000.cxi", "view001.cxi"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "scan.done",
        "truth",
        "view000.cxi",
        "view001.cxi",
    ]
    marker_time = (folder / "scan.done").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= marker_time for p in paths)
    reference = simulate_view(detector=64, n_positions=150, view=1)
    scan = load_scan(paths[1])
    np.testing.assert_array_equal(scan.data, reference.scan.data)
    np.testing.assert_allclose(scan.positions, reference.scan.positions, atol=1e-4)
    assert scan.pixel_size == pytest.approx(reference.scan.pixel_size, rel=1e-9)
    with np.load(folder / "truth" / "view001.npz") as truth:
        np.testing.assert_array_equal(truth["object"], reference.true_object)
        np.testing.assert_array_equal(truth["probe"], reference.true_probe)
        np.testing.assert_array_equal(truth["positions"], reference.scan.positions)
